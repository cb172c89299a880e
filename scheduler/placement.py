"""The placement engine: where a job would start now, or structured reasons why it cannot.

Placement is all-or-nothing per job and never splits a worker across nodes. Order of concerns:

1. **Pool choice** (heterogeneity): acceptable models (or every model that runs the job class), filtered by the
   domestic preference, ordered by estimated finish time from the throughput matrix; each pool is checked in
   O(1) against its indexes before any node is looked at.
2. **Topology** for gangs: one node, else one interconnect island, else one switch, else across switches —
   the tightest level the pool's slot counters say can hold the gang, within ``topology_required``.
3. **Scoring** for single-node choices: a bounded set of candidates from the pool's sorted index, scored by the
   configured scorer (FGD by default).

    >>> from scheduler.model import Job, Node
    >>> from scheduler.state import ClusterState
    >>> from scheduler.placement import PlacementEngine
    >>> state = ClusterState([Node(id="n1", model="A100", devices=8, cpu_milli=64000, memory_mib=512000)])
    >>> engine = PlacementEngine()
    >>> result = engine.place(state, Job(id="j1", devices_per_worker=2))
    >>> result.placement.workers[0].devices
    (0, 1)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

from scheduler.catalog import Catalog, load_catalog
from scheduler.model import (
    MILLI,
    DomesticPreference,
    Job,
    Placement,
    Reason,
    ReasonCode,
    TopologyLevel,
    WorkerPlacement,
)
from scheduler.scoring import Scorer, make_scorer, whole_devices_on
from scheduler.state import ClusterState, DomainState, NodeState, PoolState
from scheduler.throughput import JobClass, ThroughputMatrix, load_throughput


@dataclass(frozen=True)
class PlacementConfig:
    """Knobs of the placement engine. ``candidates`` bounds how many nodes a scorer sees per worker."""

    scorer: str = "fgd"
    candidates: int = 8
    seed: int = 0
    #: Report at most this many pools' reasons for a job that cannot start (the fastest pools first).
    max_reasons: int = 4
    #: ``throughput``: the fastest acceptable pool with room wins (finish time first). ``score``: single-node
    #: jobs go to the best-scored node over all acceptable pools, as FGD's packing experiment assumes.
    pool_choice: Literal["throughput", "score"] = "throughput"


@dataclass
class PlacementResult:
    """Either a placement (the job can start now) or the reasons it cannot, per pool tried."""

    placement: Placement | None = None
    reasons: list[Reason] = field(default_factory=list)
    relative_throughput: float = 0.0
    #: Some pool passed quota but had no room: the case for preemption or a reservation.
    capacity_blocked: bool = False


#: ``admit(pool, relative_throughput) -> None | Reason``: quota's say on one candidate pool.
Admission = Callable[[PoolState, float], Reason | None]


class PlacementEngine:
    """Finds placements on a :class:`ClusterState` without changing it (the caller allocates)."""

    def __init__(
        self,
        config: PlacementConfig | None = None,
        catalog: Catalog | None = None,
        throughput: ThroughputMatrix | None = None,
        scorer: Scorer | None = None,
    ) -> None:
        self.config = config or PlacementConfig()
        self.catalog = catalog or load_catalog()
        self.throughput = throughput or (load_throughput(catalog=catalog) if catalog else load_throughput())
        self.scorer = scorer or make_scorer(self.config.scorer, self.config.seed)
        self._model_order: dict[tuple[tuple[str, ...], JobClass, DomesticPreference], list[tuple[str, float]]] = {}
        self._infeasible: dict[tuple[object, ...], tuple[int, Reason]] = {}
        self._infeasible_shapes: dict[tuple[object, ...], tuple[int, tuple[Reason, ...]]] = {}
        #: Parked attempts: per (shape, pool), the pool's ``version`` when the shape last failed there, the
        #: reason, and whether the pool's counters had passed the shape (then quota was asked, and is again).
        self._parked: dict[tuple[object, ...], tuple[int, Reason, bool]] = {}
        #: How many pool searches parking saved (for tests and benchmarks).
        self.parked_hits = 0

    # ------------------------------------------------------------------------------------------ pools

    def acceptable_models(self, job: Job) -> list[tuple[str, float]]:
        """``(model, relative throughput)`` the job may use, fastest first; cached per job shape."""
        key = (job.models, job.job_class, job.domestic)
        order = self._model_order.get(key)
        if order is None:
            names = job.models or tuple(self.throughput.models_for(job.job_class))
            rows: list[tuple[str, float, bool]] = []
            for name in names:
                entry = self.catalog.lookup(name)
                if entry is None:
                    continue
                if job.domestic is DomesticPreference.REQUIRED and not entry.domestic:
                    continue
                rel = self.throughput.relative(entry.model, job.job_class)
                if rel <= 0:
                    continue
                rows.append((entry.model, rel, entry.domestic))
            prefer_domestic = job.domestic is DomesticPreference.PREFERRED
            rows.sort(key=lambda r: (prefer_domestic and not r[2], -r[1], r[0]))
            order = self._model_order[key] = [(m, rel) for m, rel, _ in rows]
        return order

    def candidate_pools(self, state: ClusterState, job: Job) -> Iterator[tuple[PoolState, float]]:
        for model, rel in self.acceptable_models(job):
            for pool in state.pools_by_model.get(model, ()):
                yield pool, rel

    # ------------------------------------------------------------------------------------------ entry

    def place(self, state: ClusterState, job: Job, admit: Admission | None = None) -> PlacementResult:
        """Where ``job`` would start now on ``state`` (unchanged), or why it cannot.

        ``admit(pool, relative_throughput)`` is asked before a pool is tried (quota lives outside placement);
        a reason it returns is reported and the pool skipped.

        A shape that did not fit a pool keeps not fitting until capacity grows (``state.capacity_epoch``
        moves), because allocations only shrink what is free. The first failure is remembered per (shape,
        pool), which keeps a long saturated queue at a few dictionary lookups per job.

        Once ``capacity_epoch`` has moved (capacity came back somewhere, a phantom was lifted, a projection
        ran), a pool whose contents did not change at all since the shape failed there (``PoolState.version``)
        is not searched again: the shape stays *parked* on it, with the very reason the search would give
        again (every number in it is read from the unchanged pool). Only quota, which lives outside the pool,
        is asked again.
        """
        shape = shape_key(job)
        epoch = state.capacity_epoch
        whole_miss = self._infeasible_shapes.get(shape)
        if whole_miss is not None and whole_miss[0] == epoch:
            # Every candidate pool lacked room for this shape, and none has gained any since.
            return PlacementResult(reasons=list(whole_miss[1]), capacity_blocked=True)
        result = PlacementResult()
        refused = False
        tried = 0
        # Score mode collects the best node of every pool and picks the lowest score at the end.
        across: list[tuple[float, PoolState, float, NodeState, tuple[int, ...]]] | None = (
            [] if self.config.pool_choice == "score" and job.workers == 1 else None
        )
        for pool, rel in self.candidate_pools(state, job):
            tried += 1
            key = (shape, pool.id)
            known = self._infeasible.get(key)
            if known is not None and known[0] == epoch:
                # No room regardless of quota: skip the quota check, capacity is the blocker.
                reason: Reason | None = known[1]
            elif across is not None and self._quick_reject(pool, job) is None:
                refusal = admit(pool, rel) if admit is not None else None
                if refusal is not None:
                    refused = True
                    self._note(result, refusal)
                    continue
                scored = self._best_node_scored(pool, job)
                if scored is not None and (not across or scored[0] < across[0][0]):
                    across[:] = [(scored[0], pool, rel, scored[1], scored[2])]
                reason = None if scored is not None else self._resource_reason(pool, job)
                if scored is not None:
                    continue
            else:
                parked = self._parked.get(key)
                fresh = parked is None or parked[0] != pool.version
                if parked is not None and not fresh:
                    # Nothing in the pool changed since this shape failed here: the same reason, unsearched.
                    reason, counted = parked[1], parked[2]
                    self.parked_hits += 1
                else:
                    reason = self._quick_reject(pool, job)
                    counted = reason is None
                if counted and admit is not None:
                    refusal = admit(pool, rel)
                    if refusal is not None:
                        refused = True
                        self._note(result, refusal)
                        continue
                if fresh:
                    version = pool.version
                    if reason is None:
                        placement, reason = self._place_in_pool(state, pool, job)
                        if placement is not None:
                            result.placement = placement
                            result.relative_throughput = rel
                            return result
                    # Parked only after a search that left no trace: replicas that tried workers out on the
                    # pool allocated and released them, which moves epochs that reservations and the memos
                    # above read, so skipping that search next time would not leave the state as it did.
                    if reason is not None and pool.version == version:
                        if len(self._parked) > 200_000:
                            self._parked.clear()
                        self._parked[key] = (version, reason, counted)
                if reason is not None:
                    if len(self._infeasible) > 200_000:
                        self._infeasible.clear()
                    self._infeasible[key] = (epoch, reason)
            result.capacity_blocked = True
            if reason is not None:
                self._note(result, reason)
        if across:
            _, pool, rel, ns, devices = across[0]
            result.placement = self._placement(pool, job, [(ns, devices)], TopologyLevel.NODE)
            result.relative_throughput = rel
            result.reasons = []
            result.capacity_blocked = False
            return result
        if tried and not refused:
            if len(self._infeasible_shapes) > 100_000:
                self._infeasible_shapes.clear()
            reasons = tuple(result.reasons)
            if whole_miss is not None and whole_miss[1] == reasons:
                # Kept as the same objects while they read the same (callers compare reasons step after step).
                reasons = whole_miss[1]
            self._infeasible_shapes[shape] = (epoch, reasons)
        if not tried:
            wanted = ", ".join(job.models) if job.models else f"any model that runs {job.job_class.value}"
            domestic = " (domestic only)" if job.domestic is DomesticPreference.REQUIRED else ""
            result.reasons.append(
                Reason(
                    ReasonCode.MODEL_MISMATCH,
                    "no pool of {wanted} exists in the cluster",
                    detail={"wanted": wanted + domestic},
                )
            )
        return result

    def place_in(self, state: ClusterState, job: Job, pool: PoolState) -> Placement | None:
        """A placement in one given pool, bypassing the memo (preemption and reservations probe with it)."""
        if self._quick_reject(pool, job) is not None:
            return None
        placement, _ = self._place_in_pool(state, pool, job)
        return placement

    def _note(self, result: PlacementResult, reason: Reason) -> None:
        if len(result.reasons) < self.config.max_reasons:
            result.reasons.append(reason)

    def observe(self, job: Job) -> None:
        """Tell the scorer a job was placed, so fragmentation is measured against the live size mix."""
        self.scorer.observe(job)

    # ------------------------------------------------------------------------------------------ checks

    def _quick_reject(self, pool: PoolState, job: Job) -> Reason | None:
        """O(1) checks against the pool's counters; ``None`` means "worth trying"."""
        k = job.whole_devices
        if k:
            if k > pool.max_devices:
                return Reason(
                    ReasonCode.UNSCHEDULABLE,
                    "a worker needs {devices_per_worker} devices but nodes of {pool} have at most "
                    "{max_devices_per_node}",
                    pool.id,
                    {"devices_per_worker": k, "max_devices_per_node": pool.max_devices},
                )
            if pool.slots[k] >= job.workers:
                return None
            needed = job.workers * k * MILLI
            if pool.free_milli < needed:
                return self._no_capacity(pool, job)
            return Reason(
                ReasonCode.FRAGMENTATION,
                "{free_devices:g} devices free in {pool}, but only {worker_slots} groups of "
                "{devices_per_worker} free devices on one node for {workers} workers",
                pool.id,
                {
                    "free_devices": pool.free_milli / MILLI,
                    "worker_slots": pool.slots[k],
                    "devices_per_worker": k,
                    "workers": job.workers,
                },
            )
        if job.device_milli:
            if pool.by_partial and pool.by_partial[-1][0] >= job.device_milli:
                return None
            if pool.free_milli < job.total_device_milli:
                return self._no_capacity(pool, job)
            return Reason(
                ReasonCode.FRAGMENTATION,
                "{free_devices:g} devices free in {pool}, but no single device has {device_milli} milli free",
                pool.id,
                {"free_devices": pool.free_milli / MILLI, "device_milli": job.device_milli},
            )
        if pool.by_cpu and pool.by_cpu[-1][0] >= job.cpu_milli_per_worker:
            return None
        return Reason(
            ReasonCode.NO_CAPACITY,
            "no node in {pool} has {cpu_milli} CPU milli free",
            pool.id,
            {"cpu_milli": job.cpu_milli_per_worker},
        )

    @staticmethod
    def _no_capacity(pool: PoolState, job: Job) -> Reason:
        if job.total_device_milli > pool.capacity_milli:
            return Reason(
                ReasonCode.UNSCHEDULABLE,
                "the job needs {requested_devices:g} devices; {pool} has {capacity:g} in all",
                pool.id,
                {"requested_devices": job.total_devices, "capacity": pool.capacity_milli / MILLI},
            )
        return Reason(
            ReasonCode.NO_CAPACITY,
            "{pool} has {free_devices:g} devices free; the job needs {requested_devices:g}",
            pool.id,
            {"free_devices": pool.free_milli / MILLI, "requested_devices": job.total_devices},
        )

    # ------------------------------------------------------------------------------------------ placing

    def _place_in_pool(self, state: ClusterState, pool: PoolState, job: Job) -> tuple[Placement | None, Reason | None]:
        if job.workers == 1:
            choice = self._best_node(pool, job)
            if choice is None:
                return None, self._resource_reason(pool, job)
            ns, devices = choice
            return self._placement(pool, job, [(ns, devices)], TopologyLevel.NODE), None
        if job.whole_devices:
            return self._place_gang(pool, job)
        return self._place_replicas(state, pool, job)

    def _fits_host(self, ns: NodeState, job: Job, workers: int = 1) -> bool:
        return (
            ns.schedulable
            and ns.cpu_free >= job.cpu_milli_per_worker * workers
            and ns.mem_free >= job.memory_mib_per_worker * workers
        )

    def _candidates(self, pool: PoolState, job: Job) -> Iterator[NodeState]:
        """Nodes that can hold one worker's devices, tightest (or emptiest) first, from the pool's index."""
        if job.whole_devices:
            index, need = pool.by_whole, job.whole_devices
        elif job.device_milli:
            index, need = pool.by_partial, job.device_milli
        else:
            index, need = pool.by_cpu, job.cpu_milli_per_worker
        nodes = pool.nodes
        if self.scorer.tight_first:
            for _, i in index.islice(index.bisect_left((need, -1)), None):
                yield nodes[i]
        else:
            start = index.bisect_left((need, -1))
            for _, i in index.islice(start, None, reverse=True):
                yield nodes[i]

    def _best_node(self, pool: PoolState, job: Job) -> tuple[NodeState, tuple[int, ...]] | None:
        scored = self._best_node_scored(pool, job)
        return (scored[1], scored[2]) if scored is not None else None

    def _best_node_scored(self, pool: PoolState, job: Job) -> tuple[float, NodeState, tuple[int, ...]] | None:
        best: tuple[float, int, NodeState, tuple[int, ...]] | None = None
        seen = 0
        # Host checks (CPU, memory) can reject many index candidates in a row; bound that walk too.
        budget = self.config.candidates * 16
        for ns in self._candidates(pool, job):
            budget -= 1
            if budget < 0:
                break
            if not self._fits_host(ns, job):
                continue
            scored = self.scorer.evaluate(ns, job)
            if scored is None:
                continue
            score, devices = scored
            if best is None or (score, ns.index) < (best[0], best[1]):
                best = (score, ns.index, ns, devices)
            seen += 1
            if seen >= self.config.candidates:
                break
        return (best[0], best[2], best[3]) if best is not None else None

    def _resource_reason(self, pool: PoolState, job: Job) -> Reason:
        return Reason(
            ReasonCode.NO_CAPACITY,
            "nodes of {pool} with free devices lack CPU or memory for a worker "
            "({cpu_milli} CPU milli, {memory_mib} MiB)",
            pool.id,
            {"cpu_milli": job.cpu_milli_per_worker, "memory_mib": job.memory_mib_per_worker},
        )

    def _place_gang(self, pool: PoolState, job: Job) -> tuple[Placement | None, Reason | None]:
        """Whole-device gang: the tightest topology domain whose slot counter holds all workers."""
        k, workers = job.whole_devices, job.workers
        limit = job.topology_required
        if workers * k <= pool.max_devices:
            for ns in self._candidates_whole(pool, workers * k):
                if self._fits_host(ns, job, workers):
                    devices = whole_devices_on(ns, workers * k)
                    assert devices is not None
                    chunks = [(ns, devices[i * k : (i + 1) * k]) for i in range(workers)]
                    return self._placement(pool, job, chunks, TopologyLevel.NODE), None
        levels: list[tuple[TopologyLevel, list[DomainState]]] = []
        if pool.multi_node_islands:
            levels.append((TopologyLevel.ISLAND, list(pool.islands.values())))
        levels.append((TopologyLevel.SWITCH, list(pool.switches.values())))
        for level, domains in levels:
            if level > limit:
                break
            fitting = sorted((d for d in domains if d.slots[k] >= workers), key=lambda d: (d.slots[k], d.id))
            for domain in fitting:
                filled = self._fill(domain.nodes, job)
                if filled is not None:
                    return self._placement(pool, job, filled, level), None
        if limit < TopologyLevel.POOL:
            return None, Reason(
                ReasonCode.TOPOLOGY,
                "{worker_slots} workers of {devices_per_worker} devices fit in {pool}, but no single "
                "{required} holds {workers}",
                pool.id,
                {
                    "required": limit.name.lower(),
                    "worker_slots": pool.slots[k],
                    "devices_per_worker": k,
                    "workers": workers,
                },
            )
        # Across switches: fill the fullest switches first so the gang touches as few as possible.
        switches = sorted(pool.switches.values(), key=lambda d: (-d.slots[k], d.id))
        nodes = [ns for domain in switches if domain.slots[k] for ns in domain.nodes]
        spread = self._fill(nodes, job)
        if spread is None:
            return None, self._resource_reason(pool, job)
        return self._placement(pool, job, spread, TopologyLevel.POOL), None

    def _candidates_whole(self, pool: PoolState, need: int) -> Iterator[NodeState]:
        index = pool.by_whole
        for n, (_, i) in enumerate(index.islice(index.bisect_left((need, -1)), None)):
            if n >= self.config.candidates * 16:
                return
            yield pool.nodes[i]

    def _fill(self, nodes: list[NodeState], job: Job) -> list[tuple[NodeState, tuple[int, ...]]] | None:
        """Greedy: nodes holding the most workers first, so the gang spans as few nodes as possible."""
        k, cpu, mem = job.whole_devices, job.cpu_milli_per_worker, job.memory_mib_per_worker
        capacity: list[tuple[int, int, NodeState]] = []
        for ns in nodes:
            if not ns.schedulable or ns.free_whole < k:
                continue
            fit = ns.free_whole // k
            if cpu:
                fit = min(fit, ns.cpu_free // cpu)
            if mem:
                fit = min(fit, ns.mem_free // mem)
            if fit > 0:
                capacity.append((-fit, ns.index, ns))
        capacity.sort(key=lambda c: (c[0], c[1]))
        chunks: list[tuple[NodeState, tuple[int, ...]]] = []
        remaining = job.workers
        for neg_fit, _, ns in capacity:
            take = min(-neg_fit, remaining)
            devices = whole_devices_on(ns, take * k)
            assert devices is not None
            chunks.extend((ns, devices[i * k : (i + 1) * k]) for i in range(take))
            remaining -= take
            if not remaining:
                return chunks
        return None

    def _place_replicas(self, state: ClusterState, pool: PoolState, job: Job) -> tuple[Placement | None, Reason | None]:
        """Fractional or device-less workers: one at a time, each on the scorer's best node, all or nothing.

        Workers are tentatively allocated as they are chosen (so the next sees the capacity taken) and the
        tentative allocation is released before returning: the caller commits the final placement.
        """
        chunks: list[tuple[NodeState, tuple[int, ...]]] = []
        tentative = f"\x00tentative:{job.id}"
        try:
            for i in range(job.workers):
                choice = self._best_node(pool, job)
                if choice is None:
                    return None, self._resource_reason(pool, job)
                ns, devices = choice
                chunks.append((ns, devices))
                worker = self._worker(ns, devices, job)
                state.allocate(
                    Placement(
                        job_id=f"{tentative}:{i}",
                        model=pool.model,
                        pool=pool.id,
                        workers=(worker,),
                        topology=TopologyLevel.NODE,
                    )
                )
        finally:
            for i in range(len(chunks)):
                state.release(f"{tentative}:{i}")
        return self._placement(pool, job, chunks, _tightest_level(chunks)), None

    # ------------------------------------------------------------------------------------------ results

    @staticmethod
    def _worker(ns: NodeState, devices: tuple[int, ...], job: Job) -> WorkerPlacement:
        return WorkerPlacement(
            node=ns.id,
            devices=devices,
            milli=min(job.device_milli, MILLI) if devices else 0,
            cpu_milli=job.cpu_milli_per_worker,
            memory_mib=job.memory_mib_per_worker,
        )

    def _placement(
        self,
        pool: PoolState,
        job: Job,
        chunks: list[tuple[NodeState, tuple[int, ...]]],
        level: TopologyLevel,
    ) -> Placement:
        return Placement(
            job_id=job.id,
            model=pool.model,
            pool=pool.id,
            workers=tuple(self._worker(ns, devices, job) for ns, devices in chunks),
            topology=level if level is not TopologyLevel.POOL else _tightest_level(chunks),
        )


def shape_key(job: Job) -> tuple[object, ...]:
    """Everything about a job that placement looks at; jobs with equal keys place (or fail) alike."""
    return job.placement_shape


def _tightest_level(chunks: list[tuple[NodeState, tuple[int, ...]]]) -> TopologyLevel:
    nodes = {ns.id for ns, _ in chunks}
    if len(nodes) <= 1:
        return TopologyLevel.NODE
    if len({ns.island.id for ns, _ in chunks}) == 1:
        return TopologyLevel.ISLAND
    if len({ns.switch.id for ns, _ in chunks}) == 1:
        return TopologyLevel.SWITCH
    return TopologyLevel.POOL
