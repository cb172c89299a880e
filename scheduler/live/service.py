"""The live scheduler: the policy core on the wall clock, between the center's records and an executor.

Each cycle is level-triggered — it looks at what the records say and what the cluster runs, and converges
them — so the service recovers from a crash by simply starting again::

    1. hold the leader lease (a second instance waits: it never double-schedules);
    2. sync the policy in force and the node inventory into the core's :class:`ClusterState`;
    3. reconcile: what the executor reports moves jobs (running, succeeded, failed → retried, lost → requeued),
       cancel requests are carried out, attempts the database no longer wants are stopped;
    3b. size capacity (with a :class:`~scheduler.live.capacity.CapacityManager`, e.g. KubeRay worker groups that
       Zhisuan sizes): a node takes work only while it is in service (its worker pod ready); groups grow by the
       nodes pending gangs need, all at once, and shrink by nodes idle past a grace period, never one with work;
    4. run :meth:`SchedulerCore.step` over the pending jobs and persist its decisions in one transaction;
    5. only then act on them: launch starts, stop preemption victims (an action is never taken for a decision
       that was not committed, and every action is idempotent, so a crash in between is repaired next cycle);
    6. copy new log output into the database and, now and then, refresh every pending job's estimated start;
    7. serve (with a :class:`~scheduler.live.serving.controller.ServeController`): scale services and roll
       updates — replicas are jobs it submits and cancels, which the next cycles place and run like any job.

A job's *attempt* numbers its runs: a retry or a requeue after preemption or node loss bumps it, and the executor
keys everything by ``(job, attempt)``. So a restarted service that finds attempt 3 running while the records
say attempt 4 is pending stops attempt 3 — a job never runs twice.

The records sit behind a :class:`~scheduler.live.store.ServiceStore` (SQL in ``api/service_store.py``, dicts in
:class:`~scheduler.live.memory_store.MemoryStore`); the service itself never speaks SQL::

    service = SchedulerService(SqlServiceStore(engine), RayExecutor(address))   # doctest: +SKIP
    service.run(stop_event)                                                       # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from scheduler.core import SchedulerCore
from scheduler.eta import Forecast, forecasting
from scheduler.live.capacity import CapacityManager
from scheduler.live.executors.base import ExecutionStatus, Executor, ExecutorError, LaunchRequest, Phase
from scheduler.live.heap import LongLivedHeap
from scheduler.live.serving.controller import ServeController
from scheduler.live.store import (
    Changes,
    FeedCursor,
    Fence,
    JobEnd,
    JobRecord,
    LogChunkRow,
    NodeRecord,
    NotLeader,
    ServiceStore,
    StoreUnavailable,
)
from scheduler.model import (
    Decision,
    DecisionKind,
    DeviceHealth,
    Job,
    LedgerEntry,
    Reason,
    StopCause,
)
from scheduler.spec import HOLDING_STATES, JobSpec, JobState
from scheduler.state import CapacityError, ClusterState
from scheduler.tenancy import NCU, parse_policy

log = logging.getLogger("zhisuan.scheduler")

#: Finished runs read back into fair-share history after a restart (the newest first).
HISTORY_ROWS = 100_000


@dataclass(frozen=True)
class ServiceConfig:
    """Timing and retry knobs of the live service."""

    #: Seconds between cycles when nothing happens (a cycle also runs as soon as :meth:`poke` is called).
    interval_s: float = 0.2
    #: Seconds between cycles while a job launched less than ``follow_launch_s`` ago is still starting: its
    #: ``running`` is noticed sooner, at the cost of a few more executor polls right after a launch.
    starting_interval_s: float = 0.05
    follow_launch_s: float = 5.0
    #: Cycles never start closer together than this, however often :meth:`SchedulerService.poke` is called.
    min_interval_s: float = 0.02
    #: The leader lock expires this long after its last renewal; a standby takes over after that.
    lease_s: float = 10.0
    #: How often every pending job's estimated start is recomputed.
    eta_every_s: float = 5.0
    #: A cycle plans estimated starts for ``eta_slice_s`` or ``eta_share`` of the time the cycle took so far,
    #: whichever is longer: a long queue is planned over several cycles (100,000 pending jobs take a second or
    #: two, which would hold up the cycle it fell on), and the pass takes about a fifth of the service's time
    #: however slow its cycles are (a pass of 2 s in 3-second cycles is stored every 10 s or so).
    eta_slice_s: float = 0.05
    eta_share: float = 0.25
    #: How often worker logs are copied into the database.
    logs_every_s: float = 1.0
    #: A run that fails is retried this many times (new attempt each) before the job fails for good.
    max_retries: int = 2
    #: Backoff before a retry: base × 2^(attempt-1), capped.
    retry_backoff_s: float = 2.0
    retry_backoff_max_s: float = 300.0
    #: Even when nothing visible changed, step the core at least this often (reservations and backfill age).
    step_every_s: float = 2.0
    #: A running job the executor cannot find this many cycles in a row is lost (one miss may be a hiccup).
    missing_cycles: int = 3
    #: How often an executor that can tell (:class:`NodeLiveness`) is asked which nodes it can still run on.
    liveness_every_s: float = 1.0
    #: With an executor that cannot tell: a node where a worker was lost takes no new work for this long
    #: (its agent may still heartbeat while its Ray daemon is gone); jobs already running there stay.
    lost_node_hold_s: float = 60.0
    holder: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}")


@dataclass
class CycleReport:
    """What one cycle did (for logs, metrics and tests)."""

    leader: bool = False
    started: list[str] = field(default_factory=list)
    preempted: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    orphans_stopped: list[str] = field(default_factory=list)
    pending: int = 0
    stepped: bool = False
    #: A slice of the estimated-start pass was planned in this cycle.
    planned_eta: bool = False


@dataclass
class _Active:
    """A job that holds devices, as the service last saw it in the database."""

    job_id: str
    version: int
    state: JobState
    attempt: int
    started_at: float
    spec: JobSpec


@runtime_checkable
class NodeLiveness(Protocol):
    """An executor that knows which nodes it can run work on (e.g. Ray: the nodes whose raylet is alive).

    A node whose agent heartbeats but whose executor side is gone (a crashed raylet) is then treated as lost,
    exactly like a node that stopped heartbeating: its jobs are requeued and nothing new is placed there.
    """

    def alive_nodes(self, node_ids: Iterable[str]) -> set[str] | None:
        """Those of ``node_ids`` the executor can run work on now; None when it cannot tell."""
        ...


class SchedulerService:
    """Drives :class:`SchedulerCore` from a :class:`ServiceStore` on a clock and executes through ``executor``."""

    def __init__(
        self,
        store: ServiceStore,
        executor: Executor,
        config: ServiceConfig | None = None,
        core: SchedulerCore | None = None,
        clock: Callable[[], float] = time.time,
        serving: ServeController | None = None,
        capacity: CapacityManager | None = None,
    ) -> None:
        self.store = store
        self.executor = executor
        self.config = config or ServiceConfig()
        self.core = core or SchedulerCore()
        self.clock = clock
        self.term: int | None = None
        self._wake = threading.Event()
        self._reset()
        #: Step 7 (serving), when this service runs inference services behind endpoints.
        self.serving = serving
        if serving is not None:
            serving.attach(self)
        #: Step 3b (capacity), and its last word on the nodes it manages (kept across leadership changes: it is
        #: the cluster's word, not the records').
        self.capacity = capacity
        self._in_service: dict[str, bool] = {}

    def _reset(self) -> None:
        """Forget everything learned from the records (on start and whenever leadership is regained)."""
        self.state = ClusterState()
        self._policy_version: int | None = None
        #: node id -> (model, usable, schedulable): usable = up (agent and executor); schedulable = usable and
        #: not held back after a lost worker.
        self._nodes: dict[str, tuple[str, bool, bool]] = {}
        self._alive: set[str] | None = None
        self._last_liveness = float("-inf")
        self._held: dict[str, float] = {}
        self._inventory_stale = False
        self._unhealthy: dict[str, frozenset[int]] = {}
        #: Where the change feed was read up to; None: read everything next cycle.
        self._cursor: FeedCursor | None = None
        #: The last record read of every node, and until when the lapsed leases were looked for.
        self._records: dict[str, NodeRecord] = {}
        self._lease_checked = float("-inf")
        #: Pending job id -> version, kept from the change feed (read whole only on a resync).
        self._pending: dict[str, int] = {}
        #: Jobs newly pending since the last step (a step is due when there are any).
        self._new_pending: set[str] = set()
        self._jobs: dict[tuple[str, int], Job] = {}
        self._job_version: dict[str, int] = {}
        self._active: dict[str, _Active] = {}
        self._hold_until: dict[str, float] = {}
        self._log_offsets: dict[tuple[str, int, int], int] = {}
        #: The reasons last stored per pending job (compared as values: rendering 100,000 messages a step to
        #: compare them cost more than the step's writes).
        self._reasons_written: dict[str, tuple[Reason, ...]] = {}
        self._missing: dict[str, int] = {}
        #: Ends decided this cycle and not written yet, and the runs the executor may forget once they are.
        self._ending: list[JobEnd] = []
        self._forgetting: list[str] = []
        self._last_step = float("-inf")
        self._last_eta = float("-inf")
        #: The estimated-start pass in progress (planned a slice per cycle), if any.
        self._eta: Generator[None, None, Forecast] | None = None
        self._cycle_began = time.monotonic()
        self._last_logs = float("-inf")
        self._dirty = True
        self._adopted = False

    @property
    def fence(self) -> Fence:
        """The lease this service's writes are decided under."""
        if self.term is None:
            raise NotLeader("this service holds no lease")
        return Fence(self.config.holder, self.term)

    # ------------------------------------------------------------------------------------------ loop

    def poke(self) -> None:
        """Run the next cycle now (the API calls this after a submission when both share a process)."""
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        """Cycle until ``stop`` is set; a store or cluster outage is logged and retried, never fatal."""
        last = float("-inf")
        # A submission or cancel through any API process, a node joining or failing: cycle now, not at the next tick.
        unwatch = self.store.watch(self.poke)
        try:
            self._loop(stop, last)
        finally:
            unwatch()

    def _loop(self, stop: threading.Event, last: float) -> None:
        heap = LongLivedHeap()
        while not stop.is_set():
            gap = self.config.min_interval_s - (time.monotonic() - last)
            if gap > 0 and stop.wait(gap):
                break
            last = time.monotonic()
            try:
                self.cycle()
            except StoreUnavailable as exc:
                log.warning("records unavailable, retrying: %s", str(exc).splitlines()[0])
                self._lose_leadership()
            except NotLeader:
                log.warning("lost the leader lease; waiting to take it back")
                self._lose_leadership()
            except Exception:
                log.exception("scheduler cycle failed; retrying")
                self._lose_leadership()
            heap.after_cycle()
            self._wake.wait(self._pause())
            self._wake.clear()

    def _pause(self) -> float:
        """How long to wait before the next cycle: shorter while a fresh launch is starting."""
        now = self.clock()
        if any(
            a.state is JobState.STARTING and now - a.started_at < self.config.follow_launch_s
            for a in self._active.values()
        ):
            return min(self.config.interval_s, self.config.starting_interval_s)
        return self.config.interval_s

    def _lose_leadership(self) -> None:
        self.term = None
        self._reset()

    def cycle(self) -> CycleReport:
        """One reconcile-and-schedule pass. Returns what it did; does nothing but wait unless it is the leader."""
        report = CycleReport()
        now = self.clock()
        self._cycle_began = time.monotonic()
        # 1. Hold the lease: only the leader reconciles and schedules.
        if not self._hold_lease(now):
            if self.term is not None:
                self._lose_leadership()
            return report
        report.leader = True
        # What changed since the last cycle, from the change feed: an idle cycle reads nothing else.
        changes = self.store.changes(self._cursor)
        self._cursor = changes.cursor
        states = self.store.job_states(sorted(changes.jobs)) if changes.jobs and not changes.resync else {}
        # 2. Sync the policy in force and the inventory into the core's state.
        if changes.resync or changes.policy:
            self._sync_policy()
        self._sync_inventory(now, report, changes)
        if not self._adopted:
            self._adopt(now, report)
            self._adopted = True
        # 3. Reconcile what the executor reports with what the records want.
        self._reconcile(now, report, changes, states)
        if self._inventory_stale:
            # A worker was lost this cycle: learn which node died before placing anything (its retry included).
            self._inventory_stale = False
            self._sync_inventory(now, report, None)
        # 3b. Size capacity: nodes out of service take no work; worker groups follow the pending demand.
        if self.capacity is not None:
            self._size_capacity(now)
        # 4-5. Step the core, persist its decisions, then act on them.
        self._schedule(now, report, changes, states)
        # 6. Copy logs and refresh estimated starts now and then.
        if now - self._last_logs >= self.config.logs_every_s:
            self._copy_logs()
            self._last_logs = now
        self._refresh_eta(now, report)
        # 7. Serve: scale services and roll updates (their replica jobs are placed by the next cycles' steps).
        if self.serving is not None:
            self.serving.step(self, now)
        return report

    # ------------------------------------------------------------------------------------------ leader lease

    def _hold_lease(self, now: float) -> bool:
        """Take or renew the leader lease; a takeover bumps ``term`` (the fencing token of every write)."""
        term = self.store.hold_lease(self.config.holder, now, self.config.lease_s, self.term)
        if term is None:
            return False
        if self.term is not None and term != self.term:
            self._reset()
        if term != self.term:
            log.info("leader lease taken (term %d)", term)
        self.term = term
        return True

    def release_lock(self) -> None:
        """Give the lease up at a clean shutdown so a standby takes over at once."""
        if self.term is None:
            return
        self.store.release_lease(self.config.holder)
        self.term = None

    # ------------------------------------------------------------------------------------------ sync

    def _sync_policy(self) -> None:
        found = self.store.policy_after(self._policy_version)
        if found is None:
            return
        version, document = found
        # The API validated this document before writing it; a failure here is a bug worth stopping on.
        self.core.set_policy(parse_policy(document, f"policy version {version}", self.core.catalog))
        self._policy_version = version
        self._dirty = True

    def _sync_inventory(self, now: float, report: CycleReport, changes: Changes | None) -> None:
        """Add new nodes, take lost or cordoned ones out of service, follow device health.

        ``changes`` says which nodes to read again (those the feed names, and those whose lease lapsed since the
        last look); a resync reads them all; None re-judges the nodes already read (after a lost worker)."""
        affected: set[str]
        if changes is not None and changes.resync:
            records = self.store.nodes(now)
            self._records = {r.node.id: r for r in records}
            affected = set(self._records)
        else:
            affected = set()
            if changes is not None:
                ids = set(changes.nodes)
                ids.update(self.store.lapsed_nodes(self._lease_checked, now))
                if ids:
                    for record in self.store.nodes(now, ids):
                        self._records[record.node.id] = record
                affected = ids & set(self._records)
            else:
                affected = set(self._records)
        self._lease_checked = now
        before = self._alive
        alive = self._alive_nodes(now, list(self._records))
        if alive != before:
            # The executor's word changed: judge again the nodes whose answer moved (all of them on the first).
            affected |= set(self._records) if before is None or alive is None else (alive ^ before)
        held = {node for node, until in self._held.items() if until > now} if alive is None else set()
        affected |= set(self._held)  # a hold that ends here makes its node schedulable again
        self._held = {node: until for node, until in self._held.items() if node in held}
        lost: list[str] = []
        for node_id in sorted(affected & set(self._records)):
            record = self._records[node_id]
            # The records' rule (what `zhisuan nodes` shows as down is what the scheduler treats as lost), and the
            # executor's word, when it can tell, that it can still run work there.
            usable = record.usable
            if usable and alive is not None and node_id not in alive:
                usable = False
                # A node the executor never ran work on yet (its raylet still joining at start) is not lost.
                if self._nodes.get(node_id, ("", False, False))[1]:
                    log.warning("node %s reports to the API but the executor cannot reach it: lost", node_id)
            schedulable = usable and node_id not in held
            known = self._nodes.get(node_id)
            if known is None:
                if record.node.model not in self.core.catalog:
                    log.warning("node %s has unknown model %s; ignored", node_id, record.node.model)
                    continue
                self.state.add_node(record.node)
                self._dirty = True
                if not schedulable:
                    self.state.set_schedulable(node_id, False)
            else:
                if known[1] and not usable:
                    lost.extend(self.state.remove_node(node_id))
                if known[2] != schedulable:
                    self._dirty = True
                    self.state.set_schedulable(node_id, schedulable)
            self._nodes[node_id] = (record.node.model, usable, schedulable)
            was = self._unhealthy.get(node_id, frozenset())
            for index in record.unhealthy ^ was:
                if node_id in self.state.nodes and index < len(self.state.nodes[node_id].free):
                    health = DeviceHealth.UNHEALTHY if index in record.unhealthy else DeviceHealth.HEALTHY
                    self.state.set_device_health(node_id, index, health)
                    self._dirty = True
            if record.unhealthy:
                self._unhealthy[node_id] = record.unhealthy
            else:
                self._unhealthy.pop(node_id, None)
        for job_id in dict.fromkeys(lost):
            if job_id in self._active:
                self.executor.stop(job_id, "node lost")
                self._requeue(job_id, now, StopCause.NODE_LOST, "a node of this job was lost", report)

    def _alive_nodes(self, now: float, node_ids: list[str]) -> set[str] | None:
        """The nodes the executor can run work on (asked at most every ``liveness_every_s``), None: cannot tell."""
        if not isinstance(self.executor, NodeLiveness):
            return None
        if now - self._last_liveness >= self.config.liveness_every_s:
            self._last_liveness = now
            try:
                self._alive = self.executor.alive_nodes(node_ids)
            except ExecutorError as exc:  # keep the last answer: an outage is not a verdict on the nodes
                log.warning("cannot ask the executor which nodes are alive: %s", exc)
        return self._alive

    def _lost_on(self, status: ExecutionStatus, now: float) -> None:
        """A worker was lost: re-check the nodes before the next placement; without an executor that can tell
        which nodes are alive, hold the nodes where workers were lost back from new work for a while."""
        self._inventory_stale = True
        self._last_liveness = float("-inf")
        for worker in status.workers:
            if worker.phase is Phase.LOST and worker.node in self._nodes:
                self._held[worker.node] = now + self.config.lost_node_hold_s

    def _adopt(self, now: float, report: CycleReport) -> None:
        """After a (re)start: take back every job that holds devices, and learn runtimes from finished ones."""
        holding = self.store.holding_jobs()
        self._remember_usage(now)
        for run in self.store.finished_runs(2000):
            rel = self.core.throughput.relative(run.model, run.spec.job_class)
            self.core.runtimes.record(run.spec.job_class, run.seconds * rel)
        for record in holding:
            active = _Active(
                record.id, record.version, record.state, record.attempt, record.started_at or now, record.spec
            )
            self._active[record.id] = active
            if record.placement is None:
                self._requeue(record.id, now, StopCause.NODE_LOST, "no placement recorded", report)
                continue
            try:
                running = self.core.adopt(
                    self.state,
                    self._job(record),
                    record.placement,
                    active.started_at,
                    record.last_checkpoint_at,
                )
                # Its run so far has no ledger stop yet: fair share learns it here.
                self.core.remember_usage(
                    record.tenant, record.user, running.demand.get(NCU, 0.0), running.started_at, now, now
                )
            except (CapacityError, KeyError) as exc:
                self._requeue(
                    record.id, now, StopCause.NODE_LOST, f"its placement is no longer available: {exc}", report
                )

    def _remember_usage(self, now: float) -> None:
        """Rebuild fair-share history from the ledger's finished runs (the newest ``HISTORY_ROWS`` within five
        half-lives, beyond which a run weighs under 3 %), so that a restart does not forgive yesterday's use."""
        since = now - 5 * self.core.history.half_life_s
        for stop in self.store.usage_stops(since, HISTORY_ROWS):
            if stop.seconds > 0:
                rate = stop.ncu_hours * 3600 / stop.seconds
                self.core.remember_usage(stop.tenant, stop.user, rate, stop.at - stop.seconds, stop.at, now)

    # ------------------------------------------------------------------------------------------ reconcile

    def _reconcile(
        self, now: float, report: CycleReport, changes: Changes, states: dict[str, tuple[JobState, int]]
    ) -> None:
        wanted = self._wanted(now, changes, states)
        # Jobs the service thought active but the records moved on (the API cancelled a starting job...).
        for job_id in set(self._active) - set(wanted):
            self.executor.stop(job_id, "no longer active")
            self._release(job_id, now, StopCause.CANCELLED)
        self._active = wanted

        statuses = {s.job_id: s for s in self.executor.poll()}
        running: list[_Active] = []
        for job_id, attempt in self.executor.discover():
            active = wanted.get(job_id)
            if active is None or active.attempt != attempt:
                # Launched by an earlier run of the service for an attempt the records no longer want.
                self.executor.stop(job_id, "attempt superseded")
                report.orphans_stopped.append(job_id)
                statuses.pop(job_id, None)
        for job_id, active in list(wanted.items()):
            status = statuses.get(job_id)
            if status is not None and status.attempt != active.attempt:
                status = None
            if active.state is JobState.CANCELLING:
                self.executor.stop(job_id, "cancelled by the user")
                self._end(active, now, JobState.CANCELLED, StopCause.CANCELLED, "cancelled", None, report)
                self._forgetting.append(job_id)
                report.cancelled.append(job_id)
                continue
            if status is None:
                if active.state is JobState.STARTING:
                    self._launch(active, now, report)
                    continue
                self._missing[job_id] = misses = self._missing.get(job_id, 0) + 1
                if misses >= self.config.missing_cycles:
                    self._missing.pop(job_id, None)
                    self._requeue(job_id, now, StopCause.NODE_LOST, "its workers disappeared from the cluster", report)
                continue
            if self._missing:
                self._missing.pop(job_id, None)
            # Most of 10,000s of jobs are running and stay so: that case first, with no property looked up.
            phase = status.phase
            if phase is Phase.RUNNING:
                if active.state is JobState.STARTING:
                    running.append(active)
            elif phase.terminal:
                self._finish(active, status, now, report)
        self._write_ends(now)
        # Every start the executor confirmed this cycle, in one write (a cold start confirms thousands at once).
        moved = self.store.transition_many(
            self.fence, [(a.job_id, a.version) for a in running], JobState.RUNNING, now, "all workers are running"
        )
        for active in running:
            if active.job_id in moved:
                active.version += 1
                active.state = JobState.RUNNING

    def _wanted(self, now: float, changes: Changes, states: dict[str, tuple[JobState, int]]) -> dict[str, _Active]:
        """The jobs that hold devices by the records: read whole on a resync, else the active ones updated with
        the jobs the feed says moved (a cancel through the API, a job another writer moved on)."""
        if changes.resync:
            return {
                r.id: _Active(r.id, r.version, r.state, r.attempt, r.started_at or now, r.spec)
                for r in self.store.holding_jobs()
            }
        wanted = dict(self._active)
        stale: list[str] = []
        for job_id, (state, version) in states.items():
            known = wanted.get(job_id)
            if state not in HOLDING_STATES:
                wanted.pop(job_id, None)
            elif known is None or known.version != version or known.state is not state:
                stale.append(job_id)
        for record in self.store.jobs(stale) if stale else ():
            if record.state in HOLDING_STATES:
                started = record.started_at or now
                wanted[record.id] = _Active(
                    record.id, record.version, record.state, record.attempt, started, record.spec
                )
            else:
                wanted.pop(record.id, None)
        return wanted

    def _finish(self, active: _Active, status: ExecutionStatus, now: float, report: CycleReport) -> None:
        self._copy_logs_of(active.job_id)
        exit_code = _exit_code(status)
        tail = "\n".join(status.last_log_lines[-20:])
        message = status.message + (
            f"\nlast log lines:\n{tail}" if tail and status.phase is not Phase.SUCCEEDED else ""
        )
        if status.phase is Phase.SUCCEEDED:
            self._end(active, now, JobState.SUCCEEDED, StopCause.FINISHED, status.message or "succeeded", 0, report)
        elif status.phase is Phase.LOST:
            self._lost_on(status, now)
            self._requeue(active.job_id, now, StopCause.NODE_LOST, status.message or "a worker was lost", report)
        elif status.phase is Phase.FAILED and status.retryable and active.attempt < self.config.max_retries:
            self._requeue(active.job_id, now, StopCause.FAILED, message, report, retry=True)
        else:
            self._end(active, now, JobState.FAILED, StopCause.FAILED, message, exit_code, report)
        # Once the outcome is stored (requeued now, ended with the cycle's other ends), the executor's own record
        # of this attempt can go.
        self.executor.stop(active.job_id, "finished")
        self._forgetting.append(active.job_id)

    # ------------------------------------------------------------------------------------------ schedule

    def _schedule(
        self, now: float, report: CycleReport, changes: Changes, states: dict[str, tuple[JobState, int]]
    ) -> None:
        self._follow_pending(changes, states)
        released = any(until <= now for until in self._hold_until.values())
        report.pending = len(self._pending)
        due = self._dirty or self._new_pending or released or now - self._last_step >= self.config.step_every_s
        if not due:
            return
        self._hold_until = {job_id: until for job_id, until in self._hold_until.items() if until > now}
        versions = self._pending
        pending = [
            self._jobs[(job_id, v)]
            for job_id, v in versions.items()
            if (job_id, v) in self._jobs and job_id not in self._hold_until
        ]
        report.pending = len(pending)
        self._new_pending = set()
        self._dirty = False
        self._last_step = now
        report.stepped = True
        # 4. The core decides; its decisions are stored in one write before anything acts on them.
        decisions = self.core.step(self.state, pending, now) if pending else []
        try:
            self._persist(decisions, versions, now, report)
        except BaseException:
            # The store refused the whole step: forget it in the core too, and start again from the records.
            self._reset()
            raise
        # 5. Act: stop preemption victims, launch the starts.
        for decision in decisions:
            if decision.kind is DecisionKind.PREEMPT:
                self.executor.stop(decision.job_id, "preempted")
        for job_id in report.started:
            self._launch(self._active[job_id], now, report)
        self._write_ends(now)  # launches that failed for good

    def _persist(
        self, decisions: Sequence[Decision], versions: dict[str, int], now: float, report: CycleReport
    ) -> None:
        reasons: dict[str, tuple[Reason, ...]] = {}
        for decision in decisions:
            if decision.kind in (DecisionKind.START, DecisionKind.PREEMPT):
                continue
            if self._reasons_written.get(decision.job_id) != decision.reasons:
                reasons[decision.job_id] = decision.reasons
        outcome = self.store.commit_step(self.fence, now, decisions, versions, reasons)
        for run in outcome.started:
            self._active[run.job_id] = _Active(run.job_id, run.version, JobState.STARTING, run.attempt, now, run.spec)
            report.started.append(run.job_id)
            self._reasons_written.pop(run.job_id, None)
            self._forget_pending(run.job_id)
            placement = self.state.allocations.get(run.job_id)
            for rank in range(len(placement.workers) if placement is not None else 0):
                # A fresh attempt has no stored output yet: no need to ask the store where its logs end.
                self._log_offsets[(run.job_id, run.attempt, rank)] = 0
        for job_id in outcome.preempted:
            if self._active.pop(job_id, None) is not None:
                report.preempted.append(job_id)
        for job_id, written in reasons.items():
            self._reasons_written[job_id] = written
        for job_id in outcome.lost_races:
            # The API moved the job (cancelled it) after we read it: give its devices back in the core.
            self.core.finish(self.state, job_id, now, StopCause.CANCELLED)
            self._dirty = True

    def _launch(self, active: _Active, now: float, report: CycleReport) -> None:
        placement = self.state.allocations.get(active.job_id)
        if placement is None:
            return
        spec = active.spec
        request = LaunchRequest(
            job_id=active.job_id,
            attempt=active.attempt,
            placement=placement,
            entrypoint=spec.entrypoint,
            env=dict(spec.runtime_env.env_vars),
            working_dir=spec.runtime_env.working_dir,
            pip=spec.runtime_env.pip,
            walltime_s=spec.walltime_s,
            checkpoint_path=spec.checkpoint.path if spec.checkpoint else None,
            kind=spec.kind,
        )
        try:
            self.executor.launch(request)
        except ExecutorError as exc:
            log.warning("launch of %s attempt %d failed: %s", active.job_id, active.attempt, exc)
            self._end(active, now, JobState.FAILED, StopCause.FAILED, f"could not be launched: {exc}", None, report)

    # ------------------------------------------------------------------------------------------ job moves

    def _transition(self, active: _Active, now: float, state: JobState, message: str) -> bool:
        if not self.store.transition(self.fence, active.job_id, active.version, state, now, message):
            return False
        active.version += 1
        active.state = state
        return True

    def _end(
        self,
        active: _Active,
        now: float,
        state: JobState,
        cause: StopCause,
        message: str,
        exit_code: int | None,
        report: CycleReport,
    ) -> None:
        entry = self.core.finish(self.state, active.job_id, now, cause)
        self._dirty = True
        self._ending.append(JobEnd(active.job_id, state, message, exit_code, _entries(entry)))
        self._active.pop(active.job_id, None)
        report.finished.append(active.job_id)

    def _write_ends(self, now: float) -> None:
        """The ends of this cycle in one write; only then do the executor's records of those runs go (a crash in
        between finds them again and ends them again)."""
        if self._ending:
            ends, self._ending = self._ending, []
            self.store.end(self.fence, now, ends)
        forget, self._forgetting = self._forgetting, []
        for job_id in forget:
            self.executor.forget(job_id)

    def _requeue(
        self,
        job_id: str,
        now: float,
        cause: StopCause,
        message: str,
        report: CycleReport,
        retry: bool = False,
    ) -> None:
        """Back to pending as a new attempt; a training job resumes from its checkpoint path on its next run."""
        entry = self.core.finish(self.state, job_id, now, cause)
        self._dirty = True
        active = self._active.pop(job_id, None)
        attempt = active.attempt + 1 if active is not None else None
        if retry and attempt is not None:
            self._hold_until[job_id] = now + min(
                self.config.retry_backoff_s * 2 ** max(0, attempt - 1), self.config.retry_backoff_max_s
            )
        event = "retrying" if retry else "requeued"
        self.store.requeue(self.fence, job_id, now, message, _entries(entry), event, cause.value)
        report.requeued.append(job_id)

    def _release(self, job_id: str, now: float, cause: StopCause) -> None:
        if job_id in self.state.allocations:
            entry = self.core.finish(self.state, job_id, now, cause)
            self._dirty = True
            if entry is not None:
                self.store.write_ledger((entry,))

    # ------------------------------------------------------------------------------------------ capacity

    def _size_capacity(self, now: float) -> None:
        """Step 3b: a managed node is schedulable only while the manager says it is in service (and the records
        agree); then the manager sizes its groups from the pending jobs, in the core's order."""
        assert self.capacity is not None
        seen = self.capacity.in_service(now)
        if seen is not None:
            self._in_service = dict(seen)
        self._mask_capacity()
        pending = [self._jobs[(job_id, v)] for job_id, v in self._pending.items() if (job_id, v) in self._jobs]
        taken = self.capacity.size(
            self.state,
            self.core.order(pending),
            self.core.reservations,
            now,
            lambda job: [model for model, _ in self.core.placement.acceptable_models(job)],
        )
        if taken:
            # Their pods are being deleted: nothing may be placed there in between.
            self._in_service.update(dict.fromkeys(taken, False))
            self._mask_capacity()

    def _mask_capacity(self) -> None:
        for node_id, in_service in self._in_service.items():
            known = self._nodes.get(node_id)
            node = self.state.nodes.get(node_id)
            if known is None or node is None:
                continue
            schedulable = in_service and known[2]
            if node.schedulable != schedulable:
                self.state.set_schedulable(node_id, schedulable)
                self._dirty = True

    # ------------------------------------------------------------------------------------------ logs, ETA

    def _copy_logs(self) -> None:
        for job_id in list(self._active):
            self._copy_logs_of(job_id)

    def _copy_logs_of(self, job_id: str) -> None:
        active = self._active.get(job_id)
        placement = self.state.allocations.get(job_id)
        if active is None or placement is None:
            return
        chunks: list[LogChunkRow] = []
        for rank in range(len(placement.workers)):
            key = (job_id, active.attempt, rank)
            offset = self._log_offsets.get(key)
            if offset is None:
                offset = self.store.stored_log_end(*key)
            try:
                chunk = self.executor.read_logs(job_id, rank, offset)
            except ExecutorError:
                continue
            if chunk.attempt != active.attempt or not chunk.text:
                self._log_offsets[key] = offset
                continue
            chunks.append(LogChunkRow(job_id, active.attempt, rank, offset, chunk.text))
            self._log_offsets[key] = chunk.next_offset
        if chunks:
            self.store.append_logs(chunks)

    def _refresh_eta(self, now: float, report: CycleReport) -> None:
        """Every ``eta_every_s`` a new pass over the pending jobs starts; each cycle plans ``eta_slice_s`` of it,
        and the pass's estimates are stored when it is done."""
        if self._eta is None:
            if now - self._last_eta < self.config.eta_every_s:
                return
            pending = [self._jobs[k] for k in self._jobs if k[0] not in self._active]
            if not pending:
                return
            self._eta = forecasting(self.core, self.state, pending, now)
            self._last_eta = now
        took = time.monotonic() - self._cycle_began
        deadline = time.monotonic() + max(self.config.eta_slice_s, self.config.eta_share * took)
        report.planned_eta = True
        try:
            next(self._eta)  # at least one slice a cycle, however small the budget
            while time.monotonic() < deadline:
                next(self._eta)
        except StopIteration as done:
            self._eta = None
            self.store.set_estimated_starts(done.value.starts)

    # ------------------------------------------------------------------------------------------ helpers

    def _job(self, record: JobRecord) -> Job:
        job = self._jobs.get((record.id, record.version))
        if job is None:
            job = record.spec.to_job(
                record.id, tenant=record.tenant, user=record.user, queue=record.queue, submit_time=record.submitted_at
            )
            old = self._job_version.get(record.id)
            if old is not None:
                self._jobs.pop((record.id, old), None)
            self._jobs[(record.id, record.version)] = job
            self._job_version[record.id] = record.version
        return job

    def _follow_pending(self, changes: Changes, states: dict[str, tuple[JobState, int]]) -> None:
        """Keep the pending set from the change feed: O(changes) a cycle, the whole set only on a resync."""
        if changes.resync:
            self._pending = self.store.pending_versions()
            keep = {(job_id, v) for job_id, v in self._pending.items()}
            for key in [k for k in self._jobs if k not in keep]:
                self._forget_pending(key[0])
            missing = [job_id for job_id, v in self._pending.items() if (job_id, v) not in self._jobs]
            self._new_pending = set(missing)
        else:
            missing = []
            for job_id, (state, version) in states.items():
                if state is JobState.PENDING:
                    if self._pending.get(job_id) != version:
                        self._pending[job_id] = version
                        self._new_pending.add(job_id)
                    if (job_id, version) not in self._jobs:
                        missing.append(job_id)
                else:
                    self._forget_pending(job_id)
        for record in self.store.jobs(missing) if missing else ():
            if record.state is JobState.PENDING and self._pending.get(record.id) == record.version:
                self._job(record)

    def _forget_pending(self, job_id: str) -> None:
        self._pending.pop(job_id, None)
        self._new_pending.discard(job_id)
        version = self._job_version.pop(job_id, None)
        if version is not None:
            self._jobs.pop((job_id, version), None)


def _entries(entry: LedgerEntry | None) -> tuple[LedgerEntry, ...]:
    return (entry,) if entry is not None else ()


def _exit_code(status: ExecutionStatus) -> int | None:
    """The exit code that explains the outcome: a worker that failed by itself, not one the gang rule stopped
    afterwards (SIGTERM, 143) because of it."""
    failed = [w.exit_code for w in status.workers if w.phase is Phase.FAILED and w.exit_code not in (None, 0)]
    if failed:
        return failed[0]
    return next((w.exit_code for w in status.workers if w.exit_code not in (None, 0)), None)
