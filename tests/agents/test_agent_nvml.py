"""NVIDIA shim against an NVML-shaped fake (real pynvml types and errors), and against the real pynvml here."""

from __future__ import annotations

import pynvml  # type: ignore[import-untyped]
import pytest
from agent_fakes import FakeGpu, FakeNvml

from agents.health import evaluate
from agents.protocol import Health, ShimState
from agents.shims.nvml import NvmlShim
from scheduler.catalog import Catalog


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
