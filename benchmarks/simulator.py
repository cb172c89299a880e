"""Simulator benchmark (issue 4): prints one JSON object.

(a) The FGD packing experiment on the public Alibaba openb trace: 1,213 GPU nodes / 6,212 GPUs, the 8,152-pod
    default list (CPU-only pods drawn too, as in the paper's simulator), inflation 1.3, policies fgd / binpack /
    spread / random, seeded: wall time, GPU allocation ratio at 80/90/100/130% arrived (targets: ≤ 5 s per run,
    FGD ≥ 95% at 100%; the paper's numbers are printed beside), and where the unallocated GPUs are at 100%.
(c) ETAs (issue 20): the PAI-like timeline on a tenth of the cluster at load 0.9 (congested), every pending job's
    start forecast every ``--eta-every`` seconds as the live service does, scored against the real starts
    (``SimConfig.eta_every_s``): error at submission and along the wait, and how often the band of ``zhisuan eta``
    holds the real start; with walltime-like estimates (the duration × a user's over-estimate, 1-3×) or exact ones.
(b) A synthetic timeline shaped like PAI 2020 (:func:`simulations.synthetic.pai_like`) on a 6,000-device cluster,
    written as a native CSV and replayed through the native loader with the default core (targets for
    1,000,000 jobs: ≤ 60 s, ≤ 4 GiB RSS): wall time, events/s, peak RSS, and where the time went (inside
    ``SchedulerCore.step``, of which reservation planning, and the simulator itself).

    .venv/bin/python benchmarks/simulator.py --part a --seeds 1,2,3,4,5,6,7,8,9,10
    .venv/bin/python benchmarks/simulator.py --part b --timeline-jobs 20000
    .venv/bin/python benchmarks/simulator.py --part b --timeline-jobs 20000 --arrival-pass changed
    .venv/bin/python benchmarks/simulator.py --part b --timeline-jobs 10000 --scale 0.1 --load 0.9   # congested
    .venv/bin/python benchmarks/simulator.py --part b --timeline-jobs 5000 --profile   # top functions to stderr
    .venv/bin/python benchmarks/simulator.py --part b --timeline-jobs 50000 --profile-out b.pstats  # for pstats
    .venv/bin/python benchmarks/simulator.py --part c --timeline-jobs 3000   # ETA error on a congested trace

The public traces are the ones the repository ships in ``tests/fixtures/traces/`` (sources in its README).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import pstats
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal, cast

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import scheduler.backfill as backfill_module  # noqa: E402
from scheduler.catalog import load_catalog  # noqa: E402
from scheduler.core import CoreConfig, SchedulerCore  # noqa: E402
from scheduler.model import Node  # noqa: E402
from scheduler.placement import PlacementConfig  # noqa: E402
from scheduler.throughput import load_throughput  # noqa: E402
from simulations.loaders import LoadOptions, load_nodes, open_trace  # noqa: E402
from simulations.packing import ARRIVALS, Arrivals, packing_core, run_packing  # noqa: E402
from simulations.report import FGD_PUBLISHED  # noqa: E402
from simulations.schema import write_native  # noqa: E402
from simulations.synthetic import pai_like  # noqa: E402
from simulations.timeline import SimConfig, TimelineSimulation  # noqa: E402

TRACES = ROOT / "tests" / "fixtures" / "traces"

#: 6,000 devices in PAI-like pools: 8-GPU V100/A10 servers and 2-GPU T4/P100 servers (1,312 nodes).
PAI_POOLS = [
    ("V100-16G", 200, 8, 96, 512),
    ("V100-32G", 50, 8, 96, 512),
    ("T4", 500, 2, 64, 256),
    ("P100", 250, 2, 64, 256),
    ("A10", 312, 8, 128, 1024),
]


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


POLICIES = ("fgd", "binpack", "spread", "random")
FgdWeight = Literal["pods", "gpus"]
MARKS = (0.8, 0.9, 1.0)


def _mean(values: list[float]) -> float:
    return round(sum(values) / len(values), 3) if values else float("nan")


def _mean_breakdown(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean over seeds of the numeric leaves of ``breakdown_at_100`` (remnant sizes: the first seed's)."""

    def merge(items: list[Any]) -> Any:
        if isinstance(items[0], dict):
            keys = items[0].keys()
            return {k: merge([it.get(k, 0.0) for it in items]) for k in keys}
        return round(sum(items) / len(items), 2)

    first = runs[0]
    out: dict[str, Any] = merge([{k: v for k, v in r.items() if k != "failed_before"} for r in runs])
    out["partial_gpus"]["remnants"] = first["partial_gpus"]["remnants"]
    out["failed_before"] = {
        "gpus": round(sum(r["failed_before"]["gpus"] for r in runs) / len(runs), 2),
        "by_shape_first_seed": first["failed_before"]["by_shape"],
    }
    return out


def part_a(
    seeds: list[int],
    inflation: float,
    include_cpu_only: bool,
    candidates: int,
    weight: FgdWeight = "pods",
    arrivals: Arrivals = "shuffled-trace",
) -> dict[str, Any]:
    folder = TRACES / "alibaba-openb"
    if not folder.exists():
        return {"skipped": f"{folder} not found"}
    catalog = load_catalog()
    throughput = load_throughput()
    nodes = load_nodes(folder / "openb_node_list_gpu_node.csv", catalog)
    pods = list(open_trace(folder / "openb_pod_list_default.csv", "alibaba-openb", LoadOptions(catalog=catalog)))
    out: dict[str, Any] = {
        "nodes": len(nodes),
        "gpus": sum(n.devices for n in nodes),
        "pods": len(pods),
        "cpu_only_pods_drawn": include_cpu_only,
        "arrivals": arrivals,
        "candidates": candidates,
        "fgd_weight": weight,
        "inflation": inflation,
        "seeds": seeds,
        "published": {k: {"alloc_100": a, "alloc_130": b} for k, (a, b) in FGD_PUBLISHED.items()},
        "policies": {},
    }
    end = f"alloc_pct_{round(inflation * 100)}"
    for policy in POLICIES:
        runs = []
        breakdowns = []
        for seed in seeds:
            core = packing_core(policy, seed, catalog, throughput, candidates=candidates)
            cpu = time.process_time()
            result = run_packing(
                nodes,
                pods,
                core,
                inflation=inflation,
                seed=seed,
                include_cpu_only=include_cpu_only,
                fgd_weight=weight,
                arrivals=arrivals,
            )
            cpu = time.process_time() - cpu
            run = {"seed": seed, "wall_s": round(result.wall_s, 3), "cpu_s": round(cpu, 3)}
            for mark in MARKS:
                run[f"alloc_pct_{round(mark * 100)}"] = round(100 * result.at(mark)["allocated"], 2)
            run[end] = round(100 * result.at(inflation)["allocated"], 2)
            run["unallocated_gpus_100"] = round(result.at(1.0)["unallocated_gpus"], 1)
            run["fragmented_gpus_100"] = round(result.at(1.0)["fragmented_gpus"], 1)
            run["pods_drawn"] = result.pods_drawn
            runs.append(run)
            if result.breakdown_at_100:
                breakdowns.append(result.breakdown_at_100)
        mean = {k: _mean([r[k] for r in runs]) for k in runs[0] if k != "seed"}
        entry: dict[str, Any] = {"mean": mean, "runs": runs}
        if breakdowns:
            entry["unallocated_at_100"] = _mean_breakdown(breakdowns)
        out["policies"][policy] = entry
    fgd = out["policies"]["fgd"]["mean"]
    out["targets"] = {
        "wall_s_max": {"target": 5.0, "measured": max(p["mean"]["wall_s"] for p in out["policies"].values())},
        "cpu_s_max": {"target": 5.0, "measured": max(p["mean"]["cpu_s"] for p in out["policies"].values())},
        "fgd_alloc_pct_100": {"target": 95.0, "measured": fgd["alloc_pct_100"]},
    }
    return out


def part_b(
    jobs: int,
    seed: int,
    profile: bool,
    arrival_pass: str,
    scale: float = 1.0,
    load: float = 0.65,
    profile_out: str | None = None,
) -> dict[str, Any]:
    catalog = load_catalog()
    throughput = load_throughput()
    nodes = [
        Node(
            id=f"{model.lower()}-{i:04d}",
            model=model,
            devices=devices,
            cpu_milli=cores * 1000,
            memory_mib=mem_gib * 1024,
            switch=f"{model.lower()}-sw{i // 32:03d}",
        )
        for model, count, devices, cores, mem_gib in PAI_POOLS
        for i in range(max(1, int(count * scale)))
    ]
    device_count = sum(n.devices for n in nodes)
    models = [p[0] for p in PAI_POOLS]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pai-like.csv"
        began = time.perf_counter()
        write_native(pai_like(jobs, device_count, seed=seed, load=load, models=models), path)
        generate_s = time.perf_counter() - began
        gc.collect()
        core = SchedulerCore(CoreConfig(placement=PlacementConfig(scorer="fgd", seed=seed)), catalog, throughput)
        timing = _instrument(core)
        config = SimConfig(seed=seed, arrival_pass=arrival_pass)  # type: ignore[arg-type]
        sim = TimelineSimulation(nodes, core, config, catalog, throughput, trace_path=path)
        source = open_trace(path, "native", LoadOptions(catalog=catalog, throughput=throughput))
        profiler = cProfile.Profile() if profile or profile_out else None
        cpu = time.process_time()
        began = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        result = sim.run(source)
        if profiler is not None:
            profiler.disable()
        replay_s = time.perf_counter() - began
        cpu = time.process_time() - cpu
        _restore()
    s = result.summary
    out: dict[str, Any] = {
        "jobs": jobs,
        "scale": scale,
        "load": load,
        "devices": device_count,
        "nodes": len(nodes),
        "arrival_pass": arrival_pass,
        "generate_csv_s": round(generate_s, 2),
        "replay_s": round(replay_s, 2),
        "replay_cpu_s": round(cpu, 2),
        "events": result.events,
        "events_per_s": round(result.events / replay_s),
        "jobs_per_s": round(jobs / replay_s),
        "us_per_job": round(replay_s / jobs * 1e6),
        "peak_rss_mib": round(rss_mib(), 1),
        "time_s": {
            "core_step": round(timing["step_s"], 2),
            "core_step_calls": timing["steps"],
            "jobs_handed_to_step": timing["handed"],
            "reservation_planning": round(timing["plan_s"], 2),
            "reservation_plans": timing["plans"],
            "core_finish": round(timing["finish_s"], 2),
            "simulator_and_loader": round(replay_s - timing["step_s"] - timing["finish_s"], 2),
        },
        "finished": s["jobs"].get("finished", 0),
        "skipped": result.trace_report.as_dict()["skipped"],
        "loader_skipped": source.report.as_dict()["skipped"],
        "starts": s["jobs"].get("starts", 0),
        "wait_s": {k: round(v, 1) for k, v in s["wait_s"].items()},
        "wait_s_mean_p99_by_class": {
            job_class: [round(w["mean"], 1), round(w["p99"], 1)] for job_class, w in s["wait_s_by_class"].items()
        },
        "inference_slo_attainment": round(s["slo_attainment"], 4),
        "utilisation_arrival_window": s["utilisation_arrival_window"],
        "span_days": round(s["span_s"] / 86400, 1),
        "targets": {
            "wall_s_max_1m_jobs": {"target": 60.0, "measured": round(replay_s, 2), "jobs": jobs},
            "rss_gib_max": {"target": 4.0, "measured": round(rss_mib() / 1024, 3)},
        },
    }
    if profiler is not None and profile_out:
        profiler.dump_stats(profile_out)
    if profiler is not None and profile:
        buffer = io.StringIO()
        pstats.Stats(profiler, stream=buffer).sort_stats("tottime").print_stats(30)
        sys.stderr.write(buffer.getvalue())
    return out


def part_c(
    jobs: int, seed: int, scale: float, load: float, eta_every: float, estimates: str, ordering: str
) -> dict[str, Any]:
    """ETA accuracy on a congested PAI-like timeline (see the module docstring)."""
    import dataclasses
    import random

    from scheduler.core import QueueingConfig

    catalog = load_catalog()
    throughput = load_throughput()
    nodes = [
        Node(
            id=f"{model.lower()}-{i:04d}",
            model=model,
            devices=devices,
            cpu_milli=cores * 1000,
            memory_mib=mem_gib * 1024,
            switch=f"{model.lower()}-sw{i // 32:03d}",
        )
        for model, count, devices, cores, mem_gib in PAI_POOLS
        for i in range(max(1, int(count * scale)))
    ]
    device_count = sum(n.devices for n in nodes)
    rng = random.Random(seed)
    over: dict[str, float] = {}
    trace = []
    for job in pai_like(jobs, device_count, seed=seed, load=load, models=[p[0] for p in PAI_POOLS]):
        if estimates == "walltime":
            # Each user over-estimates by a factor of their own (1-3x), a little differently every time.
            factor = over.setdefault(job.user, rng.uniform(1.0, 3.0)) * rng.uniform(0.9, 1.1)
            job = dataclasses.replace(job, estimate_s=job.duration_s * max(factor, 1.0))
        trace.append(job)
    core = SchedulerCore(
        CoreConfig(placement=PlacementConfig(scorer="fgd", seed=seed), queueing=QueueingConfig(ordering=ordering)),  # type: ignore[arg-type]
        catalog,
        throughput,
    )
    config = SimConfig(seed=seed, eta_every_s=eta_every)
    began = time.perf_counter()
    result = TimelineSimulation(nodes, core, config, catalog, throughput).run(trace)
    s = result.summary
    return {
        "jobs": jobs,
        "scale": scale,
        "load": load,
        "devices": device_count,
        "eta_every_s": eta_every,
        "estimates": estimates,
        "ordering": ordering,
        "wall_s": round(time.perf_counter() - began, 1),
        "wait_s": {k: round(v, 1) for k, v in s["wait_s"].items()},
        "eta": s.get("eta"),
    }


_ORIGINAL_PLAN = backfill_module.plan_reservation


def _instrument(core: SchedulerCore) -> dict[str, Any]:
    """Time spent in the core's ``step`` and ``finish`` and in its reservation planning (a few µs per call)."""
    timing: dict[str, Any] = {"step_s": 0.0, "steps": 0, "handed": 0, "plan_s": 0.0, "plans": 0, "finish_s": 0.0}
    step, finish = core.step, core.finish

    def timed_step(state: Any, pending: Any, now: float) -> Any:
        pending = list(pending)
        began = time.perf_counter()
        try:
            return step(state, pending, now)
        finally:
            timing["step_s"] += time.perf_counter() - began
            timing["steps"] += 1
            timing["handed"] += len(pending)

    def timed_finish(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return finish(*args, **kwargs)
        finally:
            timing["finish_s"] += time.perf_counter() - began

    def timed_plan(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return _ORIGINAL_PLAN(*args, **kwargs)
        finally:
            timing["plan_s"] += time.perf_counter() - began
            timing["plans"] += 1

    core.step = timed_step  # type: ignore[method-assign]
    core.finish = timed_finish  # type: ignore[method-assign]
    setattr(backfill_module, "plan_reservation", timed_plan)  # noqa: B010
    return timing


def _restore() -> None:
    setattr(backfill_module, "plan_reservation", _ORIGINAL_PLAN)  # noqa: B010


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["a", "b", "c", "both"], default="both")
    parser.add_argument("--eta-every", type=float, default=60.0, help="ETA study: seconds between forecasts")
    parser.add_argument("--estimates", choices=["walltime", "exact"], default="walltime", help="ETA study")
    parser.add_argument("--ordering", default="drf", help="ETA study: the core's ordering")
    parser.add_argument("--seeds", default="1,2,3", help="packing seeds (comma-separated)")
    parser.add_argument("--inflation", type=float, default=1.3)
    parser.add_argument("--gpu-pods-only", action="store_true", help="packing: leave CPU-only pods out of the draw")
    parser.add_argument("--candidates", type=int, default=8, help="packing: nodes scored per pool and pod")
    parser.add_argument(
        "--fgd-weight", choices=["pods", "gpus"], default="pods", help="packing: FGD shape weights (paper: pods)"
    )
    parser.add_argument(
        "--arrivals", choices=ARRIVALS, default="shuffled-trace", help="packing: pod order (paper: shuffled-trace)"
    )
    parser.add_argument("--timeline-jobs", "--jobs", dest="jobs", type=int, default=1_000_000)
    parser.add_argument(
        "--arrival-pass", choices=["all", "changed", "new"], default="all", help="SimConfig.arrival_pass"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--scale", type=float, default=1.0, help="timeline: fraction of the PAI-like cluster's nodes")
    parser.add_argument("--load", type=float, default=0.65, help="timeline: offered load (1 = every device busy)")
    parser.add_argument("--profile", action="store_true", help="cProfile part (b); top functions to stderr")
    parser.add_argument("--profile-out", metavar="FILE", help="cProfile part (b) into FILE (pstats format)")
    args = parser.parse_args()
    out: dict[str, Any] = {"python": sys.version.split()[0], "cpus": os.cpu_count()}
    if args.part in ("a", "both"):
        seeds = [int(s) for s in args.seeds.split(",")]
        weight = cast(FgdWeight, args.fgd_weight)
        arrivals = cast(Arrivals, args.arrivals)
        out["packing"] = part_a(seeds, args.inflation, not args.gpu_pods_only, args.candidates, weight, arrivals)
    if args.part in ("b", "both"):
        out["timeline"] = part_b(
            args.jobs, args.seed, args.profile, args.arrival_pass, args.scale, args.load, args.profile_out
        )
    if args.part == "c":
        out["eta"] = part_c(args.jobs, args.seed, args.scale, args.load, args.eta_every, args.estimates, args.ordering)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
