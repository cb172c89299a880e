"""The scheduler service's records in SQL: :class:`SqlServiceStore` implements the store port
(:class:`~scheduler.live.store.ServiceStore`) on the API's tables.

One transaction per call. Every write re-reads the leader lease inside its transaction (the fence) and aborts
with :class:`~scheduler.live.store.NotLeader` if another holder took it meanwhile; job moves are conditional on the
version or state the scheduler saw, so a cancel from the API and a start from the scheduler never both win. A
database that cannot be reached surfaces as :class:`~scheduler.live.store.StoreUnavailable`::

    store = SqlServiceStore(make_engine(url), heartbeat_interval_s=5.0)   # doctest: +SKIP
    SchedulerService(store, RayExecutor(address)).run(stop)              # doctest: +SKIP
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import asdict
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import Connection, Engine, and_, bindparam, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError, OperationalError

from api.db import is_sqlite, write_engine
from api.enums import NodeSource, NodeStatus
from api.store import node_of, node_status
from api.tables import CHANGES, DEVICES, JOB_EVENTS, JOB_LOGS, JOBS, LEADER_LOCK, LEDGER, NODES, POLICY_VERSIONS
from scheduler.live.store import (
    LEASE_NAME,
    Changes,
    FeedCursor,
    Fence,
    FinishedRun,
    JobEnd,
    JobRecord,
    LogChunkRow,
    NodeRecord,
    NotLeader,
    StartedRun,
    StepOutcome,
    StoreUnavailable,
    UsageStop,
)
from scheduler.model import (
    Decision,
    DecisionKind,
    LedgerEntry,
    LedgerKind,
    Placement,
    Reason,
    WorkerPlacement,
    topology_by_name,
)
from scheduler.spec import HOLDING_STATES, JobSpec, JobState

#: Messages are cut to what a column holds and a person reads.
MESSAGE_CHARS = 4000
#: Rows per IN (...) list or multi-row statement.
CHUNK = 500
#: The PostgreSQL channel the change triggers notify (``api/migrations/versions/0002_change_feed.py``).
CHANNEL = "zhisuan_changes"
log = logging.getLogger("zhisuan.store")

P = ParamSpec("P")
R = TypeVar("R")


def _unavailable_as_store_error(method: Callable[P, R]) -> Callable[P, R]:
    """A database that cannot be reached is a :class:`StoreUnavailable` to the service (it retries the cycle)."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except OperationalError as exc:
            raise StoreUnavailable(str(exc).splitlines()[0]) from exc

    return wrapper


class SqlServiceStore:
    """The service store on the API's database (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine, heartbeat_interval_s: float = 5.0) -> None:
        self.engine = engine
        # Every transaction that writes reads first (the fence, optimistic versions): on SQLite it must take the
        # write lock when it begins (BEGIN IMMEDIATE, waiting up to the busy timeout), or it fails at once with
        # "database is locked" whenever another connection wrote since its read snapshot.
        self._writer = write_engine(engine)
        #: The agents' heartbeat interval (the API's ``ZHISUAN_HEARTBEAT_INTERVAL_S``): a node that misses three
        #: heartbeats is down.
        self.heartbeat_interval_s = heartbeat_interval_s
        #: A job's spec never changes: parsed once per job, not once per cycle.
        self._specs: dict[str, JobSpec] = {}
        self.feed = ChangeFeed(engine)
        #: The estimated starts last written, so that a refresh writes only the ones that moved.
        self._estimates: dict[str, float | None] = {}

    # ------------------------------------------------------------------------------------------ the lease

    @_unavailable_as_store_error
    def hold_lease(self, holder: str, now: float, lease_s: float, term: int | None) -> int | None:
        expires = now + lease_s
        with self._writer.begin() as conn:
            row = conn.execute(select(LEADER_LOCK).where(LEADER_LOCK.c.name == LEASE_NAME)).first()
            if row is None:
                try:
                    with conn.begin_nested():
                        conn.execute(
                            insert(LEADER_LOCK).values(name=LEASE_NAME, holder=holder, expires_at=expires, term=1)
                        )
                except IntegrityError:
                    return None
                return 1
            if row.holder == holder and term == row.term:
                conn.execute(
                    update(LEADER_LOCK)
                    .where(LEADER_LOCK.c.name == LEASE_NAME, LEADER_LOCK.c.term == row.term)
                    .values(expires_at=expires)
                )
                return int(row.term)
            if row.expires_at > now and row.holder != holder:
                return None
            taken = conn.execute(
                update(LEADER_LOCK)
                .where(LEADER_LOCK.c.name == LEASE_NAME, LEADER_LOCK.c.term == row.term)
                .values(holder=holder, expires_at=expires, term=row.term + 1)
            )
            if taken.rowcount != 1:
                return None
            return int(row.term) + 1

    @_unavailable_as_store_error
    def release_lease(self, holder: str) -> None:
        with self._writer.begin() as conn:
            conn.execute(
                update(LEADER_LOCK)
                .where(LEADER_LOCK.c.name == LEASE_NAME, LEADER_LOCK.c.holder == holder)
                .values(expires_at=0.0)
            )

    @staticmethod
    def _fence(conn: Connection, fence: Fence) -> None:
        """Inside a write transaction: abort unless ``fence`` is still the lease in force."""
        row = conn.execute(select(LEADER_LOCK.c.holder, LEADER_LOCK.c.term).where(LEADER_LOCK.c.name == LEASE_NAME))
        current = row.first()
        if current is None or current.holder != fence.holder or current.term != fence.term:
            raise NotLeader(LEASE_NAME)

    # ------------------------------------------------------------------------------------------ reads

    @_unavailable_as_store_error
    def policy_after(self, version: int | None) -> tuple[int, object] | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(POLICY_VERSIONS.c.id, POLICY_VERSIONS.c.document).order_by(POLICY_VERSIONS.c.id.desc()).limit(1)
            ).first()
        if row is None or row.id == version:
            return None
        return int(row.id), row.document

    @_unavailable_as_store_error
    def nodes(self, now: float, ids: Collection[str] | None = None) -> list[NodeRecord]:
        with self.engine.connect() as conn:
            unhealthy: dict[str, set[int]] = {}
            sick = select(DEVICES.c.node_id, DEVICES.c.index).where(~DEVICES.c.healthy)
            statements = [(select(NODES), sick)]
            if ids is not None:
                statements = [
                    (select(NODES).where(NODES.c.id.in_(chunk)), sick.where(DEVICES.c.node_id.in_(chunk)))
                    for chunk in _chunks(sorted(ids), CHUNK)
                ]
            rows: list[Any] = []
            for nodes, devices in statements:
                rows.extend(conn.execute(nodes))
                # Unpacked by position: ``Row.index`` is tuple's method, not the column.
                for node_id, index in conn.execute(devices):
                    unhealthy.setdefault(node_id, set()).add(index)
        return [
            NodeRecord(
                node=node_of(row._mapping),
                usable=node_status(row._mapping, now, self.heartbeat_interval_s) == NodeStatus.READY.value,
                unhealthy=frozenset(unhealthy.get(row.id, ())),
            )
            for row in rows
        ]

    @_unavailable_as_store_error
    def changes(self, cursor: FeedCursor | None) -> Changes:
        return self.feed.read(cursor)

    @_unavailable_as_store_error
    def lapsed_nodes(self, after: float, until: float) -> list[str]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(NODES.c.id).where(
                    NODES.c.source == NodeSource.AGENT.value,
                    and_(NODES.c.lease_expires_at > after, NODES.c.lease_expires_at <= until),
                )
            ).all()
        return [r.id for r in rows]

    def watch(self, wake: Callable[[], None]) -> Callable[[], None]:
        return self.feed.watch(lambda entity: wake() if entity in ("", "job", "node", "policy") else None)

    @_unavailable_as_store_error
    def holding_jobs(self) -> list[JobRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(JOBS).where(JOBS.c.state.in_([s.value for s in HOLDING_STATES]))).all()
        records = [self._record(row._mapping, keep_spec=True) for row in rows]
        # Only jobs that hold devices are asked for again and again; forget the specs of the others.
        holding = {r.id for r in records}
        self._specs = {job_id: spec for job_id, spec in self._specs.items() if job_id in holding}
        return records

    @_unavailable_as_store_error
    def pending_versions(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(JOBS.c.id, JOBS.c.version).where(JOBS.c.state == JobState.PENDING.value)).all()
        return {r.id: r.version for r in rows}

    @_unavailable_as_store_error
    def jobs(self, ids: Sequence[str]) -> list[JobRecord]:
        records: list[JobRecord] = []
        with self.engine.connect() as conn:
            for chunk in _chunks(list(ids), CHUNK):
                records.extend(
                    self._record(row._mapping) for row in conn.execute(select(JOBS).where(JOBS.c.id.in_(chunk)))
                )
        return records

    @_unavailable_as_store_error
    def job_states(self, ids: Sequence[str]) -> dict[str, tuple[JobState, int]]:
        states: dict[str, tuple[JobState, int]] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(list(ids), CHUNK * 4):
                statement = select(JOBS.c.id, JOBS.c.state, JOBS.c.version).where(JOBS.c.id.in_(chunk))
                for job_id, state, version in conn.execute(statement):
                    states[job_id] = (JobState(state), int(version))
        return states

    @_unavailable_as_store_error
    def finished_runs(self, limit: int) -> list[FinishedRun]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(JOBS.c.spec, JOBS.c.started_at, JOBS.c.finished_at, JOBS.c.placement)
                .where(JOBS.c.state == JobState.SUCCEEDED.value, JOBS.c.started_at.is_not(None))
                .order_by(JOBS.c.finished_at.desc())
                .limit(limit)
            ).all()
        return [
            FinishedRun(JobSpec.model_validate(r.spec), r.placement["model"], r.finished_at - r.started_at)
            for r in reversed(rows)
            if r.placement and r.finished_at is not None
        ]

    @_unavailable_as_store_error
    def usage_stops(self, since: float, limit: int) -> list[UsageStop]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(LEDGER.c.tenant, LEDGER.c.user, LEDGER.c.at, LEDGER.c.seconds, LEDGER.c.ncu_hours)
                .where(LEDGER.c.kind == LedgerKind.STOP.value, LEDGER.c.at >= since)
                .order_by(LEDGER.c.at.desc())
                .limit(limit)
            ).all()
        return [UsageStop(r.tenant, r.user, r.at, r.seconds, r.ncu_hours) for r in rows]

    @_unavailable_as_store_error
    def stored_log_end(self, job_id: str, attempt: int, rank: int) -> int:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(JOB_LOGS.c.offset, JOB_LOGS.c.text)
                .where(JOB_LOGS.c.job_id == job_id, JOB_LOGS.c.attempt == attempt, JOB_LOGS.c.rank == rank)
                .order_by(JOB_LOGS.c.offset.desc())
                .limit(1)
            ).first()
        return 0 if row is None else int(row.offset) + len(row.text.encode())

    # ------------------------------------------------------------------------------------------ writes

    @_unavailable_as_store_error
    def commit_step(
        self,
        fence: Fence,
        now: float,
        decisions: Sequence[Decision],
        versions: Mapping[str, int],
        reasons: Mapping[str, tuple[Reason, ...]],
    ) -> StepOutcome:
        outcome = StepOutcome()
        with self._writer.begin() as conn:
            self._fence(conn, fence)
            starts = [d for d in decisions if d.kind is DecisionKind.START]
            if starts:
                self._start_all(conn, starts, versions, now, outcome)
            for decision in decisions:
                if decision.kind is DecisionKind.PREEMPT:
                    message = decision.reasons[0].message if decision.reasons else "preempted"
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
                            message=message,
                        )
                    )
                    _write_ledger(conn, decision.ledger)
                    data = decision.reasons[0].as_dict() if decision.reasons else {}
                    _event(conn, decision.job_id, now, "preempted", message, data)
                    outcome.preempted.append(decision.job_id)
            # Reasons are advice, not state: they do not bump the version (a cancel must not lose a race against
            # the scheduler explaining why the job waits). One multi-row statement (a first step over a long
            # queue explains every job at once).
            advice = [{"job": job_id, "why": [r.as_dict() for r in why]} for job_id, why in reasons.items()]
            statement = (
                update(JOBS)
                .where(JOBS.c.id == bindparam("job"), JOBS.c.state == JobState.PENDING.value)
                .values(reasons=bindparam("why", type_=JOBS.c.reasons.type))
            )
            for chunk in _chunks(advice, CHUNK * 4):
                conn.execute(statement, chunk)
        return outcome

    def _start_all(
        self,
        conn: Connection,
        starts: Sequence[Decision],
        versions: Mapping[str, int],
        now: float,
        outcome: StepOutcome,
    ) -> None:
        """Every start of a step, in multi-row statements: the conditional moves (on the version each was decided
        on), then a read of which took (a cancel through the API may have moved a job since), then their ledger
        entries and events. The rows moved are locked until the transaction ends, so the read is exact."""
        move = (
            update(JOBS)
            .where(
                JOBS.c.id == bindparam("job"),
                JOBS.c.version == bindparam("seen"),
                JOBS.c.state == JobState.PENDING.value,
            )
            .values(
                state=JobState.STARTING.value,
                version=JOBS.c.version + 1,
                placement=bindparam("where", type_=JOBS.c.placement.type),
                started_at=now,
                updated_at=now,
                reasons=[],
                estimated_start=now,
                estimated_finish=bindparam("finish"),
                message="",
            )
        )
        params = []
        for decision in starts:
            assert decision.placement is not None
            params.append(
                {
                    "job": decision.job_id,
                    "seen": versions[decision.job_id],
                    "where": placement_to_json(decision.placement),
                    "finish": decision.estimated_finish,
                }
            )
        for chunk in _chunks(params, CHUNK * 4):
            conn.execute(move, chunk)
        moved: dict[str, tuple[str, int, int, Any]] = {}
        for chunk in _chunks([d.job_id for d in starts], CHUNK * 4):
            statement = select(JOBS.c.id, JOBS.c.state, JOBS.c.version, JOBS.c.attempt, JOBS.c.spec).where(
                JOBS.c.id.in_(chunk)
            )
            for job_id, state, version, attempt, spec in conn.execute(statement):
                moved[job_id] = (state, int(version), int(attempt), spec)
        ledger: list[LedgerEntry] = []
        events: list[dict[str, Any]] = []
        for decision in starts:
            found = moved.get(decision.job_id)
            expected = versions[decision.job_id] + 1
            if found is None or found[0] != JobState.STARTING.value or found[1] != expected:
                outcome.lost_races.append(decision.job_id)
                continue
            placement = decision.placement
            assert placement is not None
            ledger.extend(decision.ledger)
            events.append(
                {
                    "job_id": decision.job_id,
                    "at": now,
                    "kind": "started",
                    "message": where(placement),
                    "data": placement_to_json(placement),
                }
            )
            outcome.started.append(
                StartedRun(decision.job_id, expected, found[2], self._spec(decision.job_id, found[3]))
            )
        _write_ledger(conn, ledger)
        for chunk in _chunks(events, CHUNK * 4):
            conn.execute(insert(JOB_EVENTS), chunk)

    @_unavailable_as_store_error
    def transition(self, fence: Fence, job_id: str, version: int, state: JobState, now: float, message: str) -> bool:
        with self._writer.begin() as conn:
            self._fence(conn, fence)
            changed = conn.execute(
                update(JOBS)
                .where(JOBS.c.id == job_id, JOBS.c.version == version)
                .values(state=state.value, version=version + 1, updated_at=now)
            )
            if changed.rowcount != 1:
                return False
            _event(conn, job_id, now, state.value, message, {})
        return True

    @_unavailable_as_store_error
    def transition_many(
        self, fence: Fence, moves: Sequence[tuple[str, int]], state: JobState, now: float, message: str
    ) -> set[str]:
        if not moves:
            return set()
        statement = (
            update(JOBS)
            .where(JOBS.c.id == bindparam("job"), JOBS.c.version == bindparam("seen"))
            .values(state=state.value, version=JOBS.c.version + 1, updated_at=now)
        )
        expected = {job_id: version + 1 for job_id, version in moves}
        moved: set[str] = set()
        with self._writer.begin() as conn:
            self._fence(conn, fence)
            params = [{"job": job_id, "seen": version} for job_id, version in moves]
            for chunk in _chunks(params, CHUNK * 4):
                conn.execute(statement, chunk)
            # The rows moved stay locked until the commit: this read says exactly which moves took.
            for chunk in _chunks(list(expected), CHUNK * 4):
                rows = conn.execute(select(JOBS.c.id, JOBS.c.state, JOBS.c.version).where(JOBS.c.id.in_(chunk)))
                moved.update(r.id for r in rows if r.state == state.value and r.version == expected[r.id])
            events: list[dict[str, Any]] = [
                {"job_id": job_id, "at": now, "kind": state.value, "message": message, "data": {}}
                for job_id in sorted(moved)
            ]
            for chunk in _chunks(events, CHUNK * 4):
                conn.execute(insert(JOB_EVENTS), chunk)
        return moved

    @_unavailable_as_store_error
    def end(self, fence: Fence, now: float, ends: Sequence[JobEnd]) -> None:
        if not ends:
            return
        statement = (
            update(JOBS)
            .where(JOBS.c.id == bindparam("job"))
            .values(
                state=bindparam("state"),
                version=JOBS.c.version + 1,
                finished_at=now,
                updated_at=now,
                message=bindparam("message"),
                exit_code=bindparam("exit_code"),
                estimated_start=None,
            )
        )
        rows = [
            {"job": e.job_id, "state": e.state.value, "message": e.message[:MESSAGE_CHARS], "exit_code": e.exit_code}
            for e in ends
        ]
        with self._writer.begin() as conn:
            self._fence(conn, fence)
            for chunk in _chunks(rows, CHUNK * 4):
                conn.execute(statement, chunk)
            _write_ledger(conn, [entry for e in ends for entry in e.ledger])
            events = [
                {
                    "job_id": e.job_id,
                    "at": now,
                    "kind": e.state.value,
                    "message": e.message[:MESSAGE_CHARS],
                    "data": {"exit_code": e.exit_code},
                }
                for e in ends
            ]
            conn.execute(insert(JOB_EVENTS), events)

    @_unavailable_as_store_error
    def requeue(
        self,
        fence: Fence,
        job_id: str,
        now: float,
        message: str,
        ledger: Sequence[LedgerEntry],
        event: str,
        cause: str,
    ) -> None:
        with self._writer.begin() as conn:
            self._fence(conn, fence)
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
                    message=message[:MESSAGE_CHARS],
                )
            )
            _write_ledger(conn, ledger)
            _event(conn, job_id, now, event, message[:MESSAGE_CHARS], {"cause": cause})

    @_unavailable_as_store_error
    def write_ledger(self, entries: Sequence[LedgerEntry]) -> None:
        with self._writer.begin() as conn:
            _write_ledger(conn, entries)

    @_unavailable_as_store_error
    def append_logs(self, chunks: Sequence[LogChunkRow]) -> None:
        if chunks:
            with self._writer.begin() as conn:
                conn.execute(insert(JOB_LOGS), [asdict(c) for c in chunks])

    @_unavailable_as_store_error
    def set_estimated_starts(self, starts: Mapping[str, float | None]) -> None:
        # Only the estimates that moved by a second or more (an ETA is advice: a whole queue's worth of rows
        # rewritten every few seconds would be most of the database's work), in multi-row statements.
        moved = [
            {"job": job_id, "start": start}
            for job_id, start in starts.items()
            if not _close(self._estimates.get(job_id, -1.0), start)
        ]
        if not moved:
            return
        statement = (
            update(JOBS)
            .where(JOBS.c.id == bindparam("job"), JOBS.c.state == JobState.PENDING.value)
            .values(estimated_start=bindparam("start"))
        )
        with self._writer.begin() as conn:
            for chunk in _chunks(moved, CHUNK * 4):
                conn.execute(statement, chunk)
        self._estimates = {job_id: start for job_id, start in starts.items()}

    # ------------------------------------------------------------------------------------------ helpers

    def _spec(self, job_id: str, data: Any, keep: bool = True) -> JobSpec:
        spec = self._specs.get(job_id)
        if spec is None:
            spec = JobSpec.model_validate(data)
            if keep:
                self._specs[job_id] = spec
        return spec

    def _record(self, row: Mapping[Any, Any], keep_spec: bool = False) -> JobRecord:
        return JobRecord(
            id=row["id"],
            version=row["version"],
            state=JobState(row["state"]),
            attempt=row["attempt"],
            spec=self._spec(row["id"], row["spec"], keep_spec),
            tenant=row["tenant"],
            user=row["user"],
            queue=row["queue"],
            submitted_at=row["submitted_at"],
            started_at=row["started_at"],
            placement=placement_from_json(row["id"], row["placement"]) if row["placement"] else None,
            last_checkpoint_at=row["last_checkpoint_at"],
        )


# ---------------------------------------------------------------------------------------------- change feed


class ChangeFeed:
    """Reads the ``changes`` outbox (filled by triggers on every writer's tables) from a :class:`FeedCursor`.

    A change number (``seq``) is handed out when a row is written, not when its transaction commits, so on
    PostgreSQL a reader can see 105 before 104 commits. The cursor therefore remembers the numbers it skipped
    (gaps) and asks for them again until they appear or ``gap_timeout_s`` passes (a rolled-back transaction leaves
    its numbers unused for good). On SQLite writers are serialised and numbers appear in order: the gaps stay
    empty and the read is one indexed range scan from the high-water mark. Rows older than ``retention_s`` are
    pruned; a reader that did not read for half of that reads everything again (``resync``)::

        feed = ChangeFeed(engine)                                  # doctest: +SKIP
        first = feed.read(None)          # resync: read everything, then follow first.cursor
        later = feed.read(first.cursor)  # later.jobs: ids of the jobs to read again
    """

    def __init__(
        self,
        engine: Engine,
        retention_s: float = 600.0,
        gap_timeout_s: float = 60.0,
        prune_every_s: float = 30.0,
        max_gaps: int = 5000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self._writer = write_engine(engine)
        self.retention_s = retention_s
        self.gap_timeout_s = gap_timeout_s
        self.prune_every_s = prune_every_s
        self.max_gaps = max_gaps
        self.clock = clock
        self._last_prune = clock()

    def read(self, cursor: FeedCursor | None) -> Changes:
        now = self.clock()
        if now - self._last_prune >= self.prune_every_s:
            self._last_prune = now
            self.prune()
        with self.engine.connect() as conn:
            if cursor is None or now - cursor.read_at > self.retention_s / 2:
                return Changes(self._head(conn, now), resync=True)
            gaps = dict(cursor.gaps)
            wanted = CHANGES.c.seq > cursor.seen
            if gaps:
                wanted = or_(wanted, CHANGES.c.seq.in_(list(gaps)))
            rows = conn.execute(
                select(CHANGES.c.seq, CHANGES.c.entity, CHANGES.c.key).where(wanted).order_by(CHANGES.c.seq)
            ).all()
        ids: dict[str, set[str]] = {"job": set(), "node": set(), "policy": set(), "token": set(), "user": set()}
        seen = cursor.seen
        found: set[int] = set()
        for seq, entity, key in rows:
            found.add(seq)
            gaps.pop(seq, None)
            seen = max(seen, seq)
            ids.setdefault(entity, set()).add(key)
        for missing in range(cursor.seen + 1, seen):
            if missing not in found:
                gaps[missing] = now
        open_gaps = tuple((seq, since) for seq, since in sorted(gaps.items()) if now - since < self.gap_timeout_s)
        if len(open_gaps) > self.max_gaps:
            return Changes(FeedCursor(seen, read_at=now), resync=True)
        return Changes(
            FeedCursor(seen, open_gaps, now),
            jobs=frozenset(ids["job"]),
            nodes=frozenset(ids["node"]),
            policy=bool(ids["policy"]),
            tokens=frozenset(ids["token"]),
            users=frozenset(ids["user"]),
        )

    def _head(self, conn: Connection, now: float) -> FeedCursor:
        """A cursor at the newest change, with the numbers below it not visible yet as gaps: a transaction still
        open holds them, and what it changed is in neither the full read that follows nor the rows after it."""
        head = int(conn.execute(select(func.max(CHANGES.c.seq))).scalar() or 0)
        low = max(0, head - self.max_gaps)
        present = set(conn.execute(select(CHANGES.c.seq).where(CHANGES.c.seq > low)).scalars())
        floor = conn.execute(select(func.min(CHANGES.c.seq))).scalar()
        start = max(low, int(floor or head) - 1)
        gaps = tuple((seq, now) for seq in range(start + 1, head) if seq not in present)
        return FeedCursor(head, gaps, now)

    def prune(self) -> None:
        """Delete the rows older than the retention (any reader may; deleting twice is harmless)."""
        try:
            with self._writer.begin() as conn:
                conn.execute(delete(CHANGES).where(CHANGES.c.at < time.time() - self.retention_s))
        except OperationalError as exc:
            log.debug("could not prune the change feed: %s", exc)

    def watch(self, wake: Callable[[str], None], poll_s: float = 0.05) -> Callable[[], None]:
        """Call ``wake(entity)`` when a change is written, from any process: ``LISTEN`` on PostgreSQL, a poll of
        the high-water mark every ``poll_s`` on SQLite. Runs in a daemon thread; returns its stop function."""
        stop = threading.Event()
        target = self._listen if not is_sqlite(self.engine) else self._poll
        thread = threading.Thread(target=target, args=(wake, stop, poll_s), name="zhisuan-change-watch", daemon=True)
        thread.start()

        def stop_watching() -> None:
            stop.set()
            thread.join(timeout=5)

        return stop_watching

    def _poll(self, wake: Callable[[str], None], stop: threading.Event, poll_s: float) -> None:
        last: int | None = None
        while not stop.wait(poll_s):
            try:
                with self.engine.connect() as conn:
                    head = conn.execute(select(func.max(CHANGES.c.seq))).scalar()
            except OperationalError:
                continue
            if last is not None and head != last:
                wake("")
            last = head

    def _listen(self, wake: Callable[[str], None], stop: threading.Event, poll_s: float) -> None:
        import psycopg

        url = self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        while not stop.is_set():
            try:
                with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    wake("")  # changes written while we were not listening
                    while not stop.is_set():
                        for note in conn.notifies(timeout=1.0):
                            wake(note.payload)
            except psycopg.Error as exc:
                log.debug("change listener reconnecting: %s", exc)
                stop.wait(1.0)


# ---------------------------------------------------------------------------------------------- conversions


def placement_to_json(placement: Placement) -> dict[str, Any]:
    """A placement as the ``jobs.placement`` column and the API's ``placement`` field hold it."""
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


def placement_from_json(job_id: str, data: Mapping[str, Any]) -> Placement:
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


def where(placement: Placement) -> str:
    """The message of a job's ``started`` event: ``placed on H100 in bj1/H100: n1[0,1], n2[0,1]``."""
    nodes = ", ".join(f"{w.node}[{','.join(map(str, w.devices))}]" for w in placement.workers)
    return f"placed on {placement.model} in {placement.pool}: {nodes}"


def _ledger_row(entry: LedgerEntry) -> dict[str, Any]:
    row = asdict(entry)
    row["kind"] = entry.kind.value
    row["tier"] = entry.tier.value
    row["cause"] = entry.cause.value if entry.cause is not None else None
    return row


def _write_ledger(conn: Connection, entries: Iterable[LedgerEntry]) -> None:
    rows = [_ledger_row(entry) for entry in entries]
    if rows:
        conn.execute(insert(LEDGER), rows)


def _event(conn: Connection, job_id: str, at: float, kind: str, message: str, data: dict[str, Any]) -> None:
    conn.execute(insert(JOB_EVENTS).values(job_id=job_id, at=at, kind=kind, message=message, data=data))


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) < 1.0


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
