"""Publishing an inventory source's nodes into the ``nodes`` table: the SQL :class:`InventorySink`.

Each source owns the rows it created (``nodes.source``): publishing inserts the nodes it does not have yet,
updates the ones it owns, and cordons the ones it owns but no longer lists; a row that another source took over
(a node agent registering a node of the cluster file) is left to that source. One transaction per publish::

    sink = SqlInventorySink(engine)                                               # doctest: +SKIP
    sink.publish("file", FileInventory("seeds/clusters/local.yaml").inventory(), time.time())  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine, insert, select, update

from api.db import write_engine
from api.enums import NodeStatus
from api.tables import NODES
from scheduler.live.inventory.base import Inventory, InventoryNode, InventorySink


class SqlInventorySink(InventorySink):
    """Writes inventories to the API's database."""

    def __init__(self, engine: Engine) -> None:
        self._writer = write_engine(engine)

    def publish(self, source: str, inventory: Inventory, now: float) -> None:
        with self._writer.begin() as conn:
            publish(conn, source, inventory, now)


def publish(conn: Connection, source: str, inventory: Inventory, now: float) -> int:
    """Inside a transaction: make ``source``'s rows match ``inventory``; returns how many nodes were added."""
    owners = {row.id: row.source for row in conn.execute(select(NODES.c.id, NODES.c.source))}
    listed = {item.node.id for item in inventory.nodes}
    added = [_row(item, source, now) for item in inventory.nodes if item.node.id not in owners]
    if added:
        conn.execute(insert(NODES), added)
    for item in inventory.nodes:
        if owners.get(item.node.id) == source:
            values = _row(item, source, now)
            del values["id"], values["registered_at"]
            conn.execute(update(NODES).where(NODES.c.id == item.node.id).values(values))
    gone = [node_id for node_id, owner in owners.items() if owner == source and node_id not in listed]
    if gone:
        conn.execute(update(NODES).where(NODES.c.id.in_(gone)).values(state=NodeStatus.CORDONED.value))
    return len(added)


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
