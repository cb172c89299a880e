"""Small typed objects the policy core speaks: nodes, jobs, placements, decisions and reasons.

They are pydantic models so that files, the REST API and the simulator validate input with the very objects the
core uses. A training gang and an inference service are both a :class:`Job`::

    >>> from scheduler.model import Job
    >>> gang = Job(id="llama-7b", tenant="acme", kind="training", workers=4, devices_per_worker=8,
    ...            job_class="llm-pretrain", models=("H100", "Ascend910B"))
    >>> gang.total_device_milli
    32000
    >>> svc = Job(id="chat", tenant="acme", kind="inference", workers=3, devices_per_worker=0.5,
    ...           job_class="llm-inference")
    >>> svc.device_milli
    500

Devices are counted in milli-units (1/1000 of a device): a worker asks for either whole devices (a multiple of
1000) or a fraction of one device (1-999), never a fraction spread over several devices.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from functools import cached_property
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from scheduler.catalog import Tier
from scheduler.throughput import JobClass

MILLI = 1000


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------------------------------- cluster


class Node(_Frozen):
    """A machine with accelerators of one model, in one site, placed in the network topology.

    ``island`` names the fast-interconnect domain (NVLink/HCCS) the node's devices belong to; ``switch`` names
    its network leaf. Both default to the node itself, i.e. no sharing with other nodes.
    """

    id: str = Field(min_length=1, max_length=200)
    model: str = Field(description="accelerator model id from the catalog")
    devices: int = Field(ge=0, le=64)
    cpu_milli: int = Field(ge=0)
    memory_mib: int = Field(ge=0)
    site: str = "default"
    region: str = "default"
    tier: Tier = Tier.CLOUD
    island: str = ""
    switch: str = ""
    labels: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _default_domains(cls, data: Any) -> Any:
        # A node that names no island or switch shares neither with any other node.
        if isinstance(data, dict) and data.get("id"):
            data = dict(data)
            data["island"] = data.get("island") or data["id"]
            data["switch"] = data.get("switch") or data["id"]
        return data

    @property
    def pool(self) -> str:
        return pool_id(self.site, self.model)


def pool_id(site: str, model: str) -> str:
    """A pool is all devices of one model in one site: ``pool_id('bj1', 'H100') == 'bj1/H100'``."""
    return f"{site}/{model}"


class DeviceHealth(StrEnum):
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


# ------------------------------------------------------------------------------------------------------ jobs


class JobKind(StrEnum):
    TRAINING = "training"
    INFERENCE = "inference"


class PriorityClass(IntEnum):
    """Higher value wins. Preemptibility is a separate flag on the job, not implied by the class."""

    BEST_EFFORT = 0
    TRAINING = 100
    PRODUCTION_INFERENCE = 200
    SYSTEM = 300


class DomesticPreference(StrEnum):
    REQUIRED = "required"
    PREFERRED = "preferred"
    ANY = "any"


class TopologyLevel(IntEnum):
    """How tightly a gang's workers must sit together; lower is tighter."""

    NODE = 0
    ISLAND = 1
    SWITCH = 2
    POOL = 3


def topology_by_name(value: Any) -> Any:
    """Accept ``"island"`` for :attr:`TopologyLevel.ISLAND` in files and API bodies (validator helper)."""
    if isinstance(value, str):
        try:
            return TopologyLevel[value.upper()]
        except KeyError:
            allowed = ", ".join(level.name.lower() for level in TopologyLevel)
            raise ValueError(f"unknown topology level {value!r} (allowed: {allowed})") from None
    return value


def priority_by_name(value: Any) -> Any:
    """Accept ``"production-inference"`` for :attr:`PriorityClass.PRODUCTION_INFERENCE` (validator helper)."""
    if isinstance(value, str) and not value.isdigit():
        try:
            return PriorityClass[value.upper().replace("-", "_")]
        except KeyError:
            allowed = ", ".join(p.name.lower().replace("_", "-") for p in PriorityClass)
            raise ValueError(f"unknown priority class {value!r} (allowed: {allowed})") from None
    return value


class Job(_Frozen):
    """A training gang (``workers`` × ``devices_per_worker``) or an inference service (replicas × devices).

    ``models`` lists acceptable accelerator models; empty means any model that can run ``job_class``.
    ``runtime_s`` is the expected runtime on the reference accelerator (A100), used for finish-time estimates.
    """

    id: str = Field(min_length=1, max_length=200)
    tenant: str = Field(default="default", min_length=1)
    queue: str = Field(default="default", min_length=1)
    user: str = Field(default="default", min_length=1)
    kind: JobKind = JobKind.TRAINING
    job_class: JobClass = JobClass.GENERIC
    workers: int = Field(default=1, ge=1, le=4096)
    devices_per_worker: float = Field(default=1, ge=0, le=64)
    cpu_milli_per_worker: int = Field(default=0, ge=0)
    memory_mib_per_worker: int = Field(default=0, ge=0)
    models: tuple[str, ...] = ()
    domestic: DomesticPreference = DomesticPreference.ANY
    priority: PriorityClass = PriorityClass.TRAINING
    preemptible: bool = True
    submit_time: float = Field(default=0.0, ge=0)
    runtime_s: float | None = Field(default=None, gt=0, description="expected runtime on the reference model")
    topology_required: TopologyLevel = TopologyLevel.POOL
    topology_preferred: TopologyLevel = TopologyLevel.NODE
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("devices_per_worker")
    @classmethod
    def _whole_or_fraction(cls, value: float) -> float:
        milli = round(value * MILLI)
        if abs(value * MILLI - milli) > 1e-6:
            raise ValueError(f"devices_per_worker must be a multiple of 0.001, got {value}")
        if milli > MILLI and milli % MILLI:
            raise ValueError(
                f"devices_per_worker {value}: a fraction is only allowed below one device; "
                "ask for a whole number of devices or for less than 1"
            )
        return value

    _topology_by_name = field_validator("topology_required", "topology_preferred", mode="before")(
        lambda value: topology_by_name(value)
    )
    _priority_by_name = field_validator("priority", mode="before")(lambda value: priority_by_name(value))

    def model_post_init(self, context: Any, /) -> None:
        # A job is validated once and decided on at every step until it starts: derive its sizes now.
        for name in _DERIVED:
            getattr(self, name)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Job:
        """A copy with ``update`` applied; derived sizes are recomputed, never carried over stale."""
        copied = super().model_copy(update=update, deep=deep)
        for name in _DERIVED:
            copied.__dict__.pop(name, None)
        copied.model_post_init(None)
        return copied

    # Derived sizes are read on every placement decision: cached_property stores them in the instance dict
    # once, which is far cheaper than recomputing or going through pydantic's private-attribute lookup.
    @cached_property
    def device_milli(self) -> int:
        """Milli-devices per worker (1000 = one whole device)."""
        return round(self.devices_per_worker * MILLI)

    @cached_property
    def whole_devices(self) -> int:
        """Whole devices per worker, 0 for a fractional worker."""
        return self.device_milli // MILLI if self.device_milli >= MILLI else 0

    @cached_property
    def is_fractional(self) -> bool:
        return 0 < self.device_milli < MILLI

    @cached_property
    def placement_shape(self) -> tuple[object, ...]:
        """Everything placement looks at: jobs of equal shape place (or fail to) alike."""
        return (
            self.models,
            self.job_class,
            self.domestic,
            self.workers,
            self.device_milli,
            self.cpu_milli_per_worker,
            self.memory_mib_per_worker,
            self.topology_required,
        )

    @cached_property
    def fifo_key(self) -> tuple[int, float, str]:
        """The FIFO order: higher priority first, then earlier submission, then id."""
        return (-self.priority, self.submit_time, self.id)

    @cached_property
    def total_device_milli(self) -> int:
        return self.device_milli * self.workers

    @property
    def total_devices(self) -> float:
        return self.total_device_milli / MILLI


# ------------------------------------------------------------------------------------------------------ ledger


class ServiceTier(StrEnum):
    BASIC = "basic"
    STANDARD = "standard"
    PREMIUM = "premium"


class LedgerKind(StrEnum):
    START = "start"
    STOP = "stop"


class StopCause(StrEnum):
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PREEMPTED = "preempted"
    NODE_LOST = "node-lost"


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One line of the ledger. Amounts are zero on ``start`` entries."""

    kind: LedgerKind
    job_id: str
    tenant: str
    queue: str
    user: str
    model: str
    pool: str
    devices: float
    at: float
    seconds: float = 0.0
    ncu_hours: float = 0.0
    energy_kwh: float | None = None
    energy_estimated: bool = True
    tier: ServiceTier = ServiceTier.STANDARD
    price_per_ncu_hour: float = 0.0
    charge: float = 0.0
    domestic: bool = False
    cause: StopCause | None = None


# ------------------------------------------------------------------------------------------------ decisions


#: Cached properties of :class:`Job` (they live in the instance dict, which ``model_copy`` would copy).
_DERIVED = (
    "device_milli",
    "whole_devices",
    "is_fractional",
    "total_device_milli",
    "placement_shape",
    "fifo_key",
)


class ReasonCode(StrEnum):
    """Why a job is not (yet) running. Stable strings: the API and CLI show them to tenants."""

    NO_CAPACITY = "no-capacity"
    MODEL_MISMATCH = "model-mismatch"
    TOPOLOGY = "topology"
    FRAGMENTATION = "fragmentation"
    QUOTA = "quota"
    FLAVOR = "flavor"
    RESERVATION = "reservation"
    PRIORITY = "priority"
    UNSCHEDULABLE = "unschedulable"


# Decisions are produced on the hot path (every rejection of every pending job), so they are plain frozen
# dataclasses: the engine builds them from values it has already validated. Pydantic serialises them as-is.


@dataclass(frozen=True, slots=True)
class Reason:
    """One structured reason; its human message is rendered from ``template`` and ``detail`` on demand.

    >>> Reason(ReasonCode.NO_CAPACITY, "{pool} has {free_devices:g} devices free", "bj1/H100",
    ...        {"free_devices": 0.0}).message
    'bj1/H100 has 0 devices free'
    """

    code: ReasonCode
    template: str
    pool: str | None = None
    detail: dict[str, float | int | str] = field(default_factory=dict)

    @property
    def message(self) -> str:
        # Rendering is deferred: most reasons are superseded at the next step before anyone reads them.
        return self.template.format(pool=self.pool, **self.detail)

    def as_dict(self) -> dict[str, object]:
        return {
            "code": self.code.value,
            "message": self.message,
            "pool": self.pool,
            "detail": dict(self.detail),
        }


@dataclass(frozen=True, slots=True)
class WorkerPlacement:
    """Where one worker runs: a node and, per device index, the milli-units it takes there."""

    node: str
    devices: tuple[int, ...]
    #: milli-units taken on each listed device
    milli: int
    cpu_milli: int = 0
    memory_mib: int = 0


@dataclass(frozen=True, slots=True)
class Placement:
    """All workers of a job on one model; ``topology`` is the tightest level that holds the whole gang."""

    job_id: str
    model: str
    pool: str
    workers: tuple[WorkerPlacement, ...]
    topology: TopologyLevel

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(w.node for w in self.workers))


class DecisionKind(StrEnum):
    START = "start"
    PREEMPT = "preempt"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class Decision:
    """What the core decided for one job at one step.

    ``start`` carries a placement; ``reject`` carries reasons (the job stays pending); ``preempt`` names a
    running job to stop and, in ``reasons``, why.
    """

    kind: DecisionKind
    job_id: str
    placement: Placement | None = None
    reasons: tuple[Reason, ...] = ()
    estimated_finish: float | None = None
    #: Ledger entries the decision produced: a start entry, or the stop entry of a preempted job.
    ledger: tuple[LedgerEntry, ...] = ()
