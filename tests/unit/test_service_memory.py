"""The scheduler service without a database: the real service loop on the in-memory store and a clock we move.

What the e2e tests check on Ray and SQLite/PostgreSQL, checked here on the cycle itself: start → running →
succeeded with the ledger written, cancel, preemption, a lost node, retries, and the lease that fences every write.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from scheduler.errors import load_yaml_mapping
from scheduler.live.executors.base import LaunchRequest
from scheduler.live.executors.instant import InstantExecutor
from scheduler.live.memory_store import MemoryStore
from scheduler.live.service import SchedulerService, ServiceConfig
from scheduler.live.store import Fence, JobEnd, NotLeader
from scheduler.model import LedgerKind, Node
from scheduler.spec import JobSpec, JobState

POLICY = Path(__file__).resolve().parents[2] / "seeds" / "policy.yaml"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def runtime_from_label(req: LaunchRequest) -> float | None:
    # Each test job says how long it "runs" in its entrypoint: `sleep N`.
    word = req.entrypoint.split()
    return float(word[1]) if word[0] == "sleep" else None


def deployment(nodes: int = 2, holder: str = "svc-a") -> tuple[MemoryStore, InstantExecutor, SchedulerService, Clock]:
    clock = Clock()
    store = MemoryStore()
    store.set_policy(load_yaml_mapping(POLICY))
    for i in range(nodes):
        store.put_node(Node(id=f"h{i}", model="H100", devices=8, cpu_milli=64_000, memory_mib=512 * 1024, site="bj1"))
    executor = InstantExecutor(clock=clock, runtime=runtime_from_label)
    config = ServiceConfig(holder=holder, lease_s=10.0, max_retries=1, retry_backoff_s=1.0)
    return store, executor, SchedulerService(store, executor, config, clock=clock), clock


def spec(name: str, seconds: float = 60.0, **extra: object) -> JobSpec:
    return JobSpec.model_validate(
        {"name": name, "entrypoint": f"sleep {seconds:g}", "models": ["H100"], "devices_per_worker": 8, **extra}
    )


def test_a_job_starts_runs_and_succeeds_with_its_ledger() -> None:
    store, executor, service, clock = deployment()
    store.submit("j1", spec("train", 60), tenant="acme", user="ann", now=clock.now)

    report = service.cycle()
    assert report.leader and report.started == ["j1"]
    assert store.job("j1").record.state is JobState.STARTING
    assert executor.launched == [("j1", 0)]

    clock.now += 1
    service.cycle()
    assert store.job("j1").record.state is JobState.RUNNING

    clock.now += 60
    report = service.cycle()
    assert report.finished == ["j1"]
    done = store.job("j1")
    assert done.record.state is JobState.SUCCEEDED and done.exit_code == 0
    kinds = [e.kind for e in store.ledger if e.job_id == "j1"]
    assert kinds == [LedgerKind.START, LedgerKind.STOP]
    stop = store.ledger[-1]
    assert stop.seconds == pytest.approx(61.0) and stop.devices == 8
    assert [e.kind for e in store.events] == ["submitted", "started", "running", "succeeded"]


def test_waiting_jobs_carry_their_reasons_and_an_estimated_start() -> None:
    store, _, service, clock = deployment(nodes=1)
    store.submit("big", spec("big", 600, workers=2), tenant="acme", user="ann", now=clock.now)
    service.cycle()
    waiting = store.job("big")
    assert waiting.record.state is JobState.PENDING
    assert waiting.reasons and "8" in " ".join(r.message for r in waiting.reasons)


def test_cancel_stops_the_run_and_bills_what_ran() -> None:
    store, executor, service, clock = deployment()
    store.submit("j1", spec("train", 3600), tenant="acme", user="ann", now=clock.now)
    service.cycle()
    clock.now += 30
    service.cycle()
    store.cancel("j1", now=clock.now)
    report = service.cycle()
    assert report.cancelled == ["j1"]
    assert store.job("j1").record.state is JobState.CANCELLED
    assert executor.status("j1") is None  # stopped and forgotten
    assert store.ledger[-1].kind is LedgerKind.STOP and store.ledger[-1].seconds == pytest.approx(30.0)


def test_a_training_job_preempts_best_effort_work_which_comes_back_as_a_new_attempt() -> None:
    store, executor, service, clock = deployment(nodes=1)
    store.submit("low", spec("low", 3600, priority="best-effort"), tenant="acme", user="ann", now=clock.now)
    service.cycle()
    clock.now += 700  # past the minimum runtime that protects a fresh start from preemption
    service.cycle()
    store.submit("prod", spec("prod", 60, priority="training"), tenant="acme", user="ann", now=clock.now)
    report = service.cycle()
    # One step: the victim goes and the preemptor starts on its devices.
    assert report.preempted == ["low"] and report.started == ["prod"]
    low = store.job("low").record
    assert low.state is JobState.PENDING and low.attempt == 1
    assert executor.launched == [("low", 0), ("prod", 0)]
    assert executor.status("low") is not None and executor.status("low").phase.value == "stopped"
    assert [e.cause.value for e in store.ledger if e.job_id == "low" and e.cause] == ["preempted"]


def test_a_lost_node_requeues_its_job_onto_another_node() -> None:
    store, executor, service, clock = deployment(nodes=2)
    store.submit("j1", spec("train", 3600), tenant="acme", user="ann", now=clock.now)
    service.cycle()
    first = store.job("j1").record.placement
    assert first is not None
    lost = first.workers[0].node
    record = store.node_records[lost]
    store.put_node(record.node, usable=False)
    clock.now += 1
    report = service.cycle()
    assert report.requeued == ["j1"]
    clock.now += 1
    service.cycle()
    again = store.job("j1").record
    assert again.attempt == 1 and again.placement is not None
    assert again.placement.workers[0].node != lost
    assert executor.launched == [("j1", 0), ("j1", 1)]


def test_a_second_service_waits_for_the_lease_and_a_deposed_leader_cannot_write() -> None:
    store, executor, first, clock = deployment()
    second = SchedulerService(store, executor, ServiceConfig(holder="svc-b", lease_s=10.0), clock=clock)
    assert first.cycle().leader
    assert not second.cycle().leader
    clock.now += 11  # the first one stops renewing; its lease expires
    assert second.cycle().leader and second.term == 2
    with pytest.raises(NotLeader):
        store.commit_step(Fence("svc-a", 1), clock.now, [], {}, {})
    store.submit("j1", spec("train", 60), tenant="acme", user="ann", now=clock.now)
    assert not first.cycle().leader  # it finds the lease taken and forgets what it knew
    assert second.cycle().started == ["j1"]
    assert executor.launched == [("j1", 0)]


def test_a_restarted_service_adopts_running_jobs_instead_of_launching_them_again() -> None:
    store, executor, service, clock = deployment()
    store.submit("j1", spec("train", 3600), tenant="acme", user="ann", now=clock.now)
    service.cycle()
    clock.now += 1
    service.cycle()
    service.release_lock()
    again = SchedulerService(store, executor, ServiceConfig(holder="svc-new"), clock=clock)
    clock.now += 1
    report = again.cycle()
    assert report.leader and not report.started and not report.requeued
    assert store.job("j1").record.state is JobState.RUNNING
    assert "j1" in again.state.allocations
    assert executor.launched == [("j1", 0)]


class JoiningExecutor(InstantExecutor):
    """An executor that can tell which nodes it reaches (as Ray does), with raylets that join late or die."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock=clock, runtime=runtime_from_label)
        self.alive: set[str] = set()

    def alive_nodes(self, node_ids: object) -> set[str] | None:
        return set(self.alive)


def test_a_joining_node_is_not_reported_lost_but_a_vanished_one_is(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    store = MemoryStore()
    store.set_policy(load_yaml_mapping(POLICY))
    store.put_node(Node(id="h0", model="H100", devices=8, cpu_milli=64_000, memory_mib=512 * 1024, site="bj1"))
    executor = JoiningExecutor(clock)
    config = ServiceConfig(holder="svc", lease_s=10.0, liveness_every_s=0.0)
    service = SchedulerService(store, executor, config, clock=clock)
    # The agent registered before the executor reaches the node (a raylet still joining at start): quiet.
    with caplog.at_level("WARNING"):
        service.cycle()
        clock.now += 1
        executor.alive = {"h0"}
        service.cycle()
    assert not [r for r in caplog.records if "cannot reach it" in r.getMessage()]
    store.submit("j1", spec("train", 600), tenant="acme", user="ann", now=clock.now)
    clock.now += 1
    service.cycle()
    assert store.job("j1").record.state in (JobState.STARTING, JobState.RUNNING)
    # Then the node's executor side goes while its agent still heartbeats: lost, said once, its job requeued.
    executor.alive = set()
    with caplog.at_level("WARNING"):
        for _ in range(3):
            clock.now += 1
            service.cycle()
    said = [r for r in caplog.records if "cannot reach it" in r.getMessage()]
    assert len(said) == 1 and "h0" in said[0].getMessage()
    assert store.job("j1").record.state is JobState.PENDING


def test_a_long_queue_is_planned_over_several_cycles_and_stored_when_the_pass_is_done() -> None:
    # One 8-device node busy for an hour and 1,200 jobs behind it: the aggregate forecast (a queue this long is
    # not fast-forwarded), a slice (256 jobs) per cycle with no time budget, the estimates stored once, at the end.
    store, _executor, service, clock = deployment(nodes=1)
    service.config = ServiceConfig(holder="svc-a", eta_slice_s=0.0, eta_share=0.0)
    store.submit("first", spec("first", 3600, walltime_s=3600), tenant="acme", user="ann", now=clock.now)
    service.cycle()
    for n in range(1200):
        store.submit(f"q{n:04d}", spec(f"q{n}", 600, walltime_s=600), tenant="acme", user=f"u{n % 3}", now=clock.now)
    cycles = 0
    while cycles < 20:
        clock.now += 0.2
        service.cycle()
        cycles += 1
        if store.job("q0000").estimated_start is not None:
            break
    assert 4 <= cycles < 20, "the pass was planned in one cycle, or never finished"
    estimates = {job_id: s.estimated_start for job_id, s in store.stored.items() if job_id.startswith("q")}
    assert all(start is not None for start in estimates.values())
    # The node frees when the core expects the first job to end, then takes one job at a time.
    ordered = sorted(estimates.values())
    first_end = service.state.running["first"].expected_end
    assert first_end is not None and first_end <= ordered[0] < first_end + 60
    assert len(set(ordered)) == len(ordered) and ordered[-1] - ordered[0] > 1000 * (ordered[1] - ordered[0]) / 2


def test_the_jobs_that_end_in_one_cycle_are_stored_in_one_write_before_the_executor_forgets_them() -> None:
    store, executor, service, clock = deployment(nodes=3)
    for n in range(3):
        store.submit(f"j{n}", spec(f"train-{n}", 60), tenant="acme", user="ann", now=clock.now)
    assert len(service.cycle().started) == 3
    writes: list[list[str]] = []
    write = store.end

    def counted(fence: Fence, now: float, ends: Sequence[JobEnd]) -> None:
        # The executor still knows every run whose end is being written.
        assert all(executor.status(e.job_id) is not None for e in ends)
        writes.append([e.job_id for e in ends])
        write(fence, now, ends)

    store.end = counted  # type: ignore[method-assign]
    clock.now += 61
    report = service.cycle()
    assert sorted(report.finished) == ["j0", "j1", "j2"]
    assert [sorted(w) for w in writes] == [["j0", "j1", "j2"]]
    assert all(store.job(f"j{n}").record.state is JobState.SUCCEEDED for n in range(3))
    assert all(executor.status(f"j{n}") is None for n in range(3))
