"""Agreement with an independent simulator: our replay configured like Tiresias' simulator (Gu et al., NSDI '19,
``SymbioticLab/Tiresias``, ``simulator/run_sim.py``) on the same inputs, compared per virtual cluster.

Tiresias' simulator, with ``--scheme=count`` (GPUs are counted, not placed), has four of our orderings:

==================  ======================  =================================================================
ours                theirs (``--schedule``)  what it is
==================  ======================  =================================================================
``fifo-strict``     ``fifo``                 arrival order; the head blocks
``fifo``            ``fjf``                  arrival order; whatever fits starts (no reservations: backfill off)
``srtf``            ``shortest``             shortest remaining time first, preemptive, resumes where it stopped
``las``             ``dlas-gpu``             2D-LAS: 3 levels at 3,250 and 7,200 GPU-seconds, no starvation rule
==================  ======================  =================================================================

Our side is configured to match: every job a gang of one-GPU workers (so placement is counting: any free GPU
serves), CPU and memory unconstrained, backfill off, no minimum runtime, unbounded preemption attempts per step,
preempted jobs resuming where they stopped (core and simulator), event-driven passes. Inputs are written in
both forms from one job list (:func:`write_tiresias_csv`, :func:`native_jobs`), ids in arrival order so that the
tie-breaks agree (both order equal submit times by the file's order). The figures of theirs that the test and
the README compare against are recorded in ``tests/simulations/agreement/`` with the commands that made them.

    .venv/bin/python -m simulations.agreement --write-inputs /tmp/agreement        # inputs for their simulator
    .venv/bin/python -m simulations.agreement --oracle /tmp/agreement/out           # compare with their job.csv
    .venv/bin/python -m simulations.agreement                                       # against the recorded figures
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import math
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scheduler.catalog import load_catalog
from scheduler.core import CoreConfig, QueueingConfig, SchedulerCore
from scheduler.model import Node
from scheduler.placement import PlacementConfig
from simulations.loaders.base import parse_timestamp
from simulations.schema import TraceJob
from simulations.timeline import SimConfig, TimelineSimulation

ROOT = Path(__file__).resolve().parent.parent
RECORDED = ROOT / "tests" / "simulations" / "agreement"
TRACES = ROOT / "tests" / "fixtures" / "traces"

#: Our ordering -> Tiresias' ``--schedule``.
SCHEDULES = {"fifo-strict": "fifo", "fifo": "fjf", "srtf": "shortest", "las": "dlas-gpu"}
#: Tiresias' ``dlas-gpu`` levels (``jobs.py``: ``queue_limit = [3250, 7200, 18000]`` over three queues).
TIRESIAS_LAS = (3250.0, 7200.0)


@dataclass(frozen=True)
class Rigid:
    """One job as both simulators take it: GPUs, submit second, duration in whole seconds."""

    index: int
    gpus: int
    submit: int
    duration: int

    @property
    def id(self) -> str:
        return f"j{self.index:06d}"


@dataclass(frozen=True)
class Case:
    """One comparison: a job list on a cluster of ``gpus`` GPUs (one virtual cluster)."""

    name: str
    gpus: int
    jobs: tuple[Rigid, ...]


def tiresias_case(path: Path, gpus: int) -> Case:
    """Tiresias' own job list (``60_job.csv``) on a cluster of ``gpus`` GPUs."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    rows.sort(key=lambda r: int(r["submit_time"]))  # their sort_all_jobs (stable)
    jobs = tuple(
        Rigid(i, int(r["num_gpu"]), int(r["submit_time"]), int(float(r["duration"]))) for i, r in enumerate(rows)
    )
    return Case(f"tiresias-60-on-{gpus}", gpus, jobs)


def philly_cases(path: Path, jobs_per_vc: int = 300, load: float = 1.3, node_gpus: int = 8) -> list[Case]:
    """The first ``jobs_per_vc`` jobs of every virtual cluster of the Philly trace, each VC its own cluster.

    A VC's cluster has the GPUs that its window would keep busy at ``load`` (offered GPU-seconds over the window's
    span, rounded up to whole ``node_gpus`` nodes), and never fewer than its largest job: the trace does not say
    how large the VCs were, and a load above 1 makes jobs queue so that the orderings differ.
    """
    by_vc: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            submit = parse_timestamp(row["timestamp"], "timestamp")
            duration = int(float(row["duration"]))
            gpus = int(row["num_gpus"])
            if duration > 0 and gpus > 0:
                by_vc[row["cluster"]].append((int(submit), gpus, duration))
    cases = []
    for vc in sorted(by_vc, key=lambda v: (-len(by_vc[v]), v)):
        window = sorted(by_vc[vc], key=lambda j: j[0])[:jobs_per_vc]  # stable: file order among equal submits
        origin = window[0][0]
        span = max(window[-1][0] - origin, 1)
        offered = sum(g * d for _, g, d in window)
        gpus = max(max(g for _, g, _ in window), math.ceil(offered / span / load / node_gpus) * node_gpus)
        jobs = tuple(Rigid(i, g, s - origin, d) for i, (s, g, d) in enumerate(window))
        cases.append(Case(f"philly-{vc}", gpus, jobs))
    return cases


def write_tiresias_csv(case: Case, out: Path) -> None:
    """The case in Tiresias' trace format (``job_id,num_gpu,submit_time,iterations,model_name,duration,interval``)."""
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["job_id", "num_gpu", "submit_time", "iterations", "model_name", "duration", "interval"])
        for job in case.jobs:
            writer.writerow([job.index, job.gpus, job.submit, 1, "none", job.duration, 0])


def native_jobs(case: Case) -> list[TraceJob]:
    """The case for our replay: gangs of one-GPU workers (placement is then counting, as ``--scheme=count``)."""
    return [
        TraceJob(id=job.id, submit_time=float(job.submit), duration_s=float(job.duration), workers=job.gpus)
        for job in case.jobs
    ]


def cluster(case: Case, node_gpus: int = 8) -> list[Node]:
    """Nodes of ``node_gpus`` A100s holding the case's GPUs. Tiresias names no model; the A100 is the throughput
    reference, so the core's runtime estimates (reference seconds) are the trace's wall seconds, as the durations
    are not scaled for a trace that says not where they were measured."""
    entry = load_catalog().lookup("A100")
    assert entry is not None
    count = math.ceil(case.gpus / node_gpus)
    sizes = [node_gpus] * (case.gpus // node_gpus) + ([case.gpus % node_gpus] if case.gpus % node_gpus else [])
    assert len(sizes) == count
    return [
        Node(id=f"n{i:03d}", model=entry.model, devices=size, cpu_milli=1_000_000, memory_mib=10_000_000)
        for i, size in enumerate(sizes)
    ]


def tiresias_like_core(ordering: str) -> SchedulerCore:
    queueing = QueueingConfig(
        ordering=ordering,  # type: ignore[arg-type]
        backfill=False,
        min_runtime_s=0.0,
        max_preemption_attempts=1_000_000,
        max_victim_candidates=1_000_000,
        preempted_resume=True,
        las_thresholds=TIRESIAS_LAS,
    )
    return SchedulerCore(CoreConfig(placement=PlacementConfig(scorer="binpack"), queueing=queueing))


def run_ours(case: Case, ordering: str) -> list[dict[str, Any]]:
    """Our replay of ``case`` under ``ordering``, configured like Tiresias' simulator: one record per job."""
    config = SimConfig(preempted_resume=True, record_jobs=True, max_passes_per_instant=1)
    sim = TimelineSimulation(cluster(case), tiresias_like_core(ordering), config)
    result = sim.run(native_jobs(case))
    return result.jobs


def aggregate(rows: Iterable[dict[str, float]]) -> dict[str, float]:
    """Mean JCT, mean queueing delay (first start - submit) and makespan (last end - first submit)."""
    rows = list(rows)
    if not rows:
        return {"jobs": 0, "mean_jct_s": math.nan, "mean_wait_s": math.nan, "makespan_s": math.nan}
    return {
        "jobs": len(rows),
        "mean_jct_s": sum(r["end"] - r["submit"] for r in rows) / len(rows),
        "mean_wait_s": sum(r["start"] - r["submit"] for r in rows) / len(rows),
        "makespan_s": max(r["end"] for r in rows) - min(r["submit"] for r in rows),
    }


def read_oracle(path: Path) -> list[dict[str, float]]:
    """Tiresias' ``job.csv`` (``--scheme=count`` columns): one row per finished job."""
    with path.open(newline="", encoding="utf-8") as handle:
        return [
            {
                "id": float(r["job_id"]),
                "submit": float(r["submit_time"]),
                "start": float(r["start_time"]),
                "end": float(r["end_time"]),
            }
            for r in csv.DictReader(handle)
        ]


def compare(
    case: Case,
    ordering: str,
    theirs: Sequence[dict[str, float]] | None = None,
    recorded: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Our replay of ``case`` against theirs: their ``job.csv`` rows (then also per job), or recorded aggregates."""
    ours_rows = [
        {"id": float(r["id"][1:]), "submit": r["submit"], "start": r["start"], "end": r["end"]}
        for r in run_ours(case, ordering)
        if r["end"] is not None
    ]
    entry: dict[str, Any] = {"case": case.name, "gpus": case.gpus, "ordering": ordering, "ours": aggregate(ours_rows)}
    if theirs is not None:
        recorded = aggregate(theirs)
        by_id = {r["id"]: r for r in theirs}
        entry["jobs_same_start"] = sum(
            1 for r in ours_rows if r["id"] in by_id and by_id[r["id"]]["start"] == r["start"]
        )
        entry["jobs_same_end"] = sum(1 for r in ours_rows if r["id"] in by_id and by_id[r["id"]]["end"] == r["end"])
    if recorded is not None:
        entry["theirs"] = recorded
        entry["deviation"] = {
            key: (entry["ours"][key] - recorded[key]) / recorded[key] if recorded[key] else entry["ours"][key]
            for key in ("mean_jct_s", "mean_wait_s", "makespan_s")
        }
    return entry


def table(results: Sequence[dict[str, Any]]) -> str:
    """The agreement as a markdown table (ours / theirs, deviation in %)."""
    lines = [
        "| virtual cluster | GPUs | ordering (theirs) | jobs | mean JCT s, ours / theirs | mean wait s | makespan s |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in results:
        ours, theirs, deviation = e["ours"], e.get("theirs") or {}, e.get("deviation") or {}
        cells = [
            f"{ours[key]:,.0f}"
            if key not in theirs
            else f"{ours[key]:,.0f} / {theirs[key]:,.0f} ({100 * deviation[key]:+.2f} %)"
            for key in ("mean_jct_s", "mean_wait_s", "makespan_s")
        ]
        lines.append(
            f"| {e['case']} | {e['gpus']} | {e['ordering']} ({SCHEDULES[e['ordering']]}) | {ours['jobs']} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)


def cases() -> list[Case]:
    return [tiresias_case(TRACES / "tiresias" / "60_job.csv", 16), *philly_cases(TRACES / "philly" / "philly.csv.gz")]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write-inputs", type=Path, help="write every case in Tiresias' format here and stop")
    parser.add_argument("--oracle", type=Path, help="folder of their job.csv outputs (CASE.SCHEDULE.csv)")
    parser.add_argument("--orderings", default=",".join(SCHEDULES), help="ours, comma-separated")
    parser.add_argument("--cases", default="", help="only these cases (comma-separated names)")
    parser.add_argument("--markdown", action="store_true", help="print the table for simulations/README.md")
    args = parser.parse_args(argv)
    selected = [c for c in cases() if not args.cases or c.name in args.cases.split(",")]
    if args.write_inputs is not None:
        args.write_inputs.mkdir(parents=True, exist_ok=True)
        for case in selected:
            write_tiresias_csv(case, args.write_inputs / f"{case.name}.csv")
            print(f"{case.name} {case.gpus}")
        return
    recorded = recorded_figures() if args.oracle is None else {}
    results = []
    for case in selected:
        for ordering in args.orderings.split(","):
            schedule = SCHEDULES[ordering]
            if args.oracle is not None:
                entry = compare(case, ordering, theirs=read_oracle(args.oracle / f"{case.name}.{schedule}.csv"))
            else:
                entry = compare(case, ordering, recorded=recorded.get(case.name, {}).get(schedule))
            results.append(entry)
    if args.markdown:
        print(table(results))
        return
    json.dump(results, sys.stdout, indent=1)
    sys.stdout.write("\n")


def recorded_figures() -> dict[str, dict[str, Any]]:
    """Their aggregates as recorded in ``tests/simulations/agreement/tiresias.json`` (see the README there): per
    case its ``gpus`` and ``jobs``, and per schedule the aggregates."""
    data = json.loads((RECORDED / "tiresias.json").read_text(encoding="utf-8"))
    cases: dict[str, dict[str, Any]] = data["cases"]
    return cases


if __name__ == "__main__":
    main()
