"""The packing experiment of FGD (ATC '23): pods are submitted one at a time and never deleted, until the arrived
GPU request reaches ``inflation`` × cluster GPUs; the GPU allocation ratio and the fragmentation are recorded
against the arrived request (:func:`run_packing`). As in the authors' simulator, the whole trace comes first in
seeded random order and further pods are then drawn from it with replacement (``arrivals="shuffled-trace"``);
with ``arrivals="with-replacement"`` every pod is a draw.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from scheduler.catalog import Catalog
from scheduler.core import CoreConfig, QueueingConfig, SchedulerCore
from scheduler.model import MILLI, DecisionKind, Job, Node
from scheduler.placement import PlacementConfig
from scheduler.scoring import FGDScorer, TaskShape, WorkloadProfile
from scheduler.state import ClusterState
from scheduler.throughput import ThroughputMatrix
from simulations.metrics import FragmentationMeter, workload_shapes
from simulations.schema import TraceJob
from simulations.timeline import Progress

#: How the packing experiment orders its pods (see the module docstring).
Arrivals = Literal["shuffled-trace", "with-replacement"]
ARRIVALS: tuple[Arrivals, ...] = get_args(Arrivals)


def packing_core(
    scorer: str,
    seed: int,
    catalog: Catalog | None = None,
    throughput: ThroughputMatrix | None = None,
    candidates: int = 8,
) -> SchedulerCore:
    """A core for the packing experiment: placement as configured, no preemption and no backfill.

    Pods go to the best-scored node over every acceptable pool (``pool_choice="score"``), as in the FGD
    paper, rather than to the fastest pool first.

    The FGD protocol never deletes a pod once placed, so nothing may be preempted; with every pod submitted
    alone there is no queue to backfill either.
    """
    config = CoreConfig(
        placement=PlacementConfig(scorer=scorer, seed=seed, candidates=candidates, pool_choice="score"),
        queueing=QueueingConfig(preemption=False, backfill=False),
    )
    return SchedulerCore(config, catalog, throughput)


class TraceDistribution(WorkloadProfile):
    """FGD's workload profile fixed to a known task distribution: the FGD paper's "typical pods".

    The paper measures a node's fragmentation against the popularity of each task shape in the workload, known
    in advance (its simulator counts every pod of the trace, CPU-only pods included, by its exact CPU request and
    GPU request, and keeps the most popular shapes up to a popularity threshold). The live profile
    (:class:`~scheduler.scoring.WorkloadProfile`) instead slides over the jobs that were *placed*, keeps twelve
    shapes and rounds CPU to whole cores; in the packing experiment that drifts away from the pods that no
    longer fit, covers two thirds of the openb pods, and calls a node with 3.0 free cores able to host a
    3.152-core pod. Here every shape counts, with exact CPU; memory stays out of the measure, as in the paper.

        >>> from scheduler.model import Job
        >>> profile = TraceDistribution([Job(id="a", devices_per_worker=0.5, cpu_milli_per_worker=3152)] * 3
        ...                             + [Job(id="b", devices_per_worker=1, cpu_milli_per_worker=8000)])
        >>> [(c.milli, c.whole, c.cpu_milli, share) for c, share in profile.classes]
        [(500, 0, 3152, 0.75), (0, 1, 8000, 0.25)]
    """

    def __init__(self, jobs: Iterable[Job], popularity: float = 1.0, weight: Literal["pods", "gpus"] = "pods") -> None:
        super().__init__()
        counts: dict[TaskShape, float] = {}
        for job in jobs:
            shape = TaskShape(
                milli=job.device_milli if job.is_fractional else 0,
                whole=job.whole_devices,
                cpu_milli=job.cpu_milli_per_worker,
                memory_mib=0,
            )
            # ``gpus`` weighs a shape by the GPUs it asks for (the allocation metric counts GPUs, not pods).
            amount = 1.0 if weight == "pods" else job.total_device_milli / MILLI
            if amount > 0:
                counts[shape] = counts.get(shape, 0.0) + amount
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0].whole, kv[0].milli, kv[0].cpu_milli))
        total = sum(counts.values())
        kept: list[tuple[TaskShape, float]] = []
        covered = 0.0
        for shape, count in ranked:
            if kept and covered >= popularity * total:
                break
            kept.append((shape, count))
            covered += count
        self.classes = [(shape, count / covered) for shape, count in kept]

    def observe(self, job: Job) -> None:
        return None

    def seed(self, jobs: list[Job]) -> None:
        return None


@dataclass
class PackingResult:
    """The FGD experiment's curve: at each arrived share of cluster GPUs, the allocated share and fragmentation."""

    policy: str
    seed: int
    inflation: float
    cluster_gpus: int
    arrivals: Arrivals = "shuffled-trace"
    pods_drawn: int = 0
    pods_placed: int = 0
    pods_failed: int = 0
    skipped_cpu_only: int = 0
    curve: list[dict[str, float]] = field(default_factory=list)
    wall_s: float = 0.0
    reasons: dict[str, int] = field(default_factory=dict)
    #: Where the unallocated GPUs are when 100% of the cluster's GPUs have arrived, and why no pod can use them
    #: (:func:`unallocated_breakdown`), plus the GPU request that failed before that point, by pod shape.
    breakdown_at_100: dict[str, Any] = field(default_factory=dict)

    def at(self, arrived: float) -> dict[str, float]:
        """The curve's point at the first sample with ``arrived`` ≥ the given share (e.g. 1.0 or 1.3)."""
        for point in self.curve:
            if point["arrived"] >= arrived - 1e-9:
                return point
        return self.curve[-1] if self.curve else {}

    def as_dict(self) -> dict[str, Any]:
        p100, pend = self.at(1.0), self.at(self.inflation)
        return {
            "mode": "packing",
            "policy": self.policy,
            "seed": self.seed,
            "inflation": self.inflation,
            "cluster_gpus": self.cluster_gpus,
            "arrivals": self.arrivals,
            "pods_drawn": self.pods_drawn,
            "pods_placed": self.pods_placed,
            "pods_failed": self.pods_failed,
            "skipped_cpu_only": self.skipped_cpu_only,
            "alloc_ratio_at_100": p100.get("allocated"),
            f"alloc_ratio_at_{round(self.inflation * 100)}": pend.get("allocated"),
            "unallocated_gpus_at_end": pend.get("unallocated_gpus"),
            "fragmentation_ratio_at_100": p100.get("fragmentation"),
            "wall_s": self.wall_s,
            "reasons": self.reasons,
            "breakdown_at_100": self.breakdown_at_100,
            "curve": self.curve,
        }


def _shape_label(job: Job) -> str:
    gpu = f"{job.whole_devices} GPU" if job.whole_devices else f"{job.device_milli / MILLI:g} GPU"
    return f"{gpu} + {job.cpu_milli_per_worker / 1000:g} CPU"


def unallocated_breakdown(state: ClusterState, jobs: list[Job]) -> dict[str, Any]:
    """Where the free GPU capacity of ``state`` is, in GPUs, and why none of the pod shapes of ``jobs`` uses it.

    * ``partial_gpus``: free share of GPUs that are partly taken (e.g. the 0.19 a 0.81-GPU pod leaves), of which
      ``too_small`` is below the smallest fractional request of the draw; ``remnants`` lists the largest sizes.
    * ``whole_gpus``: fully free GPUs, by node: ``cpu_short`` where every pod shape whose GPUs would fit asks for
      more CPU than the node has left, ``memory_short`` where CPU would do but memory not, ``usable`` where some
      pod shape fits entirely (it just did not arrive in time), ``too_few`` where no shape fits the free GPUs.

        >>> from scheduler.model import Node
        >>> state = ClusterState([Node(id="n", model="A100", devices=2, cpu_milli=4000, memory_mib=8192)])
        >>> state.nodes["n"].free[0] = 190
        >>> b = unallocated_breakdown(state, [Job(id="p", devices_per_worker=1, cpu_milli_per_worker=8000)])
        >>> b["partial_gpus"]["total"], b["whole_gpus"]["cpu_short"]
        (0.19, 1.0)
    """
    shapes = {(j.whole_devices, j.device_milli, j.cpu_milli_per_worker, j.memory_mib_per_worker) for j in jobs}
    gpu_shapes = sorted(s for s in shapes if s[1] > 0)
    smallest_fraction = min((milli for whole, milli, _, _ in gpu_shapes if not whole), default=MILLI)
    partial = 0
    too_small = 0
    remnants: dict[int, int] = {}
    whole = {"cpu_short": 0, "memory_short": 0, "usable": 0, "too_few": 0}
    for pool in state.pools.values():
        for ns in pool.nodes:
            if not ns.schedulable:
                continue
            free = [f if ok else 0 for f, ok in zip(ns.free, ns.healthy, strict=True)]
            for f in free:
                if 0 < f < MILLI:
                    partial += f
                    remnants[f] = remnants.get(f, 0) + f
                    if f < smallest_fraction:
                        too_small += f
            count = free.count(MILLI)
            if not count:
                continue
            fitting = [s for s in gpu_shapes if (s[0] or 1) <= count]
            if not fitting:
                key = "too_few"
            elif any(cpu <= ns.cpu_free and mem <= ns.mem_free for _, _, cpu, mem in fitting):
                key = "usable"
            elif any(cpu <= ns.cpu_free for _, _, cpu, _ in fitting):
                key = "memory_short"
            else:
                key = "cpu_short"
            whole[key] += count * MILLI
    largest = sorted(remnants.items(), key=lambda kv: (-kv[1], kv[0]))[:6]
    return {
        "free_gpus": round((partial + sum(whole.values())) / MILLI, 2),
        "partial_gpus": {
            "total": round(partial / MILLI, 2),
            "too_small": round(too_small / MILLI, 2),
            "remnants": {f"{f / MILLI:g}": round(v / MILLI, 2) for f, v in largest},
        },
        "whole_gpus": {k: round(v / MILLI, 2) for k, v in whole.items()},
    }


def run_packing(
    nodes: list[Node],
    pods: list[TraceJob],
    core: SchedulerCore,
    *,
    inflation: float = 1.3,
    seed: int = 0,
    include_cpu_only: bool = True,
    resolution: float = 0.01,
    progress: Progress | None = None,
    fgd_weight: Literal["pods", "gpus"] = "pods",
    arrivals: Arrivals = "shuffled-trace",
) -> PackingResult:
    """The FGD packing experiment on ``nodes`` with pods drawn from ``pods`` (see the module docstring).

    ``arrivals="shuffled-trace"`` submits every pod of the list once, in seeded random order, before drawing more
    with replacement, as the FGD authors' simulator does (their openb default list asks for 98 % of the cluster's
    GPUs, so the 100 % mark sees the trace's exact mix); ``"with-replacement"`` draws every pod.

    Pods without GPUs are drawn too, as in the paper's simulator (they take CPU that GPU pods need, and count 0
    towards the arrived GPU request); ``include_cpu_only=False`` leaves them out. If the core uses the FGD scorer,
    its workload profile is the draw's own task distribution (:class:`TraceDistribution`, shapes weighted by
    ``fgd_weight``: pod counts as in the paper, or requested GPUs), as the paper assumes the distribution known.
    """
    if core.config.queueing.preemption:
        raise ValueError("the packing experiment never deletes pods: use a core without preemption (packing_core)")
    if arrivals not in ARRIVALS:
        raise ValueError(f"unknown arrivals {arrivals!r} (allowed: {', '.join(ARRIVALS)})")
    began = time.perf_counter()
    state = ClusterState(nodes)
    capacity = sum(n.devices for n in nodes) * MILLI
    policy = core.placement.scorer.name
    result = PackingResult(
        policy=policy, seed=seed, inflation=inflation, cluster_gpus=capacity // MILLI, arrivals=arrivals
    )
    draw = [p for p in pods if include_cpu_only or p.gpu_request_milli > 0]
    result.skipped_cpu_only = len(pods) - len(draw)
    if not draw or not capacity:
        return result
    rng = random.Random(seed)
    first = list(range(len(draw))) if arrivals == "shuffled-trace" else []
    rng.shuffle(first)
    jobs = [p.to_job() for p in draw]
    scorer = core.placement.scorer
    if isinstance(scorer, FGDScorer):
        scorer.profile = TraceDistribution(jobs, weight=fgd_weight)
    meter = FragmentationMeter(workload_shapes(jobs), state)
    target = inflation * capacity
    arrived = 0
    allocated = 0
    next_mark = resolution
    reasons: dict[str, int] = {}
    failed: dict[str, int] = {}
    i = 0
    while arrived < target:
        i += 1
        index = first[i - 1] if i <= len(first) else rng.randrange(len(draw))
        template = jobs[index]
        job = template.model_copy(update={"id": f"{template.id}#{i}"})
        request = draw[index].gpu_request_milli
        decision = core.step(state, [job], float(i))[0]
        arrived += request
        if decision.kind is DecisionKind.START and decision.placement is not None:
            allocated += request
            result.pods_placed += 1
            for node_id in decision.placement.nodes:
                meter.refresh(state.nodes[node_id])
        else:
            result.pods_failed += 1
            code = decision.reasons[0].code.value if decision.reasons else "unknown"
            reasons[code] = reasons.get(code, 0) + 1
            if request and not result.breakdown_at_100:
                label = _shape_label(job)
                failed[label] = failed.get(label, 0) + request
        if not result.breakdown_at_100 and arrived >= capacity - 1e-9:
            result.breakdown_at_100 = unallocated_breakdown(state, jobs)
            top = sorted(failed.items(), key=lambda kv: (-kv[1], kv[0]))[:6]
            result.breakdown_at_100["failed_before"] = {
                "gpus": round(sum(failed.values()) / MILLI, 2),
                "by_shape": {label: round(v / MILLI, 2) for label, v in top},
            }
        while arrived >= next_mark * capacity - 1e-9 and next_mark <= inflation + 1e-9:
            result.curve.append(
                {
                    "arrived": round(next_mark, 6),
                    "allocated": allocated / capacity,
                    "fragmentation": meter.total / capacity,
                    "unallocated_gpus": (capacity - allocated) / MILLI,
                    "fragmented_gpus": meter.total / MILLI,
                }
            )
            next_mark += resolution
        if progress is not None and i % 500 == 0:
            progress(int(arrived / target * 100))
    if not result.curve or result.curve[-1]["arrived"] < inflation - 1e-9:
        result.curve.append(
            {
                "arrived": arrived / capacity,
                "allocated": allocated / capacity,
                "fragmentation": meter.total / capacity,
                "unallocated_gpus": (capacity - allocated) / MILLI,
                "fragmented_gpus": meter.total / MILLI,
            }
        )
    result.pods_drawn = i
    result.reasons = reasons
    result.wall_s = time.perf_counter() - began
    return result
