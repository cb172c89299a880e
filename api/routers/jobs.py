"""``/v1/jobs``: submit (idempotent), list, get, cancel, events, logs, why and eta.

Submission is the hot path (see :mod:`api.store`): no database read before the group-commit writer — the token
comes from the auth cache, the policy and the inventory from in-memory snapshots — and one INSERT per job (and
one per its ``submitted`` event), batched with every other submission in flight.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlmodel import Session

from api.auth import Principal
from api.db import append_event, transition
from api.deps import (
    AppContext,
    CurrentPrincipal,
    ReadSession,
    Scope,
    TenantScope,
    WriteSession,
    context,
    require,
    respond,
)
from api.enums import Role
from api.models import V1_PROBLEMS, EtaOut, EventOut, Items, JobOut, JobPage, LogChunk, WhyOut
from api.problems import Problem, from_pydantic, not_found
from api.store import request_hash
from api.tables import JOB_EVENTS, JOB_LOGS, JOBS, new_job_id
from scheduler.eta import DEFAULT_BAND
from scheduler.model import JobKind, PriorityClass
from scheduler.spec import TERMINAL_STATES, JobSpec, JobState
from scheduler.tenancy import QueuePolicy

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=V1_PROBLEMS)

JOB_ID = r"^j[0-9a-f]{19}$"
JobId = Annotated[str, Path(pattern=JOB_ID, description="job id (j + 19 hex digits)")]
PRIORITY_NAMES = {int(p): p.name.lower().replace("_", "-") for p in PriorityClass}
TENANT_ROLES = (Role.TENANT_USER, Role.TENANT_ADMIN, Role.CENTER_ADMIN)
_SORTED = orjson.OPT_SORT_KEYS


def job_out(row: Mapping[Any, Any]) -> dict[str, Any]:
    """The ``JobOut`` document of a ``jobs`` row."""
    priority = row["priority"]
    return {
        "id": row["id"],
        "name": row["name"],
        "tenant": row["tenant"],
        "user": row["user"],
        "queue": row["queue"],
        "kind": row["kind"],
        "state": row["state"],
        "priority": PRIORITY_NAMES.get(priority, str(priority)),
        "attempt": row["attempt"],
        "spec": row["spec"],
        "submitted_at": row["submitted_at"],
        "started_at": row["started_at"],
        "finished_at": row["finished_at"],
        "updated_at": row["updated_at"],
        "placement": row["placement"],
        "reasons": row["reasons"] or [],
        "estimated_start": row["estimated_start"],
        "estimated_finish": row["estimated_finish"],
        "message": row["message"],
        "exit_code": row["exit_code"],
    }


def visible_job(session: Session, scope: TenantScope, job_id: str) -> Mapping[Any, Any]:
    row = session.execute(scope.apply(select(JOBS).where(JOBS.c.id == job_id), JOBS.c.tenant)).mappings().first()
    if row is None:
        raise not_found("job", job_id)
    return row


# -------------------------------------------------------------------------------------------------- submit


def _queue_for(principal: Principal, spec: JobSpec, policy: QueuePolicy) -> tuple[str, str]:
    """``(tenant, queue)`` of a submission, or a 422 naming the queues the caller may use."""
    if principal.is_center_admin:
        if spec.queue is None:
            raise Problem(
                "validation-error",
                "queue: center admins submit on behalf of a tenant; name the tenant's queue",
                errors=[{"loc": ["body", "queue"], "msg": "required for center admins", "type": "missing"}],
            )
        tenant = policy.tenant_of(spec.queue)
        if tenant is None:
            known = ", ".join(sorted(policy.queues)) or "none"
            raise Problem(
                "validation-error",
                f"queue: unknown queue {spec.queue!r} (queues: {known})",
                errors=[{"loc": ["body", "queue"], "msg": "unknown queue", "type": "value_error"}],
            )
        return tenant, spec.queue
    tenant = principal.tenant or ""
    mine = sorted(name for name in policy.queues if policy.tenant_of(name) == tenant)
    choices = f"your queues: {', '.join(mine)}" if mine else f"tenant {tenant!r} has no queue; ask a center admin"
    if spec.queue is not None:
        if spec.queue in policy.queues and policy.tenant_of(spec.queue) == tenant:
            return tenant, spec.queue
        raise Problem(
            "validation-error",
            f"queue: {spec.queue!r} is not one of your queues ({choices})",
            errors=[{"loc": ["body", "queue"], "msg": f"unknown queue ({choices})", "type": "value_error"}],
        )
    if tenant in policy.queues and policy.tenant_of(tenant) == tenant:
        return tenant, tenant
    raise Problem(
        "validation-error",
        f"queue: no queue given and tenant {tenant!r} has no queue of its own name; name one ({choices})",
        errors=[{"loc": ["body", "queue"], "msg": f"name a queue ({choices})", "type": "missing"}],
    )


def _find_by_key(ctx: AppContext, tenant: str, key: str) -> dict[str, Any] | None:
    engine = ctx.engine
    with engine.connect() as conn:
        row = (
            conn.execute(select(JOBS).where(JOBS.c.tenant == tenant, JOBS.c.idempotency_key == key)).mappings().first()
        )
    return dict(row) if row is not None else None


def _key_reused(key: str, prior: Mapping[Any, Any]) -> Problem:
    return Problem(
        "idempotency-key-reused",
        f"Idempotency-Key {key!r} was already used for job {prior['id']} with a different body; "
        "send the same body to get that job back, or use a new key for a new job",
        extra={"job_id": prior["id"]},
    )


_SPEC_SCHEMA = {"$ref": "#/components/schemas/JobSpec"}


async def submit(
    ctx: AppContext, principal: Principal, body: bytes, idempotency_key: str | None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Validate and queue one submission: ``(status, JobOut, headers)``, or a :class:`Problem`.

    Shared by the FastAPI route and the ASGI fast path (:mod:`api.fastpath`). Nothing is written unless the
    answer is 201.
    """
    require(principal, *TENANT_ROLES)
    if not body.strip():
        raise Problem("malformed-request", "the body is empty; send a JSON job spec (see /docs)")
    try:
        spec = JobSpec.model_validate_json(body)
    except ValidationError as err:
        raise from_pydantic(err) from None
    spec_json = spec.model_dump(mode="json")
    digest = request_hash(orjson.dumps(spec_json, option=_SORTED))
    snapshot = ctx.snapshots.policy
    tenant: str | None = principal.tenant
    now = time.time()
    job_id = new_job_id(now)
    user = principal.user_id or principal.token_id
    try:
        tenant, queue = _queue_for(principal, spec, snapshot.policy)
        for index, model in enumerate(spec.models):
            if ctx.catalog.lookup(model) is None:
                known = ", ".join(ctx.catalog.names)
                raise Problem(
                    "validation-error",
                    f"models[{index}]: unknown accelerator model {model!r} (known: {known})",
                    errors=[{"loc": ["body", "models", index], "msg": "unknown model", "type": "value_error"}],
                )
        shape = (
            spec.models,
            spec.job_class,
            ctx.snapshots.domestic(spec.domestic, queue, tenant),
            spec.workers,
            spec.devices_per_worker,
            spec.cpus_per_worker,
            spec.memory_gib_per_worker,
            spec.topology_required,
        )
        job_tenant, job_queue = tenant, queue
        reasons = ctx.snapshots.never_fits(
            lambda: spec.to_job(job_id, tenant=job_tenant, user=user, queue=job_queue, submit_time=now), shape
        )
        if reasons is not None:
            messages = "; ".join(r.message for r in reasons) or "no acceptable pool"
            raise Problem(
                "unschedulable",
                f"{messages}. Ask for fewer or smaller workers, or other models",
                extra={"reasons": [r.as_dict() for r in reasons]},
            )
    except Problem:
        if idempotency_key is not None and tenant is not None:
            prior = await run_in_threadpool(_find_by_key, ctx, tenant, idempotency_key)
            if prior is not None:
                if prior["request_hash"] != digest:
                    raise _key_reused(idempotency_key, prior) from None
                ctx.metrics.submissions.labels("replayed").inc()
                return 200, job_out(prior), {"Location": f"/v1/jobs/{prior['id']}"}
        ctx.metrics.submissions.labels("rejected").inc()
        raise
    row: dict[str, Any] = {
        "id": job_id,
        "tenant": tenant,
        "user": user,
        "queue": queue,
        "name": spec.name,
        "kind": spec.kind.value,
        "state": JobState.PENDING.value,
        "version": 0,
        "priority": int(spec.priority),
        "spec": spec_json,
        "submitted_at": now,
        "updated_at": now,
        "started_at": None,
        "finished_at": None,
        "attempt": 0,
        "placement": None,
        "reasons": [],
        "estimated_start": None,
        "estimated_finish": None,
        "message": "",
        "exit_code": None,
        "last_checkpoint_at": None,
        "idempotency_key": idempotency_key,
        "request_hash": digest,
    }
    event = {
        "job_id": job_id,
        "at": now,
        "kind": "submitted",
        "message": f"submitted by {user} to queue {queue}",
        "data": {"policy_version": snapshot.version},
    }
    tenant_policy = snapshot.policy.tenants.get(tenant)
    limit = tenant_policy.max_active_jobs if tenant_policy is not None else None
    result = await ctx.submitter.submit(row, event, limit)
    ctx.metrics.submissions.labels(result.outcome).inc()
    if result.outcome == "created":
        return 201, job_out(row), {"Location": f"/v1/jobs/{job_id}"}
    if result.outcome == "replayed":
        return 200, job_out(result.row), {"Location": f"/v1/jobs/{result.row['id']}"}
    if result.outcome == "key-reused":
        raise _key_reused(idempotency_key or "", result.row)
    raise Problem(
        "quota-exceeded",
        f"{result.detail}; wait for some to finish or cancel some (zhisuan list, zhisuan cancel)",
    )


@router.post(
    "",
    status_code=201,
    response_model=JobOut,
    summary="Submit a job",
    responses={
        200: {"model": JobOut, "description": "an earlier submission with the same Idempotency-Key and body"},
    },
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": _SPEC_SCHEMA}}}},
)
async def submit_job(
    request: Request,
    principal: CurrentPrincipal,
    idempotency_key: Annotated[
        str | None, Header(min_length=1, max_length=200, description="same key + same body: same job")
    ] = None,
) -> Response:
    """Validate a :class:`~scheduler.spec.JobSpec` and queue it. Nothing is written unless the answer is 201.

    (Served by the ASGI fast path of :mod:`api.fastpath` unless ``ZHISUAN_FAST_SUBMIT=0``; same code.)
    """
    status, body, headers = await submit(context(request), principal, await request.body(), idempotency_key)
    return respond(body, status, headers)


# ---------------------------------------------------------------------------------------------------- read


@router.get("", response_model=JobPage, summary="List jobs, newest first")
def list_jobs(
    scope: Scope,
    session: ReadSession,
    state: Annotated[str | None, Query(description="one state or several, comma-separated")] = None,
    queue: str | None = None,
    kind: JobKind | None = None,
    name: str | None = None,
    tenant: Annotated[str | None, Query(description="center admins: only this tenant")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(pattern=JOB_ID, description="next_cursor of the previous page")] = None,
) -> Response:
    scope = scope.narrow(tenant)
    statement = scope.apply(select(JOBS), JOBS.c.tenant)
    if state:
        wanted = [s.strip() for s in state.split(",") if s.strip()]
        allowed = {s.value for s in JobState}
        bad = [s for s in wanted if s not in allowed]
        if bad:
            raise Problem(
                "validation-error",
                f"state: unknown state {bad[0]!r} (allowed: {', '.join(s.value for s in JobState)})",
                errors=[{"loc": ["query", "state"], "msg": "unknown state", "type": "enum"}],
            )
        statement = statement.where(JOBS.c.state.in_(wanted))
    if queue:
        statement = statement.where(JOBS.c.queue == queue)
    if kind is not None:
        statement = statement.where(JOBS.c.kind == kind.value)
    if name:
        statement = statement.where(JOBS.c.name == name)
    if cursor:
        statement = statement.where(JOBS.c.id < cursor)
    rows = session.execute(statement.order_by(JOBS.c.id.desc()).limit(limit + 1)).mappings().all()
    items = [job_out(r) for r in rows[:limit]]
    next_cursor = rows[limit - 1]["id"] if len(rows) > limit else None
    return respond({"items": items, "next_cursor": next_cursor})


@router.get("/{job_id}", response_model=JobOut, summary="One job")
def get_job(job_id: JobId, scope: Scope, session: ReadSession) -> Response:
    return respond(job_out(visible_job(session, scope, job_id)))


@router.post("/{job_id}/cancel", status_code=202, response_model=JobOut, summary="Cancel a job")
def cancel_job(job_id: JobId, scope: Scope, session: WriteSession) -> Response:
    """Pending: cancelled at once. Starting or running: ``cancelling`` (the service stops it). Finished: 409."""
    who = scope.principal.user_id or scope.principal.token_id
    for _ in range(5):
        row = visible_job(session, scope, job_id)
        state = JobState(row["state"])
        if state in TERMINAL_STATES:
            raise Problem("conflict", f"job {job_id} is already {state.value}; there is nothing to cancel")
        if state is JobState.CANCELLING:
            session.rollback()
            return respond(job_out(row), 202)
        now = time.time()
        if state is JobState.PENDING:
            changes: dict[str, Any] = {
                "state": JobState.CANCELLED.value,
                "finished_at": now,
                "message": f"cancelled by {who} before it started",
                "reasons": [],
                "updated_at": now,
            }
            kind = "cancelled"
        else:
            changes = {"state": JobState.CANCELLING.value, "message": f"cancel requested by {who}", "updated_at": now}
            kind = "cancel-requested"
        if transition(session, job_id, row["version"], **changes):
            append_event(session, job_id, kind, changes["message"], {"from": state.value, "by": who}, at=now)
            session.commit()
            return respond(job_out({**row, **changes, "version": row["version"] + 1}), 202)
        session.rollback()
    raise Problem("conflict", f"job {job_id} kept changing while cancelling; retry")


@router.get("/{job_id}/events", response_model=Items[EventOut], summary="What happened to a job")
def job_events(
    job_id: JobId, scope: Scope, session: ReadSession, limit: Annotated[int, Query(ge=1, le=10_000)] = 1000
) -> Response:
    visible_job(session, scope, job_id)
    rows = session.execute(
        select(JOB_EVENTS.c.at, JOB_EVENTS.c.kind, JOB_EVENTS.c.message, JOB_EVENTS.c.data)
        .where(JOB_EVENTS.c.job_id == job_id)
        .order_by(JOB_EVENTS.c.id)
        .limit(limit)
    ).mappings()
    return respond({"items": [{**r, "data": r["data"] or {}} for r in rows]})


@router.get("/{job_id}/logs", response_model=LogChunk, summary="A worker's log from a byte offset")
def job_logs(
    job_id: JobId,
    scope: Scope,
    session: ReadSession,
    rank: Annotated[int, Query(ge=0, le=100_000)] = 0,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1 << 20)] = 65536,
    attempt: Annotated[int | None, Query(ge=0, description="default: the current attempt")] = None,
) -> Response:
    job = visible_job(session, scope, job_id)
    attempt = job["attempt"] if attempt is None else attempt
    rows = session.execute(
        select(JOB_LOGS.c.offset, JOB_LOGS.c.text)
        .where(
            JOB_LOGS.c.job_id == job_id,
            JOB_LOGS.c.attempt == attempt,
            JOB_LOGS.c.rank == rank,
            # from the chunk that holds ``offset`` on (a long log is not re-read from its start by ``logs -f``)
            JOB_LOGS.c.offset
            >= func.coalesce(
                select(func.max(JOB_LOGS.c.offset))
                .where(
                    JOB_LOGS.c.job_id == job_id,
                    JOB_LOGS.c.attempt == attempt,
                    JOB_LOGS.c.rank == rank,
                    JOB_LOGS.c.offset <= offset,
                )
                .scalar_subquery(),
                0,
            ),
        )
        .order_by(JOB_LOGS.c.offset, JOB_LOGS.c.id)
    ).all()
    data = bytearray()
    start = None
    end_of_log = 0
    for chunk_offset, text in rows:
        raw = text.encode()
        chunk_end = chunk_offset + len(raw)
        end_of_log = max(end_of_log, chunk_end)
        if chunk_end <= offset:
            continue
        if start is None:
            start = max(offset, chunk_offset)
        position = start + len(data)
        if chunk_offset > position:  # a gap (chunk not written yet): stop at it
            break
        data += raw[max(0, position - chunk_offset) :]
        if len(data) >= limit:
            break
    piece = utf8_prefix(bytes(data[:limit])) if len(data) > limit else bytes(data)
    begin = start if start is not None else offset
    next_offset = begin + len(piece)
    terminal = JobState(job["state"]) in TERMINAL_STATES
    return respond(
        {
            "job_id": job_id,
            "attempt": attempt,
            "rank": rank,
            "offset": begin,
            "next_offset": next_offset,
            "text": piece.decode("utf-8", errors="replace"),
            "complete": terminal and next_offset >= end_of_log,
        }
    )


def utf8_prefix(piece: bytes) -> bytes:
    """``piece`` without a multi-byte UTF-8 character cut off at its end (the next read starts with it).

    >>> utf8_prefix("a€".encode()[:3]), utf8_prefix("a€".encode())
    (b'a', b'a\\xe2\\x82\\xac')
    """
    index = len(piece) - 1
    while index > 0 and len(piece) - index < 4 and (piece[index] & 0xC0) == 0x80:
        index -= 1
    if index < 0:
        return piece
    lead = piece[index]
    size = 1 if lead < 0x80 else 2 if lead >= 0xC0 and lead < 0xE0 else 3 if lead >= 0xE0 and lead < 0xF0 else 4
    return piece[:index] if len(piece) - index < size and lead >= 0xC0 else piece


@router.get("/{job_id}/why", response_model=WhyOut, summary="Why a job waits")
def job_why(job_id: JobId, scope: Scope, session: ReadSession) -> Response:
    job = visible_job(session, scope, job_id)
    return respond(
        {"job_id": job_id, "state": job["state"], "reasons": job["reasons"] or [], "updated_at": job["updated_at"]}
    )


@router.get("/{job_id}/eta", response_model=EtaOut, summary="When a job should start and finish")
def job_eta(job_id: JobId, scope: Scope, session: ReadSession) -> Response:
    job = visible_job(session, scope, job_id)
    known = job["estimated_start"] is not None or job["estimated_finish"] is not None
    answer: dict[str, Any] = {
        "job_id": job_id,
        "state": job["state"],
        "estimated_start": job["estimated_start"],
        "estimated_finish": job["estimated_finish"],
        "computed_at": job["updated_at"] if known else None,
    }
    if job["state"] == JobState.PENDING.value and job["estimated_start"] is not None:
        # The band the real start falls in most of the time, around the forecast as seen now (its width is
        # calibrated on measured forecast errors: benchmarks/README.md).
        answer["start_earliest"], answer["start_latest"] = DEFAULT_BAND.around(job["estimated_start"], time.time())
    return respond(answer)
