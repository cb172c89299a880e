"""Serving records in memory, beside a :class:`~scheduler.live.memory_store.MemoryStore` whose jobs the replicas are.

It implements both ports (:class:`~scheduler.live.serving.store.ServingStore` for the controller,
:class:`~scheduler.live.serving.store.RouteSource` for routers) with the rules of the SQL store: replica jobs
are submitted and cancelled through the job records, writes that act on replicas are fenced, a key is stored
hashed. A lock makes it safe to serve routes from a router's thread while the scheduler cycles::

    >>> from scheduler.live.memory_store import MemoryStore
    >>> from scheduler.spec import JobSpec
    >>> serving = MemoryServing(MemoryStore())
    >>> svc = serving.deploy("acme", "chat", JobSpec(name="chat", kind="inference", entrypoint="serve",
    ...                      serving={"max_replicas": 3}), user="ann", now=0.0)
    >>> svc.revision, serving.create_key(svc.id, now=0.0)[1].startswith("zsk_")
    (1, True)
"""

from __future__ import annotations

import itertools
import secrets
import threading
from collections.abc import Sequence
from dataclasses import replace

from scheduler.live.memory_store import MemoryStore
from scheduler.live.serving.store import (
    KEY_PREFIX,
    LoadReport,
    ReplicaRecord,
    Route,
    ServiceKey,
    ServiceRecord,
    ServiceState,
    build_routes,
    hash_secret,
)
from scheduler.live.store import Fence
from scheduler.serving import replica_spec
from scheduler.spec import TERMINAL_STATES, JobSpec, JobState


class MemoryServing:
    """Services, replicas, load reports and keys in dicts; replica jobs in ``jobs``."""

    def __init__(self, jobs: MemoryStore, failure_threshold: int = 3) -> None:
        self.jobs = jobs
        self.failure_threshold = failure_threshold
        self._lock = threading.RLock()
        self._services: dict[str, ServiceRecord] = {}
        self._replicas: dict[str, ReplicaRecord] = {}
        self._reports: dict[tuple[str, str], LoadReport] = {}
        self._keys: dict[str, ServiceKey] = {}
        #: service id -> (requests, errors, tokens) added up from every report.
        self.usage: dict[str, tuple[int, int, int]] = {}
        self._ids = itertools.count(1)

    # ------------------------------------------------------------------------------------------ what the API does

    def deploy(
        self, tenant: str, name: str, spec: JobSpec, *, user: str, now: float, queue: str | None = None
    ) -> ServiceRecord:
        """Create a service, or give an existing one a new revision when its spec changed."""
        with self._lock:
            found = next((s for s in self._services.values() if s.tenant == tenant and s.name == name), None)
            if found is not None:
                if found.state is not ServiceState.ACTIVE:
                    raise ValueError(f"service {name!r} is being deleted; wait until it is gone")
                if found.spec == spec:
                    return found
                updated = replace(found, spec=spec, revision=found.revision + 1, updated_at=now)
                self._services[found.id] = updated
                return updated
            record = ServiceRecord(
                id=f"s{next(self._ids):04d}",
                tenant=tenant,
                name=name,
                user=user,
                queue=queue or spec.queue or tenant,
                spec=spec,
                revision=1,
                created_at=now,
                updated_at=now,
            )
            self._services[record.id] = record
            return record

    def delete(self, service_id: str, now: float) -> None:
        with self._lock:
            self._services[service_id] = replace(
                self._services[service_id], state=ServiceState.DELETING, updated_at=now
            )

    def create_key(self, service_id: str, now: float, name: str = "") -> tuple[ServiceKey, str]:
        """A new key and its plain text (shown once; only its hash is kept)."""
        with self._lock:
            service = self._services[service_id]
            key_id = f"k{secrets.token_hex(6)}"
            secret = secrets.token_urlsafe(24)
            key = ServiceKey(key_id, service_id, service.tenant, service.name, hash_secret(secret), name, now)
            self._keys[key_id] = key
            return key, f"{KEY_PREFIX}{key_id}_{secret}"

    def revoke_key(self, key_id: str, now: float) -> None:
        with self._lock:
            self._keys[key_id] = replace(self._keys[key_id], revoked_at=now)

    def service(self, service_id: str) -> ServiceRecord:
        with self._lock:
            return self._services[service_id]

    # ------------------------------------------------------------------------------------------ ServingStore

    def services(self) -> list[ServiceRecord]:
        with self._lock:
            return list(self._services.values())

    def replicas(self) -> list[ReplicaRecord]:
        with self._lock:
            out = []
            for replica in self._replicas.values():
                stored = self.jobs.stored.get(replica.job_id)
                if stored is None:
                    continue
                job = stored.record
                node = job.placement.workers[0].node if job.placement is not None and job.placement.workers else None
                out.append(
                    replace(
                        replica,
                        job_state=job.state,
                        attempt=job.attempt,
                        started_at=job.started_at,
                        node=node,
                        reasons=tuple(r.message for r in stored.reasons),
                        job_message=stored.message,
                    )
                )
            return out

    def add_replica(self, fence: Fence, service: ServiceRecord, now: float) -> str:
        with self._lock:
            self.jobs._fence(fence)
            job_id = f"{service.id}-{next(self._ids):05d}"
            spec = replica_spec(service.spec, service.id, service.revision)
            self.jobs.submit(job_id, spec, tenant=service.tenant, user=service.user, now=now, queue=service.queue)
            self._replicas[job_id] = ReplicaRecord(
                job_id, service.id, service.revision, JobState.PENDING, 0, created_at=now
            )
            return job_id

    def stop_replica(self, fence: Fence, job_id: str, now: float, message: str) -> None:
        with self._lock:
            self.jobs._fence(fence)
            stored = self.jobs.stored.get(job_id)
            if stored is not None and stored.record.state not in TERMINAL_STATES:
                self.jobs.cancel(job_id, now)
            replica = self._replicas.get(job_id)
            if replica is not None:
                self._replicas[job_id] = replace(replica, draining_since=replica.draining_since or now, message=message)

    def set_endpoint(self, job_id: str, url: str, attempt: int) -> None:
        self._update(job_id, url=url, url_attempt=attempt, ready_at=None, failures=0)

    def set_health(self, job_id: str, ready_at: float | None, failures: int) -> None:
        self._update(job_id, ready_at=ready_at, failures=failures)

    def set_draining(self, job_id: str, since: float) -> None:
        self._update(job_id, draining_since=since)

    def drop_replica(self, job_id: str) -> None:
        with self._lock:
            self._replicas.pop(job_id, None)

    def loads(self, since: float) -> list[LoadReport]:
        with self._lock:
            return [r for r in self._reports.values() if r.at >= since]

    def set_status(self, service_id: str, desired: int, message: str, now: float) -> None:
        with self._lock:
            found = self._services.get(service_id)
            if found is not None:
                self._services[service_id] = replace(found, desired=desired, message=message)

    def drop_service(self, fence: Fence, service_id: str) -> None:
        with self._lock:
            self.jobs._fence(fence)
            self._services.pop(service_id, None)
            for key_id in [k for k, key in self._keys.items() if key.service_id == service_id]:
                del self._keys[key_id]

    # ------------------------------------------------------------------------------------------ RouteSource

    def routes(self) -> dict[tuple[str, str], Route]:
        with self._lock:
            return build_routes(list(self._services.values()), self.replicas(), self.failure_threshold)

    def key(self, key_id: str) -> ServiceKey | None:
        with self._lock:
            return self._keys.get(key_id)

    def report(self, reports: Sequence[LoadReport]) -> None:
        with self._lock:
            for report in reports:
                self._reports[(report.router, report.service_id)] = report
                requests, errors, tokens = self.usage.get(report.service_id, (0, 0, 0))
                self.usage[report.service_id] = (
                    requests + report.requests,
                    errors + report.errors,
                    tokens + report.tokens,
                )

    # ------------------------------------------------------------------------------------------ helpers

    def _update(self, job_id: str, **changes: object) -> None:
        with self._lock:
            replica = self._replicas.get(job_id)
            if replica is not None:
                self._replicas[job_id] = replace(replica, **changes)  # type: ignore[arg-type]
