"""Dashboard benchmark (issue 19): page render latency with 10,000 jobs and 1,000 nodes in the database, and the
server CPU that 100 open dashboards' event streams cost.

The API runs as its own process (``python -m api.app``: uvloop, httptools, one write per response) over SQLite.
The database is filled directly (bulk inserts of the API's own tables): 1,000 agent nodes × 8 devices with a
telemetry sample each, 10,000 jobs of five tenants (20 % running with placements and ledger start rows, 10 %
pending with reasons, the rest finished with ledger stop rows) and their events. Then, through the real login:

* **render** — every page of the tenant and center views, fetched sequentially ``--rounds`` times each (the full
  HTML a browser would get; the fragments a live refresh fetches are timed too); p50/p99/max per page.
* **streams** — ``--streams`` SSE connections (one signed-in session each) held open for ``--window-s``
  seconds while a job changes state every second, against the same window with no stream open; the server's
  CPU time (psutil) over each window gives its CPU share (100 % = one core).

    .venv/bin/python benchmarks/dashboard.py                       # defaults: 10,000 jobs, 1,000 nodes
    .venv/bin/python benchmarks/dashboard.py --rounds 20 --streams 100 --window-s 20
    .venv/bin/python benchmarks/dashboard.py --pages "/ui/admin,/ui/admin?panel=grid" --rounds 90 --streams 0

Prints one JSON document; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
from sqlalchemy import insert

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from api.db import make_engine  # noqa: E402
from api.tables import DEVICES, JOB_EVENTS, JOBS, LEDGER, NODES  # noqa: E402
from scheduler.catalog import SEEDS_DIR  # noqa: E402

MODELS = (("H100", 500, "NVIDIA"), ("Ascend910B", 400, "Huawei"), ("MLU590", 100, "Cambricon"))
TENANTS = (
    ("acme", "acme"),
    ("sme-vision", "sme-vision"),
    ("univ-a", "univ-a"),
    ("gov-bureau", "gov-bureau"),
    ("student-1", "student-1"),
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def seed(database_url: str, jobs: int, now: float, rng: random.Random) -> dict[str, Any]:
    """Nodes, devices, jobs, events and ledger rows, inserted in bulk."""
    engine = make_engine(database_url)
    nodes: list[dict[str, Any]] = []
    devices: list[dict[str, Any]] = []
    free: dict[str, list[tuple[str, int]]] = {}
    index = 0
    for model, count, vendor in MODELS:
        for n in range(count):
            node_id = f"{model.lower()}-{n:04d}"
            nodes.append(
                {
                    "id": node_id,
                    "hostname": node_id,
                    "model": model,
                    "vendor": vendor,
                    "pool": f"bj1/{model}",
                    "site": "bj1",
                    "region": "north",
                    "tier": "cloud",
                    "island": f"{model}-isl-{n // 32}",
                    "switch": f"{model}-sw-{n // 8}",
                    "devices": 8,
                    "cpu_milli": 128_000,
                    "memory_mib": 1 << 20,
                    "labels": {},
                    "state": "ready",
                    "source": "agent",
                    "registered_at": now - 86400,
                    "last_heartbeat": now,
                    "agent_version": "bench",
                    "last_seq": 1,
                }
            )
            for d in range(8):
                devices.append(
                    {
                        "node_id": node_id,
                        "index": d,
                        "uuid": f"{node_id}-{d}",
                        "model": model,
                        "memory_mib": 81920.0,
                        "healthy": rng.random() > 0.01,
                        "health_reason": "",
                        "updated_at": now,
                        "telemetry": {
                            "utilization_pct": rng.choice([0.0, 35.0, 97.0]),
                            "memory_used_mib": 4096.0,
                            "power_w": 350.0,
                            "temperature_c": 55.0,
                            "sampled_at": now,
                            "received_at": now,
                            "fields_unavailable": [],
                            "xid_events": [],
                        },
                    }
                )
                free.setdefault(model, []).append((node_id, d))
            index += 1
    rows: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    ledger: list[dict[str, Any]] = []
    for i in range(jobs):
        tenant, queue = TENANTS[i % len(TENANTS)]
        model = ("H100", "Ascend910B", "MLU590")[i % 3] if tenant != "gov-bureau" else "Ascend910B"
        submitted = now - 30 * 86400 * (jobs - i) / jobs
        job_id = f"j{int(submitted * 1000):011x}{i:08x}"
        roll = i % 10
        state = "running" if roll < 2 else "pending" if roll == 2 else ("succeeded", "failed", "cancelled")[i % 3]
        placement = None
        started = finished = None
        reasons: list[dict[str, Any]] = []
        if state == "running" and len(free[model]) >= 2:
            (n1, d1), (n2, d2) = free[model].pop(), free[model].pop()
            if n1 != n2:
                free[model].append((n2, d2))
                workers = [
                    {"rank": 0, "node": n1, "devices": [d1], "milli": 1000, "cpu_milli": 1000, "memory_mib": 4096}
                ]
            else:
                workers = [
                    {
                        "rank": 0,
                        "node": n1,
                        "devices": sorted([d1, d2]),
                        "milli": 1000,
                        "cpu_milli": 1000,
                        "memory_mib": 4096,
                    }
                ]
            placement = {"model": model, "pool": f"bj1/{model}", "topology": "node", "workers": workers}
            started = now - rng.uniform(60, 86400)
            count = sum(len(w["devices"]) for w in workers)
            ledger.append(
                {
                    "kind": "start",
                    "job_id": job_id,
                    "tenant": tenant,
                    "queue": queue,
                    "user": "bench",
                    "model": model,
                    "pool": f"bj1/{model}",
                    "devices": float(count),
                    "at": started,
                    "price_per_ncu_hour": 12.0,
                    "domestic": model != "H100",
                }
            )
        elif state == "running":
            state = "pending"
        if state == "pending":
            reasons = [
                {
                    "code": rng.choice(["no-capacity", "quota", "fragmentation"]),
                    "message": "bench",
                    "pool": f"bj1/{model}",
                    "detail": {},
                }
            ]
        if state in ("succeeded", "failed", "cancelled"):
            started = submitted + rng.uniform(1, 600)
            finished = started + rng.uniform(60, 7200)
            seconds = finished - started
            ledger.append(
                {
                    "kind": "stop",
                    "job_id": job_id,
                    "tenant": tenant,
                    "queue": queue,
                    "user": "bench",
                    "model": model,
                    "pool": f"bj1/{model}",
                    "devices": 2.0,
                    "at": finished,
                    "seconds": seconds,
                    "ncu_hours": 2 * seconds / 3600,
                    "price_per_ncu_hour": 12.0,
                    "charge": 24 * seconds / 3600,
                    "domestic": model != "H100",
                }
            )
        spec = {
            "name": f"bench-{i}",
            "kind": "training",
            "workers": 1,
            "devices_per_worker": 2,
            "models": [model],
            "job_class": "generic",
            "entrypoint": "python train.py",
            "queue": queue,
        }
        rows.append(
            {
                "id": job_id,
                "tenant": tenant,
                "user": f"bench@{tenant}",
                "queue": queue,
                "name": f"bench-{i}",
                "kind": "training",
                "state": state,
                "version": 1,
                "priority": 100,
                "spec": spec,
                "submitted_at": submitted,
                "updated_at": finished or started or submitted,
                "started_at": started,
                "finished_at": finished,
                "attempt": 0,
                "placement": placement,
                "reasons": reasons,
                "estimated_start": None,
                "estimated_finish": None,
                "message": "",
                "exit_code": None,
                "last_checkpoint_at": None,
                "idempotency_key": None,
                "request_hash": None,
            }
        )
        events.append({"job_id": job_id, "at": submitted, "kind": "submitted", "message": "bench", "data": {}})
        if started is not None:
            events.append({"job_id": job_id, "at": started, "kind": "started", "message": "bench", "data": {}})
    with engine.begin() as conn:
        conn.execute(insert(NODES), nodes)
        conn.execute(insert(DEVICES), devices)
        conn.execute(insert(JOBS), rows)
        conn.execute(insert(JOB_EVENTS), events)
        conn.execute(insert(LEDGER), ledger)
    engine.dispose()
    running = [r["id"] for r in rows if r["state"] == "running" and r["tenant"] == "acme"]
    return {
        "nodes": len(nodes),
        "devices": len(devices),
        "jobs": len(rows),
        "events": len(events),
        "ledger": len(ledger),
        "acme_running": running,
    }


def start_server(tmp: Path, database_url: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "ZHISUAN_DATABASE_URL": database_url,
        "ZHISUAN_POLICY_FILE": str(SEEDS_DIR / "policy.yaml"),
        "ZHISUAN_RATE_LIMIT": "off",
        "ZHISUAN_ADMIN_TOKEN_FILE": str(tmp / "admin-token"),
        "ZHISUAN_HEARTBEAT_INTERVAL_S": "86400",  # the seeded nodes' heartbeats stay fresh for the run
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "api.app", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(tmp / "server.log").open("ab"),
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    else:
        proc.kill()
        raise RuntimeError("the API server did not get ready")
    return proc, url


def login(url: str, token: str) -> httpx.Client:
    client = httpx.Client(base_url=url, timeout=60, follow_redirects=False)
    response = client.post("/ui/login", data={"token": token}, headers={"Origin": url})
    assert response.status_code == 303, response.text
    return client


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p99_ms": round(p99 * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
        "n": len(ordered),
    }


def render(client: httpx.Client, pages: list[str], rounds: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for page in pages:
        client.get(page)  # warm
        times = []
        size = 0
        for _ in range(rounds):
            start = time.perf_counter()
            response = client.get(page)
            times.append(time.perf_counter() - start)
            assert response.status_code == 200, (page, response.status_code, response.text[:200])
            size = len(response.content)
        out[page] = {**percentiles(times), "bytes": size}
    return out


async def hold_streams(url: str, cookies: list[str], seconds: float) -> int:
    received = 0

    async def one(cookie: str) -> None:
        nonlocal received
        async with httpx.AsyncClient(base_url=url, cookies={"zs_ui": cookie}, timeout=None) as client:
            try:
                async with asyncio.timeout(seconds):
                    async with client.stream("GET", "/ui/events") as stream:
                        async for line in stream.aiter_lines():
                            if line.startswith("event:"):
                                received += 1
            except TimeoutError:
                pass

    await asyncio.gather(*(one(c) for c in cookies))
    return received


def churn(url: str, token: str, stop_at: float, job_ids: list[str]) -> int:
    """A job changes state every second (cancelled by the API), as a busy center's jobs do."""
    changes = 0
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        while time.monotonic() < stop_at and job_ids:
            client.post(f"/v1/jobs/{job_ids.pop()}/cancel")
            changes += 1
            time.sleep(1.0)
    return changes


def cpu_window(
    proc: psutil.Process, seconds: float, url: str, admin: str, jobs: list[str], cookies: list[str]
) -> dict[str, Any]:
    import threading

    before = proc.cpu_times()
    start = time.monotonic()
    result: dict[str, int] = {}
    thread = threading.Thread(target=lambda: result.update(changes=churn(url, admin, start + seconds, jobs)))
    thread.start()
    received = asyncio.run(hold_streams(url, cookies, seconds)) if cookies else time.sleep(seconds) or 0
    thread.join()
    wall = time.monotonic() - start
    after = proc.cpu_times()
    cpu = (after.user - before.user) + (after.system - before.system)
    return {
        "streams": len(cookies),
        "wall_s": round(wall, 1),
        "server_cpu_s": round(cpu, 2),
        "cpu_share_pct": round(100 * cpu / wall, 1),
        "job_changes": result.get("changes", 0),
        "events_received": received,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--window-s", type=float, default=20.0)
    parser.add_argument(
        "--pages", default="", help="comma-separated pages to time (default: every page); --streams 0 skips streams"
    )
    args = parser.parse_args()
    rng = random.Random(19)
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        database_url = f"sqlite:///{tmp / 'zhisuan.db'}"
        # Create the schema and the bootstrap admin first (the server migrates at start), then seed.
        proc, url = start_server(tmp, database_url)
        proc.terminate()
        proc.wait(30)
        admin = (tmp / "admin-token").read_text().strip()
        started = time.monotonic()
        seeded = seed(database_url, args.jobs, time.time(), rng)
        seed_s = time.monotonic() - started
        proc, url = start_server(tmp, database_url)
        try:
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin}"}, timeout=30) as api:
                api.post("/v1/users", json={"name": "bench", "tenant": "acme", "role": "tenant-admin"})
                tenant_token = api.post("/v1/tokens", json={"user": "bench@acme"}).json()["token"]
            tenant = login(url, tenant_token)
            center = login(url, admin)
            job_id = seeded["acme_running"][0]
            tenant_pages = [
                "/ui/",
                "/ui/jobs",
                "/ui/jobs?state=running",
                f"/ui/jobs/{job_id}",
                "/ui/usage",
                "/ui/capacity",
                "/ui/services",
                "/ui/tokens",
                "/ui/jobs?panel=table",
                "/ui/?panel=cards",
            ]
            center_pages = [
                "/ui/admin",
                "/ui/admin/jobs",
                "/ui/admin/queues",
                "/ui/admin/nodes",
                "/ui/admin/nodes/h100-0001",
                "/ui/admin/billing",
                "/ui/admin?panel=grid",
            ]
            if args.pages:
                wanted = set(args.pages.split(","))
                tenant_pages = [p for p in tenant_pages if p in wanted]
                center_pages = [p for p in center_pages if p in wanted]
            results = {
                "tenant": render(tenant, tenant_pages, args.rounds),
                "center": render(center, center_pages, max(5, args.rounds // 3)),
            }
            everything = [p for view in results.values() for p in view.values()]
            worst = max(everything, key=lambda r: r["p99_ms"])
            streams: dict[str, Any] = {}
            if args.streams > 0:
                cookies = [login(url, tenant_token).cookies["zs_ui"] for _ in range(args.streams)]
                server = psutil.Process(proc.pid)
                jobs = list(seeded["acme_running"][1:])
                idle = cpu_window(server, args.window_s, url, admin, jobs, [])
                busy = cpu_window(server, args.window_s, url, admin, jobs, cookies)
                streams = {
                    "without": idle,
                    "with": busy,
                    "added_cpu_share_pct": round(busy["cpu_share_pct"] - idle["cpu_share_pct"], 1),
                }
            print(
                json.dumps(
                    {
                        "seeded": {k: v for k, v in seeded.items() if k != "acme_running"},
                        "seed_s": round(seed_s, 1),
                        "render": results,
                        "worst_p99_ms": worst["p99_ms"],
                        "streams": streams,
                        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
                    },
                    indent=2,
                )
            )
        except Exception:
            print((tmp / "server.log").read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
