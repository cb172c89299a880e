"""The policy core's entry point: ``SchedulerCore.step(state, pending, now) -> list[Decision]``.

The core is pure: it reads no clock, database or network. The live service and the simulator hold a
:class:`~scheduler.state.ClusterState`, hand it to :meth:`SchedulerCore.step` with the pending jobs and their own
notion of *now*, and carry out the decisions it returns. ``step`` applies what it decides to ``state`` — starts
are allocated and charged, preemption victims are released — so the caller's state already reflects them::

    >>> from scheduler.core import SchedulerCore
    >>> from scheduler.model import Job, Node
    >>> from scheduler.state import ClusterState
    >>> state = ClusterState([Node(id="n1", model="H100", devices=8, cpu_milli=96000, memory_mib=1048576)])
    >>> core = SchedulerCore()
    >>> [d.kind.value for d in core.step(state, [Job(id="a", devices_per_worker=8),
    ...                                           Job(id="b", devices_per_worker=1)], now=0.0)]
    ['start', 'reject']

One step: order the pending jobs (priority class, then weighted DRF with decayed history, or another ordering of
:mod:`scheduler.orderings`, per queue), and for each: check quota per candidate pool, place it all-or-nothing; if
capacity is what is missing, try preemption or reclaim (or, under SRTF and LAS, displace a running job the
ordering ranks lower), else give the head job of its queue a reservation that later jobs may only backfill
around. Under strict FIFO the first job of a queue that cannot start holds back the rest of its queue.
"""

from __future__ import annotations

import math
import statistics
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

from scheduler.backfill import Reservation, ReservationBook, reservation_reason
from scheduler.catalog import Catalog, load_catalog
from scheduler.fairshare import FairShare, ShareBook, UsageHistory
from scheduler.metering import Meter
from scheduler.model import (
    MILLI,
    Decision,
    DecisionKind,
    DomesticPreference,
    Job,
    LedgerEntry,
    Placement,
    Reason,
    ReasonCode,
    StopCause,
)
from scheduler.orderings import (
    PREEMPTIVE,
    DurationPredictor,
    OrderingContext,
    OrderingRule,
    ServiceBook,
    key_order,
    mixed_order,
)
from scheduler.placement import Admission, PlacementConfig, PlacementEngine, PlacementResult, shape_key
from scheduler.preemption import Preemptor
from scheduler.queueing import DrfOrder, FifoOrder
from scheduler.quota import QuotaCheck, demand_for
from scheduler.state import ClusterState, PoolState, RunningJob
from scheduler.tenancy import NCU, QueuePolicy, check_ordering, empty_policy, tenant_account, user_account
from scheduler.throughput import JobClass, ThroughputMatrix, load_throughput

Ordering = Literal["drf", "fifo", "fifo-strict", "sjf", "srtf", "las", "qssf"]


@dataclass(frozen=True)
class QueueingConfig:
    """Ordering, fairness, preemption and backfill knobs.

    ``ordering`` is the default of every queue that names none (:mod:`scheduler.orderings`); an unknown name
    is refused with the allowed ones::

        >>> QueueingConfig(ordering="lifo")
        Traceback (most recent call last):
        ...
        ValueError: unknown ordering 'lifo' (allowed: drf, fifo, fifo-strict, sjf, srtf, las, qssf)
    """

    ordering: Ordering = "drf"
    #: Half-life of the decayed usage history that fair share adds to current usage.
    history_half_life_s: float = 7 * 24 * 3600.0
    #: Weight of history against current usage in the fair-share key (0 = current only).
    history_weight: float = 0.5
    preemption: bool = True
    #: A running job is not preempted before it has run this long (KAI's min-guaranteed-runtime).
    min_runtime_s: float = 600.0
    #: Preemption searches per step, and candidate victims looked at per pool.
    max_preemption_attempts: int = 16
    max_victim_candidates: int = 256
    backfill: bool = True
    #: Reservations made per step (Slurm's bf_max_job_test plays the same role).
    max_reservations: int = 8
    #: LAS: thresholds of attained service in device-seconds, ascending (Tiresias' simulator: 3,250 and 7,200).
    las_thresholds: tuple[float, ...] = (3250.0, 7200.0)
    #: LAS: a job that waited this many times the time it ran since its last promotion goes back to level 0
    #: (Tiresias' starvation knob; 0 = off).
    las_starvation: float = 0.0
    #: Whether a stopped run's work is kept in full when it starts again (the workload checkpoints on
    #: preemption, as Tiresias' simulator assumes); otherwise only what it checkpointed counts. SRTF's
    #: remaining time reads it.
    preempted_resume: bool = False
    #: How often SRTF or LAS may displace one job. Work lost at every displacement of a job that does not resume
    #: can keep two jobs displacing each other for ever (LAS's starvation rule brings each back in turn), so
    #: without ``preempted_resume`` the default bounds it at 3; with it, ``None`` (no bound, as Tiresias).
    ordering_preemptions: int | None = None

    def __post_init__(self) -> None:
        check_ordering(self.ordering)
        thresholds = self.las_thresholds
        if any(t <= 0 for t in thresholds) or list(thresholds) != sorted(thresholds):
            raise ValueError(f"las_thresholds must be positive and ascending, got {list(thresholds)}")
        if self.las_starvation < 0:
            raise ValueError(f"las_starvation must be 0 (off) or positive, got {self.las_starvation:g}")


@dataclass(frozen=True)
class CoreConfig:
    """Everything that makes two runs of the core behave identically (with the same catalog and matrix)."""

    placement: PlacementConfig = field(default_factory=PlacementConfig)
    queueing: QueueingConfig = field(default_factory=QueueingConfig)


class RuntimeEstimator:
    """Expected runtime on the reference model: the user's walltime, else the median of the class's recent jobs."""

    def __init__(self, window: int = 200) -> None:
        self._by_class: dict[JobClass, deque[float]] = {}
        self._window = window
        self._median: dict[JobClass, float] = {}

    def record(self, job_class: JobClass, reference_seconds: float) -> None:
        history = self._by_class.setdefault(job_class, deque(maxlen=self._window))
        history.append(reference_seconds)
        self._median[job_class] = statistics.median(history)

    def estimate(self, job: Job) -> float | None:
        if job.runtime_s is not None:
            return job.runtime_s
        return self._median.get(job.job_class)


@dataclass
class _Walk:
    """What one step's walk over the queue remembers from job to job."""

    preemption_attempts: int = 0
    #: Job shapes that found no victims: victims only get scarcer as the step goes on.
    preemption_misses: set[tuple[object, ...]] = field(default_factory=set)
    #: The one ordering of every queue in this step (``None``: queues order differently, ask per queue).
    uniform: str | None = "drf"
    #: Strict-FIFO queues held back by their first job that could not start: queue -> that job.
    blocked: dict[str | None, str] = field(default_factory=dict)
    #: Per preemptive ordering in use, who may displace whom (built on first use in the step).
    rules: dict[str, OrderingRule] = field(default_factory=dict)
    context: OrderingContext | None = None


class SchedulerCore:
    """One scheduling pass over a cluster state. Deterministic for a given state, input, ``now`` and config."""

    def __init__(
        self,
        config: CoreConfig | None = None,
        catalog: Catalog | None = None,
        throughput: ThroughputMatrix | None = None,
        policy: QueuePolicy | None = None,
    ) -> None:
        self.config = config or CoreConfig()
        self.catalog = catalog or load_catalog()
        self.throughput = throughput or (
            load_throughput(catalog=self.catalog) if catalog is not None else load_throughput()
        )
        self.placement = PlacementEngine(self.config.placement, self.catalog, self.throughput)
        self.runtimes = RuntimeEstimator()
        #: Service each job got in runs that stopped short (LAS, SRTF), and QSSF's duration predictor.
        self.service = ServiceBook()
        self.predictor = DurationPredictor()
        queueing = self.config.queueing
        self.history = UsageHistory(queueing.history_half_life_s)
        self.fairshare = FairShare(self.history, queueing.history_weight)
        self.policy = policy or empty_policy(self.catalog)
        #: Ordering per resolved queue (cleared with a new policy).
        self._orderings: dict[str | None, str] = {}
        self.quota = QuotaCheck(self.policy)
        self.meter = Meter(self.catalog, self.policy)
        self.preemptor = Preemptor(self.placement, self.quota, queueing.min_runtime_s, queueing.max_victim_candidates)
        #: The reservations of a step, and the plans kept from the last one.
        self.books = ReservationBook()
        #: The fair-share keys of a step, and dominant shares kept across steps.
        self.shares = ShareBook(self.fairshare)
        #: The state the last step ran on: kept reservations and the history's rates describe it. Another state
        #: (a fork for a forecast, a rebuilt state) starts both over.
        self._stepped: ClusterState | None = None
        self._domestic_jobs: dict[tuple[str, str, DomesticPreference], tuple[Job, Job]] = {}
        #: The policy's domestic preference per (queue, tenant) a job names (cleared with a new policy).
        self._domestic_policy: dict[tuple[str, str], DomesticPreference] = {}
        self._ncu_state: ClusterState | None = None
        self._ncu_nodes = 0
        self._ncu_value = 0.0
        #: What :meth:`_make_order` orders for: the state, the time and the walk of the step (or forecast) asking.
        self._order_at: tuple[ClusterState, float, _Walk | None] = (ClusterState(), 0.0, None)
        #: ``now`` of the step before the current one (LAS: who crossed a threshold since).
        self._previous_step = -math.inf
        self._step_now = -math.inf

    @property
    def reservations(self) -> dict[str, Reservation]:
        """Reservations made by the last step (reported as why-pending; rebuilt every step)."""
        return self.books.current

    # ------------------------------------------------------------------------------------------ policy

    def set_policy(self, policy: QueuePolicy) -> None:
        """Swap in a validated policy; usage already charged keeps its accounts until those jobs stop."""
        self.policy = policy
        self._domestic_policy.clear()
        self._orderings.clear()
        self.quota = QuotaCheck(policy)
        self.meter = Meter(self.catalog, policy)
        self.preemptor = Preemptor(
            self.placement, self.quota, self.config.queueing.min_runtime_s, self.config.queueing.max_victim_candidates
        )

    @staticmethod
    def order(pending: Iterable[Job]) -> list[Job]:
        """Priority first, then submit time, then id: the FIFO baseline order."""
        return list(FifoOrder(pending))

    # ------------------------------------------------------------------------------------------ step

    def step(self, state: ClusterState, pending: Iterable[Job], now: float) -> list[Decision]:
        """Decide for every pending job: ``start`` (applied), ``preempt`` (victims released) or ``reject``."""
        # 1. Follow the state: history accrues to now; a state other than the last step's starts shares and
        #    kept reservations over.
        same_state = state is self._stepped
        self._stepped = state
        if now != self._step_now:
            self._previous_step, self._step_now = self._step_now, now
        self.books.begin(state, same_state)
        self.shares.begin(state, self.policy, self._ncu_capacity(state))
        self._advance_history(state, now, same_state)
        # 2. Order the queue: each job with its queue's domestic policy, by priority, then its queue's ordering.
        walk = _Walk()
        self._order_at = (state, now, walk)
        order = self._make_order([self._effective(job) for job in pending], self.shares.share)
        # 3. Walk it: admit by quota and place all-or-nothing; a job blocked by capacity backfills, preempts, or
        #    reserves room as its queue's head; every other job is told why it waits.
        decisions: list[Decision] = []
        try:
            for job in order:
                decisions.extend(self._decide(state, job, now, walk))
        finally:
            # 4. Lift the reservations (the caller's state shows real usage between steps) and keep their plans.
            self.books.end(state)
        return decisions

    def _decide(self, state: ClusterState, job: Job, now: float, walk: _Walk) -> list[Decision]:
        """One job of the walk: start, backfill, preempt for it, or reject with its reasons (and maybe reserve)."""
        if job.id in state.allocations:
            return [self._already_running(job)]
        queueing = self.config.queueing
        queue = self.quota.queue_of(job)
        ordering = walk.uniform or self._ordering_of(queue)
        if ordering == "fifo-strict" and queue in walk.blocked:
            return [self._held_back(job, walk.blocked[queue])]
        admit = self._admission(state, queue, job)
        result = self.placement.place(state, job, admit)
        if result.placement is not None:
            return [self._start(state, job, queue, result, now)]
        # The first job of a strict-FIFO queue that cannot start (for want of room, not because it can never run
        # here) holds back everything behind it.
        strict = ordering == "fifo-strict"
        if not result.capacity_blocked:
            if strict and _waits_for_room(result.reasons):
                walk.blocked[queue] = job.id
            return [Decision(DecisionKind.REJECT, job.id, reasons=tuple(result.reasons))]
        backfilled = self._backfill(state, job, queue, admit, now) if self.books.current else None
        if backfilled is not None:
            return [backfilled]
        if queueing.preemption and walk.preemption_attempts < queueing.max_preemption_attempts:
            rule = self._rule(ordering, state, now, walk) if ordering in PREEMPTIVE else None
            # Job shapes that found no victims this step: victims only get scarcer as the step goes on.
            miss_key: tuple[object, ...] = (shape_key(job), queue, job.priority, job.tenant)
            if rule is not None:
                miss_key += (rule.signature(job),)
            if miss_key not in walk.preemption_misses:
                walk.preemption_attempts += 1
                preempted = self._preempt(state, job, queue, now, rule)
                if preempted:
                    walk.preemption_misses.clear()
                    self.books.backfill_misses.clear()
                    return preempted
                walk.preemption_misses.add(miss_key)
        reasons = list(result.reasons)
        if (
            queueing.backfill
            and self.books.may_reserve(queue, queueing.max_reservations)
            and self.runtimes.estimate(job) is not None
        ):
            reservation = self.books.reserve(self.placement, state, job, queue, now)
            if reservation is not None:
                reasons.insert(0, reservation_reason(reservation, own=True))
        elif self.books.current:
            reasons.append(self.books.held_reason())
        if strict:
            walk.blocked[queue] = job.id
        return [Decision(DecisionKind.REJECT, job.id, reasons=tuple(reasons))]

    def decide(self, state: ClusterState, job: Job, now: float) -> Decision:
        """One job through :meth:`step` (a convenience for callers that place jobs one at a time)."""
        decisions = self.step(state, [job], now)
        return next(d for d in decisions if d.job_id == job.id and d.kind is not DecisionKind.PREEMPT)

    def _make_order(self, jobs: list[Job], share: Callable[[Job, bool], float]) -> Iterable[Job]:
        """The walk's order: one ordering over every job when all their queues order alike (the core's configured
        ordering when the policy names none), else each queue in its own order, queues taking turns by share.
        The step's state, time and walk are in ``_order_at`` (the signature stays what subclasses override)."""
        state, now, walk = self._order_at
        default = self.config.queueing.ordering
        if self.policy.orders_queues:
            by_queue: dict[str | None, list[Job]] = {}
            for job in jobs:
                by_queue.setdefault(self.quota.queue_of(job), []).append(job)
            orderings = {self._ordering_of(queue) for queue in by_queue}
        else:
            by_queue, orderings = {}, {default}
        context = self._context(state, now)
        if walk is not None:
            walk.context = context
        if len(orderings) == 1:
            (ordering,) = orderings
            if walk is not None:
                walk.uniform = ordering
            return self._ordered(jobs, ordering, share, context)
        if walk is not None:
            walk.uniform = None
        return mixed_order(
            {q: self._ordered(queued, self._ordering_of(q), share, context) for q, queued in by_queue.items()},
            share,
        )

    def _ordered(
        self, jobs: list[Job], ordering: str, share: Callable[[Job, bool], float], context: OrderingContext
    ) -> Iterable[Job]:
        if ordering == "drf":
            return DrfOrder(jobs, share)
        if ordering in ("fifo", "fifo-strict"):
            return FifoOrder(jobs)
        if ordering == "las" and self.config.queueing.las_starvation > 0:
            for job in jobs:
                self.service.promote_starved(job.id, context.now, self.config.queueing.las_starvation)
        return key_order(jobs, ordering, context)

    def ordered(
        self, jobs: Iterable[Job], share: Callable[[Job, bool], float], state: ClusterState, now: float
    ) -> Iterable[Job]:
        """The order a step would walk ``jobs`` in, with ``share`` as the fair-share keys (the ETA plans in it)."""
        self._order_at = (state, now, None)
        return self._make_order(list(jobs), share)

    def ordering_of(self, job: Job) -> str:
        """The ordering of the job's queue (the core's configured one unless the policy names another)."""
        return self._ordering_of(self.quota.queue_of(job))

    def _ordering_of(self, queue: str | None) -> str:
        ordering = self._orderings.get(queue)
        if ordering is None:
            ordering = self._orderings[queue] = self.policy.ordering(queue) or self.config.queueing.ordering
        return ordering

    def _context(self, state: ClusterState, now: float) -> OrderingContext:
        queueing = self.config.queueing
        return OrderingContext(
            now=now,
            estimate=self.runtimes.estimate,
            service=self.service,
            predictor=self.predictor,
            running=state.running,
            las_thresholds=queueing.las_thresholds,
            las_starvation=queueing.las_starvation,
            previous_step=self._previous_step if self._previous_step < now else -math.inf,
            displacement_budget=(
                queueing.ordering_preemptions
                if queueing.ordering_preemptions is not None
                else None
                if queueing.preempted_resume
                else 3
            ),
        )

    def _rule(self, ordering: str, state: ClusterState, now: float, walk: _Walk) -> OrderingRule:
        rule = walk.rules.get(ordering)
        if rule is None:
            context = walk.context or self._context(state, now)
            applies = None if walk.uniform else (lambda a, b: self.ordering_of(b) == ordering)
            rule = walk.rules[ordering] = OrderingRule(ordering, context, applies)
        return rule

    def next_change(self, state: ClusterState, pending: Iterable[Job], now: float) -> float | None:
        """The earliest time after ``now`` at which time alone can change a decision of the ordering: a running
        job crossing a LAS threshold, or a waiting one promoted by the starvation rule. ``None``: no such time
        (every other change comes with an arrival or a stop, which the caller steps on anyway).

        >>> from scheduler.model import Node
        >>> core = SchedulerCore(CoreConfig(queueing=QueueingConfig(ordering="las")))
        >>> state = ClusterState([Node(id="n", model="A100", devices=2, cpu_milli=64000, memory_mib=512000)])
        >>> _ = core.step(state, [Job(id="a", devices_per_worker=2)], now=0.0)
        >>> core.next_change(state, [Job(id="b", devices_per_worker=2)], now=0.0)   # 3,250 device-s at 2
        1625.0
        """
        jobs = list(pending)
        if not jobs:
            return None
        queueing = self.config.queueing
        las_pending = [job for job in jobs if self.ordering_of(job) == "las"]
        if not las_pending:
            return None
        soonest = math.inf
        thresholds = queueing.las_thresholds
        for running in state.running.values():
            devices = running.job.total_device_milli / MILLI
            if devices <= 0 or self.ordering_of(running.job) != "las":
                continue
            attained = self.service.attained(running.job.id, running, now)
            level = bisect_right(thresholds, attained * (1 + 1e-12) + 1e-9)
            if level < len(thresholds):
                soonest = min(soonest, now + (thresholds[level] - attained) / devices)
        if queueing.las_starvation > 0:
            for job in las_pending:
                at = self.service.starving_at(job.id, queueing.las_starvation)
                if at is not None and at > now:
                    soonest = min(soonest, at)
        return soonest if soonest > now and math.isfinite(soonest) else None

    # ------------------------------------------------------------------------------------------ stops

    def finish(
        self, state: ClusterState, job_id: str, now: float, cause: StopCause = StopCause.FINISHED
    ) -> LedgerEntry | None:
        """Release a job that stopped and return its ledger entry; learns its runtime for estimates."""
        running = state.running.get(job_id)
        if running is None:
            if job_id in state.allocations:
                state.release(job_id)
            return None
        state.release(job_id)
        if cause is StopCause.FINISHED:
            self.runtimes.record(running.job.job_class, (now - running.started_at) * running.relative)
            self.predictor.record(running.job, self.service.progress(job_id, running, now))
            self.service.forget(job_id)
        elif cause is StopCause.CANCELLED:
            self.service.forget(job_id)
        else:
            queueing = self.config.queueing
            self.service.stopped(running, now, queueing.preempted_resume, queueing.las_thresholds)
        return self.meter.stop(running, now, cause)

    def adopt(
        self,
        state: ClusterState,
        job: Job,
        placement: Placement,
        started_at: float,
        last_checkpoint: float | None = None,
    ) -> RunningJob:
        """Take back a job that was already running (after a restart): allocate and charge it as ``step`` did.

        Raises :class:`~scheduler.state.CapacityError` when its placement no longer fits (a node is gone, or
        two stored placements overlap); the caller then treats the job as lost.
        """
        job = self._effective(job)
        queue = self.quota.queue_of(job)
        result = PlacementResult(
            placement=placement, relative_throughput=self.throughput.relative(placement.model, job.job_class)
        )
        running = self._running(job, queue, result, started_at)
        running.last_checkpoint = last_checkpoint
        # It runs already: on a node cordoned, or a device that turned unhealthy, since it started it goes on.
        state.start(running, admit=False)
        self.shares.touched(running.accounts)
        return running

    def remember_usage(self, tenant: str, user: str, ncu: float, start: float, end: float, now: float) -> None:
        """Feed fair share a past run (``ncu`` from ``start`` to ``end <= now``), e.g. from the ledger after a
        restart, so that a tenant who used much yesterday still waits behind one who did not::

            >>> core = SchedulerCore()
            >>> core.remember_usage("heavy", "u", ncu=64.0, start=0.0, end=3600.0, now=7200.0)
            >>> core.history.value("tenant:heavy") > 0, core.history.value("tenant:light")
            (True, 0.0)
        """
        self.history.advance({}, now)
        for account in (tenant_account(tenant), user_account(tenant, user)):
            self.history.record(account, ncu, start, min(end, now))

    def checkpointed(self, state: ClusterState, job_id: str, now: float) -> None:
        """Note a job's checkpoint: preemption then prefers it (less work lost)."""
        running = state.running.get(job_id)
        if running is not None:
            running.last_checkpoint = now

    # ------------------------------------------------------------------------------------------ helpers

    def _effective(self, job: Job) -> Job:
        """The job with its queue's and tenant's domestic policy applied (the stricter wins)."""
        where = (job.queue, job.tenant)
        policy = self._domestic_policy.get(where)
        if policy is None:
            policy = self._domestic_policy[where] = self.policy.domestic(self.policy.resolve(*where), job.tenant)
        if _DOMESTIC_RANK[policy] <= _DOMESTIC_RANK[job.domestic]:
            return job
        key = (job.id, job.queue, policy)
        cached = self._domestic_jobs.get(key)
        # Kept with the job it was copied from: a new version of the job (same id) is copied afresh.
        if cached is None or cached[0] is not job:
            cached = (job, job.model_copy(update={"domestic": policy}))
            if len(self._domestic_jobs) > 100_000:
                self._domestic_jobs.clear()
            self._domestic_jobs[key] = cached
        return cached[1]

    def _admission(self, state: ClusterState, queue: str | None, job: Job) -> Admission | None:
        if queue is None:
            return None

        def admit(pool: PoolState, relative: float) -> Reason | None:
            return self.quota.admit(state, queue, demand_for(pool.model, job.total_devices, relative), pool.id)

        return admit

    def _running(self, job: Job, queue: str | None, result: PlacementResult, now: float) -> RunningJob:
        placement = result.placement
        assert placement is not None
        rel = result.relative_throughput
        estimate = self.runtimes.estimate(job)
        return RunningJob(
            job=job,
            placement=placement,
            started_at=now,
            expected_end=now + estimate / rel if estimate is not None and rel > 0 else None,
            relative=rel,
            accounts=self.quota.accounts(job, queue),
            demand=demand_for(placement.model, job.total_devices, rel),
        )

    def _start(self, state: ClusterState, job: Job, queue: str | None, result: PlacementResult, now: float) -> Decision:
        running = self._running(job, queue, result, now)
        state.start(running)
        self.shares.touched(running.accounts)
        self.placement.observe(job)
        return Decision(
            DecisionKind.START,
            job.id,
            placement=running.placement,
            estimated_finish=running.expected_end,
            ledger=(self.meter.start(running),),
        )

    def _held_back(self, job: Job, head: str) -> Decision:
        reason = Reason(
            ReasonCode.PRIORITY,
            "waits behind {head}, the first job of its queue that cannot start (strict FIFO)",
            detail={"head": head},
        )
        return Decision(DecisionKind.REJECT, job.id, reasons=(reason,))

    def _already_running(self, job: Job) -> Decision:
        reason = Reason(ReasonCode.UNSCHEDULABLE, "job {job} is already running", detail={"job": job.id})
        return Decision(DecisionKind.REJECT, job.id, reasons=(reason,))

    def _backfill(
        self, state: ClusterState, job: Job, queue: str | None, admit: Admission | None, now: float
    ) -> Decision | None:
        """Start ``job`` on reserved room if it ends before every reservation it would touch starts."""
        shape = (shape_key(job), job.queue, job.tenant)
        if shape in self.books.backfill_misses:
            return None
        estimate = self.runtimes.estimate(job)
        if estimate is None:
            return None
        earliest_end = now + estimate / _fastest(self, job)
        # Lifting helps only where a reservation the job would end before hides at least one worker's worth of
        # devices, in a pool the job may use.
        lifted = [
            r for r in self.books.current.values() if r.start >= earliest_end and r.hidden_milli >= job.device_milli
        ]
        if lifted:
            pools = {pool.id for pool, _ in self.placement.candidate_pools(state, job)}
            lifted = [r for r in lifted if r.placement.pool in pools]
        if not lifted:
            self.books.backfill_misses.add(shape)
            return None
        for reservation in lifted:
            reservation.lift(state)
        try:
            result = self.placement.place(state, job, admit)
            if result.placement is None:
                self.books.backfill_misses.add(shape)
                return None
            end = now + estimate / result.relative_throughput
            nodes = set(result.placement.nodes)
            for reservation in self.books.current.values():
                touches = nodes & {w.node for w in reservation.placement.workers}
                if touches and (reservation not in lifted or end > reservation.start):
                    return None
            return self._start(state, job, queue, result, now)
        finally:
            for reservation in lifted:
                reservation.hide(state)

    def _preempt(
        self, state: ClusterState, job: Job, queue: str | None, now: float, rule: OrderingRule | None = None
    ) -> list[Decision]:
        plan = self.preemptor.plan(state, job, queue, now, rule)
        if plan is None:
            return []
        decisions: list[Decision] = []
        self.shares.reset()
        resume = self.config.queueing.preempted_resume
        for victim in plan.victims:
            if victim.job.priority < job.priority:
                code, why = ReasonCode.PRIORITY, "higher priority"
            elif rule is not None and rule.outranks(job, victim):
                code, why = ReasonCode.PRIORITY, _RULE_REASON[rule.ordering]
                self.service.note_displaced(victim.job.id)
            else:
                code, why = ReasonCode.QUOTA, "reclaim"
            self.service.stopped(victim, now, resume, self.config.queueing.las_thresholds)
            state.release(victim.job.id)
            reason = Reason(code, "preempted by {by} ({why})", plan.pool.id, {"by": job.id, "why": why})
            decisions.append(
                Decision(
                    DecisionKind.PREEMPT,
                    victim.job.id,
                    reasons=(reason,),
                    ledger=(self.meter.stop(victim, now, StopCause.PREEMPTED),),
                )
            )
        result = PlacementResult(placement=plan.placement, relative_throughput=plan.relative)
        decisions.append(self._start(state, job, queue, result, now))
        return decisions

    def _advance_history(self, state: ClusterState, now: float, same_state: bool) -> None:
        # Only accounts whose usage changed need a new rate, unless the state is not the last step's: then every
        # account's rate is set from scratch.
        if same_state:
            accounts: Iterable[str] = state.usage_touched
        else:
            accounts = set(state.usage) | set(self.history.accruing())
        usage = state.usage
        rates = {a: usage[a].get(NCU, 0.0) if a in usage else 0.0 for a in accounts if ":" in a}
        state.usage_touched.clear()
        self.history.advance(rates, now)

    def _ncu_capacity(self, state: ClusterState) -> float:
        # Installed capacity changes only when nodes are added: kept per state (held, so its id cannot be reused)
        # and node count.
        if self._ncu_state is not state or self._ncu_nodes != len(state.nodes):
            self._ncu_state, self._ncu_nodes = state, len(state.nodes)
            self._ncu_value = sum(
                pool.capacity_milli / 1000 * self.throughput.relative(pool.model, JobClass.GENERIC)
                for pool in state.pools.values()
            )
        return self._ncu_value


_DOMESTIC_RANK = {DomesticPreference.ANY: 0, DomesticPreference.PREFERRED: 1, DomesticPreference.REQUIRED: 2}
_RULE_REASON = {"srtf": "shorter remaining time (SRTF)", "las": "less attained service (LAS)"}
#: Reasons that mean "no room now" (a strict-FIFO head waits for room); the others say it can never start here.
_ROOM_CODES = frozenset({ReasonCode.NO_CAPACITY, ReasonCode.FRAGMENTATION, ReasonCode.TOPOLOGY, ReasonCode.QUOTA})


def _waits_for_room(reasons: Iterable[Reason]) -> bool:
    return any(reason.code in _ROOM_CODES for reason in reasons)


def _fastest(core: SchedulerCore, job: Job) -> float:
    models = core.placement.acceptable_models(job)
    return models[0][1] if models else 1.0
