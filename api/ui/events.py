"""Live updates: one server-sent-events stream per open page that says only *what changed*, never the data.

One :class:`Hub` per process polls cheap high-water marks once a second (the newest job event, ledger row, log
chunk and policy version, the newest update of an active job, and every few seconds the newest heartbeat and
device sample) and wakes the streams whose tenant was touched with named events — ``jobs``, ``usage``, ``logs``,
``queues``, ``nodes``. A page then re-fetches its panels through the same tenant scope as the API, so a stream
can never leak another tenant's data: the worst a wrong wake-up costs is one needless refresh.

The wire format (``text/event-stream``)::

    retry: 5000

    id: 7
    event: jobs
    data: jobs

A comment line every 15 s keeps proxies from closing an idle stream; the stream re-checks its session then and
ends (``event: session``) once the session was revoked or expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select

from api.deps import AppContext
from api.tables import DEVICES, JOB_EVENTS, JOB_LOGS, JOBS, LEDGER, NODES, POLICY_VERSIONS
from scheduler.spec import ACTIVE_STATES

log = logging.getLogger("zhisuan.ui")
EVENTS = ("jobs", "usage", "logs", "queues", "nodes")
KEEPALIVE_S = 15.0


@dataclass(eq=False)
class Subscriber:
    tenant: str | None  # None: every tenant (center admin)
    token_id: str
    queue: asyncio.Queue[str] = field(default_factory=asyncio.Queue)


@dataclass
class Marks:
    event_id: int = 0
    ledger_id: int = 0
    log_id: int = 0
    policy_id: int = 0
    updated_at: float = 0.0
    inventory: tuple[Any, ...] = ()


class TooManyStreams(Exception):
    pass


class Hub:
    """The per-process poller and its subscribers (created on the first stream, stopped with the last)."""

    def __init__(self, ctx: AppContext, interval_s: float = 1.0, nodes_every_s: float = 5.0) -> None:
        self.ctx = ctx
        self.interval_s = interval_s
        self.nodes_every_s = nodes_every_s
        self.subscribers: set[Subscriber] = set()
        self.marks: Marks | None = None
        self._task: asyncio.Task[None] | None = None
        self._nodes_at = 0.0
        self.polls = 0

    def subscribe(self, tenant: str | None, token_id: str, limit: int) -> Subscriber:
        if sum(1 for s in self.subscribers if s.token_id == token_id) >= limit:
            raise TooManyStreams(f"this session already has {limit} live pages open; close one")
        subscriber = Subscriber(tenant, token_id)
        self.subscribers.add(subscriber)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)

    async def _run(self) -> None:
        while self.subscribers:
            try:
                changes = await asyncio.to_thread(self.poll)
            except Exception as err:  # a database hiccup: the pages keep their polling fallback meanwhile
                log.debug("dashboard poll failed: %s", err)
                changes = []
            self.dispatch(changes)
            await asyncio.sleep(self.interval_s)
        self._task = None

    def dispatch(self, changes: list[tuple[str, str | None]]) -> None:
        for subscriber in list(self.subscribers):
            wanted = {
                name
                for name, tenant in changes
                if tenant is None or subscriber.tenant is None or subscriber.tenant == tenant
            }
            for name in sorted(wanted):
                subscriber.queue.put_nowait(name)

    def poll(self) -> list[tuple[str, str | None]]:
        """What changed since the last poll: ``(event, tenant or None for everyone)`` (blocking)."""
        self.polls += 1
        first = self.marks is None
        marks = self.marks or Marks()
        changes: list[tuple[str, str | None]] = []
        active = [s.value for s in ACTIVE_STATES]
        with self.ctx.engine.connect() as conn:
            if first:
                marks.event_id = int(conn.execute(select(func.coalesce(func.max(JOB_EVENTS.c.id), 0))).scalar_one())
                marks.ledger_id = int(conn.execute(select(func.coalesce(func.max(LEDGER.c.id), 0))).scalar_one())
                marks.log_id = int(conn.execute(select(func.coalesce(func.max(JOB_LOGS.c.id), 0))).scalar_one())
                marks.updated_at = time.time()
            else:
                for tenant, top in conn.execute(
                    select(JOBS.c.tenant, func.max(JOB_EVENTS.c.id))
                    .select_from(JOB_EVENTS.join(JOBS, JOBS.c.id == JOB_EVENTS.c.job_id))
                    .where(JOB_EVENTS.c.id > marks.event_id)
                    .group_by(JOBS.c.tenant)
                ):
                    changes.append(("jobs", tenant))
                    marks.event_id = max(marks.event_id, int(top))
                # Reasons and estimated starts change without an event.
                for tenant, top in conn.execute(
                    select(JOBS.c.tenant, func.max(JOBS.c.updated_at))
                    .where(JOBS.c.state.in_(active), JOBS.c.updated_at > marks.updated_at)
                    .group_by(JOBS.c.tenant)
                ):
                    changes.append(("jobs", tenant))
                    marks.updated_at = max(marks.updated_at, float(top))
                for tenant, top in conn.execute(
                    select(LEDGER.c.tenant, func.max(LEDGER.c.id))
                    .where(LEDGER.c.id > marks.ledger_id)
                    .group_by(LEDGER.c.tenant)
                ):
                    changes.append(("usage", tenant))
                    marks.ledger_id = max(marks.ledger_id, int(top))
                for tenant, top in conn.execute(
                    select(JOBS.c.tenant, func.max(JOB_LOGS.c.id))
                    .select_from(JOB_LOGS.join(JOBS, JOBS.c.id == JOB_LOGS.c.job_id))
                    .where(JOB_LOGS.c.id > marks.log_id)
                    .group_by(JOBS.c.tenant)
                ):
                    changes.append(("logs", tenant))
                    marks.log_id = max(marks.log_id, int(top))
            policy = int(conn.execute(select(func.coalesce(func.max(POLICY_VERSIONS.c.id), 0))).scalar_one())
            if policy != marks.policy_id:
                if not first:
                    changes.append(("queues", None))
                marks.policy_id = policy
            now = time.monotonic()
            if first or now - self._nodes_at >= self.nodes_every_s:
                self._nodes_at = now
                inventory = tuple(
                    conn.execute(
                        select(func.count(), func.max(NODES.c.last_heartbeat), func.max(NODES.c.registered_at))
                    ).one()
                ) + tuple(conn.execute(select(func.max(DEVICES.c.updated_at))).one())
                if inventory != marks.inventory:
                    if not first:
                        changes.append(("nodes", None))
                    marks.inventory = inventory
        self.marks = marks
        return changes


def hub_of(ctx: AppContext) -> Hub:
    hub: Hub | None = getattr(ctx, "_ui_hub", None)
    if hub is None:
        hub = Hub(ctx)
        ctx._ui_hub = hub  # type: ignore[attr-defined]
    return hub


async def stream(
    hub: Hub, subscriber: Subscriber, still_valid: Any, keepalive_s: float = KEEPALIVE_S
) -> AsyncIterator[bytes]:
    """The event stream of one page (``still_valid``: an async callable, False once the session is gone)."""
    counter = 0
    try:
        yield b"retry: 5000\n: connected\n\n"
        while True:
            try:
                name = await asyncio.wait_for(subscriber.queue.get(), keepalive_s)
            except TimeoutError:
                if not await still_valid():
                    yield b"event: session\ndata: expired\n\n"
                    return
                yield b": keepalive\n\n"
                continue
            names = {name}
            while not subscriber.queue.empty():
                names.add(subscriber.queue.get_nowait())
            out = []
            for item in sorted(names):
                counter += 1
                out.append(f"id: {counter}\nevent: {item}\ndata: {item}\n\n")
            yield "".join(out).encode()
    finally:
        with contextlib.suppress(Exception):
            hub.unsubscribe(subscriber)
