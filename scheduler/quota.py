"""Quota admission: may a queue take this much more of a flavor, given its tree and everybody's usage?

Usage lives in :attr:`ClusterState.usage <scheduler.state.ClusterState.usage>` per *account*: every queue on a
job's path, the center (the root, summing all top-level queues), plus ``tenant:<id>`` and ``user:<tenant>/<id>``
for fair share. A job's demand is its devices under
the model it lands on and its normalised compute (devices × relative throughput) under ``ncu``::

    >>> from scheduler.quota import QuotaCheck, demand_for
    >>> demand_for("H100", devices=8, relative=2.5)
    {'H100': 8.0, 'ncu': 20.0}

Rules, for every queue ``a`` on the path and every flavor ``f`` of the demand (all amounts after admission):

1. ``usage(a) <= limit(a)`` — the hard cap;
2. ``usage(a) - deserved(a) <= borrowing_limit(a)`` — how far a queue may borrow;
3. ``usage(parent) + Σ unused guarantees of a's siblings <= capacity(parent)`` — a guarantee is never lent:
   the parent's capacity is its limit, and for top-level queues the devices of that model in the cluster.
"""

from __future__ import annotations

from collections.abc import Iterable

from scheduler.model import Job, Reason, ReasonCode
from scheduler.state import ClusterState, RunningJob
from scheduler.tenancy import NCU, ROOT, QueuePolicy, tenant_account, user_account

EPSILON = 1e-9


def demand_for(model: str, devices: float, relative: float) -> dict[str, float]:
    """Usage per flavor of ``devices`` of ``model`` whose class runs at ``relative`` × the reference."""
    return {model: float(devices), NCU: float(devices) * relative}


class QuotaCheck:
    """Stateless checks of a :class:`QueuePolicy` against a state's usage."""

    def __init__(self, policy: QueuePolicy) -> None:
        self.policy = policy
        #: Per (parent, flavor): the children that hold a guarantee of that flavor, and how much.
        self._guarantees: dict[tuple[str | None, str], list[tuple[str, float]]] = {}
        self._nominals: list[tuple[str, str, float]] = []
        for name, spec in policy.queues.items():
            for flavor, quota in spec.quota.items():
                if quota.guarantee:
                    self._guarantees.setdefault((spec.parent, flavor), []).append((name, quota.guarantee))
                if quota.nominal is not None:
                    self._nominals.append((name, flavor, quota.nominal))

    def queue_of(self, job: Job) -> str | None:
        return self.policy.resolve(job.queue, job.tenant)

    def accounts(self, job: Job, queue: str | None) -> tuple[str, ...]:
        path = (*self.policy.path(queue), ROOT) if queue else ()
        return (*path, tenant_account(job.tenant), user_account(job.tenant, job.user))

    def admit(
        self, state: ClusterState, queue: str | None, demand: dict[str, float], pool: str | None = None
    ) -> Reason | None:
        """``None`` if the queue may take ``demand`` now, else a ``quota`` reason naming the queue and flavor."""
        if queue is None:
            return None
        policy = self.policy
        for a in policy.path(queue):
            spec = policy.queues[a]
            for flavor, amount in demand.items():
                after = state.used(a, flavor) + amount
                quota = spec.quota.get(flavor)
                if quota is not None:
                    if quota.limit is not None and after > quota.limit + EPSILON:
                        return _quota_reason(a, flavor, "limit", quota.limit, after, pool)
                    nominal = quota.nominal
                    if (
                        quota.borrowing_limit is not None
                        and nominal is not None
                        and after - nominal > quota.borrowing_limit + EPSILON
                    ):
                        return _quota_reason(a, flavor, "borrowing limit", nominal + quota.borrowing_limit, after, pool)
                capacity = self._parent_capacity(state, spec.parent, flavor)
                if capacity is None:
                    continue
                held = 0.0
                for sibling, guarantee in self._guarantees.get((spec.parent, flavor), ()):
                    if sibling != a:
                        held += max(0.0, guarantee - state.used(sibling, flavor))
                # Top-level queues are charged to the center's account too, so their sum is one lookup.
                parent_after = state.used(spec.parent or ROOT, flavor) + amount
                if held and parent_after + held > capacity + EPSILON:
                    return Reason(
                        ReasonCode.QUOTA,
                        "queue {queue}: {flavor} held as other queues' unused guarantee "
                        "({held:g} of {capacity:g}); borrowing stops there",
                        pool,
                        {"queue": a, "flavor": flavor, "held": held, "capacity": capacity},
                    )
        return None

    def _parent_capacity(self, state: ClusterState, parent: str | None, flavor: str) -> float | None:
        if parent is None:
            if flavor == NCU:
                return None
            devices = state.devices_by_model.get(flavor)
            return float(devices) if devices else None
        quota = self.policy.quota(parent, flavor)
        return quota.limit if quota is not None else None

    # ------------------------------------------------------------------------------------------ reclaim

    def within_deserved(self, state: ClusterState, queue: str | None, demand: dict[str, float]) -> bool:
        """True if every queue on the path stays within its deserved share of every flavor it sets one for."""
        if queue is None:
            return False
        for a in self.policy.path(queue):
            for flavor, amount in demand.items():
                quota = self.policy.quota(a, flavor)
                nominal = quota.nominal if quota is not None else None
                if nominal is not None and state.used(a, flavor) + amount > nominal + EPSILON:
                    return False
        return True

    def swap_keeps_deserved(
        self, state: ClusterState, queue: str | None, demand: dict[str, float], leaving: Iterable[RunningJob]
    ) -> bool:
        """True unless ``leaving`` stopping and ``demand`` starting takes a queue on ``queue``'s path above its
        deserved share and higher than it was: the swap of an ordering preemption must not make its queue
        borrow, or reclaim takes back what it started and the ordering restarts what reclaim stopped."""
        if queue is None:
            return True
        gone = list(leaving)
        for a in self.policy.path(queue):
            for flavor, amount in demand.items():
                quota = self.policy.quota(a, flavor)
                nominal = quota.nominal if quota is not None else None
                if nominal is None:
                    continue
                before = state.used(a, flavor)
                after = before + amount - sum(v.demand.get(flavor, 0.0) for v in gone if a in v.accounts)
                if after > nominal + EPSILON and after > before + EPSILON:
                    return False
        return True

    def anyone_borrowing(self, state: ClusterState, model: str) -> bool:
        """True if some queue uses more than its deserved ``model`` devices or NCU (O(queues with shares))."""
        for name, flavor, nominal in self._nominals:
            if flavor in (model, NCU) and state.used(name, flavor) > nominal + EPSILON:
                return True
        return False

    def borrowing(self, state: ClusterState, accounts: tuple[str, ...], demand: dict[str, float]) -> bool:
        """True if some queue among ``accounts`` uses more than its deserved share of a flavor in ``demand``."""
        for a in accounts:
            if a not in self.policy.queues:
                continue
            for flavor in demand:
                quota = self.policy.quota(a, flavor)
                nominal = quota.nominal if quota is not None else None
                if nominal is not None and state.used(a, flavor) > nominal + EPSILON:
                    return True
        return False


def _quota_reason(queue: str, flavor: str, what: str, cap: float, after: float, pool: str | None) -> Reason:
    return Reason(
        ReasonCode.QUOTA,
        "queue {queue} would use {after:g} {flavor}, above its {what} of {cap:g}",
        pool,
        {"queue": queue, "flavor": flavor, "what": what, "cap": cap, "after": after},
    )
