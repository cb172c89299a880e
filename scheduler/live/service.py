"""The live scheduler: the policy core on the wall clock, between the database and an executor.

Each cycle is level-triggered — it looks at what the database says and what the cluster runs, and converges
them — so the service recovers from a crash by simply starting again::

    1. hold the leader lock (a second instance waits: it never double-schedules);
    2. sync the policy in force and the node inventory into the core's :class:`ClusterState`;
    3. reconcile: what the executor reports moves jobs (running, succeeded, failed → retried, lost → requeued),
       cancel requests are carried out, attempts the database no longer wants are stopped;
    4. run :meth:`SchedulerCore.step` over the pending jobs and persist its decisions in one transaction;
    5. only then act on them: launch starts, stop preemption victims (an action is never taken for a decision
       that was not committed, and every action is idempotent, so a crash in between is repaired next cycle);
    6. copy new log output into the database and, now and then, refresh every pending job's estimated start.

A job's *attempt* numbers its runs: a retry or a requeue after preemption or node loss bumps it, and the executor
keys everything by ``(job, attempt)``. So a restarted service that finds attempt 3 running while the database
says attempt 4 is pending stops attempt 3 — a job never runs twice::

    service = SchedulerService(create_engine(url), RayExecutor(address))   # doctest: +SKIP
    service.run(stop_event)                                                 # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

from sqlalchemy import Connection, Engine, insert, select, update
from sqlalchemy.exc import IntegrityError, OperationalError

from api.db import write_engine
from api.store import node_of, node_status
from api.tables import (
    DEVICES,
    HOLDING_STATES,
    JOB_EVENTS,
    JOB_LOGS,
    JOBS,
    LEADER_LOCK,
    LEDGER,
    NODES,
    POLICY_VERSIONS,
    JobState,
    NodeStatus,
)
from scheduler.core import SchedulerCore
from scheduler.eta import forecast
from scheduler.live.executors.base import ExecutionStatus, Executor, ExecutorError, LaunchRequest, Phase
from scheduler.model import (
    Decision,
    DecisionKind,
    DeviceHealth,
    Job,
    LedgerEntry,
    LedgerKind,
    Placement,
    StopCause,
    WorkerPlacement,
    topology_by_name,
)
from scheduler.spec import JobSpec
from scheduler.state import CapacityError, ClusterState
from scheduler.tenancy import NCU, parse_policy

log = logging.getLogger("zhisuan.scheduler")

LOCK_NAME = "scheduler"
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
    #: How often worker logs are copied into the database.
    logs_every_s: float = 1.0
    #: A run that fails is retried this many times (new attempt each) before the job fails for good.
    max_retries: int = 2
    #: Backoff before a retry: base × 2^(attempt-1), capped.
    retry_backoff_s: float = 2.0
    retry_backoff_max_s: float = 300.0
    #: The agents' heartbeat interval (the API's ``ZHISUAN_HEARTBEAT_INTERVAL_S``); a node that misses three
    #: heartbeats is down, and its jobs are lost.
    heartbeat_interval_s: float = 5.0
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


class NotLeader(RuntimeError):
    """The leader lock was lost during a cycle; nothing of that cycle's decisions was written."""


class SchedulerService:
    """Drives :class:`SchedulerCore` from the database on the wall clock and executes through ``executor``."""

    def __init__(
        self,
        engine: Engine,
        executor: Executor,
        config: ServiceConfig | None = None,
        core: SchedulerCore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        # Every transaction that writes reads first (the fence, optimistic versions): on SQLite it must take the
        # write lock when it begins (BEGIN IMMEDIATE, waiting up to the busy timeout), or it fails at once with
        # "database is locked" whenever another connection wrote since its read snapshot.
        self._writer = write_engine(engine)
        self.executor = executor
        self.config = config or ServiceConfig()
        self.core = core or SchedulerCore()
        self.clock = clock
        self.term: int | None = None
        self._wake = threading.Event()
        self._reset()

    def _reset(self) -> None:
        """Forget everything learned from the database (on start and whenever leadership is regained)."""
        self.state = ClusterState()
        self._policy_version: int | None = None
        #: node id -> (model, usable, schedulable): usable = up (agent and executor); schedulable = usable and
        #: not held back after a lost worker.
        self._nodes: dict[str, tuple[str, bool, bool]] = {}
        self._alive: set[str] | None = None
        self._last_liveness = float("-inf")
        self._held: dict[str, float] = {}
        self._inventory_stale = False
        self._unhealthy: set[tuple[str, int]] = set()
        self._jobs: dict[tuple[str, int], Job] = {}
        self._active: dict[str, _Active] = {}
        self._hold_until: dict[str, float] = {}
        self._log_offsets: dict[tuple[str, int, int], int] = {}
        self._reasons_written: dict[str, tuple[str, ...]] = {}
        self._missing: dict[str, int] = {}
        self._pending_seen: frozenset[str] = frozenset()
        self._last_step = float("-inf")
        self._last_eta = float("-inf")
        self._last_logs = float("-inf")
        self._dirty = True
        self._adopted = False

    # ------------------------------------------------------------------------------------------ loop

    def poke(self) -> None:
        """Run the next cycle now (the API calls this after a submission when both share a process)."""
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        """Cycle until ``stop`` is set; a database or cluster outage is logged and retried, never fatal."""
        last = float("-inf")
        while not stop.is_set():
            gap = self.config.min_interval_s - (time.monotonic() - last)
            if gap > 0 and stop.wait(gap):
                break
            last = time.monotonic()
            try:
                self.cycle()
            except OperationalError as exc:
                log.warning("database unavailable, retrying: %s", str(exc).splitlines()[0])
                self._lose_leadership()
            except NotLeader:
                log.warning("lost the leader lock; waiting to take it back")
                self._lose_leadership()
            except Exception:
                log.exception("scheduler cycle failed; retrying")
                self._lose_leadership()
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
        if not self._hold_lock(now):
            if self.term is not None:
                self._lose_leadership()
            return report
        report.leader = True
        self._sync_policy()
        self._sync_inventory(now, report)
        if not self._adopted:
            self._adopt(now, report)
            self._adopted = True
        self._reconcile(now, report)
        if self._inventory_stale:
            # A worker was lost this cycle: learn which node died before placing anything (its retry included).
            self._inventory_stale = False
            self._sync_inventory(now, report)
        self._schedule(now, report)
        if now - self._last_logs >= self.config.logs_every_s:
            self._copy_logs()
            self._last_logs = now
        if now - self._last_eta >= self.config.eta_every_s:
            self._refresh_eta(now)
            self._last_eta = now
        return report

    # ------------------------------------------------------------------------------------------ leader lock

    def _hold_lock(self, now: float) -> bool:
        """Take or renew the leader lock; a takeover bumps ``term`` (the fencing token of every write)."""
        me, expires = self.config.holder, now + self.config.lease_s
        with self._writer.begin() as conn:
            row = conn.execute(select(LEADER_LOCK).where(LEADER_LOCK.c.name == LOCK_NAME)).first()
            if row is None:
                try:
                    with conn.begin_nested():
                        conn.execute(insert(LEADER_LOCK).values(name=LOCK_NAME, holder=me, expires_at=expires, term=1))
                except IntegrityError:
                    return False
                self.term = 1
                return True
            if row.holder == me and self.term == row.term:
                conn.execute(
                    update(LEADER_LOCK)
                    .where(LEADER_LOCK.c.name == LOCK_NAME, LEADER_LOCK.c.term == row.term)
                    .values(expires_at=expires)
                )
                return True
            if row.expires_at > now and row.holder != me:
                return False
            taken = conn.execute(
                update(LEADER_LOCK)
                .where(LEADER_LOCK.c.name == LOCK_NAME, LEADER_LOCK.c.term == row.term)
                .values(holder=me, expires_at=expires, term=row.term + 1)
            )
            if taken.rowcount != 1:
                return False
            if self.term is not None:
                self._reset()
            self.term = row.term + 1
            log.info("leader lock taken (term %d)", self.term)
            return True

    def _fence(self, conn: Connection) -> None:
        """Inside a write transaction: abort unless this service still holds the lock it last took."""
        row = conn.execute(select(LEADER_LOCK.c.holder, LEADER_LOCK.c.term).where(LEADER_LOCK.c.name == LOCK_NAME))
        current = row.first()
        if current is None or current.holder != self.config.holder or current.term != self.term:
            raise NotLeader(LOCK_NAME)

    def release_lock(self) -> None:
        """Give the lock up at a clean shutdown so a standby takes over at once."""
        if self.term is None:
            return
        with self._writer.begin() as conn:
            conn.execute(
                update(LEADER_LOCK)
                .where(LEADER_LOCK.c.name == LOCK_NAME, LEADER_LOCK.c.holder == self.config.holder)
                .values(expires_at=0.0)
            )
        self.term = None

    # ------------------------------------------------------------------------------------------ sync

    def _sync_policy(self) -> None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(POLICY_VERSIONS.c.id, POLICY_VERSIONS.c.document).order_by(POLICY_VERSIONS.c.id.desc()).limit(1)
            ).first()
        if row is None or row.id == self._policy_version:
            return
        # The API validated this document before writing it; a failure here is a bug worth stopping on.
        self.core.set_policy(parse_policy(row.document, f"policy version {row.id}", self.core.catalog))
        self._policy_version = row.id
        self._dirty = True

    def _sync_inventory(self, now: float, report: CycleReport) -> None:
        """Add new nodes, take lost or cordoned ones out of service, follow device health."""
        with self.engine.connect() as conn:
            nodes = conn.execute(select(NODES)).all()
            # Unpacked by position: ``Row.index`` is tuple's method, not the column.
            unhealthy: set[tuple[str, int]] = {
                (node_id, index)
                for node_id, index in conn.execute(select(DEVICES.c.node_id, DEVICES.c.index).where(~DEVICES.c.healthy))
            }
        lost: list[str] = []
        alive = self._alive_nodes(now, [row.id for row in nodes])
        held = {node for node, until in self._held.items() if until > now} if alive is None else set()
        self._held = {node: until for node, until in self._held.items() if node in held}
        for row in nodes:
            # The API's rule, so that what `zhisuan nodes` shows as down is what the scheduler treats as lost;
            # and the executor's word, when it can tell, that it can still run work there.
            usable = node_status(row._mapping, now, self.config.heartbeat_interval_s) == NodeStatus.READY.value
            if usable and alive is not None and row.id not in alive:
                usable = False
                if self._nodes.get(row.id, ("", True, True))[1]:
                    log.warning("node %s reports to the API but the executor cannot reach it: lost", row.id)
            schedulable = usable and row.id not in held
            known = self._nodes.get(row.id)
            if known is None:
                if row.model not in self.core.catalog:
                    log.warning("node %s has unknown model %s; ignored", row.id, row.model)
                    continue
                self.state.add_node(node_of(row._mapping))
                self._dirty = True
                if not schedulable:
                    self.state.set_schedulable(row.id, False)
            else:
                if known[1] and not usable:
                    lost.extend(self.state.remove_node(row.id))
                if known[2] != schedulable:
                    self._dirty = True
                    self.state.set_schedulable(row.id, schedulable)
            self._nodes[row.id] = (row.model, usable, schedulable)
        for node_id, index in unhealthy ^ self._unhealthy:
            if node_id in self.state.nodes and index < len(self.state.nodes[node_id].free):
                health = DeviceHealth.UNHEALTHY if (node_id, index) in unhealthy else DeviceHealth.HEALTHY
                self.state.set_device_health(node_id, index, health)
                self._dirty = True
        self._unhealthy = unhealthy
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
        with self.engine.connect() as conn:
            rows = conn.execute(select(JOBS).where(JOBS.c.state.in_([s.value for s in HOLDING_STATES]))).all()
            finished = conn.execute(
                select(JOBS.c.spec, JOBS.c.started_at, JOBS.c.finished_at, JOBS.c.placement)
                .where(JOBS.c.state == JobState.SUCCEEDED.value, JOBS.c.started_at.is_not(None))
                .order_by(JOBS.c.finished_at.desc())
                .limit(2000)
            ).all()
        self._remember_usage(now)
        for f in reversed(finished):
            spec = JobSpec.model_validate(f.spec)
            if f.placement and f.finished_at is not None:
                rel = self.core.throughput.relative(f.placement["model"], spec.job_class)
                self.core.runtimes.record(spec.job_class, (f.finished_at - f.started_at) * rel)
        for row in rows:
            spec = JobSpec.model_validate(row.spec)
            active = _Active(row.id, row.version, JobState(row.state), row.attempt, row.started_at or now, spec)
            self._active[row.id] = active
            if row.placement is None:
                self._requeue(row.id, now, StopCause.NODE_LOST, "no placement recorded", report)
                continue
            try:
                running = self.core.adopt(
                    self.state,
                    self._job(row.id, row.version, row),
                    _placement(row.id, row.placement),
                    active.started_at,
                    row.last_checkpoint_at,
                )
                # Its run so far has no ledger stop yet: fair share learns it here.
                self.core.remember_usage(
                    row.tenant, row.user, running.demand.get(NCU, 0.0), running.started_at, now, now
                )
            except (CapacityError, KeyError) as exc:
                self._requeue(row.id, now, StopCause.NODE_LOST, f"its placement is no longer available: {exc}", report)

    def _remember_usage(self, now: float) -> None:
        """Rebuild fair-share history from the ledger's finished runs (the newest ``HISTORY_ROWS`` within five
        half-lives, beyond which a run weighs under 3 %), so that a restart does not forgive yesterday's use."""
        since = now - 5 * self.core.history.half_life_s
        with self.engine.connect() as conn:
            stops = conn.execute(
                select(LEDGER.c.tenant, LEDGER.c.user, LEDGER.c.at, LEDGER.c.seconds, LEDGER.c.ncu_hours)
                .where(LEDGER.c.kind == LedgerKind.STOP.value, LEDGER.c.at >= since)
                .order_by(LEDGER.c.at.desc())
                .limit(HISTORY_ROWS)
            ).all()
        for stop in stops:
            if stop.seconds > 0:
                rate = stop.ncu_hours * 3600 / stop.seconds
                self.core.remember_usage(stop.tenant, stop.user, rate, stop.at - stop.seconds, stop.at, now)

    # ------------------------------------------------------------------------------------------ reconcile

    def _reconcile(self, now: float, report: CycleReport) -> None:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(JOBS.c.id, JOBS.c.version, JOBS.c.state, JOBS.c.attempt, JOBS.c.spec, JOBS.c.started_at).where(
                    JOBS.c.state.in_([s.value for s in HOLDING_STATES])
                )
            ).all()
        wanted: dict[str, _Active] = {}
        for row in rows:
            previous = self._active.get(row.id)
            spec = previous.spec if previous is not None else JobSpec.model_validate(row.spec)
            wanted[row.id] = _Active(row.id, row.version, JobState(row.state), row.attempt, row.started_at or now, spec)
        # Jobs the service thought active but the database moved on (the API cancelled a starting job...).
        for job_id in set(self._active) - set(wanted):
            self.executor.stop(job_id, "no longer active")
            self._release(job_id, now, StopCause.CANCELLED)
        self._active = wanted

        statuses = {s.job_id: s for s in self.executor.poll()}
        for job_id, attempt in self.executor.discover():
            active = wanted.get(job_id)
            if active is None or active.attempt != attempt:
                # Launched by an earlier run of the service for an attempt the database no longer wants.
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
                self.executor.forget(job_id)
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
            self._missing.pop(job_id, None)
            if status.phase is Phase.RUNNING and active.state is JobState.STARTING:
                self._transition(active, now, JobState.RUNNING, "running", "all workers are running")
            elif status.terminal:
                self._finish(active, status, now, report)

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
        # Every branch above stored the outcome, so the executor's own record of this attempt can go.
        self.executor.stop(active.job_id, "finished")
        self.executor.forget(active.job_id)

    # ------------------------------------------------------------------------------------------ schedule

    def _schedule(self, now: float, report: CycleReport) -> None:
        with self.engine.connect() as conn:
            rows = conn.execute(select(JOBS.c.id, JOBS.c.version).where(JOBS.c.state == JobState.PENDING.value)).all()
            versions = {r.id: r.version for r in rows}
            missing = [job_id for job_id, v in versions.items() if (job_id, v) not in self._jobs]
            for chunk in _chunks(missing, 500):
                for row in conn.execute(select(JOBS).where(JOBS.c.id.in_(chunk))).all():
                    self._job(row.id, row.version, row)
        self._jobs = {key: job for key, job in self._jobs.items() if versions.get(key[0]) == key[1]}
        pending = [
            self._jobs[(job_id, v)]
            for job_id, v in versions.items()
            if (job_id, v) in self._jobs and self._hold_until.get(job_id, 0.0) <= now
        ]
        report.pending = len(pending)
        seen = frozenset(j.id for j in pending)
        if not (self._dirty or seen - self._pending_seen or now - self._last_step >= self.config.step_every_s):
            return
        self._pending_seen = seen
        self._dirty = False
        self._last_step = now
        report.stepped = True
        decisions = self.core.step(self.state, pending, now) if pending else []
        try:
            self._persist(decisions, versions, now, report)
        except BaseException:
            # The database refused the whole step: forget it in the core too, and start again from the database.
            self._reset()
            raise
        for decision in decisions:
            if decision.kind is DecisionKind.PREEMPT:
                self.executor.stop(decision.job_id, "preempted")
        for job_id in report.started:
            self._launch(self._active[job_id], now, report)

    def _persist(
        self, decisions: Sequence[Decision], versions: dict[str, int], now: float, report: CycleReport
    ) -> None:
        lost_races: list[str] = []
        with self._writer.begin() as conn:
            self._fence(conn)
            for decision in decisions:
                if decision.kind is DecisionKind.START:
                    assert decision.placement is not None
                    changed = conn.execute(
                        update(JOBS)
                        .where(
                            JOBS.c.id == decision.job_id,
                            JOBS.c.version == versions[decision.job_id],
                            JOBS.c.state == JobState.PENDING.value,
                        )
                        .values(
                            state=JobState.STARTING.value,
                            version=JOBS.c.version + 1,
                            placement=_placement_json(decision.placement),
                            started_at=now,
                            updated_at=now,
                            reasons=[],
                            estimated_start=now,
                            estimated_finish=decision.estimated_finish,
                            message="",
                        )
                    )
                    if changed.rowcount != 1:
                        lost_races.append(decision.job_id)
                        continue
                    self._write_ledger(conn, decision.ledger)
                    _event(
                        conn,
                        decision.job_id,
                        now,
                        "started",
                        _where(decision.placement),
                        _placement_json(decision.placement),
                    )
                    job = self._jobs[(decision.job_id, versions[decision.job_id])]
                    row = conn.execute(select(JOBS.c.attempt, JOBS.c.spec).where(JOBS.c.id == decision.job_id)).one()
                    self._active[decision.job_id] = _Active(
                        decision.job_id,
                        versions[decision.job_id] + 1,
                        JobState.STARTING,
                        row.attempt,
                        now,
                        JobSpec.model_validate(row.spec),
                    )
                    report.started.append(job.id)
                    self._reasons_written.pop(decision.job_id, None)
                elif decision.kind is DecisionKind.PREEMPT:
                    victim = self._active.pop(decision.job_id, None)
                    reason = decision.reasons[0].message if decision.reasons else "preempted"
                    conn.execute(
                        update(JOBS)
                        .where(JOBS.c.id == decision.job_id)
                        .values(
                            state=JobState.PENDING.value,
                            version=JOBS.c.version + 1,
                            attempt=JOBS.c.attempt + 1,
                            placement=None,
                            started_at=None,
                            updated_at=now,
                            message=reason,
                        )
                    )
                    self._write_ledger(conn, decision.ledger)
                    _event(
                        conn,
                        decision.job_id,
                        now,
                        "preempted",
                        reason,
                        decision.reasons[0].as_dict() if decision.reasons else {},
                    )
                    if victim is not None:
                        report.preempted.append(decision.job_id)
                else:
                    reasons = tuple(r.message for r in decision.reasons)
                    if self._reasons_written.get(decision.job_id) == reasons:
                        continue
                    # Reasons are advice, not state: they do not bump the version (a cancel must not lose a race
                    # against the scheduler explaining why the job waits).
                    conn.execute(
                        update(JOBS)
                        .where(JOBS.c.id == decision.job_id, JOBS.c.state == JobState.PENDING.value)
                        .values(reasons=[r.as_dict() for r in decision.reasons])
                    )
                    self._reasons_written[decision.job_id] = reasons
        for job_id in lost_races:
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

    def _transition(self, active: _Active, now: float, state: JobState, kind: str, message: str) -> bool:
        with self._writer.begin() as conn:
            self._fence(conn)
            changed = conn.execute(
                update(JOBS)
                .where(JOBS.c.id == active.job_id, JOBS.c.version == active.version)
                .values(state=state.value, version=active.version + 1, updated_at=now)
            )
            if changed.rowcount != 1:
                return False
            _event(conn, active.job_id, now, kind, message, {})
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
        with self._writer.begin() as conn:
            self._fence(conn)
            conn.execute(
                update(JOBS)
                .where(JOBS.c.id == active.job_id)
                .values(
                    state=state.value,
                    version=JOBS.c.version + 1,
                    finished_at=now,
                    updated_at=now,
                    message=message[:4000],
                    exit_code=exit_code,
                    estimated_start=None,
                )
            )
            self._write_ledger(conn, (entry,) if entry is not None else ())
            _event(conn, active.job_id, now, state.value, message[:4000], {"exit_code": exit_code})
        self._active.pop(active.job_id, None)
        report.finished.append(active.job_id)

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
        with self._writer.begin() as conn:
            self._fence(conn)
            conn.execute(
                update(JOBS)
                .where(JOBS.c.id == job_id, JOBS.c.state.in_([s.value for s in HOLDING_STATES]))
                .values(
                    state=JobState.PENDING.value,
                    version=JOBS.c.version + 1,
                    attempt=JOBS.c.attempt + 1,
                    placement=None,
                    started_at=None,
                    updated_at=now,
                    message=message[:4000],
                )
            )
            self._write_ledger(conn, (entry,) if entry is not None else ())
            _event(conn, job_id, now, "retrying" if retry else "requeued", message[:4000], {"cause": cause.value})
        report.requeued.append(job_id)

    def _release(self, job_id: str, now: float, cause: StopCause) -> None:
        if job_id in self.state.allocations:
            entry = self.core.finish(self.state, job_id, now, cause)
            self._dirty = True
            if entry is not None:
                with self._writer.begin() as conn:
                    self._write_ledger(conn, (entry,))

    # ------------------------------------------------------------------------------------------ logs, ETA

    def _copy_logs(self) -> None:
        for job_id in list(self._active):
            self._copy_logs_of(job_id)

    def _copy_logs_of(self, job_id: str) -> None:
        active = self._active.get(job_id)
        placement = self.state.allocations.get(job_id)
        if active is None or placement is None:
            return
        rows: list[dict[str, Any]] = []
        for rank in range(len(placement.workers)):
            key = (job_id, active.attempt, rank)
            offset = self._log_offsets.get(key)
            if offset is None:
                offset = self._stored_log_end(*key)
            try:
                chunk = self.executor.read_logs(job_id, rank, offset)
            except ExecutorError:
                continue
            if chunk.attempt != active.attempt or not chunk.text:
                self._log_offsets[key] = offset
                continue
            rows.append(
                {"job_id": job_id, "attempt": active.attempt, "rank": rank, "offset": offset, "text": chunk.text}
            )
            self._log_offsets[key] = chunk.next_offset
        if rows:
            with self._writer.begin() as conn:
                conn.execute(insert(JOB_LOGS), rows)

    def _stored_log_end(self, job_id: str, attempt: int, rank: int) -> int:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(JOB_LOGS.c.offset, JOB_LOGS.c.text)
                .where(JOB_LOGS.c.job_id == job_id, JOB_LOGS.c.attempt == attempt, JOB_LOGS.c.rank == rank)
                .order_by(JOB_LOGS.c.offset.desc())
                .limit(1)
            ).first()
        return 0 if row is None else row.offset + len(row.text.encode())

    def _refresh_eta(self, now: float) -> None:
        pending = [self._jobs[k] for k in self._jobs if k[0] not in self._active]
        if not pending:
            return
        result = forecast(self.core, self.state, pending, now)
        with self._writer.begin() as conn:
            for chunk in _chunks(list(result.starts.items()), 500):
                for job_id, start in chunk:
                    conn.execute(
                        update(JOBS)
                        .where(JOBS.c.id == job_id, JOBS.c.state == JobState.PENDING.value)
                        .values(estimated_start=start)
                    )

    # ------------------------------------------------------------------------------------------ helpers

    def _job(self, job_id: str, version: int, row: Any) -> Job:
        job = self._jobs.get((job_id, version))
        if job is None:
            spec = JobSpec.model_validate(row.spec)
            job = spec.to_job(job_id, tenant=row.tenant, user=row.user, queue=row.queue, submit_time=row.submitted_at)
            self._jobs[(job_id, version)] = job
        return job

    def _write_ledger(self, conn: Connection, entries: Iterable[LedgerEntry]) -> None:
        rows = [_ledger_row(entry) for entry in entries]
        if rows:
            conn.execute(insert(LEDGER), rows)


# ---------------------------------------------------------------------------------------------- conversions


def _placement_json(placement: Placement) -> dict[str, Any]:
    return {
        "model": placement.model,
        "pool": placement.pool,
        "topology": placement.topology.name.lower(),
        "workers": [
            {
                "rank": rank,
                "node": w.node,
                "devices": list(w.devices),
                "milli": w.milli,
                "cpu_milli": w.cpu_milli,
                "memory_mib": w.memory_mib,
            }
            for rank, w in enumerate(placement.workers)
        ],
    }


def _placement(job_id: str, data: dict[str, Any]) -> Placement:
    return Placement(
        job_id=job_id,
        model=data["model"],
        pool=data["pool"],
        workers=tuple(
            WorkerPlacement(w["node"], tuple(w["devices"]), w["milli"], w.get("cpu_milli", 0), w.get("memory_mib", 0))
            for w in data["workers"]
        ),
        topology=topology_by_name(data["topology"]),
    )


def _exit_code(status: ExecutionStatus) -> int | None:
    """The exit code that explains the outcome: a worker that failed by itself, not one the gang rule stopped
    afterwards (SIGTERM, 143) because of it."""
    failed = [w.exit_code for w in status.workers if w.phase is Phase.FAILED and w.exit_code not in (None, 0)]
    if failed:
        return failed[0]
    return next((w.exit_code for w in status.workers if w.exit_code not in (None, 0)), None)


def _where(placement: Placement) -> str:
    nodes = ", ".join(f"{w.node}[{','.join(map(str, w.devices))}]" for w in placement.workers)
    return f"placed on {placement.model} in {placement.pool}: {nodes}"


def _ledger_row(entry: LedgerEntry) -> dict[str, Any]:
    row = asdict(entry)
    row["kind"] = entry.kind.value
    row["tier"] = entry.tier.value
    row["cause"] = entry.cause.value if entry.cause is not None else None
    return row


def _event(conn: Connection, job_id: str, at: float, kind: str, message: str, data: dict[str, Any]) -> None:
    conn.execute(insert(JOB_EVENTS).values(job_id=job_id, at=at, kind=kind, message=message, data=data))


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
