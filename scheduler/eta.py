"""Estimated start times for pending jobs: the core fast-forwarded (exact), or a capacity plan (long queues).

**Exact.** A copy of the state and of the core (same config, quotas, fair-share history, runtime history) steps
from *now* to each estimated end of a running job, releasing it and scheduling the pending jobs as the real core
would, until every pending job has started or the event budget is spent::

    >>> from scheduler.core import SchedulerCore
    >>> from scheduler.model import Job, Node
    >>> from scheduler.state import ClusterState
    >>> state = ClusterState([Node(id="n1", model="A100", devices=8, cpu_milli=64000, memory_mib=512000)])
    >>> core = SchedulerCore()
    >>> _ = core.step(state, [Job(id="running", devices_per_worker=8, runtime_s=600)], now=0.0)
    >>> forecast(core, state, [Job(id="next", devices_per_worker=8, runtime_s=60)], now=100.0).starts
    {'next': 600.0}

Every forecast event is a full core step over every job still pending, so a queue of tens of thousands would
take minutes. **Aggregate** (:func:`aggregate_forecast`; :func:`forecast` switches to it when the exact one
would cost more than ``exact_budget`` job decisions) plans like Slurm's conservative backfill on a resource
timeline: every pool gets a profile of free capacity over time, built from the running jobs' estimated ends;
jobs are visited once, in the core's own order (priority, then DRF shares that grow with what each tenant has
been planned, or FIFO), and each takes the earliest moment at which one of its acceptable pools holds the whole
job for its estimated runtime on that model, which is then booked. The example again::

    >>> result = forecast(core, state, [Job(id="next", devices_per_worker=8, runtime_s=60)], now=100.0,
    ...                   method="aggregate")
    >>> result.starts, result.pools, result.method
    ({'next': 600.0}, {'next': 'default/A100'}, 'aggregate')

Why the aggregate model looks the way it does:

* Nodes are not tracked one by one (that is what makes the exact forecast slow), but a gang of 8-device
  workers needs whole free nodes, and counting free devices alone would promise it far too early. So the
  profile keeps, for every worker size *k* the queue asks for, the devices lying in free groups of *k* on one
  node (``k × slots[k]``, as :class:`~scheduler.state.PoolState` counts them). A *k*-device job must fit in the
  columns of every size up to *k* and books its devices in all of them: workers smaller than a node are assumed
  to fill partly used nodes before they break whole ones, as the scorers try to. The estimate is optimistic
  where placement fragments worse than that, and where CPU, memory or topology bind (they are not modelled).
  Fractional workers need free device-milli and are booked as if they broke whole devices: pessimistic only
  by their own size, which is small, and it spares every whole-device job a check of the free-milli column.
* Breakpoints are rounded *up* to a grid: ``min_resolution_s`` apart near *now*, further out ``resolution`` ×
  the distance from now, but never coarser than ``8 × resolution`` × a booking's own length (a queue of short
  jobs far out must still drain at its own pace); power-of-two steps, so the grids nest. A profile then
  keeps a few hundred breakpoints however many jobs end, which is what bounds the cost per job; a planned end
  is late by at most one step, never early. ``resolution=0`` plans on exact times.
* Quota only rules out pools that the job's queue could never take it on (checked as if the queue used
  nothing); quota that binds because of the queue's other work, preemption and new arrivals are not foreseen.
  The live core backfills around a few reservations per step where this plan reserves for every job, so large
  gangs tend to start later than planned and small jobs sooner. Fair-share history is taken as of the core's
  last step.

Jobs without any runtime estimate never end in either forecast: the aggregate books their capacity until the
end of time, so whatever needs it has no estimate (``None``).
"""

from __future__ import annotations

import copy
import heapq
import math
import statistics
import weakref
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

from scheduler.core import SchedulerCore
from scheduler.model import MILLI, DecisionKind, DomesticPreference, Job
from scheduler.quota import demand_for
from scheduler.state import ClusterState, PoolState, RunningJob
from scheduler.tenancy import NCU, tenant_account, user_account

Method = Literal["exact", "aggregate"]

_FOREVER = math.inf


@dataclass
class Forecast:
    """Estimated start per pending job (``None``: not within the forecast), and how far it looked.

    ``pools`` says where each job with an estimate was foreseen to start; ``method`` which forecast answered
    (``exact``: the core fast-forwarded, ``events`` core steps; ``aggregate``: the capacity plan, ``events``
    jobs booked).
    """

    starts: dict[str, float | None] = field(default_factory=dict)
    events: int = 0
    horizon: float = 0.0
    complete: bool = True
    method: Method = "exact"
    pools: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EtaBand:
    """How far from a forecast start the real one may fall: the range ``zhisuan eta`` shows.

    Around a forecast start ``s`` made at ``now`` (forecast wait ``w = s - now``), the band runs from
    ``s - max(early × w, floor_s)`` (never before ``now``) to ``s + max(late × w, floor_s)``: errors grow with
    how far ahead the forecast looks, and a floor covers the cycle and launch times of a job about to start.
    The defaults are calibrated on the measurements in ``benchmarks/README.md`` (live run and congested
    simulated traces)::

        >>> EtaBand(early=0.5, late=1.0, floor_s=60.0).around(start=1000.0, now=400.0)
        (700.0, 1600.0)
    """

    early: float = 0.9
    late: float = 1.5
    floor_s: float = 120.0

    def around(self, start: float, now: float) -> tuple[float, float]:
        wait = max(start - now, 0.0)
        low = max(now, start - max(self.early * wait, self.floor_s))
        return low, start + max(self.late * wait, self.floor_s)


DEFAULT_BAND = EtaBand()


def forecast_runtime(core: SchedulerCore, job: Job) -> float | None:
    """Reference seconds a forecast expects ``job`` to run: its estimate corrected by how its user's finished jobs
    compared to their estimates (:meth:`~scheduler.orderings.DurationPredictor.calibrated`)."""
    return core.predictor.calibrated(job, core.runtimes.estimate)


def forecast_end(core: SchedulerCore, running: RunningJob, now: float) -> float | None:
    """When a forecast expects a running job to end: its calibrated runtime from its start, never before now."""
    if running.expected_end is None:
        return None
    estimate = forecast_runtime(core, running.job)
    if estimate is None or running.relative <= 0:
        return running.expected_end
    return max(running.started_at + estimate / running.relative, now)


def fork(core: SchedulerCore) -> SchedulerCore:
    """A core with the same configuration and learned state, whose decisions do not touch the original."""
    twin = SchedulerCore(core.config, core.catalog, core.throughput, core.policy)
    twin.runtimes = copy.deepcopy(core.runtimes)
    twin.history = copy.deepcopy(core.history)
    twin.fairshare.history = twin.history
    twin.placement.scorer = copy.deepcopy(core.placement.scorer)
    twin.service = copy.deepcopy(core.service)
    twin.predictor = copy.deepcopy(core.predictor)
    return twin


class ArrivalModel:
    """Arrivals a forecast should expect: the jobs submitted over the last ``window_s`` come again, each the same
    time later ("the next hour looks like the last one"), for up to ``repeats`` windows. Without them a forecast
    lets every job start as soon as the jobs already queued allow, while jobs submitted later with a higher
    priority or a better fair share go first: real starts come later than forecast, more so the longer the wait.

    The model learns from what each forecast is shown (pending and running jobs, by their submit time), so the
    live service and the simulator feed it by calling :func:`forecast`, nothing else::

        >>> model = ArrivalModel(window_s=100.0)
        >>> model.observe([Job(id="a", submit_time=900.0)], now=1000.0)
        >>> [(j.id, j.submit_time) for j in model.expected(now=1000.0, horizon_s=250.0)]
        [('a+2', 1100.0), ('a+3', 1200.0)]
    """

    def __init__(self, window_s: float = 3600.0, repeats: int = 3) -> None:
        self.window_s = window_s
        self.repeats = repeats
        self._seen: dict[str, Job] = {}
        self._first = math.inf

    def observe(self, jobs: Iterable[Job], now: float) -> None:
        for job in jobs:
            if job.id not in self._seen and job.submit_time >= now - self.window_s:
                self._seen[job.id] = job
                self._first = min(self._first, job.submit_time)
        if len(self._seen) > 4 * 1024 or any(j.submit_time < now - self.window_s for j in self._seen.values()):
            self._seen = {k: j for k, j in self._seen.items() if j.submit_time >= now - self.window_s}

    def expected(self, now: float, horizon_s: float) -> list[Job]:
        """Jobs expected to be submitted in ``(now, now + horizon_s]``."""
        # The window is what has been seen so far, until a whole one has.
        window = min(self.window_s, max(now - self._first, 0.0))
        if window < 60.0:
            return []
        out = []
        for job in self._seen.values():
            for k in range(1, self.repeats + 1):
                at = job.submit_time + k * window
                if now < at <= now + horizon_s:
                    out.append(job.model_copy(update={"id": f"{job.id}+{k}", "submit_time": at}))
        return out


class Calibration:
    """The forecast's own track record: for every job, its first forecast against its real start; forecasts are
    then scaled by the median ratio of real to forecast wait of the last ``window`` jobs that started.

    A forecast plans the queue as it stands; jobs submitted later with a higher priority or a better fair share
    go first, running jobs end sooner or later than estimated, preemptions happen: real waits differ from planned
    ones by a factor that depends on the load and the mix, which the scheduler can learn from its own history
    (measured in ``benchmarks/README.md``). Fed by :func:`forecast`, which sees the jobs start in ``state``::

        >>> calibration = Calibration(window=3, least=1)
        >>> calibration.remember("a", made=0.0, start=100.0)
        >>> calibration.started("a", at=200.0)
        >>> calibration.scaled(start=150.0, now=50.0)
        250.0
    """

    def __init__(self, window: int = 100, least: int = 10) -> None:
        self.window = window
        self.least = least
        self._first: dict[str, tuple[float, float]] = {}
        self._ratios: deque[float] = deque(maxlen=window)
        #: The median of ``_ratios`` until a job starts (every pending job's forecast is scaled by it).
        self._factor: float | None = None

    @property
    def factor(self) -> float:
        """Real over forecast wait, the median of the recent jobs (1 until ``least`` jobs have started)."""
        if self._factor is None:
            self._factor = statistics.median(self._ratios) if len(self._ratios) >= self.least else 1.0
        return self._factor

    def remember(self, job_id: str, made: float, start: float) -> None:
        if job_id not in self._first:
            self._first[job_id] = (made, start)

    def started(self, job_id: str, at: float) -> None:
        first = self._first.pop(job_id, None)
        if first is not None and first[1] - first[0] > 1.0:
            self._ratios.append(max(at - first[0], 0.0) / (first[1] - first[0]))
            self._factor = None

    def forget_except(self, keep: set[str]) -> None:
        for job_id in [j for j in self._first if j not in keep]:
            del self._first[job_id]

    def scaled(self, start: float, now: float) -> float:
        return now + self.factor * max(start - now, 0.0)


_ARRIVALS: weakref.WeakKeyDictionary[SchedulerCore, ArrivalModel] = weakref.WeakKeyDictionary()
_CALIBRATIONS: weakref.WeakKeyDictionary[SchedulerCore, Calibration] = weakref.WeakKeyDictionary()


def calibration(core: SchedulerCore) -> Calibration:
    """The track record the forecasts for ``core`` learn from and are scaled by (one per core)."""
    found = _CALIBRATIONS.get(core)
    if found is None:
        found = _CALIBRATIONS[core] = Calibration()
    return found


def arrival_model(core: SchedulerCore) -> ArrivalModel:
    """The arrival model that forecasts for ``core`` learn and use (one per core)."""
    model = _ARRIVALS.get(core)
    if model is None:
        model = _ARRIVALS[core] = ArrivalModel()
    return model


def forecast(
    core: SchedulerCore,
    state: ClusterState,
    pending: Iterable[Job],
    now: float,
    max_events: int = 10_000,
    *,
    method: Literal["auto", "exact", "aggregate"] = "auto",
    exact_budget: int = 10_000,
    expect_arrivals: bool = False,
    calibrate: bool = True,
) -> Forecast:
    """Estimated starts of ``pending``. ``auto`` is exact unless that would take more than ``exact_budget`` job
    decisions (each event is a step over the jobs still pending; running jobs' ends and the starts are events).
    With ``calibrate`` (the default) the planned waits are scaled by the forecasts' own track record
    (:class:`Calibration`); with ``expect_arrivals`` the exact forecast also expects the arrivals of
    :class:`ArrivalModel` (off by default: measured worse on bursty traces, ``benchmarks/README.md``)."""
    return _drain(
        forecasting(
            core,
            state,
            pending,
            now,
            max_events,
            method=method,
            exact_budget=exact_budget,
            expect_arrivals=expect_arrivals,
            calibrate=calibrate,
        )
    )


#: How many jobs the aggregate plan books between two yields of :func:`forecasting`.
SLICE_JOBS = 256
#: The aggregate plan's grid (see the module doc): relative step far from now, and the finest step near it.
RESOLUTION = 1 / 8
MIN_RESOLUTION_S = 60.0


def forecasting(
    core: SchedulerCore,
    state: ClusterState,
    pending: Iterable[Job],
    now: float,
    max_events: int = 10_000,
    *,
    method: Literal["auto", "exact", "aggregate"] = "auto",
    exact_budget: int = 10_000,
    expect_arrivals: bool = False,
    calibrate: bool = True,
) -> Generator[None, None, Forecast]:
    """:func:`forecast` a slice at a time: a generator that yields every :data:`SLICE_JOBS` jobs the aggregate
    plan books and returns the forecast (``StopIteration.value``). A caller with a deadline plans a long queue
    over several turns (the live service, a slice per cycle, so that planning 100,000 jobs never holds a cycle
    up). ``state`` may change between slices: jobs that started meanwhile are skipped, a pool is read when the
    plan first needs it. The exact forecast (short queues) works on copies and runs in one slice::

        >>> from scheduler.model import Node
        >>> state = ClusterState([Node(id="n1", model="A100", devices=8, cpu_milli=64000, memory_mib=512000)])
        >>> core = SchedulerCore()
        >>> _ = core.step(state, [Job(id="running", devices_per_worker=8, runtime_s=600)], now=0.0)
        >>> steps = forecasting(core, state, [Job(id="next", devices_per_worker=8)], now=100.0, method="aggregate")
        >>> while True:
        ...     try:
        ...         next(steps)  # the caller's deadline would be checked here
        ...     except StopIteration as done:
        ...         result = done.value
        ...         break
        >>> result.starts
        {'next': 600.0}
    """
    jobs = list(pending)
    record = calibration(core) if calibrate else None
    if record is not None:
        for job_id, running in state.running.items():
            record.started(job_id, running.started_at)
        record.forget_except({job.id for job in jobs})
    arrivals: list[Job] = []
    if expect_arrivals:
        model = arrival_model(core)
        model.observe(jobs, now)
        model.observe((r.job for r in state.running.values()), now)
        arrivals = model.expected(now, model.window_s * model.repeats)
    if method == "auto":
        ends = sum(len(pool.ends) for pool in state.pools.values())
        queued = len(jobs) + len(arrivals)
        method = "exact" if queued * (ends + queued) <= exact_budget else "aggregate"
    if method == "aggregate":
        result = yield from _aggregate(core, state, jobs, now, RESOLUTION, MIN_RESOLUTION_S)
    else:
        result = exact_forecast(core, state, jobs, now, max_events, arrivals)
    if record is not None:
        for job_id, start in result.starts.items():
            if start is not None:
                record.remember(job_id, now, start)
                result.starts[job_id] = record.scaled(start, now)
    return result


def _drain(steps: Generator[None, None, Forecast]) -> Forecast:
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result: Forecast = done.value
            return result


def exact_forecast(
    core: SchedulerCore,
    state: ClusterState,
    pending: Iterable[Job],
    now: float,
    max_events: int = 10_000,
    arrivals: Sequence[Job] = (),
) -> Forecast:
    """Fast-forward a copy of ``core`` and ``state`` until every job in ``pending`` has an estimated start.

    ``arrivals`` are jobs expected to be submitted later (at their ``submit_time``): they join the queue then, and
    take their turn as the core would give it to them; their own starts are not reported."""
    sim = fork(core)
    sim_state = state.copy()
    remaining = {job.id: job for job in pending}
    result = Forecast(starts=dict.fromkeys(remaining))
    waiting = set(remaining)
    coming = sorted((job for job in arrivals if job.id not in remaining), key=lambda job: job.submit_time)
    coming.reverse()  # pop() takes the earliest
    # The fork decides as the core does (on the users' estimates), but jobs end when their calibrated estimates
    # say (:func:`forecast_runtime`): users over-estimate, and ends foreseen too late make every start late.
    ends: list[tuple[float, str]] = []
    for job_id, r in sim_state.running.items():
        end = forecast_end(core, r, now)
        if end is not None:
            ends.append((end, job_id))
    heapq.heapify(ends)
    t = now
    while waiting and result.events < max_events:
        while coming and coming[-1].submit_time <= t:
            arrival = coming.pop()
            remaining[arrival.id] = arrival
        result.events += 1
        running_jobs = {job_id: r.job for job_id, r in sim_state.running.items()}
        for decision in sim.step(sim_state, list(remaining.values()), t):
            if decision.kind is DecisionKind.START:
                started = sim_state.running.get(decision.job_id)
                if started is None:
                    # Started and then preempted within the same step (possible with min_runtime_s=0): the
                    # job waits again, and its start is still to come.
                    continue
                remaining.pop(decision.job_id, None)
                if decision.job_id in waiting:
                    waiting.discard(decision.job_id)
                    result.starts[decision.job_id] = t
                    if decision.placement is not None:
                        result.pools[decision.job_id] = decision.placement.pool
                end = forecast_end(core, started, t)
                if end is not None:
                    heapq.heappush(ends, (end, decision.job_id))
            elif decision.kind is DecisionKind.PREEMPT and decision.job_id in running_jobs:
                # A preempted job waits again; if it was one we forecast for, its estimate is its restart.
                remaining[decision.job_id] = running_jobs[decision.job_id]
                if decision.job_id in result.starts:
                    waiting.add(decision.job_id)
        if not waiting:
            break
        # Skip ends of jobs that were preempted in the meantime.
        while ends and ends[0][1] not in sim_state.running:
            heapq.heappop(ends)
        following = [ends[0][0]] if ends else []
        if coming:
            following.append(coming[-1].submit_time)
        if not following:
            break
        t = max(t, min(following))
        while ends and ends[0][0] <= t:
            _, job_id = heapq.heappop(ends)
            if job_id in sim_state.running:
                sim.finish(sim_state, job_id, t)
    result.horizon = t
    result.complete = not waiting
    return result


# ---------------------------------------------------------------------------------------------- aggregate


def aggregate_forecast(
    core: SchedulerCore,
    state: ClusterState,
    pending: Iterable[Job],
    now: float,
    *,
    resolution: float = RESOLUTION,
    min_resolution_s: float = MIN_RESOLUTION_S,
) -> Forecast:
    """Plan every job in ``pending`` on per-pool capacity profiles, in the core's order (see the module doc).

    ``core`` and ``state`` are only read. Cost: one pass over the jobs; per job, a search and a booking over
    the breakpoints its runtime spans, which the grid keeps to a few hundred per pool.
    """
    return _drain(_aggregate(core, state, pending, now, resolution, min_resolution_s))


def _aggregate(
    core: SchedulerCore,
    state: ClusterState,
    pending: Iterable[Job],
    now: float,
    resolution: float,
    min_resolution_s: float,
) -> Generator[None, None, Forecast]:
    planner = _Planner(core, state, now, resolution, min_resolution_s)
    by_id = {job.id: job for job in pending}
    jobs = planner.effective(list(by_id.values()))
    result = Forecast(starts=dict.fromkeys(by_id), method="aggregate", horizon=now)
    yield
    planner.prepare(jobs)
    yield
    order = core.ordered(jobs, planner.share, state, now)
    yield
    starts, pools, plan = result.starts, result.pools, planner.plan
    running = state.allocations
    for n, job in enumerate(order, 1):
        if not n % SLICE_JOBS:
            yield
        if job.id in running:
            continue  # already started: nothing to estimate
        planned = plan(job)
        if planned is not None:
            starts[job.id], pools[job.id] = planned
    result.events = len(pools)
    result.horizon = max((start for start in starts.values() if start is not None), default=now)
    result.complete = len(pools) == len(starts)
    return result


class _Profile:
    """Free capacity of one pool from now on, a step function: values hold from ``times[i]`` until
    ``times[i + 1]`` (the last, forever).

    ``cols[0]`` is free device-milli; ``cols[c]`` (``c >= 1``) the milli in free groups of ``ks[c - 1]`` whole
    devices on one node, less what fractional jobs were planned to take. A job of ``k`` whole devices per worker
    must fit in every column from 1 to ``k``'s, and books the same milli in those and in column 0; a fractional
    job must fit in column 0 and books columns 0 and 1 (as if it broke whole devices; its devices are few).
    """

    __slots__ = ("books", "checks", "cols", "column", "ends", "floors", "pool", "snap", "times")

    def __init__(
        self,
        pool: PoolState,
        times: list[float],
        cols: list[list[int]],
        column: dict[int, int],
        snap: Callable[[float, float], float],
    ) -> None:
        self.pool = pool
        self.times = times
        self.cols = cols
        self.column = column
        self.snap = snap
        #: Per column class: the lists a job must fit in, and the lists it books (the lists themselves).
        self.checks = [cols[:1]] + [cols[1 : c + 1] for c in range(1, len(cols))]
        self.books = [cols[:2]] + [cols[: c + 1] for c in range(1, len(cols))]
        #: Per (column, need, duration): no such job fits before ``at``. Bookings only take capacity away, so
        #: the bound stays true and the next job of the same size starts its search there.
        self.floors: dict[tuple[int, int, float], _Floor] = {}
        #: Per duration, per start: the rounded end (many jobs share both).
        self.ends: dict[float, dict[float, float]] = {}

    def earliest(
        self, c: int, need: int, duration: float, ends: dict[float, float], floor: float, limit: float = _FOREVER
    ) -> tuple[float, int, float] | None:
        """First breakpoint from ``floor`` on, before ``limit``, where ``need`` fits in the columns of ``c`` for
        ``duration``: ``(its time, its index, the rounded end)``; ``(a later bound, -1, 0)`` if there is none
        before ``limit``; ``None`` if there is none at all. ``ends`` caches rounded ends by start."""
        times = self.times
        cols = self.checks[c]
        n = len(times)
        stop = n if limit == _FOREVER else bisect_left(times, limit)
        i = bisect_left(times, floor)
        if len(cols) == 1:
            col = cols[0]
            while i < stop:
                if col[i] < need:
                    i += 1
                    continue
                if duration == _FOREVER:
                    end, j = _FOREVER, n
                else:
                    end = ends.get(times[i], 0.0)
                    if not end:
                        end = ends[times[i]] = self.snap(times[i] + duration, duration)
                    j = bisect_left(times, end, i + 1)
                if j == i + 1 or min(col[i + 1 : j]) >= need:
                    return times[i], i, end
                i = j - 1
                while col[i] >= need:
                    i -= 1
                i += 1
            return (times[i], -1, 0.0) if i < n else None
        while i < stop:
            # The earliest breakpoint where the job fits at all, then the whole window from there.
            for col in cols:
                if col[i] < need:
                    i += 1
                    break
            else:
                if duration == _FOREVER:
                    end, j = _FOREVER, n
                else:
                    end = ends.get(times[i], 0.0)
                    if not end:
                        end = ends[times[i]] = self.snap(times[i] + duration, duration)
                    j = bisect_left(times, end, i + 1)
                for col in cols:
                    if j > i + 1 and min(col[i + 1 : j]) < need:
                        # Past the last breakpoint in the window where this column is short.
                        i = j - 1
                        while col[i] >= need:
                            i -= 1
                        i += 1
                        break
                else:
                    return times[i], i, end
        return (times[i], -1, 0.0) if i < n else None

    def book(self, c: int, need: int, i: int, end: float) -> None:
        """Take ``need`` from the columns ``c`` books, from breakpoint ``i`` until ``end`` (made a breakpoint)."""
        times = self.times
        if not need or end <= times[i]:
            return
        if end == _FOREVER:
            j = len(times)
        else:
            j = bisect_left(times, end, i + 1)
            if j == len(times) or times[j] != end:
                times.insert(j, end)
                for col in self.cols:
                    col.insert(j, col[j - 1])
        for col in self.books[c]:
            col[i:j] = [v - need for v in col[i:j]]


def _snapper(now: float, resolution: float, min_resolution_s: float) -> Callable[[float, float], float]:
    """``snap(t, span)`` rounds ``t``, the end of something that lasted ``span``, up to the grid: a step of
    ``resolution`` × (t - now), but at most ``span`` (× 8 × ``resolution``) and at least ``min_resolution_s``,
    in power-of-two multiples of ``min_resolution_s`` (so the grids nest)."""
    if resolution <= 0 or min_resolution_s <= 0:
        return lambda t, span: t
    scale = resolution / min_resolution_s
    ceil, frexp, ldexp = math.ceil, math.frexp, math.ldexp

    def snap(t: float, span: float) -> float:
        # Far out a coarse step bounds the breakpoints, but a short job's end must stay within its own
        # length: else a queue of short jobs would drain one coarse step per job.
        steps = min(t - now, 8 * span) * scale
        if steps < 2.0:
            return ceil(t / min_resolution_s) * min_resolution_s if steps > 0 else t
        step = ldexp(min_resolution_s, frexp(steps)[1] - 1)
        return ceil(t / step) * step

    return snap


class _Account:
    """One fair-share account as planned: its DRF key is ``slope × dominant share + offset`` (see FairShare)."""

    __slots__ = ("current", "key", "offset", "slope", "usage")

    def __init__(self, usage: dict[str, float], current: float, slope: float, offset: float) -> None:
        self.usage = usage
        self.current = current
        self.slope = slope
        self.offset = offset
        self.key = slope * current + offset

    def add(self, model: str, devices: float, device_share: float, ncu: float, ncu_share: float) -> None:
        """Use ``devices`` of ``model`` (``device_share`` of the model each) and ``ncu`` more; shares only grow."""
        usage = self.usage
        used = usage[model] = usage.get(model, 0.0) + devices
        used_ncu = usage[NCU] = usage.get(NCU, 0.0) + ncu
        self.current = max(self.current, used * device_share, used_ncu * ncu_share)
        self.key = self.slope * self.current + self.offset


class _Floor:
    """No job of one size and duration fits in one pool before ``at`` (shared by the options that ask it)."""

    __slots__ = ("at",)

    def __init__(self, at: float) -> None:
        self.at = at


class _Option:
    """One pool a job shape may plan on: its search and booking for that shape, and what a start there costs."""

    __slots__ = ("book", "device_share", "floor", "model", "pool", "rel", "search")

    def __init__(
        self, profile: _Profile, column: int, need: int, duration: float, floor: _Floor, rel: float, share: float
    ) -> None:
        self.search = partial(profile.earliest, column, need, duration, profile.ends.setdefault(duration, {}))
        self.book = partial(profile.book, column, need)
        self.floor = floor
        self.pool = profile.pool
        self.model = profile.pool.model
        self.rel = rel
        #: One device's share of all devices of the model (fair share's denominator).
        self.device_share = share


class _Planner:
    """The aggregate forecast's working state: profiles, fair-share usage as planned, and per-shape caches."""

    def __init__(
        self, core: SchedulerCore, state: ClusterState, now: float, resolution: float, min_resolution_s: float
    ) -> None:
        self.core = core
        self.state = state
        self.now = now
        self.snap = _snapper(now, resolution, min_resolution_s)
        self.profiles: dict[str, _Profile] = {}
        self.ks: list[int] = [1]
        self._releases: dict[str, list[str]] = {}
        #: Per (placement shape, runtime estimate): every pool a job of that shape may plan on; per (shape,
        #: estimate, quota class): the ones its queue's quota could admit.
        self._shapes: dict[tuple[object, ...], list[_Option]] = {}
        self._by_job: dict[tuple[object, ...], list[_Option]] = {}
        #: Quota classes: queues whose admission answers are alike share one (0: no queue). Per class, a queue.
        self._quota_ids: dict[tuple[str, str], int] = {}
        self._quota_classes: dict[tuple[object, ...], int] = {}
        self._representative: list[str | None] = [None]
        self._admitted: dict[tuple[str, str, int, float], bool] = {}
        self._empty = ClusterState()
        # Fair share as the plan goes: usage per account grows with every booking (progressive filling, as
        # within one core step), so a tenant whose jobs were planned early yields to the others later.
        # DRF keys are read by the DRF ordering and by queues of differing orderings taking turns.
        self._drf = core.config.queueing.ordering == "drf" or core.policy.orders_queues
        self._tenants: dict[str, _Account] = {}
        self._users: dict[tuple[str, str], _Account] = {}
        self._several_users: set[str] = set()
        self._capacity: dict[str, float] = {}
        self._ncu_share = 0.0
        self._totals: dict[bool, float] = {}

    # ------------------------------------------------------------------------------------------ inputs

    def effective(self, jobs: list[Job]) -> list[Job]:
        """The jobs under their queue's and tenant's domestic policy, as the core sees them."""
        policy = self.core.policy
        if all(t.domestic is DomesticPreference.ANY for t in policy.tenants.values()) and all(
            q.domestic in (None, DomesticPreference.ANY) for q in policy.queues.values()
        ):
            return jobs  # no policy is stricter than any job
        stricter: dict[tuple[str, str, DomesticPreference], bool] = {}
        result = []
        for job in jobs:
            key = (job.queue, job.tenant, job.domestic)
            changes = stricter.get(key)
            if changes is None:
                effective = self.core._effective(job)
                stricter[key] = effective is not job
            else:
                effective = self.core._effective(job) if changes else job
            result.append(effective)
        return result

    def prepare(self, jobs: Sequence[Job]) -> None:
        self.ks = sorted({1} | {job.whole_devices for job in jobs if job.whole_devices})
        releases = self._releases
        for pool_id, pool in self.state.pools.items():
            if pool.ends:
                releases.setdefault(pool_id, []).extend(job_id for _, job_id in pool.ends)
        if self._drf:
            tenants: set[str] = set()
            for tenant, _ in {(job.tenant, job.user) for job in jobs}:
                if tenant in tenants:
                    self._several_users.add(tenant)
                tenants.add(tenant)
            core = self.core
            self._capacity = core.fairshare.capacities(self.state, core._ncu_capacity(self.state))
            self._ncu_share = 1.0 / self._capacity[NCU] if self._capacity.get(NCU) else 0.0
            self._totals = {True: core.history.total("tenant:"), False: core.history.total("user:")}

    # ------------------------------------------------------------------------------------------ fair share

    def share(self, job: Job, tenant_level: bool) -> float:
        """The DRF key of the job's tenant or user, with what has been planned so far counted as used."""
        account = self._tenants.get(job.tenant) if tenant_level else self._users.get((job.tenant, job.user))
        if account is None:
            account = self._open(job, tenant_level)
        return account.key

    def _open(self, job: Job, tenant_level: bool) -> _Account:
        # FairShare.key = ((1 - w_h) · current + w_h · historical) / weight, split into slope and offset.
        core, fairshare = self.core, self.core.fairshare
        name = tenant_account(job.tenant) if tenant_level else user_account(job.tenant, job.user)
        total = self._totals[tenant_level]
        historical = fairshare.history.value(name) / total if total > 0 else 0.0
        weight = core.policy.weight(job.tenant) if tenant_level else 1.0
        account = _Account(
            dict(self.state.usage.get(name, {})),
            fairshare.current(self.state, name, self._capacity),
            (1 - fairshare.history_weight) / weight,
            fairshare.history_weight * historical / weight,
        )
        if tenant_level:
            self._tenants[job.tenant] = account
        else:
            self._users[(job.tenant, job.user)] = account
        return account

    # ------------------------------------------------------------------------------------------ planning

    def plan(self, job: Job) -> tuple[float, str] | None:
        """Book ``job`` at its earliest start over its acceptable pools; ``(start, pool id)`` or ``None``."""
        quota = self._quota_ids.get((job.queue, job.tenant))
        if quota is None:
            quota = self._quota_class(job)
        estimate = forecast_runtime(self.core, job)
        key = (job.placement_shape, estimate, quota)
        options = self._by_job.get(key)
        if options is None:
            options = self._by_job[key] = self._options_for(job, estimate, quota)
        if len(options) == 1:
            option = options[0]
            found = option.search(option.floor.at)
            if found is None:
                option.floor.at = _FOREVER
                return None
        elif not options:
            return None
        else:
            # First the pool with the lowest bound (ties: the one the core tries first, the fastest acceptable
            # one), searched to the end; then the others, only before the start found there.
            lows = [o.floor.at for o in options]
            rank = lows.index(min(lows))
            option = options[rank]
            found = option.search(lows[rank])
            at = _FOREVER if found is None else found[0]
            option.floor.at = at
            for n, low in enumerate(lows):
                if n == rank or low > at or (low == at and n > rank):
                    continue
                candidate = options[n]
                hit = candidate.search(low, at if n > rank else math.nextafter(at, _FOREVER))
                if hit is None:
                    candidate.floor.at = _FOREVER
                    continue
                candidate.floor.at = hit[0]
                if hit[1] >= 0:
                    found, at, rank, option = hit, hit[0], n, candidate
            if found is None:
                return None
        start, i, end = found
        option.floor.at = start
        option.book(i, end)
        if self._drf:
            # Count it as used for DRF (DrfOrder opened the accounts before it yielded the job); a tenant's lone
            # user needs no key, DRF orders users only within their tenant.
            devices = job.total_device_milli / MILLI
            ncu = devices * option.rel
            self._tenants[job.tenant].add(option.model, devices, option.device_share, ncu, self._ncu_share)
            if job.tenant in self._several_users:
                user = self._users[(job.tenant, job.user)]
                user.add(option.model, devices, option.device_share, ncu, self._ncu_share)
        return start, option.pool.id

    def _quota_class(self, job: Job) -> int:
        """Queues alike for admission share cached answers: at the top level, those with equal quotas."""
        queue = self.core.quota.queue_of(job)
        if queue is None:
            quota = 0
        else:
            policy = self.core.policy
            # Below the top level, siblings' guarantees count too: no sharing.
            signature = (
                ("queue", queue) if len(policy.path(queue)) > 1 else tuple(sorted(policy.queues[queue].quota.items()))
            )
            quota = self._quota_classes.get(signature, 0)
            if not quota:
                quota = self._quota_classes[signature] = len(self._representative)
                self._representative.append(queue)
        self._quota_ids[(job.queue, job.tenant)] = quota
        return quota

    def _options_for(self, job: Job, estimate: float | None, quota: int) -> list[_Option]:
        """The pools a job of this shape and queue may plan on, in the core's order of preference."""
        key = (job.placement_shape, estimate)
        options = self._shapes.get(key)
        if options is None:
            options = self._shapes[key] = self._shape_options(job, estimate)
        queue = self._representative[quota]
        if queue is None:
            return options
        milli = job.total_device_milli
        admitted = [o for o in options if self._admits(queue, o.pool, milli, o.rel)]
        return options if len(admitted) == len(options) else admitted

    def _shape_options(self, job: Job, estimate: float | None) -> list[_Option]:
        """The pools a job of this shape may plan on, whatever its queue."""
        k = job.whole_devices
        need = job.workers * (k * MILLI if k else job.device_milli)
        options: list[_Option] = []
        for pool, rel in self.core.placement.candidate_pools(self.state, job):
            if k > pool.max_devices:
                continue
            profile = self.profiles.get(pool.id)
            if profile is None:
                profile = self.profiles[pool.id] = self._build(pool)
            column = profile.column[k] if k else 0
            duration = estimate / rel if estimate is not None else _FOREVER
            floor = profile.floors.get((column, need, duration))
            if floor is None:
                floor = profile.floors[(column, need, duration)] = _Floor(self.now)
            capacity = self._capacity.get(pool.model)
            share = 1.0 / capacity if capacity else 0.0
            options.append(_Option(profile, column, need, duration, floor, rel, share))
        return options

    def _admits(self, queue: str | None, pool: PoolState, milli: int, rel: float) -> bool:
        """Could ``queue`` ever take this much of ``pool`` (its quota, with nothing else of it in use)?"""
        if queue is None:
            return True
        key = (queue, pool.id, milli, rel)
        admitted = self._admitted.get(key)
        if admitted is None:
            demand = demand_for(pool.model, milli / MILLI, rel)
            admitted = self._admitted[key] = self.core.quota.admit(self._empty, queue, demand, pool.id) is None
        return admitted

    def _build(self, pool: PoolState) -> _Profile:
        """The pool's free capacity now, then at each running job's (rounded) estimated end."""
        state, now, snap = self.state, self.now, self.snap
        ks = [k for k in self.ks if k <= pool.max_devices]
        column = {k: c for c, k in enumerate(ks, 1)}
        free = pool.free_milli
        for ns in pool.nodes:
            if not ns.schedulable:
                free -= sum(ns.free)
            elif False in ns.healthy:
                free -= sum(f for f, ok in zip(ns.free, ns.healthy, strict=True) if not ok)
        base = [free] + [k * pool.slots[k] * MILLI for k in ks]
        deltas: dict[float, list[int]] = {}
        projected: dict[tuple[str, int], int] = {}
        whole: dict[str, int] = {}
        nodes = state.nodes
        for job_id in self._releases.get(pool.id, ()):
            running = state.running[job_id]
            end = forecast_end(self.core, running, now)
            assert end is not None
            at = snap(end, _FOREVER) if end > now else now
            delta = deltas.get(at)
            if delta is None:
                delta = deltas[at] = [0] * (len(ks) + 1)
            for worker in running.placement.workers:
                ns = nodes[worker.node]
                if not ns.schedulable:
                    continue
                milli = worker.milli
                healthy = ns.healthy
                if milli == MILLI and False not in healthy:
                    # Whole devices held alone come back whole.
                    freed = len(worker.devices)
                    delta[0] += MILLI * freed
                else:
                    freed = 0
                    for d in worker.devices:
                        if not healthy[d]:
                            continue
                        delta[0] += milli
                        key = (worker.node, d)
                        before = projected.get(key, ns.free[d])
                        after = projected[key] = before + milli
                        if after == MILLI:
                            freed += 1
                if freed:
                    old = whole.get(worker.node, ns.free_whole)
                    new = whole[worker.node] = old + freed
                    for c, k in enumerate(ks, 1):
                        delta[c] += k * MILLI * (new // k - old // k)
        times = [now]
        rows = [base]
        now_delta = deltas.pop(now, None)
        if now_delta is not None:
            rows[0] = [v + dv for v, dv in zip(base, now_delta, strict=True)]
        for at in sorted(deltas):
            times.append(at)
            rows.append([v + dv for v, dv in zip(rows[-1], deltas[at], strict=True)])
        cols = [list(col) for col in zip(*rows, strict=True)]
        return _Profile(pool, times, cols, column, snap)
