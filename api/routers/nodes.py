"""``/v1/pools`` and ``/v1/nodes``: the installed inventory, its health and what is free.

Capacity is public to every tenant; which jobs run where is not, so nothing here names a job. A node registered
by an agent whose last heartbeat is older than three heartbeat intervals is shown ``down`` (computed when
listing; the scheduler service treats such nodes as lost).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response
from sqlalchemy import select
from sqlmodel import Session

from api.deps import AppContext, CurrentPrincipal, ReadSession, context, respond
from api.enums import NodeStatus
from api.models import V1_PROBLEMS, Items, NodeOut, PoolOut
from api.problems import not_found
from api.store import device_work, node_status
from api.tables import DEVICES, NODES

router = APIRouter(prefix="/v1", tags=["inventory"], responses=V1_PROBLEMS)
NodeId = Annotated[str, Path(min_length=1, max_length=200)]


def allocated_devices(session: Session) -> dict[str, set[int]]:
    """Devices (per node) that running jobs hold, wholly or in part."""
    return {node: {w.index for w in work} for node, work in device_work(session).items()}


#: The device columns the lists read: no telemetry document, nothing of discovery (GET /v1/nodes/{id} has those).
_LIGHT_DEVICE_COLUMNS = (
    DEVICES.c.node_id,
    DEVICES.c.index,
    DEVICES.c.uuid,
    DEVICES.c.model,
    DEVICES.c.healthy,
    DEVICES.c.health,
    DEVICES.c.health_reason,
    DEVICES.c.updated_at,
)
#: The node columns the list reads (the shims' statuses are for GET /v1/nodes/{id}).
_LIST_NODE_COLUMNS = tuple(c for c in NODES.c if c.name != "shims")


def _devices_by_node(
    session: Session, node_ids: Iterable[str] | None = None, full: bool = False
) -> dict[str, list[Mapping[Any, Any]]]:
    """Device rows per node: every column with ``full``, else the light ones (one query either way)."""
    statement = select(DEVICES) if full else select(*_LIGHT_DEVICE_COLUMNS)
    statement = statement.order_by(DEVICES.c.node_id, DEVICES.c.index)
    if node_ids is not None:
        statement = statement.where(DEVICES.c.node_id.in_(list(node_ids)))
    out: dict[str, list[Mapping[Any, Any]]] = {}
    for row in session.execute(statement).mappings():
        out.setdefault(row["node_id"], []).append(row)
    return out


def _healthy_indexes(node: Mapping[Any, Any], devices: list[Mapping[Any, Any]]) -> set[int]:
    """The healthy devices of the node's model (a part the catalog does not know has a row, not a place)."""
    if not devices:  # a node from a cluster file has no device rows: all its devices count as healthy
        return set(range(node["devices"]))
    return {d["index"] for d in devices if d["healthy"] and d["model"] == node["model"]}


_DISCOVERY = ("vendor", "name", "other_names", "model_known", "notes", "parent_uuid", "fraction", "profile")


def _device_out(d: Mapping[Any, Any], full: bool) -> dict[str, Any]:
    out = {
        "index": d["index"],
        "uuid": d["uuid"],
        "model": d["model"],
        "healthy": d["healthy"],
        "health": d["health"],
        "health_reason": d["health_reason"],
        "telemetry": (d["telemetry"] or {}) if full else None,
        "updated_at": d["updated_at"],
    }
    if full:
        out.update({k: d[k] for k in _DISCOVERY})
    return out


def node_out(
    ctx: AppContext, row: Mapping[Any, Any], devices: list[Mapping[Any, Any]], now: float, telemetry: bool
) -> dict[str, Any]:
    """A node as the API answers it; ``telemetry``: the full view of GET /v1/nodes/{id} (device telemetry,
    discovery and the vendors' statuses), from rows read with every column."""
    healthy = _healthy_indexes(row, devices)
    out = {
        "id": row["id"],
        "hostname": row["hostname"],
        "model": row["model"],
        "vendor": row["vendor"],
        "pool": row["pool"],
        "site": row["site"],
        "region": row["region"],
        "tier": row["tier"],
        "island": row["island"],
        "switch": row["switch"],
        "device_count": row["devices"],
        "devices_healthy": len(healthy),
        "cpu_milli": row["cpu_milli"],
        "memory_mib": row["memory_mib"],
        "labels": row["labels"] or {},
        "state": node_status(row, now, ctx.settings.heartbeat_interval_s),
        "source": row["source"],
        "registered_at": row["registered_at"],
        "last_heartbeat": row["last_heartbeat"],
        "agent_version": row["agent_version"],
        "last_seq": row["last_seq"],
        "devices": [_device_out(d, telemetry) for d in devices],
    }
    if telemetry:
        out["shims"] = row["shims"] or []
    return out


@router.get("/pools", response_model=Items[PoolOut], summary="Pools: devices of one model in one site")
def list_pools(request: Request, _principal: CurrentPrincipal, session: ReadSession) -> Response:
    ctx = context(request)
    now = time.time()
    nodes = session.execute(select(NODES).order_by(NODES.c.id)).mappings().all()
    devices = _devices_by_node(session)
    used = allocated_devices(session)
    pools: dict[str, dict[str, Any]] = {}
    for node in nodes:
        entry = ctx.catalog.lookup(node["model"])
        pool = pools.setdefault(
            node["pool"],
            {
                "pool": node["pool"],
                "model": node["model"],
                "vendor": entry.vendor if entry is not None else node["vendor"],
                "site": node["site"],
                "nodes": 0,
                "devices": 0,
                "devices_free": 0,
                "devices_healthy": 0,
                "domestic": bool(entry and entry.domestic),
            },
        )
        pool["nodes"] += 1
        pool["devices"] += node["devices"]
        state = node_status(node, now, ctx.settings.heartbeat_interval_s)
        if state == NodeStatus.DOWN.value:
            continue
        healthy = _healthy_indexes(node, devices.get(node["id"], []))
        pool["devices_healthy"] += len(healthy)
        if state == NodeStatus.READY.value:
            pool["devices_free"] += len(healthy - used.get(node["id"], set()))
    return respond({"items": [pools[p] for p in sorted(pools)]})


@router.get("/nodes", response_model=Items[NodeOut], summary="Nodes (device telemetry only per node)")
def list_nodes(request: Request, _principal: CurrentPrincipal, session: ReadSession) -> Response:
    ctx = context(request)
    now = time.time()
    nodes = session.execute(select(*_LIST_NODE_COLUMNS).order_by(NODES.c.id)).mappings().all()
    devices = _devices_by_node(session)
    return respond({"items": [node_out(ctx, n, devices.get(n["id"], []), now, False) for n in nodes]})


@router.get(
    "/nodes/{node_id}",
    response_model=NodeOut,
    summary="One node: its devices' latest telemetry, health and reason, what discovery found, its vendors' tools",
)
def get_node(node_id: NodeId, request: Request, _principal: CurrentPrincipal, session: ReadSession) -> Response:
    ctx = context(request)
    node = session.execute(select(NODES).where(NODES.c.id == node_id)).mappings().first()
    if node is None:
        raise not_found("node", node_id)
    devices = _devices_by_node(session, [node_id], full=True).get(node_id, [])
    return respond(node_out(ctx, node, devices, time.time(), True))
