"""Victim selection for preemption (higher priority class) and reclaim (lent capacity back to its owner).

A job that cannot start for lack of capacity may stop running jobs when either

* **priority**: the victim's priority class is strictly lower and the victim is preemptible, or
* **reclaim**: the preemptor's queues stay within their deserved share after it starts, the victim is of no
  higher class, and, at the moment it is chosen, one of the victim's queues uses more than its deserved share
  (it is running on lent capacity), or
* **ordering** (SRTF, LAS; :class:`~scheduler.orderings.OrderingRule`): the victim is of the same class, the
  preemptive ordering ranks it after the preemptor (longer remaining time, higher attained-service level), and it
  is in the preemptor's queue or the preemptor's queues stay within their deserved share.

Victims are whole jobs (gang-aware), taken from one pool at a time so that the freed devices sit where the
preemptor can use them (topology-aware: the placement engine packs the preemptor into what is freed), cheapest
first by work lost since their last checkpoint (checkpoint-aware) but node by node (the victims on the node that
the cheapest ones clear first come first, since victims spread thinly over many nodes clear none), and never
before a minimum guaranteed runtime. A final pass gives back every victim the preemptor turns out not to need.

Why this cannot loop: a priority victim never preempts its preemptor (strictly lower class). A reclaim victim's
queue was above its deserved share with the victim, so restarting the victim would put it above again, which
disqualifies the restart from reclaiming anything; only a change from outside (arrivals, finishes) can make it
eligible again. An ordering victim ranks after its preemptor and cannot come back before it: a victim's remaining
time or attained service does not change while it waits, the preemptor's remaining time only shrinks as it runs
(SRTF), and under LAS the two swap only when the preemptor's own service crosses a threshold, a bounded number of
times per job (and, for jobs that lose work when stopped, a bounded number of times at all). An ordering
preemption never takes a queue above its deserved share (across queues: the preemptor's stays within it; inside
one queue: the swap may not make the queue borrow more than it did), so reclaim never has to undo it — a
within-queue swap that did let a LAS gang and a reclaimer take turns at one instant without end (found by
``tests/property/test_orderings_properties.py``).
``tests/unit/test_queueing.py`` and ``tests/unit/test_orderings.py`` check that repeated steps on a
fixed workload converge.
"""

from __future__ import annotations

from dataclasses import dataclass

from scheduler.model import MILLI, Job, Placement
from scheduler.orderings import OrderingRule
from scheduler.placement import PlacementEngine, shape_key
from scheduler.quota import QuotaCheck, demand_for
from scheduler.state import ClusterState, NodeState, PoolState, RunningJob


@dataclass(frozen=True)
class PreemptionPlan:
    pool: PoolState
    relative: float
    placement: Placement
    victims: tuple[RunningJob, ...]
    cost: float


def lost_work(running: RunningJob, now: float) -> float:
    """NCU-seconds a victim would have to redo: since its last checkpoint, else since it started."""
    since = running.last_checkpoint if running.last_checkpoint is not None else running.started_at
    return max(0.0, now - since) * running.demand.get("ncu", 0.0)


class Preemptor:
    def __init__(self, engine: PlacementEngine, quota: QuotaCheck, min_runtime_s: float, max_candidates: int) -> None:
        self.engine = engine
        self.quota = quota
        self.min_runtime_s = min_runtime_s
        self.max_candidates = max_candidates
        #: Parked projections: per (job shape, pool), the pool's ``held`` version and the victims with whom
        #: the shape still did not fit there, on a pool that held no phantom (see :meth:`_hopeless`).
        self._parked: dict[tuple[object, ...], tuple[int, frozenset[str]]] = {}
        #: How many projections parking saved (for tests and benchmarks).
        self.parked_hits = 0

    def plan(
        self, state: ClusterState, job: Job, queue: str | None, now: float, rule: OrderingRule | None = None
    ) -> PreemptionPlan | None:
        """The cheapest set of victims that lets ``job`` start, over its acceptable pools; state is unchanged.

        With ``rule`` (a preemptive ordering), running jobs of the same class that the ordering ranks after
        ``job`` are candidates too, the worst ranked first."""
        best: PreemptionPlan | None = None
        for pool, rel in self.engine.candidate_pools(state, job):
            # No victim here without a running job of lower priority or a borrower to reclaim from; the cheap
            # checks come before the quota's (most attempts in a long queue end here).
            if not state.running_by_pool.get(pool.id):
                continue
            priorities = state.running_priorities.get(pool.id, {})
            lower = any(priority < job.priority for priority in priorities)
            ordered = rule is not None and priorities.get(job.priority, 0) > 0
            if not lower and not ordered and not self.quota.anyone_borrowing(state, pool.model):
                continue
            demand = demand_for(pool.model, job.total_devices, rel)
            if self.quota.admit(state, queue, demand, pool.id) is not None:
                continue
            reclaim = self.quota.within_deserved(state, queue, demand)
            if not lower and not reclaim and not ordered:
                continue
            plan = self._plan_in_pool(state, job, pool, rel, reclaim, now, rule)
            if plan is not None and (best is None or plan.cost < best.cost):
                best = plan
        return best

    def _eligible(
        self, state: ClusterState, job: Job, victim: RunningJob, reclaim: bool, now: float, rule: OrderingRule | None
    ) -> bool:
        other = victim.job
        if not other.preemptible or now - victim.started_at < self.min_runtime_s:
            return False
        if other.priority < job.priority:
            return True
        # The ordering displaces within the preemptor's queue, or across queues only while the preemptor stays
        # within its deserved share: it must not undo what reclaim gives back (they would take turns for ever).
        if (
            rule is not None
            and (reclaim or self.quota.queue_of(other) == self.quota.queue_of(job))
            and rule.outranks(job, victim)
        ):
            return True
        return (
            reclaim
            and other.priority <= job.priority
            and other.tenant != job.tenant
            and self.quota.borrowing(state, victim.accounts, victim.demand)
        )

    def _hopeless(self, state: ClusterState, job: Job, pool: PoolState, candidates: list[RunningJob]) -> bool:
        """Whether ``job`` misses ``pool`` even with every one of ``candidates`` gone (one projection).

        The answer is *parked* per (shape, pool) when it is yes and the pool holds no phantom: until a job
        starts or stops there, or a node of it changes (``PoolState.held``), what the jobs there leave free is
        what it was, and phantoms since can only hide more of it; victims that were not among the parked ones
        (a job now past its minimum runtime, a borrower that became one) wake it too. Placement failures are
        taken to persist while free capacity only shrinks, as the placement engine's own memo takes them. A
        parked answer moves ``capacity_epoch`` as the projection would have (``ClusterState.projected``).
        """
        key = (shape_key(job), pool.id)
        parked = self._parked.get(key)
        if parked is not None and parked[0] == pool.held and parked[1].issuperset(v.job.id for v in candidates):
            state.projected()
            self.parked_hits += 1
            return True
        held = pool.held
        state.vacate(victim.placement for victim in candidates)
        try:
            hopeless = self.engine.place_in(state, job, pool) is None
        finally:
            state.occupy(victim.placement for victim in candidates)
        # Not parked after a projection that left a trace (replicas try workers out with real allocations,
        # which move the nodes' epochs that kept reservations read): skipping it would not leave that trace.
        if hopeless and not pool.phantoms and pool.held == held:
            if len(self._parked) > 100_000:
                self._parked.clear()
            self._parked[key] = (held, frozenset(v.job.id for v in candidates))
        return hopeless

    @staticmethod
    def _node_by_node(state: ClusterState, job: Job, candidates: list[RunningJob]) -> tuple[list[RunningJob], bool]:
        """``candidates`` (cheapest first) reordered so that victims come node by node: taking them in order,
        as soon as the victims on some node so far would make room there for one worker of ``job`` (by free
        devices, CPU and memory; the placement engine has the last word), those victims come next; the rest
        follow in their order. Also says whether any node got there.

        The cheapest victims overall are usually spread over many nodes and clear none of them; this order makes
        the victim walk clear one node at a time instead, and its give-back pass drops whoever is not needed.

        >>> from scheduler.core import SchedulerCore
        >>> from scheduler.model import Node
        >>> hosts = [Node(id=f"n{i}", model="A100", devices=2, cpu_milli=64000, memory_mib=262144) for i in range(2)]
        >>> state, core = ClusterState(hosts), SchedulerCore()
        >>> for i in range(4):
        ...     _ = core.step(state, [Job(id=f"v{i}", devices_per_worker=1)], now=0.0)
        >>> victims = [state.running[f"v{i}"] for i in (0, 2, 1, 3)]  # v0 and v1 share a node
        >>> order, cleared = Preemptor._node_by_node(state, Job(id="big", devices_per_worker=2), victims)
        >>> [v.job.id for v in order], cleared
        (['v0', 'v1', 'v2', 'v3'], True)
        """
        freed: dict[str, tuple[dict[int, int], int, int]] = {}
        waiting: dict[str, list[RunningJob]] = {}
        cleared: set[str] = set()
        order: list[RunningJob] = []
        placed: set[str] = set()
        for victim in candidates:
            for node_id, (devices, cpu, mem) in state.held(victim.job.id).items():
                if node_id in cleared:
                    continue
                freed_devices, freed_cpu, freed_mem = freed.get(node_id) or ({}, 0, 0)
                for d, milli in devices.items():
                    freed_devices[d] = freed_devices.get(d, 0) + milli
                freed[node_id] = (freed_devices, freed_cpu + cpu, freed_mem + mem)
                waiting.setdefault(node_id, []).append(victim)
                if _room_for_one(state.nodes[node_id], job, freed[node_id]):
                    cleared.add(node_id)
                    for ready in waiting.pop(node_id):
                        if ready.job.id not in placed:
                            placed.add(ready.job.id)
                            order.append(ready)
        order.extend(victim for victim in candidates if victim.job.id not in placed)
        return order, bool(cleared)

    def _plan_in_pool(
        self,
        state: ClusterState,
        job: Job,
        pool: PoolState,
        rel: float,
        reclaim: bool,
        now: float,
        rule: OrderingRule | None = None,
    ) -> PreemptionPlan | None:
        ids = state.running_by_pool.get(pool.id, {})
        candidates = [state.running[j] for j in ids if self._eligible(state, job, state.running[j], reclaim, now, rule)]
        if not candidates:
            return None
        ordered: set[str] = set()
        if rule is not None:
            same_queue = self.quota.queue_of(job)
            ordered = {
                r.job.id
                for r in candidates
                if r.job.priority == job.priority
                and (reclaim or self.quota.queue_of(r.job) == same_queue)
                and rule.outranks(job, r)
            }
            ranks = {r.job.id: rule.rank(r) for r in candidates if r.job.id in ordered}
            # Lower classes first, then the ones the ordering ranks worst; then cheapest, most recent.
            candidates.sort(
                key=lambda r: (
                    r.job.priority,
                    tuple(-x for x in ranks.get(r.job.id, (0.0, 0.0))),
                    lost_work(r, now),
                    -r.started_at,
                    -r.job.submit_time,
                    r.job.id,
                )
            )
        else:
            # Cheapest first; among equals the most recently started, i.e. the job that borrowed last.
            candidates.sort(
                key=lambda r: (r.job.priority, lost_work(r, now), -r.started_at, -r.job.submit_time, r.job.id)
            )
        candidates, cleared = self._node_by_node(state, job, candidates)
        if not cleared and job.workers == 1:
            return None  # not even every candidate gone makes room on any one node
        candidates = candidates[: self.max_candidates]
        # A job that does not fit with every candidate gone fits with no subset of them either: one projection
        # settles what would otherwise be a walk through all the candidates, one placement attempt each.
        if self._hopeless(state, job, pool, candidates):
            return None
        # Trying victims out: a reclaim needs their accounts released too (whether the next one still borrows
        # depends on it); a priority preemption needs only their capacity, which is much cheaper to move.
        if reclaim:

            def take_out(victim: RunningJob) -> None:
                state.release(victim.job.id)

            def put_back(victim: RunningJob) -> None:
                state.start(victim, admit=False)  # it runs: a cordon or a sick device since does not stop it
        else:

            def take_out(victim: RunningJob) -> None:
                state.vacate((victim.placement,))

            def put_back(victim: RunningJob) -> None:
                state.occupy((victim.placement,))

        released: list[RunningJob] = []
        out: set[str] = set()
        placement = None
        try:
            for victim in candidates:
                # Reclaim eligibility depends on the victim's queue usage, which earlier victims lowered.
                if (
                    victim.job.priority >= job.priority
                    and victim.job.id not in ordered
                    and not self.quota.borrowing(state, victim.accounts, victim.demand)
                ):
                    continue
                take_out(victim)
                out.add(victim.job.id)
                released.append(victim)
                placement = self.engine.place_in(state, job, pool)
                if placement is not None:
                    break
            if placement is None:
                return None
            needed: list[RunningJob] = []
            # Give back, most expensive first, every victim the preemptor can do without.
            for victim in sorted(released, key=lambda r: -lost_work(r, now)):
                put_back(victim)
                out.discard(victim.job.id)
                retry = self.engine.place_in(state, job, pool)
                if retry is None:
                    take_out(victim)
                    out.add(victim.job.id)
                    needed.append(victim)
                else:
                    placement = retry
            final = self.engine.place_in(state, job, pool)
            if final is None:
                return None
            # An ordering swap inside the preemptor's queue that makes the queue borrow would be undone by
            # reclaim, and the ordering would swap again: they would take turns at one instant for ever.
            if (
                not reclaim
                and any(v.job.id in ordered for v in needed)
                and not self.quota.swap_keeps_deserved(
                    state, self.quota.queue_of(job), demand_for(pool.model, job.total_devices, rel), needed
                )
            ):
                return None
            cost = sum(lost_work(v, now) for v in needed)
            return PreemptionPlan(pool, rel, final, tuple(needed), cost)
        finally:
            for victim in released:
                if victim.job.id in out:
                    put_back(victim)


def _room_for_one(ns: NodeState, job: Job, freed: tuple[dict[int, int], int, int]) -> bool:
    """Whether one worker of ``job`` would fit on ``ns`` once ``freed`` (milli per device, CPU, memory) is back."""
    devices, cpu, mem = freed
    if (
        not ns.schedulable
        or ns.cpu_free + cpu < job.cpu_milli_per_worker
        or ns.mem_free + mem < job.memory_mib_per_worker
    ):
        return False
    free = [f + devices.get(d, 0) if ok else 0 for d, (f, ok) in enumerate(zip(ns.free, ns.healthy, strict=True))]
    if job.whole_devices:
        return sum(1 for f in free if f == MILLI) >= job.whole_devices
    return not job.device_milli or max(free, default=0) >= job.device_milli
