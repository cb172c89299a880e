"""Run one simulation from files: cluster + trace (+ scenario) → a JSON-able result.

This is what the CLI and the sweep workers call, so it takes only plain values (paths, names, numbers) and
returns plain data; a process pool or a Ray task can run it anywhere::

    >>> from simulations.runner import RunSpec
    >>> RunSpec(cluster="seeds/clusters/example.yaml", mode="timeline").policy
    'fgd'
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from scheduler.catalog import Catalog, load_catalog
from scheduler.core import CoreConfig, QueueingConfig, SchedulerCore
from scheduler.model import Node
from scheduler.placement import PlacementConfig
from scheduler.scaling import ScalingRule
from scheduler.tenancy import QueuePolicy, check_ordering, load_policy
from scheduler.throughput import ThroughputMatrix, load_throughput
from simulations.loaders import LoadOptions, SkipReport, TraceError, TraceSource, load_nodes, open_trace
from simulations.metrics import workload_shapes
from simulations.packing import Arrivals, packing_core, run_packing
from simulations.scaling import ScalingReplay, scaling_pools
from simulations.scenario import Scenario, apply_changes, grow_demand, load_scenario
from simulations.schema import TraceJob
from simulations.synthetic import SyntheticSpec, pai_like
from simulations.timeline import Progress, SimConfig, TimelineSimulation


@dataclass
class RunSpec:
    """Everything one run needs, as plain values (picklable for process pools and Ray)."""

    cluster: str | None = None
    trace: str | None = None
    format: str = "native"
    mode: str = "timeline"
    policy: str = "fgd"
    seed: int = 0
    inflation: float = 1.3
    scenario: str | None = None
    #: Name of one variant of the scenario (``None``: the scenario itself, or its first variant).
    variant: str | None = None
    strict: bool = False
    include_cpu_only: bool = True
    #: Packing: ``shuffled-trace`` (the whole list once, then draws, as the FGD authors) or ``with-replacement``.
    arrivals: Arrivals = "shuffled-trace"
    catalog_path: str | None = None
    throughput_path: str | None = None
    candidates: int = 8
    #: The core's ordering of pending jobs (``scheduler.orderings``); queues of a policy may name their own.
    ordering: str = "drf"
    #: Further ``QueueingConfig`` knobs (``min_runtime_s``, ``backfill``, ``las_thresholds``, ...).
    queueing: dict[str, Any] = field(default_factory=dict)
    #: Further ``SimConfig`` knobs (``step_period_s``, ``preempted_resume``, ``record_jobs``, ...).
    simulation: dict[str, Any] = field(default_factory=dict)
    #: A policy file (tenants, queues, quotas, per-queue orderings) the core runs under.
    policy_file: str | None = None
    #: Timeline: replay the KubeRay worker-group scaling rule (``scheduler.scaling``): every node starts out of
    #: service; a node the rule adds takes work ``scale_startup_s`` later, an idle one goes after ``scale_grace_s``.
    autoscale: bool = False
    scale_grace_s: float = 600.0
    scale_interval_s: float = 10.0
    scale_startup_s: float = 60.0
    extra: dict[str, Any] = field(default_factory=dict)


def _catalogs(spec: RunSpec) -> tuple[Catalog, ThroughputMatrix]:
    catalog = load_catalog(spec.catalog_path) if spec.catalog_path else load_catalog()
    if spec.throughput_path or spec.catalog_path:
        return catalog, load_throughput(spec.throughput_path, catalog=catalog)
    return catalog, load_throughput()


def _core(
    policy: str,
    seed: int,
    candidates: int,
    catalog: Catalog,
    throughput: ThroughputMatrix,
    ordering: str = "drf",
    queueing: dict[str, Any] | None = None,
    queue_policy: QueuePolicy | None = None,
) -> SchedulerCore:
    knobs = dict(queueing or {})
    if "las_thresholds" in knobs:
        knobs["las_thresholds"] = tuple(float(t) for t in knobs["las_thresholds"])
    allowed = {f.name for f in fields(QueueingConfig)} - {"ordering"}
    unknown = sorted(set(knobs) - allowed)
    if unknown:
        raise ValueError(f"unknown queueing parameter {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")
    config = CoreConfig(
        placement=PlacementConfig(scorer=policy, seed=seed, candidates=candidates),
        queueing=QueueingConfig(ordering=check_ordering(ordering), **knobs),  # type: ignore[arg-type]
    )
    return SchedulerCore(config, catalog, throughput, queue_policy)


def sim_config(base: SimConfig, knobs: dict[str, Any]) -> SimConfig:
    """``base`` with ``knobs`` set; an unknown knob is one line naming the allowed ones."""
    allowed = {f.name for f in fields(SimConfig)} - {"economics"}
    unknown = sorted(set(knobs) - allowed)
    if unknown:
        raise ValueError(f"unknown simulation parameter {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")
    return replace(base, **knobs)


def run(spec: RunSpec, progress: Progress | None = None) -> dict[str, Any]:
    """Run ``spec`` and return its result as plain data (``summary``, ``plots``, ``trace`` report, …)."""
    if spec.autoscale and spec.mode != "timeline":
        raise ValueError("--autoscale replays the worker-group scaling rule in the timeline mode only")
    catalog, throughput = _catalogs(spec)
    scenario: Scenario | None = None
    if spec.scenario:
        runs = load_scenario(spec.scenario).expand()
        chosen = [s for s in runs if spec.variant in (None, s.name)]
        if not chosen:
            raise TraceError(spec.scenario, f"no variant {spec.variant!r} (have: {', '.join(s.name for s in runs)})")
        scenario = chosen[0]
    cluster_path = spec.cluster or (str(scenario.path(scenario.cluster)) if scenario and scenario.cluster else None)
    if cluster_path is None:
        raise TraceError(spec.scenario or "<command line>", "no cluster given (--cluster or the scenario's cluster:)")
    node_report = SkipReport()
    nodes: list[Node] = load_nodes(cluster_path, catalog, node_report)
    # A synthetic workload is sized for the base cluster, before the scenario's changes: every variant then
    # faces the same demand, and only the capacity or the policy differs.
    base_devices = sum(n.devices for n in nodes)
    base_models = tuple(sorted({n.model for n in nodes}))
    policy, seed, candidates, ordering = spec.policy, spec.seed, spec.candidates, spec.ordering
    if scenario is not None:
        nodes = apply_changes(nodes, scenario.changes, catalog, spec.scenario or "<scenario>")
        if spec.extra.get("policy_from_scenario", True):
            policy, seed, candidates = scenario.policy.scorer, scenario.policy.seed, scenario.policy.candidates
        if spec.extra.get("ordering_from_scenario", True) and spec.ordering == "drf":
            ordering = scenario.policy.ordering
    if not nodes:
        raise TraceError(cluster_path, "the cluster has no accelerator nodes")
    per_node = max(n.devices for n in nodes)
    options = LoadOptions(catalog=catalog, throughput=throughput, max_devices_per_worker=per_node, strict=spec.strict)
    queue_policy = load_policy(spec.policy_file, catalog) if spec.policy_file else None
    core = (
        packing_core(policy, seed, catalog, throughput, candidates)
        if spec.mode == "packing"
        else _core(policy, seed, candidates, catalog, throughput, ordering, spec.queueing, queue_policy)
    )
    devices = sum(n.devices for n in nodes)

    trace_path = spec.trace
    fmt = spec.format
    if trace_path is None and scenario is not None and scenario.workload.trace is not None:
        trace_path, fmt = str(scenario.path(scenario.workload.trace.path)), scenario.workload.trace.format
    source: TraceSource | None = None
    sized_for: dict[str, float] = {}
    jobs: Iterable[TraceJob]
    if trace_path is not None:
        source = open_trace(trace_path, fmt, options)
        jobs = source
    elif scenario is not None and scenario.workload.synthetic is not None:
        syn = scenario.workload.synthetic
        jobs = pai_like(
            syn.jobs,
            base_devices,
            spec=SyntheticSpec(
                jobs=syn.jobs,
                load=syn.load,
                seed=syn.seed,
                tenants=syn.tenants,
                constrained_share=syn.constrained_share,
                models=base_models,
            ),
        )
        trace_path = f"<synthetic {syn.jobs} jobs>"
        sized_for = {"load": syn.load, "sized_for_devices": base_devices}
    else:
        raise TraceError(spec.scenario or "<command line>", "no trace given (--trace or the scenario's workload:)")

    out: dict[str, Any]
    if spec.mode == "packing":
        packing = run_packing(
            nodes,
            list(jobs),
            core,
            inflation=spec.inflation,
            seed=seed,
            include_cpu_only=spec.include_cpu_only,
            progress=progress,
            arrivals=spec.arrivals,
        )
        out = packing.as_dict()
    elif spec.mode == "timeline":
        config = scenario.simulation.config(scenario.economics.economics(catalog)) if scenario else SimConfig(seed=seed)
        config = sim_config(config, spec.simulation)
        if scenario is not None and scenario.demand_growth:
            jobs = grow_demand(jobs, scenario.demand_growth, scenario.simulation.seed)
        ordered = source.ordered if source is not None else True
        if not ordered:
            # Unordered public traces are sorted in memory (one copy of compact rows); ordered ones stream.
            jobs = sorted(jobs, key=lambda j: j.submit_time)
        # The fragmentation metric needs the workload's GPU-demand mix: measured on the first jobs, which are
        # buffered and then replayed ahead of the rest of the stream.
        stream = iter(jobs)
        head = list(itertools.islice(stream, 20_000))
        shapes = workload_shapes(j.to_job() for j in head)
        sim = TimelineSimulation(
            nodes,
            core,
            config,
            catalog,
            throughput,
            shapes=shapes,
            progress=progress,
            trace_path=trace_path,
            trace_ordered=ordered,
        )
        scaling = _scaling_replay(spec, sim, nodes, core) if spec.autoscale else None
        replay = sim.run(itertools.chain(head, stream), SkipReport(strict=spec.strict))
        out = replay.as_dict()
        if scaling is not None:
            # Past the last job, until its nodes have had their grace period: capacity over time ends at rest.
            scaling.drain(until=sim.engine.now + spec.scale_grace_s + 2 * spec.scale_interval_s)
            out["scaling"] = scaling.summary(until=sim.engine.now)
        out["replay_skipped"] = out.pop("trace")
        out["plots"] = replay.plots
        if config.record_jobs:
            out["jobs"] = replay.jobs
        if queue_policy is not None:
            out["tenant_weights"] = {t: spec.weight for t, spec in queue_policy.tenants.items()}
        if scenario is not None:
            out["targets"] = scenario.targets.check(replay.summary)
    else:
        raise TraceError(spec.trace or "<command line>", f"unknown mode {spec.mode!r} (allowed: timeline, packing)")
    out["trace"] = source.report.as_dict() if source is not None else {"synthetic": trace_path, **sized_for}
    out.update(
        {
            "cluster": {
                "path": cluster_path,
                "nodes": len(nodes),
                "devices": devices,
                "skipped": node_report.as_dict(),
            },
            "policy": policy,
            "ordering": ordering,
            "seed": seed,
            "scenario": scenario.name if scenario else None,
        }
    )
    if spec.mode == "timeline":
        out["runtimes"] = runtime_source(ordering, bool(spec.simulation.get("hide_runtimes", False)))
    return out


def _scaling_replay(spec: RunSpec, sim: TimelineSimulation, nodes: list[Node], core: SchedulerCore) -> ScalingReplay:
    """The scaling rule of the live service's step 3b on the replay's own state (one worker group per pool)."""
    if min(spec.scale_grace_s, spec.scale_startup_s) < 0 or spec.scale_interval_s <= 0:
        raise ValueError("--scale-grace and the startup must not be negative, the scaling interval must be positive")
    rule = ScalingRule(
        grace_s=spec.scale_grace_s,
        acceptable=lambda job: [model for model, _ in core.placement.acceptable_models(job)],
    )
    replay = ScalingReplay(
        sim, scaling_pools(nodes), rule, interval_s=spec.scale_interval_s, startup_s=spec.scale_startup_s
    )
    replay.attach()
    return replay


def runtime_source(ordering: str, hidden: bool) -> str:
    """What the core's runtime estimates come from in a replay (stated in every result)."""
    if ordering == "qssf":
        return (
            "predicted from finished runs of the same user, name and size (DurationPredictor, Helios' QSSF); jobs "
            "with no history go last in their class"
        )
    if hidden:
        return (
            "the trace's durations are hidden from the core: estimates are the median of finished runs of the job "
            "class (RuntimeEstimator); jobs with none go last under sjf/srtf"
        )
    return "the trace's durations (an oracle: SJF and SRTF know every runtime, as in the published simulators)"


def variants_of(scenario_path: str | Path) -> list[str]:
    return [s.name for s in load_scenario(scenario_path).expand()]


ProgressFactory = Callable[[str], Progress]
