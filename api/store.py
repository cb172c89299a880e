"""What the submission hot path needs without touching the database, and the group-commit writer behind it.

* :class:`Snapshots` keeps the policy in force and the installed inventory in memory. A background task re-reads
  their version numbers every ``cache_refresh_s`` (one cheap query each) and reloads only when they moved; writes
  made through this process refresh at once. The inventory snapshot is an *empty* :class:`ClusterState` of every
  node, on which the placement engine answers "could this job ever run here?", cached per job shape.
* :class:`Submitter` is the group commit: request handlers (on the event loop) hand validated job rows to one
  writer thread, which takes everything queued, writes it in **one** transaction (idempotency-key lookups,
  per-tenant active-job caps, one multi-row INSERT for jobs and one for their events) and answers every waiting
  request. Under load, the requests that arrive while a batch commits form the next batch, so SQLite's single
  writer commits hundreds of jobs per transaction instead of one; at low load a batch is one job and waits for
  nothing (``linger_s`` can trade latency for bigger batches).

Caps on active jobs hold across processes: on SQLite the batch runs in ``BEGIN IMMEDIATE`` (one writer at a
time), on PostgreSQL it takes a transaction-scoped advisory lock per capped tenant before counting.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import queue
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from sqlalchemy import Connection, Engine, func, select, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from agents.protocol import DeviceWork
from api.db import is_sqlite, write_engine
from api.enums import NodeSource, NodeStatus
from api.tables import JOB_EVENTS, JOBS, NODES, POLICY_VERSIONS
from scheduler.catalog import Catalog
from scheduler.live.store import Changes, FeedCursor
from scheduler.model import MILLI, DomesticPreference, Job, Node, Reason
from scheduler.placement import PlacementEngine
from scheduler.spec import ACTIVE_STATES, HOLDING_STATES
from scheduler.state import ClusterState
from scheduler.tenancy import QueuePolicy, empty_policy, parse_policy
from scheduler.throughput import ThroughputMatrix

log = logging.getLogger("zhisuan.api")
_STRICTNESS = {DomesticPreference.ANY: 0, DomesticPreference.PREFERRED: 1, DomesticPreference.REQUIRED: 2}


# --------------------------------------------------------------------------------------------- snapshots


@dataclass(frozen=True)
class PolicySnapshot:
    version: int  # 0: no policy stored yet (empty policy)
    policy: QueuePolicy
    created_at: float | None = None


@dataclass
class InventorySnapshot:
    key: tuple[Any, ...]
    nodes: list[Node]
    state: ClusterState
    #: placement shape -> None (fits on an empty cluster) or the reasons it never can
    feasible: dict[tuple[object, ...], tuple[Reason, ...] | None] = field(default_factory=dict)


def node_of(row: Mapping[Any, Any]) -> Node:
    """The core's :class:`Node` for a ``nodes`` row."""
    get = row.get
    return Node(
        id=get("id"),
        model=get("model"),
        devices=get("devices"),
        cpu_milli=get("cpu_milli"),
        memory_mib=get("memory_mib"),
        site=get("site"),
        region=get("region"),
        tier=get("tier"),
        island=get("island"),
        switch=get("switch"),
        labels=dict(get("labels") or {}),
    )


#: Missed heartbeats after which an agent's node is shown down.
MISSED_HEARTBEATS = 3


def node_status(row: Mapping[Any, Any], now: float, interval_s: float) -> str:
    """A node's state as users and the scheduler see it: an agent's node whose lease ran out is ``down``.

    The lease is what the API granted with the node's last heartbeat (``lease_expires_at``, a few of the
    intervals it asked for, which grow with the fleet); a row written before leases existed falls back to
    ``MISSED_HEARTBEATS`` of ``interval_s`` after its last heartbeat.
    """
    if row["source"] == NodeSource.AGENT.value:
        lease = row.get("lease_expires_at")
        if lease is not None:
            if now > lease:
                return NodeStatus.DOWN.value
        else:
            last = row["last_heartbeat"] or row["registered_at"]
            if now - last > MISSED_HEARTBEATS * interval_s:
                return NodeStatus.DOWN.value
    return str(row["state"])


def device_work(conn: Connection | Session) -> dict[str, list[DeviceWork]]:
    """Per node, the device shares that jobs in a holding state (starting, running, cancelling) have."""
    work: dict[str, list[DeviceWork]] = {}
    statement = select(JOBS.c.id, JOBS.c.placement).where(JOBS.c.state.in_([s.value for s in HOLDING_STATES]))
    for job_id, placement in conn.execute(statement):
        for worker in (placement or {}).get("workers", ()):
            share = min(max(worker.get("milli", MILLI) / MILLI, 0.001), 1.0)
            items = work.setdefault(worker.get("node", ""), [])
            items.extend(DeviceWork(job_id=job_id, index=d, share=share) for d in worker.get("devices", ()))
    return work


def _works(job_id: str, placement: Mapping[str, Any] | None) -> list[tuple[str, DeviceWork]]:
    out: list[tuple[str, DeviceWork]] = []
    for worker in (placement or {}).get("workers", ()):
        share = min(max(worker.get("milli", MILLI) / MILLI, 0.001), 1.0)
        node = worker.get("node", "")
        out.extend((node, DeviceWork(job_id=job_id, index=d, share=share)) for d in worker.get("devices", ()))
    return out


def load_policy_version(conn: Connection, catalog: Catalog) -> PolicySnapshot:
    row = conn.execute(select(POLICY_VERSIONS).order_by(POLICY_VERSIONS.c.id.desc()).limit(1)).mappings().first()
    if row is None:
        return PolicySnapshot(0, empty_policy(catalog))
    policy = parse_policy(row["document"], f"policy version {row['id']}", catalog)
    return PolicySnapshot(int(row["id"]), policy, row["created_at"])


class Snapshots:
    """Policy and inventory as of the last refresh, and the "could it ever fit" check. Thread-safe."""

    def __init__(self, engine: Engine, catalog: Catalog, throughput: ThroughputMatrix) -> None:
        self.engine = engine
        self.catalog = catalog
        self.throughput = throughput
        self.placement = PlacementEngine(catalog=catalog, throughput=throughput)
        self._lock = threading.Lock()
        self.policy = PolicySnapshot(0, empty_policy(catalog))
        self.inventory = InventorySnapshot((0, None, 0), [], ClusterState())
        self._work: dict[str, list[DeviceWork]] = {}
        #: job id -> the (node, work) it holds: what a change of that job takes out of ``_work``.
        self._work_of: dict[str, list[tuple[str, DeviceWork]]] = {}
        self._work_at = -math.inf
        self._work_lock = threading.Lock()
        #: True while a :class:`Follower` keeps the work table and the inventory current from the change feed.
        self.following = False
        self._inventory_at = -math.inf

    def device_work(self, node_id: str, max_age_s: float = 1.0) -> list[DeviceWork]:
        """The device shares jobs hold on ``node_id``.

        With a :class:`Follower` the table is kept from the change feed (the jobs that moved are read again);
        without one, one query of the holding jobs serves every node for ``max_age_s``, and the lock makes the
        heartbeats that arrive meanwhile wait for that query instead of repeating it.
        """
        with self._work_lock:
            if (not self.following and time.monotonic() - self._work_at > max_age_s) or self._work_at == -math.inf:
                self._load_work()
            return self._work.get(node_id, [])

    def _load_work(self) -> None:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(JOBS.c.id, JOBS.c.placement).where(JOBS.c.state.in_([s.value for s in HOLDING_STATES]))
            ).all()
        self._work_of = {job_id: _works(job_id, placement) for job_id, placement in rows}
        self._work = {}
        for items in self._work_of.values():
            for node, work in items:
                self._work.setdefault(node, []).append(work)
        self._work_at = time.monotonic()

    def jobs_changed(self, ids: Iterable[str]) -> None:
        """Jobs the change feed says moved: read those again and update the work table (O(changes))."""
        ids = list(ids)
        if not ids or self._work_at == -math.inf:
            return
        holding: dict[str, Any] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(ids), 2000):
                chunk = ids[start : start + 2000]
                statement = select(JOBS.c.id, JOBS.c.placement).where(
                    JOBS.c.id.in_(chunk), JOBS.c.state.in_([s.value for s in HOLDING_STATES])
                )
                holding.update({job_id: placement for job_id, placement in conn.execute(statement)})
        changed = set(ids)
        with self._work_lock:
            touched: set[str] = set()
            for job_id in changed:
                old = self._work_of.pop(job_id, None)
                if old:
                    touched.update(node for node, _ in old)
                new = _works(job_id, holding[job_id]) if job_id in holding else []
                if new:
                    self._work_of[job_id] = new
                    touched.update(node for node, _ in new)
            for node in touched:
                items = [w for w in self._work.get(node, []) if w.job_id not in changed]
                items.extend(w for job_id in changed for n, w in self._work_of.get(job_id, ()) if n == node)
                if items:
                    self._work[node] = items
                else:
                    self._work.pop(node, None)

    def fleet_size(self) -> int:
        """Nodes of the installed inventory (what the heartbeat interval is sized for)."""
        return len(self.inventory.nodes)

    def node_registered(self, node: Node) -> None:
        """A node registered through this process: a new one joins the snapshot at once (a herd of thousands
        costs one insertion each); one described anew makes the whole inventory be read again."""
        with self._lock:
            inventory = self.inventory
            if node.id not in inventory.state.nodes:
                inventory.state.add_node(node)
                inventory.nodes.append(node)
                inventory.feasible.clear()  # more capacity: "never fits" answers may change
                return
        self.refresh_inventory()

    def refresh_inventory(self) -> None:
        """Reload every node (blocking)."""
        self._inventory_at = time.monotonic()
        with self.engine.connect() as conn:
            self._load_inventory(conn, self.inventory.key)

    def nodes_changed(self, ids: Iterable[str]) -> None:
        """Nodes the change feed names: a new one joins the snapshot, one described anew makes the whole inventory
        be read again; a health flip or a lease that came back changes nothing here (O(changes), not O(nodes))."""
        wanted = sorted(set(ids))
        rows: list[Any] = []
        with self.engine.connect() as conn:
            for start in range(0, len(wanted), 2000):
                chunk = wanted[start : start + 2000]
                rows.extend(conn.execute(select(NODES).where(NODES.c.id.in_(chunk))).mappings())
        known = {n.id: n for n in self.inventory.nodes}
        fresh: list[Node] = []
        for row in rows:
            try:
                node = node_of(row)
            except ValueError:
                continue
            old = known.get(node.id)
            if old is None:
                fresh.append(node)
            elif old != node:
                self.refresh_inventory()
                return
        if len(rows) < len(wanted) and any(i in known for i in set(wanted) - {r["id"] for r in rows}):
            self.refresh_inventory()  # a node was deleted
            return
        if fresh:
            with self._lock:
                inventory = self.inventory
                for node in fresh:
                    if node.id not in inventory.state.nodes:
                        inventory.state.add_node(node)
                        inventory.nodes.append(node)
                inventory.feasible.clear()

    def refresh_policy(self) -> None:
        with self.engine.connect() as conn:
            self.set_policy(load_policy_version(conn, self.catalog))

    # ------------------------------------------------------------------------------------------ refresh

    def refresh(self, force: bool = False) -> None:
        """Reload what changed (blocking; call from a thread)."""
        with self.engine.connect() as conn:
            latest = conn.execute(select(func.max(POLICY_VERSIONS.c.id))).scalar()
            if force or int(latest or 0) != self.policy.version:
                self.policy = load_policy_version(conn, self.catalog)
            key = tuple(
                conn.execute(
                    select(func.count(), func.max(NODES.c.registered_at), func.coalesce(func.sum(NODES.c.devices), 0))
                ).one()
            )
            if force or key != self.inventory.key:
                self._inventory_at = time.monotonic()
                self._load_inventory(conn, key)

    def _load_inventory(self, conn: Connection, key: tuple[Any, ...]) -> None:
        rows = conn.execute(select(NODES).order_by(NODES.c.id)).mappings().all()
        nodes = []
        for row in rows:
            try:
                nodes.append(node_of(row))
            except ValueError:
                log.warning("node %s has an invalid description; left out of the inventory", row["id"])
        with self._lock:
            self.inventory = InventorySnapshot(key, nodes, ClusterState(nodes))

    def set_policy(self, snapshot: PolicySnapshot) -> None:
        if snapshot.version >= self.policy.version:
            self.policy = snapshot

    # ------------------------------------------------------------------------------------------ checks

    def effective(self, job: Job) -> Job:
        """The job with its tenant's and queue's domestic policy applied (the stricter wins), as the core does."""
        wanted = self.domestic(job.domestic, job.queue, job.tenant)
        return job if wanted is job.domestic else job.model_copy(update={"domestic": wanted})

    def domestic(self, asked: DomesticPreference, queue: str, tenant: str) -> DomesticPreference:
        policy = self.policy.policy
        wanted = policy.domestic(policy.resolve(queue, tenant), tenant)
        return wanted if _STRICTNESS[wanted] > _STRICTNESS[asked] else asked

    def never_fits(
        self, job: Job | Callable[[], Job], shape: tuple[object, ...] | None = None
    ) -> tuple[Reason, ...] | None:
        """Reasons a job could never start on the installed inventory even if it were empty; None if it could.

        ``job`` may be a factory, called only when ``shape`` (the job's placement shape, with the domestic
        policy of its queue applied) is not cached yet. An empty inventory accepts everything (nodes may join).
        """
        inventory = self.inventory
        if not inventory.nodes:
            return None
        if shape is not None and shape in inventory.feasible:
            return inventory.feasible[shape]
        job = self.effective(job if isinstance(job, Job) else job())
        shape = shape if shape is not None else job.placement_shape
        if shape in inventory.feasible:
            return inventory.feasible[shape]
        with self._lock:
            result = self.placement.place(inventory.state, job)
        answer = None if result.placement is not None else tuple(result.reasons)
        if len(inventory.feasible) > 50_000:
            inventory.feasible.clear()
        inventory.feasible[shape] = answer
        return answer


# ------------------------------------------------------------------------------------------ following


class Follower:
    """Keeps one API process's caches right from the change feed, whatever process wrote: a revoked token or a
    disabled user empties the token cache (``on_tokens``), a policy version reloads the policy snapshot, the
    nodes that changed are read and patched into the inventory snapshot, a job that moved updates the table of
    device work that heartbeats answer. ``read`` is :meth:`api.service_store.ChangeFeed.read`; ``watch``
    (PostgreSQL's LISTEN) wakes it early, else it polls every ``poll_s``. One daemon thread::

        follower = Follower(feed.read, feed.watch, ctx.auth.invalidate, ctx.snapshots)   # doctest: +SKIP
        follower.start()                                                                 # doctest: +SKIP
    """

    def __init__(
        self,
        read: Callable[[FeedCursor | None], Changes],
        watch: Callable[[Callable[[str], None]], Callable[[], None]] | None,
        on_tokens: Callable[[], None],
        snapshots: Snapshots,
        poll_s: float = 0.1,
    ) -> None:
        self.read, self.watch, self.on_tokens, self.snapshots = read, watch, on_tokens, snapshots
        self.poll_s = poll_s if watch is None else max(poll_s, 0.5)
        self.cursor: FeedCursor | None = None
        self.reads = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self.snapshots.following = True
            self._thread = threading.Thread(target=self._run, name="zhisuan-follower", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self.snapshots.following = False

    def _run(self) -> None:
        unwatch = self.watch(lambda _entity: self._wake.set()) if self.watch is not None else None
        try:
            while not self._stop.is_set():
                self._wake.wait(self.poll_s)
                self._wake.clear()
                try:
                    self.step()
                except Exception as err:  # the database is down: keep the caches, try again
                    log.debug("change feed unavailable: %s", err)
                    self._stop.wait(1.0)
                self._stop.wait(0.02)  # a burst of notifications is one read
        finally:
            if unwatch is not None:
                unwatch()

    def step(self) -> Changes:
        """Read the feed once and apply it (the thread's body; tests call it directly)."""
        changes = self.read(self.cursor)
        self.cursor = changes.cursor
        self.reads += 1
        snapshots = self.snapshots
        if changes.resync:
            self.on_tokens()
            snapshots.refresh(force=True)
            with snapshots._work_lock:
                snapshots._load_work()
            return changes
        if changes.tokens or changes.users:
            self.on_tokens()
        if changes.policy:
            snapshots.refresh_policy()
        if changes.nodes:
            snapshots.nodes_changed(changes.nodes)
        if changes.jobs:
            snapshots.jobs_changed(changes.jobs)
        return changes


# ------------------------------------------------------------------------------------------ lease renewals


class LeaseWriter:
    """Group commit of node lease renewals: heartbeats that carry nothing but the renewal (nearly all of them, at
    scale) are written by one thread, a batch per transaction, in one ``UPDATE ... FROM (VALUES ...)``, instead
    of a request-handler thread and a transaction each. ``renew`` is awaited on the event loop; it answers the
    node's ``last_seq``, or None when no agent's node has that id (the agent must register again)."""

    def __init__(self, engine: Engine, max_batch: int = 1000) -> None:
        self.engine = write_engine(engine)
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[tuple[str, float, float, asyncio.Future[int | None], Any] | None] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        mark = "?" if engine.dialect.paramstyle == "qmark" else "%s"
        self._row = f"({mark}, {mark}, {mark})"
        self.batches = 0
        self.renewals = 0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="zhisuan-lease-writer", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=10)
            self._thread = None

    async def renew(self, node_id: str, now: float, expires_at: float) -> int | None:
        if self._thread is None:
            raise RuntimeError("the lease writer is not running")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int | None] = loop.create_future()
        self._queue.put((node_id, now, expires_at, future, loop))
        return await future

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._write(batch)
                    return
                batch.append(item)
            self._write(batch)

    def _write(self, batch: list[tuple[str, float, float, asyncio.Future[int | None], Any]]) -> None:
        latest = {node_id: (node_id, now, expires) for node_id, now, expires, _, _ in batch}
        rows = list(latest.values())
        statement = (
            f"WITH v(id, t, e) AS (VALUES {', '.join([self._row] * len(rows))}) "
            "UPDATE nodes SET last_heartbeat = v.t, lease_expires_at = v.e, "
            f"state = CASE WHEN nodes.state = '{NodeStatus.DOWN.value}' THEN '{NodeStatus.READY.value}' "
            "ELSE nodes.state END "
            f"FROM v WHERE nodes.id = v.id AND nodes.source = '{NodeSource.AGENT.value}' "
            "RETURNING nodes.id, nodes.last_seq"
        )
        answers: dict[str, int | None] = {}
        error: BaseException | None = None
        try:
            with self.engine.begin() as conn:
                params = tuple(value for row in rows for value in row)
                for node_id, last_seq in conn.exec_driver_sql(statement, params):
                    answers[node_id] = -1 if last_seq is None else int(last_seq)
        except Exception as err:
            error = err
        self.batches += 1
        self.renewals += len(batch)
        for node_id, _, _, future, loop in batch:
            with contextlib.suppress(RuntimeError):  # the loop closed (server shutting down)
                loop.call_soon_threadsafe(_settle, future, answers.get(node_id), error)


def _settle(future: asyncio.Future[int | None], answer: int | None, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(answer)


# ------------------------------------------------------------------------------------------ group commit


Outcome = Literal["created", "replayed", "key-reused", "quota-exceeded"]


@dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    row: Mapping[Any, Any]
    detail: str = ""


@dataclass(slots=True)
class _Item:
    row: dict[str, Any]
    event: dict[str, Any]
    limit: int | None
    future: asyncio.Future[Result]
    loop: asyncio.AbstractEventLoop

    @property
    def key(self) -> tuple[str, str] | None:
        key = self.row.get("idempotency_key")
        return (self.row["tenant"], key) if key is not None else None


def request_hash(canonical: bytes) -> str:
    return hashlib.sha256(canonical).hexdigest()


def _tenant_lock(tenant: str) -> int:
    # A 63-bit advisory lock key per tenant (crc32 of a namespaced name; collisions only serialise more).
    return 0x5A5300000000 | zlib.crc32(f"zhisuan/tenant/{tenant}".encode())


class Submitter:
    """See the module docstring. ``submit`` is called on the event loop; the writer runs in its own thread."""

    def __init__(self, engine: Engine, linger_s: float = 0.0, max_batch: int = 512) -> None:
        self.engine = write_engine(engine)
        self.postgres = not is_sqlite(engine)
        self.linger_s = linger_s
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        # Plain DB-API executemany of pre-serialised rows: SQLAlchemy's per-row bind processing costs more than
        # the insert itself at thousands of rows a second.
        dialect = engine.dialect
        quote = dialect.identifier_preparer.quote
        mark = "?" if dialect.paramstyle == "qmark" else "%s"
        self._job_columns = [c.name for c in JOBS.columns]
        self._event_columns = [c.name for c in JOB_EVENTS.columns if c.name != "id"]
        self._insert_jobs = (
            f"INSERT INTO {quote(JOBS.name)} ({', '.join(quote(c) for c in self._job_columns)}) "
            f"VALUES ({', '.join([mark] * len(self._job_columns))})"
        )
        self._insert_events = (
            f"INSERT INTO {quote(JOB_EVENTS.name)} ({', '.join(quote(c) for c in self._event_columns)}) "
            f"VALUES ({', '.join([mark] * len(self._event_columns))})"
        )
        self.batches = 0
        self.written = 0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="zhisuan-job-writer", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=10)
            self._thread = None

    async def submit(self, row: dict[str, Any], event: dict[str, Any], limit: int | None) -> Result:
        """Queue one job row (and its first event) and wait until it is committed, replayed or refused."""
        if self._thread is None:
            raise RuntimeError("the job writer is not running")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self._queue.put(_Item(row, event, limit, future, loop))
        return await future

    # ------------------------------------------------------------------------------------------ thread

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            deadline = time.monotonic() + self.linger_s
            while len(batch) < self.max_batch:
                try:
                    wait = deadline - time.monotonic()
                    item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            self._process(batch)

    def _process(self, batch: list[_Item]) -> None:
        answers: list[Result | BaseException]
        try:
            answers = list(self._write(batch))
        except Exception as err:
            # Another process inserted one of these idempotency keys between our lookup and our insert (or a
            # deadlock chose this batch): redo it one job per transaction so only the colliding job is affected
            # (it will replay).
            answers = [self._write_alone(item) for item in batch] if _collided(err) else [err] * len(batch)
        self.batches += 1
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Result], Result | BaseException]]] = {}
        for item, answer in zip(batch, answers, strict=True):
            by_loop.setdefault(item.loop, []).append((item.future, answer))
        for loop, pairs in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop closed (server shutting down)
                loop.call_soon_threadsafe(_resolve, pairs)

    def _write_alone(self, item: _Item) -> Result | BaseException:
        for _ in range(3):
            try:
                return self._write([item])[0]
            except Exception as err:
                if not _collided(err):
                    return err
        return RuntimeError("idempotency key kept colliding; retry")

    def _write(self, batch: Sequence[_Item]) -> list[Result]:
        with self.engine.begin() as conn:
            keyed = {item.key for item in batch if item.key is not None}
            known: dict[tuple[str, str], Mapping[Any, Any]] = {}
            if keyed:
                rows = conn.execute(
                    select(JOBS).where(
                        JOBS.c.tenant.in_({t for t, _ in keyed}), JOBS.c.idempotency_key.in_({k for _, k in keyed})
                    )
                ).mappings()
                for found in rows:
                    pair = (found["tenant"], found["idempotency_key"])
                    if pair in keyed:
                        known[pair] = dict(found)
            active = self._active_counts(conn, {item.row["tenant"] for item in batch if item.limit is not None})
            results: list[Result] = []
            jobs: list[dict[str, Any]] = []
            events: list[dict[str, Any]] = []
            for item in batch:
                key = item.key
                prior = known.get(key) if key is not None else None
                if prior is not None:
                    if prior["request_hash"] == item.row["request_hash"]:
                        results.append(Result("replayed", prior))
                    else:
                        results.append(Result("key-reused", prior))
                    continue
                tenant = item.row["tenant"]
                if item.limit is not None:
                    count = active.get(tenant, 0)
                    if count >= item.limit:
                        results.append(
                            Result(
                                "quota-exceeded",
                                item.row,
                                f"tenant {tenant!r} has {count} active jobs, its limit is {item.limit}",
                            )
                        )
                        continue
                    active[tenant] = count + 1
                if key is not None:
                    known[key] = item.row
                jobs.append(item.row)
                events.append(item.event)
                results.append(Result("created", item.row))
            if jobs:
                # Keys in one order in every writer: two API processes inserting the same keys concurrently then
                # wait on each other in one direction (the later one gets a unique violation and replays) instead
                # of deadlocking, which PostgreSQL would break by failing a whole batch.
                jobs.sort(key=_key_order)
                conn.exec_driver_sql(self._insert_jobs, [_values(row, self._job_columns) for row in jobs])
                conn.exec_driver_sql(self._insert_events, [_values(e, self._event_columns) for e in events])
        self.written += len(jobs)
        return results

    def _active_counts(self, conn: Connection, tenants: Iterable[str]) -> dict[str, int]:
        capped = sorted(set(tenants))
        if not capped:
            return {}
        if self.postgres:
            for tenant in capped:  # sorted: two writers never wait on each other in opposite orders
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _tenant_lock(tenant)})
        rows = conn.execute(
            select(JOBS.c.tenant, func.count())
            .where(JOBS.c.tenant.in_(capped), JOBS.c.state.in_([s.value for s in ACTIVE_STATES]))
            .group_by(JOBS.c.tenant)
        ).all()
        return {tenant: int(count) for tenant, count in rows}


def _key_order(row: Mapping[str, Any]) -> tuple[str, str]:
    return row["tenant"], row["idempotency_key"] or ""


#: PostgreSQL SQLSTATEs of a transaction that lost a race and may simply be redone: deadlock, serialization.
_RETRY_SQLSTATES = frozenset({"40P01", "40001"})


def _collided(err: BaseException) -> bool:
    """A concurrent writer got in the way (a duplicate idempotency key, a deadlock): redo, one job at a time."""
    if isinstance(err, sa_exc.IntegrityError):
        return True
    return isinstance(err, sa_exc.DBAPIError) and getattr(err.orig, "sqlstate", None) in _RETRY_SQLSTATES


_JSON_COLUMNS = frozenset({"spec", "placement", "reasons", "data"})


def _values(row: Mapping[str, Any], columns: Sequence[str]) -> tuple[Any, ...]:
    return tuple(
        orjson.dumps(row[c]).decode() if c in _JSON_COLUMNS and row[c] is not None else row[c] for c in columns
    )


def _resolve(pairs: list[tuple[asyncio.Future[Result], Result | BaseException]]) -> None:
    for future, answer in pairs:
        if future.done():
            continue
        if isinstance(answer, BaseException):
            future.set_exception(answer)
        else:
            future.set_result(answer)


__all__ = [
    "MISSED_HEARTBEATS",
    "Follower",
    "LeaseWriter",
    "PolicySnapshot",
    "Result",
    "Snapshots",
    "Submitter",
    "device_work",
    "node_of",
    "node_status",
    "request_hash",
]
