"""Vendor CLI shims on recorded outputs: values parsed, broken output flagged, hanging or missing tools survived."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from agent_fakes import FakeAmdSmi
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.health import evaluate
from agents.protocol import METRIC_FIELDS, Health, ShimState
from agents.shims import VENDORS, make_shim
from agents.shims.amd import AmdShim
from agents.shims.ascend import AscendShim, parse_chip_map, parse_info_table, parse_key_values
from agents.shims.cambricon import CambriconShim, parse_cnmon_json, parse_cnmon_text
from agents.shims.hygon import HygonShim, parse_hy_smi
from agents.shims.iluvatar import IluvatarShim, parse_ixsmi_csv
from agents.shims.kunlunxin import KunlunxinShim, parse_xpu_smi_m
from agents.shims.metax import MetaxShim, parse_mx_smi
from agents.shims.moorethreads import MooreThreadsShim, parse_mthreads_json
from agents.shims.tool import ToolOutcome, run_tool
from scheduler.catalog import Catalog

MakeTool = Callable[[str, str], str]


def _cat(path: Path) -> str:
    return f'cat "{path}"'


# ------------------------------------------------------------------------------------------ subprocess


def test_run_tool_kills_a_hanging_tool_within_the_timeout(make_tool: MakeTool) -> None:
    tool = make_tool("hangs", "sleep 30")
    start = time.monotonic()
    result = run_tool([tool], timeout_s=0.5)
    assert result.outcome == ToolOutcome.TIMEOUT
    assert time.monotonic() - start < 5
    assert "timed out after" in result.describe()


def test_run_tool_missing_and_failing(make_tool: MakeTool) -> None:
    assert run_tool(["no-such-vendor-tool-xyz"], 1).outcome == ToolOutcome.MISSING
    failing = run_tool([make_tool("fails", "echo 'dcmi init failed' >&2; exit 3")], 5)
    assert failing.outcome == ToolOutcome.FAILED and failing.returncode == 3
    assert "dcmi init failed" in failing.describe()


@pytest.mark.parametrize("vendor", [v for v in VENDORS if v not in ("nvidia", "amd")])
def test_missing_binary_means_vendor_absent(vendor: str, catalog: Catalog) -> None:
    shim = make_shim(vendor, catalog=catalog)
    shim.binary = f"/nonexistent/{vendor}-tool"  # type: ignore[attr-defined]
    assert shim.discover() == []
    assert shim.status.state == ShimState.ABSENT and "not found" in shim.status.reason
    assert shim.sample() == []


# ------------------------------------------------------------------------------------------------ Ascend


def _npu_smi(make_tool: MakeTool, fixtures: Path, table: str = "npu-smi-info-910b.txt", extra: str = "") -> str:
    d = fixtures / "ascend"
    return make_tool(
        "npu-smi",
        f"""{extra}
case "$*" in
  "info") {_cat(d / table)} ;;
  "info -m") {_cat(d / "npu-smi-info-m.txt")} ;;
  "info -t usages"*) {_cat(d / "npu-smi-usages.txt")} ;;
  "info -t power"*) {_cat(d / "npu-smi-power.txt")} ;;
  "info -t temp"*) {_cat(d / "npu-smi-temp.txt")} ;;
  *) echo "unknown args $*" >&2; exit 1 ;;
esac""",
    )


def test_ascend_table_parsing(fixtures: Path) -> None:
    rows = parse_info_table((fixtures / "ascend/npu-smi-info-910b.txt").read_text()).rows
    assert [(r.npu, r.chip) for r in rows] == [(0, 0), (1, 0), (2, 0), (3, 0)]
    busy = rows[1]
    assert (busy.power_w, busy.temperature_c, busy.aicore_pct) == (271.1, 41.0, 55.0)
    assert (busy.hbm_used_mib, busy.hbm_total_mib, busy.bus_id) == (65099.0, 65536.0, "0000:01:00.0")
    assert rows[2].health == "Warning"
    chip_map = parse_chip_map((fixtures / "ascend/npu-smi-info-m.txt").read_text())
    assert chip_map[(3, 0)] == (3, "Ascend 910B3") and (3, 1) not in chip_map  # MCU rows skipped
    assert parse_key_values("\tNPU Temperature (C)            : 47\n") == {"NPUTemperature(C)": "47"}


def test_ascend_shim_fast_and_per_chip_slow(make_tool: MakeTool, fixtures: Path, catalog: Catalog) -> None:
    shim = AscendShim(binary=_npu_smi(make_tool, fixtures), catalog=catalog)
    devices = shim.discover()
    assert shim.status.tool_version == "23.0.rc3.3"
    assert [d.index for d in devices] == [0, 1, 2, 3]
    assert devices[1].name == "910B3" and devices[1].model == "Ascend910B"
    assert devices[1].uuid == "ascend-0000:01:00.0" and devices[1].memory_total_mib == 65536
    fast = {s.index: s for s in shim.sample(fast=True)}
    assert fast[1].utilization_pct == 55 and fast[1].power_w == 271.1 and fast[1].memory_used_mib == 65099
    assert fast[2].health == Health.HEALTHY and "Warning" in fast[2].health_reasons[0]
    assert "energy_j" in fast[1].fields_unavailable and "power_w" not in fast[1].fields_unavailable
    slow = {s.index: s for s in shim.sample(fast=False)}
    # per-chip queries refine the table: real-time power, temperature and AI-core rate
    assert slow[1].power_w == 288.4 and slow[1].temperature_c == 47 and slow[1].utilization_pct == 57
    assert slow[1].slow_sampled_monotonic_s is not None


def test_ascend_truncated_output_reports_missing_chip(make_tool: MakeTool, fixtures: Path, catalog: Catalog) -> None:
    tool = _npu_smi(make_tool, fixtures)
    shim = AscendShim(binary=tool, catalog=catalog)
    shim.discover()
    truncated = _npu_smi(make_tool, fixtures, table="npu-smi-info-truncated.txt")
    shim.binary = truncated
    samples = {s.index: s for s in shim.sample(fast=True)}
    assert len(samples) == 4
    assert samples[0].utilization_pct == 0 and samples[0].health == Health.HEALTHY
    assert samples[3].health == Health.UNKNOWN and "missing" in samples[3].health_reasons[0]
    assert set(samples[3].fields_unavailable) == set(METRIC_FIELDS)


def test_ascend_garbled_values_and_alarm(make_tool: MakeTool, fixtures: Path, catalog: Catalog) -> None:
    shim = AscendShim(binary=_npu_smi(make_tool, fixtures, table="npu-smi-info-garbled.txt"), catalog=catalog)
    shim.discover()
    bad = {s.index: s for s in shim.sample(fast=True)}[0]
    assert bad.power_w is None and bad.temperature_c is None and bad.utilization_pct is None  # NA, NA, 255 %
    assert bad.memory_used_mib is None and bad.memory_total_mib == 65536  # "ERR / 65536"
    assert {"power_w", "temperature_c", "utilization_pct", "memory_used_mib"} <= set(bad.fields_unavailable)
    assert evaluate(bad).health == Health.UNHEALTHY and "Alarm" in bad.health_reasons[0]


def test_ascend_hanging_tool_gives_unknown_health_and_agent_continues(
    make_tool: MakeTool, fixtures: Path, catalog: Catalog
) -> None:
    shim = AscendShim(binary=_npu_smi(make_tool, fixtures), catalog=catalog, timeout_s=0.5)
    shim.discover()
    shim.binary = make_tool("npu-smi-hung", "sleep 30")
    start = time.monotonic()
    samples = shim.sample(fast=True)
    assert time.monotonic() - start < 5
    assert len(samples) == 4 and all(s.health == Health.UNKNOWN for s in samples)
    assert "timed out" in samples[0].health_reasons[0]
    assert all(s.utilization_pct is None for s in samples)


# ---------------------------------------------------------------------------------------- other vendors


def test_cambricon_text_and_json(fixtures: Path, make_tool: MakeTool, catalog: Catalog) -> None:
    text = parse_cnmon_text((fixtures / "cambricon/cnmon-info.txt").read_text())
    assert text[0].values == {
        "utilization_pct": 35.0,
        "memory_total_mib": 24576.0,
        "memory_used_mib": 20531.0,
        "temperature_c": 52.0,
        "power_w": 131.0,
        "power_limit_w": 250.0,
    }
    as_json = parse_cnmon_json((fixtures / "cambricon/cnmon_info.json").read_text())
    assert as_json[0].uuid == text[0].uuid and as_json[0].values["memory_used_mib"] == 20531
    assert as_json[1].values["temperature_c"] is None  # "N/A"
    partial = parse_cnmon_text((fixtures / "cambricon/cnmon-info-partial.txt").read_text())
    assert partial[1].values == {"utilization_pct": None}
    shim = CambriconShim(binary=make_tool("cnmon", _cat(fixtures / "cambricon/cnmon-info.txt")), catalog=catalog)
    devices = shim.discover()
    assert [d.model for d in devices] == ["MLU370", "MLU370"]
    s = shim.sample()[0]
    assert s.utilization_pct == 35 and s.power_limit_w == 250 and s.health == Health.HEALTHY


def test_hygon_json_with_banner_and_truncation(fixtures: Path, make_tool: MakeTool, catalog: Catalog) -> None:
    cards = parse_hy_smi((fixtures / "hygon/hy-smi.json").read_text())
    assert cards[1].values == {
        "utilization_pct": 97.0,
        "memory_total_mib": 65520.0,
        "memory_used_mib": 60113.0,
        "power_w": 231.0,
        "temperature_c": 66.0,
    }
    banner = parse_hy_smi((fixtures / "hygon/hy-smi-banner.txt").read_text())
    assert banner[1].values["power_w"] is None
    shim = HygonShim(binary=make_tool("hy-smi", _cat(fixtures / "hygon/hy-smi-banner.txt")), catalog=catalog)
    devices = shim.discover()
    assert devices[0].model == "K100" and devices[0].uuid == "hygon-7100fa8866904061"
    assert "power_w" in shim.sample()[1].fields_unavailable
    shim.binary = make_tool("hy-smi-cut", _cat(fixtures / "hygon/hy-smi-truncated.json"))
    broken = shim.sample()
    assert [s.health for s in broken] == [Health.UNKNOWN, Health.UNKNOWN]
    assert broken[0].health_reasons[0].startswith("hy-smi (version not printed): output not understood (")


def test_kunlunxin_machine_readable_lines(fixtures: Path, make_tool: MakeTool, catalog: Catalog) -> None:
    rows = parse_xpu_smi_m((fixtures / "kunlunxin/xpu-smi-m.txt").read_text())
    assert rows[1].values == {
        "temperature_c": 63.0,
        "power_w": 377.0,
        "memory_used_mib": 90112.0,
        "memory_total_mib": 98304.0,
        "utilization_pct": 96.0,
    }
    partial = parse_xpu_smi_m((fixtures / "kunlunxin/xpu-smi-m-partial.txt").read_text())
    assert [r.index for r in partial] == [0, 1] and partial[1].values["utilization_pct"] is None
    shim = KunlunxinShim(binary=make_tool("xpu-smi", _cat(fixtures / "kunlunxin/xpu-smi-m.txt")), catalog=catalog)
    assert [d.model for d in shim.discover()] == ["P800", "P800"]
    assert shim.devices[0].uuid == "kunlunxin-0000:52:00.0"


def test_iluvatar_nvidia_smi_style_csv(fixtures: Path, make_tool: MakeTool, catalog: Catalog) -> None:
    rows = parse_ixsmi_csv((fixtures / "iluvatar/ixsmi-query.csv").read_text())
    assert rows[0].values["memory_used_mib"] == 28001 and rows[0].values["sm_clock_mhz"] == 1500
    assert rows[1].values["power_w"] is None and rows[1].values["ecc_uncorrectable_total"] is None
    script = _cat(fixtures / "iluvatar/ixsmi-query.csv")
    shim = IluvatarShim(binary=make_tool("ixsmi", script), catalog=catalog)
    assert [d.model for d in shim.discover()] == ["BI-V150", "BI-V150"]
    s = shim.sample()[1]
    assert "power_w" in s.fields_unavailable and s.uuid.startswith("GPU-3e1f")


def test_metax_table(fixtures: Path, make_tool: MakeTool, catalog: Catalog) -> None:
    rows = parse_mx_smi((fixtures / "metax/mx-smi.txt").read_text())
    assert rows[0].values == {
        "utilization_pct": 87.0,
        "temperature_c": 36.0,
        "power_w": 269.0,
        "power_limit_w": 350.0,
        "memory_used_mib": 52100.0,
        "memory_total_mib": 65536.0,
    }
    shim = MetaxShim(binary=make_tool("mx-smi", _cat(fixtures / "metax/mx-smi.txt")), catalog=catalog)
    assert [d.model for d in shim.discover()] == ["C500", "C500"]


def test_moorethreads_json_with_trailing_space_keys(fixtures: Path, make_tool: MakeTool, catalog: Catalog) -> None:
    rows = parse_mthreads_json((fixtures / "moorethreads/mthreads-gmi-q.json").read_text())
    assert rows[0].values["power_w"] == 212.5 and rows[0].values["memory_used_mib"] == 40960
    assert rows[1].values["temperature_c"] is None
    script = _cat(fixtures / "moorethreads/mthreads-gmi-q.json")
    shim = MooreThreadsShim(binary=make_tool("mthreads-gmi", script), catalog=catalog)
    devices = shim.discover()
    assert devices[0].model == "S4000" and devices[0].bus_id == "00000000:1A:00.0"


def test_empty_output_is_absent_not_crash(make_tool: MakeTool, catalog: Catalog) -> None:
    shim = MetaxShim(binary=make_tool("mx-smi-empty", "echo 'No devices were found'"), catalog=catalog)
    assert shim.discover() == [] and shim.status.state == ShimState.ABSENT


# -------------------------------------------------------------------------------------------------- AMD


def test_amd_through_injected_amdsmi(catalog: Catalog) -> None:
    fake = FakeAmdSmi(gpus=2)
    shim = AmdShim(module=fake, catalog=catalog)
    devices = shim.discover()
    assert [d.model for d in devices] == ["MI300X", "MI300X"] and devices[0].memory_total_mib == 196592
    a, b = shim.sample(fast=False)
    assert a.power_w == 345 and b.power_w == 120  # current, else average socket power
    assert a.utilization_pct == 0 and b.utilization_pct == 40
    assert a.temperature_c == 55 and a.energy_j == pytest.approx(15.3)
    assert "sm_clock_mhz" in a.fields_unavailable and a.health_reasons == []  # NOT_SUPPORTED is no fault
    assert evaluate(b).health == Health.UNHEALTHY  # one uncorrectable ECC error
    shim.close()
    assert fake.shut


def _amd_smi(make_tool: MakeTool, fixtures: Path, shape: str) -> str:
    d = fixtures / "amd"
    return make_tool(
        "amd-smi",
        f"""case "$*" in
  "static --json") {_cat(d / f"amd-smi-{shape}-static.json")} ;;
  "metric --json") {_cat(d / f"amd-smi-{shape}-metric.json")} ;;
  "version") echo "AMDSMI Tool: 24.6.2+2b02a07 | AMDSMI Library version: 24.6.2.0 | ROCm version: 6.2.0" ;;
  *) echo "amd-smi: unknown $*" >&2; exit 2 ;;
esac""",
    )


def test_amd_smi_json_in_the_list_shape(fixtures: Path, make_tool: MakeTool) -> None:
    shim = AmdShim(module=None, amd_smi=_amd_smi(make_tool, fixtures, "list"), catalog="default")
    devices = shim.discover()
    assert [d.model for d in devices] == ["MI300X", "MI300X"] and devices[1].bus_id == "0000:26:00.0"
    assert shim.status.tool_version == "24.6.2+2b02a07" and devices[0].driver_version == "6.7.0"
    a, b = shim.sample()
    assert (a.utilization_pct, a.power_w, a.temperature_c, a.sm_clock_mhz) == (42, 345, 55, 2100)
    assert (a.memory_used_mib, a.memory_total_mib, a.power_limit_w) == (1024, 196592, 750)
    assert a.energy_j == pytest.approx(1500000.5) and a.ecc_correctable_total == 3
    assert b.utilization_pct is None and {"utilization_pct", "power_w"} <= set(b.fields_unavailable)  # "N/A"
    assert evaluate(b).health == Health.UNHEALTHY  # one uncorrectable ECC error


def test_amd_smi_json_in_the_gpu_data_shape(fixtures: Path, make_tool: MakeTool) -> None:
    shim = AmdShim(module=None, amd_smi=_amd_smi(make_tool, fixtures, "gpu-data"), catalog="default")
    (device,) = shim.discover()
    assert device.name == "AMD Instinct MI210" and device.model is None  # not in the catalog: unknown
    (s,) = shim.sample()
    assert (s.utilization_pct, s.power_w, s.temperature_c, s.memory_total_mib) == (0, 41, 38, 65520)


def test_amd_absent_without_library_or_driver(catalog: Catalog) -> None:
    assert AmdShim(module=None, catalog=catalog).discover() == []
    shim = AmdShim(module=FakeAmdSmi(fail_init=True), catalog=catalog)
    assert shim.discover() == [] and "DRIVER_NOT_LOADED" in shim.status.reason


# ------------------------------------------------------------------------------------------- properties


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=600))
def test_text_parsers_never_raise_on_garbage(text: str) -> None:
    parse_info_table(text)
    parse_chip_map(text)
    parse_cnmon_text(text)
    parse_xpu_smi_m(text)
    parse_ixsmi_csv(text)
    for row in parse_mx_smi(text):
        assert row.values.get("utilization_pct") is None or 0 <= row.values["utilization_pct"] <= 100
