"""The store port: everything the scheduler service reads from and writes to the center's records, in core types.

The service keeps the cycle (lease → sync → reconcile → step → persist → act); a :class:`ServiceStore` keeps the
records. The SQL implementation lives with the persistence code (``api/service_store.py``: one transaction per
call, optimistic versions, fenced writes); :class:`~scheduler.live.memory_store.MemoryStore` keeps them in dicts,
so the service runs without a database in tests and on the simulator's virtual clock.

Every write takes the :class:`Fence` of the lease it was decided under and raises :class:`NotLeader` if that
lease was lost meanwhile, so a deposed leader can never write; job moves are conditional on the job's version or
state, so a cancel from the API and a start from the scheduler never both win::

    >>> fence = Fence(holder="svc-1", term=3)
    >>> fence
    Fence(holder='svc-1', term=3)
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from scheduler.model import Decision, LedgerEntry, Node, Placement, Reason
from scheduler.spec import JobSpec, JobState

#: The name of the scheduler's leader lease.
LEASE_NAME = "scheduler"


class NotLeader(RuntimeError):
    """The leader lease was lost; nothing of the write that found out was stored."""


class StoreUnavailable(RuntimeError):
    """The store cannot be reached (database down, failover in progress): retry the cycle later."""


@dataclass(frozen=True)
class Fence:
    """The lease a write was decided under: its holder and the term it was taken in."""

    holder: str
    term: int


@dataclass(frozen=True)
class FeedCursor:
    """How far a reader of the change feed got: every change up to ``seen`` was read but those in ``gaps``.

    A gap is a change number that was handed out but not visible yet (its transaction was still open), with the
    monotonic time it was first missed; a reader asks for it again until it shows up or is given up as rolled back.
    ``read_at`` (monotonic) is when the reader last read: a reader away longer than the feed keeps its rows must
    read everything again.
    """

    seen: int
    gaps: tuple[tuple[int, float], ...] = ()
    read_at: float = 0.0


@dataclass(frozen=True)
class Changes:
    """What changed since a cursor, by entity and id (re-read those; everything else is as it was).

    ``resync``: the feed cannot tell (first read, or a reader that fell behind): read everything again, from
    *after* getting this cursor, so that nothing changed meanwhile is missed::

        >>> Changes(FeedCursor(0), resync=True).empty
        False
        >>> Changes(FeedCursor(7)).empty
        True
    """

    cursor: FeedCursor
    resync: bool = False
    jobs: frozenset[str] = frozenset()
    nodes: frozenset[str] = frozenset()
    policy: bool = False
    tokens: frozenset[str] = frozenset()
    users: frozenset[str] = frozenset()

    @property
    def empty(self) -> bool:
        return not (self.resync or self.jobs or self.nodes or self.policy or self.tokens or self.users)


@dataclass(frozen=True)
class NodeRecord:
    """A node as the records describe it now."""

    node: Node
    #: Up by the records' rule (an agent's node that missed its heartbeats is down; a cordoned node is not up).
    usable: bool
    #: Indexes of its devices reported unhealthy.
    unhealthy: frozenset[int] = frozenset()


@dataclass(frozen=True)
class JobRecord:
    """A submitted job as the records hold it."""

    id: str
    version: int
    state: JobState
    attempt: int
    spec: JobSpec
    tenant: str
    user: str
    queue: str
    submitted_at: float
    started_at: float | None = None
    placement: Placement | None = None
    last_checkpoint_at: float | None = None


@dataclass(frozen=True)
class FinishedRun:
    """A run that succeeded: what runtime estimates learn from after a restart."""

    spec: JobSpec
    model: str
    seconds: float


@dataclass(frozen=True)
class UsageStop:
    """A ledger stop entry, as fair-share history reads it back after a restart."""

    tenant: str
    user: str
    at: float
    seconds: float
    ncu_hours: float


@dataclass(frozen=True)
class StartedRun:
    """A start the store accepted: the job's new version, attempt and spec."""

    job_id: str
    version: int
    attempt: int
    spec: JobSpec


@dataclass
class StepOutcome:
    """What :meth:`ServiceStore.commit_step` stored."""

    started: list[StartedRun] = field(default_factory=list)
    #: Starts refused because the job moved meanwhile (cancelled through the API): give their devices back.
    lost_races: list[str] = field(default_factory=list)
    #: Preemption victims that were moved back to pending.
    preempted: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class LogChunkRow:
    """New output of one rank of one attempt, starting at byte ``offset`` of its log."""

    job_id: str
    attempt: int
    rank: int
    offset: int
    text: str


@dataclass(frozen=True)
class JobEnd:
    """How one job's run ended, for :meth:`ServiceStore.end`."""

    job_id: str
    state: JobState
    message: str
    exit_code: int | None
    ledger: tuple[LedgerEntry, ...] = ()


class ServiceStore(Protocol):
    """The records the scheduler service works on. Reads see committed state; each write is atomic."""

    # -- the lease
    def hold_lease(self, holder: str, now: float, lease_s: float, term: int | None) -> int | None:
        """Take or renew the leader lease for ``holder``; its term (bumped on a takeover), None if another holds
        it. ``term`` is the one this holder last held (None: it holds none)."""
        ...

    def release_lease(self, holder: str) -> None:
        """Give the lease up at a clean shutdown, so a standby takes over at once."""
        ...

    # -- reads
    def policy_after(self, version: int | None) -> tuple[int, object] | None:
        """The newest policy document and its version, if it is not ``version``."""
        ...

    def nodes(self, now: float, ids: Collection[str] | None = None) -> list[NodeRecord]:
        """Every node of the inventory (or those of ``ids`` that exist), with whether it is up now."""
        ...

    def changes(self, cursor: FeedCursor | None) -> Changes:
        """What changed since ``cursor`` (None: a first cursor, with ``resync``). Cheap when nothing did."""
        ...

    def lapsed_nodes(self, after: float, until: float) -> list[str]:
        """Nodes whose lease ran out in ``(after, until]`` (an agent that stopped heartbeating): no row changes
        when a lease lapses, so the change feed cannot tell."""
        ...

    def watch(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Call ``wake`` soon after the records change, from any process (a submission through any API process
        wakes the scheduler); returns the function that stops watching."""
        ...

    def holding_jobs(self) -> list[JobRecord]:
        """Jobs in a state that holds devices (starting, running, cancelling)."""
        ...

    def pending_versions(self) -> dict[str, int]:
        """Id → version of every pending job."""
        ...

    def jobs(self, ids: Sequence[str]) -> list[JobRecord]:
        """The records of these jobs (those that exist)."""
        ...

    def job_states(self, ids: Sequence[str]) -> dict[str, tuple[JobState, int]]:
        """State and version of these jobs (those that exist): what a cycle reads for the jobs the feed names."""
        ...

    def finished_runs(self, limit: int) -> list[FinishedRun]:
        """The newest ``limit`` successful runs, oldest first."""
        ...

    def usage_stops(self, since: float, limit: int) -> list[UsageStop]:
        """Ledger stop entries at or after ``since``, the newest ``limit``."""
        ...

    def stored_log_end(self, job_id: str, attempt: int, rank: int) -> int:
        """The byte offset up to which a rank's log is stored."""
        ...

    # -- writes
    def commit_step(
        self,
        fence: Fence,
        now: float,
        decisions: Sequence[Decision],
        versions: Mapping[str, int],
        reasons: Mapping[str, tuple[Reason, ...]],
    ) -> StepOutcome:
        """Store one core step at once: starts (conditional on the pending version they were decided on), preempted
        victims back to pending as a new attempt, each with its ledger entries and event; and the why-pending
        reasons of the jobs in ``reasons`` (advice, not state: they bump no version)."""
        ...

    def transition(self, fence: Fence, job_id: str, version: int, state: JobState, now: float, message: str) -> bool:
        """Move a job to ``state`` if it still has ``version`` (and record the event); False if it moved."""
        ...

    def transition_many(
        self, fence: Fence, moves: Sequence[tuple[str, int]], state: JobState, now: float, message: str
    ) -> set[str]:
        """:meth:`transition` for many ``(job, version)`` at once, in one write; the ids that moved."""
        ...

    def end(self, fence: Fence, now: float, ends: Sequence[JobEnd]) -> None:
        """These jobs' runs are over for good (succeeded, failed, cancelled), in one write (at center scale tens
        of jobs end every second, and one transaction each was most of a cycle)."""
        ...

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
        """A job that holds devices goes back to pending as a new attempt (retry, node lost, preempted)."""
        ...

    def write_ledger(self, entries: Sequence[LedgerEntry]) -> None:
        """Ledger entries of a run that ended without a job move (its job was moved on by the API)."""
        ...

    def append_logs(self, chunks: Sequence[LogChunkRow]) -> None:
        """Store new log output."""
        ...

    def set_estimated_starts(self, starts: Mapping[str, float | None]) -> None:
        """The forecast start of pending jobs (jobs no longer pending are left alone)."""
        ...
