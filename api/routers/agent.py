"""``/v1/agent/register`` and ``/v1/agent/heartbeat``: the server side of :mod:`agents.protocol`.

Node-agent tokens only (and a token issued for one node id speaks only for that node). Registration upserts the
node and its devices; a heartbeat stores the latest telemetry and health per device and acknowledges the highest
batch ``seq`` it stored. A heartbeat from a node the API does not know asks the agent to register again.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request, Response
from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session

from agents.protocol import (
    PROTOCOL_VERSION,
    DeviceSample,
    Health,
    HeartbeatRequest,
    HeartbeatResponse,
    RegisterRequest,
    RegisterResponse,
)
from api.auth import Principal
from api.deps import CurrentPrincipal, WriteSession, context, require, respond
from api.enums import NodeSource, NodeStatus, Role
from api.models import V1_PROBLEMS
from api.problems import Problem
from api.tables import DEVICES, NODES
from scheduler.catalog import Tier
from scheduler.model import pool_id

router = APIRouter(prefix="/v1/agent", tags=["node agent"], responses=V1_PROBLEMS)


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


def _upsert(session: Session, table: Any, values: dict[str, Any], keys: list[str], keep: set[str]) -> None:
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(table).values(values)
    changes = {k: v for k, v in values.items() if k not in keys and k not in keep}
    session.execute(statement.on_conflict_do_update(index_elements=keys, set_=changes))


@router.post("/register", response_model=RegisterResponse, summary="A node agent registers its node")
def register(body: RegisterRequest, request: Request, principal: CurrentPrincipal, session: WriteSession) -> Response:
    node = body.node
    _check_node(principal, node.node_id)
    ctx = context(request)
    if body.protocol_version != PROTOCOL_VERSION:
        raise _invalid(["protocol_version"], f"this API speaks protocol {PROTOCOL_VERSION}; upgrade the agent")
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
    existing = session.execute(select(NODES.c.state).where(NODES.c.id == node.node_id)).scalar()
    state = NodeStatus.CORDONED.value if existing == NodeStatus.CORDONED.value else NodeStatus.READY.value
    _upsert(
        session,
        NODES,
        {
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
            "state": state,
            "source": NodeSource.AGENT.value,
            "registered_at": now,
            "last_heartbeat": now,
            "agent_version": body.agent_version,
            "last_seq": None,
        },
        ["id"],
        set(),
    )
    indexes = [d.index for d in body.devices]
    session.execute(delete(DEVICES).where(DEVICES.c.node_id == node.node_id, DEVICES.c.index.not_in(indexes)))
    for device in body.devices:
        _upsert(
            session,
            DEVICES,
            {
                "node_id": node.node_id,
                "index": device.index,
                "uuid": device.uuid,
                "model": device.model,
                "memory_mib": device.memory_total_mib,
                "healthy": True,
                "health_reason": "",
                "telemetry": {},
                "updated_at": now,
            },
            ["node_id", "index"],
            {"healthy", "health_reason", "telemetry"},
        )
    session.commit()
    ctx.snapshots.refresh()
    reply = RegisterResponse(
        node_id=node.node_id,
        heartbeat_interval_s=ctx.settings.heartbeat_interval_s,
        message=f"registered {node.devices} {entry.model} devices in pool {pool_id(node.site, entry.model)}",
    )
    return respond(reply.model_dump(mode="json"))


@router.post("/heartbeat", response_model=HeartbeatResponse, summary="Telemetry and health from a node agent")
def heartbeat(body: HeartbeatRequest, request: Request, principal: CurrentPrincipal, session: WriteSession) -> Response:
    _check_node(principal, body.node_id)
    ctx = context(request)
    node = session.execute(select(NODES).where(NODES.c.id == body.node_id)).mappings().first()
    if node is None or node["source"] != NodeSource.AGENT.value:
        session.rollback()
        return respond(HeartbeatResponse(acked_seq=-1, reregister=True).model_dump(mode="json"))
    now = time.time()
    latest: dict[str, tuple[DeviceSample, float]] = {}
    for batch in body.batches:  # oldest first: later samples win
        for sample in batch.samples:
            latest[sample.uuid] = (sample, now - batch.age_s)
    devices = session.execute(select(DEVICES).where(DEVICES.c.node_id == body.node_id)).mappings().all()
    for device in devices:
        uuid = device["uuid"]
        found = latest.get(uuid)
        health = body.device_health.get(uuid, found[0].health if found is not None else None)
        if found is None and health is None:
            continue
        values: dict[str, Any] = {"updated_at": now}
        if health is not None:
            values["healthy"] = health is not Health.UNHEALTHY
            if health is Health.UNHEALTHY:
                reasons = found[0].health_reasons if found is not None else []
                values["health_reason"] = "; ".join(reasons) or "reported unhealthy by the agent"
            else:
                values["health_reason"] = ""
        if found is not None:
            sample, sampled_at = found
            values["telemetry"] = {**sample.model_dump(mode="json"), "received_at": now, "sampled_at": sampled_at}
        session.execute(
            update(DEVICES).where(DEVICES.c.node_id == body.node_id, DEVICES.c.index == device["index"]).values(values)
        )
    acked = max((b.seq for b in body.batches), default=node["last_seq"] if node["last_seq"] is not None else -1)
    node_values: dict[str, Any] = {"last_heartbeat": now, "last_seq": acked}
    if node["state"] == NodeStatus.DOWN.value:
        node_values["state"] = NodeStatus.READY.value
    session.execute(update(NODES).where(NODES.c.id == body.node_id).values(node_values))
    session.commit()
    reply = HeartbeatResponse(
        acked_seq=acked,
        interval_s=ctx.settings.heartbeat_interval_s,
        work=ctx.snapshots.device_work(body.node_id, max_age_s=min(1.0, ctx.settings.heartbeat_interval_s / 2)),
    )
    return respond(reply.model_dump(mode="json"))
