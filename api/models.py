"""Request and response bodies of the REST API (the contract in ``api/README.md``), as pydantic models: the one set
of wire models, used by the server (OpenAPI, response checks) and by the SDK (:mod:`api.client`) alike.

Requests are strict (unknown fields are errors). Responses are documented by these models and built as plain
dicts on the hot paths; the tests validate every response body against them. A client reads an answer with
``from_api``, which keeps fields it does not know (a newer server) and gives back exactly what the server sent
with ``to_dict``::

    >>> job = EtaOut.from_api({"job_id": "j1", "state": "pending", "estimated_start": 10.0,
    ...                        "estimated_finish": None, "computed_at": 9.0, "new_field": 1})
    >>> job.state, job.to_dict()["new_field"]
    (<JobState.PENDING: 'pending'>, 1)
"""

from __future__ import annotations

from typing import Any, Generic, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from api.enums import NodeSource, NodeStatus, Role
from scheduler.model import DomesticPreference, ServiceTier
from scheduler.spec import TERMINAL_STATES, JobSpec, JobState
from scheduler.tenancy import TenantType

T = TypeVar("T")
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Out(BaseModel):
    """An answer of the API. Fields a model does not declare are kept (a newer server stays readable)."""

    model_config = ConfigDict(extra="allow")
    _raw: dict[str, Any] | None = PrivateAttr(default=None)

    @classmethod
    def from_api(cls, data: Any) -> Self:
        """Read a body the server sent."""
        obj = cls.model_validate(data)
        if isinstance(data, dict):
            obj._raw = data
        return obj

    def to_dict(self) -> dict[str, Any]:
        """Exactly what the server answered (the API's keys), for ``-o json`` and scripts."""
        return dict(self._raw) if self._raw is not None else self.model_dump(mode="json")


class ProblemOut(_Out):
    """RFC 9457 problem details (``application/problem+json``); ``type`` is a stable URI per kind of error."""

    type: str
    title: str
    status: int
    detail: str = Field(description="what went wrong and what to do about it")
    instance: str
    errors: list[dict[str, Any]] | None = Field(default=None, description="validation errors: [{loc, msg, type}]")


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the problem documents a route may answer with."""
    described = {
        400: "the body is not JSON",
        401: "no token, or not a valid one",
        403: "the token's role may not do this",
        404: "not found (or not visible to you)",
        409: "conflict with the current state, or quota exceeded",
        413: "body over the size limit",
        422: "invalid request",
        429: "rate limited (see Retry-After)",
        503: "database unavailable (see Retry-After)",
    }
    return {
        status: {
            "model": ProblemOut,
            "description": described[status],
            "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/ProblemOut"}}},
        }
        for status in statuses
    }


#: What every authenticated route may answer besides its own success.
V1_PROBLEMS = problem_responses(400, 401, 403, 404, 409, 413, 422, 429, 503)


class Items(_Out, Generic[T]):
    items: list[T]


# ------------------------------------------------------------------------------------------------------ jobs


class WorkerOut(_Out):
    rank: int
    node: str
    devices: list[int]
    milli: int
    cpu_milli: int = 0
    memory_mib: int = 0


class PlacementOut(_Out):
    model: str
    pool: str
    topology: str
    workers: list[WorkerOut]


class ReasonOut(_Out):
    code: str
    message: str
    pool: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)


class JobOut(_Out):
    id: str
    name: str
    tenant: str
    user: str
    queue: str
    kind: str
    state: JobState
    priority: str = Field(description="priority class name, e.g. training")
    attempt: int
    spec: JobSpec
    submitted_at: float
    started_at: float | None
    finished_at: float | None
    updated_at: float
    placement: PlacementOut | None
    reasons: list[ReasonOut]
    estimated_start: float | None
    estimated_finish: float | None
    message: str
    exit_code: int | None

    @property
    def terminal(self) -> bool:
        """Nothing more will happen to the job."""
        return self.state in TERMINAL_STATES


class JobPage(_Out):
    items: list[JobOut]
    next_cursor: str | None = Field(description="pass as cursor= for the next (older) page; null at the end")


class EventOut(_Out):
    at: float
    kind: str
    message: str
    data: dict[str, Any]


class LogChunk(_Out):
    job_id: str
    attempt: int
    rank: int
    offset: int
    next_offset: int
    text: str
    complete: bool = Field(description="the job is finished and there is nothing more to read")


class WhyOut(_Out):
    job_id: str
    state: JobState
    reasons: list[ReasonOut]
    updated_at: float


class EtaOut(_Out):
    job_id: str
    state: JobState
    estimated_start: float | None
    estimated_finish: float | None
    computed_at: float | None
    start_earliest: float | None = Field(
        default=None, description="a pending job: the band its start is forecast in, from (scheduler.eta.EtaBand)"
    )
    start_latest: float | None = Field(default=None, description="a pending job: the band's end")


# ---------------------------------------------------------------------------------------------- queues


class QuotaOut(_Out):
    guarantee: float
    deserved: float | None
    limit: float | None
    borrowing_limit: float | None


class QueueOut(_Out):
    name: str
    tenant: str
    parent: str | None
    weight: float
    domestic: DomesticPreference | None
    quota: dict[str, QuotaOut]
    usage: dict[str, float] = Field(description="devices per model and NCU in use by the queue and its children")
    pending: int
    running: int
    policy_version: int

    def spec(self) -> dict[str, Any]:
        """The queue as a ``PUT /v1/queues/{name}`` body (``scheduler.tenancy.QueueSpec``), keeping what it sets."""
        body: dict[str, Any] = {
            "parent": self.parent,
            "tenant": self.tenant,  # a child's tenant is its parent's: repeating it is accepted
            "quota": {flavor: q.model_dump(exclude_none=True) for flavor, q in self.quota.items()},
            "weight": self.weight,
        }
        if self.domestic is not None:
            body["domestic"] = self.domestic.value
        return body


# --------------------------------------------------------------------------------------------- tenants


class TenantIn(_In):
    id: str = Field(pattern=NAME_PATTERN)
    type: TenantType = TenantType.ENTERPRISE
    tier: ServiceTier = ServiceTier.STANDARD
    weight: float = Field(default=1.0, gt=0, le=1e6)
    domestic: DomesticPreference = DomesticPreference.ANY
    max_active_jobs: int | None = Field(default=None, ge=0, le=10_000_000)


class TenantPatch(_In):
    type: TenantType | None = None
    tier: ServiceTier | None = None
    weight: float | None = Field(default=None, gt=0, le=1e6)
    domestic: DomesticPreference | None = None
    max_active_jobs: int | None = Field(default=None, ge=0, le=10_000_000)


class TenantOut(_Out):
    id: str
    type: TenantType
    tier: ServiceTier
    weight: float
    domestic: DomesticPreference
    max_active_jobs: int | None
    queues: list[str]


# ------------------------------------------------------------------------------------------ users, tokens


class UserIn(_In):
    name: str = Field(pattern=NAME_PATTERN)
    tenant: str | None = Field(default=None, description="default: the caller's tenant; null for center admins")
    role: Role = Role.TENANT_USER


class UserOut(_Out):
    id: str
    name: str
    tenant: str | None
    role: Role
    created_at: float
    disabled: bool


class TokenIn(_In):
    user: str | None = Field(default=None, description="user id; default: the caller's own user")
    expires_in_s: float | None = Field(default=None, gt=0, le=10 * 366 * 86400)
    name: str = Field(default="", max_length=200)


class NodeTokenIn(_In):
    node_id: str | None = Field(default=None, min_length=1, max_length=200, description="null: any node")
    name: str = Field(default="", max_length=200)
    expires_in_s: float | None = Field(default=None, gt=0, le=10 * 366 * 86400)


class TokenCreated(_Out):
    id: str
    token: str = Field(description="shown once: store it now")
    user: str | None
    tenant: str | None
    role: Role
    node_id: str | None = None
    name: str
    expires_at: float | None


class TokenOut(_Out):
    id: str
    user: str | None
    tenant: str | None
    role: Role
    node_id: str | None
    name: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    last_used_at: float | None


class WhoAmI(_Out):
    user: str | None
    tenant: str | None
    role: Role
    token_id: str


# ------------------------------------------------------------------------------------------------ usage


class UsageLine(_Out):
    ncu_hours: float
    device_hours: float
    charge: float


class UsageOut(_Out):
    tenant: str | None
    start: float
    end: float
    ncu_hours: float
    device_hours: float
    charge: float
    free_ncu_hours: float
    billable_charge: float
    currency: str
    energy_kwh: float
    domestic_share: float
    by_model: dict[str, UsageLine]
    by_queue: dict[str, UsageLine]


# ---------------------------------------------------------------------------------------------- nodes


class PoolOut(_Out):
    pool: str
    model: str
    vendor: str
    site: str
    nodes: int
    devices: int
    devices_free: int
    devices_healthy: int
    domestic: bool


class DeviceOut(_Out):
    index: int
    uuid: str
    model: str | None
    healthy: bool = Field(description="work may be placed on it (false only when its agent reports it unhealthy)")
    health: str | None = Field(default=None, description="healthy | unhealthy | unknown, as last reported")
    health_reason: str = Field(default="", description="why it is unhealthy or unknown")
    telemetry: dict[str, Any] | None
    updated_at: float | None = None
    # What discovery reported; only in GET /v1/nodes/{id} (None in the list).
    vendor: str | None = None
    name: str | None = Field(default=None, description="the product name as the vendor tool printed it")
    other_names: list[str] | None = Field(default=None, description="further names the tool printed for it")
    model_known: bool | None = Field(default=None, description="whether the catalog knew one of its names")
    notes: list[str] | None = None
    parent_uuid: str | None = Field(default=None, description="a MIG device's GPU")
    fraction: float | None = Field(default=None, description="share of its GPU (MIG: slices / slices of the GPU)")
    profile: str | None = Field(default=None, description="partition profile as the vendor names it ('1g.10gb')")


class ShimOut(_Out):
    """One vendor the node's agent tried at registration (``agents.protocol.ShimStatus``)."""

    vendor: str
    state: str = Field(description="present | absent | error")
    reason: str = ""
    tool_version: str | None = None
    driver_version: str | None = None
    command: str | None = None


class NodeOut(_Out):
    id: str
    hostname: str
    model: str
    vendor: str
    pool: str
    site: str
    region: str
    tier: str
    island: str
    switch: str
    device_count: int
    devices_healthy: int
    cpu_milli: int
    memory_mib: int
    labels: dict[str, str]
    state: NodeStatus
    source: NodeSource
    registered_at: float
    last_heartbeat: float | None
    agent_version: str | None
    last_seq: int | None
    devices: list[DeviceOut] = Field(description="per device; telemetry and discovery only in GET /v1/nodes/{id}")
    shims: list[ShimOut] | None = Field(
        default=None, description="the vendors its agent tried (only in GET /v1/nodes/{id}; [] without an agent)"
    )

    @property
    def size(self) -> int:
        """How many devices the node has."""
        return self.device_count


class LeftOutNode(_Out):
    name: str
    reason: str = Field(description="why the source could not use it (unknown vendor, malformed annotation...)")


class InventorySourceOut(_Out):
    """One source of nodes (``file``, ``kubernetes``) and whether what it published is current."""

    source: NodeSource
    stale: bool = Field(description="its nodes are the last known ones: the source cannot be read now")
    reason: str = Field(description="why it is stale (the source's last error), empty when current")
    updated_at: float = Field(description="its last publish")
    changed_at: float = Field(description="the last publish that changed a node")
    every_s: float | None = Field(description="how often it publishes (None: once, at bootstrap)")
    nodes: int
    schedulable: int
    left_out: list[LeftOutNode] = Field(description="nodes it knows but could not map, and why")
    reasons: dict[str, list[str]] = Field(description="per node: why it takes no work, or what its source reports")


class HealthOut(_Out):
    status: str


class ReadyOut(_Out):
    status: str
    database: str
    revision: str | None
    head: str | None


# ------------------------------------------------------------------------------------------------ services


class ServiceLoadOut(_Out):
    """What the routers saw of a service in the last seconds (added up over every router)."""

    ongoing: float = Field(description="requests in flight, queued included")
    queued: float
    requests_per_s: float
    errors_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    routers: int


class ServiceReplicaOut(_Out):
    job_id: str
    revision: int
    phase: str = Field(description="pending, starting, ready, draining or unhealthy")
    state: JobState = Field(description="the replica job's state")
    attempt: int
    node: str | None
    url: str | None
    ongoing: int = Field(description="requests in flight on it, by the routers' last reports")
    reasons: list[str] = Field(description="why it waits to be placed")


class ServiceOut(_Out):
    id: str
    tenant: str
    name: str
    user: str
    queue: str
    revision: int
    state: str = Field(description="active, or deleting (its replicas drain and stop)")
    desired: int | None = Field(description="replicas the autoscaler wants (None: not decided yet)")
    ready: int
    min_replicas: int
    max_replicas: int
    path: str = Field(description="the endpoint's path on the serving port")
    url: str | None = Field(description="the endpoint's URL, when the API knows the serving address")
    message: str
    created_at: float
    updated_at: float
    slo_p99_ms: float | None
    load: ServiceLoadOut | None
    replicas: list[ServiceReplicaOut]
    spec: dict[str, Any]


class ServiceDeployed(ServiceOut):
    outcome: str = Field(description="created, updated (a new revision) or unchanged")


class ServiceKeyIn(_In):
    name: str = Field(default="", max_length=200, description="who the key is for")


class ServiceKeyOut(_Out):
    id: str
    service: str
    name: str
    created_at: float
    revoked_at: float | None


class ServiceKeyCreated(ServiceKeyOut):
    key: str = Field(description="shown once: zsk_<id>_<secret>; store it now")


class ServiceUsageOut(_Out):
    service: str
    tenant: str
    start: float
    end: float
    requests: int
    errors: int
    rejected: int
    tokens: int
    device_hours: float = Field(description="replica runs that stopped in the period")
    running_device_hours: float = Field(description="replica runs still going, up to now (charged when they stop)")
    ncu_hours: float
    charge: float
    currency: str
    charge_per_1k_requests: float | None
