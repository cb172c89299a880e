"""The timeline replay: jobs arrive at their submit times; a scheduling pass calls ``SchedulerCore.step(state, pending,
now)`` (the live service's call, same objects and config) after the events of an instant; started jobs run their
duration scaled by the throughput of the model they landed on (:mod:`simulations.schema`), then finish and free
capacity. Job failures, node failures and repairs, preemptions (a ``preempt`` decision from the core) and
checkpoints are events too. An interrupted job is requeued and resumes from its last checkpoint::

    >>> from scheduler.model import Node
    >>> from simulations.schema import TraceJob
    >>> from simulations.timeline import TimelineSimulation
    >>> sim = TimelineSimulation([Node(id="n1", model="A100", devices=8, cpu_milli=64000, memory_mib=512000)])
    >>> result = sim.run([TraceJob(id="a", submit_time=0, duration_s=60, devices_per_worker=8),
    ...                   TraceJob(id="b", submit_time=10, duration_s=60, devices_per_worker=8)])
    >>> result.summary["wait_s"]["p99"], result.summary["jobs"]["finished"]
    (50.0, 2)

*Passes.* One pass runs after the events of an instant (finishes and failures first, arrivals next, the pass
last), and only after something that can change a decision: jobs arrived, or capacity came back (a finish,
failure, preemption or repair moves the state's ``capacity_epoch``). By default (``SimConfig.arrival_pass="all"``)
every pass hands the core all pending jobs, as the live service's cycle does. A pass after arrivals alone may
instead hand over less, since every job rejected before saw more free capacity than there is now:

* ``"changed"``: the new arrivals plus the jobs holding a reservation from the last pass, so that the new jobs
  still only backfill around the room held for them. This equals ``"all"`` for a core without preemption except
  where fair-share decay or the backfill window moves with time alone (measured on 600-1,500-job PAI-like runs
  at loads 0.9-1.5: identical, or mean waits within 1%). With preemption it is *not* equivalent: an old job that
  could preempt a victim once the victim passed its minimum runtime only tries again at the next capacity change
  (mean waits differed by up to 2.4× on the same runs).
* ``"new"`` (or ``incremental=True``): the new arrivals alone; exact only for a core without reservations and
  preemption, as in :func:`simulations.packing.packing_core`.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from scheduler.catalog import Catalog, load_catalog
from scheduler.core import CoreConfig, SchedulerCore
from scheduler.eta import forecast
from scheduler.model import MILLI, Decision, DecisionKind, Job, Node, Placement, StopCause
from scheduler.placement import PlacementConfig, PlacementEngine
from scheduler.state import ClusterState
from scheduler.throughput import ThroughputMatrix, load_throughput
from simulations.engine import Engine, Event, EventKind
from simulations.loaders.base import SkipReport, TraceError
from simulations.metrics import Economics, EtaScore, GpuShape, Metrics
from simulations.schema import TraceJob

Progress = Callable[[int], None]

_CAUSES = {
    "finished": StopCause.FINISHED,
    "job-failure": StopCause.FAILED,
    "node-failure": StopCause.NODE_LOST,
    "preempted": StopCause.PREEMPTED,
    "cut": StopCause.CANCELLED,
}


@dataclass
class SimConfig:
    """How the timeline replay treats time, failures and SLOs (the policy itself is the core's config)."""

    #: Which pending jobs a pass after arrivals alone hands the core (see the module docstring): ``all`` every
    #: pending job, as the live service does; ``changed`` the new arrivals and the reservation holders; ``new``
    #: the new arrivals only.
    arrival_pass: Literal["all", "changed", "new"] = "all"
    #: Older spelling of ``arrival_pass="new"`` (kept for scenario files).
    incremental: bool = False
    seed: int = 0
    #: Mean time between failures of one node (exponential); 0 disables node failures.
    node_mtbf_s: float = 0.0
    node_repair_s: float = 4 * 3600.0
    #: Probability that one run of a job fails part-way (uniformly in its runtime); it is retried.
    job_failure_probability: float = 0.0
    max_retries: int = 3
    default_slo_wait_s: float = 60.0
    #: Stop the replay at this virtual time (running jobs are cut and counted); ``None`` runs to the end.
    horizon_s: float | None = None
    #: Bound on extra passes at one instant after preemptions (a safety net against a looping policy).
    max_passes_per_instant: int = 4
    economics: Economics = field(default_factory=Economics)
    #: The live service's clock (0: decide at every event). With a period, what the executor reports (a finish,
    #: a failure) is seen, and its capacity comes back, at the next multiple of the period, as the live service
    #: sees it at its next cycle; arrivals are decided at once (the API pokes the service) unless
    #: ``arrivals_on_period``.
    step_period_s: float = 0.0
    arrivals_on_period: bool = False
    #: While jobs wait, step at least this often even when nothing happened (the live service: every 2 s, so
    #: that time-driven decisions, e.g. a victim passing its minimum runtime, are taken); 0: never.
    step_every_s: float = 0.0
    #: Seconds from a start decision until the job's workload runs (launching workers); the devices are held
    #: meanwhile, as live. Measured by ``benchmarks/fidelity.py``.
    launch_latency_s: float = 0.0
    #: A preempted job resumes where it stopped (checkpoint on preemption, as Tiresias' simulator assumes);
    #: otherwise from its last checkpoint. Preemptions never use up ``max_retries`` then.
    preempted_resume: bool = False
    #: Do not tell the core how long jobs run (it estimates from finished runs, as it must live without
    #: walltimes); the trace's durations still decide when they end.
    hide_runtimes: bool = False
    #: Keep one record per job (submit, first start, end, size, tenant, preemptions): ``ReplayResult.jobs``.
    record_jobs: bool = False
    #: Forecast every pending job's start this often (``scheduler.eta.forecast``, as the live service does) and
    #: score the forecasts against the real starts (``summary["eta"]``); 0: off.
    eta_every_s: float = 0.0

    def __post_init__(self) -> None:
        for name in ("step_period_s", "step_every_s", "launch_latency_s", "eta_every_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"SimConfig.{name} must be 0 or positive, got {getattr(self, name):g}")


@dataclass(slots=True)
class _Pending:
    job: Job
    trace: TraceJob
    submit: float
    saved: float = 0.0
    attempts: int = 0
    started_once: bool = False
    first_start: float | None = None
    preemptions: int = 0


@dataclass(slots=True)
class _Running:
    entry: _Pending
    placement: Placement
    #: When the core started it (devices held from then on).
    start: float
    duration: float
    base_saved: float
    event: Event | None = None
    checkpoint: Event | None = None
    #: When its workload began to run (``start`` plus the launch latency): progress counts from here.
    began: float = 0.0


@dataclass
class ReplayResult:
    """What a timeline replay returns: the summary numbers, the plot series and the input report (and, with
    ``SimConfig.record_jobs``, one record per job)."""

    summary: dict[str, Any]
    plots: dict[str, Any]
    trace_report: SkipReport
    wall_s: float
    events: int
    jobs: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": "timeline",
            "summary": self.summary,
            "trace": self.trace_report.as_dict(),
            "wall_s": self.wall_s,
            "events": self.events,
        }


def _default_core(
    scorer: str, seed: int, catalog: Catalog | None, throughput: ThroughputMatrix | None
) -> SchedulerCore:
    return SchedulerCore(CoreConfig(placement=PlacementConfig(scorer=scorer, seed=seed)), catalog, throughput)


class TimelineSimulation:
    """A discrete-event replay of a trace through one :class:`SchedulerCore` on one cluster."""

    def __init__(
        self,
        nodes: list[Node],
        core: SchedulerCore | None = None,
        config: SimConfig | None = None,
        catalog: Catalog | None = None,
        throughput: ThroughputMatrix | None = None,
        shapes: list[tuple[GpuShape, float]] | None = None,
        progress: Progress | None = None,
        trace_path: str | Path = "<trace>",
        trace_ordered: bool = True,
    ) -> None:
        self.config = config or SimConfig()
        self.catalog = catalog or (core.catalog if core is not None else load_catalog())
        self.throughput = throughput or (
            core.throughput if core is not None else load_throughput(catalog=catalog) if catalog else load_throughput()
        )
        self.core = core or _default_core("fgd", self.config.seed, self.catalog, self.throughput)
        self.nodes = nodes
        self.state = ClusterState(nodes)
        self.engine = Engine()
        self.metrics = Metrics(
            self.state,
            self.catalog,
            self.throughput,
            self.config.economics,
            shapes,
            self.config.default_slo_wait_s,
        )
        # Feasibility on the empty cluster, per job shape: a job no node can ever host is reported, not queued.
        self._probe_state = ClusterState(nodes)
        self._probe = PlacementEngine(PlacementConfig(scorer="binpack"), self.catalog, self.throughput)
        self._hostable: dict[tuple[Any, ...], list[int]] = {}
        self._rng = random.Random(self.config.seed)
        self.pending: dict[str, _Pending] = {}
        self._fresh: list[str] = []
        self.running: dict[str, _Running] = {}
        self._pass_event: Event | None = None
        self._full_pass = False
        #: ``state.capacity_epoch`` after the last pass: a different value means capacity came back since.
        self._epoch = -1
        self._passes_now = (-1.0, 0)
        self._unseen: list[tuple[str, _Running]] = []
        self._seen_event: Event | None = None
        self._arrivals: Iterator[TraceJob] = iter(())
        self._arrivals_left = True
        self._last_submit = 0.0
        self._arrived = 0
        self._progress = progress
        self._records: dict[str, dict[str, Any]] = {}
        self._eta = EtaScore() if self.config.eta_every_s > 0 else None
        self._wake_event: Event | None = None
        self._tick_event: Event | None = None
        self._trace_path = str(trace_path)
        self._trace_ordered = trace_ordered
        self.report = SkipReport()
        self._done = False
        engine = self.engine
        engine.on(EventKind.ARRIVAL, self._on_arrival)
        engine.on(EventKind.SCHEDULE, self._on_pass)
        engine.on(EventKind.FINISH, self._on_finish)
        engine.on(EventKind.FAILURE, self._on_job_failure)
        engine.on(EventKind.CHECKPOINT, self._on_checkpoint)
        engine.on(EventKind.NODE_FAILURE, self._on_node_failure)
        engine.on(EventKind.NODE_REPAIR, self._on_node_repair)
        engine.on(EventKind.PREEMPTION, self._on_preemption)
        engine.on(EventKind.TICK, self._on_tick)

    # ------------------------------------------------------------------------------------------ driving

    def run(self, jobs: Iterable[TraceJob], report: SkipReport | None = None) -> ReplayResult:
        """Replay ``jobs`` (in submit order) to completion, or to ``config.horizon_s``."""
        began = time.perf_counter()
        if report is not None:
            self.report = report
        self._arrivals = iter(jobs)
        self._schedule_next_arrival()
        if self.config.node_mtbf_s > 0:
            for node in self.nodes:
                self.engine.schedule(
                    self._rng.expovariate(1.0 / self.config.node_mtbf_s), EventKind.NODE_FAILURE, node.id
                )
        if self._eta is not None:
            self.engine.schedule(self.engine.now, EventKind.TICK, "eta")
        self.engine.run(until=self.config.horizon_s)
        end = self.engine.now
        for running in list(self.running.values()):
            self._stop(running, end, "cut")
        self.metrics.counts["pending_at_end"] = len(self.pending)
        self.metrics.close(end)
        summary = self.metrics.summary()
        if self._eta is not None:
            summary["eta"] = self._eta.summary()
        predictor = getattr(self.core, "predictor", None)
        if predictor is not None and self.core.config.queueing.ordering == "qssf":
            # Which history answered QSSF's predictions, and how many jobs had none (they went last in their class).
            summary["predicted_durations"] = dict(predictor.answers)
        return ReplayResult(
            summary=summary,
            plots=self.metrics.plots(),
            trace_report=self.report,
            wall_s=time.perf_counter() - began,
            events=self.engine.processed,
            jobs=list(self._records.values()),
        )

    def _schedule_next_arrival(self) -> None:
        for trace in self._arrivals:
            if trace.submit_time < self._last_submit and self._trace_ordered:
                raise TraceError(
                    self._trace_path,
                    f"submit time {trace.submit_time:g} is earlier than the previous job's "
                    f"{self._last_submit:g}: sort the trace by submit time",
                    trace.row or None,
                    "submit_time",
                )
            self._last_submit = max(self._last_submit, trace.submit_time)
            self.engine.schedule(max(trace.submit_time, self.engine.now), EventKind.ARRIVAL, trace)
            return
        if self._arrivals_left:
            self.metrics.arrivals_ended(self.engine.now)
        self._arrivals_left = False

    def _request_pass(self, full: bool) -> None:
        self._full_pass |= full
        if self._pass_event is None:
            self._pass_event = self.engine.schedule(self.engine.now, EventKind.SCHEDULE)

    def _on_period(self, now: float) -> float:
        """The first cycle of the live service's clock at or after ``now`` (``now`` itself without a period)."""
        period = self.config.step_period_s
        if period <= 0:
            return now
        return max(now, math.ceil(now / period - 1e-9) * period)

    def _wake(self, at: float) -> None:
        """Make sure a full pass runs at ``at`` (a time-driven change the core announced, or a periodic step)."""
        event = self._wake_event
        if event is not None and not event.cancelled and event.time <= at:
            return
        if event is not None:
            Engine.cancel(event)
        self._wake_event = self.engine.schedule(at, EventKind.TICK, "wake")

    def _on_tick(self, event: Event) -> None:
        if event.payload == "wake":
            if event is self._wake_event:
                self._wake_event = None
            if self.pending:
                self._request_pass(full=True)
        elif event.payload == "eta" and self._eta is not None:
            if self._done:
                return
            self._forecast(event.time)
            self.engine.schedule(event.time + self.config.eta_every_s, EventKind.TICK, "eta")
        elif event.payload == "seen":
            # What the executor reported since the last cycle is seen now (``step_period_s``).
            for kind, running in self._unseen:
                if self.running.get(running.entry.job.id) is not running:
                    continue  # stopped before the service saw it end (preempted): it runs again, as live
                if kind == "finish":
                    self._finished(running, event.time)
                else:
                    self._interrupt(running, event.time, "job-failure")
            self._unseen.clear()
            self._seen_event = None

    def _maybe_done(self) -> bool:
        self._done = not self._arrivals_left and not self.pending and not self.running
        if self._done:
            # Only failure/repair events of idle nodes can be left: the replay is over.
            self.engine.stop()
        return self._done

    # ------------------------------------------------------------------------------------------ arrivals

    def _hostable_on_empty(self, job: Job) -> bool:
        """Whether the core could place ``job`` on the empty cluster (then it can start some day).

        Feasibility is monotone in the number of workers, so per worker shape the cache keeps the largest gang
        known to fit and the smallest known not to; only gangs between the two are probed.
        """
        key = (
            job.models or job.job_class,
            job.domestic,
            job.device_milli,
            job.cpu_milli_per_worker,
            job.memory_mib_per_worker,
            job.topology_required,
        )
        bounds = self._hostable.get(key)
        if bounds is None:
            bounds = self._hostable[key] = [0, 1 << 30]
        if job.workers <= bounds[0]:
            return True
        if job.workers >= bounds[1]:
            return False
        fits = self._probe.place(self._probe_state, job).placement is not None
        if fits:
            bounds[0] = job.workers
        else:
            bounds[1] = job.workers
        return fits

    def _on_arrival(self, event: Event) -> None:
        trace: TraceJob = event.payload
        self._arrived += 1
        if self._progress is not None and self._arrived % 1000 == 0:
            self._progress(self._arrived)
        self._schedule_next_arrival()
        self.metrics.on_arrival(event.time)
        path, row = self._trace_path, trace.row
        if trace.duration_s <= 0:
            self.report.skip("no duration (zero, or a trace variant without times)", path, row, "duration")
        elif trace.id in self.pending or trace.id in self.running:
            self.report.skip("duplicate job id", path, row, "id")
        else:
            job = trace.to_job(self.throughput, runtime=not self.config.hide_runtimes)
            if not self._hostable_on_empty(job):
                self.report.skip("no node of the cluster can ever host the job", path, row, "devices_per_worker")
            else:
                self.pending[job.id] = _Pending(job, trace, event.time)
                self._fresh.append(job.id)
                if self.config.record_jobs:
                    self._records[job.id] = _record(job, trace, event.time)
                if self.config.arrivals_on_period and self.config.step_period_s > 0:
                    self._wake(self._on_period(event.time))
                else:
                    self._request_pass(full=False)
                return
        self._maybe_done()

    # ------------------------------------------------------------------------------------------ passes

    def _on_pass(self, event: Event) -> None:
        self._pass_event = None
        now = event.time
        pending = self.pending
        mode = "new" if self.config.incremental else self.config.arrival_pass
        if self._full_pass or mode == "all" or self.state.capacity_epoch != self._epoch:
            jobs = [p.job for p in pending.values()]
        else:
            jobs = [pending[j].job for j in self._fresh if j in pending]
            held = getattr(self.core, "reservations", None) if mode == "changed" else None
            if held:
                fresh = set(self._fresh)
                jobs += [pending[j].job for j in held if j in pending and j not in fresh]
        self._full_pass = False
        self._fresh.clear()
        if not jobs:
            return
        decisions = self.core.step(self.state, jobs, now)
        # The step's own tentative placements and reservations release and re-take capacity: what counts is
        # whether capacity comes back between this pass and the next.
        self._epoch = self.state.capacity_epoch
        preempted = False
        for decision in decisions:
            if decision.kind is DecisionKind.START:
                self._start(decision, now)
            elif decision.kind is DecisionKind.PREEMPT:
                # The pass after preemptions is this method's to ask for (bounded per instant, below).
                preempted |= self._preempt(decision.job_id, now, repass=False)
            elif decision.reasons:
                self.metrics.reject_reasons[decision.reasons[0].code.value] += 1
        self.metrics.on_pass(now, len(self.pending), len(self.running))
        if self.pending:
            self._plan_wake(now)
        if preempted:
            at, count = self._passes_now
            count = count + 1 if at == now else 1
            self._passes_now = (now, count)
            if count < self.config.max_passes_per_instant:
                self._request_pass(full=True)
            else:
                # A policy still preempting after that many passes at one instant is looping: go on a second
                # later rather than for ever now (the preempted jobs are pending and must be decided again).
                self._wake(now + 1.0)

    def _plan_wake(self, now: float) -> None:
        """After a pass that left jobs waiting: wake at the core's next time-driven change (a LAS threshold, a
        starvation promotion), and at least every ``step_every_s``."""
        soonest = math.inf
        next_change = getattr(self.core, "next_change", None)
        if next_change is not None:
            at = next_change(self.state, [p.job for p in self.pending.values()], now)
            if at is not None:
                soonest = self._on_period(at)
        if self.config.step_every_s > 0:
            soonest = min(soonest, self._on_period(now + self.config.step_every_s))
        if math.isfinite(soonest) and soonest > now:
            self._wake(soonest)

    def _start(self, decision: Decision, now: float) -> None:
        entry = self.pending.pop(decision.job_id)
        placement = decision.placement
        assert placement is not None
        full = entry.trace.duration_on(placement.model, self.throughput)
        remaining = full * (1.0 - entry.saved)
        # The workload runs after its launch: its progress (and checkpoints) count from then on.
        began = now + self.config.launch_latency_s
        running = _Running(entry, placement, now, full, entry.saved, began=began)
        if self.config.job_failure_probability and self._rng.random() < self.config.job_failure_probability:
            running.event = self.engine.schedule(began + remaining * self._rng.random(), EventKind.FAILURE, running)
        else:
            running.event = self.engine.schedule(began + remaining, EventKind.FINISH, running)
        interval = entry.trace.checkpoint_interval_s
        if interval > 0 and interval < remaining:
            running.checkpoint = self.engine.schedule(began + interval, EventKind.CHECKPOINT, running)
        self.running[entry.job.id] = running
        self.metrics.on_start(now, entry.job, placement, not entry.started_once, entry.submit, entry.trace.slo_wait_s)
        entry.started_once = True
        if entry.first_start is None:
            entry.first_start = now
            if self._eta is not None:
                self._eta.started(entry.job.id, now)
        record = self._records.get(entry.job.id)
        if record is not None:
            record["starts"] += 1
            if record["start"] is None:
                record["start"] = now
                record["model"] = placement.model

    # ------------------------------------------------------------------------------------------ stops

    def _stop(self, running: _Running, now: float, outcome: str) -> None:
        job_id = running.entry.job.id
        del self.running[job_id]
        if job_id in self.state.allocations:
            # The core releases the job itself, so that its metering and runtime estimates see the stop.
            # (Victims of a ``preempt`` decision were already released by ``step``.)
            self.core.finish(self.state, job_id, now, _CAUSES.get(outcome, StopCause.CANCELLED))
        for ev in (running.event, running.checkpoint):
            if ev is not None:
                Engine.cancel(ev)
        self.metrics.on_stop(now, running.entry.job, running.placement, running.start, outcome)

    def _interrupt(self, running: _Running, now: float, outcome: str, retry: bool = True, repass: bool = True) -> None:
        """Stop a running job early; requeue it (resuming from its last checkpoint) unless out of retries; then
        ask for a pass unless ``repass`` is False (the core's own preemptions: :meth:`_on_pass` bounds those)."""
        self._stop(running, now, outcome)
        entry = running.entry
        ran = max(now - running.began, 0.0)
        progress = running.base_saved + ran / running.duration if running.duration else 1.0
        resumes = outcome == "preempted" and self.config.preempted_resume
        if resumes:
            entry.saved = min(progress, 1.0)
        lost = max(progress - entry.saved, 0.0) * running.duration
        devices = entry.job.total_device_milli / MILLI
        self.metrics.on_lost(devices * lost / 3600.0)
        if outcome == "preempted":
            entry.preemptions += 1
            record = self._records.get(entry.job.id)
            if record is not None:
                record["preemptions"] += 1
        if not resumes:
            entry.attempts += 1
        if retry and entry.attempts <= self.config.max_retries:
            self.pending[entry.job.id] = entry
            self._fresh.append(entry.job.id)
        else:
            self.metrics.counts["gave_up"] += 1
        if repass:
            self._request_pass(full=True)

    def _on_finish(self, event: Event) -> None:
        running: _Running = event.payload
        if self._report_later("finish", running, event.time):
            return
        self._finished(running, event.time)

    def _finished(self, running: _Running, now: float) -> None:
        self._stop(running, now, "finished")
        self.metrics.on_complete(running.entry.job, now, running.entry.submit)
        record = self._records.get(running.entry.job.id)
        if record is not None:
            record["end"] = now
        if not self._maybe_done():
            self._request_pass(full=True)

    def _on_job_failure(self, event: Event) -> None:
        if self._report_later("failure", event.payload, event.time):
            return
        self._interrupt(event.payload, event.time, "job-failure")

    def _report_later(self, kind: str, running: _Running, now: float) -> bool:
        """With ``step_period_s``: hold what the executor reports until the live service's next cycle."""
        seen = self._on_period(now)
        if seen <= now:
            return False
        running.event = None
        self._unseen.append((kind, running))
        if self._seen_event is None:
            self._seen_event = self.engine.schedule(seen, EventKind.TICK, "seen")
        return True

    def _forecast(self, now: float) -> None:
        assert self._eta is not None
        if not self.pending:
            return
        result = forecast(self.core, self.state, [p.job for p in self.pending.values()], now)
        self._eta.observe(now, {job_id: self.pending[job_id].submit for job_id in result.starts}, result.starts)

    def _on_checkpoint(self, event: Event) -> None:
        running: _Running = event.payload
        entry = running.entry
        entry.saved = running.base_saved + (event.time - running.began) / running.duration
        self.core.checkpointed(self.state, entry.job.id, event.time)
        interval = entry.trace.checkpoint_interval_s
        finish = running.event.time if running.event is not None else event.time
        running.checkpoint = (
            self.engine.schedule(event.time + interval, EventKind.CHECKPOINT, running)
            if event.time + interval < finish
            else None
        )

    def _preempt(self, job_id: str, now: float, repass: bool = True) -> bool:
        running = self.running.get(job_id)
        if running is None:
            return False
        self._interrupt(running, now, "preempted", repass=repass)
        return True

    def _on_preemption(self, event: Event) -> None:
        # External preemptions (e.g. a scripted scenario) arrive as events naming the job.
        self._preempt(str(event.payload), event.time)

    def _on_node_failure(self, event: Event) -> None:
        if self._done:
            return
        node_id = str(event.payload)
        for job_id in self.state.remove_node(node_id):
            running = self.running.get(job_id)
            if running is not None:
                self._interrupt(running, event.time, "node-failure")
        self.metrics.frag.refresh(self.state.nodes[node_id])
        self.metrics.counts["node_failures"] += 1
        self.engine.schedule(
            event.time + self._rng.expovariate(1.0 / self.config.node_repair_s), EventKind.NODE_REPAIR, node_id
        )

    def _on_node_repair(self, event: Event) -> None:
        node_id = str(event.payload)
        self.state.set_schedulable(node_id, True)
        self.metrics.frag.refresh(self.state.nodes[node_id])
        if self._maybe_done():
            return
        self.engine.schedule(
            event.time + self._rng.expovariate(1.0 / self.config.node_mtbf_s), EventKind.NODE_FAILURE, node_id
        )
        self._request_pass(full=True)


def _record(job: Job, trace: TraceJob, submit: float) -> dict[str, Any]:
    return {
        "id": job.id,
        "tenant": job.tenant,
        "queue": job.queue,
        "user": job.user,
        "kind": job.kind.value,
        "devices": job.total_device_milli / MILLI,
        "workers": job.workers,
        "duration_s": trace.duration_s,
        "submit": submit,
        "start": None,
        "end": None,
        "model": None,
        "starts": 0,
        "preemptions": 0,
    }
