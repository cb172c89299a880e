"""Kubernetes inventory benchmark: a 5,000-node Node list with mixed vendors → cluster state; one watch event.

Prints one JSON object:

* ``list_decode_map_state_s``: the NodeList's bytes (as the API server sends them) → ``orjson`` → ``map_node`` for
  every Node → :class:`~scheduler.state.ClusterState` built from the mapped nodes;
* ``list_http_state_s``: the same list served in pages of 500 (``limit``/``continue``) by an HTTP server on
  127.0.0.1 and read by :meth:`KubernetesInventory.sync` with the real ``kubernetes`` client, then the state;
* ``watch_event_ms``: :meth:`KubernetesInventory.apply` of MODIFIED events (a taint added or removed, a device
  lost), median / p99 / max over ``--events`` events; ``snapshot_ms``: the next ``inventory()`` after an event.

The nodes are the fixtures' recorded shapes (GFD H100, time-sliced H100, HAMi JSON H100, Ascend 910C, Ascend 310P,
a not-ready H100, an unknown vendor, a malformed HAMi annotation) renamed; 2 in 25 are left out.

    .venv/bin/python benchmarks/inventory.py
    .venv/bin/python benchmarks/inventory.py --nodes 5000 --events 2000

Targets (issue 15): ≤ 2 s for the 5,000-node list to cluster state; ≤ 5 ms per watch event.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import orjson
import yaml
from kubernetes import client

from scheduler.live.inventory.base import InventoryNode
from scheduler.live.inventory.kubernetes import KubernetesInventory, NodeMapper
from scheduler.state import ClusterState

NODES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "kubernetes" / "nodes"
TEMPLATES = (
    ["h100-hgx.json"] * 8
    + ["h100-time-slicing.yaml"] * 3
    + ["hami-json-h100.yaml"] * 3
    + ["ascend-a3-910c.yaml"] * 6
    + ["ascend-310p.yaml"] * 2
    + ["h100-not-ready.yaml", "unknown-vendor.yaml", "hami-malformed.yaml"]
)


def fleet(count: int) -> list[dict[str, Any]]:
    templates = [yaml.safe_load((NODES / name).read_text()) for name in TEMPLATES]
    nodes = []
    for i in range(count):
        node = copy.deepcopy(templates[i % len(templates)])
        name = f"node-{i:05d}"
        node["metadata"]["name"] = name
        node["metadata"]["labels"]["kubernetes.io/hostname"] = name
        node["metadata"]["labels"]["zhisuan.io/island"] = f"island-{i // 8}"
        node["metadata"]["resourceVersion"] = str(10_000 + i)
        nodes.append(node)
    return nodes


def list_bytes(nodes: list[dict[str, Any]]) -> bytes:
    items = []
    for node in nodes:
        item = dict(node)
        item.pop("kind", None)
        item.pop("apiVersion", None)
        items.append(item)
    return orjson.dumps(
        {"kind": "NodeList", "apiVersion": "v1", "metadata": {"resourceVersion": "99999"}, "items": items}
    )


def decode_map_state(body: bytes, mapper: NodeMapper) -> tuple[float, int, int]:
    began = time.perf_counter()
    items = orjson.loads(body)["items"]
    mapped = [mapper.map(obj) for obj in items]
    nodes = [m.node for m in mapped if isinstance(m, InventoryNode)]
    state = ClusterState(nodes)
    elapsed = time.perf_counter() - began
    return elapsed, len(state.nodes), len(mapped) - len(nodes)


def serve_pages(nodes: list[dict[str, Any]]) -> ThreadingHTTPServer:
    pages: dict[int, bytes] = {}
    size = 500
    for start in range(0, len(nodes), size):
        meta: dict[str, Any] = {"resourceVersion": "99999"}
        if start + size < len(nodes):
            meta["continue"] = f"c{start + size}"
        chunk = [{k: v for k, v in n.items() if k not in ("kind", "apiVersion")} for n in nodes[start : start + size]]
        pages[start] = orjson.dumps({"kind": "NodeList", "apiVersion": "v1", "metadata": meta, "items": chunk})

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            query = parse_qs(urlparse(self.path).query)
            start = int(query.get("continue", ["c0"])[0][1:])
            body = pages[start]
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    nodes = fleet(args.nodes)
    body = list_bytes(nodes)
    mapper = NodeMapper()
    decode_map_state(list_bytes(nodes[:50]), mapper)  # warm the catalog and name caches once
    runs = [decode_map_state(body, NodeMapper()) for _ in range(args.repeat)]
    pure = min(r[0] for r in runs)

    server = serve_pages(nodes)
    host, port = server.server_address[:2]
    configuration = client.Configuration(host=f"http://{host!s}:{port}")
    http_runs = []
    inventory = None
    for _ in range(args.repeat):
        inventory = KubernetesInventory(client.ApiClient(configuration), NodeMapper(), page_size=500)
        began = time.perf_counter()
        inventory.sync()
        state = ClusterState(n.node for n in inventory.inventory().nodes)
        http_runs.append(time.perf_counter() - began)
    assert inventory is not None
    server.shutdown()

    # Watch events: alternately add a maintenance taint, drop it, and lose a device, on nodes round-robin.
    apply_ms: list[float] = []
    snapshot_ms: list[float] = []
    for i in range(args.events):
        node = copy.deepcopy(nodes[(i * 7919) % len(nodes)])
        node["metadata"]["resourceVersion"] = str(200_000 + i)
        if i % 3 == 0:
            node["spec"].setdefault("taints", []).append({"key": "maintenance", "effect": "NoSchedule"})
        elif i % 3 == 2 and "nvidia.com/gpu" in node["status"]["allocatable"]:
            node["status"]["allocatable"]["nvidia.com/gpu"] = "7"
        event = {"type": "MODIFIED", "object": node}
        began = time.perf_counter()
        inventory.apply(event)
        apply_ms.append((time.perf_counter() - began) * 1000)
        if i % 50 == 0:
            began = time.perf_counter()
            inventory.inventory()
            snapshot_ms.append((time.perf_counter() - began) * 1000)
    apply_ms.sort()
    result = {
        "nodes": args.nodes,
        "mapped": runs[0][1],
        "left_out": runs[0][2],
        "list_bytes": len(body),
        "list_decode_map_state_s": round(pure, 3),
        "list_http_state_s": round(min(http_runs), 3),
        "http_pages": (args.nodes + 499) // 500,
        "watch_event_ms": {
            "median": round(statistics.median(apply_ms), 3),
            "p99": round(apply_ms[int(len(apply_ms) * 0.99) - 1], 3),
            "max": round(apply_ms[-1], 3),
            "events": args.events,
        },
        "snapshot_ms": {"median": round(statistics.median(snapshot_ms), 2), "max": round(max(snapshot_ms), 2)},
        "targets": {"list_s": 2.0, "event_ms": 5.0},
        "pool_count": len(state.pools),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
