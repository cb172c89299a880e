"""``/v1/inventory``: where the nodes come from, and whether what each source published is current.

A source is *stale* when it said so at its last publish (the Kubernetes API server is down or denies the watch:
its nodes are the last known ones, and ``reason`` says why), or when its publisher, which writes every
``every_s``, has not written for three of those (the server that follows it is gone). Public to every tenant,
like the node list it explains.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Response
from sqlalchemy import select

from api.deps import CurrentPrincipal, ReadSession, respond
from api.models import V1_PROBLEMS, InventorySourceOut, Items
from api.tables import INVENTORY_SOURCES

router = APIRouter(prefix="/v1", tags=["inventory"], responses=V1_PROBLEMS)

#: Publishes a source may miss before readers call it stale.
MISSED_PUBLISHES = 3


def source_out(row: Mapping[Any, Any], now: float) -> dict[str, Any]:
    """A source as the API shows it (see the module docstring for when it is stale)."""
    stale, reason = bool(row["stale"]), str(row["reason"])
    every = row["every_s"]
    if every is not None and now - row["updated_at"] > MISSED_PUBLISHES * every:
        silent = f"not published for {now - row['updated_at']:.0f} s (every {every:g} s expected)"
        stale, reason = True, f"{reason}; {silent}" if reason else silent
    return {
        "source": row["source"],
        "stale": stale,
        "reason": reason,
        "updated_at": row["updated_at"],
        "changed_at": row["changed_at"],
        "every_s": every,
        "nodes": row["nodes"],
        "schedulable": row["schedulable"],
        "left_out": list(row["left_out"] or ()),
        "reasons": dict(row["reasons"] or {}),
    }


@router.get("/inventory", response_model=Items[InventorySourceOut], summary="Inventory sources and their staleness")
def list_sources(_principal: CurrentPrincipal, session: ReadSession) -> Response:
    now = time.time()
    rows = session.execute(select(INVENTORY_SOURCES).order_by(INVENTORY_SOURCES.c.source)).mappings().all()
    return respond({"items": [source_out(row, now) for row in rows]})
