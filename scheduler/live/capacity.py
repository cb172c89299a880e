"""Capacity that comes and goes: the port through which the scheduler service sizes the nodes it may use.

On bare metal every installed node is always there. On Kubernetes a node takes Zhisuan work only while a Ray
worker pod of its group runs there and is ready, and Zhisuan itself decides how many pods each worker group has
(:class:`~scheduler.live.kuberay.KubeRayCapacity`, the rule of :mod:`scheduler.scaling`). The service asks a
:class:`CapacityManager` two things each cycle, before the core steps:

1. :meth:`~CapacityManager.in_service`: which of the nodes it manages may take work now. The service takes the
   others out of the core's state (they keep whatever runs there: a node leaves service only when its pod goes,
   and the rule only removes pods of nodes that hold nothing);
2. :meth:`~CapacityManager.size`: the demand — the core's state, the pending jobs in the core's order, its
   reservations and the models each job may use (the placement engine's word) — from which it grows or shrinks
   its groups; it answers the nodes it just took out of service, so that nothing is placed on a node whose pod
   is being deleted.

Nodes a manager does not name are left as the records say. A manager never raises for an outage of what it
manages (it logs, and keeps its last word); the service's cycle goes on without new capacity::

    >>> manager = FixedCapacity({"n1": True, "n2": False})
    >>> dict(manager.in_service(0.0) or {}), manager.size(ClusterState(), [], {}, 0.0, lambda job: job.models)
    ({'n1': True, 'n2': False}, ())
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Protocol

from scheduler.backfill import Reservation
from scheduler.model import Job
from scheduler.state import ClusterState


class CapacityManager(Protocol):
    """Sizes the nodes the service may use (see the module docstring)."""

    def in_service(self, now: float) -> Mapping[str, bool] | None:
        """Managed node id → whether it may take work now; None: nothing new to say since the last answer."""
        ...

    def size(
        self,
        state: ClusterState,
        pending: Sequence[Job],
        reservations: Mapping[str, Reservation],
        now: float,
        acceptable: Callable[[Job], Sequence[str]],
    ) -> Collection[str]:
        """Grow or shrink for this demand; returns the nodes taken out of service by it (their pods go)."""
        ...


class FixedCapacity:
    """A manager whose nodes never change (tests, and a documented example of the port)."""

    def __init__(self, nodes: Mapping[str, bool]) -> None:
        self.nodes = dict(nodes)

    def in_service(self, now: float) -> Mapping[str, bool] | None:
        return dict(self.nodes)

    def size(
        self,
        state: ClusterState,
        pending: Sequence[Job],
        reservations: Mapping[str, Reservation],
        now: float,
        acceptable: Callable[[Job], Sequence[str]],
    ) -> Collection[str]:
        return ()
