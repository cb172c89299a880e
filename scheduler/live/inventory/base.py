"""Where the nodes come from: one interface, one implementation per source of truth.

An :class:`InventorySource` answers "which nodes exist, which may take work, and why not" as a whole
:class:`Inventory`; the service writes it to the database through its store, and the scheduler reads the result
like any other node row. Sources today: the cluster file (:mod:`scheduler.live.inventory.file`, the default for
bare metal, where node agents then report health) and Kubernetes Nodes
(:mod:`scheduler.live.inventory.kubernetes`)::

    >>> from scheduler.model import Node
    >>> inv = Inventory(nodes=(InventoryNode(Node(id="n1", model="H100", devices=8, cpu_milli=0, memory_mib=0)),))
    >>> [n.node.id for n in inv.schedulable()], inv.stale
    (['n1'], False)
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Protocol

from scheduler.model import Node


@dataclass(frozen=True, slots=True)
class RegisteredDevice:
    """One physical device as a virtualisation layer registers it (HAMi's ``hami.io/node-*-register``)."""

    id: str
    #: How many virtual devices it is split into (the count the device plugin advertises for it).
    split: int
    memory_mib: int
    #: Compute share in percent (100 = the whole device).
    cores: int
    type: str
    healthy: bool
    index: int = 0


@dataclass(frozen=True)
class InventoryNode:
    """A node as its source sees it: the core's :class:`Node`, whether it may take new work, and why not."""

    node: Node
    vendor: str | None = None
    schedulable: bool = True
    #: Why the node takes no new work, or health problems its source reports (one line each, for people).
    reasons: tuple[str, ...] = ()
    #: Virtualised resources the source advertises beside the physical devices (HAMi/Volcano vGPU counts, device
    #: memory and core shares): reported, never counted as devices.
    virtual: dict[str, float] = field(default_factory=dict)
    #: Extended resources the source does not know (name -> allocatable as given): reported, never guessed at.
    unknown_resources: dict[str, str] = field(default_factory=dict)
    #: Physical devices a virtualisation layer lists for the node (where the source has such a list).
    registered: tuple[RegisteredDevice, ...] = ()
    #: Availability zone, where the source knows one (``site`` defaults to it on Kubernetes).
    zone: str = ""
    #: The extended resource a pod requests to get this node's devices (Kubernetes: ``nvidia.com/gpu``...).
    device_resource: str = ""


@dataclass(frozen=True)
class LeftOut:
    """A node the source knows of but could not map to the cluster model (unknown vendor, bad annotation...)."""

    name: str
    reason: str


@dataclass(frozen=True)
class Inventory:
    """Every node a source knows, at one moment."""

    nodes: tuple[InventoryNode, ...] = ()
    left_out: tuple[LeftOut, ...] = ()
    #: True when the source could not be read lately and this is the last known inventory.
    stale: bool = False
    #: Why it is stale (the source's last error), for the API to show.
    stale_reason: str = ""

    def schedulable(self) -> list[InventoryNode]:
        return [n for n in self.nodes if n.schedulable]


class InventorySource(Protocol):
    """A source of truth for the node inventory."""

    #: Recorded with each node it provides (``file``, ``kubernetes``): a source only ever changes its own nodes.
    source: str

    def inventory(self) -> Inventory:
        """The current inventory (the last known one, marked stale, when the source cannot be read now)."""
        ...


class InventorySink(Protocol):
    """Where an inventory is published for the scheduler and the API to read (the node records)."""

    def publish(self, source: str, inventory: Inventory, now: float) -> None:
        """Make the records of ``source``'s nodes match ``inventory``: new nodes added, changed ones updated,
        nodes the source no longer knows taken out of service; other sources' nodes are left alone."""
        ...


class WatchingSource(InventorySource, Protocol):
    """A source that keeps itself current in a thread of its own (Kubernetes' list-then-watch)."""

    def run(self, stop: threading.Event) -> None:
        """Follow the source until ``stop`` is set."""
        ...
