"""Emulated devices follow their work and faults; health rules."""

from __future__ import annotations

import pytest

from agents.health import FATAL_XIDS, evaluate, fatal_reasons
from agents.protocol import DeviceSample, Health
from agents.shims.base import ModelResolver, dedupe_uuids
from agents.shims.emulated import IDLE_POWER_FRACTION, EmulatedShim
from scheduler.catalog import Catalog


def _shim(catalog: Catalog, model: str = "H100", devices: int = 8, **kw: object) -> tuple[EmulatedShim, list[float]]:
    now = [0.0]
    shim = EmulatedShim(model, devices=devices, catalog=catalog, clock=lambda: now[0], wall_clock=lambda: 0.0, **kw)  # type: ignore[arg-type]
    shim.discover()
    return shim, now


def test_telemetry_follows_placed_work(catalog: Catalog) -> None:
    shim, _ = _shim(catalog)
    idle = shim.sample()[0]
    assert idle.utilization_pct == 0 and idle.memory_used_mib == 0
    assert idle.power_w == pytest.approx(IDLE_POWER_FRACTION * 700)
    shim.place(0, "train", compute_fraction=0.5, memory_mib=30_000)
    shim.place(0, "infer", compute_fraction=0.25, memory_mib=10_000)
    busy = shim.sample()[0]
    assert busy.utilization_pct == 75 and busy.memory_used_mib == 40_000
    assert idle.power_w < busy.power_w < 700 and busy.temperature_c > idle.temperature_c
    shim.place(0, "more", compute_fraction=1.0, memory_mib=10**9)
    full = shim.sample()[0]
    assert full.utilization_pct == 100 and full.power_w == 700 and full.memory_used_mib == 80 * 1024  # capped
    shim.remove(0, "more")
    shim.remove(0, "train")
    assert shim.sample()[0].utilization_pct == 25


def test_power_always_between_idle_and_tdp_with_noise(catalog: Catalog) -> None:
    shim, _ = _shim(catalog, noise_pct=5.0)
    for i, load in enumerate([0, 10, 50, 99, 100, 100, 3, 60]):
        shim.set_load(i, load, 1000)
    for s in shim.sample():
        assert s.power_w is not None and 0.15 * 700 <= s.power_w <= 700
        assert s.utilization_pct is not None and 0 <= s.utilization_pct <= 100


def test_energy_integrates_power_over_time(catalog: Catalog) -> None:
    shim, now = _shim(catalog, devices=1)
    shim.set_load(0, 100, 0)
    shim.sample()
    now[0] = 10.0
    assert shim.sample()[0].energy_j == pytest.approx(7000.0)  # 700 W for 10 s


def test_deterministic_for_a_seed(catalog: Catalog) -> None:
    def run(seed: int) -> list[float | None]:
        shim, _ = _shim(catalog, seed=seed, noise_pct=3.0)
        for i in range(8):
            shim.set_load(i, 40, 10)
        return [s.utilization_pct for _ in range(3) for s in shim.sample()]

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_islands_follow_catalog(catalog: Catalog) -> None:
    shim, _ = _shim(catalog, devices=16)
    assert len(shim.devices[0].peers) == 7 and shim.devices[0].interconnect == "nvlink"
    assert shim.devices[9].peers[0].endswith("-8") and shim.vendor == "nvidia"


def test_injected_faults(catalog: Catalog) -> None:
    shim, _ = _shim(catalog, devices=4)
    shim.inject_xid(0, 79)
    shim.inject_ecc(1)
    shim.inject_remap_failure(2)
    shim.inject_lost(3)
    samples = [evaluate(s) for s in shim.sample()]
    assert [s.health for s in samples] == [Health.UNHEALTHY] * 4
    assert samples[0].xid_events == [79] and samples[3].utilization_pct is None
    shim.clear_faults(1)
    assert evaluate(shim.sample()[1]).health == Health.HEALTHY


def test_model_without_numbers_reports_power_unavailable(catalog: Catalog) -> None:
    shim, _ = _shim(catalog, model="Mystery", devices=1)
    s = shim.sample()[0]
    assert s.power_w is None and s.memory_used_mib is None
    assert {"power_w", "energy_j", "memory_total_mib"} <= set(s.fields_unavailable)


def test_unknown_model_does_not_crash(catalog: Catalog) -> None:
    shim, _ = _shim(catalog, model="NoSuchChip", devices=1)
    assert shim.devices[0].model is None and shim.vendor == "emulated"
    assert "device model unknown" in shim.devices[0].notes[0]


def test_resolver_survives_a_broken_catalog(tmp_path: object) -> None:
    resolver = ModelResolver(catalog=None)
    entry, notes = resolver.resolve("NVIDIA H100 80GB HBM3", "nvidia")
    assert entry is None and "unknown" in notes[0]


def _s(**kw: object) -> DeviceSample:
    base: dict[str, object] = {
        "vendor": "nvidia",
        "index": 0,
        "uuid": "GPU-0",
        "sampled_monotonic_s": 0,
        "sampled_wall_time": 0,
        "health": Health.HEALTHY,
    }
    base.update(kw)
    return DeviceSample.model_validate(base)


def test_health_rules() -> None:
    assert {48, 63, 64, 74, 79, 92, 94, 95} <= set(FATAL_XIDS)
    assert evaluate(_s(xid_events=[13])).health == Health.HEALTHY  # application error, not the GPU
    assert evaluate(_s(xid_events=[94])).health == Health.UNHEALTHY
    assert evaluate(_s(health=Health.UNKNOWN, health_reasons=["npu-smi timed out"])).health == Health.UNKNOWN
    assert evaluate(_s(health=Health.UNKNOWN, xid_events=[79])).health == Health.UNHEALTHY
    # sticky: the XID came once, the device stays bad until reset
    first = _s(xid_events=[48])
    sticky = fatal_reasons(first)
    assert evaluate(_s(), sticky_reasons=sticky).health == Health.UNHEALTHY
    warned = evaluate(_s(health_reasons=["npu-smi health Warning (minor alarm)"]))
    assert warned.health == Health.HEALTHY and warned.health_reasons


def test_duplicate_uuids_are_kept_apart() -> None:
    a, b = _s(index=0), _s(index=1)
    first, second = dedupe_uuids([a, b])
    assert first.uuid == "GPU-0" and second.uuid != "GPU-0"
    assert second.health == Health.UNKNOWN and "duplicate uuid" in second.health_reasons[0]
