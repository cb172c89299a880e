"""``GET /v1/nodes`` and ``GET /v1/nodes/{id}`` with 1,000 agent nodes x 8 devices in the database (issue 17).

The API runs as its own process (``python -m api.app``: uvloop, httptools) over SQLite; the nodes and devices are
inserted in bulk as the agents' registrations and heartbeats leave them: each device with its latest telemetry
sample (a full ``DeviceSample``), the names the tool printed, and per node the status of its vendors' shims (when
the columns exist: the script runs on a tree before migration 0005 too, for back-to-back comparisons). Both
endpoints are fetched sequentially ``--rounds`` times after a warm-up; p50/p99 and the body size are printed.

    .venv/bin/python benchmarks/nodes_api.py                     # 1,000 nodes x 8 devices, 30 rounds
    .venv/bin/python benchmarks/nodes_api.py --nodes 2000 --rounds 50

Prints one JSON document; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import insert

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agents.protocol import DeviceSample  # noqa: E402
from api.db import make_engine  # noqa: E402
from api.tables import DEVICES, NODES  # noqa: E402
from benchmarks.dashboard import start_server  # noqa: E402  (the API as its own process, as there)


def seed(database_url: str, nodes: int, now: float) -> None:
    """``nodes`` H100 agent nodes of 8 devices, each device with a telemetry sample."""
    node_columns = set(NODES.c.keys())
    device_columns = set(DEVICES.c.keys())
    node_rows: list[dict[str, Any]] = []
    device_rows: list[dict[str, Any]] = []
    for n in range(nodes):
        node_id = f"h100-{n:05d}"
        node: dict[str, Any] = {
            "id": node_id,
            "hostname": node_id,
            "model": "H100",
            "vendor": "nvidia",
            "pool": "bj1/H100",
            "site": "bj1",
            "region": "north",
            "tier": "cloud",
            "island": f"isl-{n // 32}",
            "switch": f"leaf-{n // 64}",
            "devices": 8,
            "cpu_milli": 192_000,
            "memory_mib": 2_097_152,
            "labels": {},
            "state": "ready",
            "source": "agent",
            "registered_at": now - 3600,
            "last_heartbeat": now,
            "lease_expires_at": now + 86_400,
            "agent_version": "0.1.0",
            "last_seq": 100,
            "shims": [
                {"vendor": "nvidia", "state": "present", "reason": "", "tool_version": "580.65.06"}
                | {"driver_version": "580.65.06", "command": "NVML"},
                {"vendor": "huawei", "state": "absent", "reason": "npu-smi not found on PATH"}
                | {"tool_version": None, "driver_version": None, "command": None},
            ],
        }
        node_rows.append({k: v for k, v in node.items() if k in node_columns})
        for i in range(8):
            uuid = f"GPU-{n:05d}-{i}"
            sample = DeviceSample(
                vendor="nvidia",
                index=i,
                uuid=uuid,
                model="H100",
                sampled_monotonic_s=1000.0,
                sampled_wall_time=now,
                utilization_pct=87.0,
                memory_used_mib=61_440.0,
                memory_total_mib=81_559.0,
                power_w=612.0,
                power_limit_w=700.0,
                energy_j=8.1e9,
                temperature_c=61.0,
                sm_clock_mhz=1980.0,
                pcie_tx_bytes_per_s=1.2e9,
                pcie_rx_bytes_per_s=2.3e9,
                ecc_uncorrectable_total=0,
                ecc_correctable_total=3,
                remapped_rows_uncorrectable=0,
                remap_failure=False,
                mig_enabled=False,
                throttle_reasons=["sw_power_cap"],
            )
            device = {
                "node_id": node_id,
                "index": i,
                "uuid": uuid,
                "model": "H100",
                "memory_mib": 81_559.0,
                "healthy": True,
                "health_reason": "",
                "telemetry": {**sample.model_dump(mode="json"), "received_at": now, "sampled_at": now - 0.2},
                "updated_at": now,
                "health": "healthy",
                "vendor": "nvidia",
                "name": "NVIDIA H100 80GB HBM3",
                "other_names": [],
                "model_known": True,
                "notes": ["18 NVLink links end on an NVSwitch"],
            }
            device_rows.append({k: v for k, v in device.items() if k in device_columns})
    engine = make_engine(database_url)
    with engine.begin() as conn:
        conn.execute(insert(NODES), node_rows)
        conn.execute(insert(DEVICES), device_rows)
    engine.dispose()


def timed(client: httpx.Client, path: str, rounds: int) -> dict[str, Any]:
    client.get(path).raise_for_status()  # warm-up
    samples, size = [], 0
    for _ in range(rounds):
        start = time.perf_counter()
        response = client.get(path)
        samples.append((time.perf_counter() - start) * 1000)
        response.raise_for_status()
        size = len(response.content)
    samples.sort()
    return {
        "p50_ms": round(statistics.median(samples), 1),
        "p99_ms": round(samples[min(len(samples) - 1, int(0.99 * len(samples)))], 1),
        "bytes": size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        database_url = f"sqlite:///{tmp / 'nodes.db'}"
        proc, url = start_server(tmp, database_url)  # migrates and bootstraps the database
        try:
            seed(database_url, args.nodes, time.time())
            token = (tmp / "admin-token").read_text().strip()
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
                result = {
                    "nodes": args.nodes,
                    "devices": args.nodes * 8,
                    "list": timed(client, "/v1/nodes", args.rounds),
                    "one": timed(client, "/v1/nodes/h100-00007", args.rounds * 10),
                }
        finally:
            proc.terminate()
            proc.wait(10)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
