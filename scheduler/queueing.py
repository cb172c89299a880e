"""Ordering of pending jobs: priority class first, then weighted DRF among tenants and users, then FIFO.

The order reacts to admissions within one step: after a tenant's job starts, its share grows and the next job
comes from whichever tenant is now furthest below its share (dominant resource fairness, progressive filling).
FIFO is the baseline policy: priority, then submit time, then id.

    >>> from scheduler.model import Job
    >>> order = FifoOrder([Job(id="b", submit_time=2), Job(id="a", submit_time=1)])
    >>> [job.id for job in order]
    ['a', 'b']
"""

from __future__ import annotations

import heapq
import operator
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from scheduler.model import Job


def fifo_key(job: Job) -> tuple[int, float, str]:
    """Priority first, then submit time, then id (kept on the job: it is sorted by at every step)."""
    return job.fifo_key


#: :func:`fifo_key` without a Python call per job (sorting a queue of 100,000 calls it 100,000 times).
_FIFO_KEY = operator.attrgetter("fifo_key")


class FifoOrder:
    """Priority, then first come first served; the order does not react to admissions."""

    def __init__(self, pending: Iterable[Job]) -> None:
        self._jobs = sorted(pending, key=_FIFO_KEY)

    def __iter__(self) -> Iterator[Job]:
        return iter(self._jobs)


@dataclass
class _UserQueue:
    jobs: list[Job]
    position: int = 0


@dataclass
class _TenantQueue:
    users: dict[str, _UserQueue] = field(default_factory=dict)
    heap: list[tuple[float, str]] = field(default_factory=list)


class DrfOrder:
    """Progressive filling by share: ``share(account) -> float`` is read again after every admission.

    Within one priority class, the tenant with the lowest key goes next; within the tenant, the user with the
    lowest key; within the user, the oldest job. The caller decides on a yielded job before asking for the next,
    so the keys pushed back afterwards already see its usage; only that tenant and user are re-keyed, and each
    decision costs O(log tenants + log users).
    """

    def __init__(self, pending: Iterable[Job], share: Callable[[Job, bool], float]) -> None:
        self._share = share
        classes: dict[int, dict[str, _TenantQueue]] = {}
        # Run once per step over every pending job: plain lookups, no object built per job.
        for job in sorted(pending, key=_FIFO_KEY):
            tenants = classes.get(job.priority)
            if tenants is None:
                tenants = classes[job.priority] = {}
            tenant = tenants.get(job.tenant)
            if tenant is None:
                tenant = tenants[job.tenant] = _TenantQueue()
            queue = tenant.users.get(job.user)
            if queue is None:
                queue = tenant.users[job.user] = _UserQueue([])
            queue.jobs.append(job)
        self._classes = [classes[p] for p in sorted(classes, reverse=True)]

    def __iter__(self) -> Iterator[Job]:
        share = self._share
        for tenants in self._classes:
            heap: list[tuple[float, str]] = []
            for name, tenant in tenants.items():
                first = next(iter(tenant.users.values())).jobs[0]
                heap.append((share(first, True), name))
                if len(tenant.users) > 1:
                    tenant.heap = [(share(q.jobs[0], False), user) for user, q in tenant.users.items()]
                    heapq.heapify(tenant.heap)
            heapq.heapify(heap)
            while heap:
                _, name = heapq.heappop(heap)
                tenant = tenants[name]
                if len(tenant.users) == 1:
                    # One user: no user heap to keep (it would hold that user alone).
                    (queue,) = tenant.users.values()
                    job = queue.jobs[queue.position]
                    queue.position += 1
                    yield job
                    if queue.position < len(queue.jobs):
                        heapq.heappush(heap, (share(job, True), name))
                    continue
                _, user = heapq.heappop(tenant.heap)
                queue = tenant.users[user]
                job = queue.jobs[queue.position]
                queue.position += 1
                yield job
                if queue.position < len(queue.jobs):
                    heapq.heappush(tenant.heap, (share(job, False), user))
                if tenant.heap:
                    heapq.heappush(heap, (share(job, True), name))
