"""``/healthz`` (the process answers), ``/readyz`` (the database answers and is migrated) and ``/metrics``."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text

from api.db import current_revision, head_revision
from api.deps import context, respond
from api.models import HealthOut, ReadyOut, problem_responses
from api.problems import Problem

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthOut, summary="The process is up")
async def healthz() -> Response:
    return respond({"status": "ok"})


@router.get(
    "/readyz",
    response_model=ReadyOut,
    summary="The database answers and its schema is at the newest migration",
    responses=problem_responses(503),
)
def readyz(request: Request) -> Response:
    ctx = context(request)
    retry = {"Retry-After": str(ctx.settings.retry_after_s)}
    head = head_revision()
    try:
        with ctx.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            revision = current_revision(conn)
    except Exception as err:
        detail = f"the database does not answer ({err.__class__.__name__}); retry in {ctx.settings.retry_after_s} s"
        raise Problem("database-unavailable", detail, headers=retry) from None
    if revision != head or not ctx.ready:
        why = (ctx.startup_error or "starting").split(":")[0]
        raise Problem(
            "database-unavailable",
            f"the database is at migration {revision}, the code at {head} ({why}); "
            f"retry in {ctx.settings.retry_after_s} s",
            headers=retry,
        )
    return respond({"status": "ready", "database": ctx.engine.dialect.name, "revision": revision, "head": head})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(request: Request) -> Response:
    return Response(context(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)
