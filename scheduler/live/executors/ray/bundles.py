"""Bundles for a launch: what each rank reserves in Ray, where it is pinned, and what its node spawns (pure).

One bundle per rank holds the vendor resource of the node's model (``GPU``, ``NPU``, ``MLU``... as
:func:`scheduler.ray_node.ray_resource_name` names it) × devices (a fraction of one device for an inference
replica), plus the worker's CPU and memory, and is pinned to the node the core chose by the Ray node label
``zhisuan.io/node`` (``bundle_label_selector``). Nothing here calls Ray, so the plan is testable anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from scheduler.catalog import Catalog
from scheduler.live.executors.base import ExecutorError, LaunchRequest
from scheduler.live.executors.ray.node import WorkerSpec
from scheduler.model import MILLI
from scheduler.ray_node import NODE_LABEL, device_visibility_env, ray_label_value, ray_resource_name

#: Placement groups (and nothing else of this executor) are named ``zhisuan-<job>-<attempt>``.
PREFIX = "zhisuan-"


def pg_name(job_id: str, attempt: int) -> str:
    """``pg_name("j1", 2) == "zhisuan-j1-2"``"""
    return f"{PREFIX}{job_id}-{attempt}"


@dataclass(frozen=True)
class WorkerPlan:
    """One rank: its bundle, the node label it is pinned to, and what its node supervisor spawns."""

    bundle: dict[str, float]
    selector: dict[str, str]
    spec: WorkerSpec


def plan_workers(
    req: LaunchRequest,
    catalog: Catalog,
    log_dir: str,
    namespace: str,
    stop_grace_s: float = 5.0,
) -> list[WorkerPlan]:
    """Bundles, label selectors and worker specs for a launch request (pure: no Ray calls).

    >>> from scheduler.catalog import load_catalog
    >>> from scheduler.model import Placement, TopologyLevel, WorkerPlacement
    >>> p = Placement("svc", "Ascend910B", "gz1/Ascend910B",
    ...               (WorkerPlacement("npu-01", (3,), 250, cpu_milli=500, memory_mib=1024),), TopologyLevel.NODE)
    >>> plan = plan_workers(LaunchRequest("svc", 0, p, "serve"), load_catalog(), "/tmp/logs", "zhisuan")[0]
    >>> plan.bundle, plan.selector, plan.spec.visibility_env
    ({'NPU': 0.25, 'CPU': 0.5, 'memory': 1073741824.0}, {'zhisuan.io/node': 'npu-01'}, ('ASCEND_RT_VISIBLE_DEVICES',))
    """
    placement = req.placement
    try:
        vendor = catalog[placement.model].vendor
    except KeyError as err:
        raise ExecutorError(str(err)) from None
    resource = ray_resource_name(vendor, catalog)
    visibility = device_visibility_env(vendor, catalog)
    runtime_env = catalog.vendor(vendor).runtime_env
    nodes = list(placement.nodes)
    per_node: dict[str, int] = {}
    plans: list[WorkerPlan] = []
    for rank, worker in enumerate(placement.workers):
        devices = len(worker.devices) * worker.milli / MILLI
        bundle: dict[str, float] = {}
        if devices > 0:
            bundle[resource] = round(devices, 4)
        if worker.cpu_milli > 0:
            bundle["CPU"] = worker.cpu_milli / 1000
        if worker.memory_mib > 0:
            bundle["memory"] = float(worker.memory_mib * 2**20)
        if not bundle:  # Ray refuses empty bundles; a worker with nothing reserved still needs a slot
            bundle["CPU"] = 0.001
        local_rank = per_node.get(worker.node, 0)
        per_node[worker.node] = local_rank + 1
        label = ray_label_value(worker.node)
        spec = WorkerSpec(
            job_id=req.job_id,
            attempt=req.attempt,
            rank=rank,
            world_size=req.world_size,
            local_rank=local_rank,
            local_world_size=0,  # filled below
            node_rank=nodes.index(worker.node),
            node=worker.node,
            node_label=label,
            model=placement.model,
            vendor=vendor,
            devices=tuple(worker.devices),
            milli=worker.milli,
            visibility_env=(visibility,) if visibility else (),
            device_env=dict(runtime_env),
            entrypoint=req.entrypoint,
            log_path=str(Path(log_dir) / req.job_id / str(req.attempt) / f"rank-{rank}.log"),
            namespace=namespace,
            env=dict(req.env),
            working_dir=req.working_dir,
            pip=tuple(req.pip),
            walltime_s=req.walltime_s,
            checkpoint_path=req.checkpoint_path,
            kind=req.kind.value,
            stop_grace_s=stop_grace_s,
        )
        plans.append(WorkerPlan(bundle, {NODE_LABEL: label}, spec))
    return [
        WorkerPlan(p.bundle, p.selector, _replace_spec(p.spec, local_world_size=per_node[p.spec.node])) for p in plans
    ]


def _replace_spec(spec: WorkerSpec, **changes: Any) -> WorkerSpec:
    return replace(spec, **changes)
