"""FastAPI dependencies: the application context, the caller (:class:`Principal`), the tenant scope and sessions.

Every tenant-scoped query goes through :class:`TenantScope` — the one place that adds ``WHERE tenant = :tenant``
(center admins see every tenant, or the one they name). Something outside the caller's scope is *not found*
(404), never *forbidden*, so an id never reveals that another tenant has it.

Node-agent tokens may call only ``/v1/agent/*``, and nothing else may call those.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import orjson
from fastapi import Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import ColumnElement, Engine, Select, true
from sqlmodel import Session

from api.auth import Authenticator, AuthError, Principal, RateLimiter, RedisRateLimiter, bearer
from api.db import write_engine
from api.enums import Role
from api.problems import Problem, forbidden, not_found
from api.settings import Settings
from api.store import Follower, LeaseWriter, Snapshots, Submitter
from scheduler.catalog import Catalog
from scheduler.throughput import ThroughputMatrix

if TYPE_CHECKING:
    from api.metrics import Metrics

AGENT_PREFIX = "/v1/agent/"
S = TypeVar("S", bound=Select[Any])


@dataclass
class AppContext:
    """Everything a request handler needs, built once per app by :func:`api.app.create_app`."""

    settings: Settings
    engine: Engine
    catalog: Catalog
    throughput: ThroughputMatrix
    auth: Authenticator
    limiter: RateLimiter | RedisRateLimiter
    snapshots: Snapshots
    submitter: Submitter
    metrics: Metrics
    ready: bool = False
    startup_error: str | None = None
    #: Keeps the caches right from the change feed (None: refresh them on a timer instead).
    follower: Follower | None = None
    #: Writes the heartbeats that only renew a lease, in batches.
    leases: LeaseWriter | None = None
    bootstrap_token: str | None = field(default=None, repr=False)


def context(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


Ctx = Annotated[AppContext, Depends(context)]


def _unauthenticated(detail: str) -> Problem:
    return Problem("unauthenticated", detail, headers={"WWW-Authenticate": 'Bearer realm="zhisuan"'})


async def current_principal(request: Request) -> Principal:
    """Authenticate the bearer token (cached), apply the agent-path rule and the per-token rate limit."""
    return await authenticate(request.app.state.ctx, request.headers.get("authorization"), request.url.path)


async def authenticate(ctx: AppContext, authorization: str | None, path: str) -> Principal:
    """:func:`current_principal` without a ``Request`` (the submission fast path calls it too)."""
    token = bearer(authorization)
    if token is None:
        raise _unauthenticated("send Authorization: Bearer <token> (zhisuan login, or create a token)")
    now = time.time()
    try:
        principal = ctx.auth.cached(token, now)
        if principal is None:
            if not ctx.ready:
                raise Problem(
                    "database-unavailable",
                    f"the database is not ready yet; retry in {ctx.settings.retry_after_s} s",
                    headers={"Retry-After": str(ctx.settings.retry_after_s)},
                )
            principal = await run_in_threadpool(ctx.auth.lookup, token, now)
    except AuthError as err:
        raise _unauthenticated(str(err)) from None
    agent_path = path.startswith(AGENT_PREFIX)
    if principal.is_node and not agent_path:
        raise forbidden("node-agent tokens may only call /v1/agent/*")
    if agent_path and not principal.is_node:
        raise forbidden("only node-agent tokens may call /v1/agent/* (create one with POST /v1/nodes/tokens)")
    # Agents are paced by the heartbeat interval the API sets and admitted by api.routers.agent.AgentAdmission; a
    # node token shared by a whole fleet (a DaemonSet's secret) must not be throttled as one client.
    wait = 0.0 if principal.is_node else await ctx.limiter.check(principal.token_id)
    if wait > 0:
        retry = max(1, int(wait + 0.999))
        raise Problem(
            "rate-limited",
            f"this token is over its rate limit ({ctx.limiter.rate:g}/s, burst {ctx.limiter.burst:g}); "
            f"retry after {retry} s",
            headers={"Retry-After": str(retry)},
        )
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def require(principal: Principal, *roles: Role) -> None:
    if principal.role not in roles:
        allowed = ", ".join(r.value for r in roles)
        raise forbidden(f"this needs the role {allowed}; your token has {principal.role.value}")


@dataclass(frozen=True)
class TenantScope:
    """Which tenants the caller may see: its own, or (center admin) all of them or the one it names."""

    principal: Principal
    tenant: str | None  # None: every tenant (center admin only)

    @property
    def all_tenants(self) -> bool:
        return self.tenant is None

    def clause(self, column: Any) -> ColumnElement[bool]:
        return true() if self.tenant is None else column == self.tenant

    def apply(self, statement: S, column: Any) -> S:
        """``statement`` restricted to the scope (``WHERE column = :tenant`` unless it spans every tenant)."""
        return statement if self.tenant is None else statement.where(column == self.tenant)

    def sees(self, tenant: str | None) -> bool:
        return self.tenant is None or tenant == self.tenant

    def narrow(self, tenant: str | None) -> TenantScope:
        """The scope limited to ``tenant`` (a ``tenant=`` query parameter); another tenant's name is a 404."""
        if tenant is None or tenant == self.tenant:
            return self
        if self.tenant is None:
            return TenantScope(self.principal, tenant)
        raise not_found("tenant", tenant)


def tenant_scope(principal: CurrentPrincipal) -> TenantScope:
    if principal.is_center_admin:
        return TenantScope(principal, None)
    if principal.tenant is None:  # a tenant role always has a tenant; refuse rather than widen
        raise forbidden("this token belongs to no tenant")
    return TenantScope(principal, principal.tenant)


Scope = Annotated[TenantScope, Depends(tenant_scope)]


def read_session(request: Request) -> Iterator[Session]:
    ctx: AppContext = request.app.state.ctx
    with Session(ctx.engine, expire_on_commit=False) as session:
        yield session


def write_session(request: Request) -> Iterator[Session]:
    """A session whose transaction is a write transaction; the handler commits (nothing is committed otherwise)."""
    ctx: AppContext = request.app.state.ctx
    with Session(write_engine(ctx.engine), expire_on_commit=False) as session:
        yield session


ReadSession = Annotated[Session, Depends(read_session)]
WriteSession = Annotated[Session, Depends(write_session)]


def respond(content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response rendered by orjson (the handlers build plain dicts; no second validation pass)."""
    return Response(
        orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS),
        status_code=status_code,
        headers=headers,
        media_type="application/json",
    )
