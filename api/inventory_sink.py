"""Publishing an inventory source's nodes into the ``nodes`` table: the SQL :class:`InventorySink`.

Each source owns the rows it created (``nodes.source``): publishing inserts the nodes it does not have yet,
updates the ones it owns where they changed, and cordons the ones it owns but no longer lists; a row that another
source took over (a node agent registering a node of the cluster file) is left to that source. One transaction
per publish, which also records the source's own state in ``inventory_sources`` (``GET /v1/inventory``).

A *stale* inventory (its source cannot be read now: the API server is down, RBAC denied) changes no node — the
last known ones stay as they were published — and only marks the source stale, with the reason::

    sink = SqlInventorySink(engine)                                               # doctest: +SKIP
    sink.publish("file", FileInventory("seeds/clusters/local.yaml").inventory(), time.time())  # doctest: +SKIP

:func:`follow` keeps a watching source (Kubernetes) published from a thread: at once when its inventory changes
(at most every ``min_gap_s``), and every ``every_s`` anyway so that readers see the publisher is alive.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, Engine, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from api.db import write_engine
from api.enums import NodeStatus
from api.tables import INVENTORY_SOURCES, NODES
from scheduler.live.inventory.base import Inventory, InventoryNode, InventorySink, InventorySource

log = logging.getLogger("zhisuan.inventory")

#: The columns a publish compares and writes (``registered_at`` only on insert).
_COLUMNS = (
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
    "state",
)


class SqlInventorySink(InventorySink):
    """Writes inventories to the API's database; ``every_s`` is how often its publisher writes (for readers)."""

    def __init__(self, engine: Engine, every_s: float | None = None) -> None:
        self._writer = write_engine(engine)
        self.every_s = every_s

    def publish(self, source: str, inventory: Inventory, now: float) -> None:
        with self._writer.begin() as conn:
            publish(conn, source, inventory, now, self.every_s)


def publish(conn: Connection, source: str, inventory: Inventory, now: float, every_s: float | None = None) -> int:
    """Inside a transaction: make ``source``'s rows match ``inventory`` (unless it is stale) and record the
    source's state; returns how many nodes were added."""
    added = changed = 0
    if not inventory.stale:
        added, changed = _publish_nodes(conn, source, inventory, now)
    _record_source(conn, source, inventory, now, every_s, changed_nodes=added + changed > 0)
    return added


def _publish_nodes(conn: Connection, source: str, inventory: Inventory, now: float) -> tuple[int, int]:
    columns = [NODES.c[c] for c in _COLUMNS]
    owners: dict[str, str] = {}
    current: dict[str, dict[str, Any]] = {}
    for row in conn.execute(select(NODES.c.id, NODES.c.source, *columns)).mappings():
        owners[row["id"]] = row["source"]
        if row["source"] == source:
            current[row["id"]] = {c: row[c] for c in _COLUMNS}
    listed = {item.node.id for item in inventory.nodes}
    added = [_row(item, source, now) for item in inventory.nodes if item.node.id not in owners]
    if added:
        conn.execute(insert(NODES), added)
    changed = 0
    for item in inventory.nodes:
        before = current.get(item.node.id)
        if before is None:
            continue
        values = _row(item, source, now)
        delta = {c: values[c] for c in _COLUMNS if before[c] != values[c]}
        if delta:
            # Only what moved: a watch event that changes nothing Zhisuan reads (a kubelet's status heartbeat)
            # writes nothing.
            conn.execute(update(NODES).where(NODES.c.id == item.node.id).values(delta))
            changed += 1
    gone = [
        node_id
        for node_id, row in current.items()
        if node_id not in listed and row["state"] != NodeStatus.CORDONED.value
    ]
    if gone:
        conn.execute(update(NODES).where(NODES.c.id.in_(gone)).values(state=NodeStatus.CORDONED.value))
    return len(added), changed + len(gone)


def _record_source(
    conn: Connection, source: str, inventory: Inventory, now: float, every_s: float | None, changed_nodes: bool
) -> None:
    before = conn.execute(select(INVENTORY_SOURCES).where(INVENTORY_SOURCES.c.source == source)).mappings().first()
    values: dict[str, Any] = {
        "stale": inventory.stale,
        "reason": inventory.stale_reason if inventory.stale else "",
        "updated_at": now,
        "every_s": every_s,
    }
    if not inventory.stale or before is None:
        # A stale inventory is the last known one: what was published from it stands, counts included.
        values |= {
            "nodes": len(inventory.nodes),
            "schedulable": len(inventory.schedulable()),
            "left_out": [{"name": left.name, "reason": left.reason} for left in inventory.left_out],
            "reasons": {n.node.id: list(n.reasons) for n in inventory.nodes if n.reasons},
        }
    if before is None or changed_nodes or values.get("reasons", before["reasons"]) != before["reasons"]:
        values["changed_at"] = now
    insert_ = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    statement = insert_(INVENTORY_SOURCES).values(
        {
            "source": source,
            "changed_at": now,
            "nodes": 0,
            "schedulable": 0,
            "left_out": [],
            "reasons": {},
            **values,
        }
    )
    conn.execute(statement.on_conflict_do_update(index_elements=["source"], set_=values))


def _row(item: InventoryNode, source: str, now: float) -> dict[str, Any]:
    node = item.node
    return {
        "id": node.id,
        "hostname": node.id,
        "model": node.model,
        "vendor": item.vendor or "",
        "pool": node.pool,
        "site": node.site,
        "region": node.region,
        "tier": node.tier.value,
        "island": node.island,
        "switch": node.switch,
        "devices": node.devices,
        "cpu_milli": node.cpu_milli,
        "memory_mib": node.memory_mib,
        "labels": dict(node.labels),
        "state": (NodeStatus.READY if item.schedulable else NodeStatus.CORDONED).value,
        "source": source,
        "registered_at": now,
    }


def follow(
    source: InventorySource,
    sink: InventorySink,
    stop: threading.Event,
    *,
    every_s: float = 30.0,
    poll_s: float = 0.5,
    min_gap_s: float = 1.0,
    clock: Callable[[], float] = time.time,
) -> None:
    """Publish ``source`` into ``sink`` until ``stop`` is set: when its inventory changes (a watching source
    hands out a new :class:`Inventory` object on every change) and every ``every_s`` anyway. A database that
    cannot be written is logged and tried again at the next poll."""
    last: Inventory | None = None
    last_at = float("-inf")
    failing = ""
    while not stop.is_set():
        inventory = source.inventory()
        now = clock()
        due = inventory is not last and now - last_at >= min_gap_s
        if due or now - last_at >= every_s:
            try:
                sink.publish(source.source, inventory, now)
            except Exception as exc:
                line = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                if line != failing:
                    log.warning("cannot publish the %s inventory, retrying: %s", source.source, line)
                failing = line
            else:
                if failing:
                    log.info("the %s inventory is published again", source.source)
                failing = ""
                last, last_at = inventory, now
        stop.wait(poll_s)
