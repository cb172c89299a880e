"""The inventory of a cluster file (``seeds/clusters/*.yaml``): the default source on bare metal.

Every node of the file is in the inventory and may take work; whether it is *up* is the node agent's to say (its
heartbeats), not the file's. The file is validated whole before anything uses it::

    >>> from scheduler.catalog import SEEDS_DIR
    >>> inv = FileInventory(SEEDS_DIR / "clusters" / "local.yaml").inventory()
    >>> len(inv.nodes), inv.nodes[0].vendor, inv.stale
    (5, 'nvidia', False)
"""

from __future__ import annotations

from pathlib import Path

from scheduler.catalog import Catalog, load_catalog
from scheduler.cluster import load_cluster
from scheduler.live.inventory.base import Inventory, InventoryNode


class FileInventory:
    """Nodes from a cluster file; ``load_cluster`` raises a one-line :class:`~scheduler.errors.ConfigError`."""

    source = "file"

    def __init__(self, path: str | Path, catalog: Catalog | None = None) -> None:
        self.path = Path(path)
        self.catalog = catalog or load_catalog()

    def inventory(self) -> Inventory:
        cluster = load_cluster(self.path, self.catalog)
        return Inventory(
            nodes=tuple(InventoryNode(node, vendor=self.catalog[node.model].vendor) for node in cluster.nodes)
        )
