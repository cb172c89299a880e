"""Cluster state with incremental indexes, so that finding candidates never scans all nodes.

Per pool (one accelerator model in one site) the state keeps three sorted indexes, updated in O(log n) whenever
a node's free capacity changes:

* ``by_whole``: ``(free whole devices, node index)``: whole-device workers bisect to the tightest node that fits;
* ``by_partial``: ``(largest free milli on one device, node index)``: fractional workers bisect the same way;
* ``by_cpu``: ``(free CPU milli, node index)``: device-less workers.

Per pool, island and switch it also keeps *worker slots*: ``slots[k]`` is how many k-device workers fit if
every node is filled (``sum(free_whole // k)``), so a gang that cannot fit is rejected in O(1) and a gang that
can is packed into the tightest island or switch that holds it.

    >>> from scheduler.state import ClusterState
    >>> from scheduler.model import Node
    >>> state = ClusterState([Node(id="n1", model="H100", devices=8, cpu_milli=64000, memory_mib=512000)])
    >>> state.pools["default/H100"].slots[4]
    2
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

from sortedcontainers import SortedList

from scheduler.model import MILLI, DeviceHealth, Job, Node, Placement

_EPOCHS = itertools.count(1)
#: Versions of pools' contents (``PoolState.version``, ``PoolState.held``): unique across all states, so a memo
#: keyed by one never confuses two states (a forecast's copy, a rebuilt state). Separate from ``_EPOCHS`` so
#: that counting versions leaves every epoch value as it was.
_VERSIONS = itertools.count(1)


@dataclass(slots=True)
class RunningJob:
    """A job the core started: what it holds, since when, until when (estimated), and what it is charged.

    ``accounts`` are the quota and fair-share accounts it is charged to (its queue path, its tenant and its user);
    ``demand`` is its usage per flavor: devices under the model's name and normalised compute under ``ncu``.
    """

    job: Job
    placement: Placement
    started_at: float
    expected_end: float | None
    relative: float
    accounts: tuple[str, ...] = ()
    demand: dict[str, float] = field(default_factory=dict)
    last_checkpoint: float | None = None


class CapacityError(RuntimeError):
    """An allocation that would over-commit a device, CPU or memory; the state is left unchanged."""


class NodeState:
    """Mutable free capacity of one node; owned by its :class:`PoolState`."""

    __slots__ = (
        "cpu_free",
        "epoch",
        "free",
        "free_whole",
        "healthy",
        "index",
        "island",
        "max_free",
        "mem_free",
        "node",
        "pool",
        "schedulable",
        "switch",
    )

    def __init__(self, node: Node, index: int, pool: PoolState) -> None:
        self.node = node
        self.index = index
        self.pool = pool
        self.free: list[int] = [MILLI] * node.devices
        self.healthy: list[bool] = [True] * node.devices
        self.cpu_free = node.cpu_milli
        self.mem_free = node.memory_mib
        self.schedulable = True
        self.free_whole = node.devices
        self.max_free = MILLI if node.devices else 0
        #: Changes whenever this node's capacity or health changes (not for what-if projections).
        self.epoch = next(_EPOCHS)
        self.island: DomainState
        self.switch: DomainState

    @property
    def id(self) -> str:
        return self.node.id

    def _recount(self) -> tuple[int, int]:
        whole = 0
        best = 0
        if self.schedulable:
            for free, ok in zip(self.free, self.healthy, strict=True):
                if ok:
                    if free == MILLI:
                        whole += 1
                    if free > best:
                        best = free
        return whole, best


@dataclass(eq=False)
class DomainState:
    """An island (fast interconnect domain) or a switch (network leaf) within one pool."""

    id: str
    nodes: list[NodeState] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)


class PoolState:
    """All nodes of one model in one site, with the indexes described in the module docstring."""

    def __init__(self, pool_id: str, model: str, site: str, max_devices: int) -> None:
        self.id = pool_id
        self.model = model
        self.site = site
        self.max_devices = max_devices
        self.nodes: list[NodeState] = []
        self.by_whole = SortedList()
        self.by_partial = SortedList()
        self.by_cpu = SortedList()
        #: ``(estimated end, job id)`` of the running jobs placed here, for reservations (jobs without an end
        #: estimate are not in it).
        self.ends = SortedList()
        self.islands: dict[str, DomainState] = {}
        self.switches: dict[str, DomainState] = {}
        self.slots = [0] * (max_devices + 1)
        self.capacity_milli = 0
        self.free_milli = 0
        #: The state's ``capacity_epoch`` when capacity last grew in this pool (a release, a node added or back).
        self.grown = next(_EPOCHS)
        #: Changes whenever the free capacity of any node here changes in any way (allocations and releases,
        #: phantoms, what-if projections, health, cordons, nodes added): while it stays, everything placement
        #: reads of this pool is as it was, so a failed placement attempt stays failed with the same reason.
        self.version = next(_VERSIONS)
        #: Changes with what jobs really hold here (starts, releases other than phantoms', health, cordons,
        #: nodes added), not with phantoms or projections: while it stays, the pool's running jobs and the
        #: capacity they leave free are as they were.
        self.held = next(_VERSIONS)
        #: Phantom allocations (reservations hidden within a step) that sit in this pool now.
        self.phantoms = 0
        # Islands that span several nodes matter for gangs; single-node islands are covered by the node level.
        self.multi_node_islands = False

    def _domain(self, table: dict[str, DomainState], key: str) -> DomainState:
        domain = table.get(key)
        if domain is None:
            domain = table[key] = DomainState(key, [], [0] * (self.max_devices + 1))
        return domain

    def grow(self, max_devices: int) -> None:
        """Widen slot arrays when a node with more devices than any before joins."""
        if max_devices <= self.max_devices:
            return
        extra = max_devices - self.max_devices
        for arrays in (
            [self.slots],
            [d.slots for d in self.islands.values()],
            [d.slots for d in self.switches.values()],
        ):
            for array in arrays:
                array.extend([0] * extra)
        self.max_devices = max_devices


class ClusterState:
    """Nodes, pools, running placements and the indexes over them. Not thread-safe; the core owns it.

    Mutations go through :meth:`allocate`, :meth:`release`, :meth:`add_node`, :meth:`remove_node`,
    :meth:`set_device_health` and :meth:`set_schedulable`, which keep every index exact.
    """

    def __init__(self, nodes: Iterable[Node] = ()) -> None:
        self.nodes: dict[str, NodeState] = {}
        self.pools: dict[str, PoolState] = {}
        self.pools_by_model: dict[str, list[PoolState]] = {}
        self.allocations: dict[str, Placement] = {}
        #: Per allocated job, the per-node demand :meth:`allocate` took (what release, vacate and occupy give back).
        self._demands: dict[str, dict[str, tuple[dict[int, int], int, int]]] = {}
        #: Jobs started through :meth:`start` (a subset of ``allocations``, which also holds raw allocations).
        self.running: dict[str, RunningJob] = {}
        #: Usage per account (queue, tenant or user) per flavor, kept incrementally by start/release.
        self.usage: dict[str, dict[str, float]] = {}
        #: Accounts whose usage changed since the core last looked (it drains this set at each step), so that
        #: per-step work on usage is proportional to what changed.
        self.usage_touched: set[str] = set()
        #: Running jobs per pool, in start order: where preemption looks for victims.
        self.running_by_pool: dict[str, dict[str, None]] = {}
        #: Per pool, how many running jobs of each priority class: a quick "is anyone preemptible by me?".
        self.running_priorities: dict[str, dict[int, int]] = {}
        #: Installed devices per model (nodes taken out of service still count: they come back).
        self.devices_by_model: dict[str, int] = {}
        #: Changes whenever capacity may have *grown* (release, new node, node or device back in service).
        #: Unique across all states, so a cache keyed by it can never confuse two states.
        self.capacity_epoch = next(_EPOCHS)
        for node in nodes:
            self.add_node(node)

    # ------------------------------------------------------------------------------------------ inventory

    def add_node(self, node: Node) -> NodeState:
        if node.id in self.nodes:
            raise ValueError(f"node {node.id!r} already exists")
        self.capacity_epoch = next(_EPOCHS)
        pool = self.pools.get(node.pool)
        if pool is None:
            pool = self.pools[node.pool] = PoolState(node.pool, node.model, node.site, node.devices)
            self.pools_by_model.setdefault(node.model, []).append(pool)
        pool.grow(node.devices)
        pool.grown = self.capacity_epoch
        pool.version = pool.held = next(_VERSIONS)
        ns = NodeState(node, len(pool.nodes), pool)
        pool.nodes.append(ns)
        ns.island = pool._domain(pool.islands, node.island)
        ns.switch = pool._domain(pool.switches, node.switch)
        ns.island.nodes.append(ns)
        ns.switch.nodes.append(ns)
        if len(ns.island.nodes) > 1:
            pool.multi_node_islands = True
        self.nodes[node.id] = ns
        self.devices_by_model[node.model] = self.devices_by_model.get(node.model, 0) + node.devices
        pool.capacity_milli += node.devices * MILLI
        pool.free_milli += node.devices * MILLI
        pool.by_whole.add((ns.free_whole, ns.index))
        pool.by_partial.add((ns.max_free, ns.index))
        pool.by_cpu.add((ns.cpu_free, ns.index))
        for k in range(1, pool.max_devices + 1):
            gained = ns.free_whole // k
            pool.slots[k] += gained
            ns.island.slots[k] += gained
            ns.switch.slots[k] += gained
        return ns

    def remove_node(self, node_id: str) -> list[str]:
        """Mark a node gone: it takes no new work. Returns the ids of jobs that ran on it (to requeue).

        The node keeps its slot in the pool's arrays (indexes are positional), but it is never a candidate again.
        """
        self.set_schedulable(node_id, False)
        return [job_id for job_id, p in self.allocations.items() if any(w.node == node_id for w in p.workers)]

    def set_schedulable(self, node_id: str, schedulable: bool) -> None:
        ns = self.nodes[node_id]
        if ns.schedulable == schedulable:
            return
        ns.schedulable = schedulable
        ns.epoch = next(_EPOCHS)
        ns.pool.version = ns.pool.held = next(_VERSIONS)
        if schedulable:
            self.capacity_epoch = ns.pool.grown = next(_EPOCHS)
        self._reindex(ns)
        ns.pool.by_cpu.remove((ns.cpu_free if not schedulable else -1, ns.index))
        ns.pool.by_cpu.add((ns.cpu_free if schedulable else -1, ns.index))

    def set_device_health(self, node_id: str, device: int, health: DeviceHealth) -> None:
        ns = self.nodes[node_id]
        ns.healthy[device] = health is DeviceHealth.HEALTHY
        ns.epoch = next(_EPOCHS)
        ns.pool.version = ns.pool.held = next(_VERSIONS)
        if ns.healthy[device]:
            self.capacity_epoch = ns.pool.grown = next(_EPOCHS)
        self._reindex(ns)

    # ------------------------------------------------------------------------------------------ indexes

    def _index(self, ns: NodeState, whole: int, best: int) -> None:
        """Move ``ns`` from its old index keys to ``(whole, best)`` and update slot counters by the delta."""
        pool = ns.pool
        old_whole, old_best = ns.free_whole, ns.max_free
        if best != old_best:
            pool.by_partial.remove((old_best, ns.index))
            pool.by_partial.add((best, ns.index))
        if whole != old_whole:
            pool.by_whole.remove((old_whole, ns.index))
            pool.by_whole.add((whole, ns.index))
            pool_slots, island_slots, switch_slots = pool.slots, ns.island.slots, ns.switch.slots
            for k in range(1, pool.max_devices + 1):
                delta = whole // k - old_whole // k
                if delta:
                    pool_slots[k] += delta
                    island_slots[k] += delta
                    switch_slots[k] += delta
        ns.free_whole, ns.max_free = whole, best

    def _reindex(self, ns: NodeState) -> None:
        whole, best = ns._recount()
        if whole != ns.free_whole or best != ns.max_free:
            self._index(ns, whole, best)

    # ------------------------------------------------------------------------------------------ allocation

    def allocate(self, placement: Placement, mark: bool = True, admit: bool = True) -> None:
        """Take the capacity of every worker, all or nothing; raises :class:`CapacityError` if any would overflow.

        ``mark=False`` is for phantom allocations (reservations held within a step): the nodes' ``epoch`` stays.
        ``admit=False`` takes back work that already runs (a job adopted after a restart, a what-if victim put
        back): a cordoned node or a device that turned unhealthy since takes no *new* work but keeps what runs.
        """
        if placement.job_id in self.allocations:
            raise CapacityError(f"job {placement.job_id!r} is already allocated")
        demand = self._demand(placement)
        # Check everything before touching anything: a failed allocation leaves the state as it was.
        for node_id, (devices, cpu, mem) in demand.items():
            ns = self.nodes.get(node_id)
            if ns is None or (admit and not ns.schedulable):
                raise CapacityError(f"job {placement.job_id!r}: node {node_id!r} is not schedulable")
            for d, milli in devices.items():
                if not (0 <= d < len(ns.free)) or (admit and not ns.healthy[d]) or ns.free[d] < milli:
                    raise CapacityError(f"job {placement.job_id!r}: device {node_id}[{d}] lacks {milli} milli")
            if ns.cpu_free < cpu or ns.mem_free < mem:
                raise CapacityError(f"job {placement.job_id!r}: node {node_id!r} lacks CPU or memory")
        self._apply(demand, -1, mark)
        self.allocations[placement.job_id] = placement
        self._demands[placement.job_id] = demand
        if not mark:
            self.pools[placement.pool].phantoms += 1

    def start(self, running: RunningJob, admit: bool = True) -> None:
        """Allocate a job's placement and charge its accounts; all or nothing like :meth:`allocate` (``admit``
        as there)."""
        self.allocate(running.placement, admit=admit)
        job_id = running.placement.job_id
        self.running[job_id] = running
        self.running_by_pool.setdefault(running.placement.pool, {})[job_id] = None
        self._charge(running, +1.0)

    def release(self, job_id: str, mark: bool = True) -> Placement:
        """Give back exactly what :meth:`allocate` (or :meth:`start`) took for ``job_id``.

        ``mark=False`` (phantoms) leaves the nodes' ``epoch`` and the pool's ``grown`` as they were.
        """
        placement = self.allocations.pop(job_id)
        self._apply(self._demands.pop(job_id), +1, mark)
        if not mark:
            self.pools[placement.pool].phantoms -= 1
        running = self.running.pop(job_id, None)
        if running is not None:
            self.running_by_pool[placement.pool].pop(job_id, None)
            self._charge(running, -1.0)
        self.capacity_epoch = next(_EPOCHS)
        if mark:
            self.pools[placement.pool].grown = self.capacity_epoch
        return placement

    def vacate(self, placements: Iterable[Placement]) -> None:
        """Free allocated placements' capacity as if their jobs had ended, without forgetting the jobs (what-if
        projections).

        Only capacity and its indexes move: accounts, end estimates and allocations stay. Every node is
        re-indexed once however many of the placements share it. Undo with :meth:`occupy`, before anything else
        allocates.
        """
        self._apply(self._combined(placements), +1, mark=False)
        self.capacity_epoch = next(_EPOCHS)

    def projected(self) -> None:
        """Move ``capacity_epoch`` as a :meth:`vacate` and :meth:`occupy` pair does, for a caller that knows what
        the projection would show and skips it: the placement memos it invalidates must stay invalidated, or
        later attempts would answer from them where they answered afresh before."""
        self.capacity_epoch = next(_EPOCHS)

    def occupy(self, placements: Iterable[Placement]) -> None:
        """Take back what :meth:`vacate` freed."""
        self._apply(self._combined(placements), -1, mark=False)

    def held(self, job_id: str) -> dict[str, tuple[dict[int, int], int, int]]:
        """What an allocated job holds per node: (milli per device, CPU milli, memory MiB). Do not modify."""
        return self._demands[job_id]

    def _combined(self, placements: Iterable[Placement]) -> dict[str, tuple[dict[int, int], int, int]]:
        """The summed per-node demand of allocated placements (the cached demand itself when there is one)."""
        demands = self._demands
        combined: dict[str, tuple[dict[int, int], int, int]] = {}
        owned = False  # whether ``combined`` is a copy that may be summed into
        for placement in placements:
            demand = demands[placement.job_id]
            if not combined:
                combined = demand
                continue
            if not owned:
                combined = {node_id: (dict(devices), cpu, mem) for node_id, (devices, cpu, mem) in combined.items()}
                owned = True
            for node_id, (devices, cpu, mem) in demand.items():
                entry = combined.get(node_id)
                if entry is None:
                    combined[node_id] = (dict(devices), cpu, mem)
                    continue
                summed, summed_cpu, summed_mem = entry
                for d, milli in devices.items():
                    summed[d] = summed.get(d, 0) + milli
                combined[node_id] = (summed, summed_cpu + cpu, summed_mem + mem)
        return combined

    def _charge(self, running: RunningJob, sign: float) -> None:
        self.usage_touched.update(running.accounts)
        for account in running.accounts:
            usage = self.usage.setdefault(account, {})
            for flavor, amount in running.demand.items():
                left = usage.get(flavor, 0.0) + sign * amount
                # Float sums drift by ulps; an account that uses nothing is dropped, so per-step work over
                # ``usage`` only ever sees accounts that are using something.
                if abs(left) > 1e-9:
                    usage[flavor] = left
                else:
                    usage.pop(flavor, None)
            if not usage:
                del self.usage[account]
        if running.expected_end is not None:
            key = (running.expected_end, running.placement.job_id)
            pool_ends = self.pools[running.placement.pool].ends
            if sign > 0:
                pool_ends.add(key)
            else:
                pool_ends.discard(key)
        priorities = self.running_priorities.setdefault(running.placement.pool, {})
        count = priorities.get(running.job.priority, 0) + (1 if sign > 0 else -1)
        if count:
            priorities[running.job.priority] = count
        else:
            priorities.pop(running.job.priority, None)

    def used(self, account: str, flavor: str) -> float:
        usage = self.usage.get(account)
        return usage.get(flavor, 0.0) if usage else 0.0

    @staticmethod
    def _demand(placement: Placement) -> dict[str, tuple[dict[int, int], int, int]]:
        """Per node: milli per device, CPU and memory the placement takes (workers of one gang may share a node)."""
        demand: dict[str, tuple[dict[int, int], int, int]] = {}
        for w in placement.workers:
            if len(set(w.devices)) != len(w.devices):
                raise CapacityError(f"job {placement.job_id!r}: a worker lists a device twice on {w.node}")
            entry = demand.get(w.node)
            if entry is None:
                devices: dict[int, int] = {}
                cpu = mem = 0
            else:
                devices, cpu, mem = entry
            for d in w.devices:
                devices[d] = devices.get(d, 0) + w.milli
            demand[w.node] = (devices, cpu + w.cpu_milli, mem + w.memory_mib)
        return demand

    def _apply(self, demand: dict[str, tuple[dict[int, int], int, int]], sign: int, mark: bool = True) -> None:
        for node_id, (devices, cpu, mem) in demand.items():
            ns = self.nodes[node_id]
            pool = ns.pool
            pool.version = next(_VERSIONS)
            if mark:
                ns.epoch = next(_EPOCHS)
                pool.held = pool.version
            for d, milli in devices.items():
                ns.free[d] += sign * milli
                pool.free_milli += sign * milli
            if cpu:
                key = ns.cpu_free if ns.schedulable else -1
                pool.by_cpu.remove((key, ns.index))
                ns.cpu_free += sign * cpu
                pool.by_cpu.add((ns.cpu_free if ns.schedulable else -1, ns.index))
            ns.mem_free += sign * mem
            self._reindex(ns)

    # ------------------------------------------------------------------------------------------ queries

    def max_worker_devices(self, model: str) -> int:
        """Most devices any node of ``model`` has (0 if none): the largest worker that could ever fit."""
        return max((p.max_devices for p in self.pools_by_model.get(model, ())), default=0)

    def copy(self) -> ClusterState:
        """An independent copy (for what-if and ETA fast-forwarding)."""
        twin = ClusterState(ns.node for ns in self._all_nodes())
        # Allocations first: a job may still hold a device that has since turned unhealthy.
        for placement in self.allocations.values():
            running = self.running.get(placement.job_id)
            if running is not None:
                twin.start(replace(running, demand=dict(running.demand)))
            else:
                twin.allocate(placement)
        for ns in self._all_nodes():
            if not ns.schedulable:
                twin.set_schedulable(ns.id, False)
            for d, ok in enumerate(ns.healthy):
                if not ok:
                    twin.set_device_health(ns.id, d, DeviceHealth.UNHEALTHY)
        return twin

    def _all_nodes(self) -> Iterator[NodeState]:
        for pool in self.pools.values():
            yield from pool.nodes

    def check_invariants(self) -> None:
        """Recount everything by brute force and compare with the indexes; raises ``AssertionError`` on drift."""
        expected_usage: dict[str, dict[str, float]] = {}
        for running in self.running.values():
            assert self.allocations.get(running.placement.job_id) is running.placement, "running without allocation"
            for account in running.accounts:
                for flavor, amount in running.demand.items():
                    bucket = expected_usage.setdefault(account, {})
                    bucket[flavor] = bucket.get(flavor, 0.0) + amount
        for pool in self.pools.values():
            assert set(pool.ends) == {
                (r.expected_end, j)
                for j, r in self.running.items()
                if r.expected_end is not None and r.placement.pool == pool.id
            }, f"{pool.id} end-time index drift"
        for pool_id, counts in self.running_priorities.items():
            recount: dict[int, int] = {}
            for r in self.running.values():
                if r.placement.pool == pool_id:
                    recount[r.job.priority] = recount.get(r.job.priority, 0) + 1
            assert counts == recount, f"{pool_id} priority counts drift"
        for account, flavors in self.usage.items():
            for flavor, amount in flavors.items():
                want = expected_usage.get(account, {}).get(flavor, 0.0)
                assert abs(amount - want) < 1e-6, f"usage of {account}/{flavor}: {amount} != {want}"
        used: dict[tuple[str, int], int] = {}
        cpu_used: dict[str, int] = {}
        mem_used: dict[str, int] = {}
        for placement in self.allocations.values():
            for w in placement.workers:
                for d in w.devices:
                    used[(w.node, d)] = used.get((w.node, d), 0) + w.milli
                cpu_used[w.node] = cpu_used.get(w.node, 0) + w.cpu_milli
                mem_used[w.node] = mem_used.get(w.node, 0) + w.memory_mib
        for pool in self.pools.values():
            slots = [0] * (pool.max_devices + 1)
            islands: dict[str, list[int]] = {k: [0] * (pool.max_devices + 1) for k in pool.islands}
            switches: dict[str, list[int]] = {k: [0] * (pool.max_devices + 1) for k in pool.switches}
            free_milli = 0
            for ns in pool.nodes:
                for d in range(ns.node.devices):
                    expected = MILLI - used.get((ns.id, d), 0)
                    assert 0 <= expected <= MILLI, f"{ns.id}[{d}] over-allocated: {expected}"
                    assert ns.free[d] == expected, f"{ns.id}[{d}] free {ns.free[d]} != {expected}"
                    free_milli += expected
                assert ns.cpu_free == ns.node.cpu_milli - cpu_used.get(ns.id, 0) >= 0, f"{ns.id} cpu drift"
                assert ns.mem_free == ns.node.memory_mib - mem_used.get(ns.id, 0) >= 0, f"{ns.id} mem drift"
                whole, best = ns._recount()
                assert (ns.free_whole, ns.max_free) == (whole, best), f"{ns.id} cached counts drift"
                assert (whole, ns.index) in pool.by_whole and (best, ns.index) in pool.by_partial
                assert (ns.cpu_free if ns.schedulable else -1, ns.index) in pool.by_cpu
                for k in range(1, pool.max_devices + 1):
                    slots[k] += whole // k
                    islands[ns.island.id][k] += whole // k
                    switches[ns.switch.id][k] += whole // k
            assert len(pool.by_whole) == len(pool.by_partial) == len(pool.by_cpu) == len(pool.nodes)
            assert set(self.running_by_pool.get(pool.id, {})) == {
                j for j, r in self.running.items() if r.placement.pool == pool.id
            }, f"{pool.id} running index drift"
            assert pool.slots == slots, f"{pool.id} slots {pool.slots} != {slots}"
            assert pool.free_milli == free_milli, f"{pool.id} free {pool.free_milli} != {free_milli}"
            for key, domain in pool.islands.items():
                assert domain.slots == islands[key], f"island {key} slots drift"
            for key, domain in pool.switches.items():
                assert domain.slots == switches[key], f"switch {key} slots drift"
