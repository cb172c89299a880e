"""Users and API tokens: ``/v1/users``, ``/v1/tokens``, ``/v1/nodes/tokens`` and ``/v1/whoami``.

Tenant admins manage the users and tokens of their own tenant; center admins manage everything; every user may
create and revoke its own tokens. A token's secret is returned once, at creation, and never stored.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from sqlalchemy import exc as sa_exc
from sqlalchemy import insert, select, update

from api.auth import Principal, issue_token
from api.deps import CurrentPrincipal, ReadSession, Scope, WriteSession, context, require, respond
from api.enums import Role
from api.models import V1_PROBLEMS, Items, NodeTokenIn, TokenCreated, TokenIn, TokenOut, UserIn, UserOut, WhoAmI
from api.problems import Problem, not_found
from api.tables import API_TOKENS, USERS

router = APIRouter(prefix="/v1", tags=["users and tokens"], responses=V1_PROBLEMS)
TokenId = Annotated[str, Path(pattern=r"^[0-9a-f]{16}$")]


def user_id_for(name: str, tenant: str | None) -> str:
    """Readable, unique user ids: ``alice@acme`` for a tenant's user, ``center`` for a center admin."""
    return name if tenant is None else f"{name}@{tenant}"


def user_out(row: Mapping[Any, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "tenant": row["tenant"],
        "role": row["role"],
        "created_at": row["created_at"],
        "disabled": row["disabled"],
    }


def token_out(row: Mapping[Any, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "user": row["user_id"],
        "tenant": row["tenant"],
        "role": row["role"],
        "node_id": row["node_id"],
        "name": row["name"],
        "created_at": row["created_at"],
        "expires_at": row["expires_at"],
        "revoked_at": row["revoked_at"],
        "last_used_at": row["last_used_at"],
    }


def _may_manage(principal: Principal, user: Mapping[Any, Any]) -> bool:
    """Own user always; a tenant admin its tenant's users; a center admin everyone."""
    if principal.is_center_admin or user["id"] == principal.user_id:
        return True
    return principal.is_tenant_admin and user["tenant"] is not None and user["tenant"] == principal.tenant


# ------------------------------------------------------------------------------------------------- users


@router.post("/users", status_code=201, response_model=UserOut, summary="Create a user")
def create_user(body: UserIn, request: Request, principal: CurrentPrincipal, session: WriteSession) -> Response:
    require(principal, Role.TENANT_ADMIN, Role.CENTER_ADMIN)
    if body.role is Role.NODE_AGENT:
        raise Problem(
            "validation-error",
            "role: node agents are not users; issue a node token with POST /v1/nodes/tokens",
            errors=[{"loc": ["body", "role"], "msg": "not a user role", "type": "value_error"}],
        )
    tenant = body.tenant if body.tenant is not None or principal.is_center_admin else principal.tenant
    if principal.is_tenant_admin:
        if tenant != principal.tenant:
            raise not_found("tenant", str(tenant))
        if body.role is Role.CENTER_ADMIN:
            raise Problem("forbidden", "tenant admins cannot create center admins")
    if body.role is Role.CENTER_ADMIN:
        if tenant is not None:
            raise Problem(
                "validation-error",
                "tenant: center admins belong to no tenant; leave tenant out",
                errors=[{"loc": ["body", "tenant"], "msg": "must be null for center-admin", "type": "value_error"}],
            )
    else:
        policy = context(request).snapshots.policy.policy
        if tenant is None or tenant not in policy.tenants:
            raise Problem(
                "validation-error",
                f"tenant: unknown tenant {tenant!r}; create it first (POST /v1/tenants)",
                errors=[{"loc": ["body", "tenant"], "msg": "unknown tenant", "type": "value_error"}],
            )
    user_id = user_id_for(body.name, tenant)
    if session.execute(select(USERS.c.id).where(USERS.c.id == user_id)).first() is not None:
        raise Problem("conflict", f"user {user_id!r} already exists")
    row = {
        "id": user_id,
        "tenant": tenant,
        "name": body.name,
        "role": body.role.value,
        "created_at": time.time(),
        "disabled": False,
    }
    try:
        session.execute(insert(USERS).values(row))
        session.commit()
    except sa_exc.IntegrityError:
        raise Problem("conflict", f"user {user_id!r} already exists") from None
    return respond(user_out(row), 201, {"Location": f"/v1/users/{user_id}"})


@router.get("/users", response_model=Items[UserOut], summary="Users of your tenant (center admins: all)")
def list_users(principal: CurrentPrincipal, scope: Scope, session: ReadSession, tenant: str | None = None) -> Response:
    require(principal, Role.TENANT_ADMIN, Role.CENTER_ADMIN)
    scope = scope.narrow(tenant)
    rows = session.execute(scope.apply(select(USERS), USERS.c.tenant).order_by(USERS.c.id)).mappings()
    return respond({"items": [user_out(r) for r in rows]})


# ------------------------------------------------------------------------------------------------ tokens


@router.post("/tokens", status_code=201, response_model=TokenCreated, summary="Create a token (shown once)")
def create_token(body: TokenIn, principal: CurrentPrincipal, session: WriteSession) -> Response:
    user_id = body.user or principal.user_id
    if user_id is None:
        raise Problem(
            "validation-error",
            "user: name the user the token is for",
            errors=[{"loc": ["body", "user"], "msg": "field required", "type": "missing"}],
        )
    user = session.execute(select(USERS).where(USERS.c.id == user_id)).mappings().first()
    if user is None or not _may_manage(principal, user):
        raise not_found("user", user_id)
    if user["disabled"]:
        raise Problem("conflict", f"user {user_id!r} is disabled; no new tokens")
    created = issue_token(
        session,
        role=Role(user["role"]),
        tenant=user["tenant"],
        user_id=user["id"],
        name=body.name,
        expires_in_s=body.expires_in_s,
    )
    session.commit()
    return respond(created, 201)


@router.post("/nodes/tokens", status_code=201, response_model=TokenCreated, summary="Create a node-agent token")
def create_node_token(body: NodeTokenIn, principal: CurrentPrincipal, session: WriteSession) -> Response:
    """Center admins only. A token bound to ``node_id`` may register and report only that node."""
    require(principal, Role.CENTER_ADMIN)
    created = issue_token(
        session,
        role=Role.NODE_AGENT,
        tenant=None,
        user_id=None,
        node_id=body.node_id,
        name=body.name or (f"node {body.node_id}" if body.node_id else "node agents"),
        expires_in_s=body.expires_in_s,
    )
    session.commit()
    return respond(created, 201)


def _token_scope(principal: Principal) -> Any:
    if principal.is_center_admin:
        return None
    if principal.is_tenant_admin:
        return API_TOKENS.c.tenant == principal.tenant
    return API_TOKENS.c.user_id == principal.user_id


@router.get("/tokens", response_model=Items[TokenOut], summary="Tokens you can manage (no secrets)")
def list_tokens(
    principal: CurrentPrincipal,
    session: ReadSession,
    user: Annotated[str | None, Query(description="only this user's tokens")] = None,
) -> Response:
    statement = select(API_TOKENS).order_by(API_TOKENS.c.created_at, API_TOKENS.c.id)
    clause = _token_scope(principal)
    if clause is not None:
        statement = statement.where(clause)
    if user:
        statement = statement.where(API_TOKENS.c.user_id == user)
    return respond({"items": [token_out(r) for r in session.execute(statement).mappings()]})


@router.delete("/tokens/{token_id}", status_code=204, summary="Revoke a token")
def revoke_token(token_id: TokenId, request: Request, principal: CurrentPrincipal, session: WriteSession) -> Response:
    statement = select(API_TOKENS).where(API_TOKENS.c.id == token_id)
    clause = _token_scope(principal)
    if clause is not None:
        statement = statement.where(clause)
    row = session.execute(statement).mappings().first()
    if row is None:
        raise not_found("token", token_id)
    if row["revoked_at"] is None:
        session.execute(update(API_TOKENS).where(API_TOKENS.c.id == token_id).values(revoked_at=time.time()))
        session.commit()
    context(request).auth.invalidate()
    return Response(status_code=204)


@router.get("/whoami", response_model=WhoAmI, summary="Who this token is")
def whoami(principal: CurrentPrincipal) -> Response:
    return respond(
        {
            "user": principal.user_id,
            "tenant": principal.tenant,
            "role": principal.role.value,
            "token_id": principal.token_id,
        }
    )
