"""How a node declares itself to Ray: resources and labels. Pure, so the agent (``zhisuan agent ray-spec``), the
local cluster and the executor share one definition, and it runs wherever the catalog does.

The vendor's Ray resource name and visibility variable are catalog data (``vendors:`` in
``seeds/accelerators.yaml``); the ``zhisuan.io/*`` labels are what the executor pins bundles with::

    >>> from scheduler.model import Node
    >>> n = Node(id="gpu-01", model="H100", devices=8, cpu_milli=64000, memory_mib=1024, site="bj1")
    >>> spec = ray_node_spec(n, "nvidia")
    >>> spec.num_gpus, spec.resources, spec.labels[POOL_LABEL]
    (8.0, {'accelerator_type:H100': 1.0}, 'bj1.H100')
    >>> ray_node_spec(n.model_copy(update={"model": "Ascend910B"}), "huawei").resources["NPU"]
    8.0
    >>> ray_resource_name("undisclosed"), device_visibility_env("cambricon")
    ('ACCELERATOR', 'MLU_VISIBLE_DEVICES')
"""

from __future__ import annotations

import json
import re

from pydantic import BaseModel, ConfigDict

from scheduler.catalog import Catalog, load_catalog
from scheduler.model import Node

NODE_LABEL = "zhisuan.io/node"
MODEL_LABEL = "zhisuan.io/model"
VENDOR_LABEL = "zhisuan.io/vendor"
POOL_LABEL = "zhisuan.io/pool"
ISLAND_LABEL = "zhisuan.io/island"

#: The Ray resource of a vendor the catalog does not know (it still gets scheduled, just not by vendor name).
FALLBACK_RESOURCE = "ACCELERATOR"


def ray_resource_name(vendor: str | None, catalog: Catalog | None = None) -> str:
    """The Ray resource a vendor's devices are declared as: ``GPU``, ``NPU``, ``MLU`` ..."""
    try:
        return (catalog or load_catalog()).vendor(vendor or "").ray_resource
    except KeyError:
        return FALLBACK_RESOURCE


def device_visibility_env(vendor: str | None, catalog: Catalog | None = None) -> str | None:
    """The variable the vendor's runtime reads to restrict a process to some devices; None when unknown."""
    try:
        return (catalog or load_catalog()).vendor(vendor or "").visibility_env
    except KeyError:
        return None


class RayNodeSpec(BaseModel):
    """What ``ray start`` needs to declare this node: CPUs, GPUs, custom resources and labels."""

    model_config = ConfigDict(extra="forbid")

    num_cpus: float
    num_gpus: float
    memory_bytes: int
    resources: dict[str, float]
    labels: dict[str, str]

    def ray_start_args(self) -> list[str]:
        """Arguments for ``ray start`` (add ``--address`` or ``--head`` yourself)."""
        args = [f"--num-cpus={self.num_cpus:g}", f"--num-gpus={self.num_gpus:g}", f"--memory={self.memory_bytes}"]
        if self.resources:
            args.append(f"--resources={json.dumps(self.resources, sort_keys=True)}")
        if self.labels:
            args.append("--labels=" + ",".join(f"{k}={v}" for k, v in sorted(self.labels.items())))
        return args


def ray_label_value(value: str) -> str:
    """Ray label values allow ``[A-Za-z0-9._-]``, at most 63 characters, alphanumeric at both ends."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", ".", value)[:63].strip("._-")
    return cleaned or "none"


def node_labels(node: Node, vendor: str | None) -> dict[str, str]:
    """The ``zhisuan.io/*`` labels of a node (what the executor's bundle label selectors match)."""
    return {
        NODE_LABEL: ray_label_value(node.id),
        MODEL_LABEL: ray_label_value(node.model),
        VENDOR_LABEL: ray_label_value(vendor or "none"),
        POOL_LABEL: ray_label_value(node.pool),
        ISLAND_LABEL: ray_label_value(node.island),
    }


def ray_node_spec(
    node: Node, vendor: str | None, healthy_devices: int | None = None, catalog: Catalog | None = None
) -> RayNodeSpec:
    """The Ray resources and labels of a node. ``healthy_devices`` (default: all) is what is declared: a device
    known to be bad is not offered to Ray."""
    count = float(node.devices if healthy_devices is None else max(0, min(healthy_devices, node.devices)))
    name = ray_resource_name(vendor, catalog)
    resources: dict[str, float] = {}
    num_gpus = 0.0
    if count:
        if name == "GPU":
            num_gpus = count
        else:
            resources[name] = count
    if node.model:
        resources[f"accelerator_type:{node.model}"] = 1.0
    return RayNodeSpec(
        num_cpus=node.cpu_milli / 1000,
        num_gpus=num_gpus,
        memory_bytes=node.memory_mib * 2**20,
        resources=resources,
        labels=node_labels(node, vendor),
    )
