"""The Kubernetes Node inventory: the real ``kubernetes`` client against the replay API server on 127.0.0.1."""

from __future__ import annotations

import copy
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kube_replay import ReplayServer, Stream, api_client, bookmark, expired_event, status_object

from scheduler.live.inventory.base import InventoryNode, LeftOut
from scheduler.live.inventory.kubernetes import KubernetesInventory, map_node

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "kubernetes"


def load_node(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((FIXTURES / "nodes" / name).read_text())
    return data


def renamed(node: dict[str, Any], name: str, rv: str = "48213") -> dict[str, Any]:
    twin = copy.deepcopy(node)
    twin["metadata"]["name"] = name
    twin["metadata"]["resourceVersion"] = rv
    twin["metadata"]["labels"]["kubernetes.io/hostname"] = name
    return twin


H100 = load_node("h100-hgx.json")


def five_nodes() -> list[dict[str, Any]]:
    return [renamed(H100, f"h100-{i}") for i in range(4)] + [load_node("hami-malformed.yaml")]


@pytest.fixture
def server() -> Iterator[ReplayServer]:
    with ReplayServer() as srv:
        yield srv


def make_inventory(server: ReplayServer, **kwargs: Any) -> KubernetesInventory:
    kwargs.setdefault("page_size", 2)
    kwargs.setdefault("watch_timeout_s", 1)
    kwargs.setdefault("request_timeout_s", 5.0)
    kwargs.setdefault("backoff_initial_s", 0.05)
    kwargs.setdefault("backoff_max_s", 0.2)
    kwargs.setdefault("backoff_jitter_s", 0.0)
    return KubernetesInventory(api_client(server), **kwargs)


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError("condition not reached in time")


def test_paginated_list_maps_every_node_and_leaves_out_the_malformed_one(server: ReplayServer) -> None:
    server.state.nodes = five_nodes()
    inv = make_inventory(server)
    inv.sync()
    pages = server.requests("/api/v1/nodes")
    assert [r.query.get("continue") for r in pages] == [None, "page-2", "page-4"]
    assert all(r.query["limit"] == "2" for r in pages)
    got = inv.inventory()
    assert [n.node.id for n in got.nodes] == ["h100-0", "h100-1", "h100-2", "h100-3"]
    assert [(n.node.model, n.node.devices, n.schedulable) for n in got.nodes] == [("H100", 8, True)] * 4
    assert len(got.left_out) == 1 and got.left_out[0].name == "sh1-h100-hami-02"
    assert "hami.io/node-nvidia-register" in got.left_out[0].reason
    assert not got.stale
    assert inv.resource_version == "1000"


def test_an_expired_continue_token_restarts_the_list(server: ReplayServer) -> None:
    server.state.nodes = five_nodes()
    server.state.expire_tokens = {"page-2"}
    inv = make_inventory(server)
    inv.sync()
    tokens = [r.query.get("continue") for r in server.requests("/api/v1/nodes")]
    assert tokens == [None, "page-2", None, "page-2", "page-4"]
    assert len(inv.inventory().nodes) == 4


def test_watch_applies_events_and_resumes_from_the_bookmark(server: ReplayServer) -> None:
    server.state.nodes = [renamed(H100, "h100-0"), renamed(H100, "h100-1")]
    tainted = renamed(H100, "h100-1", rv="1001")
    tainted["spec"]["taints"].append({"key": "maintenance", "value": "bios", "effect": "NoSchedule"})
    added = renamed(H100, "h100-2", rv="1002")
    server.state.streams.extend(
        [
            Stream(
                [{"type": "MODIFIED", "object": tainted}, {"type": "ADDED", "object": added}, bookmark("1100")],
                end="hold",
            ),
            Stream([{"type": "DELETED", "object": renamed(H100, "h100-0", rv="1101")}], end="hold"),
        ]
    )
    inv = make_inventory(server)
    inv.sync()
    assert inv.watch_once() == "timeout"
    got = {n.node.id: n for n in inv.inventory().nodes}
    assert set(got) == {"h100-0", "h100-1", "h100-2"}
    assert not got["h100-1"].schedulable
    assert "taint maintenance=bios:NoSchedule is not tolerated" in got["h100-1"].reasons
    assert inv.watch_once() == "timeout"
    assert {n.node.id for n in inv.inventory().nodes} == {"h100-1", "h100-2"}
    watches = server.requests("/api/v1/nodes", watch="true")
    # The first watch starts from the list's version, the second from the bookmark's: both kept opaque.
    assert [w.query["resourceVersion"] for w in watches] == ["1000", "1100"]
    assert all(w.query["allowWatchBookmarks"] == "true" for w in watches)
    assert inv.lists == 1


def run_in_thread(inv: KubernetesInventory) -> tuple[threading.Event, threading.Thread]:
    stop = threading.Event()
    thread = threading.Thread(target=inv.run, args=(stop,), daemon=True)
    thread.start()
    return stop, thread


def stop_thread(stop: threading.Event, thread: threading.Thread) -> float:
    began = time.monotonic()
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive()
    return time.monotonic() - began


def test_a_410_error_event_inside_the_200_stream_makes_it_list_again(server: ReplayServer) -> None:
    server.state.nodes = [renamed(H100, "h100-0")]
    server.state.streams.append(Stream([bookmark("1050"), expired_event("1050")]))
    inv = make_inventory(server, watch_timeout_s=30)
    stop, thread = run_in_thread(inv)
    wait_for(lambda: inv.lists == 2)
    server.state.list_rv = "2000"
    wait_for(lambda: len(server.requests("/api/v1/nodes", watch="true")) >= 2)
    assert stop_thread(stop, thread) < 2.0, "an open watch is cut at once on stop"
    assert len(server.requests("/api/v1/nodes", watch="true")) >= 2
    assert not inv.inventory().stale


def test_a_stream_that_ends_silently_before_its_timeout_makes_it_list_again(server: ReplayServer) -> None:
    server.state.nodes = [renamed(H100, "h100-0")]
    server.state.streams.append(Stream([], end="close"))
    inv = make_inventory(server, watch_timeout_s=30)
    inv.sync()
    assert inv.watch_once() == "ended"
    stop, thread = run_in_thread(inv)
    wait_for(lambda: inv.lists >= 2)
    stop_thread(stop, thread)


def test_a_broken_connection_is_a_stale_inventory_until_the_next_list(server: ReplayServer) -> None:
    server.state.nodes = [renamed(H100, "h100-0"), renamed(H100, "h100-1")]
    # The cut stream arrives after one good event.
    modified = renamed(H100, "h100-1", rv="1001")
    modified["spec"]["unschedulable"] = True
    server.state.streams.append(Stream([{"type": "MODIFIED", "object": modified}], end="reset"))
    inv = make_inventory(server, watch_timeout_s=30, backoff_initial_s=0.5, backoff_max_s=0.5)
    stop, thread = run_in_thread(inv)
    wait_for(lambda: inv.inventory().stale_reason.startswith("cannot watch"))
    stale = inv.inventory()
    assert stale.stale and stale.stale_reason.startswith("cannot watch nodes")
    # The last known inventory is still served, with the event that arrived before the cut.
    assert {n.node.id: n.schedulable for n in stale.nodes} == {"h100-0": True, "h100-1": False}
    wait_for(lambda: inv.lists >= 2 and not inv.inventory().stale)
    stop_thread(stop, thread)


def test_an_api_server_that_is_down_keeps_the_last_inventory_marked_stale(server: ReplayServer) -> None:
    server.state.nodes = [renamed(H100, "h100-0")]
    inv = make_inventory(server, watch_timeout_s=30)
    inv.sync()
    url_client = api_client(server)
    server.stop()  # nothing listens there any more: connection refused
    inv2 = KubernetesInventory(url_client, inv.mapper, backoff_initial_s=0.05, backoff_max_s=0.1, backoff_jitter_s=0)
    inv2._seen = dict(inv._seen)  # the state a running inventory had before the server went away
    stop, thread = run_in_thread(inv2)
    wait_for(lambda: inv2.inventory().stale and "unreachable" in inv2.inventory().stale_reason)
    assert [n.node.id for n in inv2.inventory().nodes] == ["h100-0"]
    stop_thread(stop, thread)


def test_rbac_denied_is_one_line_naming_the_verb_and_the_resource(server: ReplayServer) -> None:
    server.state.nodes = [renamed(H100, "h100-0")]
    message = (
        'nodes is forbidden: User "system:serviceaccount:zhisuan:zhisuan-scheduler" cannot list resource "nodes" '
        'in API group "" at the cluster scope'
    )
    server.state.fail_next.extend([(403, status_object(403, "Forbidden", message, kind="nodes"))] * 3)
    inv = make_inventory(server, backoff_initial_s=1.0, backoff_max_s=1.0)
    stop, thread = run_in_thread(inv)
    wait_for(lambda: inv.last_error != "")
    stop_thread(stop, thread)
    got = inv.inventory()
    assert got.stale
    assert "\n" not in got.stale_reason
    assert got.stale_reason == (
        "RBAC denied: cannot list nodes (grant the scheduler's ServiceAccount 'list' on 'nodes'): " + message
    )


def test_every_fixture_node_maps_or_is_left_out_with_a_reason() -> None:
    for path in sorted((FIXTURES / "nodes").glob("*.y*ml")) + sorted((FIXTURES / "nodes").glob("h100*.json")):
        seen = map_node(yaml.safe_load(path.read_text()))
        assert isinstance(seen, InventoryNode | LeftOut), path
        if isinstance(seen, LeftOut):
            assert seen.reason and "\n" not in seen.reason, path


def test_a_recorded_stream_file_in_the_wire_shape() -> None:
    lines = (FIXTURES / "watch" / "nodes-modified-bookmark-expired.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    with ReplayServer() as srv:
        srv.state.nodes = [H100]
        srv.state.streams.append(Stream(events, end="hold"))
        inv = make_inventory(srv, watch_timeout_s=30)
        inv.sync()
        assert inv.watch_once() == "expired"
        seen = inv.inventory().nodes[0]
        assert (
            not seen.schedulable and "taint node.kubernetes.io/unreachable:NoExecute is not tolerated" in seen.reasons
        )
        assert inv.resource_version == "48311"  # the bookmark's: the ERROR event carries none
