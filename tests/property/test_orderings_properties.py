"""Every ordering, on random workloads replayed to the end: quotas are never exceeded, gangs start whole, nothing is
left waiting, preemption never loops, and strict FIFO starts each queue's jobs in submission order."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.core import CoreConfig, QueueingConfig, SchedulerCore
from scheduler.model import DecisionKind, Node, PriorityClass
from scheduler.placement import PlacementConfig
from scheduler.state import ClusterState
from scheduler.tenancy import ORDERING_NAMES, parse_policy
from simulations.schema import TraceJob
from simulations.timeline import SimConfig, TimelineSimulation

POLICY = {
    "tenants": {"a": {"weight": 2}, "b": {}},
    "queues": {
        "a": {"tenant": "a", "quota": {"A100": {"deserved": 4, "limit": 8}}},
        "b": {"tenant": "b", "quota": {"A100": {"deserved": 4, "limit": 8}}},
    },
}
NODES = [Node(id=f"n{i}", model="A100", devices=4, cpu_milli=64_000, memory_mib=512_000) for i in range(3)]
SHAPES = [(1, 0.5), (1, 1.0), (1, 2.0), (1, 4.0), (2, 2.0), (2, 4.0)]


@st.composite
def workloads(draw: st.DrawFn) -> list[TraceJob]:
    jobs = []
    submit = 0.0
    for i in range(draw(st.integers(4, 24))):
        submit += draw(st.sampled_from([0.0, 5.0, 30.0, 120.0]))
        workers, per_worker = draw(st.sampled_from(SHAPES))
        tenant = draw(st.sampled_from(["a", "b"]))
        jobs.append(
            TraceJob(
                id=f"j{i:02d}",
                submit_time=submit,
                duration_s=draw(st.sampled_from([20.0, 90.0, 400.0, 2000.0])),
                workers=workers,
                devices_per_worker=per_worker,
                tenant=tenant,
                queue=tenant,
                user=draw(st.sampled_from(["u1", "u2"])),
                priority=draw(st.sampled_from([PriorityClass.TRAINING] * 3 + [PriorityClass.PRODUCTION_INFERENCE])),
                checkpoint_interval_s=draw(st.sampled_from([0.0, 50.0])),
            )
        )
    return jobs


def checked_core(ordering: str, resume: bool, log: list[dict[str, Any]]) -> SchedulerCore:
    queueing = QueueingConfig(
        ordering=ordering,  # type: ignore[arg-type]
        min_runtime_s=0.0,
        las_thresholds=(200.0, 2000.0),
        las_starvation=2.0 if ordering == "las" else 0.0,
        preempted_resume=resume,
    )
    policy = parse_policy(POLICY)
    core = SchedulerCore(CoreConfig(placement=PlacementConfig(scorer="binpack"), queueing=queueing), policy=policy)
    step = core.step
    steps = [0]

    def checked(state: ClusterState, pending: Any, now: float) -> Any:
        pending = list(pending)
        steps[0] += 1
        assert steps[0] <= MAX_STEPS, f"{ordering}: still stepping at t={now:g}"
        decisions = step(state, pending, now)
        by_id = {job.id: job for job in pending}
        for decision in decisions:
            if decision.kind is DecisionKind.START:
                assert decision.placement is not None
                job = by_id[decision.job_id]
                # A gang starts whole, every worker with its devices.
                assert len(decision.placement.workers) == job.workers
                assert all(w.milli * len(w.devices) == job.device_milli for w in decision.placement.workers)
                log.append({"start": decision.job_id, "at": now, "job": job})
            elif decision.kind is DecisionKind.PREEMPT:
                log.append({"preempt": decision.job_id, "at": now})
        # Quotas hold after every step, and what runs is all-or-nothing in the state.
        for name, spec in policy.queues.items():
            limit = spec.quota["A100"].limit
            assert limit is not None and state.used(name, "A100") <= limit + 1e-9, name
        for job_id, placement in state.allocations.items():
            if job_id in state.running:
                assert len(placement.workers) == state.running[job_id].job.workers
        return decisions

    core.step = checked  # type: ignore[method-assign]
    return core


#: More steps than any of these workloads needs: a policy that keeps stepping without finishing is livelocked.
MAX_STEPS = 5_000


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(jobs=workloads(), ordering=st.sampled_from(ORDERING_NAMES), resume=st.booleans())
def test_every_ordering_keeps_quotas_gangs_and_finishes_every_job(
    jobs: list[TraceJob], ordering: str, resume: bool
) -> None:
    log: list[dict[str, Any]] = []
    config = SimConfig(preempted_resume=resume, record_jobs=True, max_retries=1_000, max_passes_per_instant=4)
    result = TimelineSimulation(NODES, checked_core(ordering, resume, log), config).run(jobs)
    # A finite workload drains: no job is left waiting or running, none gave up.
    assert result.summary["jobs"].get("finished", 0) == len(jobs), (ordering, result.summary["jobs"])
    assert result.summary["jobs"].get("pending_at_end", 0) == 0
    # Preemption never loops: far fewer preemptions than the workload could ever justify.
    assert sum(1 for entry in log if "preempt" in entry) <= 10 * len(jobs)
    if ordering == "fifo-strict":
        firsts: dict[str, dict[str, Any]] = {}
        for entry in log:
            if "start" in entry and entry["start"] not in firsts:
                firsts[entry["start"]] = entry
        for queue in ("a", "b"):
            for priority in {j.priority for j in jobs}:
                # The first starts of a queue's jobs of one class follow their submission (then id) order.
                order = sorted(
                    (e for e in firsts.values() if e["job"].queue == queue and e["job"].priority == priority),
                    key=lambda e: (e["at"], e["job"].submit_time, e["job"].id),
                )
                submitted = sorted(order, key=lambda e: (e["job"].submit_time, e["job"].id))
                assert [e["start"] for e in order] == [e["start"] for e in submitted], (queue, priority)
