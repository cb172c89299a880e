"""NVIDIA shim against an NVML-shaped fake (real pynvml types and errors), and against the real pynvml here."""

from __future__ import annotations

from pathlib import Path

import pynvml  # type: ignore[import-untyped]
import pytest
from agent_fakes import FakeGpu, FakeMig, FakeNvml, recorded_nvml

from agents.health import evaluate
from agents.protocol import Health, ShimState
from agents.shims.nvml import NvmlShim
from scheduler.catalog import Catalog, load_catalog


def _gpus(n: int = 2) -> list[FakeGpu]:
    return [FakeGpu(uuid=f"GPU-{i}", bus_id=f"00000000:{0x18 + i:02X}:00.0", util_gpu=10 * i) for i in range(n)]


def test_real_pynvml_without_driver_reports_vendor_absent() -> None:
    shim = NvmlShim(nvml=pynvml, catalog=None)
    assert shim.discover() == []
    assert shim.status.state == ShimState.ABSENT
    assert "NVML" in shim.status.reason
    assert shim.sample(fast=True) == []
    shim.close()


def test_discovery_maps_names_to_catalog_and_reads_topology(catalog: Catalog) -> None:
    fake = FakeNvml(_gpus(2))
    shim = NvmlShim(nvml=fake, catalog=catalog)
    devices = shim.discover()
    assert shim.status.state == ShimState.PRESENT and shim.status.tool_version == "580.65.06"
    assert [d.uuid for d in devices] == ["GPU-0", "GPU-1"]
    assert devices[0].model == "H100" and devices[0].model_known and devices[0].kind == "gpu"
    assert devices[0].bus_id == "00000000:18:00.0"
    assert devices[0].memory_total_mib == 80 * 1024
    assert devices[0].peers == ["GPU-1"] and devices[0].interconnect == "nvlink"
    assert devices[0].mig_enabled is False
    assert fake.registered == {0, 1}


def test_unknown_model_is_reported_not_fatal(catalog: Catalog) -> None:
    shim = NvmlShim(nvml=FakeNvml([FakeGpu(name="NVIDIA B300 SXM6")]), catalog=catalog)
    (device,) = shim.discover()
    assert device.model is None and not device.model_known
    assert any("unknown" in note for note in device.notes)


def test_fast_sample_converts_units(catalog: Catalog) -> None:
    gpus = _gpus(1)
    gpus[0].util_gpu, gpus[0].power_mw, gpus[0].mem_used = 87, 412_500, 40 * 1024**3
    shim = NvmlShim(nvml=FakeNvml(gpus), catalog=catalog, clock=lambda: 100.0, wall_clock=lambda: 1.7e9)
    shim.discover()
    (s,) = shim.sample(fast=True)
    assert s.utilization_pct == 87.0
    assert s.power_w == 412.5
    assert s.memory_used_mib == 40 * 1024 and s.memory_total_mib == 80 * 1024
    assert s.temperature_c == 33.0 and s.sm_clock_mhz == 1980.0
    assert s.health == Health.HEALTHY
    # slow metrics are not read on a fast tick, and not yet read is not "unavailable"
    assert s.energy_j is None and s.slow_sampled_monotonic_s is None
    assert s.fields_unavailable == []


def test_slow_metrics_on_slow_cadence_and_carried_between(catalog: Catalog) -> None:
    now = [10.0]
    fake = FakeNvml(_gpus(1))
    shim = NvmlShim(nvml=fake, catalog=catalog, clock=lambda: now[0])
    shim.discover()
    (slow,) = shim.sample(fast=False)
    assert slow.energy_j == 123_456.789  # 123456789 mJ
    assert slow.power_limit_w == 700.0
    assert slow.pcie_tx_bytes_per_s == 1000 * 1024 and slow.pcie_rx_bytes_per_s == 2000 * 1024
    assert slow.ecc_uncorrectable_total == 0 and slow.remap_failure is False and slow.mig_enabled is False
    assert slow.slow_sampled_monotonic_s == 10.0
    energy_calls = fake.calls["nvmlDeviceGetTotalEnergyConsumption"]
    now[0] = 11.0
    (fast,) = shim.sample(fast=True)
    assert fake.calls["nvmlDeviceGetTotalEnergyConsumption"] == energy_calls  # not re-read on a fast tick
    assert fast.energy_j == slow.energy_j and fast.slow_sampled_monotonic_s == 10.0  # carried with its age


def test_not_supported_metric_is_none_flagged_and_not_retried(catalog: Catalog) -> None:
    gpus = _gpus(1)
    gpus[0].not_supported = {"nvmlDeviceGetPowerUsage", "nvmlDeviceGetTotalEnergyConsumption"}
    fake = FakeNvml(gpus)
    shim = NvmlShim(nvml=fake, catalog=catalog)
    shim.discover()
    (s,) = shim.sample(fast=False)
    assert s.power_w is None and s.energy_j is None
    assert {"power_w", "energy_j"} <= set(s.fields_unavailable)
    assert s.health == Health.HEALTHY and s.health_reasons == []  # NotSupported is a property, not a fault
    shim.sample(fast=False)
    assert fake.calls["nvmlDeviceGetPowerUsage"] == 1  # remembered, not called again


def test_xid_event_makes_device_unhealthy(catalog: Catalog) -> None:
    fake = FakeNvml(_gpus(2))
    shim = NvmlShim(nvml=fake, catalog=catalog)
    shim.discover()
    fake.events.append((1, 79))
    samples = shim.sample(fast=True)
    assert samples[0].xid_events == [] and samples[1].xid_events == [79]
    judged = [evaluate(s) for s in samples]
    assert judged[0].health == Health.HEALTHY
    assert judged[1].health == Health.UNHEALTHY and "fatal XID 79" in judged[1].health_reasons[0]
    assert shim.sample(fast=True)[1].xid_events == []  # an event is reported once


def test_ecc_and_remap_failure_make_device_unhealthy(catalog: Catalog) -> None:
    gpus = _gpus(2)
    gpus[0].ecc_unc = 2
    gpus[1].remap = (0, 3, 0, 1)
    shim = NvmlShim(nvml=FakeNvml(gpus), catalog=catalog)
    shim.discover()
    a, b = (evaluate(s) for s in shim.sample(fast=False))
    assert a.health == Health.UNHEALTHY and "2 uncorrectable ECC errors" in a.health_reasons
    assert b.health == Health.UNHEALTHY and b.remapped_rows_uncorrectable == 3 and b.remap_failure is True


def test_lost_gpu_is_unhealthy_and_unread(catalog: Catalog) -> None:
    gpus = _gpus(1)
    shim = NvmlShim(nvml=FakeNvml(gpus), catalog=catalog)
    shim.discover()
    gpus[0].lost = True
    (s,) = shim.sample(fast=True)
    assert s.health == Health.UNHEALTHY
    assert s.utilization_pct is None and "utilization_pct" in s.fields_unavailable


def test_mig_mode_and_missing_xid_support_reported(catalog: Catalog) -> None:
    gpus = _gpus(1)
    gpus[0].mig = (1, 1)
    gpus[0].xid_capable = False
    shim = NvmlShim(nvml=FakeNvml(gpus, nvlink=False), catalog=catalog)
    (device,) = shim.discover()
    assert device.mig_enabled is True and device.peers == [] and device.interconnect is None
    assert any("XID" in n for n in device.notes)
    (s,) = shim.sample(fast=False)
    assert s.mig_enabled is True and "xid_events" in s.fields_unavailable


def test_close_frees_event_set_and_shuts_down(catalog: Catalog) -> None:
    fake = FakeNvml(_gpus(1))
    shim = NvmlShim(nvml=fake, catalog=catalog)
    shim.discover()
    shim.close()
    shim.close()
    assert fake.calls["nvmlEventSetFree"] == 1 and not fake.initialised


def test_recorded_a100_in_mig_mode_reports_fractional_mig_devices(fixtures: Path) -> None:
    fake = recorded_nvml(fixtures / "nvml/a100-sxm4-80gb-mig-7x1g.json")
    shim = NvmlShim(nvml=fake, catalog=load_catalog())
    devices = shim.discover()
    parent, migs = devices[0], devices[1:]
    assert shim.status.tool_version == "535.216.01" and parent.driver_version == "535.216.01"
    assert parent.uuid == "GPU-7fdaf0a5-179b-f636-d15d-daf243e3ff16" and parent.model == "A100"
    assert parent.mig_enabled is True and "offered as 7 MIG devices" in " ".join(parent.notes)
    assert len(migs) == 7 and migs[0].uuid == "MIG-feb88891-0321-5fef-9c87-d4af3b54259e"
    assert {m.parent_uuid for m in migs} == {parent.uuid} and {m.profile for m in migs} == {"1g.10gb"}
    assert all(m.model == "A100" and m.fraction == pytest.approx(1 / 7) and m.memory_total_mib == 9728 for m in migs)
    samples = shim.sample(fast=False)
    gpu, first_mig = samples[0], samples[1]
    assert gpu.power_w == 258.0 and gpu.temperature_c == 37.0 and gpu.power_limit_w == 400.0
    assert gpu.utilization_pct is None and "utilization_pct" in gpu.fields_unavailable  # NVML: N/A under MIG
    assert first_mig.memory_total_mib == 9728 and first_mig.memory_used_mib == 13
    assert first_mig.power_w is None and {"power_w", "temperature_c"} <= set(first_mig.fields_unavailable)
    fake.events.append((0, 79))
    after = [evaluate(s) for s in shim.sample(fast=True)]
    assert all(s.health == Health.UNHEALTHY for s in after)  # a fatal XID on the GPU takes its MIG devices too
    assert "fatal XID 79" in after[3].health_reasons[0]


def test_nvswitch_links_and_p2p_peers_form_one_island(catalog: Catalog) -> None:
    gpus = _gpus(8)
    for gpu in gpus:
        gpu.nvlink_remote = [pynvml.NVML_NVLINK_DEVICE_TYPE_SWITCH] * 18
    devices = NvmlShim(nvml=FakeNvml(gpus), catalog=catalog).discover()
    assert all(len(d.peers) == 7 and d.interconnect == "nvlink" for d in devices)
    assert "18 NVLink links end on an NVSwitch" in devices[0].notes


def test_ecc_events_arrive_through_the_event_set(catalog: Catalog) -> None:
    fake = FakeNvml(_gpus(2))
    shim = NvmlShim(nvml=fake, catalog=catalog)
    shim.discover()
    assert fake.registered_types[0] & pynvml.nvmlEventTypeDoubleBitEccError
    fake.events.append((0, 0, pynvml.nvmlEventTypeSingleBitEccError))
    fake.events.append((1, 0, pynvml.nvmlEventTypeDoubleBitEccError))
    a, b = (evaluate(s) for s in shim.sample(fast=True))
    assert a.ecc_events == ["single-bit"] and a.health == Health.HEALTHY
    assert b.ecc_events == ["double-bit"] and b.health == Health.UNHEALTHY
    assert "double-bit (uncorrectable) ECC error event" in b.health_reasons


def test_clock_throttle_reasons_are_decoded_without_changing_health(catalog: Catalog) -> None:
    gpus = _gpus(1)
    gpus[0].throttle = pynvml.nvmlClocksEventReasonSwPowerCap | pynvml.nvmlClocksEventReasonHwThermalSlowdown
    shim = NvmlShim(nvml=FakeNvml(gpus), catalog=catalog)
    shim.discover()
    (s,) = shim.sample(fast=True)
    assert s.throttle_reasons == ["sw_power_cap", "hw_thermal_slowdown"]
    assert evaluate(s).health == Health.HEALTHY


def test_mig_slots_without_instances_are_skipped(catalog: Catalog) -> None:
    gpus = _gpus(1)
    gpus[0].mig = (1, 1)
    gpus[0].mig_devices = [FakeMig(uuid="MIG-a", name="NVIDIA H100 80GB HBM3 MIG 3g.40gb", gpu_instance_slices=3)]
    devices = NvmlShim(nvml=FakeNvml(gpus), catalog=catalog).discover()
    assert [d.uuid for d in devices] == ["GPU-0", "MIG-a"]
    assert devices[1].fraction == pytest.approx(3 / 7) and devices[1].profile == "3g.40gb"


def _real_gpus() -> int:
    try:
        pynvml.nvmlInit()
        count = int(pynvml.nvmlDeviceGetCount())
        pynvml.nvmlShutdown()
        return count
    except pynvml.NVMLError:
        return 0


@pytest.mark.skipif(_real_gpus() == 0, reason="needs an NVIDIA GPU and driver (run on the lent GPU machine)")
def test_real_gpu_discovery_and_telemetry() -> None:
    """On a GPU machine: the real NVML path end to end (discovery, fast and slow ticks, sane values)."""
    shim = NvmlShim()
    devices = shim.discover()
    assert devices and shim.status.state == ShimState.PRESENT
    for device in devices:
        assert device.uuid.startswith("GPU-") and device.memory_total_mib and device.memory_total_mib > 1000
    for sample in shim.sample(fast=False) + shim.sample(fast=True):
        assert sample.health in (Health.HEALTHY, Health.UNHEALTHY)
        assert sample.utilization_pct is not None and 0 <= sample.utilization_pct <= 100
        assert sample.memory_used_mib is not None and sample.memory_total_mib is not None
        assert sample.power_w is None or 0 < sample.power_w < 2000
    shim.close()
