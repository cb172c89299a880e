"""Parking (issue 21): a failed placement or preemption projection is not redone while nothing it read changed.

The strongest check is differential: two cores on two identical states, one with parking switched off (its
parking tables never keep anything), are driven through the same random workload — arrivals, finishes,
cancellations, devices failing and coming back, nodes cordoned and uncordoned, nodes added, time passing
minimum runtimes — and must return the same decisions, reasons included, at every step. The focused tests
below pin the wake conditions one by one.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from scheduler.core import CoreConfig, QueueingConfig, SchedulerCore
from scheduler.model import Decision, DecisionKind, DeviceHealth, Job, Node, PriorityClass, StopCause
from scheduler.placement import PlacementEngine
from scheduler.state import ClusterState
from scheduler.tenancy import parse_policy


class _NoParking(dict[Any, Any]):
    """A parking table that keeps nothing: the core then decides as before parking existed."""

    def __setitem__(self, key: Any, value: Any) -> None:
        return None


def _unparked(core: SchedulerCore) -> SchedulerCore:
    core.placement._parked = _NoParking()
    core.preemptor._parked = _NoParking()
    return core


def _nodes() -> list[Node]:
    return [
        *(Node(id=f"a{i}", model="A100", devices=8, cpu_milli=64000, memory_mib=512000) for i in range(3)),
        *(Node(id=f"t{i}", model="T4", devices=2, cpu_milli=32000, memory_mib=128000, switch="sw1") for i in range(4)),
    ]


def _job(rng: random.Random, i: int, now: float) -> Job:
    per_worker = rng.choice([0.25, 0.5, 1, 1, 2, 4, 8])
    workers = rng.choice([1, 1, 1, 2, 3]) if per_worker <= 4 else 1
    return Job(
        id=f"j{i}",
        tenant=f"t{rng.randrange(3)}",
        queue=f"t{rng.randrange(3)}",
        user=f"u{rng.randrange(2)}",
        workers=workers,
        devices_per_worker=per_worker,
        cpu_milli_per_worker=rng.choice([0, 4000, 16000]),
        memory_mib_per_worker=rng.choice([0, 65536]),
        models=rng.choice([(), (), ("A100",), ("T4",)]),
        priority=rng.choice([PriorityClass.TRAINING, PriorityClass.TRAINING, PriorityClass.PRODUCTION_INFERENCE]),
        preemptible=rng.random() < 0.8,
        submit_time=now,
        runtime_s=rng.choice([None, 300.0, 1200.0, 5000.0]),
    )


def _signature(decisions: list[Decision]) -> list[tuple[object, ...]]:
    return [
        (d.kind, d.job_id, d.placement, tuple((r.code, r.template, r.pool, sorted(r.detail.items())) for r in rs))
        for d in decisions
        for rs in (d.reasons,)
    ]


def _policy() -> Any:
    return parse_policy(
        {
            "tenants": {"t0": {}, "t1": {}, "t2": {}},
            "queues": {
                "t0": {"tenant": "t0", "quota": {"A100": {"deserved": 8, "limit": 16}}},
                "t1": {"tenant": "t1", "quota": {"A100": {"deserved": 8, "borrowing_limit": 4}}},
                "t2": {"tenant": "t2", "quota": {"T4": {"guarantee": 2, "deserved": 4}}},
            },
        }
    )


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ordering", ["drf", "fifo-strict", "las", "srtf"])
def test_parking_decides_as_without_it(seed: int, ordering: str) -> None:
    rng = random.Random(seed)
    policy = _policy() if seed % 2 else None
    config = CoreConfig(queueing=QueueingConfig(ordering=ordering, min_runtime_s=200.0))  # type: ignore[arg-type]
    parked, plain = SchedulerCore(config, policy=policy), _unparked(SchedulerCore(config, policy=policy))
    states = ClusterState(_nodes()), ClusterState(_nodes())
    pending: dict[str, Job] = {}
    jobs: dict[str, Job] = {}
    running: list[str] = []
    now = 0.0

    def _evict(node: str, now: float) -> None:
        # What runs on a node that fails or is drained stops and waits again, as the simulator and the live
        # service do (a reclaim walk cannot put a victim back on a device that is gone).
        on_node = [j for j in running if any(w.node == node for w in states[0].allocations[j].workers)]
        for job_id in on_node:
            running.remove(job_id)
            pending[job_id] = jobs[job_id]
            for core, state in zip((parked, plain), states, strict=True):
                core.finish(state, job_id, now, StopCause.CANCELLED)

    for i in range(160):
        now += rng.choice([1.0, 30.0, 150.0, 400.0])
        for _ in range(rng.randrange(4)):
            job = _job(rng, len(pending) + len(running) + i * 10, now)
            pending[job.id] = jobs[job.id] = job
        event = rng.random()
        if running and event < 0.45:
            job_id = running.pop(rng.randrange(len(running)))
            cause = StopCause.FINISHED if rng.random() < 0.8 else StopCause.CANCELLED
            for core, state in zip((parked, plain), states, strict=True):
                core.finish(state, job_id, now, cause)
        elif event < 0.55:
            node, device = rng.choice(["a0", "a1", "t2"]), rng.randrange(2)
            health = rng.choice([DeviceHealth.HEALTHY, DeviceHealth.UNHEALTHY])
            if health is DeviceHealth.UNHEALTHY:
                _evict(node, now)
            for state in states:
                state.set_device_health(node, device, health)
        elif event < 0.62:
            node, schedulable = rng.choice(["a2", "t0"]), rng.random() < 0.5
            if not schedulable:
                _evict(node, now)
            for state in states:
                state.set_schedulable(node, schedulable)
        elif event < 0.64 and i < 100:
            extra = Node(id=f"x{i}", model=rng.choice(["A100", "T4"]), devices=2, cpu_milli=32000, memory_mib=128000)
            for state in states:
                state.add_node(extra)
        cores = zip((parked, plain), states, strict=True)
        results = [core.step(state, list(pending.values()), now) for core, state in cores]
        assert _signature(results[0]) == _signature(results[1]), f"seed {seed}: step {i} at t={now} differs"
        for decision in results[0]:
            if decision.kind is DecisionKind.START:
                pending.pop(decision.job_id, None)
                running.append(decision.job_id)
            elif decision.kind is DecisionKind.PREEMPT:
                # A victim waits again, as the simulator and the live service requeue it.
                running.remove(decision.job_id)
                pending[decision.job_id] = jobs[decision.job_id]
        for state in states:
            state.check_invariants()
    assert parked.placement.parked_hits, "the workload never answered a placement attempt from parking"
    if ordering != "fifo-strict":  # strict FIFO holds its queues back and seldom gets as far as preempting
        assert parked.preemptor.parked_hits, "the workload never answered a preemption projection from parking"


def _full_pool() -> tuple[ClusterState, PlacementEngine]:
    state = ClusterState(
        [
            Node(id="a", model="A100", devices=8, cpu_milli=64000, memory_mib=512000),
            Node(id="t", model="T4", devices=2, cpu_milli=64000, memory_mib=512000),
        ]
    )
    engine = PlacementEngine()
    for name, node in (("fill-a", "a"), ("fill-t", "t")):
        placement = engine.place(state, Job(id=name, devices_per_worker=8 if node == "a" else 2, models=())).placement
        assert placement is not None
        state.allocate(placement)
    return state, engine


def test_a_parked_attempt_keeps_its_reason_when_another_pool_frees_room() -> None:
    state, engine = _full_pool()
    job = Job(id="w", devices_per_worker=4, models=("A100",))
    first = engine.place(state, job)
    assert first.placement is None and engine._parked
    state.release("fill-t")  # capacity comes back elsewhere: the epoch moves, the A100 pool did not change
    again = engine.place(state, job)
    assert again.placement is None and again.reasons == first.reasons


def test_a_parked_attempt_wakes_when_its_pool_frees_room_or_a_device_comes_back() -> None:
    state, engine = _full_pool()
    job = Job(id="w", devices_per_worker=1, models=("A100",))
    assert engine.place(state, job).placement is None
    state.release("fill-a")
    state.set_device_health("a", 3, DeviceHealth.UNHEALTHY)
    assert engine.place(state, Job(id="w8", devices_per_worker=8, models=("A100",))).placement is None
    state.set_device_health("a", 3, DeviceHealth.HEALTHY)
    assert engine.place(state, Job(id="w8", devices_per_worker=8, models=("A100",))).placement is not None
    assert engine.place(state, job).placement is not None


def test_a_parked_preemption_wakes_when_a_victim_passes_its_minimum_runtime() -> None:
    node = Node(id="a", model="A100", devices=8, cpu_milli=64000, memory_mib=512000)
    state = ClusterState([node])
    core = SchedulerCore(CoreConfig(queueing=QueueingConfig(min_runtime_s=600.0, backfill=False)))
    assert core.step(state, [Job(id="old", devices_per_worker=4)], now=0.0)[0].kind is DecisionKind.START
    assert core.step(state, [Job(id="young", devices_per_worker=4)], now=500.0)[0].kind is DecisionKind.START
    big = Job(id="big", workers=2, devices_per_worker=4, priority=PriorityClass.PRODUCTION_INFERENCE)
    # At 700 s only "old" may be preempted, which does not make room for two workers of 4: parked.
    assert core.step(state, [big], now=700.0)[0].kind is DecisionKind.REJECT
    assert core.preemptor._parked
    assert core.step(state, [big], now=800.0)[0].kind is DecisionKind.REJECT
    assert core.preemptor.parked_hits == 1
    # At 1,100 s "young" has run 600 s too: a new victim wakes the parked projection.
    kinds = [d.kind for d in core.step(state, [big], now=1100.0)]
    assert kinds == [DecisionKind.PREEMPT, DecisionKind.PREEMPT, DecisionKind.START]
