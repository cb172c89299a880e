"""Quotas are never exceeded, whatever the queue tree and the sequence of submits, finishes and preemptions."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.core import CoreConfig, QueueingConfig, SchedulerCore
from scheduler.model import DecisionKind, Job, Node
from scheduler.state import ClusterState
from scheduler.tenancy import QueuePolicy, parse_policy

FLAVORS = ("A100", "ncu")


@st.composite
def flavor_quota(draw: st.DrawFn) -> dict[str, float]:
    guarantee = draw(st.sampled_from([0, 0, 4, 8]))
    deserved = guarantee + draw(st.sampled_from([0, 4, 8, 16]))
    limit = deserved + draw(st.sampled_from([0, 8, 16, 32]))
    quota: dict[str, float] = {"guarantee": guarantee, "deserved": deserved, "limit": limit}
    if draw(st.booleans()):
        quota["borrowing_limit"] = draw(st.sampled_from([0, 4, 8]))
    return quota


@st.composite
def policies(draw: st.DrawFn) -> dict[str, object]:
    queues: dict[str, object] = {}
    for t in range(draw(st.integers(1, 3))):
        tenant = f"t{t}"
        top_quota = {f: draw(flavor_quota()) for f in FLAVORS if draw(st.booleans())}
        queues[tenant] = {"tenant": tenant, "quota": top_quota}
        for c in range(draw(st.integers(0, 2))):
            child_quota = {}
            for f, q in top_quota.items():
                if draw(st.booleans()):
                    # Children's guarantees must fit in the parent's; keep them small.
                    child_quota[f] = {"guarantee": min(q["guarantee"], 4) / 2, "limit": q["limit"]}
            queues[f"{tenant}/p{c}"] = {"parent": tenant, "quota": child_quota}
    return {"queues": queues}


def assert_within_quota(policy: QueuePolicy, state: ClusterState) -> None:
    for name, spec in policy.queues.items():
        for flavor, quota in spec.quota.items():
            used = state.used(name, flavor)
            if quota.limit is not None:
                assert used <= quota.limit + 1e-6, f"{name}/{flavor}: {used} > limit {quota.limit}"
            if quota.borrowing_limit is not None and quota.nominal is not None:
                assert used - quota.nominal <= quota.borrowing_limit + 1e-6, f"{name}/{flavor} borrows too much"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    document=policies(),
    ops=st.lists(st.tuples(st.sampled_from(["submit", "submit", "finish", "step"]), st.integers(0, 1000)), max_size=30),
    data=st.data(),
)
def test_quotas_hold_under_any_sequence(
    document: dict[str, object], ops: list[tuple[str, int]], data: st.DataObject
) -> None:
    policy = parse_policy(document)
    core = SchedulerCore(CoreConfig(queueing=QueueingConfig(min_runtime_s=0)), policy=policy)
    state = ClusterState(
        [Node(id=f"n{i}", model="A100", devices=8, cpu_milli=64_000, memory_mib=512_000) for i in range(6)]
    )
    queues = sorted(policy.queues)
    pending: dict[str, Job] = {}
    submitted: dict[str, Job] = {}
    for i, (op, pick) in enumerate(ops):
        if op == "submit":
            queue = queues[pick % len(queues)]
            pending[f"j{i}"] = submitted[f"j{i}"] = Job(
                id=f"j{i}",
                tenant=policy.tenant_of(queue) or "t0",
                queue=queue,
                devices_per_worker=data.draw(st.sampled_from([0.5, 1, 2, 4, 8])),
                workers=data.draw(st.integers(1, 3)),
                priority=data.draw(st.sampled_from(["best-effort", "training", "production-inference"])),
                runtime_s=data.draw(st.sampled_from([None, 60, 600])),
                submit_time=float(i),
            )
        elif op == "finish" and state.running:
            running = sorted(state.running)
            core.finish(state, running[pick % len(running)], now=float(i))
        for decision in core.step(state, list(pending.values()), now=float(i)):
            if decision.kind is DecisionKind.START:
                pending.pop(decision.job_id, None)
            elif decision.kind is DecisionKind.PREEMPT:
                # A preempted job goes back to the queue, as the service and the simulator do.
                pending[decision.job_id] = submitted[decision.job_id]
        assert_within_quota(policy, state)
        state.check_invariants()
