"""The accelerator catalog: every accelerator model the center can run, with cited specifications.

The catalog is data (``seeds/accelerators.yaml``), validated here before anything uses it. Trace and inventory
names resolve through aliases, so ``V100M32`` (Alibaba openb), ``v100`` (Gavel) and ``Tesla V100-SXM2-32GB``
(NVML) all find the same entry::

    >>> from scheduler.catalog import load_catalog
    >>> catalog = load_catalog()
    >>> catalog.resolve("V100M32").model
    'V100-32G'
    >>> catalog["Ascend910B"].domestic
    True
    >>> catalog.vendor("huawei").ray_resource, catalog.vendor("huawei").visibility_env
    ('NPU', 'ASCEND_RT_VISIBLE_DEVICES')

Opaque models (a trace names them but publishes no specifications, like Alibaba's G1-G3) are declared with
``opaque: true``; their numbers stay null so nothing downstream can mistake a guess for a data-sheet value.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from enum import StrEnum
from functools import cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from scheduler.errors import ConfigError, load_yaml_mapping, validate_model

SEEDS_DIR = Path(__file__).resolve().parent.parent / "seeds"
DEFAULT_CATALOG_PATH = SEEDS_DIR / "accelerators.yaml"


class Kind(StrEnum):
    GPU = "gpu"
    NPU = "npu"
    MLU = "mlu"
    XPU = "xpu"
    DCU = "dcu"


class Precision(StrEnum):
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"
    INT8 = "int8"


class InterconnectType(StrEnum):
    NVLINK = "nvlink"
    HCCS = "hccs"
    MLU_LINK = "mlu-link"
    XPU_LINK = "xpu-link"
    INFINITY_FABRIC = "infinity-fabric"
    METAX_LINK = "metax-link"
    MT_LINK = "mt-link"
    ILUVATAR_LINK = "iluvatar-link"
    PCIE = "pcie"


class SoftwareStack(StrEnum):
    CUDA = "cuda"
    CANN = "cann"
    NEUWARE = "neuware"
    XRE = "xre"
    DTK = "dtk"
    COREX = "corex"
    MACA = "maca"
    MUSA = "musa"
    ROCM = "rocm"


class Tier(StrEnum):
    CLOUD = "cloud"
    EDGE = "edge"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PeakTflops(_Strict):
    """Peak *dense* throughput per precision; int8 is in TOPS. ``None`` where no public figure exists."""

    fp32: float | None = Field(default=None, ge=0)
    bf16: float | None = Field(default=None, ge=0)
    fp16: float | None = Field(default=None, ge=0)
    int8: float | None = Field(default=None, ge=0)

    def get(self, precision: Precision) -> float | None:
        value: float | None = getattr(self, precision.value)
        return value

    def known(self) -> bool:
        return any(v is not None for v in (self.fp32, self.bf16, self.fp16, self.int8))


class Interconnect(_Strict):
    """The device-to-device fabric and how many devices one fast domain (an island) joins."""

    type: InterconnectType
    domain_size: int | None = Field(default=None, ge=1, description="devices joined in one island")
    bandwidth_gbps: float | None = Field(default=None, ge=0, description="per-device bidirectional GB/s")


#: Number groups that must each carry a citation in ``source`` (or be covered by ``source.all``).
CITED_FIELDS = ("memory_gib", "peak_tflops", "tdp_w", "interconnect")


class DeviceName(_Strict):
    """A name that vendor tools print for more than one part, told apart by the memory one device reports.

    Ascend A3 dies and the original Ascend 910 both print ``Ascend910``; ``memory_gib`` is what one *device* (as the
    tool enumerates it) reports, which for multi-die parts differs from the package figure in ``memory_gib`` of the
    model. ``source`` names the capture or data sheet that shows it.
    """

    name: str = Field(min_length=1)
    memory_gib: float = Field(gt=0)
    source: str = Field(min_length=1)


#: How far (as a fraction) a device's reported memory may be from a :class:`DeviceName` figure and still match:
#: tools report usable memory, a few percent under the data-sheet size (65520 MiB for a 64 GiB part).
DEVICE_MEMORY_TOLERANCE = 0.1


class AcceleratorModel(_Strict):
    """One accelerator product. Numbers are per device (per package for multi-die parts such as MI300X)."""

    model: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    vendor: str
    family: str
    kind: Kind
    memory_gib: float | None = Field(default=None, gt=0)
    peak_tflops: PeakTflops = PeakTflops()
    tdp_w: float | None = Field(default=None, gt=0)
    interconnect: Interconnect | None = None
    software_stack: SoftwareStack | None = None
    domestic: bool
    tier: Tier = Tier.CLOUD
    training: bool = True
    released: int | None = Field(default=None, ge=2000, le=2100)
    historical: bool = False
    opaque: bool = False
    aliases: tuple[str, ...] = ()
    device_names: tuple[DeviceName, ...] = ()
    source: dict[str, str]
    notes: str | None = None

    @field_validator("source")
    @classmethod
    def _source_entries_are_citations(cls, value: dict[str, str]) -> dict[str, str]:
        allowed = {*CITED_FIELDS, "all", "model"}
        for key, citation in value.items():
            if key not in allowed:
                raise ValueError(f"unknown source key {key!r}; use one of {', '.join(sorted(allowed))}")
            if not citation or not citation.strip():
                raise ValueError(f"source.{key} is empty; name the data sheet or benchmark")
        return value

    @model_validator(mode="after")
    def _every_number_is_cited(self) -> AcceleratorModel:
        present = {
            "memory_gib": self.memory_gib is not None,
            "peak_tflops": self.peak_tflops.known(),
            "tdp_w": self.tdp_w is not None,
            "interconnect": self.interconnect is not None
            and (self.interconnect.domain_size is not None or self.interconnect.bandwidth_gbps is not None),
        }
        if "all" not in self.source:
            missing = [name for name, has in present.items() if has and name not in self.source]
            if missing:
                raise ValueError(f"no source for {', '.join(missing)}; add source.<field> or source.all")
        if self.opaque:
            if any(present.values()):
                raise ValueError("an opaque model publishes no numbers; leave them null")
        elif not self.historical:
            # tdp_w may stay null: several domestic vendors publish no board power for parts they do describe.
            absent = [n for n in ("memory_gib", "peak_tflops") if not present[n]]
            if absent:
                raise ValueError(
                    f"a current model needs memory_gib and peak_tflops (missing: {', '.join(absent)}); "
                    f"mark it opaque or historical otherwise"
                )
        return self

    @property
    def island_size(self) -> int:
        """Devices in one fast-interconnect domain; 1 where the model only has PCIe."""
        if self.interconnect is None or self.interconnect.domain_size is None:
            return 1
        return self.interconnect.domain_size


class Vendor(_Strict):
    """What the runtime needs to know of one vendor's devices, whatever the model: the name Ray accounts them
    under and the variable that restricts a process to some of them.

    Ray has accelerator managers for NVIDIA, AMD and MetaX (``GPU``) and Ascend (``NPU``) and sets their
    visibility variables itself for the devices *it* picked; the executor overrides them with the devices the
    scheduler chose. The other vendors get custom resource names.
    """

    vendor: str = Field(pattern=r"^[a-z][a-z0-9-]*$")
    name: str
    ray_resource: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$")
    visibility_env: str | None = Field(default=None, pattern=r"^[A-Z][A-Z0-9_]*$")
    #: Variables every worker of this vendor gets, so that the devices named by index in ``visibility_env`` are
    #: the ones the node agent's tool numbered so (CUDA numbers by speed unless told to use the PCI order).
    runtime_env: dict[str, str] = Field(default_factory=dict)
    source: str | None = None


class CatalogDocument(_Strict):
    """The YAML document shape of ``seeds/accelerators.yaml``."""

    version: int = Field(ge=1)
    reference: str = Field(description="model whose throughput defines 1.0 (one NCU)")
    vendors: list[Vendor] = Field(min_length=1)
    models: list[AcceleratorModel] = Field(min_length=1)


def normalise_name(name: str) -> str:
    """Case- and punctuation-insensitive alias key: ``'Tesla V100-SXM2 32GB' -> 'teslav100sxm232gb'``."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


class Catalog:
    """Validated, indexed accelerator models. Immutable after construction."""

    def __init__(self, document: CatalogDocument, source: str | Path = "<catalog>") -> None:
        self.source = str(source)
        self._vendors: dict[str, Vendor] = {}
        for index, vendor in enumerate(document.vendors):
            if vendor.vendor in self._vendors:
                raise ConfigError(source, f"vendors[{index}].vendor", f"duplicate vendor {vendor.vendor!r}")
            self._vendors[vendor.vendor] = vendor
        self._models: dict[str, AcceleratorModel] = {}
        self._names: dict[str, str] = {}
        self._device_names: dict[str, list[tuple[float, str]]] = {}
        for index, entry in enumerate(document.models):
            if entry.model in self._models:
                raise ConfigError(source, f"models[{index}].model", f"duplicate model {entry.model!r}")
            if entry.vendor not in self._vendors:
                raise ConfigError(
                    source, f"models[{index}].vendor", f"unknown vendor {entry.vendor!r}", allowed=sorted(self._vendors)
                )
            self._models[entry.model] = entry
            for printed in entry.device_names:
                self._device_names.setdefault(normalise_name(printed.name), []).append(
                    (printed.memory_gib, entry.model)
                )
            for name in (entry.model, *entry.aliases):
                key = normalise_name(name)
                owner = self._names.get(key)
                if owner is not None and owner != entry.model:
                    raise ConfigError(source, f"models[{index}].aliases", f"{name!r} already names model {owner!r}")
                self._names[key] = entry.model
        if document.reference not in self._models:
            raise ConfigError(
                source, "reference", f"unknown model {document.reference!r}", allowed=sorted(self._models)
            )
        self.reference = document.reference

    def __getitem__(self, model: str) -> AcceleratorModel:
        try:
            return self._models[model]
        except KeyError:
            raise KeyError(f"unknown accelerator model {model!r}") from None

    def __contains__(self, model: object) -> bool:
        return isinstance(model, str) and model in self._models

    def __iter__(self) -> Iterator[AcceleratorModel]:
        return iter(self._models.values())

    def __len__(self) -> int:
        return len(self._models)

    @property
    def names(self) -> list[str]:
        return list(self._models)

    def vendor(self, vendor: str) -> Vendor:
        """The runtime facts of a vendor: ``catalog.vendor("huawei").ray_resource == "NPU"``."""
        try:
            return self._vendors[vendor]
        except KeyError:
            raise KeyError(f"unknown vendor {vendor!r}; known: {', '.join(sorted(self._vendors))}") from None

    @property
    def vendors(self) -> list[Vendor]:
        return list(self._vendors.values())

    def lookup(self, name: str) -> AcceleratorModel | None:
        """The model a name or alias refers to, or ``None``."""
        model = self._names.get(normalise_name(name))
        return self._models[model] if model is not None else None

    def lookup_device(self, name: str, memory_mib: float | None) -> AcceleratorModel | None:
        """The model of a device as a vendor tool prints it: ``name`` plus the memory the device reports.

        A name listed under some model's ``device_names`` is ambiguous by itself and resolves only when the memory
        matches exactly one of its entries (within :data:`DEVICE_MEMORY_TOLERANCE`); otherwise it is unknown, never
        the nearest neighbour. Other names resolve like :meth:`lookup`::

            >>> catalog = load_catalog()
            >>> catalog.lookup_device("Ascend910", 65536).model, catalog.lookup_device("Ascend910", None)
            ('Ascend910C', None)
            >>> catalog.lookup_device("NVIDIA A100-SXM4-80GB", None).model
            'A100'
        """
        entries = self._device_names.get(normalise_name(name))
        if entries is None:
            return self.lookup(name)
        if memory_mib is None or memory_mib <= 0:
            return None
        gib = memory_mib / 1024
        matches = {model for size, model in entries if abs(gib - size) <= DEVICE_MEMORY_TOLERANCE * size}
        return self._models[matches.pop()] if len(matches) == 1 else None

    def resolve(self, name: str, *, source: str | Path = "<input>", field: str = "model") -> AcceleratorModel:
        """Like :meth:`lookup` but raises a :class:`ConfigError` that lists the known models."""
        found = self.lookup(name)
        if found is None:
            raise ConfigError(source, field, f"unknown accelerator model {name!r}", allowed=self.names)
        return found


def parse_catalog(data: object, source: str | Path = "<catalog>") -> Catalog:
    """Validate a catalog document already parsed from YAML/JSON."""
    document = validate_model(CatalogDocument, data, source)
    return Catalog(document, source)


def load_catalog(path: str | Path | None = None) -> Catalog:
    """Load and validate a catalog file (default ``seeds/accelerators.yaml``); cached per path."""
    return _load_catalog_cached(str(Path(path) if path is not None else DEFAULT_CATALOG_PATH))


@cache
def _load_catalog_cached(path: str) -> Catalog:
    return parse_catalog(load_yaml_mapping(path), path)
