"""Submit -> running latency through the whole product, against Ray's own Jobs API on the same cluster.

Starts what ``zhisuan up`` starts (:func:`api.up.running`): a local Ray cluster (head with the dashboard +
the two emulated 4×H100 nodes of ``benchmarks/executor.py``), the API (uvicorn, SQLite), the node agents and the
scheduler service. Per run, a tenant submits with the SDK (``ZhisuanClient.submit``) and polls
``GET /v1/jobs/{id}`` every 20 ms until ``state == running`` (every worker's process has started); the job is
then cancelled and the next run waits until it is ``cancelled`` (its devices free). The same shapes go through
Ray's Jobs API (``JobSubmissionClient.submit_job`` until ``RUNNING``, one submission per worker pinned to the
same node; :func:`benchmarks.executor.bench_ray_jobs`)::

    python benchmarks/e2e.py --runs 10          # prints one JSON document

Shapes: ``one_worker`` (1 worker × 1 device) and ``gang4_2nodes`` (4 workers × 2 devices over the 2 nodes);
the entrypoint is ``sleep 30``. The breakdown splits each run at the API's ``submitted_at`` (accepted), the
job's ``started_at`` (the service committed its start decision) and the ``running`` event (the service saw every
worker running): ``accept`` = client submit -> accepted, ``decide`` = accepted -> decided, ``launch`` = decided ->
running event, ``observe`` = running event -> the client's poll saw it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from api.client import ZhisuanClient  # noqa: E402
from api.settings import Settings  # noqa: E402
from api.up import developer_login, running  # noqa: E402
from benchmarks.executor import ENTRYPOINT, NODES, SHAPES, bench_ray_jobs, summary  # noqa: E402
from scheduler.live.service import ServiceConfig  # noqa: E402
from scheduler.model import Job  # noqa: E402

POLL_S = 0.02
TARGET_P50_S = {"one_worker": 0.5, "gang4_2nodes": 1.5}
TARGET_SPEEDUP = 3.0


def cluster_file(path: Path) -> Path:
    """The executor benchmark's nodes as a cluster file (same ids: Ray Jobs pins to them by label)."""
    document = {
        "name": "bench",
        "sites": {"bench": {"region": "bench", "tier": "cloud"}},
        "nodes": [
            {
                "id": n.id,
                "model": n.model,
                "site": n.site,
                "devices": n.devices,
                "cpu_cores": n.cpu_milli / 1000,
                "memory_gib": n.memory_mib / 1024,
            }
            for n in NODES
        ],
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def job_spec(shape: Job, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "workers": shape.workers,
        "devices_per_worker": shape.devices_per_worker,
        "models": list(shape.models),
        "cpus_per_worker": 0.5,
        "memory_gib_per_worker": 0.25,
        "entrypoint": ENTRYPOINT,
    }


def wait_state(client: ZhisuanClient, job_id: str, states: set[str], timeout_s: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        job = client.get_job(job_id)
        if job.state in states:
            return job
        if job.terminal:
            raise RuntimeError(f"job {job_id} ended as {job.state} before {sorted(states)}: {job.message}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job.state} after {timeout_s} s")
        time.sleep(POLL_S)


def bench_product(client: ZhisuanClient, shape: Job, runs: int, tag: str) -> tuple[list[float], dict[str, list[float]]]:
    samples: list[float] = []
    parts: dict[str, list[float]] = {"accept": [], "decide": [], "launch": [], "observe": []}
    for run in range(runs):
        sent_wall = time.time()
        began = time.perf_counter()
        job = client.submit(job_spec(shape, f"bench-{tag}-{run}"))
        job = wait_state(client, job.id, {"running"})
        samples.append(time.perf_counter() - began)
        seen_wall = sent_wall + samples[-1]
        running_at = next(e.at for e in client.events(job.id) if e.kind == "running")
        if job.submitted_at is not None and job.started_at is not None:
            parts["accept"].append(job.submitted_at - sent_wall)
            parts["decide"].append(job.started_at - job.submitted_at)
            parts["launch"].append(running_at - job.started_at)
            parts["observe"].append(seen_wall - running_at)
        client.cancel(job.id)
        wait_state(client, job.id, {"cancelled"})
    return samples, parts


def breakdown(parts: dict[str, list[float]]) -> dict[str, float]:
    return {f"{k}_p50_s": round(statistics.median(v), 4) for k, v in parts.items() if v}


def main() -> int:
    parser = argparse.ArgumentParser(description="submit -> running latency through the API, vs Ray Jobs API")
    parser.add_argument("--runs", type=int, default=10, help="measured runs per job shape and system")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured runs first (per shape and system)")
    parser.add_argument(
        "--interval", type=float, default=ServiceConfig().interval_s, help="scheduler service cycle (seconds)"
    )
    parser.add_argument("--no-jobs-api", action="store_true", help="measure Zhisuan only")
    args = parser.parse_args()

    jobs_api_missing = None
    if not args.no_jobs_api:
        try:
            import aiohttp  # noqa: F401  (the dashboard's job module needs ray[default])
        except ImportError:
            jobs_api_missing = "Ray Jobs API needs the full dashboard: pip install 'ray[default]==2.60.0'"
    include_dashboard = not args.no_jobs_api and jobs_api_missing is None
    result: dict[str, Any] = {
        "benchmark": "submit (SDK, HTTP) -> job running (GET /v1/jobs/{id} every 20 ms)",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "cluster": "head (dashboard) + 2 emulated nodes of 4 x H100, one machine; API on SQLite",
        "entrypoint": ENTRYPOINT,
        "service_interval_s": args.interval,
        "runs": args.runs,
        "warmup": args.warmup,
    }
    began = time.perf_counter()
    product: dict[str, Any] = {}
    jobs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="zs-bench-e2e-") as tmp:
        settings = Settings(database_url=f"sqlite:///{tmp}/zhisuan.db", rate_per_s=0.0, rate_burst=0.0)
        with running(
            settings,
            port=free_port(),
            cluster_file=cluster_file(Path(tmp) / "cluster.yaml"),
            service_config=ServiceConfig(interval_s=args.interval),
            include_dashboard=include_dashboard,
            log_dir=str(Path(tmp) / "logs"),
        ) as run:
            result["start_s"] = round(time.perf_counter() - began, 2)
            assert run.admin_token is not None
            with ZhisuanClient(run.url, developer_login(run.url, run.admin_token)) as client:
                for tag, shape in SHAPES.items():
                    bench_product(client, shape, args.warmup, f"warm-{tag}")
                    samples, parts = bench_product(client, shape, args.runs, tag)
                    product[tag] = {**summary(samples), "breakdown": breakdown(parts)}
                    dashboard = run.cluster.dashboard_url if run.cluster is not None else None
                    if include_dashboard and dashboard:
                        bench_ray_jobs(dashboard, shape, args.warmup, f"e2e-warm-{tag}")
                        jobs[tag] = summary(bench_ray_jobs(dashboard, shape, args.runs, f"e2e-{tag}"))
    result["zhisuan"] = product
    result["targets"] = {
        f"{tag}_p50_le_{limit}s": product[tag]["p50_s"] <= limit for tag, limit in TARGET_P50_S.items()
    }
    if jobs:
        result["ray_jobs"] = jobs
        for q in ("p50", "p99"):
            result[f"speedup_{q}"] = {t: round(jobs[t][f"{q}_s"] / product[t][f"{q}_s"], 2) for t in jobs}
        for tag in jobs:
            result["targets"][f"{tag}_speedup_p50_ge_{TARGET_SPEEDUP:g}x"] = (
                result["speedup_p50"][tag] >= TARGET_SPEEDUP
            )
    else:
        result["ray_jobs"] = {"unavailable": jobs_api_missing or "skipped (--no-jobs-api) or no dashboard URL"}
    result["total_s"] = round(time.perf_counter() - began, 1)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
