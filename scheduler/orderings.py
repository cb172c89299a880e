"""Orderings of the pending queue: which job the core's walk looks at next, and which running job a waiting one
may displace.

Every ordering puts the higher priority class first; within a class:

=============  ====================================================================================================
``drf``        weighted DRF among tenants, then users, on current usage plus decayed history; FIFO within a user
               (:class:`~scheduler.queueing.DrfOrder`, the default)
``fifo``       submit time; a job that does not fit is skipped (later jobs may start; with backfill on, only
               around the room reserved for blocked heads)
``fifo-strict`` submit time, and the first job of a queue that cannot start blocks every later job of that queue
               (head-of-line blocking, as Tiresias' and the PAI simulator's FIFO)
``sjf``        shortest estimated runtime first (the job's walltime, else the median of its class); not preemptive
``srtf``       shortest estimated *remaining* runtime first, preemptive: a waiting job may stop a running job of
               its class whose remaining time is longer
``las``        two-dimensional least attained service, discretised (Tiresias): a job's level is how many of the
               thresholds its attained device-seconds have passed; lower levels first, FIFO within a level, and a
               waiting job may stop a running job of its class on a higher level. With a starvation factor
               ``f > 0``, a job that has waited ``f ×`` the time it ran since it was last promoted goes back to
               level 0
``qssf``       quasi-shortest-service-first (Helios): smallest predicted device-seconds first, the duration
               predicted from the history of the same user's jobs of the same name and size
               (:class:`DurationPredictor`); never the job's own runtime
=============  ====================================================================================================

A queue of the policy file may name its ordering (``queues.<name>.ordering``, inherited by its children); where
every pending job's queue orders alike, that ordering runs over all of them. Where they differ, each queue orders
its own jobs and the queues take turns by the fair share of their tenants (:func:`mixed_order`).

    >>> from scheduler.model import Job
    >>> jobs = [Job(id="long", runtime_s=600), Job(id="short", runtime_s=60, submit_time=5)]
    >>> context = OrderingContext(now=10.0, estimate=lambda job: job.runtime_s)
    >>> [job.id for job in key_order(jobs, "sjf", context)]
    ['short', 'long']
"""

from __future__ import annotations

import math
import statistics
from bisect import bisect_right
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from scheduler.model import Job
from scheduler.queueing import FifoOrder
from scheduler.state import RunningJob
from scheduler.tenancy import ORDERING_NAMES, check_ordering

__all__ = [
    "ORDERING_NAMES",
    "PREEMPTIVE",
    "DurationPredictor",
    "OrderingContext",
    "OrderingRule",
    "ServiceBook",
    "check_ordering",
    "key_order",
    "mixed_order",
]

#: Orderings under which a waiting job may stop a running job of its own priority class.
PREEMPTIVE = frozenset({"srtf", "las"})
#: Orderings that need a runtime estimate for every job (the rest go last without one).
NEEDS_RUNTIME = frozenset({"sjf", "srtf"})

_INF = math.inf

SortKey = tuple[int, float, float, str]
#: How an ordering ranks a running job it may stop: larger goes first.
Rank = tuple[float, float]


# ---------------------------------------------------------------------------------------------- service


@dataclass(slots=True)
class _Service:
    #: Device-seconds received over all finished runs (LAS's attained service), since the last promotion.
    attained: float = 0.0
    #: Wall seconds run since the last promotion (the starvation rule's yardstick).
    executed: float = 0.0
    #: Reference-model seconds of work kept from past runs (what SRTF subtracts from the estimate).
    progress: float = 0.0
    #: When the last run stopped (the starvation rule counts the wait from there).
    stopped_at: float = 0.0
    #: When the job reached its current LAS level (``None``: it never left level 0 since its submission).
    level_at: float | None = None
    #: How often a preemptive ordering displaced it (its budget: ``QueueingConfig.ordering_preemptions``).
    displaced: int = 0


class ServiceBook:
    """Service every job received in its past runs; a running job's current run is added on the fly.

    The core records a job when a run stops short (preempted, node lost, failed and retried) and forgets it when
    it finishes. Work kept across a stop is what the job checkpointed, or the whole run when the workload
    resumes where it stopped (``resume=True``, the assumption of Tiresias' simulator)::

        >>> from scheduler.model import Placement, TopologyLevel
        >>> book = ServiceBook()
        >>> run = RunningJob(Job(id="j", workers=2), Placement("j", "A100", "p", (), TopologyLevel.NODE),
        ...                  started_at=0.0, expected_end=None, relative=1.0)
        >>> book.stopped(run, now=100.0, resume=True)
        >>> book.attained("j", None, now=150.0), book.progress("j", None, now=150.0)
        (200.0, 100.0)
    """

    def __init__(self) -> None:
        self._jobs: dict[str, _Service] = {}

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._jobs

    def stopped(self, running: RunningJob, now: float, resume: bool, thresholds: tuple[float, ...] = ()) -> None:
        """A run of ``running`` stopped at ``now`` without finishing: keep what it received and what it kept (and
        when it crossed the last of ``thresholds`` it passed, the LAS levels)."""
        entry = self._jobs.get(running.job.id)
        if entry is None:
            entry = self._jobs[running.job.id] = _Service()
        ran = max(now - running.started_at, 0.0)
        devices = running.job.total_devices
        before, after = entry.attained, entry.attained + ran * devices
        crossed = [t for t in thresholds if before < t <= after * (1 + 1e-12) + 1e-9]
        if crossed and devices > 0:
            entry.level_at = running.started_at + (crossed[-1] - before) / devices
        entry.attained = after
        entry.executed += ran
        if resume:
            entry.progress += ran * running.relative
        elif running.last_checkpoint is not None and running.last_checkpoint > running.started_at:
            entry.progress += (running.last_checkpoint - running.started_at) * running.relative
        entry.stopped_at = now

    def forget(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)

    def displaced(self, job_id: str) -> int:
        """How often a preemptive ordering has displaced the job so far."""
        entry = self._jobs.get(job_id)
        return entry.displaced if entry is not None else 0

    def note_displaced(self, job_id: str) -> None:
        entry = self._jobs.get(job_id)
        if entry is None:
            entry = self._jobs[job_id] = _Service()
        entry.displaced += 1

    def attained(self, job_id: str, running: RunningJob | None, now: float) -> float:
        """Device-seconds received since the job's last promotion, the current run included."""
        entry = self._jobs.get(job_id)
        done = entry.attained if entry is not None else 0.0
        if running is not None:
            done += max(now - running.started_at, 0.0) * running.job.total_devices
        return done

    def progress(self, job_id: str, running: RunningJob | None, now: float) -> float:
        """Reference-model seconds of work done and kept, the current run included."""
        entry = self._jobs.get(job_id)
        done = entry.progress if entry is not None else 0.0
        if running is not None:
            done += max(now - running.started_at, 0.0) * running.relative
        return done

    def promote_starved(self, job_id: str, now: float, factor: float) -> bool:
        """Tiresias' starvation rule for a waiting job: back to level 0 once it has waited ``factor ×`` the time
        it ran since its last promotion. Returns whether it was promoted now."""
        entry = self._jobs.get(job_id)
        if factor <= 0 or entry is None or entry.executed <= 0:
            return False
        if now - entry.stopped_at >= factor * entry.executed:
            entry.attained = entry.executed = 0.0
            entry.level_at = now
            return True
        return False

    def level_at(
        self, job_id: str, running: RunningJob | None, now: float, thresholds: tuple[float, ...]
    ) -> float | None:
        """When the job reached its current LAS level (for a running job, a crossing in this run counts);
        ``None`` for a job still on the level it was submitted to."""
        entry = self._jobs.get(job_id)
        at = entry.level_at if entry is not None else None
        if running is not None and running.job.total_devices > 0:
            devices = running.job.total_devices
            before = entry.attained if entry is not None else 0.0
            after = before + max(now - running.started_at, 0.0) * devices
            crossed = [t for t in thresholds if before < t <= after * (1 + 1e-12) + 1e-9]
            if crossed:
                at = running.started_at + (crossed[-1] - before) / devices
        return at

    def starving_at(self, job_id: str, factor: float) -> float | None:
        """When a waiting job will be promoted by the starvation rule (``None``: never, or not waiting)."""
        entry = self._jobs.get(job_id)
        if factor <= 0 or entry is None or entry.executed <= 0:
            return None
        return entry.stopped_at + factor * entry.executed


# ---------------------------------------------------------------------------------------------- predictor


class DurationPredictor:
    """Runtime prediction from history, as Helios' QSSF: the mean reference runtime of the most specific group
    of finished jobs that has one.

    Groups, most specific first: the same user's jobs of the same name and size, of the same name, of the same
    size, all the user's jobs, then all jobs of the job class. A job's name is its ``name`` label; jobs without
    one skip the name groups. Each group keeps its last ``window`` runtimes. Which group answered each job (or
    ``none``) is counted per job id in :attr:`answers`, so a report can state how many jobs fell back::

        >>> predictor = DurationPredictor()
        >>> predictor.record(Job(id="a", user="ann", labels={"name": "bert"}, workers=2), 600.0)
        >>> predictor.predict(Job(id="b", user="ann", labels={"name": "bert"}, workers=2))
        (600.0, 'user+name+size')
        >>> predictor.predict(Job(id="c", user="bob"))
        (600.0, 'class')
        >>> predictor.predict(Job(id="d", user="bob", job_class="cv-train"))
        (None, 'none')
    """

    LEVELS = ("user+name+size", "user+name", "user+size", "user", "class")

    def __init__(self, window: int = 20) -> None:
        self.window = window
        self._groups: dict[tuple[object, ...], tuple[deque[float], list[float]]] = {}
        #: Per job id, the group that first answered for it (``none``: no group had history).
        self._answered: dict[str, str] = {}
        #: Real runtime over the user's own estimate, per user and over everybody.
        self._ratios: dict[tuple[str, ...], deque[float]] = {}
        #: The median of each ratio window, kept until the window changes (a forecast asks for every pending job).
        self._medians: dict[tuple[str, ...], float] = {}

    @staticmethod
    def _keys(job: Job) -> list[tuple[object, ...]]:
        name = job.labels.get("name", "")
        user = (job.tenant, job.user)
        size = job.total_device_milli
        keys: list[tuple[object, ...]] = []
        if name:
            keys += [("user+name+size", *user, name, size), ("user+name", *user, name)]
        keys += [("user+size", *user, size), ("user", *user), ("class", job.job_class.value)]
        return keys

    def record(self, job: Job, reference_seconds: float) -> None:
        """Learn a finished run (its runtime on the reference model), and how it compares to what its user said
        it would run (``runtime_s``, a walltime)."""
        if reference_seconds <= 0:
            return
        if job.runtime_s:
            for ratio_key in (("ratio", job.tenant, job.user), ("ratio",)):
                ratios = self._ratios.get(ratio_key)
                if ratios is None:
                    ratios = self._ratios[ratio_key] = deque(maxlen=self.window * 5)
                ratios.append(reference_seconds / job.runtime_s)
                self._medians.pop(ratio_key, None)
        for key in self._keys(job):
            group = self._groups.get(key)
            if group is None:
                group = self._groups[key] = (deque(maxlen=self.window), [0.0])
            values, total = group
            if len(values) == values.maxlen:
                total[0] -= values[0]
            values.append(reference_seconds)
            total[0] += reference_seconds

    def predict(self, job: Job) -> tuple[float | None, str]:
        """``(predicted reference seconds, group that answered)``, or ``(None, "none")`` without any history."""
        for key in self._keys(job):
            group = self._groups.get(key)
            if group is not None and group[0]:
                level = str(key[0])
                self._note(job.id, level)
                return group[1][0] / len(group[0]), level
        self._note(job.id, "none")
        return None, "none"

    def calibrated(self, job: Job, fallback: Callable[[Job], float | None]) -> float | None:
        """What a forecast should expect ``job`` to run (reference seconds): its user's estimate times the median
        ratio of real runtime to estimate of the user's finished jobs (of everybody's while the user has fewer
        than three), else the history prediction, else ``fallback(job)``::

            >>> predictor = DurationPredictor()
            >>> for seconds in (30.0, 40.0, 50.0):
            ...     predictor.record(Job(id="a", user="ann", runtime_s=100.0), seconds)
            >>> predictor.calibrated(Job(id="b", user="ann", runtime_s=200.0), lambda job: None)
            80.0
        """
        if job.runtime_s:
            for ratio_key in (("ratio", job.tenant, job.user), ("ratio",)):
                median = self._medians.get(ratio_key)
                if median is None:
                    ratios = self._ratios.get(ratio_key)
                    if ratios is None or len(ratios) < 3:
                        continue
                    median = self._medians[ratio_key] = statistics.median(ratios)
                return job.runtime_s * median
            return job.runtime_s
        for key in self._keys(job):
            group = self._groups.get(key)
            if group is not None and group[0]:
                return group[1][0] / len(group[0])
        return fallback(job)

    def _note(self, job_id: str, level: str) -> None:
        if job_id not in self._answered:
            if len(self._answered) > 200_000:
                self._answered.clear()
            self._answered[job_id] = level

    @property
    def answers(self) -> Counter[str]:
        """How many jobs each group answered first (``none``: no prediction, the job went last in its class)."""
        return Counter(self._answered.values())


# ---------------------------------------------------------------------------------------------- keys


def _no_estimate(job: Job) -> float | None:
    return job.runtime_s


@dataclass
class OrderingContext:
    """What the keys of one step read: the step's time, the runtime estimator and the jobs' service so far."""

    now: float
    estimate: Callable[[Job], float | None] = _no_estimate
    service: ServiceBook = field(default_factory=ServiceBook)
    predictor: DurationPredictor = field(default_factory=DurationPredictor)
    running: Mapping[str, RunningJob] = field(default_factory=dict)
    #: LAS thresholds in device-seconds of attained service (ascending): level k once k of them are passed.
    las_thresholds: tuple[float, ...] = (3250.0, 7200.0)
    #: LAS starvation factor (0: off).
    las_starvation: float = 0.0
    #: When the core last stepped before this one (a job that crossed a LAS threshold since then is "just
    #: demoted").
    previous_step: float = -math.inf
    #: A job the preemptive ordering displaced this many times is not displaced by it again (``None``: no bound).
    displacement_budget: int | None = None

    def remaining(self, job: Job, running: RunningJob | None = None) -> float:
        """Estimated reference seconds left (``inf`` without an estimate)."""
        estimate = self.estimate(job)
        if estimate is None:
            return _INF
        return max(estimate - self.service.progress(job.id, running, self.now), 0.0)

    def level(self, job: Job, running: RunningJob | None = None) -> int:
        """The job's LAS level from the service it attained (the current run included when it runs); a job that
        reached a threshold is on the next level (a hair of tolerance, so that a wake-up computed for the
        crossing finds it crossed)."""
        attained = self.service.attained(job.id, running, self.now)
        return bisect_right(self.las_thresholds, attained * (1 + 1e-12) + 1e-9)

    def level_entry(self, job: Job, running: RunningJob | None = None) -> float:
        """When the job reached its LAS level (its submit time while it is on the level it started on): FIFO
        within a level is by this time, as in Tiresias' simulator, where a job joins the back of a queue as it
        enters it."""
        at = self.service.level_at(job.id, running, self.now, self.las_thresholds)
        return job.submit_time if at is None else at

    def service_demand(self, job: Job) -> float:
        """QSSF's key: predicted device-seconds (``inf`` without a prediction)."""
        predicted, _ = self.predictor.predict(job)
        return _INF if predicted is None else predicted * job.total_devices

    def key(self, ordering: str) -> Callable[[Job], SortKey]:
        """The sort key of ``ordering`` (priority class first, then the ordering's measure, submit time, id)."""
        if ordering in ("fifo", "fifo-strict", "drf"):
            return lambda job: (-job.priority, job.submit_time, 0.0, job.id)
        if ordering == "sjf":

            def sjf(job: Job) -> SortKey:
                estimate = self.estimate(job)
                return (-job.priority, _INF if estimate is None else estimate, job.submit_time, job.id)

            return sjf
        if ordering == "srtf":
            return lambda job: (-job.priority, self.remaining(job), job.submit_time, job.id)
        if ordering == "las":
            return lambda job: (-job.priority, float(self.level(job)), self.level_entry(job), job.id)
        if ordering == "qssf":
            return lambda job: (-job.priority, self.service_demand(job), job.submit_time, job.id)
        check_ordering(ordering)
        raise AssertionError(ordering)  # pragma: no cover - every name is handled above


def key_order(pending: Iterable[Job], ordering: str, context: OrderingContext) -> list[Job]:
    """The jobs in the order of a key-based ordering (every one but ``drf``)."""
    if ordering in ("fifo", "fifo-strict"):
        return list(FifoOrder(pending))
    return sorted(pending, key=context.key(ordering))


def mixed_order(
    queues: Mapping[str | None, Iterable[Job]],
    share: Callable[[Job, bool], float],
) -> Iterator[Job]:
    """Queues that order differently, merged: within each priority class (highest first) the queue whose next
    job's tenant has the lowest fair-share key goes next (ties: the queue's name), and offers its next job in its
    own order. ``share`` is read again after every decision, as :class:`~scheduler.queueing.DrfOrder` does.

    Each value of ``queues`` is an iterable in the queue's own order, all of one priority class before the next
    (every ordering sorts by class first); an iterator is advanced only after its last job was decided.
    """
    heads: dict[str | None, tuple[Job, Iterator[Job]]] = {}
    for name, jobs in queues.items():
        iterator = iter(jobs)
        first = next(iterator, None)
        if first is not None:
            heads[name] = (first, iterator)
    while heads:
        top = max(job.priority for job, _ in heads.values())
        name = min(
            (n for n, (job, _) in heads.items() if job.priority == top),
            key=lambda n: (share(heads[n][0], True), "" if n is None else n),
        )
        job, iterator = heads.pop(name)
        yield job
        following = next(iterator, None)
        if following is not None:
            heads[name] = (following, iterator)


# ---------------------------------------------------------------------------------------------- preemption


class OrderingRule:
    """Which running job a waiting job may stop under a preemptive ordering (same priority class only).

    ``srtf``: the victim's estimated remaining time is longer than the waiting job's. ``las``: the victim is on
    a higher level, or it has just been demoted onto the waiting job's level, which the waiting job reached
    earlier (a demoted job joins the back of its new level); otherwise jobs of one level keep what they run.
    Victims the ordering ranks worst go first (:meth:`rank`). ``applies(job, victim)`` says
    whether both jobs are under this ordering (their queues may order differently).
    """

    def __init__(
        self,
        ordering: str,
        context: OrderingContext,
        applies: Callable[[Job, Job], bool] | None = None,
    ) -> None:
        if ordering not in PREEMPTIVE:
            raise ValueError(f"ordering {ordering!r} does not preempt (preemptive: {', '.join(sorted(PREEMPTIVE))})")
        self.ordering = ordering
        self.context = context
        self._applies = applies
        self._own: dict[str, float] = {}

    def _measure(self, job: Job, running: RunningJob | None) -> float:
        if self.ordering == "srtf":
            return self.context.remaining(job, running)
        return float(self.context.level(job, running))

    def _rank(self, job: Job, running: RunningJob | None) -> Rank:
        if self.ordering == "srtf":
            return (self.context.remaining(job, running), job.submit_time)
        return (float(self.context.level(job, running)), self.context.level_entry(job, running))

    def outranks(self, job: Job, victim: RunningJob) -> bool:
        """Whether waiting ``job`` goes before running ``victim`` under the ordering."""
        other = victim.job
        if other.priority != job.priority or (self._applies is not None and not self._applies(job, other)):
            return False
        budget = self.context.displacement_budget
        if budget is not None and self.context.service.displaced(other.id) >= budget:
            return False
        if self.ordering == "las" and self._just_demoted(job, victim):
            return True
        mine = self._own.get(job.id)
        if mine is None:
            mine = self._own[job.id] = self._measure(job, None)
        return mine < self._measure(other, victim)

    def _just_demoted(self, job: Job, victim: RunningJob) -> bool:
        """A running job that crossed onto its level since the previous step joins the back of that level: the
        jobs already waiting there (on that level earlier) go before it, as in Tiresias."""
        context = self.context
        level = context.level(victim.job, victim)
        if level == 0 or context.level(job) != level:
            return False
        entered = context.level_entry(victim.job, victim)
        return entered > context.previous_step and context.level_entry(job) < entered

    def rank(self, victim: RunningJob) -> Rank:
        """How badly the ordering ranks a running job (larger: stopped first; under LAS, the highest level, and
        on it the job that reached it last)."""
        return self._rank(victim.job, victim)

    def signature(self, job: Job) -> float:
        """What, besides its shape, decides whether ``job`` finds victims (for the walk's miss cache)."""
        mine = self._own.get(job.id)
        if mine is None:
            mine = self._own[job.id] = self._measure(job, None)
        return mine
