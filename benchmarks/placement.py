"""Placement benchmark: 10,000 nodes × 8 devices over 6 models, 50,000 queued jobs of a realistic size mix.

Prints one JSON object: decisions/s, p50/p99/max decision latency, peak RSS, the share of jobs started, and the
same decisions made by the full-scan placer (on a sample, since it is ~1000× slower) as a speed ratio; then the
ETA of every job the full step left pending, and that ETA against the exact forecast on a smaller cluster.

    .venv/bin/python benchmarks/placement.py                    # the issue's scenario
    .venv/bin/python benchmarks/placement.py --nodes 1000 --jobs 5000 --scorer binpack

Targets (issue 2, one core of the 2-core dev machine): ≥ 20,000 decisions/s, p99 ≤ 1 ms, RSS ≤ 1 GiB.
The size mix follows the public traces: most jobs use one device or a fraction of one (Alibaba openb: ~90% of
pods ask for ≤ 1 GPU; Philly: 93% of jobs use one GPU) while a tail of 16-256-device gangs holds much of the
device time.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import random
import resource
import statistics
import sys
import time

from scheduler.core import CoreConfig, SchedulerCore
from scheduler.eta import aggregate_forecast, exact_forecast
from scheduler.model import DecisionKind, Job, JobKind, Node
from scheduler.naive import FullScanPlacer
from scheduler.placement import PlacementConfig
from scheduler.state import ClusterState
from scheduler.tenancy import QueuePolicy, parse_policy
from scheduler.throughput import JobClass

#: (model, share of nodes, site, CPU cores, memory GiB) — 8-device servers as vendors ship them.
POOLS = [
    ("H100", 0.20, "bj1", 192, 2048),
    ("A100", 0.20, "bj1", 128, 1024),
    ("H20", 0.10, "sh1", 192, 2048),
    ("Ascend910B", 0.30, "gz1", 192, 1536),
    ("MLU590", 0.10, "gz1", 128, 1024),
    ("P800", 0.10, "gz1", 128, 1024),
]

#: (devices per worker, workers range, weight): fractions and single devices dominate, gangs are the tail.
SIZE_MIX = [
    (0.1, (1, 1), 6),
    (0.25, (1, 1), 8),
    (0.5, (1, 2), 12),
    (1, (1, 1), 34),
    (2, (1, 1), 12),
    (4, (1, 1), 8),
    (8, (1, 1), 10),
    (8, (2, 4), 6),  # 16-32 devices
    (8, (5, 16), 3),  # 40-128 devices
    (8, (17, 32), 1),  # 136-256 devices
]

CLASSES = [
    (JobClass.LLM_PRETRAIN, 10),
    (JobClass.LLM_FINETUNE, 25),
    (JobClass.CV_TRAIN, 20),
    (JobClass.RECSYS_TRAIN, 10),
    (JobClass.LLM_INFERENCE, 25),
    (JobClass.CV_INFERENCE, 10),
]


def build_cluster(node_count: int) -> list[Node]:
    nodes: list[Node] = []
    for model, share, site, cores, mem_gib in POOLS:
        count = round(node_count * share)
        for i in range(count):
            node_id = f"{site}-{model.lower()}-{i:05d}"
            nodes.append(
                Node(
                    id=node_id,
                    model=model,
                    devices=8,
                    cpu_milli=cores * 1000,
                    memory_mib=mem_gib * 1024,
                    site=site,
                    switch=f"{site}-{model.lower()}-sw{i // 32:04d}",
                )
            )
    return nodes


def build_jobs(count: int, seed: int) -> list[Job]:
    rng = random.Random(seed)
    sizes = [s for s, _, _ in [(m, r, w) for m, r, w in SIZE_MIX]]
    size_weights = [w for _, _, w in SIZE_MIX]
    ranges = [r for _, r, _ in SIZE_MIX]
    classes = [c for c, _ in CLASSES]
    class_weights = [w for _, w in CLASSES]
    pinned_sets = [("H100",), ("H100", "H20"), ("Ascend910B",), ("A100", "H100"), ("MLU590", "P800")]
    jobs: list[Job] = []
    for i in range(count):
        pick = rng.choices(range(len(sizes)), size_weights)[0]
        devices, (lo, hi) = sizes[pick], ranges[pick]
        workers = rng.randint(lo, hi)
        job_class = rng.choices(classes, class_weights)[0]
        inference = not job_class.is_training
        cpu = max(1, round(devices * 12)) * 1000
        jobs.append(
            Job(
                id=f"job-{i:06d}",
                tenant=f"tenant-{rng.randrange(40):02d}",
                kind=JobKind.INFERENCE if inference else JobKind.TRAINING,
                job_class=job_class,
                workers=workers,
                devices_per_worker=devices,
                cpu_milli_per_worker=cpu,
                memory_mib_per_worker=max(4, round(devices * 96)) * 1024,
                models=rng.choice(pinned_sets) if rng.random() < 0.4 else (),
                submit_time=float(i),
                runtime_s=rng.choice([600, 1800, 3600, 4 * 3600, 24 * 3600]),
            )
        )
    return jobs


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))]


def run_indexed(nodes: list[Node], jobs: list[Job], scorer: str) -> dict[str, float | int]:
    state = ClusterState(nodes)
    core = SchedulerCore(CoreConfig(placement=PlacementConfig(scorer=scorer)))
    ordered = core.order(jobs)
    latencies: list[float] = []
    started = 0
    clock = time.perf_counter
    gc.collect()
    gc.disable()  # measure the algorithm, not the collector's pauses over 50k live objects
    begin = clock()
    engine = core.placement
    for job in ordered:
        # Issue 2 measures the placement engine: find a placement (or the reasons) and allocate it.
        t0 = clock()
        result = engine.place(state, job)
        if result.placement is not None:
            state.allocate(result.placement)
            engine.observe(job)
            started += 1
        latencies.append(clock() - t0)
    total = clock() - begin
    gc.enable()
    latencies.sort()
    capacity = sum(p.capacity_milli for p in state.pools.values())
    free = sum(p.free_milli for p in state.pools.values())
    return {
        "decisions": len(ordered),
        "started": started,
        "seconds": round(total, 3),
        "decisions_per_s": round(len(ordered) / total),
        "p50_ms": round(percentile(latencies, 0.50) * 1e3, 4),
        "p99_ms": round(percentile(latencies, 0.99) * 1e3, 4),
        "max_ms": round(latencies[-1] * 1e3, 3),
        "mean_ms": round(statistics.fmean(latencies) * 1e3, 4),
        "device_allocation": round(1 - free / capacity, 4),
    }


class TimedCore(SchedulerCore):
    """The real core; the benchmark only notes the time at which each job's decision begins."""

    marks: list[float]

    def _make_order(self, jobs, share):  # type: ignore[no-untyped-def]
        self.marks = []
        clock = time.perf_counter
        for job in super()._make_order(jobs, share):
            self.marks.append(clock())
            yield job


def build_policy(tenants: int, scale: float = 1.0) -> QueuePolicy:
    """Every tenant gets a queue with an NCU share; a few premium tenants also hold H100 guarantees.

    The amounts suit the 10,000-node cluster; ``scale`` shrinks them with a smaller one.
    """
    queues: dict[str, object] = {}
    tenants_doc: dict[str, object] = {}
    for t in range(tenants):
        name = f"tenant-{t:02d}"
        tenants_doc[name] = {"weight": 2 if t % 5 == 0 else 1, "tier": "premium" if t % 5 == 0 else "standard"}
        quota: dict[str, object] = {"ncu": {"deserved": 2500 * scale, "limit": 8000 * scale}}
        if t % 10 == 0:
            quota["H100"] = {"guarantee": 64 * scale, "deserved": 256 * scale}
        queues[name] = {"tenant": name, "quota": quota}
    return parse_policy({"tenants": tenants_doc, "queues": queues}, "<benchmark>")


def run_full_step(nodes: list[Node], jobs: list[Job], scorer: str, eta_events: int) -> dict[str, object]:
    """One ``SchedulerCore.step`` over all jobs with quotas, DRF, preemption and backfill; then the ETA of the rest."""
    state = ClusterState(nodes)
    core = TimedCore(CoreConfig(placement=PlacementConfig(scorer=scorer)), policy=build_policy(40))
    gc.collect()
    gc.disable()
    begin = time.perf_counter()
    decisions = core.step(state, jobs, now=0.0)
    total = time.perf_counter() - begin
    gc.enable()
    marks = [*core.marks, begin + total]
    latencies = sorted(b - a for a, b in itertools.pairwise(marks))
    started = sum(d.kind is DecisionKind.START for d in decisions)
    pending = [job for job in jobs if job.id not in state.running]
    print(f"full step: {len(decisions)} decisions in {total:.2f} s; planning the ETA", file=sys.stderr, flush=True)
    # The ETA of every job left pending: the aggregate plan (what ``forecast`` picks for a queue this long).
    gc.collect()
    gc.disable()
    t0, cpu0 = time.perf_counter(), time.process_time()
    planned = aggregate_forecast(core, state, pending, now=0.0)
    eta_seconds, eta_cpu = time.perf_counter() - t0, time.process_time() - cpu0
    gc.enable()
    estimated = sorted(v for v in planned.starts.values() if v is not None)
    eta: dict[str, object] = {
        "method": planned.method,
        "pending": len(pending),
        "seconds": round(eta_seconds, 3),
        "cpu_seconds": round(eta_cpu, 3),
        "jobs_estimated": len(estimated),
        "jobs_without_estimate": len(pending) - len(estimated),
        "median_start_h": round(percentile(estimated, 0.5) / 3600, 2),
        "p90_start_h": round(percentile(estimated, 0.9) / 3600, 2),
        "horizon_h": round(planned.horizon / 3600, 2),
    }
    if eta_events:
        # The exact forecast for comparison: one full core step over the pending jobs per event.
        t0 = time.perf_counter()
        exact = exact_forecast(core, state, pending, now=0.0, max_events=eta_events)
        eta["exact"] = {"events": exact.events, "seconds": round(time.perf_counter() - t0, 3)}
    return {
        "decisions": len(decisions),
        "started": started,
        "reservations": len(core.reservations),
        "seconds": round(total, 3),
        "decisions_per_s": round(len(decisions) / total),
        "p50_ms": round(percentile(latencies, 0.50) * 1e3, 4),
        "p99_ms": round(percentile(latencies, 0.99) * 1e3, 4),
        "max_ms": round(latencies[-1] * 1e3, 3),
        "eta": eta,
    }


def compare_eta(node_count: int, job_count: int, seed: int, scorer: str) -> dict[str, object]:
    """Aggregate against exact ETA on a cluster small enough to fast-forward the core to the end."""
    nodes = build_cluster(node_count)
    jobs = build_jobs(job_count, seed)
    state = ClusterState(nodes)
    core = SchedulerCore(
        CoreConfig(placement=PlacementConfig(scorer=scorer)), policy=build_policy(40, scale=node_count / 10_000)
    )
    core.step(state, jobs, now=0.0)
    pending = [job for job in jobs if job.id not in state.running]
    print(f"eta comparison: {len(pending)} pending on {node_count} nodes", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    exact = exact_forecast(core, state, pending, now=0.0, max_events=1_000_000)
    exact_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    planned = aggregate_forecast(core, state, pending, now=0.0)
    planned_seconds = time.perf_counter() - t0
    pairs = [(planned.starts[j], exact.starts[j]) for j in exact.starts]
    both = [(p, e) for p, e in pairs if p is not None and e is not None]
    late = sorted(p - e for p, e in both)
    error = sorted(abs(d) for d in late)
    size = {job.id: job.total_device_milli for job in pending}
    by_size: dict[str, list[float]] = {"le_1_device": [], "2_to_8": [], "gangs_over_8": []}
    for job_id, (p, e) in zip(exact.starts, pairs, strict=True):
        if p is None or e is None:
            continue
        milli = size[job_id]
        bucket = "le_1_device" if milli <= 1000 else "2_to_8" if milli <= 8000 else "gangs_over_8"
        by_size[bucket].append(p - e)
    return {
        "nodes": len(nodes),
        "pending": len(pending),
        "exact_seconds": round(exact_seconds, 3),
        "exact_events": exact.events,
        "aggregate_seconds": round(planned_seconds, 4),
        "compared": len(both),
        "none_in_exact_only": sum(p is not None and e is None for p, e in pairs),
        "none_in_aggregate_only": sum(p is None and e is not None for p, e in pairs),
        "median_abs_error_s": round(percentile(error, 0.5)),
        "p90_abs_error_s": round(percentile(error, 0.9)),
        "median_exact_start_s": round(percentile(sorted(e for _, e in both), 0.5)),
        "median_signed_error_s_by_size": {k: round(percentile(sorted(v), 0.5)) for k, v in by_size.items() if v},
        "same_pool": round(sum(planned.pools.get(j) == exact.pools.get(j) for j in exact.pools) / len(exact.pools), 3)
        if exact.pools
        else None,
    }


def run_full_scan(nodes: list[Node], jobs: list[Job], sample: int) -> dict[str, float | int]:
    """The naive placer on the first ``sample`` decisions (same order), from an empty cluster."""
    state = ClusterState(nodes)
    placer = FullScanPlacer()
    ordered = SchedulerCore.order(jobs)[:sample]
    latencies: list[float] = []
    for job in ordered:
        t0 = time.perf_counter()
        placement = placer.place(state, job)
        if placement is not None:
            state.allocate(placement)
        latencies.append(time.perf_counter() - t0)
    latencies.sort()
    return {
        "decisions": len(ordered),
        "mean_ms": round(statistics.fmean(latencies) * 1e3, 3),
        "p99_ms": round(percentile(latencies, 0.99) * 1e3, 3),
    }


def run_indexed_sample(nodes: list[Node], jobs: list[Job], sample: int, scorer: str) -> float:
    """Mean latency (ms) of the indexed engine on the same first ``sample`` decisions, for a fair ratio."""
    result = run_indexed(nodes, SchedulerCore.order(jobs)[:sample], scorer)
    return float(result["mean_ms"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--jobs", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--scorer", default="fgd")
    parser.add_argument("--full-scan-sample", type=int, default=1000)
    parser.add_argument(
        "--eta-events", type=int, default=0, help="also time the exact ETA forecast for this many events (slow)"
    )
    parser.add_argument(
        "--eta-compare-nodes", type=int, default=100, help="cluster for the aggregate vs exact ETA (0: skip)"
    )
    parser.add_argument("--eta-compare-jobs", type=int, default=500)
    parser.add_argument("--skip-full-step", action="store_true")
    args = parser.parse_args()

    nodes = build_cluster(args.nodes)
    jobs = build_jobs(args.jobs, args.seed)
    indexed = run_indexed(nodes, jobs, args.scorer)
    full_step = None if args.skip_full_step else run_full_step(nodes, jobs, args.scorer, args.eta_events)
    eta_vs_exact = (
        compare_eta(args.eta_compare_nodes, args.eta_compare_jobs, args.seed, args.scorer)
        if args.eta_compare_nodes and not args.skip_full_step
        else None
    )
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sample = min(args.full_scan_sample, len(jobs))
    naive = run_full_scan(nodes, jobs, sample) if sample else {}
    indexed_sample_ms = run_indexed_sample(nodes, jobs, sample, args.scorer) if sample else 0.0
    result = {
        "benchmark": "placement",
        "nodes": len(nodes),
        "devices": sum(n.devices for n in nodes),
        "models": len({n.model for n in nodes}),
        "jobs": len(jobs),
        "scorer": args.scorer,
        "indexed": indexed,
        "full_step": full_step,
        "eta_vs_exact": eta_vs_exact,
        "peak_rss_mib": round(rss_mib, 1),
        "full_scan": naive,
        "full_scan_vs_indexed_mean_latency_ratio": (
            round(float(naive["mean_ms"]) / indexed_sample_ms, 1) if sample and indexed_sample_ms else None
        ),
        "targets": {
            "placement": {"decisions_per_s": 20_000, "p99_ms": 1.0, "peak_rss_mib": 1024},
            "full_step": {"decisions_per_s": 10_000, "p99_ms": 2.0, "eta_all_pending_s": 1.0},
        },
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
