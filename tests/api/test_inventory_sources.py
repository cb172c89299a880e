"""Inventory sources in the database and ``GET /v1/inventory``: what a publish writes (only what moved), what a
stale one keeps, and when readers call a source stale — on SQLite and PostgreSQL, through the real API server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from api_stack import Stack
from sqlalchemy import Engine, event, select

from api.enums import NodeSource
from api.inventory_sink import SqlInventorySink
from api.tables import INVENTORY_SOURCES, NODES
from scheduler.live.inventory.base import Inventory, InventoryNode, LeftOut
from scheduler.model import Node


def k8s_node(name: str, schedulable: bool = True, reasons: tuple[str, ...] = ()) -> InventoryNode:
    node = Node(id=name, model="H100", devices=8, cpu_milli=223_500, memory_mib=2_063_848, site="bj1")
    return InventoryNode(node, vendor="nvidia", schedulable=schedulable, reasons=reasons)


@contextmanager
def statements(engine: Engine) -> Iterator[list[str]]:
    """The SQL statements the engine sends while the block runs."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def sources(stack: Stack, who: str = "alice") -> dict[str, dict[str, Any]]:
    with stack.client(who) as c:
        response = c.get("/v1/inventory")
    assert response.status_code == 200, response.text
    return {s["source"]: s for s in response.json()["items"]}


def test_the_cluster_files_nodes_are_a_source_published_once(stack: Stack) -> None:
    listed = sources(stack)["file"]
    assert (listed["nodes"], listed["schedulable"], listed["stale"], listed["every_s"]) == (5, 5, False, None)
    assert listed["left_out"] == [] and listed["reasons"] == {}
    assert sources(stack, "admin")["file"] == listed  # public like the node list
    with stack.client("node") as c:
        assert c.get("/v1/inventory").status_code == 403  # node tokens speak the agent protocol only


def test_a_publish_writes_only_what_moved_and_a_stale_one_keeps_the_last_known_nodes(stack: Stack) -> None:
    sink = SqlInventorySink(stack.engine, every_s=30.0)
    t0 = time.time() - 40  # the last publish below is at now - 10 s: within three 30 s periods
    first = Inventory(
        nodes=(k8s_node("k8s-a"), k8s_node("k8s-b"), k8s_node("k8s-c")),
        left_out=(LeftOut("k8s-x", "model unknown: the nvidia node carries no model label"),),
    )
    sink.publish(NodeSource.KUBERNETES.value, first, t0)
    with stack.engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(select(NODES).where(NODES.c.source == "kubernetes"))}
    assert sorted(rows) == ["k8s-a", "k8s-b", "k8s-c"] and {r.state for r in rows.values()} == {"ready"}
    # The same inventory again (a watch event that changed nothing Zhisuan reads): no node is written.
    with statements(stack.engine) as seen:
        sink.publish("kubernetes", first, t0 + 10)
    assert not [s for s in seen if s.lstrip().upper().startswith(("UPDATE NODES", "INSERT INTO NODES"))], seen
    listed = sources(stack)["kubernetes"]
    assert (listed["updated_at"], listed["changed_at"], listed["stale"]) == (t0 + 10, t0, False)
    # b is cordoned in Kubernetes and c is gone: one UPDATE each, nothing else.
    cordoned = k8s_node("k8s-b", schedulable=False, reasons=("cordoned (spec.unschedulable)",))
    second = Inventory(nodes=(k8s_node("k8s-a"), cordoned))
    with statements(stack.engine) as seen:
        sink.publish("kubernetes", second, t0 + 20)
    assert len([s for s in seen if s.lstrip().upper().startswith("UPDATE NODES")]) == 2
    with stack.engine.connect() as conn:
        states = dict(conn.execute(select(NODES.c.id, NODES.c.state).where(NODES.c.source == "kubernetes")).all())
    assert states == {"k8s-a": "ready", "k8s-b": "cordoned", "k8s-c": "cordoned"}
    listed = sources(stack)["kubernetes"]
    assert (listed["nodes"], listed["schedulable"], listed["changed_at"]) == (2, 1, t0 + 20)
    assert listed["reasons"] == {"k8s-b": ["cordoned (spec.unschedulable)"]} and listed["left_out"] == []
    # The API server goes away: the last known inventory (here: nothing listed yet after a restart) changes no
    # node; the source is stale with the reason, its counts those of the last good publish.
    down = Inventory(stale=True, stale_reason="cannot list nodes: API server unreachable (ConnectionRefused)")
    sink.publish("kubernetes", down, t0 + 30)
    with stack.engine.connect() as conn:
        after = dict(conn.execute(select(NODES.c.id, NODES.c.state).where(NODES.c.source == "kubernetes")).all())
    assert after == states
    listed = sources(stack)["kubernetes"]
    assert listed["stale"] and listed["reason"] == down.stale_reason and listed["nodes"] == 2
    assert sources(stack)["file"]["nodes"] == 5  # other sources are left alone
    sink.publish("kubernetes", second, t0 + 40)
    assert sources(stack)["kubernetes"]["stale"] is False and sources(stack)["kubernetes"]["reason"] == ""


def test_a_source_that_stops_publishing_is_stale_after_three_missed_publishes(stack: Stack) -> None:
    sink = SqlInventorySink(stack.engine, every_s=2.0)
    sink.publish("kubernetes", Inventory(nodes=(k8s_node("k8s-a"),)), time.time() - 5.0)
    assert sources(stack)["kubernetes"]["stale"] is False
    sink.publish("kubernetes", Inventory(nodes=(k8s_node("k8s-a"),)), time.time() - 7.0)
    listed = sources(stack)["kubernetes"]
    assert listed["stale"] and "not published for 7 s (every 2 s expected)" in listed["reason"]
    with stack.engine.connect() as conn:
        stored = conn.execute(select(INVENTORY_SOURCES.c.stale).where(INVENTORY_SOURCES.c.source == "kubernetes"))
        assert stored.scalar_one() is False  # the publisher said nothing wrong: readers judge the silence
