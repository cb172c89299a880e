"""Simulator benchmark (issue 4): prints one JSON object.

(a) The FGD packing experiment on the public Alibaba openb trace: 1,213 GPU nodes / 6,212 GPUs, the 8,152-pod
    default list, inflation 1.3, policies fgd / binpack / random, seeded: wall time and GPU allocation ratio at
    100% and 130% arrived (targets: ≤ 5 s per run, FGD ≥ 95% at 100%; the paper's numbers are printed beside).
(b) A synthetic 1,000,000-job timeline shaped like PAI 2020 (:func:`simulations.synthetic.pai_like`) on a
    6,000-device cluster, written as a native CSV and replayed through the native loader (targets: ≤ 60 s,
    ≤ 4 GiB RSS).

    .venv/bin/python benchmarks/simulator.py                       # both parts, full size
    .venv/bin/python benchmarks/simulator.py --part b --jobs 50000 # a smaller timeline
    .venv/bin/python benchmarks/simulator.py --part b --jobs 20000 --profile   # where the time goes

The traces are read from ``../shared/traces/`` (next to the repository); part (a) is skipped when absent.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import pstats
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scheduler.catalog import load_catalog  # noqa: E402
from scheduler.core import CoreConfig, SchedulerCore  # noqa: E402
from scheduler.model import Node  # noqa: E402
from scheduler.placement import PlacementConfig  # noqa: E402
from scheduler.throughput import load_throughput  # noqa: E402
from simulations.loaders import LoadOptions, load_nodes, open_trace  # noqa: E402
from simulations.replay import SimConfig, TimelineSimulation, packing_core, run_packing  # noqa: E402
from simulations.report import FGD_PUBLISHED  # noqa: E402
from simulations.schema import write_native  # noqa: E402
from simulations.synthetic import pai_like  # noqa: E402

TRACES = ROOT.parent / "shared" / "traces"

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


def part_a(seeds: list[int], inflation: float) -> dict[str, Any]:
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
        "inflation": inflation,
        "published": {k: {"alloc_100": a, "alloc_130": b} for k, (a, b) in FGD_PUBLISHED.items()},
        "policies": {},
    }
    for policy in ("fgd", "binpack", "random"):
        runs = []
        for seed in seeds:
            core = packing_core(policy, seed, catalog, throughput)
            result = run_packing(nodes, pods, core, inflation=inflation, seed=seed)
            p100, pend = result.at(1.0), result.at(inflation)
            runs.append(
                {
                    "seed": seed,
                    "wall_s": round(result.wall_s, 3),
                    "alloc_pct_100": round(100 * p100["allocated"], 2),
                    f"alloc_pct_{round(inflation * 100)}": round(100 * pend["allocated"], 2),
                    "unallocated_gpus_end": round(pend["unallocated_gpus"], 1),
                    "fragmented_gpus_100": round(p100["fragmented_gpus"], 1),
                    "pods_drawn": result.pods_drawn,
                }
            )
        mean = {k: round(sum(r[k] for r in runs) / len(runs), 3) for k in runs[0] if k not in ("seed",)}
        out["policies"][policy] = {"mean": mean, "runs": runs}
    fgd = out["policies"]["fgd"]["mean"]
    out["targets"] = {
        "wall_s_max": {"target": 5.0, "measured": max(p["mean"]["wall_s"] for p in out["policies"].values())},
        "fgd_alloc_pct_100": {"target": 95.0, "measured": fgd["alloc_pct_100"]},
    }
    return out


def part_b(jobs: int, seed: int, profile: bool) -> dict[str, Any]:
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
        for i in range(count)
    ]
    device_count = sum(n.devices for n in nodes)
    models = [p[0] for p in PAI_POOLS]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pai-like.csv"
        began = time.perf_counter()
        write_native(pai_like(jobs, device_count, seed=seed, models=models), path)
        generate_s = time.perf_counter() - began
        gc.collect()
        core = SchedulerCore(CoreConfig(placement=PlacementConfig(scorer="fgd", seed=seed)), catalog, throughput)
        sim = TimelineSimulation(nodes, core, SimConfig(seed=seed), catalog, throughput, trace_path=path)
        source = open_trace(path, "native", LoadOptions(catalog=catalog, throughput=throughput))
        profiler = cProfile.Profile() if profile else None
        began = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        result = sim.run(source)
        if profiler is not None:
            profiler.disable()
        replay_s = time.perf_counter() - began
    s = result.summary
    out: dict[str, Any] = {
        "jobs": jobs,
        "devices": device_count,
        "nodes": len(nodes),
        "generate_csv_s": round(generate_s, 2),
        "replay_s": round(replay_s, 2),
        "events": result.events,
        "events_per_s": round(result.events / replay_s),
        "jobs_per_s": round(jobs / replay_s),
        "peak_rss_mib": round(rss_mib(), 1),
        "finished": s["jobs"].get("finished", 0),
        "skipped": result.trace_report.as_dict()["skipped"],
        "loader_skipped": source.report.as_dict()["skipped"],
        "wait_s": {k: round(v, 1) for k, v in s["wait_s"].items()},
        "utilisation_arrival_window": s["utilisation_arrival_window"],
        "span_days": round(s["span_s"] / 86400, 1),
        "targets": {
            "wall_s_max": {"target": 60.0, "measured": round(replay_s, 2)},
            "rss_gib_max": {"target": 4.0, "measured": round(rss_mib() / 1024, 3)},
        },
    }
    if profiler is not None:
        buffer = io.StringIO()
        pstats.Stats(profiler, stream=buffer).sort_stats("tottime").print_stats(25)
        sys.stderr.write(buffer.getvalue())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["a", "b", "both"], default="both")
    parser.add_argument("--seeds", default="1,2,3", help="packing seeds (comma-separated)")
    parser.add_argument("--inflation", type=float, default=1.3)
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="cProfile part (b); top functions to stderr")
    args = parser.parse_args()
    out: dict[str, Any] = {"python": sys.version.split()[0]}
    if args.part in ("a", "both"):
        out["packing"] = part_a([int(s) for s in args.seeds.split(",")], args.inflation)
    if args.part in ("b", "both"):
        out["timeline"] = part_b(args.jobs, args.seed, args.profile)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
