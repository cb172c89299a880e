"""Zhisuan's policy core and, in :mod:`scheduler.live`, the runtime around it.

The core is pure (no clock, database or network) and is what both the live service and the simulator call::

    >>> from scheduler import Job, SchedulerCore, load_cluster
    >>> state = load_cluster("example").state()
    >>> decision = SchedulerCore().step(state, [Job(id="llama", workers=2, devices_per_worker=8)], now=0.0)[0]
    >>> decision.kind.value, len(decision.placement.workers)
    ('start', 2)

The names below are the public surface (stable within a minor version); everything else is importable from its
module but may change. They load on first use, so importing one core module (the node agent imports only the
catalog) does not load the whole core.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scheduler.catalog import Catalog, load_catalog
    from scheduler.cluster import Cluster, load_cluster
    from scheduler.core import CoreConfig, QueueingConfig, SchedulerCore
    from scheduler.eta import forecast
    from scheduler.model import Decision, DecisionKind, Job, JobKind, Node, Placement, Reason
    from scheduler.placement import PlacementConfig
    from scheduler.spec import JobSpec, JobState, load_spec
    from scheduler.state import ClusterState
    from scheduler.tenancy import QueuePolicy, load_policy

_EXPORTS = {
    "Catalog": "scheduler.catalog",
    "load_catalog": "scheduler.catalog",
    "Cluster": "scheduler.cluster",
    "load_cluster": "scheduler.cluster",
    "CoreConfig": "scheduler.core",
    "QueueingConfig": "scheduler.core",
    "SchedulerCore": "scheduler.core",
    "forecast": "scheduler.eta",
    "Decision": "scheduler.model",
    "DecisionKind": "scheduler.model",
    "Job": "scheduler.model",
    "JobKind": "scheduler.model",
    "Node": "scheduler.model",
    "Placement": "scheduler.model",
    "Reason": "scheduler.model",
    "PlacementConfig": "scheduler.placement",
    "JobSpec": "scheduler.spec",
    "JobState": "scheduler.spec",
    "load_spec": "scheduler.spec",
    "ClusterState": "scheduler.state",
    "QueuePolicy": "scheduler.tenancy",
    "load_policy": "scheduler.tenancy",
}
__all__ = [
    "Catalog",
    "Cluster",
    "ClusterState",
    "CoreConfig",
    "Decision",
    "DecisionKind",
    "Job",
    "JobKind",
    "JobSpec",
    "JobState",
    "Node",
    "Placement",
    "PlacementConfig",
    "QueuePolicy",
    "QueueingConfig",
    "Reason",
    "SchedulerCore",
    "forecast",
    "load_catalog",
    "load_cluster",
    "load_policy",
    "load_spec",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'scheduler' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
