"""The database tables (SQLModel) of the API (``api/``) and of the scheduler service's store (``api/service_store.py``).

The layout is the contract of ``api/README.md`` ("Tables"). Times are float epoch seconds (UTC); JSON columns
hold plain JSON values (``JSONB`` on PostgreSQL). Every change to the schema goes through a new Alembic
migration in ``api/migrations/versions``; a test compares the migrated schema with this module.

Job rows move through the states of :class:`~scheduler.spec.JobState` with optimistic concurrency: every UPDATE
of a job is ``WHERE id = :id AND version = :version`` and bumps ``version`` (:func:`api.db.transition` does exactly
that), so two writers never both move one job::

    >>> new_job_id(1_700_000_000.0, "0123abcd")
    'j18bcfe568000123abcd'
"""

from __future__ import annotations

import random
from typing import Any, cast

from sqlalchemy import JSON, BigInteger, Column, ForeignKey, Index, Integer, MetaData, String, Table, UniqueConstraint
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

from api.enums import NodeSource, NodeStatus
from scheduler.spec import JobState

# Stable constraint names make migrations reproducible on every database.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: JSON everywhere, JSONB on PostgreSQL (indexable, compact).
JSONValue = JSON().with_variant(JSONB(), "postgresql")


# Job ids need uniqueness, not secrecy: a PRNG seeded once from the OS (os.urandom per id costs a syscall, and
# syscalls are slow in sandboxed containers).
_RANDOM = random.Random()


def new_job_id(now: float, random_hex: str | None = None) -> str:
    """``j`` + 11 hex digits of the millisecond timestamp + 8 random hex: sorts in submission order."""
    return f"j{int(now * 1000):011x}{random_hex or f'{_RANDOM.getrandbits(32):08x}'}"


# ------------------------------------------------------------------------------------------------------ jobs


class JobRow(SQLModel, table=True):
    """A submitted job: its spec, where it is in its life, where it runs and why it waits.

    Indexes lead with ``tenant`` and with ``state`` (composites, so every insert maintains as few as possible).
    """

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("tenant", "idempotency_key"),
        Index("ix_jobs_state_priority_submitted_at", "state", "priority", "submitted_at"),
        Index("ix_jobs_tenant_state", "tenant", "state"),
        Index("ix_jobs_tenant_id", "tenant", "id"),  # a tenant's jobs newest first (cursor pagination)
    )

    id: str = Field(primary_key=True)
    tenant: str  # indexed by (tenant, id), (tenant, state) and (tenant, idempotency_key)
    user: str
    queue: str
    name: str
    kind: str
    state: str = JobState.PENDING.value  # indexed by (state, priority, submitted_at)
    version: int = 0
    priority: int = 100
    spec: dict[str, Any] = Field(sa_type=JSONValue)
    submitted_at: float
    updated_at: float
    started_at: float | None = None
    finished_at: float | None = None
    attempt: int = 0
    placement: dict[str, Any] | None = Field(default=None, sa_type=JSONValue)
    reasons: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSONValue)
    estimated_start: float | None = None
    estimated_finish: float | None = None
    message: str = ""
    exit_code: int | None = None
    last_checkpoint_at: float | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None


class JobEventRow(SQLModel, table=True):
    """Something that happened to a job (submitted, started, preempted, requeued, cancelled ...)."""

    __tablename__ = "job_events"

    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(sa_column=Column(String, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False, index=True))
    at: float
    kind: str
    message: str = ""
    data: dict[str, Any] = Field(default_factory=dict, sa_type=JSONValue)


class JobLogRow(SQLModel, table=True):
    """A chunk of one worker's log; ``offset`` is the byte offset (UTF-8) of the chunk in that worker's log."""

    __tablename__ = "job_logs"

    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(sa_column=Column(String, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False, index=True))
    attempt: int = 0
    rank: int = 0
    offset: int = 0
    text: str = ""


# ----------------------------------------------------------------------------------------------- inventory


class NodeRow(SQLModel, table=True):
    """A node: registered by its agent (``source=agent``) or loaded from a cluster file (``source=file``)."""

    __tablename__ = "nodes"

    id: str = Field(primary_key=True)
    hostname: str = ""
    model: str
    vendor: str = ""
    pool: str
    site: str = "default"
    region: str = "default"
    tier: str = "cloud"
    island: str = ""
    switch: str = ""
    devices: int = 0
    cpu_milli: int = 0
    memory_mib: int = 0
    labels: dict[str, str] = Field(default_factory=dict, sa_type=JSONValue)
    state: str = NodeStatus.READY.value
    source: str = NodeSource.AGENT.value
    registered_at: float
    last_heartbeat: float | None = None
    agent_version: str | None = None
    last_seq: int | None = None
    #: An agent's node is up until its lease ends (``last_heartbeat`` + the lease the API granted with it);
    #: indexed so the scheduler finds the leases that lapsed since it last looked without reading every node.
    lease_expires_at: float | None = Field(default=None, index=True)
    #: What the agent reported at registration about each vendor it tried (``agents.protocol.ShimStatus``:
    #: vendor, state, reason, tool and driver versions, command); ``[]`` for a node from a file or Kubernetes.
    shims: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSONValue)


class InventorySourceRow(SQLModel, table=True):
    """The last publish of an inventory source (``file``, ``kubernetes``): whether its nodes are current, and what
    it could not use. A stale source's nodes are its last known ones; ``reason`` says why it cannot be read."""

    __tablename__ = "inventory_sources"

    source: str = Field(primary_key=True)
    stale: bool = False
    reason: str = ""
    #: The last publish, and the last one that changed a node.
    updated_at: float
    changed_at: float
    #: How often its publisher writes (None: once, at bootstrap): a publish overdue by 3 of these is stale too.
    every_s: float | None = None
    nodes: int = 0
    schedulable: int = 0
    #: Nodes it knows but could not map (``[{"name", "reason"}]``), and per node why it takes no work or what
    #: its source reports wrong with it (``{node: [reason, ...]}``).
    left_out: list[dict[str, str]] = Field(default_factory=list, sa_type=JSONValue)
    reasons: dict[str, list[str]] = Field(default_factory=dict, sa_type=JSONValue)


class DeviceRow(SQLModel, table=True):
    """One accelerator of a node, with its latest health and telemetry sample."""

    __tablename__ = "devices"

    node_id: str = Field(
        sa_column=Column(String, ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True, nullable=False)
    )
    #: The device's place on the node as the scheduler numbers it (0 .. devices - 1): the agent's index, except
    #: on a node where those repeat (MIG devices carry their GPU's; two vendors both count from 0): its rank.
    index: int = Field(primary_key=True)
    uuid: str
    model: str | None = None
    memory_mib: float | None = None
    #: Whether work may be placed on it: false only when its agent reports it ``unhealthy``.
    healthy: bool = True
    #: Why it is not healthy, for ``unhealthy`` and ``unknown`` alike ("npu-smi timed out after 5.0 s").
    health_reason: str = ""
    telemetry: dict[str, Any] = Field(default_factory=dict, sa_type=JSONValue)
    updated_at: float
    #: ``healthy`` / ``unhealthy`` / ``unknown`` as last reported (``unknown`` until the first report).
    health: str = "unknown"
    #: What discovery reported (``agents.protocol.DeviceInfo``): the names the vendor tool printed, whether the
    #: catalog knew one of them, notes (why the model is unknown ...), and for a MIG device its GPU and profile.
    vendor: str = ""
    name: str = ""
    other_names: list[str] = Field(default_factory=list, sa_type=JSONValue)
    model_known: bool | None = None
    notes: list[str] = Field(default_factory=list, sa_type=JSONValue)
    parent_uuid: str | None = None
    fraction: float | None = None
    profile: str | None = None


class DeviceHealthEventRow(SQLModel, table=True):
    """A change of a device's health as its agent reported it (the history; ``devices`` has the latest)."""

    __tablename__ = "device_health_events"
    __table_args__ = (Index("ix_device_health_events_node_id_at", "node_id", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    node_id: str = Field(sa_column=Column(String, ForeignKey("nodes.id", ondelete="CASCADE"), nullable=False))
    index: int
    uuid: str
    at: float
    healthy: bool
    reason: str = ""


# ------------------------------------------------------------------------------------------------ changes


class ChangeRow(SQLModel, table=True):
    """The change feed (an outbox filled by database triggers, ``api/migrations/versions/0002_change_feed.py``).

    One row per change that a cache or the scheduler must follow: ``entity`` is ``job`` (inserted, or its state or
    version moved), ``node`` (inserted, deleted, its description or a device's health changed, or its lease came
    back after lapsing), ``policy``, ``token`` or ``user``; ``key`` is the id. A lease renewal, a reason or an
    estimated start writes none. Readers keep ``seq`` high-water marks (``api.service_store.ChangeFeed``).
    """

    __tablename__ = "changes"

    seq: int | None = Field(
        default=None, sa_column=Column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True)
    )
    entity: str
    key: str
    at: float = Field(index=True)


# -------------------------------------------------------------------------------------------------- ledger


class LedgerRow(SQLModel, table=True):
    """One :class:`scheduler.metering.LedgerEntry` (start or stop of a job's run)."""

    __tablename__ = "ledger"

    id: int | None = Field(default=None, primary_key=True)
    kind: str
    job_id: str = Field(index=True)
    tenant: str = Field(index=True)
    queue: str
    user: str
    model: str
    pool: str
    devices: float
    at: float = Field(index=True)
    seconds: float = 0.0
    ncu_hours: float = 0.0
    energy_kwh: float | None = None
    energy_estimated: bool = True
    tier: str = "standard"
    price_per_ncu_hour: float = 0.0
    charge: float = 0.0
    domestic: bool = False
    cause: str | None = None


# ------------------------------------------------------------------------------------------- policy, users


class PolicyVersionRow(SQLModel, table=True):
    """A whole :class:`scheduler.tenancy.PolicyDocument`; the highest id is in force."""

    __tablename__ = "policy_versions"

    id: int | None = Field(default=None, primary_key=True)
    document: dict[str, Any] = Field(sa_type=JSONValue)
    created_at: float
    author: str = ""


class UserRow(SQLModel, table=True):
    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("tenant", "name"),)

    id: str = Field(primary_key=True)
    tenant: str | None = Field(default=None, index=True)
    name: str
    role: str
    created_at: float
    disabled: bool = False


class ApiTokenRow(SQLModel, table=True):
    """A bearer token ``zs_<id>_<secret>``; only the SHA-256 of the secret is stored."""

    __tablename__ = "api_tokens"

    id: str = Field(primary_key=True)
    secret_hash: str
    user_id: str | None = Field(
        default=None, sa_column=Column(String, ForeignKey("users.id", ondelete="CASCADE"), nullable=True, index=True)
    )
    node_id: str | None = None
    role: str
    tenant: str | None = Field(default=None, index=True)
    name: str = ""
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None
    last_used_at: float | None = None


class LeaderLockRow(SQLModel, table=True):
    """Leader election for the scheduler service; ``term`` is a fencing token bumped on each takeover."""

    __tablename__ = "leader_lock"

    name: str = Field(primary_key=True)
    holder: str
    expires_at: float
    term: int = 0


# ------------------------------------------------------------------------------------------------ serving


class ServiceRow(SQLModel, table=True):
    """A served inference service (``/v1/services``): its spec at ``revision``, bumped by every change of it.

    Its replicas are jobs (``service_replicas`` links them); the serving controller writes ``desired`` and
    ``message``; a deleted service is ``deleting`` until its replicas are gone, then its row goes.
    """

    __tablename__ = "services"
    __table_args__ = (UniqueConstraint("tenant", "name"),)

    id: str = Field(primary_key=True)
    tenant: str
    name: str
    user: str
    queue: str
    spec: dict[str, Any] = Field(sa_type=JSONValue)
    revision: int = 1
    state: str = "active"
    desired: int | None = None
    message: str = ""
    created_at: float
    updated_at: float


class ServiceReplicaRow(SQLModel, table=True):
    """One replica of a service: its job, and what the controller learned (URL, health, drain).

    A replica whose job ended keeps its row (``ended_at``): the service's bill adds up its replicas' ledger
    entries, also after the service itself is gone (so ``service_id`` is no foreign key).
    """

    __tablename__ = "service_replicas"

    job_id: str = Field(
        sa_column=Column(String, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True, nullable=False)
    )
    service_id: str = Field(index=True)
    revision: int
    url: str | None = None
    url_attempt: int | None = None
    ready_at: float | None = None
    failures: int = 0
    draining_since: float | None = None
    created_at: float
    ended_at: float | None = None
    message: str = ""


class ServiceKeyRow(SQLModel, table=True):
    """A key for calling one service, ``zsk_<id>_<secret>``; only the SHA-256 of the secret is stored."""

    __tablename__ = "service_keys"

    id: str = Field(primary_key=True)
    service_id: str = Field(
        sa_column=Column(String, ForeignKey("services.id", ondelete="CASCADE"), nullable=False, index=True)
    )
    tenant: str
    name: str = ""
    secret_hash: str
    created_at: float
    created_by: str = ""
    revoked_at: float | None = None


class ServiceLoadRow(SQLModel, table=True):
    """The newest load report of one router about one service (what the autoscaler and the drains read)."""

    __tablename__ = "service_load"

    router: str = Field(primary_key=True)
    service_id: str = Field(
        sa_column=Column(String, ForeignKey("services.id", ondelete="CASCADE"), primary_key=True, nullable=False)
    )
    at: float = Field(index=True)
    window_s: float = 1.0
    requests: int = 0
    errors: int = 0
    rejected: int = 0
    ongoing: float = 0.0
    queued: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    tokens: int = 0
    replicas: dict[str, Any] = Field(default_factory=dict, sa_type=JSONValue)


class ServiceUsageRow(SQLModel, table=True):
    """Requests, errors and tokens of a service per hour (kept after the service is deleted: the bill needs it)."""

    __tablename__ = "service_usage"
    __table_args__ = (Index("ix_service_usage_tenant_hour", "tenant", "hour"),)

    service_id: str = Field(primary_key=True)
    hour: float = Field(primary_key=True)
    tenant: str
    name: str
    requests: int = 0
    errors: int = 0
    rejected: int = 0
    tokens: int = 0


def table(model: type[SQLModel]) -> Table:
    """The Core :class:`~sqlalchemy.Table` of a table model (for bulk statements on hot paths)."""
    return cast(Table, model.__table__)  # type: ignore[attr-defined]


METADATA: MetaData = SQLModel.metadata
JOBS = table(JobRow)
JOB_EVENTS = table(JobEventRow)
JOB_LOGS = table(JobLogRow)
NODES = table(NodeRow)
INVENTORY_SOURCES = table(InventorySourceRow)
DEVICES = table(DeviceRow)
LEDGER = table(LedgerRow)
POLICY_VERSIONS = table(PolicyVersionRow)
USERS = table(UserRow)
API_TOKENS = table(ApiTokenRow)
LEADER_LOCK = table(LeaderLockRow)
DEVICE_HEALTH_EVENTS = table(DeviceHealthEventRow)
CHANGES = table(ChangeRow)
SERVICES = table(ServiceRow)
SERVICE_REPLICAS = table(ServiceReplicaRow)
SERVICE_KEYS = table(ServiceKeyRow)
SERVICE_LOAD = table(ServiceLoadRow)
SERVICE_USAGE = table(ServiceUsageRow)
#: The tables this module defines (the migration must create exactly these).
TABLES = (
    JOBS,
    JOB_EVENTS,
    JOB_LOGS,
    NODES,
    INVENTORY_SOURCES,
    DEVICES,
    LEDGER,
    POLICY_VERSIONS,
    USERS,
    API_TOKENS,
    LEADER_LOCK,
    DEVICE_HEALTH_EVENTS,
    CHANGES,
    SERVICES,
    SERVICE_REPLICAS,
    SERVICE_KEYS,
    SERVICE_LOAD,
    SERVICE_USAGE,
)
TABLE_NAMES = frozenset(t.name for t in TABLES)
