"""Orderings of the pending queue (scheduler/orderings.py) as the core walks them: FIFO strict and skipping, SJF,
SRTF and LAS (preemptive), QSSF's predicted durations, per-queue orderings from the policy file, bad input."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from scheduler.core import CoreConfig, QueueingConfig, SchedulerCore
from scheduler.errors import ConfigError
from scheduler.model import DecisionKind, Job, Node, ReasonCode, StopCause
from scheduler.orderings import DurationPredictor, OrderingContext, ServiceBook, key_order
from scheduler.state import ClusterState
from scheduler.tenancy import parse_policy


def cluster(count: int = 2, devices: int = 4) -> ClusterState:
    return ClusterState(
        [Node(id=f"n{i}", model="A100", devices=devices, cpu_milli=64_000, memory_mib=512_000) for i in range(count)]
    )


def core_with(ordering: str, policy: Mapping[str, object] | None = None, **queueing: object) -> SchedulerCore:
    queueing.setdefault("min_runtime_s", 0.0)
    config = CoreConfig(queueing=QueueingConfig(ordering=ordering, **queueing))  # type: ignore[arg-type]
    return SchedulerCore(config, policy=parse_policy(policy) if policy is not None else None)


def kinds(decisions: list) -> dict[str, str]:  # type: ignore[type-arg]
    return {d.job_id: d.kind.value for d in decisions}


def started(decisions: list) -> list[str]:  # type: ignore[type-arg]
    return [d.job_id for d in decisions if d.kind is DecisionKind.START]


# ---------------------------------------------------------------------------------------------- bad input


def test_unknown_ordering_is_one_line_naming_the_allowed_ones() -> None:
    with pytest.raises(ValueError) as err:
        QueueingConfig(ordering="lifo")  # type: ignore[arg-type]
    assert str(err.value) == "unknown ordering 'lifo' (allowed: drf, fifo, fifo-strict, sjf, srtf, las, qssf)"
    with pytest.raises(ConfigError) as bad:
        parse_policy({"queues": {"a": {"tenant": "a", "ordering": "shortest"}}})
    message = str(bad.value)
    assert "\n" not in message and "queues.a.ordering" in message and "fifo-strict" in message


def test_bad_las_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="ascending"):
        QueueingConfig(ordering="las", las_thresholds=(7200.0, 3250.0))
    with pytest.raises(ValueError, match="las_starvation"):
        QueueingConfig(ordering="las", las_starvation=-1)


# ---------------------------------------------------------------------------------------------- FIFO


def test_strict_fifo_head_blocks_its_queue_and_skipping_fifo_does_not() -> None:
    jobs = [
        Job(id="gang", workers=2, devices_per_worker=4, submit_time=1, runtime_s=100),
        Job(id="small", devices_per_worker=1, submit_time=2, runtime_s=100),
    ]
    for ordering, expected in (("fifo-strict", []), ("fifo", ["small"])):
        core = core_with(ordering, backfill=False)
        state = cluster()
        assert started(core.step(state, [Job(id="first", devices_per_worker=2, runtime_s=500)], 0.0)) == ["first"]
        decisions = core.step(state, jobs, 10.0)
        assert started(decisions) == expected, ordering
    held = next(d for d in decisions if d.job_id == "gang")
    assert held.reasons[0].code is ReasonCode.NO_CAPACITY
    core = core_with("fifo-strict", backfill=False)
    state = cluster()
    core.step(state, [Job(id="first", devices_per_worker=2, runtime_s=500)], 0.0)
    behind = next(d for d in core.step(state, jobs, 10.0) if d.job_id == "small")
    assert behind.reasons[0].message == "waits behind gang, the first job of its queue that cannot start (strict FIFO)"


def test_strict_fifo_blocks_per_queue_and_a_job_that_can_never_run_blocks_nobody() -> None:
    policy = {
        "queues": {"a": {"tenant": "a", "ordering": "fifo-strict"}, "b": {"tenant": "b", "ordering": "fifo-strict"}}
    }
    core = core_with("drf", policy, backfill=False)
    state = cluster()
    core.step(state, [Job(id="x", tenant="a", queue="a", devices_per_worker=2, runtime_s=500)], 0.0)
    decisions = core.step(
        state,
        [
            Job(id="a-gang", tenant="a", queue="a", workers=2, devices_per_worker=4, submit_time=1),
            Job(id="a-small", tenant="a", queue="a", devices_per_worker=1, submit_time=2),
            Job(id="b-h100", tenant="b", queue="b", devices_per_worker=1, models=("H100",), submit_time=1),
            Job(id="b-small", tenant="b", queue="b", devices_per_worker=1, submit_time=3),
        ],
        10.0,
    )
    assert kinds(decisions) == {"a-gang": "reject", "a-small": "reject", "b-h100": "reject", "b-small": "start"}


def test_strict_fifo_starts_in_submit_order_within_a_queue() -> None:
    core = core_with("fifo-strict", backfill=False)
    state = cluster(count=1, devices=4)
    jobs = [Job(id=f"j{i}", devices_per_worker=1 + i % 3, submit_time=float(i), runtime_s=10) for i in range(8)]
    order: list[str] = []
    now = 0.0
    while len(order) < len(jobs):
        for decision in core.step(state, [j for j in jobs if j.id not in order], now):
            if decision.kind is DecisionKind.START:
                order.append(decision.job_id)
        now += 10.0
        for job_id in list(state.running):
            core.finish(state, job_id, now)
    assert order == [j.id for j in jobs]


# ---------------------------------------------------------------------------------------------- SJF, QSSF


def test_sjf_orders_by_estimate_and_puts_jobs_without_one_last() -> None:
    jobs = [
        Job(id="unknown", submit_time=0, job_class="cv-train"),
        Job(id="long", submit_time=1, runtime_s=900),
        Job(id="short", submit_time=2, runtime_s=30),
        Job(id="urgent", submit_time=3, runtime_s=5000, priority="production-inference"),
    ]
    context = OrderingContext(now=0.0, estimate=lambda job: job.runtime_s)
    assert [j.id for j in key_order(jobs, "sjf", context)] == ["urgent", "short", "long", "unknown"]
    core = core_with("sjf", backfill=False)
    state = cluster(count=1, devices=1)
    assert started(core.step(state, jobs[:3], 0.0)) == ["short"]


def test_sjf_falls_back_to_the_class_median_of_finished_runs() -> None:
    core = core_with("sjf", backfill=False)
    state = cluster(count=1, devices=1)
    core.step(state, [Job(id="done", job_class="cv-train", runtime_s=10)], 0.0)
    core.finish(state, "done", 40.0)  # ran 40 s: the class median is now 40 s
    decisions = core.step(
        state, [Job(id="walltime", runtime_s=100, submit_time=0), Job(id="median", job_class="cv-train")], 50.0
    )
    assert started(decisions) == ["median"]


def test_qssf_learns_durations_from_history_and_counts_fallbacks() -> None:
    core = core_with("qssf", backfill=False)
    state = cluster(count=1, devices=1)
    for name, seconds in (("long-train", 3000.0), ("quick-eval", 60.0)):
        job = Job(id=f"past-{name}", user="ann", labels={"name": name})
        core.step(state, [job], 0.0)
        core.finish(state, job.id, seconds)
    # The job's own runtime (here a wrong walltime) is never read: history says which is short.
    jobs = [
        Job(id="train", user="ann", labels={"name": "long-train"}, submit_time=1, runtime_s=10),
        Job(id="eval", user="ann", labels={"name": "quick-eval"}, submit_time=2, runtime_s=99999),
        Job(id="stranger", user="bob", job_class="llm-finetune", submit_time=0),
    ]
    assert started(core.step(state, jobs, 3100.0)) == ["eval"]
    answers = core.predictor.answers
    # The first past job had no history when it was ordered, the second only its user's; nor has the stranger.
    assert answers == {"user+name+size": 2, "user+size": 1, "none": 2}


def test_predictor_falls_back_from_name_to_user_to_class() -> None:
    predictor = DurationPredictor(window=2)
    for seconds in (100.0, 200.0, 300.0):
        predictor.record(Job(id="x", user="ann", labels={"name": "a"}), seconds)
    assert predictor.predict(Job(id="1", user="ann", labels={"name": "a"})) == (250.0, "user+name+size")
    assert predictor.predict(Job(id="2", user="ann", labels={"name": "b"}, workers=2)) == (250.0, "user")
    assert predictor.predict(Job(id="3", user="cy")) == (250.0, "class")


# ---------------------------------------------------------------------------------------------- SRTF


def test_srtf_preempts_the_longest_remaining_gang_as_a_whole() -> None:
    core = core_with("srtf", backfill=False)
    state = cluster()
    core.step(state, [Job(id="long-gang", workers=2, devices_per_worker=4, runtime_s=1000)], 0.0)
    decisions = core.step(state, [Job(id="short", devices_per_worker=1, runtime_s=50, submit_time=10)], 100.0)
    assert kinds(decisions) == {"long-gang": "preempt", "short": "start"}
    preempt = next(d for d in decisions if d.kind is DecisionKind.PREEMPT)
    assert "shorter remaining time (SRTF)" in preempt.reasons[0].message
    # All of the gang's devices came back: nothing of it is left allocated.
    assert "long-gang" not in state.allocations
    assert sum(sum(ns.free) for ns in state.nodes.values()) == 7000


def test_srtf_keeps_a_job_whose_remaining_time_is_shorter_and_respects_min_runtime() -> None:
    core = core_with("srtf", backfill=False)
    state = cluster(count=1, devices=4)
    core.step(state, [Job(id="nearly-done", devices_per_worker=4, runtime_s=1000)], 0.0)
    assert started(core.step(state, [Job(id="new", devices_per_worker=4, runtime_s=500)], 900.0)) == []
    guarded = core_with("srtf", backfill=False, min_runtime_s=600.0)
    state = cluster(count=1, devices=4)
    guarded.step(state, [Job(id="young", devices_per_worker=4, runtime_s=1000)], 0.0)
    assert started(guarded.step(state, [Job(id="new", devices_per_worker=4, runtime_s=10)], 100.0)) == []
    assert "new" in kinds(guarded.step(state, [Job(id="new", devices_per_worker=4, runtime_s=10)], 700.0))


def test_srtf_never_preempts_a_higher_class_and_counts_resumed_work() -> None:
    core = core_with("srtf", backfill=False, preempted_resume=True)
    state = cluster(count=1, devices=4)
    core.step(state, [Job(id="prod", devices_per_worker=4, runtime_s=1000, priority="production-inference")], 0.0)
    assert started(core.step(state, [Job(id="short", devices_per_worker=4, runtime_s=1)], 10.0)) == []
    core.finish(state, "prod", 20.0, StopCause.NODE_LOST)  # stopped short: 20 s of work are kept (resume=True)
    assert core.service.progress("prod", None, 20.0) == 20.0


def test_srtf_repeated_steps_converge() -> None:
    core = core_with("srtf", backfill=False)
    state = cluster()
    jobs = [Job(id=f"j{i}", devices_per_worker=float(1 + i % 4), runtime_s=100.0 * (i + 1)) for i in range(10)]
    preempts = []
    for step in range(6):
        waiting = [j for j in jobs if j.id not in state.allocations]
        decisions = core.step(state, waiting, 10.0 * step)
        preempts.append(sum(d.kind is DecisionKind.PREEMPT for d in decisions))
    assert preempts[-3:] == [0, 0, 0]


# ---------------------------------------------------------------------------------------------- LAS


def test_las_levels_come_from_attained_device_seconds() -> None:
    book = ServiceBook()
    context = OrderingContext(now=0.0, service=book, las_thresholds=(100.0, 1000.0))
    fresh, used = Job(id="fresh", submit_time=5), Job(id="used", submit_time=0, workers=2)
    core = core_with("las")
    state = cluster()
    core.step(state, [used], 0.0)
    book.stopped(state.running["used"], now=60.0, resume=True)  # 2 devices × 60 s = 120 device-s: level 1
    assert context.level(used) == 1 and context.level(fresh) == 0
    assert [j.id for j in key_order([used, fresh], "las", context)] == ["fresh", "used"]


def test_las_new_job_displaces_a_job_past_the_threshold_and_wakes_at_the_crossing() -> None:
    core = core_with("las", backfill=False, las_thresholds=(3250.0,))
    state = cluster(count=1, devices=4)
    core.step(state, [Job(id="old", devices_per_worker=4)], 0.0)
    newcomer = Job(id="new", devices_per_worker=4, submit_time=100)
    # 4 devices cross 3,250 device-s after 812.5 s: until then both are on level 0 and the running job stays.
    assert core.next_change(state, [newcomer], 100.0) == pytest.approx(812.5)
    assert started(core.step(state, [newcomer], 100.0)) == []
    decisions = core.step(state, [newcomer], 812.5)
    assert kinds(decisions) == {"old": "preempt", "new": "start"}
    assert "less attained service (LAS)" in next(d for d in decisions if d.job_id == "old").reasons[0].message
    # The displaced job waits on level 1; the newcomer will cross too, then old waits FIFO behind nobody new.
    assert core.next_change(state, [Job(id="old", devices_per_worker=4)], 812.5) == pytest.approx(1625.0)


def test_las_starvation_promotes_a_waiting_job_back_to_level_zero() -> None:
    core = core_with("las", backfill=False, las_thresholds=(100.0,), las_starvation=2.0)
    state = cluster(count=1, devices=1)
    old = Job(id="old", devices_per_worker=1, submit_time=0)
    core.step(state, [old], 0.0)
    new = Job(id="new", devices_per_worker=1, submit_time=200)
    assert kinds(core.step(state, [new], 200.0)) == {"old": "preempt", "new": "start"}
    # old ran 200 s: it is promoted once it has waited 2 × 200 s, at 600 s.
    assert core.next_change(state, [old], 200.0) == pytest.approx(300.0)  # new crosses 100 device-s first
    decisions = core.step(state, [old], 600.0)
    assert kinds(decisions) == {"new": "preempt", "old": "start"}


# ---------------------------------------------------------------------------------------------- per queue


def test_queues_order_their_own_jobs_and_take_turns_by_share() -> None:
    policy = {
        "queues": {
            "fast": {"tenant": "a", "ordering": "sjf"},
            "fair": {"tenant": "b", "ordering": "fifo"},
            "fair/sub": {"parent": "fair"},
        }
    }
    core = core_with("drf", policy, backfill=False, preemption=False)
    state = cluster(count=1, devices=2)
    jobs = [
        Job(id="a-long", tenant="a", queue="fast", runtime_s=900, submit_time=0),
        Job(id="a-short", tenant="a", queue="fast", runtime_s=10, submit_time=1),
        Job(id="b-first", tenant="b", queue="fair/sub", runtime_s=900, submit_time=2),
        Job(id="b-second", tenant="b", queue="fair/sub", runtime_s=1, submit_time=3),
    ]
    assert core.ordering_of(jobs[2]) == "fifo"  # inherited from its parent
    assert sorted(started(core.step(state, jobs, 0.0))) == ["a-short", "b-first"]
