"""``/v1/tenants``: tenants live in the policy document (type, tier, weight, domestic policy, active-job cap).

Creating or changing one writes a new policy version, validated whole (see :mod:`api.routers.queues`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response

from api.deps import CurrentPrincipal, Scope, WriteSession, context, require, respond
from api.enums import Role
from api.models import NAME_PATTERN, V1_PROBLEMS, Items, TenantIn, TenantOut, TenantPatch
from api.problems import Problem, not_found
from api.routers.queues import update_policy
from scheduler.tenancy import QueuePolicy, Tenant

router = APIRouter(prefix="/v1/tenants", tags=["tenants"], responses=V1_PROBLEMS)
TenantId = Annotated[str, Path(pattern=NAME_PATTERN)]


def tenant_out(policy: QueuePolicy, tenant_id: str) -> dict[str, Any]:
    tenant = policy.document.tenants.get(tenant_id) or policy.tenants.get(tenant_id) or Tenant()
    return {
        "id": tenant_id,
        "type": tenant.type.value,
        "tier": tenant.tier.value,
        "weight": tenant.weight,
        "domestic": tenant.domestic.value,
        "max_active_jobs": tenant.max_active_jobs,
        "queues": sorted(q for q in policy.queues if policy.tenant_of(q) == tenant_id),
    }


@router.get("", response_model=Items[TenantOut], summary="Every tenant (center admin)")
def list_tenants(request: Request, principal: CurrentPrincipal) -> Response:
    require(principal, Role.CENTER_ADMIN)
    policy = context(request).snapshots.policy.policy
    return respond({"items": [tenant_out(policy, t) for t in sorted(policy.tenants)]})


@router.get("/{tenant_id}", response_model=TenantOut, summary="Your tenant (center admins: any)")
def get_tenant(tenant_id: TenantId, request: Request, scope: Scope) -> Response:
    policy = context(request).snapshots.policy.policy
    if not scope.sees(tenant_id) or tenant_id not in policy.tenants:
        raise not_found("tenant", tenant_id)
    return respond(tenant_out(policy, tenant_id))


@router.post("", status_code=201, response_model=TenantOut, summary="Create a tenant (center admin)")
def create_tenant(body: TenantIn, request: Request, principal: CurrentPrincipal, session: WriteSession) -> Response:
    require(principal, Role.CENTER_ADMIN)
    ctx = context(request)

    def mutate(document: dict[str, Any]) -> None:
        tenants = document.setdefault("tenants", {})
        if body.id in tenants:
            raise Problem("conflict", f"tenant {body.id!r} already exists; change it with PATCH /v1/tenants/{body.id}")
        tenants[body.id] = body.model_dump(mode="json", exclude={"id"}, exclude_none=True)

    snapshot = update_policy(ctx, session, principal, mutate)
    return respond(tenant_out(snapshot.policy, body.id), 201, {"Location": f"/v1/tenants/{body.id}"})


@router.patch("/{tenant_id}", response_model=TenantOut, summary="Change a tenant (center admin)")
def patch_tenant(
    tenant_id: TenantId, body: TenantPatch, request: Request, principal: CurrentPrincipal, session: WriteSession
) -> Response:
    """Only the fields given change; ``"max_active_jobs": null`` removes the cap."""
    require(principal, Role.CENTER_ADMIN)
    ctx = context(request)
    changes = body.model_dump(mode="json", exclude_unset=True)

    def mutate(document: dict[str, Any]) -> None:
        tenants = document.setdefault("tenants", {})
        if tenant_id not in tenants:
            raise not_found("tenant", tenant_id)
        entry = dict(tenants[tenant_id])
        for key, value in changes.items():
            if value is None:
                entry.pop(key, None)
            else:
                entry[key] = value
        tenants[tenant_id] = entry

    snapshot = update_policy(ctx, session, principal, mutate)
    return respond(tenant_out(snapshot.policy, tenant_id))
