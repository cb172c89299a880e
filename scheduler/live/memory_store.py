"""The service's records in memory: a :class:`~scheduler.live.store.ServiceStore` without a database.

The scheduler service runs on it unchanged — in tests that need no database, and on the simulator's virtual
clock, where the *service* (not just the core) is replayed. It keeps the same rules as the SQL store: fenced
writes, starts conditional on the version they were decided on, reasons that bump no version::

    >>> from scheduler.spec import JobSpec
    >>> store = MemoryStore()
    >>> store.submit("j1", JobSpec(name="a", entrypoint="true"), tenant="acme", user="ann", now=0.0)
    >>> store.pending_versions()
    {'j1': 0}
    >>> store.hold_lease("svc", now=0.0, lease_s=10.0, term=None)
    1
    >>> store.cancel("j1", now=1.0).state.value
    'cancelled'
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from scheduler.live.store import (
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
    UsageStop,
)
from scheduler.model import Decision, DecisionKind, LedgerEntry, LedgerKind, Node, Reason
from scheduler.spec import HOLDING_STATES, TERMINAL_STATES, JobSpec, JobState


@dataclass
class StoredJob:
    """A job as the memory store keeps it (what the SQL store keeps in a ``jobs`` row)."""

    record: JobRecord
    finished_at: float | None = None
    message: str = ""
    exit_code: int | None = None
    reasons: tuple[Reason, ...] = ()
    estimated_start: float | None = None


@dataclass(frozen=True)
class Event:
    job_id: str
    at: float
    kind: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Lease:
    holder: str
    term: int
    expires_at: float


class MemoryStore:
    """Records in dicts. Not thread-safe: one service (and its test) at a time."""

    def __init__(self) -> None:
        self.policies: list[object] = []
        self.node_records: dict[str, NodeRecord] = {}
        self.stored: dict[str, StoredJob] = {}
        self.events: list[Event] = []
        self.ledger: list[LedgerEntry] = []
        self.logs: list[LogChunkRow] = []
        self._lease: _Lease | None = None
        #: The change feed: (entity, id) per change, its number its index + 1.
        self._changes: list[tuple[str, str]] = []
        self._watchers: list[Callable[[], None]] = []

    # ------------------------------------------------------------------------------------------ what the API does

    def set_policy(self, document: object) -> int:
        """Store a new policy version (validated by whoever calls, as the API does); returns its version."""
        self.policies.append(copy.deepcopy(document))
        self._changed("policy", str(len(self.policies)))
        return len(self.policies)

    def put_node(self, node: Node, usable: bool = True, unhealthy: frozenset[int] = frozenset()) -> None:
        """Add or change a node of the inventory."""
        self.node_records[node.id] = NodeRecord(node, usable, unhealthy)
        self._changed("node", node.id)

    def submit(
        self, job_id: str, spec: JobSpec, *, tenant: str, user: str, now: float, queue: str | None = None
    ) -> None:
        """A new pending job (the API validates and admits it first)."""
        if job_id in self.stored:
            raise ValueError(f"job {job_id!r} exists")
        record = JobRecord(
            id=job_id,
            version=0,
            state=JobState.PENDING,
            attempt=0,
            spec=spec,
            tenant=tenant,
            user=user,
            queue=queue or spec.queue or tenant,
            submitted_at=now,
        )
        self.stored[job_id] = StoredJob(record)
        self._changed("job", job_id)
        self._event(job_id, now, "submitted", "", {})

    def cancel(self, job_id: str, now: float) -> JobRecord:
        """What ``DELETE /v1/jobs/{id}`` does: a pending job ends at once, a holding one is cancelled by the
        scheduler (``cancelling``)."""
        stored = self.stored[job_id]
        record = stored.record
        if record.state is JobState.PENDING:
            self._move(job_id, state=JobState.CANCELLED)
            stored.finished_at = now
        elif record.state in HOLDING_STATES and record.state is not JobState.CANCELLING:
            self._move(job_id, state=JobState.CANCELLING)
        self._event(job_id, now, "cancel-requested", "", {})
        return self.stored[job_id].record

    def job(self, job_id: str) -> StoredJob:
        return self.stored[job_id]

    # ------------------------------------------------------------------------------------------ the lease

    def hold_lease(self, holder: str, now: float, lease_s: float, term: int | None) -> int | None:
        lease = self._lease
        if lease is None:
            self._lease = _Lease(holder, 1, now + lease_s)
            return 1
        if lease.holder == holder and term == lease.term:
            lease.expires_at = now + lease_s
            return lease.term
        if lease.expires_at > now and lease.holder != holder:
            return None
        self._lease = _Lease(holder, lease.term + 1, now + lease_s)
        return self._lease.term

    def release_lease(self, holder: str) -> None:
        if self._lease is not None and self._lease.holder == holder:
            self._lease.expires_at = 0.0

    def _fence(self, fence: Fence) -> None:
        lease = self._lease
        if lease is None or lease.holder != fence.holder or lease.term != fence.term:
            raise NotLeader("scheduler")

    # ------------------------------------------------------------------------------------------ reads

    def policy_after(self, version: int | None) -> tuple[int, object] | None:
        if not self.policies or len(self.policies) == version:
            return None
        return len(self.policies), copy.deepcopy(self.policies[-1])

    def nodes(self, now: float, ids: Collection[str] | None = None) -> list[NodeRecord]:
        if ids is None:
            return list(self.node_records.values())
        return [self.node_records[i] for i in ids if i in self.node_records]

    def changes(self, cursor: FeedCursor | None) -> Changes:
        head = len(self._changes)
        if cursor is None or cursor.seen > head:
            return Changes(FeedCursor(head), resync=True)
        new = self._changes[cursor.seen :]
        ids: dict[str, set[str]] = {"job": set(), "node": set(), "policy": set(), "token": set(), "user": set()}
        for entity, key in new:
            ids[entity].add(key)
        return Changes(
            FeedCursor(head),
            jobs=frozenset(ids["job"]),
            nodes=frozenset(ids["node"]),
            policy=bool(ids["policy"]),
        )

    def lapsed_nodes(self, after: float, until: float) -> list[str]:
        return []  # no leases here: put_node says whether a node is usable

    def watch(self, wake: Callable[[], None]) -> Callable[[], None]:
        self._watchers.append(wake)
        return lambda: self._watchers.remove(wake) if wake in self._watchers else None

    def holding_jobs(self) -> list[JobRecord]:
        return [s.record for s in self.stored.values() if s.record.state in HOLDING_STATES]

    def pending_versions(self) -> dict[str, int]:
        return {s.record.id: s.record.version for s in self.stored.values() if s.record.state is JobState.PENDING}

    def jobs(self, ids: Sequence[str]) -> list[JobRecord]:
        return [self.stored[i].record for i in ids if i in self.stored]

    def job_states(self, ids: Sequence[str]) -> dict[str, tuple[JobState, int]]:
        return {i: (self.stored[i].record.state, self.stored[i].record.version) for i in ids if i in self.stored}

    def finished_runs(self, limit: int) -> list[FinishedRun]:
        done = [
            s
            for s in self.stored.values()
            if s.record.state is JobState.SUCCEEDED and s.record.started_at is not None and s.record.placement
        ]
        done.sort(key=lambda s: s.finished_at or 0.0)
        return [
            FinishedRun(s.record.spec, s.record.placement.model, (s.finished_at or 0.0) - (s.record.started_at or 0.0))
            for s in done[-limit:]
            if s.record.placement is not None
        ]

    def usage_stops(self, since: float, limit: int) -> list[UsageStop]:
        stops = [e for e in self.ledger if e.kind is LedgerKind.STOP and e.at >= since]
        stops.sort(key=lambda e: e.at, reverse=True)
        return [UsageStop(e.tenant, e.user, e.at, e.seconds, e.ncu_hours) for e in stops[:limit]]

    def stored_log_end(self, job_id: str, attempt: int, rank: int) -> int:
        ends = [
            c.offset + len(c.text.encode())
            for c in self.logs
            if (c.job_id, c.attempt, c.rank) == (job_id, attempt, rank)
        ]
        return max(ends, default=0)

    # ------------------------------------------------------------------------------------------ writes

    def commit_step(
        self,
        fence: Fence,
        now: float,
        decisions: Sequence[Decision],
        versions: Mapping[str, int],
        reasons: Mapping[str, tuple[Reason, ...]],
    ) -> StepOutcome:
        self._fence(fence)
        outcome = StepOutcome()
        for decision in decisions:
            stored = self.stored.get(decision.job_id)
            if decision.kind is DecisionKind.START:
                record = stored.record if stored is not None else None
                if (
                    record is None
                    or record.version != versions[decision.job_id]
                    or record.state is not JobState.PENDING
                ):
                    outcome.lost_races.append(decision.job_id)
                    continue
                assert decision.placement is not None
                moved = self._move(
                    decision.job_id, state=JobState.STARTING, placement=decision.placement, started_at=now
                )
                assert stored is not None
                stored.reasons, stored.estimated_start, stored.message = (), now, ""
                self.ledger.extend(decision.ledger)
                self._event(decision.job_id, now, "started", "", {})
                outcome.started.append(StartedRun(moved.id, moved.version, moved.attempt, moved.spec))
            elif decision.kind is DecisionKind.PREEMPT and stored is not None:
                record = stored.record
                self._move(
                    decision.job_id,
                    state=JobState.PENDING,
                    attempt=record.attempt + 1,
                    placement=None,
                    started_at=None,
                )
                message = decision.reasons[0].message if decision.reasons else "preempted"
                stored.message = message
                self.ledger.extend(decision.ledger)
                self._event(decision.job_id, now, "preempted", message, {})
                outcome.preempted.append(decision.job_id)
        for job_id, why in reasons.items():
            stored = self.stored.get(job_id)
            if stored is not None and stored.record.state is JobState.PENDING:
                stored.reasons = why
        return outcome

    def transition(self, fence: Fence, job_id: str, version: int, state: JobState, now: float, message: str) -> bool:
        self._fence(fence)
        stored = self.stored.get(job_id)
        if stored is None or stored.record.version != version:
            return False
        self._move(job_id, state=state)
        self._event(job_id, now, state.value, message, {})
        return True

    def transition_many(
        self, fence: Fence, moves: Sequence[tuple[str, int]], state: JobState, now: float, message: str
    ) -> set[str]:
        self._fence(fence)
        return {job_id for job_id, version in moves if self.transition(fence, job_id, version, state, now, message)}

    def end(self, fence: Fence, now: float, ends: Sequence[JobEnd]) -> None:
        self._fence(fence)
        for end in ends:
            assert end.state in TERMINAL_STATES
            self._move(end.job_id, state=end.state)
            stored = self.stored[end.job_id]
            stored.finished_at, stored.message, stored.exit_code = now, end.message, end.exit_code
            stored.estimated_start = None
            self.ledger.extend(end.ledger)
            self._event(end.job_id, now, end.state.value, end.message, {"exit_code": end.exit_code})

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
        self._fence(fence)
        stored = self.stored[job_id]
        if stored.record.state in HOLDING_STATES:
            self._move(
                job_id, state=JobState.PENDING, attempt=stored.record.attempt + 1, placement=None, started_at=None
            )
            stored.message = message
        self.ledger.extend(ledger)
        self._event(job_id, now, event, message, {"cause": cause})

    def write_ledger(self, entries: Sequence[LedgerEntry]) -> None:
        self.ledger.extend(entries)

    def append_logs(self, chunks: Sequence[LogChunkRow]) -> None:
        self.logs.extend(chunks)

    def set_estimated_starts(self, starts: Mapping[str, float | None]) -> None:
        for job_id, start in starts.items():
            stored = self.stored.get(job_id)
            if stored is not None and stored.record.state is JobState.PENDING:
                stored.estimated_start = start

    # ------------------------------------------------------------------------------------------ helpers

    def _move(self, job_id: str, **changes: Any) -> JobRecord:
        stored = self.stored[job_id]
        stored.record = replace(stored.record, version=stored.record.version + 1, **changes)
        self._changed("job", job_id)
        return stored.record

    def _changed(self, entity: str, key: str) -> None:
        self._changes.append((entity, key))
        for wake in list(self._watchers):
            wake()

    def _event(self, job_id: str, at: float, kind: str, message: str, data: dict[str, Any]) -> None:
        self.events.append(Event(job_id, at, kind, message, data))
