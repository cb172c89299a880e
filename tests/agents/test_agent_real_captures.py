"""Every real capture under tests/fixtures replayed through its shim by a real subprocess: the device count, the
catalog model, the tool version and every printed value of the first device come out as the capture shows them,
and no device is reported healthy without metrics or twice."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from captures import CAPTURES, Capture, make_capture_shim

from agents.protocol import METRIC_FIELDS, Health, ShimState
from agents.shims.tool import CORE_METRICS


@pytest.mark.parametrize("capture", CAPTURES, ids=[c.name for c in CAPTURES])
def test_capture_parses_with_the_right_devices_models_and_values(capture: Capture, tmp_path: Path) -> None:
    shim = make_capture_shim(capture, tmp_path)
    devices = shim.discover()
    assert shim.status.state == ShimState.PRESENT, shim.status.reason
    assert shim.status.tool_version == capture.tool_version
    assert len(devices) == capture.devices
    assert len({d.uuid for d in devices}) == len(devices), "a device is reported twice"
    assert [d.model for d in devices] == [capture.model] * capture.devices
    for device in devices:
        assert device.model_known == (capture.model is not None)
        if capture.model is None:
            assert any(n.startswith("device model unknown") for n in device.notes)
    samples = shim.sample(fast=True)
    assert [s.uuid for s in samples] == [d.uuid for d in devices]
    first = samples[0]
    for field, value in capture.first.items():
        assert getattr(first, field) == pytest.approx(value), field
    for field in capture.not_printed:
        assert getattr(first, field) is None and field in first.fields_unavailable
    for sample in samples:
        assert sample.health == Health.HEALTHY, sample.health_reasons
        assert not all(getattr(sample, f) is None for f in CORE_METRICS)
        for field in METRIC_FIELDS:
            if field != "xid_events" and getattr(sample, field) is None:
                assert field in sample.fields_unavailable  # never a silent gap, never a 0 stand-in


def test_a3_second_die_has_no_power_and_says_why(tmp_path: Path) -> None:
    capture = next(c for c in CAPTURES if c.name.startswith("vllm-ascend-2035"))
    shim = make_capture_shim(capture, tmp_path)
    first_die, second_die = shim.discover()
    assert "npu-smi prints this board's power on its first chip only" in second_die.notes
    a, b = shim.sample(fast=True)
    assert a.power_w == 178.8 and b.power_w is None and "power_w" in b.fields_unavailable
    assert first_die.bus_id == "0000:9D:00.0" and second_die.bus_id == "0000:9F:00.0"


def test_anonymised_table_name_resolves_through_npu_smi_info_m(tmp_path: Path) -> None:
    capture = next(c for c in CAPTURES if "24.1.RC2" in c.name)
    shim = make_capture_shim(capture, tmp_path)
    devices = shim.discover()
    assert devices[0].name == "xxx" and devices[0].model == "Ascend910"
    assert "catalog model resolved from 'Ascend 910A'" in devices[0].notes[0]
    warning = shim.sample(fast=True)[3]  # NPU 3 prints Warning: a minor alarm, still schedulable
    assert warning.health == Health.HEALTHY and warning.health_reasons == ["npu-smi health Warning (minor alarm)"]


def test_310_devices_use_the_logical_ids_of_info_m(tmp_path: Path) -> None:
    # 21.0.4 prints device ids 3-6 in the table while `npu-smi info -m` maps the chips to logical ids 0-3
    capture = next(c for c in CAPTURES if c.name.startswith("gpustack-21.0.4"))
    devices = make_capture_shim(capture, tmp_path).discover()
    assert [d.index for d in devices] == [0, 1, 2, 3]
    assert [d.name for d in devices] == ["310"] * 4 and devices[0].model is None
    assert "'310' / 'MiniD'" in devices[0].notes[0]


def test_versions_are_recorded_per_node(tmp_path: Path) -> None:
    versions = {}
    for capture in CAPTURES:
        (tmp_path / capture.name).mkdir()
        shim = make_capture_shim(capture, tmp_path / capture.name)
        devices = shim.discover()
        versions[capture.name] = (shim.status.tool_version, shim.status.driver_version, devices[0].driver_version)
    assert versions["paddle-docs-cnmon-4.20.11-mlu370-x4.txt"] == ("4.20.11", "4.20.11", "4.20.11")
    assert versions["ernie-docs-xpu_smi-5.0.21.21-p800.txt"] == ("5.0.21", "5.0.21.21", "5.0.21.21")
    assert versions["ernie-docs-mx-smi-2.2.4-c550.txt"] == ("2.2.4", "2.15.9", "2.15.9")
    assert versions["gpustack-21.0.4-atlas800-3000-info.txt"][1] == "21.0.4.B030"
    assert versions["vllm-omni-2337-mthreads-gmi-2.3.2-s5000.excerpt.txt"][:2] == ("2.3.2", "3.3.5-server")


def test_coverage_script_reports_every_capture_fully_read() -> None:
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "shim_coverage.py"
    spec = importlib.util.spec_from_file_location("shim_coverage", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["shim_coverage"] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    rows = module.coverage_rows()
    assert len(rows) == len(CAPTURES) and all(r.ok for r in rows), [r for r in rows if not r.ok]
    assert "| huawei | 12 | 12 |" in module.render(rows)
