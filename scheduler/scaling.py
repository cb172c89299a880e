"""How many workers each worker group should have: the scaling rule Zhisuan applies instead of the Ray autoscaler.

Pure policy, like the core: no I/O, no clock (``now`` is given), no Kubernetes. The live sizer
(:mod:`scheduler.live.kuberay`) writes the targets into a RayCluster; the simulator replays the same rule
(:mod:`simulations.scaling`). A *worker group* hosts one pod per node, of one node shape, in one pool; its nodes
are the cluster-state nodes its pods run on now, and ``replicas`` may exceed them while new pods start.

The rule, per step:

1. **Demand.** Pending jobs, in the order given (the core's), each go to the first group whose model the job
   accepts and whose node shape fits one worker. A gang takes free room on the group's ready nodes first, then
   on pods that are starting, then asks for the nodes it still lacks — *all of them at once*, and only if the group
   may grow that far (a gang never gets part of its nodes). Room taken by one job is not offered to the next.
2. **Idle nodes.** A node hosting no allocation, no reservation and no room a pending job was just given is
   idle; one idle for ``grace_s`` goes — never below ``min_replicas``, and never a node holding work.
3. **Target.** ``replicas + added - removed``, with the removed nodes named (KubeRay must delete exactly those
   pods, not any pod of the group).

A 4-node gang on an empty group grows it by 4 in one step; when the gang ends its nodes go after the grace::

    >>> from scheduler.model import Job, Node
    >>> from scheduler.state import ClusterState
    >>> rule = ScalingRule(grace_s=300)
    >>> group = GroupView("h100", "bj1/H100", "H100", devices=8, cpu_milli=96000, memory_mib=900000,
    ...                   replicas=0, max_replicas=8)
    >>> gang = Job(id="llm", workers=4, devices_per_worker=8, models=("H100",))
    >>> rule.decide(ClusterState(), [gang], [group], now=0.0)["h100"].replicas
    4
    >>> idle = [Node(id=f"n{i}", model="H100", devices=8, cpu_milli=96000, memory_mib=900000, site="bj1")
    ...         for i in range(4)]
    >>> ready = GroupView("h100", "bj1/H100", "H100", 8, 96000, 900000, replicas=4, max_replicas=8,
    ...                   nodes=tuple(n.id for n in idle))
    >>> rule.decide(ClusterState(idle), [], [ready], now=700.0)["h100"].replicas
    4
    >>> target = rule.decide(ClusterState(idle), [], [ready], now=1000.0)["h100"]
    >>> target.replicas, target.remove
    (0, ('n0', 'n1', 'n2', 'n3'))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from scheduler.backfill import Reservation
from scheduler.model import MILLI, Job
from scheduler.state import ClusterState


@dataclass(frozen=True)
class GroupView:
    """One worker group as the rule sees it: its pool and node shape, its replicas and the nodes it runs on."""

    name: str
    pool: str
    model: str
    #: One worker pod's shape (what each of its nodes offers Zhisuan).
    devices: int
    cpu_milli: int
    memory_mib: int
    replicas: int
    max_replicas: int
    #: Nodes (cluster-state ids) that host one of this group's pods now and may take work.
    nodes: tuple[str, ...] = ()
    min_replicas: int = 0


@dataclass(frozen=True)
class GroupTarget:
    """What one group should become."""

    replicas: int
    added: int = 0
    #: Nodes whose pods go (idle past the grace period), in the order they became idle.
    remove: tuple[str, ...] = ()
    #: Jobs the added nodes are for, and jobs that could not be given nodes (with why), for people.
    serving: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()


@dataclass
class ScalingRule:
    """The rule of the module docstring. It remembers only since when each node has been idle."""

    grace_s: float = 600.0
    #: Which models a job may run on (default: its ``models``, or any group's model when it names none). The
    #: live service passes the placement engine's ``acceptable_models`` so domestic policy and job class count.
    acceptable: Callable[[Job], Sequence[str]] | None = None
    idle_since: dict[str, float] = field(default_factory=dict)

    def decide(
        self,
        state: ClusterState,
        pending: Iterable[Job],
        groups: Sequence[GroupView],
        now: float,
        reservations: Mapping[str, Reservation] | None = None,
    ) -> dict[str, GroupTarget]:
        """The target of every group (see the module docstring)."""
        busy = {w.node for p in state.allocations.values() for w in p.workers}
        reserved = {w.node for r in (reservations or {}).values() for w in r.placement.workers}
        # Free room per ready node (whole devices, CPU, memory), consumed as demand is assigned.
        room: dict[str, list[int]] = {}
        for group in groups:
            for node_id in group.nodes:
                ns = state.nodes.get(node_id)
                if ns is not None and ns.schedulable:
                    room[node_id] = [ns.free_whole, ns.cpu_free, ns.mem_free, ns.max_free]
        starting = {g.name: max(0, g.replicas - len(g.nodes)) for g in groups}
        added = {g.name: 0 for g in groups}
        serving: dict[str, list[str]] = {g.name: [] for g in groups}
        reasons: dict[str, list[str]] = {g.name: [] for g in groups}
        wanted: set[str] = set()
        models_of_groups = tuple(dict.fromkeys(g.model for g in groups))
        for job in pending:
            accepted = self._accepted(job, models_of_groups)
            for group in groups:
                if group.model not in accepted:
                    continue
                per_node = workers_per_node(job, group.devices, group.cpu_milli, group.memory_mib)
                if per_node == 0:
                    continue
                outcome = self._assign(job, group, per_node, room, starting, added, wanted)
                if outcome is None:
                    serving[group.name].append(job.id)
                    break
                reasons[group.name].append(outcome)
                # A gang that cannot be given its nodes here may still fit another acceptable group.
        targets: dict[str, GroupTarget] = {}
        for group in groups:
            remove = self._idle(group, now, busy | reserved | wanted, added[group.name])
            replicas = group.replicas + added[group.name] - len(remove)
            targets[group.name] = GroupTarget(
                replicas=replicas,
                added=added[group.name],
                remove=remove,
                serving=tuple(serving[group.name]),
                reasons=tuple(reasons[group.name]),
            )
        known = {n for g in groups for n in g.nodes}
        self.idle_since = {n: t for n, t in self.idle_since.items() if n in known}
        return targets

    def _accepted(self, job: Job, models: tuple[str, ...]) -> Sequence[str]:
        if self.acceptable is not None:
            return self.acceptable(job)
        return job.models or models

    @staticmethod
    def _assign(
        job: Job,
        group: GroupView,
        per_node: int,
        room: dict[str, list[int]],
        starting: dict[str, int],
        added: dict[str, int],
        wanted: set[str],
    ) -> str | None:
        """Give ``job`` room in ``group``: free room first, then starting pods, then new nodes (all or none).
        Returns None when done, else why the group cannot take the job."""
        workers = job.workers
        taken: list[tuple[str, int]] = []
        for node_id in group.nodes:
            free = room.get(node_id)
            if free is None or workers <= 0:
                continue
            fits = _fits_in(job, free)
            if fits:
                use = min(fits, workers)
                taken.append((node_id, use))
                workers -= use
        from_starting = min(starting[group.name], math.ceil(max(workers, 0) / per_node))
        workers -= from_starting * per_node
        new_nodes = math.ceil(max(workers, 0) / per_node)
        if group.replicas + added[group.name] + new_nodes > group.max_replicas:
            return (
                f"{job.id} needs {new_nodes} more node(s) at once; the group may grow by "
                f"{max(0, group.max_replicas - group.replicas - added[group.name])}"
            )
        for node_id, use in taken:
            _take(job, room[node_id], use)
            wanted.add(node_id)
        starting[group.name] -= from_starting
        added[group.name] += new_nodes
        return None

    def _idle(self, group: GroupView, now: float, holding: set[str], adding: int) -> tuple[str, ...]:
        candidates: list[tuple[float, str]] = []
        for node_id in group.nodes:
            if node_id in holding:
                self.idle_since.pop(node_id, None)
                continue
            since = self.idle_since.setdefault(node_id, now)
            if now - since >= self.grace_s:
                candidates.append((since, node_id))
        if adding:
            # Growing and shrinking one group in the same step would trade a warm node for a cold one.
            return ()
        spare = max(0, group.replicas - group.min_replicas)
        return tuple(node_id for _, node_id in sorted(candidates)[:spare])


def workers_per_node(job: Job, devices: int, cpu_milli: int, memory_mib: int) -> int:
    """How many of ``job``'s workers one empty node of this shape holds (0: not even one).

    >>> workers_per_node(Job(id="j", devices_per_worker=2, cpu_milli_per_worker=8000), 8, 64000, 10**6)
    4
    """
    limits: list[int] = []
    if job.device_milli:
        if job.is_fractional:
            limits.append(devices * (MILLI // job.device_milli))
        else:
            limits.append(devices // job.whole_devices)
    if job.cpu_milli_per_worker:
        limits.append(cpu_milli // job.cpu_milli_per_worker)
    if job.memory_mib_per_worker:
        limits.append(memory_mib // job.memory_mib_per_worker)
    return min(limits) if limits else job.workers


def _fits_in(job: Job, free: list[int]) -> int:
    whole, cpu, mem, partial = free
    limits: list[int] = []
    if job.device_milli:
        if job.is_fractional:
            limits.append(whole * (MILLI // job.device_milli) + (1 if partial >= job.device_milli > 0 else 0))
        else:
            limits.append(whole // job.whole_devices)
    if job.cpu_milli_per_worker:
        limits.append(cpu // job.cpu_milli_per_worker)
    if job.memory_mib_per_worker:
        limits.append(mem // job.memory_mib_per_worker)
    return max(0, min(limits)) if limits else job.workers


def _take(job: Job, free: list[int], workers: int) -> None:
    if job.device_milli and not job.is_fractional:
        free[0] -= workers * job.whole_devices
    elif job.is_fractional:
        free[0] -= math.ceil(workers * job.device_milli / MILLI)
    free[1] -= workers * job.cpu_milli_per_worker
    free[2] -= workers * job.memory_mib_per_worker
