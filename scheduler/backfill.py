"""Backfill with reservations (Slurm's sched/backfill, which none of the Kubernetes schedulers has).

The head job of a queue that cannot start for lack of capacity gets a **reservation**: the earliest time the
running jobs' estimated ends free enough room, and the devices it would take then. From that moment the
capacity the reservation needs *and that is free now* is hidden behind a phantom allocation, so jobs that would
still be running at the reservation's start cannot take it. Jobs that end before the reservation starts may use
it (they *backfill*): the phantom is lifted for them and put back, resized, after they start.

    hidden(device) = max(0, free_now(device) - (free_at_start(device) - reserved(device)))

Only what is free now and needed later is hidden, so a reservation never blocks more than it must.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import groupby
from operator import itemgetter

from scheduler.model import MILLI, Job, Placement, Reason, ReasonCode, TopologyLevel, WorkerPlacement
from scheduler.placement import PlacementEngine
from scheduler.state import ClusterState, RunningJob

PHANTOM_PREFIX = "\x00reservation:"
#: Placement-engine checks per plan once the projection says the job fits.
MAX_VERIFICATIONS = 4


@dataclass
class Reservation:
    """Room held for ``job`` from ``start`` on, on the devices of ``placement``."""

    job: Job
    start: float
    placement: Placement
    #: Per (node, device): free milli at ``start`` minus what the reservation takes there (never below 0).
    device_slack: dict[tuple[str, int], int]
    cpu_slack: dict[str, int]
    memory_slack: dict[str, int]
    #: Milli-devices the phantom hides right now (0 when everything reserved is still busy).
    hidden_milli: int = 0
    #: The pools the job could use: capacity coming back in any of them may move the start earlier.
    pools: tuple[str, ...] = ()

    @property
    def phantom_id(self) -> str:
        return PHANTOM_PREFIX + self.job.id

    def hide(self, state: ClusterState) -> None:
        """Allocate the phantom that keeps long jobs off the reserved room (idempotent)."""
        if self.phantom_id in state.allocations:
            return
        self.hidden_milli = 0
        workers: list[WorkerPlacement] = []
        for (node, device), slack in self.device_slack.items():
            ns = state.nodes[node]
            hidden = max(0, ns.free[device] - slack) if ns.healthy[device] else 0
            if hidden:
                workers.append(WorkerPlacement(node=node, devices=(device,), milli=hidden))
                self.hidden_milli += hidden
        for node, slack in self.cpu_slack.items():
            ns = state.nodes[node]
            cpu = max(0, ns.cpu_free - slack)
            memory = max(0, ns.mem_free - self.memory_slack.get(node, 0))
            if cpu or memory:
                workers.append(WorkerPlacement(node=node, devices=(), milli=0, cpu_milli=cpu, memory_mib=memory))
        if workers:
            state.allocate(
                mark=False,
                placement=Placement(
                    job_id=self.phantom_id,
                    model=self.placement.model,
                    pool=self.placement.pool,
                    workers=tuple(workers),
                    topology=TopologyLevel.POOL,
                ),
            )

    def lift(self, state: ClusterState) -> None:
        if self.phantom_id in state.allocations:
            state.release(self.phantom_id, mark=False)


def plan_reservation(
    engine: PlacementEngine, state: ClusterState, job: Job, now: float, known: Reservation | None = None
) -> Reservation | None:
    """Earliest start for ``job`` as running jobs end (by their estimates), and where; state is unchanged.

    Running jobs without an end estimate are assumed to run forever. ``None`` if the job never fits that way.

    The walk over ending jobs touches no index: it projects per-device free capacity in scratch dictionaries
    and keeps the job's worker-slot count per candidate pool up to date. Only when that projection says the job
    fits are the ended jobs really released and the placement engine asked (and everything put back).

    ``known`` is a reservation for the same job that the caller knows still holds (its nodes are as they were
    when it was planned): the walk then only looks for an earlier start, and returns ``known`` when there is
    none, without asking the engine again where the job would go at that time.
    """
    pools = {pool.id: pool for pool, _ in engine.candidate_pools(state, job)}
    if not pools:
        return None
    k, milli = job.whole_devices, job.device_milli
    if k and all(k > pool.max_devices for pool in pools.values()):
        return None
    slots = {pid: (pool.slots[k] if k and k <= pool.max_devices else 0) for pid, pool in pools.items()}
    best = {pid: (pool.by_partial[-1][0] if pool.by_partial else 0) for pid, pool in pools.items()}
    projected: dict[tuple[str, int], int] = {}
    whole: dict[str, int] = {}

    def fits(pid: str) -> bool:
        if k:
            return slots[pid] >= job.workers
        if milli:
            return best[pid] >= milli
        return True

    relevant: list[RunningJob] = []
    released: list[RunningJob] = []
    verifications = 0
    found: tuple[float, Placement] | None = None
    running_jobs, nodes = state.running, state.nodes
    pool_ends = [pool.ends for pool in pools.values() if pool.ends]
    ends: Iterable[tuple[float, str]] = pool_ends[0] if len(pool_ends) == 1 else heapq.merge(*pool_ends)
    try:
        # Jobs ending at the same moment free their room together.
        # The projection only grows: once it says the job fits, it keeps saying so.
        fitting = any(fits(pid) for pid in pools)
        for at, ending in groupby(ends, key=itemgetter(0)):
            if known is not None and at >= known.start:
                return known
            for _, job_id in ending:
                running = running_jobs[job_id]
                relevant.append(running)
                pid = running.placement.pool
                pool_best, pool_slots = best[pid], slots[pid]
                for node_id, (devices, _, _) in state.held(job_id).items():
                    ns = nodes[node_id]
                    if not ns.schedulable:
                        continue
                    free, healthy = ns.free, ns.healthy
                    for d, milli in devices.items():
                        if not healthy[d]:
                            continue
                        key = (node_id, d)
                        before = projected.get(key, free[d])
                        after = projected[key] = before + milli
                        if after > pool_best:
                            pool_best = after
                        if k and after == MILLI and before < MILLI:
                            old = whole.get(node_id, ns.free_whole)
                            whole[node_id] = old + 1
                            pool_slots += (old + 1) // k - old // k
                best[pid], slots[pid] = pool_best, pool_slots
                fitting = fitting or fits(pid)
            if not fitting:
                continue
            if verifications == MAX_VERIFICATIONS:
                break  # the projection keeps saying yes and the engine no (CPU, memory, topology): give up
            verifications += 1
            batch = relevant[len(released) :]
            state.vacate(running.placement for running in batch)
            released.extend(batch)
            result = engine.place(state, job)
            if result.placement is not None:
                found = (max(at, now), result.placement)
                break
        if found is None:
            return known
        start, placement = found
        device_slack: dict[tuple[str, int], int] = {}
        cpu_slack: dict[str, int] = {}
        memory_slack: dict[str, int] = {}
        for worker in placement.workers:
            ns = state.nodes[worker.node]
            for d in worker.devices:
                key = (worker.node, d)
                device_slack[key] = device_slack.get(key, ns.free[d]) - worker.milli
            cpu_slack[worker.node] = cpu_slack.get(worker.node, ns.cpu_free) - worker.cpu_milli
            memory_slack[worker.node] = memory_slack.get(worker.node, ns.mem_free) - worker.memory_mib
        return Reservation(
            job=job,
            start=start,
            placement=placement,
            device_slack={key: max(0, v) for key, v in device_slack.items()},
            cpu_slack={node: max(0, v) for node, v in cpu_slack.items()},
            memory_slack={node: max(0, v) for node, v in memory_slack.items()},
            pools=tuple(pools),
        )
    finally:
        state.occupy(running.placement for running in released)


class ReservationBook:
    """The reservations of one step, and the plans kept from the last step while nothing they depend on changed.

    A step begins with :meth:`begin`, reserves room for at most one blocked head job per queue
    (:meth:`reserve`), and ends with :meth:`end`, which lifts every phantom (the caller's state shows real usage
    between steps) and keeps the step's plans for the next one::

        >>> book = ReservationBook()
        >>> book.begin(ClusterState(), same_state=False)
        >>> book.may_reserve("acme", max_reservations=8), book.current
        (True, {})
    """

    def __init__(self) -> None:
        #: The reservations of the current (or last) step, by job id.
        self.current: dict[str, Reservation] = {}
        #: The last step's reservations with the pool and node epochs they were planned on.
        self._kept: dict[str, tuple[Reservation, dict[str, int], dict[str, int]]] = {}
        self._next: dict[str, tuple[Reservation, dict[str, int], dict[str, int]]] = {}
        self._grown: dict[str, int] = {}
        self._heads: set[str | None] = set()
        self._held: Reason | None = None
        self._last_held: Reason | None = None
        #: Job shapes that failed to backfill this step: within a step free capacity only shrinks (until a
        #: preemption frees some), so a shape that could not backfill still cannot.
        self.backfill_misses: set[tuple[object, ...]] = set()

    def begin(self, state: ClusterState, same_state: bool) -> None:
        if not same_state:
            self._kept = {}
        self.current = {}
        self._next = {}
        # Where capacity last grew, as the step begins: the step's own lifts and projections do not count.
        self._grown = {pool_id: pool.grown for pool_id, pool in state.pools.items()}
        self._heads = set()
        self._held = None
        self.backfill_misses = set()

    def may_reserve(self, queue: str | None, max_reservations: int) -> bool:
        """Only a queue's first blocked job gets a reservation, and at most ``max_reservations`` per step."""
        return queue not in self._heads and len(self.current) < max_reservations

    def reserve(
        self, placement: PlacementEngine, state: ClusterState, job: Job, queue: str | None, now: float
    ) -> Reservation | None:
        """Hold room for ``job`` (the head of ``queue``) from the earliest start the running jobs' ends allow."""
        self._heads.add(queue)
        reservation = self._plan(placement, state, job, now)
        if reservation is not None:
            reservation.hide(state)
            self.current[job.id] = reservation
            self._held = None
            pools = {pool_id: self._grown[pool_id] for pool_id in reservation.pools}
            nodes = {node_id: state.nodes[node_id].epoch for node_id in reservation.placement.nodes}
            self._next[job.id] = (reservation, pools, nodes)
        return reservation

    def held_reason(self) -> Reason:
        """ "Room is held for ..." naming the earliest reservation (built once per set of reservations)."""
        if self._held is None:
            first = min(self.current.values(), key=lambda r: r.start)
            held = reservation_reason(first, own=False)
            # The same reason as the last step's is kept as the same object: callers that compare every pending
            # job's reasons with the last ones stored (the live service) then compare by identity.
            if held != self._last_held:
                self._last_held = held
            self._held = self._last_held
        return self._held

    def end(self, state: ClusterState) -> None:
        for reservation in self.current.values():
            reservation.lift(state)
        self._kept = self._next

    def _plan(self, placement: PlacementEngine, state: ClusterState, job: Job, now: float) -> Reservation | None:
        """The reservation kept from the last step if nothing it depends on changed since, else a new plan.

        A kept plan still holds while nothing started or stopped on its nodes since it was hidden (their slack
        is what it was), and is still the earliest start while no capacity came back in the job's pools (starts
        elsewhere only push starts later); when capacity did come back, a new plan looks for an earlier start
        and keeps the old one otherwise. It is never reused once its start has come.
        """
        kept = self._kept.get(job.id)
        if kept is not None:
            reservation, pools, nodes = kept
            if (
                reservation.job is job
                and reservation.start > now
                and all(state.nodes[node_id].epoch == epoch for node_id, epoch in nodes.items())
            ):
                if all(self._grown.get(pool_id) == epoch for pool_id, epoch in pools.items()):
                    return reservation
                # Capacity came back elsewhere in its pools: only an earlier start can replace it.
                return plan_reservation(placement, state, job, now, known=reservation)
        return plan_reservation(placement, state, job, now)


def reservation_reason(reservation: Reservation, own: bool) -> Reason:
    """Why a job waits because of a reservation: its own (``own``), or another job's that holds the room."""
    if own:
        return Reason(
            ReasonCode.RESERVATION,
            "reserved from t={start:g} on {nodes} node(s) of {pool}",
            reservation.placement.pool,
            {"start": reservation.start, "nodes": len(reservation.placement.nodes)},
        )
    return Reason(
        ReasonCode.RESERVATION,
        "room is held for {job} from t={start:g}; only jobs that end before then may use it",
        reservation.placement.pool,
        {"job": reservation.job.id, "start": reservation.start},
    )
