"""Launch -> all-workers-running latency: Zhisuan's RayExecutor against Ray's own Jobs API, same cluster.

Starts a local Ray cluster (head with the dashboard + 2 emulated 4×H100 nodes), places each job with the real
core, and measures, per run, the wall time from the launch call until every worker's process is running:

- ``zhisuan`` (launch mode ``supervisor``, the default): ``RayExecutor.launch`` — a pinned placement group, and
  the ranks handed to the long-lived supervisor actor of each node, which forks each rank's entrypoint once the
  rank's bundle is reserved on that node — until ``status()`` reports ``running``;
- ``zhisuan_actor`` (launch mode ``actor``, the former design): the same, with one new detached actor per rank
  (a fresh Python worker process each) spawning the entrypoint;
- ``ray_jobs``: ``JobSubmissionClient.submit_job`` (one submission per worker, pinned to the same node with
  ``entrypoint_label_selector`` and holding the same devices) until ``get_job_status`` is ``RUNNING`` for all.

It also times ``RayExecutor.poll()`` while each job runs (``poll_ms``: the scheduler service calls it every
100-200 ms). The entrypoint is ``sleep 30`` (trivial); each job is stopped and its resources freed before the
next run, which is launched at once on the same devices::

    python benchmarks/executor.py --runs 10          # prints one JSON document
    python benchmarks/executor.py --runs 10 --no-jobs-api

Ray Jobs needs the full dashboard (``pip install 'ray[default]'``); without it the JSON says so.

Measured on the 2-core development machine, shared with other work (2026-11-23, ``--runs 10``), launch ->
all running, p50 / p99 in seconds:

=============  ================  ==============  ==============  ======================
job            supervisor        actor (former)  Ray Jobs API    Jobs API / supervisor
=============  ================  ==============  ==============  ======================
1 worker       0.027 / 0.046     1.43 / 2.89     4.73 / 9.59     178× / 208×
4-worker gang  0.170 / 0.300     6.81 / 7.64     6.80 / 7.82     40× / 26×
=============  ================  ==============  ==============  ======================

``poll()`` with the job running: 2.4 ms / 6.0 ms (1 worker), 5.6 ms / 34 ms (gang). The gang's ~0.1 s is mostly
waiting for Ray to give back the devices the previous run just released (see ``RayExecutor._await_release``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scheduler.core import SchedulerCore
from scheduler.live.executors.base import LaunchRequest, Phase
from scheduler.live.executors.ray.executor import RayExecutor
from scheduler.live.localcluster import LocalCluster
from scheduler.model import Job, Node, Placement
from scheduler.state import ClusterState

NODES = [
    Node(id=f"bench-h100-{i}", model="H100", devices=4, cpu_milli=4000, memory_mib=4096, site="bench") for i in range(2)
]
SHAPES = {
    "one_worker": Job(id="x", workers=1, devices_per_worker=1, models=("H100",)),
    "gang4_2nodes": Job(id="x", workers=4, devices_per_worker=2, models=("H100",)),
}
ENTRYPOINT = "sleep 30"
POLL_S = 0.005


def placement_for(shape: Job, job_id: str) -> Placement:
    decision = SchedulerCore().step(ClusterState(NODES), [shape.model_copy(update={"id": job_id})], now=0.0)[0]
    assert decision.placement is not None, decision.reasons
    return decision.placement


def summary(samples: list[float]) -> dict[str, Any]:
    ordered = sorted(samples)
    p99_index = min(len(ordered) - 1, max(0, round(0.99 * len(ordered) + 0.5) - 1))
    return {
        "n": len(ordered),
        "p50_s": round(statistics.median(ordered), 4),
        "p99_s": round(ordered[p99_index], 4),
        "mean_s": round(statistics.fmean(ordered), 4),
        "min_s": round(ordered[0], 4),
        "max_s": round(ordered[-1], 4),
    }


def until(check: Callable[[], bool], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark step timed out")
        time.sleep(POLL_S)


def bench_zhisuan(ex: RayExecutor, shape: Job, runs: int, tag: str, polls: list[float] | None = None) -> list[float]:
    samples = []
    for run in range(runs):
        job_id = f"bench-{tag}-{run}-{os.getpid()}"
        req = LaunchRequest(job_id, 0, placement_for(shape, job_id), ENTRYPOINT)
        began = time.perf_counter()
        ex.launch(req)

        def running(job_id: str = job_id) -> bool:
            status = ex.status(job_id)
            if status is not None and status.terminal:
                raise RuntimeError(f"{job_id} ended before running: {status}")
            return status is not None and status.phase is Phase.RUNNING

        until(running)
        samples.append(time.perf_counter() - began)
        if polls is not None:
            for _ in range(5):
                began = time.perf_counter()
                ex.poll()
                polls.append(time.perf_counter() - began)
        ex.stop(job_id, "benchmark run done")
        ex.forget(job_id)
    return samples


def bench_ray_jobs(dashboard_url: str, shape: Job, runs: int, tag: str) -> list[float]:
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(dashboard_url)
    samples = []
    for run in range(runs):
        job_id = f"bench-jobs-{tag}-{run}-{os.getpid()}"
        placement = placement_for(shape, job_id)
        began = time.perf_counter()
        ids = [
            client.submit_job(
                entrypoint=ENTRYPOINT,
                entrypoint_num_gpus=len(worker.devices) * worker.milli / 1000,
                entrypoint_label_selector={"zhisuan.io/node": worker.node},
            )
            for worker in placement.workers
        ]

        def all_running(ids: list[str] = ids) -> bool:
            states = [client.get_job_status(i) for i in ids]
            if any(s in (JobStatus.FAILED, JobStatus.STOPPED) for s in states):
                raise RuntimeError(f"Ray job ended before running: {states}")
            return all(s == JobStatus.RUNNING for s in states)

        until(all_running)
        samples.append(time.perf_counter() - began)
        for i in ids:
            client.stop_job(i)
        for i in ids:
            until(lambda i=i: client.get_job_status(i).is_terminal())  # type: ignore[misc]
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description="launch -> running latency, RayExecutor vs Ray Jobs API")
    parser.add_argument("--runs", type=int, default=10, help="measured runs per job shape and system")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured runs first (per shape and system)")
    parser.add_argument("--no-jobs-api", action="store_true", help="measure RayExecutor only")
    args = parser.parse_args()

    jobs_api_missing = None
    if not args.no_jobs_api:
        try:
            import aiohttp  # noqa: F401  (the dashboard's job module needs ray[default])
        except ImportError:
            jobs_api_missing = "Ray Jobs API needs the full dashboard: pip install 'ray[default]==2.60.0'"
    result: dict[str, Any] = {
        "benchmark": "executor launch -> all workers running",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "cluster": "head (dashboard) + 2 emulated nodes of 4 x H100, one machine",
        "entrypoint": ENTRYPOINT,
        "runs": args.runs,
        "warmup": args.warmup,
    }
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="zs-bench-") as tmp:
        include_dashboard = not args.no_jobs_api and jobs_api_missing is None
        with LocalCluster(NODES, include_dashboard=include_dashboard, work_dir=Path(tmp) / "ray") as cluster:
            result["cluster_start_s"] = round(time.perf_counter() - began, 2)
            log_dir = str(Path(tmp) / "logs")
            ex = RayExecutor(cluster.address, log_dir=log_dir, stop_grace_s=2.0)
            ex.start_supervisors(wait_s=60)
            measured: dict[str, Any] = {}
            jobs: dict[str, Any] = {}
            for tag, shape in SHAPES.items():
                bench_zhisuan(ex, shape, args.warmup, f"warm-{tag}")
                polls: list[float] = []
                measured[tag] = summary(bench_zhisuan(ex, shape, args.runs, tag, polls))
                measured[tag]["poll_ms"] = {
                    k.replace("_s", ""): round(v * 1000, 2) if k.endswith("_s") else v
                    for k, v in summary(polls).items()
                }
                if include_dashboard and cluster.dashboard_url:
                    bench_ray_jobs(cluster.dashboard_url, shape, args.warmup, f"warm-{tag}")
                    jobs[tag] = summary(bench_ray_jobs(cluster.dashboard_url, shape, args.runs, tag))
            ex.close()
    result["zhisuan"] = measured
    if jobs:
        result["ray_jobs"] = jobs
        for q in ("p50", "p99"):
            result[f"speedup_{q}"] = {
                t: round(jobs[t][f"{q}_s"] / measured[t][f"{q}_s"], 2) for t in jobs if t in measured
            }
    else:
        result["ray_jobs"] = {"unavailable": jobs_api_missing or "skipped (--no-jobs-api) or no dashboard URL"}
    result["total_s"] = round(time.perf_counter() - began, 1)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
