"""Estimated start times: fast-forward the core itself on a copy of the state, with runtime estimates.

The forecast is the live policy's own: a copy of the state and of the core (same config, quotas, fair-share
history, runtime history) steps from *now* to each estimated end of a running job, releasing it and scheduling
the pending jobs as the real core would, until every pending job has started or the event budget is spent::

    >>> from scheduler.core import SchedulerCore
    >>> from scheduler.model import Job, Node
    >>> from scheduler.state import ClusterState
    >>> state = ClusterState([Node(id="n1", model="A100", devices=8, cpu_milli=64000, memory_mib=512000)])
    >>> core = SchedulerCore()
    >>> _ = core.step(state, [Job(id="running", devices_per_worker=8, runtime_s=600)], now=0.0)
    >>> forecast(core, state, [Job(id="next", devices_per_worker=8, runtime_s=60)], now=100.0).starts
    {'next': 600.0}

New arrivals are not foreseen, and jobs without any runtime estimate never end in the forecast, so what waits
behind them has no estimate (``None``).
"""

from __future__ import annotations

import copy
import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field

from scheduler.core import SchedulerCore
from scheduler.model import DecisionKind, Job
from scheduler.state import ClusterState


@dataclass
class Forecast:
    """Estimated start per pending job (``None``: not within the forecast), and how far it looked."""

    starts: dict[str, float | None] = field(default_factory=dict)
    events: int = 0
    horizon: float = 0.0
    complete: bool = True


def fork(core: SchedulerCore) -> SchedulerCore:
    """A core with the same configuration and learned state, whose decisions do not touch the original."""
    twin = SchedulerCore(core.config, core.catalog, core.throughput, core.policy)
    twin.runtimes = copy.deepcopy(core.runtimes)
    twin.history = copy.deepcopy(core.history)
    twin.fairshare.history = twin.history
    twin.placement.scorer = copy.deepcopy(core.placement.scorer)
    return twin


def forecast(
    core: SchedulerCore,
    state: ClusterState,
    pending: Iterable[Job],
    now: float,
    max_events: int = 10_000,
) -> Forecast:
    """Fast-forward a copy of ``core`` and ``state`` until every job in ``pending`` has an estimated start."""
    sim = fork(core)
    sim_state = state.copy()
    remaining = {job.id: job for job in pending}
    result = Forecast(starts=dict.fromkeys(remaining))
    ends: list[tuple[float, str]] = [
        (r.expected_end, job_id) for job_id, r in sim_state.running.items() if r.expected_end is not None
    ]
    heapq.heapify(ends)
    t = now
    while remaining and result.events < max_events:
        result.events += 1
        running_jobs = {job_id: r.job for job_id, r in sim_state.running.items()}
        for decision in sim.step(sim_state, list(remaining.values()), t):
            if decision.kind is DecisionKind.START:
                remaining.pop(decision.job_id, None)
                if decision.job_id in result.starts:
                    result.starts[decision.job_id] = t
                end = sim_state.running[decision.job_id].expected_end
                if end is not None:
                    heapq.heappush(ends, (end, decision.job_id))
            elif decision.kind is DecisionKind.PREEMPT and decision.job_id in running_jobs:
                # A preempted job waits again; if it was one we forecast for, its estimate is its restart.
                remaining[decision.job_id] = running_jobs[decision.job_id]
        if not remaining:
            break
        # Skip ends of jobs that were preempted in the meantime.
        while ends and ends[0][1] not in sim_state.running:
            heapq.heappop(ends)
        if not ends:
            break
        t = max(t, ends[0][0])
        while ends and ends[0][0] <= t:
            _, job_id = heapq.heappop(ends)
            if job_id in sim_state.running:
                sim.finish(sim_state, job_id, t)
    result.horizon = t
    result.complete = not remaining
    return result
