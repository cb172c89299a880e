"""The serving records: services, their replicas, the routers' load reports and the service keys, in plain types.

Two ports over the same records: :class:`ServingStore` is what the serving controller (a step of the scheduler's
cycle) reads and writes — it adds and stops replica *jobs*, which the scheduler then places and runs like any
other job — and :class:`RouteSource` is what a router reads (routes, keys) and writes (load reports). The SQL
implementation lives with the tables (``api/serving_store.py``); :class:`~scheduler.live.serving.memory.MemoryServing`
keeps them in dicts beside a :class:`~scheduler.live.memory_store.MemoryStore`.

A service key is ``zsk_<id>_<secret>``; only the SHA-256 of the secret is stored::

    >>> key_id, secret = split_key("zsk_k0123456789ab_s3cr3t")
    >>> key_id, secret
    ('k0123456789ab', 's3cr3t')
    >>> check_secret(secret, hash_secret("s3cr3t"))
    True
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from scheduler.live.store import Fence
from scheduler.spec import JobSpec, JobState, Serving

KEY_PREFIX = "zsk_"


class ServiceState(StrEnum):
    ACTIVE = "active"
    #: Deleted by its tenant: its replicas drain and stop, then the record goes.
    DELETING = "deleting"


@dataclass(frozen=True)
class ServiceRecord:
    """A deployed service: its spec at ``revision`` (bumped by every change of the spec)."""

    id: str
    tenant: str
    name: str
    user: str
    queue: str
    spec: JobSpec
    revision: int
    state: ServiceState = ServiceState.ACTIVE
    created_at: float = 0.0
    updated_at: float = 0.0
    #: What the controller last decided (None: not yet) and why.
    desired: int | None = None
    message: str = ""

    @property
    def serving(self) -> Serving:
        """The spec's serving block (a deployed spec always has one; a fixed count otherwise)."""
        if self.spec.serving is not None:
            return self.spec.serving
        return Serving(min_replicas=self.spec.workers, max_replicas=self.spec.workers)


@dataclass(frozen=True)
class ReplicaRecord:
    """One replica: its job as the jobs records hold it, and what the controller learned about it."""

    job_id: str
    service_id: str
    revision: int
    job_state: JobState
    attempt: int
    created_at: float
    started_at: float | None = None
    node: str | None = None
    #: The job's why-pending messages (quota, capacity ...), for the service status.
    reasons: tuple[str, ...] = ()
    url: str | None = None
    #: The attempt whose log announced ``url`` (a requeued replica announces a new one).
    url_attempt: int | None = None
    ready_at: float | None = None
    failures: int = 0
    draining_since: float | None = None
    message: str = ""
    #: The job's own last message (why it failed: an exit code and the last log lines).
    job_message: str = ""

    @property
    def endpoint(self) -> str | None:
        """The URL of the attempt running now (None until it announced one)."""
        return self.url if self.url_attempt == self.attempt else None


@dataclass(frozen=True)
class ReplicaLoad:
    ongoing: int = 0
    failures: int = 0


@dataclass(frozen=True)
class LoadReport:
    """What one router saw of one service in the ``window_s`` before ``at``."""

    router: str
    service_id: str
    at: float
    window_s: float = 1.0
    requests: int = 0
    errors: int = 0
    rejected: int = 0
    #: Requests in flight (queued included), averaged over the window; and queued alone, now.
    ongoing: float = 0.0
    queued: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    tokens: int = 0
    replicas: Mapping[str, ReplicaLoad] = field(default_factory=dict)


@dataclass(frozen=True)
class ServiceKey:
    """A key a tenant handed to its users to call one service."""

    id: str
    service_id: str
    tenant: str
    service: str
    secret_hash: str
    name: str = ""
    created_at: float = 0.0
    revoked_at: float | None = None


@dataclass(frozen=True)
class Endpoint:
    job_id: str
    url: str
    revision: int
    node: str | None = None


@dataclass(frozen=True)
class Route:
    """What a router needs to serve one service: its limits and the replicas it may send requests to."""

    service_id: str
    tenant: str
    name: str
    revision: int
    serving: Serving
    endpoints: tuple[Endpoint, ...] = ()
    #: Replicas placed or starting (not yet routable): a request may wait for them.
    starting: int = 0
    desired: int | None = None


class ServingStore(Protocol):
    """What the serving controller reads and writes. Writes that act on replicas are fenced by the scheduler's
    lease (only the leader scales)."""

    def services(self) -> list[ServiceRecord]:
        """Every service not yet gone (active and deleting)."""
        ...

    def replicas(self) -> list[ReplicaRecord]:
        """Every replica on the records, whatever its job's state."""
        ...

    def add_replica(self, fence: Fence, service: ServiceRecord, now: float) -> str:
        """Submit one replica job of the service's current revision (pending, for the core to place); its id."""
        ...

    def stop_replica(self, fence: Fence, job_id: str, now: float, message: str) -> None:
        """Cancel a replica's job (pending: at once; holding: the scheduler stops it). Idempotent."""
        ...

    def set_endpoint(self, job_id: str, url: str, attempt: int) -> None: ...

    def set_health(self, job_id: str, ready_at: float | None, failures: int) -> None: ...

    def set_draining(self, job_id: str, since: float) -> None: ...

    def drop_replica(self, job_id: str) -> None:
        """Forget a replica whose job has ended (the job's own record stays)."""
        ...

    def loads(self, since: float) -> list[LoadReport]:
        """The newest report of every router about every service, among those at or after ``since``."""
        ...

    def set_status(self, service_id: str, desired: int, message: str, now: float) -> None: ...

    def drop_service(self, fence: Fence, service_id: str) -> None:
        """Remove a deleted service whose replicas are all gone (and its keys)."""
        ...


class RouteSource(Protocol):
    """What a router reads and writes."""

    def routes(self) -> dict[tuple[str, str], Route]:
        """``(tenant, name)`` → route, of every active service."""
        ...

    def key(self, key_id: str) -> ServiceKey | None: ...

    def report(self, reports: Sequence[LoadReport]) -> None:
        """Store load reports (each replaces the router's previous one about that service) and add their
        requests, errors and tokens to the services' usage."""
        ...


# ------------------------------------------------------------------------------------------------ keys


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check_secret(secret: str, secret_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), secret_hash)


def split_key(key: str) -> tuple[str, str]:
    """``(key id, secret)`` of ``zsk_<id>_<secret>``; ValueError for anything else."""
    if not key.startswith(KEY_PREFIX):
        raise ValueError("not a service key")
    key_id, sep, secret = key[len(KEY_PREFIX) :].partition("_")
    if not sep or not key_id or not secret:
        raise ValueError("not a service key")
    return key_id, secret


def routable(replica: ReplicaRecord, failure_threshold: int) -> bool:
    """Whether routers may send requests to a replica: its attempt runs, announced its URL, answered its health
    route and has not failed it since, and is not being drained."""
    return (
        replica.job_state is JobState.RUNNING
        and replica.endpoint is not None
        and replica.ready_at is not None
        and replica.failures < failure_threshold
        and replica.draining_since is None
    )


def build_routes(
    services: Sequence[ServiceRecord], replicas: Sequence[ReplicaRecord], failure_threshold: int = 3
) -> dict[tuple[str, str], Route]:
    """Routes from records (both stores build them the same way)."""
    by_service: dict[str, list[ReplicaRecord]] = {}
    for replica in replicas:
        by_service.setdefault(replica.service_id, []).append(replica)
    routes: dict[tuple[str, str], Route] = {}
    for service in services:
        if service.state is not ServiceState.ACTIVE:
            continue
        mine = by_service.get(service.id, [])
        endpoints = tuple(
            Endpoint(r.job_id, r.endpoint or "", r.revision, r.node)
            for r in sorted(mine, key=lambda r: r.job_id)
            if routable(r, failure_threshold)
        )
        starting = sum(
            1
            for r in mine
            if r.draining_since is None
            and r.job_state in (JobState.PENDING, JobState.STARTING, JobState.RUNNING)
            and not routable(r, failure_threshold)
        )
        routes[(service.tenant, service.name)] = Route(
            service.id,
            service.tenant,
            service.name,
            service.revision,
            service.serving,
            endpoints,
            starting,
            service.desired,
        )
    return routes
