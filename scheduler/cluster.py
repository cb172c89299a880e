"""Cluster files: a compact description of sites and pools that expands into :class:`~scheduler.model.Node` s.

A pool line says "this many nodes of this model, this big, in this site"; islands and switches are derived from
the model's interconnect domain (from the catalog) and ``nodes_per_switch``::

    # seeds/clusters/example.yaml
    name: example
    sites:
      bj1: {region: north, tier: cloud}
    pools:
      - {model: H100, site: bj1, nodes: 4, devices_per_node: 8, cpu_cores: 192, memory_gib: 2048}

    >>> from scheduler.cluster import load_cluster
    >>> cluster = load_cluster("seeds/clusters/example.yaml")
    >>> len(cluster.nodes) > 0
    True

The whole file is validated before any node is returned: an unknown model, a negative count or a duplicate
node id is a one-line :class:`~scheduler.errors.ConfigError` naming the file and the field.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from scheduler.catalog import SEEDS_DIR, Catalog, Tier, load_catalog
from scheduler.errors import ConfigError, load_yaml_mapping, validate_model
from scheduler.model import Node
from scheduler.state import ClusterState

CLUSTERS_DIR = SEEDS_DIR / "clusters"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SiteSpec(_Strict):
    region: str = "default"
    tier: Tier = Tier.CLOUD


class PoolSpec(_Strict):
    model: str
    site: str = "default"
    nodes: int = Field(ge=0, le=100_000)
    devices_per_node: int = Field(ge=0, le=64)
    cpu_cores: float = Field(ge=0)
    memory_gib: float = Field(ge=0)
    nodes_per_switch: int = Field(default=32, ge=1)
    nodes_per_island: int | None = Field(default=None, ge=1, description="default: from the catalog")
    id_prefix: str | None = None


class ExplicitNode(_Strict):
    id: str = Field(min_length=1)
    model: str
    site: str = "default"
    devices: int = Field(ge=0, le=64)
    cpu_cores: float = Field(ge=0)
    memory_gib: float = Field(ge=0)
    island: str = ""
    switch: str = ""
    labels: dict[str, str] = Field(default_factory=dict)


class ClusterDocument(_Strict):
    name: str = "cluster"
    sites: dict[str, SiteSpec] = Field(default_factory=lambda: {"default": SiteSpec()})
    pools: list[PoolSpec] = Field(default_factory=list)
    nodes: list[ExplicitNode] = Field(default_factory=list)


class Cluster:
    """An expanded cluster file: its name and nodes, ready for :class:`ClusterState`."""

    def __init__(self, name: str, nodes: list[Node], source: str) -> None:
        self.name = name
        self.nodes = nodes
        self.source = source

    def state(self) -> ClusterState:
        return ClusterState(self.nodes)

    @property
    def devices(self) -> int:
        return sum(n.devices for n in self.nodes)


def parse_cluster(data: object, source: str | Path = "<cluster>", catalog: Catalog | None = None) -> Cluster:
    """Validate and expand a cluster document (already parsed from YAML/JSON)."""
    catalog = catalog or load_catalog()
    doc = validate_model(ClusterDocument, data, source)
    nodes: list[Node] = []
    sites = doc.sites

    def site_of(site: str, field: str) -> SiteSpec:
        if site not in sites:
            raise ConfigError(source, field, f"unknown site {site!r}", allowed=sorted(sites))
        return sites[site]

    for p, pool in enumerate(doc.pools):
        entry = catalog.resolve(pool.model, source=source, field=f"pools[{p}].model")
        site = site_of(pool.site, f"pools[{p}].site")
        per_island = pool.nodes_per_island
        if per_island is None:
            per_island = max(1, entry.island_size // max(pool.devices_per_node, 1))
        prefix = pool.id_prefix or f"{pool.site}-{entry.model.lower()}"
        for i in range(pool.nodes):
            node_id = f"{prefix}-{i:05d}"
            nodes.append(
                Node(
                    id=node_id,
                    model=entry.model,
                    devices=pool.devices_per_node,
                    cpu_milli=round(pool.cpu_cores * 1000),
                    memory_mib=round(pool.memory_gib * 1024),
                    site=pool.site,
                    region=site.region,
                    tier=site.tier,
                    island=f"{prefix}-island-{i // per_island:05d}" if per_island > 1 else node_id,
                    switch=f"{prefix}-switch-{i // pool.nodes_per_switch:04d}",
                    labels={"zhisuan.io/pool": f"{pool.site}/{entry.model}"},
                )
            )
    for n, explicit in enumerate(doc.nodes):
        entry = catalog.resolve(explicit.model, source=source, field=f"nodes[{n}].model")
        site = site_of(explicit.site, f"nodes[{n}].site")
        nodes.append(
            Node(
                id=explicit.id,
                model=entry.model,
                devices=explicit.devices,
                cpu_milli=round(explicit.cpu_cores * 1000),
                memory_mib=round(explicit.memory_gib * 1024),
                site=explicit.site,
                region=site.region,
                tier=site.tier,
                island=explicit.island,
                switch=explicit.switch,
                labels=explicit.labels,
            )
        )
    seen: set[str] = set()
    for node in nodes:
        if node.id in seen:
            raise ConfigError(source, "nodes", f"duplicate node id {node.id!r}")
        seen.add(node.id)
    return Cluster(doc.name, nodes, str(source))


def load_cluster(path: str | Path, catalog: Catalog | None = None) -> Cluster:
    """Load a cluster file; a bare name such as ``example`` is looked up in ``seeds/clusters/``."""
    resolved = Path(path)
    if not resolved.exists() and not resolved.suffix:
        resolved = CLUSTERS_DIR / f"{path}.yaml"
    return parse_cluster(load_yaml_mapping(resolved), resolved, catalog)
