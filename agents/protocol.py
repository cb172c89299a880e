"""The wire contract between the node agent and the API. The API implements exactly these models.

All bodies are JSON; every request carries ``Authorization: Bearer <node token>`` (the token the operator issued
for this node). Times: the agent's wall clock is sent for information only; ordering and ages use the agent's
monotonic clock, converted to *ages in seconds at send time*, so a node whose clock is minutes off still reports
correctly (the API dates a sample as ``received_at - age_s``).

``POST /v1/agent/register``
    Body :class:`RegisterRequest` (node description, discovered devices, which vendors are present/absent).
    ``200`` :class:`RegisterResponse` (the node id the API will use, the heartbeat interval it wants).
    ``401``/``403`` bad token: the agent stops with an error (retrying cannot fix a token).
    ``422`` the API rejected the body: the agent stops with the API's message.
    ``5xx`` or no connection: retried with exponential backoff and jitter until it succeeds.

``POST /v1/agent/heartbeat``
    Body :class:`HeartbeatRequest`: the batches of samples buffered since the last acknowledged one (oldest first,
    at most ``max_batches_per_heartbeat``), ages computed at send time, and how many batches the agent dropped
    because its bounded buffer overflowed while the API was unreachable.
    ``200`` :class:`HeartbeatResponse` with ``acked_seq``: every batch with ``seq <= acked_seq`` is delivered and
    removed from the agent's buffer. ``reregister: true`` asks the agent to register again (API restarted and
    forgot the node); ``interval_s`` may change the heartbeat interval; ``work`` lists the device shares that
    jobs hold on this node (the agent hands it to its shims: emulated devices follow it).
    ``404`` unknown node: the agent registers again, keeping its buffer.
    ``401``/``403``: the agent stops (token revoked).
    ``422``: the batches are dropped (counted in ``rejected_batches_total``): resending cannot fix them.
    ``5xx`` or no connection: kept in the buffer and retried with backoff; sampling goes on meanwhile.
    ``429`` (the API is admitting a herd of agents): retried after ``Retry-After`` seconds plus jitter.

Heartbeats of changes (an API that answers ``telemetry_interval_s``; optional fields, so either side may be
older): the agent heartbeats every ``interval_s`` — the API lengthens it as the fleet grows and a node is down
once ``lease_s`` passes without one — and each heartbeat carries ``device_health`` only for the devices whose
health the API has not acknowledged yet, and at most one batch (the newest), only when a telemetry sample is due
(every ``telemetry_interval_s``), health changed or the work on the node did. Omitted devices keep their health.
The time series stay on the node, for Prometheus to scrape from the agent's exporter.

A node is unhealthy when the API misses N heartbeats or a heartbeat reports a device ``unhealthy`` (fatal XID,
uncorrectable ECC, remap failure, vendor alarm); that decision is the API's, the agent only reports.

    >>> from agents.protocol import HeartbeatResponse
    >>> HeartbeatResponse.model_validate({"acked_seq": 41}).reregister
    False
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

# ------------------------------------------------------------------------------------- device records
# What a shim reports about a device, normalised across vendors; the agent sends these records as they are.


class Health(StrEnum):
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    UNKNOWN = "unknown"


class ShimState(StrEnum):
    PRESENT = "present"
    ABSENT = "absent"
    ERROR = "error"


#: Every numeric metric a :class:`DeviceSample` can carry; ``fields_unavailable`` names only these.
METRIC_FIELDS: tuple[str, ...] = (
    "utilization_pct",
    "memory_used_mib",
    "memory_total_mib",
    "power_w",
    "power_limit_w",
    "energy_j",
    "temperature_c",
    "sm_clock_mhz",
    "pcie_tx_bytes_per_s",
    "pcie_rx_bytes_per_s",
    "ecc_uncorrectable_total",
    "ecc_correctable_total",
    "remapped_rows_uncorrectable",
    "remap_failure",
    "xid_events",
    "mig_enabled",
)

#: Metrics the NVIDIA shim reads on a slower cadence because NVML takes milliseconds for them (issue #7).
SLOW_FIELDS: frozenset[str] = frozenset(
    {
        "energy_j",
        "pcie_tx_bytes_per_s",
        "pcie_rx_bytes_per_s",
        "ecc_uncorrectable_total",
        "ecc_correctable_total",
        "remapped_rows_uncorrectable",
        "remap_failure",
        "power_limit_w",
        "mig_enabled",
    }
)


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ShimStatus(_Record):
    """Whether a vendor is present on this node, and if not, why (``"npu-smi not found on PATH"``)."""

    vendor: str
    state: ShimState
    reason: str = ""
    tool_version: str | None = None
    driver_version: str | None = Field(default=None, description="driver version the tool reports, per node")
    command: str | None = Field(default=None, description="the tool invocation the shim reads (e.g. 'cnmon')")


class DeviceInfo(_Record):
    """What discovery learns about one device; stable for the life of the agent."""

    vendor: str
    index: int = Field(ge=0, description="the vendor tool's device index on this node")
    uuid: str = Field(min_length=1, description="vendor UUID, or a stable '<vendor>-<bus id|index>' stand-in")
    name: str = Field(description="the product name exactly as the vendor tool printed it")
    other_names: list[str] = Field(
        default_factory=list, description="further names the tool printed for the part (npu-smi info -m chip name)"
    )
    model: str | None = Field(default=None, description="catalog model id; None when the catalog has no match")
    model_known: bool = False
    kind: str | None = Field(default=None, description="gpu | npu | mlu | xpu | dcu, from the catalog")
    memory_total_mib: float | None = Field(default=None, ge=0)
    bus_id: str | None = None
    interconnect: str | None = Field(default=None, description="fast fabric the vendor reports (nvlink, hccs ...)")
    peers: list[str] = Field(default_factory=list, description="uuids of devices on the same fast interconnect")
    mig_enabled: bool | None = None
    driver_version: str | None = None
    notes: list[str] = Field(default_factory=list)
    parent_uuid: str | None = Field(default=None, description="for a MIG instance: the uuid of its physical GPU")
    fraction: float | None = Field(
        default=None, gt=0, le=1, description="share of the parent device this one is (MIG: GPU slices / slices)"
    )
    profile: str | None = Field(default=None, description="partition profile as the vendor names it ('1g.10gb')")


def schedulable_devices(devices: Sequence[DeviceInfo]) -> list[DeviceInfo]:
    """The devices work can be placed on: a GPU in MIG mode is not one (its MIG devices, which carry its uuid as
    ``parent_uuid``, are), so it is left out whenever one of its MIG devices was found.

    >>> gpu = DeviceInfo(vendor="nvidia", index=0, uuid="GPU-0", name="A100", mig_enabled=True)
    >>> migs = [DeviceInfo(vendor="nvidia", index=0, uuid=f"MIG-{i}", name="A100 MIG 3g.40gb", parent_uuid="GPU-0")
    ...         for i in range(2)]
    >>> [d.uuid for d in schedulable_devices([gpu, *migs])]
    ['MIG-0', 'MIG-1']
    """
    parents = {d.parent_uuid for d in devices if d.parent_uuid is not None}
    return [d for d in devices if d.uuid not in parents]


class DeviceWork(_Record):
    """A share of one device that the center has given a job (the API tells the agent in heartbeat replies)."""

    job_id: str
    index: int = Field(ge=0, description="device index on the node, as discovered")
    share: float = Field(gt=0, le=1, description="share of the device's compute and memory (1 = the whole device)")


class DeviceSample(_Record):
    """One device's telemetry at one instant, normalised across vendors.

    ``sampled_monotonic_s`` is the agent's own monotonic clock; only differences of it are meaningful, which is
    what makes heartbeats tolerant of wall-clock skew (the agent sends ``now - sampled_monotonic_s`` as an age).
    ``slow_sampled_monotonic_s`` says when the slow fields (energy, PCIe, ECC, remapped rows) were last read.
    """

    vendor: str
    index: int = Field(ge=0)
    uuid: str
    model: str | None = None
    sampled_monotonic_s: float
    sampled_wall_time: float = Field(description="agent wall clock (Unix s) at sampling; informative only")
    slow_sampled_monotonic_s: float | None = None
    utilization_pct: float | None = Field(default=None, ge=0, le=100)
    memory_used_mib: float | None = Field(default=None, ge=0)
    memory_total_mib: float | None = Field(default=None, ge=0)
    power_w: float | None = Field(default=None, ge=0)
    power_limit_w: float | None = Field(default=None, ge=0)
    energy_j: float | None = Field(default=None, ge=0, description="cumulative since driver load")
    temperature_c: float | None = None
    sm_clock_mhz: float | None = Field(default=None, ge=0)
    pcie_tx_bytes_per_s: float | None = Field(default=None, ge=0)
    pcie_rx_bytes_per_s: float | None = Field(default=None, ge=0)
    ecc_uncorrectable_total: int | None = Field(default=None, ge=0)
    ecc_correctable_total: int | None = Field(default=None, ge=0)
    remapped_rows_uncorrectable: int | None = Field(default=None, ge=0)
    remap_failure: bool | None = None
    xid_events: list[int] = Field(default_factory=list, description="XIDs observed since the previous sample")
    mig_enabled: bool | None = None
    throttle_reasons: list[str] = Field(
        default_factory=list, description="why clocks are held down now (NVML clock event reasons), informative"
    )
    ecc_events: list[str] = Field(
        default_factory=list, description="ECC error events observed since the previous sample ('double-bit' ...)"
    )
    health: Health = Health.UNKNOWN
    health_reasons: list[str] = Field(default_factory=list)
    fields_unavailable: list[str] = Field(default_factory=list)

    def flag_unavailable(self, *fields: str) -> None:
        """Record metrics that could not be read (kept sorted and unique so records compare stably)."""
        for field in fields:
            if field not in METRIC_FIELDS:
                raise ValueError(f"{field!r} is not a metric field")
        self.fields_unavailable = sorted({*self.fields_unavailable, *fields})


# ------------------------------------------------------------------------------------------- messages

#: 2 (issue 18): replies may carry ``telemetry_interval_s`` and ``lease_s``, and heartbeats carry only changes.
#: The API speaks every version of :data:`SUPPORTED_PROTOCOLS` and answers each agent in its own (a version-1
#: agent, whose models forbid unknown fields, never sees the new ones); upgrade the API before the agents.
PROTOCOL_VERSION = 2
SUPPORTED_PROTOCOLS: tuple[int, ...] = (1, 2)
#: Reply fields an agent of protocol 1 does not know.
PROTOCOL_2_FIELDS: frozenset[str] = frozenset({"telemetry_interval_s", "lease_s"})
REGISTER_PATH = "/v1/agent/register"
HEARTBEAT_PATH = "/v1/agent/heartbeat"


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NodeDescriptor(_Wire):
    """The node as the scheduler core sees it (maps onto ``scheduler.model.Node``)."""

    node_id: str = Field(min_length=1, max_length=200)
    hostname: str
    model: str | None = Field(default=None, description="catalog model of the node's accelerators, if known")
    vendor: str | None = None
    devices: int = Field(ge=0, le=64)
    cpu_milli: int = Field(ge=0)
    memory_mib: int = Field(ge=0)
    site: str = "default"
    region: str = "default"
    tier: str = "cloud"
    island: str = ""
    switch: str = ""
    labels: dict[str, str] = Field(default_factory=dict)


class RegisterRequest(_Wire):
    protocol_version: int = PROTOCOL_VERSION
    agent_version: str
    node: NodeDescriptor
    devices: list[DeviceInfo]
    shims: list[ShimStatus]
    sent_wall_time: float


class RegisterResponse(_Wire):
    node_id: str
    heartbeat_interval_s: float | None = Field(default=None, gt=0)
    message: str = ""
    telemetry_interval_s: float | None = Field(
        default=None,
        gt=0,
        description="set by an API that wants heartbeats of changes only (issue 18): health that changed, and one "
        "telemetry sample at most this often (or when health or the work changed); None: send every batch",
    )
    lease_s: float | None = Field(
        default=None, gt=0, description="the node is down if the API hears nothing from it for this long"
    )


class TelemetryBatch(_Wire):
    """The samples of one agent tick. ``seq`` increases by one per tick for the life of the agent process."""

    seq: int = Field(ge=0)
    age_s: float = Field(ge=0, description="seconds between sampling and sending, on the agent's monotonic clock")
    sampled_wall_time: float = Field(description="agent wall clock at sampling; informative only")
    slow: bool = Field(description="whether this tick read the slow metrics")
    samples: list[DeviceSample]


class HeartbeatRequest(_Wire):
    protocol_version: int = PROTOCOL_VERSION
    node_id: str
    agent_uptime_s: float = Field(ge=0)
    sent_wall_time: float
    batches: list[TelemetryBatch]
    buffered_batches: int = Field(ge=0, description="batches still waiting in the agent after this one")
    dropped_batches_total: int = Field(ge=0, description="batches lost to buffer overflow since agent start")
    rejected_batches_total: int = Field(ge=0)
    device_health: dict[str, Health] = Field(default_factory=dict, description="uuid -> latest health")


class HeartbeatResponse(_Wire):
    acked_seq: int = Field(ge=-1, description="highest seq received; -1 when none")
    interval_s: float | None = Field(default=None, gt=0)
    reregister: bool = False
    telemetry_interval_s: float | None = Field(default=None, gt=0, description="as in RegisterResponse")
    lease_s: float | None = Field(default=None, gt=0, description="as in RegisterResponse")
    work: list[DeviceWork] | None = Field(
        default=None,
        description="every share of this node's devices that jobs hold, as of the API's last look (at most a "
        "second old); None when the API does not say. Emulated devices make their telemetry follow it.",
    )
