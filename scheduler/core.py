"""The policy core's entry point: ``SchedulerCore.step(state, pending, now) -> list[Decision]``.

The core is pure: it reads no clock, database or network. The live service and the simulator hold a
:class:`~scheduler.state.ClusterState`, hand it to :meth:`SchedulerCore.step` with the pending jobs and their own
notion of *now*, and carry out the decisions it returns. ``step`` applies the starts it decides to ``state``
(so the caller's state already reflects them) and leaves everything else alone::

    >>> from scheduler.core import SchedulerCore
    >>> from scheduler.model import Job, Node
    >>> from scheduler.state import ClusterState
    >>> state = ClusterState([Node(id="n1", model="H100", devices=8, cpu_milli=96000, memory_mib=1048576)])
    >>> core = SchedulerCore()
    >>> [d.kind.value for d in core.step(state, [Job(id="a", devices_per_worker=8),
    ...                                           Job(id="b", devices_per_worker=1)], now=0.0)]
    ['start', 'reject']
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from scheduler.catalog import Catalog, load_catalog
from scheduler.model import Decision, DecisionKind, Job, Reason, ReasonCode
from scheduler.placement import PlacementConfig, PlacementEngine, PlacementResult
from scheduler.state import ClusterState
from scheduler.throughput import ThroughputMatrix, load_throughput


@dataclass(frozen=True)
class CoreConfig:
    """Everything that makes two runs of the core behave identically (with the same catalog and matrix)."""

    placement: PlacementConfig = field(default_factory=PlacementConfig)
    #: Jobs whose runtime is unknown are assumed to take this long on the reference model (finish estimates).
    default_runtime_s: float = 3600.0


class SchedulerCore:
    """One scheduling pass: order pending jobs, place each all-or-nothing, explain the rest.

    Deterministic: the same state, jobs, ``now`` and config give the same decisions (the random scorer, too,
    draws from a generator seeded by ``config.placement.seed``).
    """

    def __init__(
        self,
        config: CoreConfig | None = None,
        catalog: Catalog | None = None,
        throughput: ThroughputMatrix | None = None,
    ) -> None:
        self.config = config or CoreConfig()
        self.catalog = catalog or load_catalog()
        self.throughput = throughput or (
            load_throughput(catalog=self.catalog) if catalog is not None else load_throughput()
        )
        self.placement = PlacementEngine(self.config.placement, self.catalog, self.throughput)

    @staticmethod
    def order(pending: Iterable[Job]) -> list[Job]:
        """Higher priority first, then first come first served, then by id (a total, stable order)."""
        return sorted(pending, key=lambda j: (-j.priority, j.submit_time, j.id))

    def step(self, state: ClusterState, pending: Iterable[Job], now: float) -> list[Decision]:
        """Decide for every pending job: ``start`` (applied to ``state``) or ``reject`` with reasons."""
        decisions: list[Decision] = []
        for job in self.order(pending):
            decisions.append(self.decide(state, job, now))
        return decisions

    def decide(self, state: ClusterState, job: Job, now: float) -> Decision:
        """Place one job now if possible (and allocate it on ``state``), else say why not."""
        if job.id in state.allocations:
            return Decision(
                kind=DecisionKind.REJECT,
                job_id=job.id,
                reasons=(Reason(ReasonCode.UNSCHEDULABLE, "job {job} is already running", detail={"job": job.id}),),
            )
        result: PlacementResult = self.placement.place(state, job)
        if result.placement is None:
            return Decision(kind=DecisionKind.REJECT, job_id=job.id, reasons=tuple(result.reasons))
        state.allocate(result.placement)
        self.placement.observe(job)
        runtime = job.runtime_s if job.runtime_s is not None else self.config.default_runtime_s
        return Decision(
            kind=DecisionKind.START,
            job_id=job.id,
            placement=result.placement,
            estimated_finish=now + runtime / result.relative_throughput,
        )
