"""The agent against a real HTTP server on 127.0.0.1: register, heartbeat, backoff, bounded buffering, skew."""

from __future__ import annotations

import threading

import httpx
import pytest
from agent_fakes import StubApi

from agents.agent import Agent, AgentConfig, AgentStopped, Backoff
from agents.protocol import Health
from agents.shims.emulated import EmulatedShim
from scheduler.catalog import Catalog


class Clock:
    def __init__(self, start: float = 1000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t


def _agent(
    api: StubApi, catalog: Catalog, clock: Clock | None = None, wall_offset: float = 0.0, **cfg: object
) -> Agent:
    clock = clock or Clock()
    config = AgentConfig.model_validate(
        {
            "api_url": api.url,
            "node_token": api.token,
            "node_id": "node-a",
            "backoff_jitter_s": 0.0,
            "backoff_initial_s": 1.0,
            "backoff_max_s": 8.0,
            "request_timeout_s": 2.0,
            **cfg,
        }
    )
    shim = EmulatedShim("H100", devices=2, catalog=catalog, node="node-a", clock=clock)
    agent = Agent(
        config, [shim], client=httpx.Client(timeout=2.0), clock=clock, wall_clock=lambda: 1.7e9 + clock.t + wall_offset
    )
    agent.discover()
    return agent


def test_register_then_heartbeat(api: StubApi, catalog: Catalog) -> None:
    agent = _agent(api, catalog)
    agent.tick()
    assert agent.flush() is True
    (registration,) = api.registrations
    assert registration.node.node_id == "node-a" and registration.node.model == "H100"
    assert registration.node.devices == 2 and len(registration.devices) == 2
    assert registration.shims[0].state.value == "present"
    (heartbeat,) = api.heartbeats
    assert [b.seq for b in heartbeat.batches] == [0] and heartbeat.batches[0].slow is True
    assert heartbeat.device_health == {d.uuid: Health.HEALTHY for d in agent.devices}
    assert agent.buffered == 0 and agent.heartbeats_ok == 1


def test_unreachable_api_buffers_bounded_and_drops_oldest(api: StubApi, catalog: Catalog) -> None:
    clock = Clock()
    agent = _agent(api, catalog, clock, buffer_max_batches=5)
    agent.tick()
    assert agent.flush()
    api.stop()  # connection refused from now on
    delays = []
    for _ in range(8):
        clock.t += 1
        agent.tick()
        if clock.t >= agent.next_send_at:
            assert agent.flush() is False
            delays.append(agent.next_send_at - clock.t)
    assert agent.buffered == 5 and agent.dropped_batches_total == 3
    assert delays == sorted(delays) and delays[0] == 1.0  # exponential backoff between attempts
    api.start()  # same port again
    clock.t += 60
    assert agent.flush() is True
    assert api.received_seqs == [0, 4, 5, 6, 7, 8]  # seqs 1-3 were dropped, the newest kept, in order
    assert api.heartbeats[-1].dropped_batches_total == 3
    assert agent.buffered == 0 and agent.backoff.failures == 0


def test_ages_are_monotonic_and_immune_to_wall_clock_skew(api: StubApi, catalog: Catalog) -> None:
    clock = Clock()
    agent = _agent(api, catalog, clock, wall_offset=-3600.0)  # node clock an hour slow
    agent.tick()
    clock.t += 1
    agent.tick()
    clock.t += 4
    assert agent.flush()
    ages = [b.age_s for b in api.heartbeats[0].batches]
    assert ages == pytest.approx([5.0, 4.0])
    assert api.heartbeats[0].batches[0].sampled_wall_time == pytest.approx(1.7e9 + 1000 - 3600)


def test_forgotten_node_registers_again_and_keeps_its_buffer(api: StubApi, catalog: Catalog) -> None:
    agent = _agent(api, catalog)
    agent.tick()
    agent.flush()
    agent.tick()
    api.mode = "forget"
    assert agent.flush() is False and agent.registered_node_id is None
    agent.next_send_at = 0
    assert agent.flush() is True
    assert len(api.registrations) == 2 and api.received_seqs == [0, 1]


def test_server_errors_back_off_and_keep_batches(api: StubApi, catalog: Catalog) -> None:
    agent = _agent(api, catalog)
    agent.tick()
    agent.flush()
    api.mode = "fail"
    agent.tick()
    assert agent.flush() is False and agent.buffered == 1 and agent.heartbeat_failures == 1
    api.mode = "ok"
    assert agent.flush() is True and api.received_seqs == [0, 1]


def test_rejected_batches_are_dropped_and_counted(api: StubApi, catalog: Catalog) -> None:
    agent = _agent(api, catalog)
    agent.tick()
    agent.flush()
    api.mode = "reject"
    agent.tick()
    agent.tick()
    assert agent.flush() is False
    assert agent.buffered == 0 and agent.rejected_batches_total == 2


def test_bad_token_stops_the_agent(api: StubApi, catalog: Catalog) -> None:
    agent = _agent(api, catalog)
    agent.config = agent.config.model_copy(update={"node_token": "wrong"})
    agent.tick()
    with pytest.raises(AgentStopped, match="401"):
        agent.flush()


def test_fault_reaches_the_api_and_sticks(api: StubApi, catalog: Catalog) -> None:
    agent = _agent(api, catalog)
    shim = agent.shims[0]
    assert isinstance(shim, EmulatedShim)
    shim.inject_xid(1, 79)
    agent.tick()
    agent.tick()  # the XID is gone from the second sample, the verdict is not
    agent.flush()
    bad = agent.devices[1].uuid
    heartbeat = api.heartbeats[0]
    assert heartbeat.device_health[bad] == Health.UNHEALTHY
    assert heartbeat.batches[1].samples[1].health == Health.UNHEALTHY
    assert "fatal XID 79" in heartbeat.batches[1].samples[1].health_reasons[0]
    agent.clear_faults(bad)
    assert agent.tick().samples[1].health == Health.HEALTHY


def test_run_loop_in_real_time_with_slow_cadence(api: StubApi, catalog: Catalog) -> None:
    api.interval_s = 0.02  # the API can set the interval at registration
    config = AgentConfig(api_url=api.url, node_token=api.token, node_id="node-r", interval_s=0.05, slow_every=2)
    agent = Agent(config, [EmulatedShim("H100", devices=2, catalog=catalog)])
    stop = threading.Event()
    agent.run(stop=stop, max_ticks=6)
    agent.flush()
    agent.close()
    assert agent.interval_s == 0.02
    assert api.received_seqs == list(range(6))
    slow_flags = [b.slow for h in api.heartbeats for b in h.batches]
    assert slow_flags == [True, False, True, False, True, False]


def test_backoff_is_exponential_and_capped() -> None:
    backoff = Backoff(initial_s=0.5, max_s=4, jitter_s=0)
    assert [backoff.failure() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    backoff.success()
    assert backoff.failure() == 0.5


def test_register_with_retry_backs_off_through_server_errors(api: StubApi, catalog: Catalog) -> None:
    agent = _agent(api, catalog)
    api.fail_next = 3
    slept: list[float] = []
    reply = agent.register_with_retry(sleep=slept.append)
    assert reply.node_id == "node-a" and len(api.registrations) == 1
    assert slept == [1.0, 2.0, 4.0]  # tenacity's exponential wait, jitter off
    api.fail_next = 5
    with pytest.raises(httpx.HTTPStatusError):
        agent.register_with_retry(sleep=slept.append, attempts=2)


def test_a_stop_ends_registration_retries_at_once_and_quietly(
    api: StubApi, catalog: Catalog, caplog: pytest.LogCaptureFixture
) -> None:
    """zhisuan up stopping while an agent still waits for the API: no busy loop, no warning, AgentStopped."""
    agent = _agent(api, catalog)
    api.mode = "fail"
    stop = threading.Event()
    attempts: list[float] = []

    def sleep(seconds: float) -> None:
        attempts.append(seconds)
        stop.wait(seconds)

    threading.Timer(0.3, stop.set).start()
    with caplog.at_level("DEBUG", logger="zhisuan.agent"), pytest.raises(AgentStopped, match="stopped before"):
        agent.register_with_retry(sleep=sleep, stop=stop)
    assert 1 <= len(attempts) <= 2  # 1 s backoff cut short by the stop: one more try at most, then it gives up
    assert not [r for r in caplog.records if r.levelno >= 30]


def test_a_heartbeat_that_fails_once_the_agent_was_told_to_stop_is_not_warned(
    api: StubApi, catalog: Catalog, caplog: pytest.LogCaptureFixture
) -> None:
    agent = _agent(api, catalog)
    agent.tick()
    assert agent.flush()
    stop = threading.Event()
    agent.run(stop=stop, max_ticks=1)
    api.stop()
    agent.tick()
    with caplog.at_level("DEBUG", logger="zhisuan.agent"):
        assert agent.flush() is False  # still running: the operator hears of it
        stop.set()
        agent.next_send_at = 0.0
        assert agent.flush() is False  # told to stop: kept to the debug log
    warned, quiet = (
        [r for r in caplog.records if "API unreachable" in r.message and r.levelno == lvl] for lvl in (30, 10)
    )
    assert len(warned) == 1 and len(quiet) == 1
    agent.close()
