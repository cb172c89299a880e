"""The vendor → Kubernetes name table (``seeds/kubernetes.yaml``), validated whole before the inventory uses it.

The table says, per catalog vendor, which extended resources count whole devices, which labels name the model,
which resources are virtualised (HAMi, Volcano vGPU, MIG, shared replicas), which node annotations list the
physical devices, and which taints Zhisuan's pods tolerate. It is data, so supporting a new device plugin is an
edit of the YAML, not of the inventory::

    >>> names = load_kubernetes_names()
    >>> names.classify("nvidia.com/gpu").vendor, names.classify("nvidia.com/gpumem").kind
    ('nvidia', 'virtual')
    >>> names.classify("example.com/fpga") is None
    True

A bad table is rejected with the file and the field, e.g. ``seeds/kubernetes.yaml: vendors.nvidia: unknown vendor
'nvidai' (allowed: amd, cambricon, ...)``.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from scheduler.catalog import SEEDS_DIR, Catalog, load_catalog
from scheduler.errors import ConfigError, load_yaml_mapping, validate_model

DEFAULT_NAMES_PATH = SEEDS_DIR / "kubernetes.yaml"

#: A label or annotation key: an optional DNS-subdomain prefix and a name (Kubernetes "qualified name").
_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
#: An extended resource name: always prefixed by a domain.
_RESOURCE = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)+/[A-Za-z0-9*]([-A-Za-z0-9_.*]*)$"
)


def _check_key(value: str) -> str:
    if len(value) > 316 or not _KEY.match(value):
        raise ValueError(f"{value!r} is not a Kubernetes label/annotation key")
    return value


def _check_resource(value: str) -> str:
    if not _RESOURCE.match(value):
        raise ValueError(f"{value!r} is not an extended resource name (domain/name)")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceResource(_Strict):
    """An extended resource whose allocatable count is whole physical devices."""

    resource: str
    #: The catalog model the name itself designates, where it does.
    model: str | None = None
    #: A label holding how many times each device is advertised (time-slicing / MPS replicas).
    replicas_label: str | None = None

    _resource = field_validator("resource")(lambda v: _check_resource(v))

    @field_validator("replicas_label")
    @classmethod
    def _label(cls, value: str | None) -> str | None:
        return None if value is None else _check_key(value)


class ModelLabel(_Strict):
    label: str
    strip_prefix: str = ""

    _label = field_validator("label")(lambda v: _check_key(v))


class Register(_Strict):
    """A node annotation listing the physical devices (HAMi's ``hami.io/node-*-register``, Volcano's vGPU one)."""

    key: str | None = None
    prefix: str | None = None
    format: Literal["hami", "volcano"]
    type_prefix: str = ""

    @model_validator(mode="after")
    def _one_of(self) -> Register:
        if (self.key is None) == (self.prefix is None):
            raise ValueError("give exactly one of key (exact annotation) or prefix (a family of annotations)")
        _check_key(self.key or f"{self.prefix}x")
        return self

    def matches(self, annotation: str) -> bool:
        if self.key is not None:
            return annotation == self.key
        return self.prefix is not None and annotation.startswith(self.prefix)


class Toleration(_Strict):
    """A Kubernetes toleration (the subset Zhisuan writes and matches)."""

    key: str
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str = ""
    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] = ""

    _key = field_validator("key")(lambda v: _check_key(v))

    def tolerates(self, taint: dict[str, str]) -> bool:
        """Kubernetes' rule: same key, value equal unless ``Exists``, same effect unless the toleration names none."""
        if taint.get("key") != self.key:
            return False
        if self.effect and taint.get("effect") != self.effect:
            return False
        return self.operator == "Exists" or taint.get("value", "") == self.value

    def as_k8s(self) -> dict[str, str]:
        out = {"key": self.key, "operator": self.operator}
        if self.operator == "Equal":
            out["value"] = self.value
        if self.effect:
            out["effect"] = self.effect
        return out


class VendorNames(_Strict):
    devices: tuple[DeviceResource, ...] = ()
    model_labels: tuple[ModelLabel, ...] = ()
    slice_models: tuple[str, ...] = ()
    virtual: tuple[str, ...] = ()
    registers: tuple[Register, ...] = ()
    tolerations: tuple[Toleration, ...] = ()
    node_selector: dict[str, str] = Field(default_factory=dict)

    @field_validator("virtual")
    @classmethod
    def _virtual(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            _check_resource(name)
        return value

    @field_validator("node_selector")
    @classmethod
    def _selector(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            _check_key(key)
        return value


class Topology(_Strict):
    """Labels, in order of preference, that place a node: the first one present wins."""

    site: tuple[str, ...] = ()
    region: tuple[str, ...] = ()
    zone: tuple[str, ...] = ()
    island: tuple[str, ...] = ()
    switch: tuple[str, ...] = ()

    @field_validator("site", "region", "zone", "island", "switch")
    @classmethod
    def _keys(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for key in value:
            _check_key(key)
        return value


class NamesDocument(_Strict):
    """The YAML document shape of ``seeds/kubernetes.yaml``."""

    version: int = Field(ge=1)
    topology: Topology = Topology()
    vendors: dict[str, VendorNames] = Field(min_length=1)


@dataclass(frozen=True, slots=True)
class Classified:
    """What an extended resource name is: a vendor's whole devices, or a vendor's virtualised resource."""

    kind: Literal["device", "virtual"]
    vendor: str
    device: DeviceResource | None = None


class KubernetesNames:
    """The validated table with indexes for the per-node hot path (one dict lookup per resource name)."""

    def __init__(self, document: NamesDocument, source: str | Path = "<names>") -> None:
        self.source = str(source)
        self.topology = document.topology
        self.vendors = dict(document.vendors)
        self._devices: dict[str, Classified] = {}
        self._virtual: dict[str, Classified] = {}
        self._patterns: list[tuple[re.Pattern[str], Classified]] = []
        self._cache: dict[str, Classified | None] = {}
        for vendor, entry in self.vendors.items():
            for i, device in enumerate(entry.devices):
                self._claim(
                    self._devices, device.resource, Classified("device", vendor, device), f"{vendor}.devices[{i}]"
                )
            for i, name in enumerate(entry.virtual):
                where = f"{vendor}.virtual[{i}]"
                if "*" in name:
                    self._patterns.append((re.compile(fnmatch.translate(name)), Classified("virtual", vendor)))
                else:
                    self._claim(self._virtual, name, Classified("virtual", vendor), where)
        for name in self._devices:
            hit = self._match_pattern(name)
            if hit is not None:
                raise ConfigError(source, "vendors", f"device resource {name!r} also matches a virtual pattern")

    def _claim(self, table: dict[str, Classified], name: str, value: Classified, where: str) -> None:
        other = self._devices.get(name) or self._virtual.get(name)
        if other is not None:
            raise ConfigError(self.source, f"vendors.{where}", f"{name!r} is already listed for vendor {other.vendor}")
        table[name] = value

    def _match_pattern(self, name: str) -> Classified | None:
        for pattern, value in self._patterns:
            if pattern.match(name):
                return value
        return None

    def classify(self, resource: str) -> Classified | None:
        """The vendor and kind of an extended resource; None for a name the table does not know."""
        try:
            return self._cache[resource]
        except KeyError:
            pass
        found = self._devices.get(resource) or self._virtual.get(resource) or self._match_pattern(resource)
        if len(self._cache) < 10_000:
            self._cache[resource] = found
        return found

    def registers(self, annotation: str) -> tuple[str, Register] | None:
        """The vendor and register entry an annotation key belongs to, if any."""
        for vendor, entry in self.vendors.items():
            for register in entry.registers:
                if register.matches(annotation):
                    return vendor, register
        return None

    def tolerations(self, vendor: str | None) -> tuple[Toleration, ...]:
        entry = self.vendors.get(vendor or "")
        return entry.tolerations if entry is not None else ()


def parse_kubernetes_names(
    data: object, source: str | Path = "<names>", catalog: Catalog | None = None
) -> KubernetesNames:
    """Validate a table already parsed from YAML, against the catalog's vendors and models."""
    document = validate_model(NamesDocument, data, source)
    catalog = catalog or load_catalog()
    vendors = sorted({m.vendor for m in catalog})
    for vendor, entry in document.vendors.items():
        if vendor not in vendors:
            raise ConfigError(source, f"vendors.{vendor}", f"unknown vendor {vendor!r}", allowed=vendors)
        for i, device in enumerate(entry.devices):
            if device.model is None:
                continue
            found = catalog.lookup(device.model)
            if found is None:
                raise ConfigError(
                    source, f"vendors.{vendor}.devices[{i}].model", f"unknown accelerator model {device.model!r}"
                )
            if found.vendor != vendor:
                raise ConfigError(
                    source,
                    f"vendors.{vendor}.devices[{i}].model",
                    f"model {found.model!r} is a {found.vendor} model, not {vendor}",
                )
    return KubernetesNames(document, source)


def load_kubernetes_names(path: str | Path | None = None, catalog: Catalog | None = None) -> KubernetesNames:
    """Load and validate ``seeds/kubernetes.yaml`` (or ``path``); cached per path for the default catalog."""
    resolved = str(Path(path) if path is not None else DEFAULT_NAMES_PATH)
    if catalog is not None:
        return parse_kubernetes_names(load_yaml_mapping(resolved), resolved, catalog)
    return _load_cached(resolved)


@cache
def _load_cached(path: str) -> KubernetesNames:
    return parse_kubernetes_names(load_yaml_mapping(path), path)
