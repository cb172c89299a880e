"""A full-scan placer: the obvious algorithm, kept as the oracle for tests and the baseline for benchmarks.

It looks at every node of every acceptable pool for every decision and applies plain best fit. It ignores the
indexes entirely, which is what makes it useful: the property tests check that the indexed engine finds a
placement exactly when this one does, and ``benchmarks/placement.py`` reports how much faster the indexes are.

    >>> from scheduler.model import Job, Node
    >>> from scheduler.state import ClusterState
    >>> state = ClusterState([Node(id="n1", model="A100", devices=8, cpu_milli=64000, memory_mib=512000)])
    >>> FullScanPlacer().place(state, Job(id="j", devices_per_worker=0.5)).workers[0].milli
    500
"""

from __future__ import annotations

from scheduler.catalog import Catalog, load_catalog
from scheduler.model import MILLI, Job, Placement, TopologyLevel, WorkerPlacement
from scheduler.state import ClusterState, NodeState
from scheduler.throughput import ThroughputMatrix, load_throughput


class FullScanPlacer:
    """Best fit over all nodes; whole-device gangs spread over any nodes of one pool (no topology preference)."""

    def __init__(self, catalog: Catalog | None = None, throughput: ThroughputMatrix | None = None) -> None:
        self.catalog = catalog or load_catalog()
        self.throughput = throughput or load_throughput()

    def place(self, state: ClusterState, job: Job) -> Placement | None:
        models = job.models or tuple(self.throughput.models_for(job.job_class))
        for name in models:
            entry = self.catalog.lookup(name)
            if entry is None or self.throughput.relative(entry.model, job.job_class) <= 0:
                continue
            for pool in state.pools_by_model.get(entry.model, ()):
                placement = self._place_in(pool.nodes, pool.model, pool.id, job)
                if placement is not None:
                    return placement
        return None

    def _place_in(self, nodes: list[NodeState], model: str, pool_id: str, job: Job) -> Placement | None:
        workers: list[WorkerPlacement] = []
        # Work on scratch copies so that several workers of one job see each other's usage.
        free = {
            ns.id: [f if ok and ns.schedulable else 0 for f, ok in zip(ns.free, ns.healthy, strict=True)]
            for ns in nodes
        }
        cpu = {ns.id: ns.cpu_free if ns.schedulable else -1 for ns in nodes}
        mem = {ns.id: ns.mem_free for ns in nodes}
        for _ in range(job.workers):
            best: tuple[int, str, tuple[int, ...]] | None = None
            for ns in nodes:
                if cpu[ns.id] < job.cpu_milli_per_worker or mem[ns.id] < job.memory_mib_per_worker:
                    continue
                devices = _devices(free[ns.id], job)
                if devices is None:
                    continue
                left = sum(free[ns.id]) - job.device_milli
                if best is None or (left, ns.id) < (best[0], best[1]):
                    best = (left, ns.id, devices)
            if best is None:
                return None
            _, node_id, devices = best
            milli = min(job.device_milli, MILLI) if devices else 0
            for d in devices:
                free[node_id][d] -= milli
            cpu[node_id] -= job.cpu_milli_per_worker
            mem[node_id] -= job.memory_mib_per_worker
            workers.append(
                WorkerPlacement(
                    node=node_id,
                    devices=devices,
                    milli=milli,
                    cpu_milli=job.cpu_milli_per_worker,
                    memory_mib=job.memory_mib_per_worker,
                )
            )
        return Placement(job_id=job.id, model=model, pool=pool_id, workers=tuple(workers), topology=TopologyLevel.POOL)


def _devices(free: list[int], job: Job) -> tuple[int, ...] | None:
    if job.whole_devices:
        chosen = tuple(i for i, f in enumerate(free) if f == MILLI)[: job.whole_devices]
        return chosen if len(chosen) == job.whole_devices else None
    if job.device_milli:
        fitting = [(f, i) for i, f in enumerate(free) if f >= job.device_milli]
        return (min(fitting)[1],) if fitting else None
    return ()
