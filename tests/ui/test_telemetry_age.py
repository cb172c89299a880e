"""When the job page calls a device's telemetry stale: an agent that speaks protocol 2 sends a sample every
telemetry interval (30 s by default) or sooner on a change, so a quiet device's sample is up to that old and still
current; it is stale once it is older than that plus two heartbeats (the agent stopped sending)."""

from __future__ import annotations

from types import SimpleNamespace

from api.settings import Settings
from api.ui.pages import stale_after_s, telemetry_view


def _ctx(nodes: int) -> SimpleNamespace:
    return SimpleNamespace(settings=Settings(), snapshots=SimpleNamespace(fleet_size=lambda: nodes))


def _device(sampled_at: float) -> dict[str, object]:
    return {"healthy": True, "telemetry": {"sampled_at": sampled_at, "utilization_pct": 3.0}}


def test_a_quiet_device_is_current_until_its_sample_is_overdue() -> None:
    ctx = _ctx(10)
    settings = ctx.settings
    heartbeat = settings.heartbeat_interval(10)
    assert stale_after_s(ctx) == settings.telemetry_interval(heartbeat) + 2 * heartbeat
    now = 10_000.0
    # 20 s old: the next sample is not due yet (three heartbeats, the old rule, said stale).
    assert not telemetry_view(_device(now - 20), now, stale_after_s(ctx))["stale"]
    assert telemetry_view(_device(now - stale_after_s(ctx) - 1), now, stale_after_s(ctx))["stale"]


def test_a_large_fleet_waits_as_long_as_its_agents_are_told_to() -> None:
    small, large = _ctx(10), _ctx(100_000)
    assert stale_after_s(large) > stale_after_s(small)
