"""``/v1/agent/register`` and ``/v1/agent/heartbeat``: the server side of :mod:`agents.protocol`.

Node-agent tokens only (and a token issued for one node id speaks only for that node). Registration upserts the
node and its devices. A heartbeat is a **lease renewal** first — one ``UPDATE`` of the node's row, which the
change feed does not see unless the lease had lapsed — and, only when the agent sends them, health changes (kept
in ``devices`` with a row of ``device_health_events`` each) and the newest telemetry sample (``devices.telemetry``;
the time series are Prometheus's, scraped from the agents). A node whose lease ran out is down, with nothing to
write: ``nodes.lease_expires_at`` says it (:func:`api.store.node_status`).

The heartbeat interval grows with the fleet (:meth:`api.settings.Settings.heartbeat_interval`), so the API sees
a bounded number of heartbeats per second however many nodes there are; the lease is
:data:`~api.store.MISSED_HEARTBEATS` intervals. :class:`AgentAdmission` answers agents 429 with a jittered
``Retry-After`` when an API process already serves ``ZHISUAN_AGENT_IN_FLIGHT`` of their requests (a herd of
agents re-registering after a restart is admitted at the rate the database takes, instead of timing out).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import Connection, bindparam, case, delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from starlette.types import ASGIApp, Receive, Scope, Send

from agents.protocol import (
    PROTOCOL_2_FIELDS,
    REGISTER_PATH,
    SUPPORTED_PROTOCOLS,
    DeviceInfo,
    DeviceSample,
    Health,
    HeartbeatRequest,
    HeartbeatResponse,
    RegisterRequest,
    RegisterResponse,
    schedulable_devices,
)
from api.auth import Principal
from api.db import write_engine
from api.deps import AGENT_PREFIX, AppContext, CurrentPrincipal, context, require, respond
from api.enums import NodeSource, NodeStatus, Role
from api.models import V1_PROBLEMS
from api.problems import Problem
from api.store import MISSED_HEARTBEATS, node_of
from api.tables import DEVICE_HEALTH_EVENTS, DEVICES, NODES
from scheduler.catalog import Tier
from scheduler.model import pool_id

log = logging.getLogger("zhisuan.api")
router = APIRouter(prefix="/v1/agent", tags=["node agent"], responses=V1_PROBLEMS)

#: Batch sequence numbers are stored in a 32-bit column (68 years of ticks at 1 Hz).
MAX_SEQ = 2**31 - 1
#: The columns of a node row that describe it (a registration that changes none of them changes nothing).
_DESCRIPTION = (
    "hostname",
    "model",
    "vendor",
    "pool",
    "site",
    "region",
    "tier",
    "island",
    "switch",
    "devices",
    "cpu_milli",
    "memory_mib",
    "labels",
)


def _invalid(loc: list[str | int], message: str) -> Problem:
    return Problem(
        "validation-error",
        f"{'.'.join(map(str, loc))}: {message}",
        errors=[{"loc": ["body", *loc], "msg": message, "type": "value_error"}],
    )


def _check_node(principal: Principal, node_id: str) -> None:
    require(principal, Role.NODE_AGENT)
    if principal.node_id is not None and principal.node_id != node_id:
        raise Problem("forbidden", f"this node token is for node {principal.node_id!r}, not {node_id!r}")


def _insert(conn: Connection) -> Any:
    return postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert


def _lease(ctx: AppContext) -> tuple[float, float, float]:
    """(heartbeat interval, lease, telemetry interval) for the fleet as this process last saw it."""
    interval = ctx.settings.heartbeat_interval(ctx.snapshots.fleet_size())
    return interval, MISSED_HEARTBEATS * interval, ctx.settings.telemetry_interval(interval)


def _reply(model: RegisterResponse | HeartbeatResponse, protocol: int) -> Response:
    # A protocol-1 agent's models forbid unknown fields: answer it in its own words.
    exclude = set(PROTOCOL_2_FIELDS) if protocol < 2 else set()
    return respond(model.model_dump(mode="json", exclude=exclude))


@router.post("/register", response_model=RegisterResponse, summary="A node agent registers its node")
def register(body: RegisterRequest, request: Request, principal: CurrentPrincipal) -> Response:
    node = body.node
    _check_node(principal, node.node_id)
    ctx = context(request)
    if body.protocol_version not in SUPPORTED_PROTOCOLS:
        speaks = ", ".join(map(str, SUPPORTED_PROTOCOLS))
        raise _invalid(["protocol_version"], f"this API speaks protocols {speaks}; upgrade the agent or the API")
    if node.model is None:
        names = sorted({d.name for d in body.devices}) or ["none found"]
        raise _invalid(
            ["node", "model"],
            f"the agent mapped no catalog model for this node's devices ({', '.join(names)}); "
            "add the model (or an alias) to the catalog, or fix the node",
        )
    entry = ctx.catalog.lookup(node.model)
    if entry is None:
        raise _invalid(
            ["node", "model"],
            f"unknown accelerator model {node.model!r} (known: {', '.join(ctx.catalog.names)})",
        )
    if node.tier not in {t.value for t in Tier}:
        raise _invalid(["node", "tier"], f"unknown tier {node.tier!r} (allowed: {', '.join(t.value for t in Tier)})")
    now = time.time()
    interval, lease, telemetry = _lease(ctx)
    values: dict[str, Any] = {
        "id": node.node_id,
        "hostname": node.hostname,
        "model": entry.model,
        "vendor": node.vendor or entry.vendor,
        "pool": pool_id(node.site, entry.model),
        "site": node.site,
        "region": node.region,
        "tier": node.tier,
        "island": node.island or node.node_id,
        "switch": node.switch or node.node_id,
        "devices": node.devices,
        "cpu_milli": node.cpu_milli,
        "memory_mib": node.memory_mib,
        "labels": node.labels,
        "source": NodeSource.AGENT.value,
        "registered_at": now,
        "last_heartbeat": now,
        "lease_expires_at": now + lease,
        "agent_version": body.agent_version,
        "last_seq": None,
        "shims": [shim.model_dump(mode="json") for shim in body.shims],
    }
    with write_engine(ctx.engine).begin() as conn:
        existing = conn.execute(select(NODES).where(NODES.c.id == node.node_id)).mappings().first()
        cordoned = existing is not None and existing["state"] == NodeStatus.CORDONED.value
        values["state"] = NodeStatus.CORDONED.value if cordoned else NodeStatus.READY.value
        described = existing is not None and all(existing[c] == values[c] for c in _DESCRIPTION)
        insert_ = _insert(conn)
        statement = insert_(NODES).values(values)
        conn.execute(
            statement.on_conflict_do_update(index_elements=["id"], set_={k: v for k, v in values.items() if k != "id"})
        )
        rows = device_rows(node.node_id, entry.model, body.devices, now)
        indexes = [r["index"] for r in rows]
        conn.execute(delete(DEVICES).where(DEVICES.c.node_id == node.node_id, DEVICES.c.index.not_in(indexes)))
        if rows:
            upsert = insert_(DEVICES).values(rows)
            # A device already known keeps its health and latest sample: its agent reports them next heartbeat.
            keep = {"node_id", "index", "healthy", "health_reason", "health", "telemetry"}
            conn.execute(
                upsert.on_conflict_do_update(
                    index_elements=["node_id", "index"],
                    set_={c: upsert.excluded[c] for c in rows[0] if c not in keep},
                )
            )
    if not described:
        try:
            ctx.snapshots.node_registered(node_of(values))
        except ValueError:
            log.warning("node %s has an invalid description; left out of the inventory", node.node_id)
    reply = RegisterResponse(
        node_id=node.node_id,
        heartbeat_interval_s=interval,
        message=f"registered {node.devices} {entry.model} devices in pool {pool_id(node.site, entry.model)}",
        telemetry_interval_s=telemetry,
        lease_s=lease,
    )
    return _reply(reply, body.protocol_version)


def device_rows(node_id: str, model: str, devices: Sequence[DeviceInfo], now: float) -> list[dict[str, Any]]:
    """The ``devices`` rows of a registration: one per device work could be placed on (a GPU in MIG mode is not
    one, its MIG devices are: :func:`~agents.protocol.schedulable_devices`), numbered as the scheduler numbers the
    node's ``model`` devices. That is the agent's index unless indexes repeat — MIG devices carry their GPU's, two
    vendors both count from 0 — and then the rank: first the devices of ``model`` (0 .. devices - 1), then the
    others (a part the catalog does not know is kept, to be seen, and never counted as the node's).

    >>> from agents.protocol import DeviceInfo
    >>> gpu = DeviceInfo(vendor="nvidia", index=0, uuid="GPU-0", name="A100", model="A100", mig_enabled=True)
    >>> migs = [DeviceInfo(vendor="nvidia", index=0, uuid=f"MIG-{i}", name="A100 MIG 3g.40gb", model="A100",
    ...                    parent_uuid="GPU-0", profile="3g.40gb", fraction=3 / 7) for i in range(2)]
    >>> mlu = DeviceInfo(vendor="cambricon", index=0, uuid="MLU-0", name="MLU370-X4")
    >>> [(r["index"], r["uuid"], r["parent_uuid"]) for r in device_rows("n", "A100", [gpu, mlu, *migs], 0.0)]
    [(0, 'MIG-0', 'GPU-0'), (1, 'MIG-1', 'GPU-0'), (2, 'MLU-0', None)]
    """
    offered = schedulable_devices(devices)
    offered = [d for d in offered if d.model == model] + [d for d in offered if d.model != model]
    repeated = len({d.index for d in offered}) < len(offered)
    return [
        {
            "node_id": node_id,
            "index": rank if repeated else d.index,
            "uuid": d.uuid,
            "model": d.model,
            "memory_mib": d.memory_total_mib,
            "healthy": True,
            "health_reason": "",
            "health": Health.UNKNOWN.value,  # until its first report
            "telemetry": {},
            "updated_at": now,
            "vendor": d.vendor,
            "name": d.name,
            "other_names": list(d.other_names),
            "model_known": d.model_known,
            "notes": list(d.notes),
            "parent_uuid": d.parent_uuid,
            "fraction": d.fraction,
            "profile": d.profile,
        }
        for rank, d in enumerate(offered)
    ]


@router.post("/heartbeat", response_model=HeartbeatResponse, summary="Telemetry and health from a node agent")
async def heartbeat(body: HeartbeatRequest, request: Request, principal: CurrentPrincipal) -> Response:
    _check_node(principal, body.node_id)
    ctx = context(request)
    sent = max((b.seq for b in body.batches), default=None)
    if sent is not None and sent > MAX_SEQ:
        raise _invalid(["batches", "seq"], f"{sent} is beyond the largest sequence number the API keeps ({MAX_SEQ})")
    now = time.time()
    interval, lease, telemetry = _lease(ctx)
    if body.batches or body.device_health or ctx.leases is None:
        last_seq = await run_in_threadpool(_renew_and_store, ctx, body, now, lease, sent)
    else:  # a renewal and nothing else: batched with the others arriving meanwhile
        last_seq = await ctx.leases.renew(body.node_id, now, now + lease)
    if last_seq is None:  # unknown here (or not an agent's node): the agent registers again; nothing changed
        return _reply(HeartbeatResponse(acked_seq=-1, reregister=True), body.protocol_version)
    reply = HeartbeatResponse(
        acked_seq=last_seq,
        interval_s=interval,
        work=ctx.snapshots.device_work(body.node_id),
        telemetry_interval_s=telemetry,
        lease_s=lease,
    )
    return _reply(reply, body.protocol_version)


def _renew_and_store(ctx: AppContext, body: HeartbeatRequest, now: float, lease: float, sent: int | None) -> int | None:
    """Renew the lease and store what the heartbeat carries, in one transaction; the node's ``last_seq`` (-1:
    none yet), None if no agent's node has this id."""
    renewal = (
        update(NODES)
        .where(NODES.c.id == body.node_id, NODES.c.source == NodeSource.AGENT.value)
        .values(
            last_heartbeat=now,
            lease_expires_at=now + lease,
            last_seq=NODES.c.last_seq if sent is None else sent,
            state=case((NODES.c.state == NodeStatus.DOWN.value, NodeStatus.READY.value), else_=NODES.c.state),
        )
        .returning(NODES.c.last_seq)
    )
    with write_engine(ctx.engine).begin() as conn:
        renewed = conn.execute(renewal).first()
        if renewed is None:
            return None
        if body.batches or body.device_health:
            _store_devices(conn, body, now)
    return -1 if renewed.last_seq is None else int(renewed.last_seq)


def _store_devices(conn: Connection, body: HeartbeatRequest, now: float) -> None:
    """Health that changed (with its history) and the newest sample of each device the heartbeat carries."""
    latest: dict[str, tuple[DeviceSample, float]] = {}
    for batch in body.batches:  # oldest first: later samples win
        for sample in batch.samples:
            latest[sample.uuid] = (sample, now - batch.age_s)
    rows = conn.execute(
        select(DEVICES.c.index, DEVICES.c.uuid, DEVICES.c.healthy, DEVICES.c.health_reason, DEVICES.c.health).where(
            DEVICES.c.node_id == body.node_id
        )
    ).all()
    with_sample: list[dict[str, Any]] = []
    health_only: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    for index, uuid, was_healthy, was_reason, was_health in rows:
        found = latest.get(uuid)
        health = body.device_health.get(uuid, found[0].health if found is not None else None)
        if found is None and health is None:
            continue
        healthy, reason, state = was_healthy, was_reason, was_health
        if health is not None:
            healthy, state = health is not Health.UNHEALTHY, health.value
            reason = _health_reason(
                health, found[0].health_reasons if found is not None else None, was_health, was_reason
            )
        if healthy != was_healthy:
            events.append(
                {"node_id": body.node_id, "index": index, "uuid": uuid, "at": now, "healthy": healthy, "reason": reason}
            )
        values = {"n": body.node_id, "i": index, "healthy": healthy, "reason": reason, "health": state, "at": now}
        if found is not None:
            sample, sampled_at = found
            telemetry = {**sample.model_dump(mode="json"), "received_at": now, "sampled_at": sampled_at}
            with_sample.append({**values, "telemetry": telemetry})
        elif healthy != was_healthy or reason != was_reason or state != was_health:
            health_only.append(values)
    where = (DEVICES.c.node_id == bindparam("n")) & (DEVICES.c.index == bindparam("i"))
    columns: dict[str, Any] = {
        "healthy": bindparam("healthy"),
        "health_reason": bindparam("reason"),
        "health": bindparam("health"),
        "updated_at": bindparam("at"),
    }
    if with_sample:
        conn.execute(update(DEVICES).where(where).values(**columns, telemetry=bindparam("telemetry")), with_sample)
    if health_only:
        conn.execute(update(DEVICES).where(where).values(**columns), health_only)
    if events:
        conn.execute(insert(DEVICE_HEALTH_EVENTS), events)


def _health_reason(health: Health, reasons: Sequence[str] | None, was_health: str, was_reason: str) -> str:
    """Why a device is ``unhealthy`` or ``unknown`` (empty when healthy): the sample's reasons; without a sample
    (a heartbeat of health changes only) the reason already stored for the same health, else a stand-in.

    >>> _health_reason(Health.UNKNOWN, ["npu-smi info timed out after 5.0 s"], "healthy", "")
    'npu-smi info timed out after 5.0 s'
    >>> _health_reason(Health.UNKNOWN, None, "unknown", "npu-smi info timed out after 5.0 s")
    'npu-smi info timed out after 5.0 s'
    >>> _health_reason(Health.UNHEALTHY, None, "healthy", "")
    'reported unhealthy by the agent'
    """
    if health is Health.HEALTHY:
        return ""
    if reasons:
        return "; ".join(reasons)
    if reasons is None and was_health == health.value and was_reason:
        return was_reason
    return f"reported {health.value} by the agent"


class AgentAdmission:
    """ASGI middleware: at most ``limit`` agent requests in flight in this process; the next ones get 429 with a
    ``Retry-After`` spread over a few seconds (the agents add their own jitter), cheaply, before the body is read.
    ``limit <= 0`` admits everything."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        #: Registrations (a dozen rows each) get a quarter of the places: renewals, which keep nodes up, never
        #: wait behind a herd of registrations.
        self.register_limit = max(1, limit // 4)
        self.in_flight = 0
        self.registering = 0
        self.refused = 0
        self._random = random.Random()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.limit <= 0 or scope["type"] != "http" or not scope["path"].startswith(AGENT_PREFIX):
            await self.app(scope, receive, send)
            return
        registration = scope["path"] == REGISTER_PATH
        if self.in_flight >= self.limit or (registration and self.registering >= self.register_limit):
            self.refused += 1
            # Spread the retries over more seconds the deeper the overload, so they do not come back together.
            spread = 1.0 + 4.0 * min(1.0, self.refused / (10.0 * self.limit))
            retry = max(1, math.ceil(self._random.uniform(1.0, 1.0 + spread)))
            problem = Problem(
                "rate-limited",
                f"this API process is admitting {self.limit} agent requests at a time; retry after {retry} s",
                headers={"Retry-After": str(retry)},
            )
            await problem.response(scope.get("path", ""))(scope, receive, send)
            return
        self.in_flight += 1
        self.registering += registration
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
            self.registering -= registration
            if self.in_flight == 0:
                self.refused = 0
