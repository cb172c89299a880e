"""Served inference in SQL: :class:`SqlServing` implements both serving ports on the API's tables.

* :class:`~scheduler.live.serving.store.ServingStore` for the serving controller (a step of the scheduler
  cycle): a replica is added by inserting a pending ``jobs`` row (the change feed then brings it to the
  scheduler like any submission) and its ``service_replicas`` row in one transaction, fenced by the scheduler's
  lease; it is stopped the way ``POST /v1/jobs/{id}/cancel`` cancels a job.
* :class:`~scheduler.live.serving.store.RouteSource` for routers: routes, keys, load reports (one row per
  router and service, replaced each time) and usage per hour (added up).
* what ``/v1/services`` does: deploy (a new revision when the spec changed), delete, keys.

A database that cannot be reached is a :class:`~scheduler.live.store.StoreUnavailable`::

    serving = SqlServing(make_engine(url))                 # doctest: +SKIP
    ServeController(serving)                               # doctest: +SKIP
"""

from __future__ import annotations

import functools
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import Connection, Engine, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, OperationalError

from api.db import is_sqlite, write_engine
from api.service_store import MESSAGE_CHARS, SqlServiceStore
from api.tables import (
    JOB_EVENTS,
    JOBS,
    SERVICE_KEYS,
    SERVICE_LOAD,
    SERVICE_REPLICAS,
    SERVICE_USAGE,
    SERVICES,
    new_job_id,
)
from scheduler.live.serving.store import (
    KEY_PREFIX,
    LoadReport,
    ReplicaLoad,
    ReplicaRecord,
    Route,
    ServiceKey,
    ServiceRecord,
    ServiceState,
    build_routes,
    hash_secret,
)
from scheduler.live.store import Fence, StoreUnavailable
from scheduler.serving import replica_spec
from scheduler.spec import HOLDING_STATES, TERMINAL_STATES, JobSpec, JobState

P = ParamSpec("P")
R = TypeVar("R")


def _store_errors(method: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except OperationalError as exc:
            raise StoreUnavailable(str(exc).splitlines()[0]) from exc

    return wrapper


class ServiceConflict(RuntimeError):
    """A change the records refuse as asked (a service being deleted cannot get a new revision)."""


@dataclass(frozen=True)
class Deployed:
    record: ServiceRecord
    #: created: a new service; updated: a new revision; unchanged: the same spec again.
    outcome: str


@dataclass(frozen=True)
class UsageRow:
    service_id: str
    tenant: str
    name: str
    hour: float
    requests: int
    errors: int
    rejected: int
    tokens: int


class SqlServing:
    """Services, replicas, keys, load reports and usage on the API's database (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine, failure_threshold: int = 3) -> None:
        self.engine = engine
        self._writer = write_engine(engine)
        self.failure_threshold = failure_threshold
        self._specs: dict[tuple[str, int], JobSpec] = {}

    # ------------------------------------------------------------------------------------------ the API's side

    @_store_errors
    def deploy(
        self, tenant: str, name: str, spec: JobSpec, *, user: str, queue: str, now: float | None = None
    ) -> Deployed:
        """Create the service, or give it a new revision when ``spec`` differs from the one in force."""
        now = time.time() if now is None else now
        document = spec.model_dump(mode="json")
        with self._writer.begin() as conn:
            row = conn.execute(select(SERVICES).where(SERVICES.c.tenant == tenant, SERVICES.c.name == name)).first()
            if row is None:
                service_id = f"s{int(now * 1000):011x}{secrets.token_hex(3)}"
                values = {
                    "id": service_id,
                    "tenant": tenant,
                    "name": name,
                    "user": user,
                    "queue": queue,
                    "spec": document,
                    "revision": 1,
                    "state": ServiceState.ACTIVE.value,
                    "desired": None,
                    "message": "deployed; waiting for the scheduler",
                    "created_at": now,
                    "updated_at": now,
                }
                try:
                    with conn.begin_nested():
                        conn.execute(insert(SERVICES).values(values))
                except IntegrityError:
                    raise ServiceConflict(f"service {name!r} was deployed meanwhile; send it again") from None
                return Deployed(self._service(values), "created")
            if row.state != ServiceState.ACTIVE.value:
                raise ServiceConflict(f"service {name!r} is being deleted; deploy it again once it is gone")
            if row.spec == document:
                return Deployed(self._service(row._mapping), "unchanged")
            conn.execute(
                update(SERVICES)
                .where(SERVICES.c.id == row.id)
                .values(spec=document, revision=row.revision + 1, user=user, queue=queue, updated_at=now)
            )
            updated = dict(row._mapping) | {"spec": document, "revision": row.revision + 1, "user": user}
            return Deployed(self._service(updated | {"queue": queue, "updated_at": now}), "updated")

    @_store_errors
    def find(self, tenant: str | None, name: str | None = None) -> list[ServiceRecord]:
        """Services of a tenant (every tenant's with None), or the one named."""
        query = select(SERVICES).order_by(SERVICES.c.tenant, SERVICES.c.name)
        if tenant is not None:
            query = query.where(SERVICES.c.tenant == tenant)
        if name is not None:
            query = query.where(SERVICES.c.name == name)
        with self.engine.connect() as conn:
            return [self._service(r._mapping) for r in conn.execute(query)]

    @_store_errors
    def delete(self, service_id: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._writer.begin() as conn:
            conn.execute(
                update(SERVICES)
                .where(SERVICES.c.id == service_id)
                .values(state=ServiceState.DELETING.value, updated_at=now, message="deleting: draining its replicas")
            )

    @_store_errors
    def create_key(
        self, service: ServiceRecord, name: str, created_by: str, now: float | None = None
    ) -> tuple[ServiceKey, str]:
        """A new key of ``service`` and its plain text, which is not stored (shown once)."""
        now = time.time() if now is None else now
        key_id = f"k{secrets.token_hex(8)}"
        secret = secrets.token_urlsafe(32)
        key = ServiceKey(key_id, service.id, service.tenant, service.name, hash_secret(secret), name, now)
        with self._writer.begin() as conn:
            conn.execute(
                insert(SERVICE_KEYS).values(
                    id=key_id,
                    service_id=service.id,
                    tenant=service.tenant,
                    name=name,
                    secret_hash=key.secret_hash,
                    created_at=now,
                    created_by=created_by,
                    revoked_at=None,
                )
            )
        return key, f"{KEY_PREFIX}{key_id}_{secret}"

    @_store_errors
    def keys(self, service: ServiceRecord) -> list[ServiceKey]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(SERVICE_KEYS).where(SERVICE_KEYS.c.service_id == service.id).order_by(SERVICE_KEYS.c.created_at)
            )
            return [_key(r._mapping, service.name) for r in rows]

    @_store_errors
    def revoke_key(self, service: ServiceRecord, key_id: str, now: float | None = None) -> bool:
        """Revoke one of the service's keys; False when it has no such key."""
        now = time.time() if now is None else now
        with self._writer.begin() as conn:
            found = conn.execute(
                update(SERVICE_KEYS)
                .where(SERVICE_KEYS.c.id == key_id, SERVICE_KEYS.c.service_id == service.id)
                .values(revoked_at=func.coalesce(SERVICE_KEYS.c.revoked_at, now))
            )
            return found.rowcount == 1

    @_store_errors
    def usage(self, tenant: str | None, service_id: str | None, since: float, until: float) -> list[UsageRow]:
        query = select(SERVICE_USAGE).where(SERVICE_USAGE.c.hour >= since - 3600, SERVICE_USAGE.c.hour < until)
        if tenant is not None:
            query = query.where(SERVICE_USAGE.c.tenant == tenant)
        if service_id is not None:
            query = query.where(SERVICE_USAGE.c.service_id == service_id)
        with self.engine.connect() as conn:
            return [UsageRow(**dict(r._mapping)) for r in conn.execute(query.order_by(SERVICE_USAGE.c.hour))]

    @_store_errors
    def loads_of(self, service_id: str, since: float) -> list[LoadReport]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(SERVICE_LOAD).where(SERVICE_LOAD.c.service_id == service_id, SERVICE_LOAD.c.at >= since)
            )
            return [_load(r._mapping) for r in rows]

    # ------------------------------------------------------------------------------------------ ServingStore

    @_store_errors
    def services(self) -> list[ServiceRecord]:
        return self.find(None)

    @_store_errors
    def replicas(self) -> list[ReplicaRecord]:
        query = (
            select(
                SERVICE_REPLICAS,
                JOBS.c.state,
                JOBS.c.attempt,
                JOBS.c.started_at,
                JOBS.c.placement,
                JOBS.c.reasons,
                JOBS.c.message.label("job_message"),
            )
            .join(JOBS, JOBS.c.id == SERVICE_REPLICAS.c.job_id)
            .where(SERVICE_REPLICAS.c.ended_at.is_(None))
        )
        with self.engine.connect() as conn:
            return [_replica(r._mapping) for r in conn.execute(query)]

    @_store_errors
    def add_replica(self, fence: Fence, service: ServiceRecord, now: float) -> str:
        spec = replica_spec(service.spec, service.id, service.revision)
        job_id = new_job_id(now)
        with self._writer.begin() as conn:
            SqlServiceStore._fence(conn, fence)
            conn.execute(
                insert(JOBS).values(
                    id=job_id,
                    tenant=service.tenant,
                    user=service.user,
                    queue=service.queue,
                    name=spec.name,
                    kind=spec.kind.value,
                    state=JobState.PENDING.value,
                    version=0,
                    priority=int(spec.priority),
                    spec=spec.model_dump(mode="json"),
                    submitted_at=now,
                    updated_at=now,
                    attempt=0,
                    reasons=[],
                    message="",
                )
            )
            conn.execute(
                insert(JOB_EVENTS).values(
                    job_id=job_id,
                    at=now,
                    kind="submitted",
                    message=f"replica of service {service.tenant}/{service.name} (revision {service.revision})",
                    data={"service": service.id, "revision": service.revision},
                )
            )
            conn.execute(
                insert(SERVICE_REPLICAS).values(
                    job_id=job_id,
                    service_id=service.id,
                    revision=service.revision,
                    failures=0,
                    created_at=now,
                    message="",
                )
            )
        return job_id

    @_store_errors
    def stop_replica(self, fence: Fence, job_id: str, now: float, message: str) -> None:
        with self._writer.begin() as conn:
            SqlServiceStore._fence(conn, fence)
            row = conn.execute(select(JOBS.c.state, JOBS.c.version).where(JOBS.c.id == job_id)).first()
            if row is not None and JobState(row.state) not in TERMINAL_STATES:
                state = JobState(row.state)
                if state is JobState.PENDING:
                    changes: dict[str, Any] = {"state": JobState.CANCELLED.value, "finished_at": now, "reasons": []}
                    kind = "cancelled"
                elif state in HOLDING_STATES and state is not JobState.CANCELLING:
                    changes = {"state": JobState.CANCELLING.value}
                    kind = "cancel-requested"
                else:
                    changes, kind = {}, ""
                if changes:
                    text = f"stopped by the serving controller: {message}"[:MESSAGE_CHARS]
                    conn.execute(
                        update(JOBS)
                        .where(JOBS.c.id == job_id, JOBS.c.version == row.version)
                        .values(**changes, version=row.version + 1, updated_at=now, message=text)
                    )
                    conn.execute(
                        insert(JOB_EVENTS).values(
                            job_id=job_id, at=now, kind=kind, message=text, data={"from": state.value, "by": "serving"}
                        )
                    )
            conn.execute(
                update(SERVICE_REPLICAS)
                .where(SERVICE_REPLICAS.c.job_id == job_id)
                .values(
                    draining_since=func.coalesce(SERVICE_REPLICAS.c.draining_since, now),
                    message=message[:MESSAGE_CHARS],
                )
            )

    def set_endpoint(self, job_id: str, url: str, attempt: int) -> None:
        self._set(job_id, url=url, url_attempt=attempt, ready_at=None, failures=0)

    def set_health(self, job_id: str, ready_at: float | None, failures: int) -> None:
        self._set(job_id, ready_at=ready_at, failures=failures)

    def set_draining(self, job_id: str, since: float) -> None:
        self._set(job_id, draining_since=since)

    @_store_errors
    def drop_replica(self, job_id: str) -> None:
        # The row stays, ended: the bill of the service reads its replicas' ledger entries through it.
        with self._writer.begin() as conn:
            conn.execute(
                update(SERVICE_REPLICAS)
                .where(SERVICE_REPLICAS.c.job_id == job_id, SERVICE_REPLICAS.c.ended_at.is_(None))
                .values(ended_at=time.time())
            )

    @_store_errors
    def loads(self, since: float) -> list[LoadReport]:
        with self.engine.connect() as conn:
            return [_load(r._mapping) for r in conn.execute(select(SERVICE_LOAD).where(SERVICE_LOAD.c.at >= since))]

    @_store_errors
    def set_status(self, service_id: str, desired: int, message: str, now: float) -> None:
        with self._writer.begin() as conn:
            conn.execute(
                update(SERVICES)
                .where(SERVICES.c.id == service_id)
                .values(desired=desired, message=message[:MESSAGE_CHARS])
            )

    @_store_errors
    def drop_service(self, fence: Fence, service_id: str) -> None:
        with self._writer.begin() as conn:
            SqlServiceStore._fence(conn, fence)
            left = conn.execute(
                select(func.count())
                .select_from(SERVICE_REPLICAS)
                .where(SERVICE_REPLICAS.c.service_id == service_id, SERVICE_REPLICAS.c.ended_at.is_(None))
            ).scalar()
            if not left:
                conn.execute(
                    delete(SERVICES).where(SERVICES.c.id == service_id, SERVICES.c.state == ServiceState.DELETING.value)
                )

    # ------------------------------------------------------------------------------------------ RouteSource

    @_store_errors
    def routes(self) -> dict[tuple[str, str], Route]:
        return build_routes(self.services(), self.replicas(), self.failure_threshold)

    @_store_errors
    def key(self, key_id: str) -> ServiceKey | None:
        query = (
            select(SERVICE_KEYS, SERVICES.c.name.label("service_name"))
            .join(SERVICES, SERVICES.c.id == SERVICE_KEYS.c.service_id)
            .where(SERVICE_KEYS.c.id == key_id)
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return _key(row._mapping, row.service_name) if row is not None else None

    @_store_errors
    def report(self, reports: Sequence[LoadReport]) -> None:
        if not reports:
            return
        with self._writer.begin() as conn:
            known = {
                r.id: (r.tenant, r.name)
                for r in conn.execute(
                    select(SERVICES.c.id, SERVICES.c.tenant, SERVICES.c.name).where(
                        SERVICES.c.id.in_({r.service_id for r in reports})
                    )
                )
            }
            for report in reports:
                if report.service_id not in known:
                    continue  # deleted meanwhile
                values = _load_values(report)
                stmt = _insert(conn, SERVICE_LOAD).values(values)
                conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["router", "service_id"],
                        set_={k: stmt.excluded[k] for k in values if k not in ("router", "service_id")},
                    )
                )
                if report.requests or report.errors or report.rejected or report.tokens:
                    tenant, name = known[report.service_id]
                    hour = report.at // 3600 * 3600
                    add = {
                        "requests": report.requests,
                        "errors": report.errors,
                        "rejected": report.rejected,
                        "tokens": report.tokens,
                    }
                    usage = _insert(conn, SERVICE_USAGE).values(
                        service_id=report.service_id, hour=hour, tenant=tenant, name=name, **add
                    )
                    conn.execute(
                        usage.on_conflict_do_update(
                            index_elements=["service_id", "hour"],
                            set_={k: getattr(SERVICE_USAGE.c, k) + usage.excluded[k] for k in add},
                        )
                    )

    # ------------------------------------------------------------------------------------------ helpers

    @_store_errors
    def _set(self, job_id: str, **values: Any) -> None:
        with self._writer.begin() as conn:
            conn.execute(update(SERVICE_REPLICAS).where(SERVICE_REPLICAS.c.job_id == job_id).values(**values))

    def _service(self, row: Mapping[Any, Any]) -> ServiceRecord:
        key = (row["id"], row["revision"])
        spec = self._specs.get(key)
        if spec is None:
            spec = self._specs[key] = JobSpec.model_validate(row["spec"])
            if len(self._specs) > 10_000:
                self._specs.clear()
        return ServiceRecord(
            id=row["id"],
            tenant=row["tenant"],
            name=row["name"],
            user=row["user"],
            queue=row["queue"],
            spec=spec,
            revision=row["revision"],
            state=ServiceState(row["state"]),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            desired=row["desired"],
            message=row["message"],
        )


def _insert(conn: Connection, table: Any) -> Any:
    """The dialect's INSERT, with ON CONFLICT ... DO UPDATE (SQLite and PostgreSQL alike)."""
    return sqlite.insert(table) if is_sqlite(conn) else postgresql.insert(table)


def _replica(row: Mapping[Any, Any]) -> ReplicaRecord:
    placement = row["placement"] or {}
    workers = placement.get("workers") or []
    return ReplicaRecord(
        job_id=row["job_id"],
        service_id=row["service_id"],
        revision=row["revision"],
        job_state=JobState(row["state"]),
        attempt=row["attempt"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        node=workers[0]["node"] if workers else None,
        reasons=tuple(str(r.get("message", "")) for r in row["reasons"] or ()),
        url=row["url"],
        url_attempt=row["url_attempt"],
        ready_at=row["ready_at"],
        failures=row["failures"],
        draining_since=row["draining_since"],
        message=row["message"],
        job_message=row.get("job_message") or "",
    )


def _key(row: Mapping[Any, Any], service_name: str) -> ServiceKey:
    return ServiceKey(
        id=row["id"],
        service_id=row["service_id"],
        tenant=row["tenant"],
        service=service_name,
        secret_hash=row["secret_hash"],
        name=row["name"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
    )


def _load(row: Mapping[Any, Any]) -> LoadReport:
    return LoadReport(
        router=row["router"],
        service_id=row["service_id"],
        at=row["at"],
        window_s=row["window_s"],
        requests=row["requests"],
        errors=row["errors"],
        rejected=row["rejected"],
        ongoing=row["ongoing"],
        queued=row["queued"],
        p50_ms=row["p50_ms"],
        p99_ms=row["p99_ms"],
        tokens=row["tokens"],
        replicas={
            job_id: ReplicaLoad(int(v.get("ongoing", 0)), int(v.get("failures", 0)))
            for job_id, v in (row["replicas"] or {}).items()
        },
    )


def _load_values(report: LoadReport) -> dict[str, Any]:
    return {
        "router": report.router,
        "service_id": report.service_id,
        "at": report.at,
        "window_s": report.window_s,
        "requests": report.requests,
        "errors": report.errors,
        "rejected": report.rejected,
        "ongoing": report.ongoing,
        "queued": report.queued,
        "p50_ms": report.p50_ms,
        "p99_ms": report.p99_ms,
        "tokens": report.tokens,
        "replicas": {job_id: {"ongoing": r.ongoing, "failures": r.failures} for job_id, r in report.replicas.items()},
    }


def replica_ids(records: Iterable[ReplicaRecord], service_id: str) -> list[str]:
    return sorted(r.job_id for r in records if r.service_id == service_id)
