"""``/v1/services``: deploy served inference services, read their status and figures, manage their keys.

A service is deployed from a job spec with a ``serving`` block (``kind: inference``); deploying the same name
again with another spec rolls it to a new revision. Calls to a service do not come here: they go to the
serving port (``zhisuan services router``), under ``/v1/services/{tenant}/{name}/...``, with a *service key*
(``zsk_...``) that a tenant creates here for its own users — its API tokens are not needed, and a service key
opens nothing of this API. Set ``ZHISUAN_SERVING_URL`` to the serving port's public address and the answers
carry each service's full URL.

Scale to zero (``serving.min_replicas: 0``) is for free-tier (``basic``) tenants; a spec whose single replica
could never fit the cluster is refused at once, as ``POST /v1/jobs`` does.
"""

from __future__ import annotations

import os
import time
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from sqlalchemy import select

from api.deps import AppContext, CurrentPrincipal, Scope, TenantScope, context, require, respond
from api.enums import Role
from api.models import (
    V1_PROBLEMS,
    Items,
    ServiceDeployed,
    ServiceKeyCreated,
    ServiceKeyIn,
    ServiceKeyOut,
    ServiceOut,
    ServiceUsageOut,
)
from api.problems import Problem, from_pydantic, not_found
from api.routers.jobs import TENANT_ROLES, _queue_for
from api.serving_store import ServiceConflict, SqlServing
from api.tables import LEDGER, SERVICE_REPLICAS
from scheduler.live.serving.store import LoadReport, ReplicaRecord, ServiceKey, ServiceRecord
from scheduler.metering import service_usage
from scheduler.model import LedgerEntry, LedgerKind, ServiceTier, StopCause
from scheduler.spec import JobSpec, JobState

router = APIRouter(prefix="/v1/services", tags=["services"], responses=V1_PROBLEMS)

NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
ServiceName = Annotated[str, Path(pattern=NAME, max_length=100, description="the service's name")]
KeyId = Annotated[str, Path(pattern=r"^k[0-9a-f]{16}$", description="the key's id (k + 16 hex digits)")]
TenantParam = Annotated[str | None, Query(description="center admins: the tenant whose service this is")]
#: Load reports older than this are not the service's load any more.
LOAD_FRESH_S = 3.0
_SPEC_SCHEMA = {"$ref": "#/components/schemas/JobSpec"}


def serving_of(request: Request) -> SqlServing:
    """The app's serving records (made on first use)."""
    found: SqlServing | None = getattr(request.app.state, "serving", None)
    if found is None:
        found = request.app.state.serving = SqlServing(context(request).engine)
    return found


#: The serving port's public address, named in the answers (``zhisuan up`` sets it to its own router's).
SERVING_URL_ENV = "ZHISUAN_SERVING_URL"


def serving_url() -> str | None:
    url = os.environ.get(SERVING_URL_ENV, "").strip()
    return url.rstrip("/") or None


def _phase(replica: ReplicaRecord, failure_threshold: int) -> str:
    if replica.draining_since is not None:
        return "draining"
    if replica.job_state is JobState.PENDING:
        return "pending"
    if replica.failures >= failure_threshold:
        return "unhealthy"
    if replica.job_state is JobState.RUNNING and replica.ready_at is not None and replica.endpoint is not None:
        return "ready"
    return "starting"


def service_out(
    record: ServiceRecord, replicas: list[ReplicaRecord], loads: list[LoadReport], failure_threshold: int = 3
) -> dict[str, Any]:
    """The ``ServiceOut`` document of a service, its replicas and the routers' latest reports about it."""
    path = f"/v1/services/{record.tenant}/{record.name}"
    base = serving_url()
    ongoing: dict[str, int] = {}
    for report in loads:
        for job_id, load in report.replicas.items():
            ongoing[job_id] = ongoing.get(job_id, 0) + load.ongoing
    load_out = None
    if loads:
        p50 = [r.p50_ms for r in loads if r.p50_ms is not None]
        p99 = [r.p99_ms for r in loads if r.p99_ms is not None]
        load_out = {
            "ongoing": round(sum(r.ongoing for r in loads), 3),
            "queued": sum(r.queued for r in loads),
            "requests_per_s": round(sum(r.requests / max(r.window_s, 1e-6) for r in loads), 3),
            "errors_per_s": round(sum(r.errors / max(r.window_s, 1e-6) for r in loads), 3),
            "p50_ms": round(max(p50), 3) if p50 else None,
            "p99_ms": round(max(p99), 3) if p99 else None,
            "routers": len(loads),
        }
    rows = [
        {
            "job_id": r.job_id,
            "revision": r.revision,
            "phase": _phase(r, failure_threshold),
            "state": r.job_state.value,
            "attempt": r.attempt,
            "node": r.node,
            "url": r.endpoint,
            "ongoing": ongoing.get(r.job_id, 0),
            "reasons": list(r.reasons),
        }
        for r in sorted(replicas, key=lambda r: r.created_at)
    ]
    serving = record.serving
    return {
        "id": record.id,
        "tenant": record.tenant,
        "name": record.name,
        "user": record.user,
        "queue": record.queue,
        "revision": record.revision,
        "state": record.state.value,
        "desired": record.desired,
        "ready": sum(1 for r in rows if r["phase"] == "ready"),
        "min_replicas": serving.min_replicas,
        "max_replicas": serving.max_replicas,
        "path": path,
        "url": f"{base}{path}" if base else None,
        "message": record.message,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "slo_p99_ms": record.spec.slo.p99_latency_ms if record.spec.slo is not None else None,
        "load": load_out,
        "replicas": rows,
        "spec": record.spec.model_dump(mode="json"),
    }


def key_out(key: ServiceKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "service": key.service,
        "name": key.name,
        "created_at": key.created_at,
        "revoked_at": key.revoked_at,
    }


def _tenant_of(scope: TenantScope, tenant: str | None) -> str:
    """The tenant a name-scoped request is about: the caller's own, or (center admin) the one it names."""
    narrowed = scope.narrow(tenant)
    if narrowed.tenant is None:
        raise Problem(
            "validation-error",
            "tenant: center admins name the tenant of the service (?tenant=...)",
            errors=[{"loc": ["query", "tenant"], "msg": "required for center admins", "type": "missing"}],
        )
    return narrowed.tenant


def _find(serving: SqlServing, tenant: str, name: str) -> ServiceRecord:
    found = serving.find(tenant, name)
    if not found:
        raise not_found("service", name)
    return found[0]


def _status(serving: SqlServing, record: ServiceRecord) -> dict[str, Any]:
    replicas = [r for r in serving.replicas() if r.service_id == record.id]
    loads = serving.loads_of(record.id, time.time() - LOAD_FRESH_S)
    return service_out(record, replicas, loads, serving.failure_threshold)


# -------------------------------------------------------------------------------------------------- deploy


def _validate(ctx: AppContext, spec: JobSpec, tenant: str, queue: str) -> None:
    serving = spec.serving
    if serving is None:
        raise Problem(
            "validation-error",
            "serving: a service needs a serving block (min_replicas, max_replicas, target_ongoing_requests ...); "
            "submit a fixed set of replicas with POST /v1/jobs instead",
            errors=[{"loc": ["body", "serving"], "msg": "required to deploy a service", "type": "missing"}],
        )
    policy = ctx.snapshots.policy.policy
    if serving.min_replicas == 0 and policy.tier(tenant) is not ServiceTier.BASIC:
        raise Problem(
            "validation-error",
            f"serving.min_replicas: scale to zero is for free-tier (basic) services; tenant {tenant!r} is "
            f"{policy.tier(tenant).value}: keep at least one replica (min_replicas: 1)",
            errors=[
                {
                    "loc": ["body", "serving", "min_replicas"],
                    "msg": "scale to zero: free tier only",
                    "type": "value_error",
                }
            ],
        )
    for index, model in enumerate(spec.models):
        if ctx.catalog.lookup(model) is None:
            raise Problem(
                "validation-error",
                f"models[{index}]: unknown accelerator model {model!r} (known: {', '.join(ctx.catalog.names)})",
                errors=[{"loc": ["body", "models", index], "msg": "unknown model", "type": "value_error"}],
            )
    one = spec.model_copy(update={"workers": 1, "serving": None})
    shape = (
        one.models,
        one.job_class,
        ctx.snapshots.domestic(one.domestic, queue, tenant),
        1,
        one.devices_per_worker,
        one.cpus_per_worker,
        one.memory_gib_per_worker,
        one.topology_required,
    )
    reasons = ctx.snapshots.never_fits(
        lambda: one.to_job("service-check", tenant=tenant, user="check", queue=queue), shape
    )
    if reasons is not None:
        messages = "; ".join(r.message for r in reasons) or "no acceptable pool"
        raise Problem(
            "unschedulable",
            f"a replica could never be placed: {messages}. Ask for a smaller replica, or other models",
            extra={"reasons": [r.as_dict() for r in reasons]},
        )


@router.post(
    "",
    status_code=201,
    response_model=ServiceDeployed,
    summary="Deploy a service, or roll it to a new revision",
    responses={200: {"model": ServiceDeployed, "description": "updated (a new revision) or unchanged"}},
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": _SPEC_SCHEMA}}}},
)
async def deploy_service(request: Request, principal: CurrentPrincipal) -> Response:
    require(principal, *TENANT_ROLES)
    ctx = context(request)
    body = await request.body()
    if not body.strip():
        raise Problem("malformed-request", "the body is empty; send a JSON job spec with a serving block")
    try:
        spec = JobSpec.model_validate_json(body)
    except ValidationError as err:
        raise from_pydantic(err) from None
    tenant, queue = _queue_for(principal, spec, ctx.snapshots.policy.policy)
    _validate(ctx, spec, tenant, queue)
    serving = serving_of(request)
    user = principal.user_id or principal.token_id
    try:
        deployed = await run_in_threadpool(serving.deploy, tenant, spec.name, spec, user=user, queue=queue)
    except ServiceConflict as err:
        raise Problem("conflict", str(err)) from None
    out = await run_in_threadpool(_status, serving, deployed.record)
    out["outcome"] = deployed.outcome
    status = 201 if deployed.outcome == "created" else 200
    return respond(out, status, {"Location": f"/v1/services/{spec.name}"})


# ---------------------------------------------------------------------------------------------------- read


@router.get("", response_model=Items[ServiceOut], summary="List services")
def list_services(request: Request, scope: Scope, tenant: TenantParam = None) -> Response:
    serving = serving_of(request)
    narrowed = scope.narrow(tenant)
    records = serving.find(narrowed.tenant)
    replicas = serving.replicas()
    loads = serving.loads(time.time() - LOAD_FRESH_S)
    items = [
        service_out(
            r,
            [x for x in replicas if x.service_id == r.id],
            [x for x in loads if x.service_id == r.id],
            serving.failure_threshold,
        )
        for r in records
    ]
    return respond({"items": items})


@router.get("/{name}", response_model=ServiceOut, summary="One service: replicas, load, URL")
def get_service(name: ServiceName, request: Request, scope: Scope, tenant: TenantParam = None) -> Response:
    serving = serving_of(request)
    return respond(_status(serving, _find(serving, _tenant_of(scope, tenant), name)))


@router.delete("/{name}", status_code=202, response_model=ServiceOut, summary="Delete a service")
def delete_service(name: ServiceName, request: Request, scope: Scope, tenant: TenantParam = None) -> Response:
    """Its replicas drain and stop; the service and its keys go once none is left."""
    require(scope.principal, *TENANT_ROLES)
    serving = serving_of(request)
    record = _find(serving, _tenant_of(scope, tenant), name)
    serving.delete(record.id)
    return respond(_status(serving, _find(serving, record.tenant, name)), 202)


@router.get("/{name}/usage", response_model=ServiceUsageOut, summary="Requests, tokens, device-hours and charge")
def service_usage_route(
    name: ServiceName,
    request: Request,
    scope: Scope,
    tenant: TenantParam = None,
    start: Annotated[float | None, Query(ge=0, description="epoch seconds; default: 30 days ago")] = None,
    end: Annotated[float | None, Query(ge=0, description="epoch seconds; default: now")] = None,
) -> Response:
    serving = serving_of(request)
    record = _find(serving, _tenant_of(scope, tenant), name)
    now = time.time()
    until = end if end is not None else now
    since = start if start is not None else until - 30 * 86400
    if since >= until:
        raise Problem("validation-error", f"start ({since:g}) must be before end ({until:g})")
    hours = serving.usage(record.tenant, record.id, since, until)
    ctx = context(request)
    with ctx.engine.connect() as conn:
        rows = conn.execute(
            select(LEDGER)
            .join(SERVICE_REPLICAS, SERVICE_REPLICAS.c.job_id == LEDGER.c.job_id)
            .where(SERVICE_REPLICAS.c.service_id == record.id, LEDGER.c.at >= since, LEDGER.c.at < until)
        ).mappings()
        entries = [_entry(row) for row in rows]
    use = service_usage(
        entries,
        min(now, until),
        requests=sum(h.requests for h in hours),
        errors=sum(h.errors for h in hours),
        tokens=sum(h.tokens for h in hours),
    )
    return respond(
        {
            "service": record.name,
            "tenant": record.tenant,
            "start": since,
            "end": until,
            "requests": use.requests,
            "errors": use.errors,
            "rejected": sum(h.rejected for h in hours),
            "tokens": use.tokens,
            "device_hours": round(use.device_hours, 6),
            "running_device_hours": round(use.running_device_hours, 6),
            "ncu_hours": round(use.ncu_hours, 6),
            "charge": round(use.charge, 6),
            "currency": ctx.snapshots.policy.policy.prices.currency,
            "charge_per_1k_requests": (
                round(use.charge_per_1k_requests, 6) if use.charge_per_1k_requests is not None else None
            ),
        }
    )


def _entry(row: Any) -> LedgerEntry:
    return LedgerEntry(
        kind=LedgerKind(row["kind"]),
        job_id=row["job_id"],
        tenant=row["tenant"],
        queue=row["queue"],
        user=row["user"],
        model=row["model"],
        pool=row["pool"],
        devices=row["devices"],
        at=row["at"],
        seconds=row["seconds"],
        ncu_hours=row["ncu_hours"],
        energy_kwh=row["energy_kwh"],
        energy_estimated=row["energy_estimated"],
        tier=ServiceTier(row["tier"]),
        price_per_ncu_hour=row["price_per_ncu_hour"],
        charge=row["charge"],
        domestic=row["domestic"],
        cause=StopCause(row["cause"]) if row["cause"] else None,
    )


# ---------------------------------------------------------------------------------------------------- keys


@router.post("/{name}/keys", status_code=201, response_model=ServiceKeyCreated, summary="Create a service key")
def create_key(
    name: ServiceName, body: ServiceKeyIn, request: Request, scope: Scope, tenant: TenantParam = None
) -> Response:
    """A key that calls this service only; its secret is in this answer and nowhere else."""
    require(scope.principal, Role.TENANT_ADMIN, Role.CENTER_ADMIN)
    serving = serving_of(request)
    record = _find(serving, _tenant_of(scope, tenant), name)
    who = scope.principal.user_id or scope.principal.token_id
    key, plain = serving.create_key(record, body.name, who)
    return respond(key_out(key) | {"key": plain}, 201)


@router.get("/{name}/keys", response_model=Items[ServiceKeyOut], summary="A service's keys (never their secrets)")
def list_keys(name: ServiceName, request: Request, scope: Scope, tenant: TenantParam = None) -> Response:
    serving = serving_of(request)
    record = _find(serving, _tenant_of(scope, tenant), name)
    return respond({"items": [key_out(k) for k in serving.keys(record)]})


@router.delete("/{name}/keys/{key_id}", response_model=ServiceKeyOut, summary="Revoke a service key")
def revoke_key(
    name: ServiceName, key_id: KeyId, request: Request, scope: Scope, tenant: TenantParam = None
) -> Response:
    """Routers stop accepting it within their key cache's lifetime (5 s by default)."""
    require(scope.principal, Role.TENANT_ADMIN, Role.CENTER_ADMIN)
    serving = serving_of(request)
    record = _find(serving, _tenant_of(scope, tenant), name)
    if not serving.revoke_key(record, key_id):
        raise not_found("key", key_id)
    key = next(k for k in serving.keys(record) if k.id == key_id)
    return respond(key_out(key))
