"""``/v1/queues``: the queue tree and quotas in force (read), and writes by center admins.

A write builds a whole new policy document, validates it with :func:`scheduler.tenancy.parse_policy` (cycles,
guarantees above the parent's, unknown flavors ...) and inserts it as a new version in one transaction; an
invalid one is a 422 naming the queue and field, and the version in force does not change.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response
from sqlalchemy import func, insert, select, text
from sqlmodel import Session

from api.auth import Principal
from api.db import is_sqlite
from api.deps import AppContext, CurrentPrincipal, ReadSession, Scope, WriteSession, context, require, respond
from api.enums import Role
from api.models import V1_PROBLEMS, Items, QueueOut
from api.problems import Problem, not_found
from api.store import PolicySnapshot
from api.tables import JOBS, POLICY_VERSIONS
from scheduler.errors import ConfigError
from scheduler.spec import ACTIVE_STATES, HOLDING_STATES
from scheduler.tenancy import QueuePolicy, QueueSpec, parse_policy

router = APIRouter(prefix="/v1/queues", tags=["queues"], responses=V1_PROBLEMS)
QueueName = Annotated[str, Path(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")]
ADVISORY_LOCK_POLICY = 0x5A53504F4C  # "ZSPOL"


def update_policy(
    ctx: AppContext, session: Session, principal: Principal, mutate: Callable[[dict[str, Any]], None]
) -> PolicySnapshot:
    """Apply ``mutate`` to a copy of the document in force, validate it whole, store it as the next version.

    Runs in the caller's write session and commits it; two concurrent writers are serialised (SQLite: one
    write transaction at a time; PostgreSQL: an advisory lock), so neither loses the other's change.
    """
    if not is_sqlite(ctx.engine):
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_POLICY})
    row = session.execute(select(POLICY_VERSIONS).order_by(POLICY_VERSIONS.c.id.desc()).limit(1)).mappings().first()
    document: dict[str, Any] = copy.deepcopy(dict(row["document"])) if row is not None else {}
    mutate(document)
    try:
        policy = parse_policy(document, "policy", ctx.catalog)
    except ConfigError as err:
        raise Problem(
            "validation-error",
            f"{err.field}: {err.problem}"
            + (f" (allowed: {', '.join(err.allowed)})" if err.allowed else "")
            + "; the policy in force is unchanged",
            errors=[{"loc": ["policy", *err.field.split(".")], "msg": err.problem, "type": "value_error"}],
        ) from None
    stored = policy.document.model_dump(mode="json")
    now = time.time()
    author = principal.user_id or principal.token_id
    version = session.execute(
        insert(POLICY_VERSIONS).values(document=stored, created_at=now, author=author).returning(POLICY_VERSIONS.c.id)
    ).scalar_one()
    session.commit()
    snapshot = PolicySnapshot(int(version), policy, now)
    ctx.snapshots.set_policy(snapshot)
    return snapshot


def _subtree(policy: QueuePolicy, name: str) -> list[str]:
    out = [name]
    for child in policy.children.get(name, []):
        out.extend(_subtree(policy, child))
    return out


def queue_out(policy: QueuePolicy, version: int, name: str, stats: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    spec = policy.queues[name]
    usage: dict[str, float] = {}
    pending = running = 0
    for member in _subtree(policy, name):
        found = stats.get(member)
        if found is None:
            continue
        pending += found["pending"]
        running += found["running"]
        for flavor, amount in found["usage"].items():
            usage[flavor] = usage.get(flavor, 0.0) + amount
    return {
        "name": name,
        "tenant": policy.tenant_of(name),
        "parent": spec.parent,
        "weight": spec.weight,
        "domestic": spec.domestic.value if spec.domestic is not None else None,
        "quota": {flavor: quota.model_dump(mode="json") for flavor, quota in spec.quota.items()},
        "usage": usage,
        "pending": pending,
        "running": running,
        "policy_version": version,
    }


def queue_stats(ctx: AppContext, session: Session, tenant: str | None) -> dict[str, dict[str, Any]]:
    """Per queue: pending and running counts, devices per model and NCU held (from running placements).

    Two indexed queries, neither of which reads a pending job: the pending count is a ``GROUP BY`` over the
    ``(tenant, state)`` index, and only jobs that hold devices — as many as the center has devices, at most — are
    read, and only their queue, placement and job class.
    """
    stats: dict[str, dict[str, Any]] = {}
    holding = [s.value for s in HOLDING_STATES]
    pending = [s.value for s in ACTIVE_STATES if s not in HOLDING_STATES]
    counts = select(JOBS.c.queue, func.count()).where(JOBS.c.state.in_(pending)).group_by(JOBS.c.queue)
    held = select(JOBS.c.queue, JOBS.c.placement, JOBS.c.spec["job_class"].as_string()).where(JOBS.c.state.in_(holding))
    if tenant is not None:
        counts = counts.where(JOBS.c.tenant == tenant)
        held = held.where(JOBS.c.tenant == tenant)
    for queue, count in session.execute(counts):
        stats.setdefault(queue, {"pending": 0, "running": 0, "usage": {}})["pending"] += int(count)
    for queue, placement, job_class in session.execute(held):
        entry = stats.setdefault(queue, {"pending": 0, "running": 0, "usage": {}})
        entry["running"] += 1
        if not placement:
            continue
        model = placement.get("model", "")
        devices = sum(len(w.get("devices", ())) * w.get("milli", 1000) for w in placement.get("workers", ())) / 1000
        usage = entry["usage"]
        usage[model] = usage.get(model, 0.0) + devices
        usage["ncu"] = usage.get("ncu", 0.0) + devices * ctx.throughput.relative(model, job_class or "generic")
    return stats


def _visible(policy: QueuePolicy, principal: Principal, name: str) -> bool:
    return name in policy.queues and (principal.is_center_admin or policy.tenant_of(name) == principal.tenant)


@router.get("", response_model=Items[QueueOut], summary="Queues you can use (center admins: all)")
def list_queues(request: Request, scope: Scope, session: ReadSession) -> Response:
    ctx = context(request)
    snapshot = ctx.snapshots.policy
    policy = snapshot.policy
    stats = queue_stats(ctx, session, scope.tenant)
    names = [n for n in sorted(policy.queues) if scope.sees(policy.tenant_of(n))]
    return respond({"items": [queue_out(policy, snapshot.version, n, stats) for n in names]})


@router.get("/{name}", response_model=QueueOut, summary="One queue")
def get_queue(name: QueueName, request: Request, scope: Scope, session: ReadSession) -> Response:
    ctx = context(request)
    snapshot = ctx.snapshots.policy
    if not _visible(snapshot.policy, scope.principal, name):
        raise not_found("queue", name)
    stats = queue_stats(ctx, session, scope.tenant)
    return respond(queue_out(snapshot.policy, snapshot.version, name, stats))


@router.put("/{name}", response_model=QueueOut, summary="Create or replace a queue (center admin)")
def put_queue(
    name: QueueName, spec: QueueSpec, request: Request, principal: CurrentPrincipal, session: WriteSession
) -> Response:
    """Body: a :class:`scheduler.tenancy.QueueSpec`. The whole policy is validated before it takes effect."""
    require(principal, Role.CENTER_ADMIN)
    ctx = context(request)

    def mutate(document: dict[str, Any]) -> None:
        queues = document.setdefault("queues", {})
        entry = spec.model_dump(mode="json", exclude_defaults=True)
        if spec.parent is None:
            tenant = spec.tenant or name
            if tenant not in document.get("tenants", {}):
                raise Problem(
                    "validation-error",
                    f"tenant: unknown tenant {tenant!r}; create it first (POST /v1/tenants) or set tenant",
                    errors=[{"loc": ["body", "tenant"], "msg": "unknown tenant", "type": "value_error"}],
                )
            entry["tenant"] = tenant
        queues[name] = entry

    snapshot = update_policy(ctx, session, principal, mutate)
    stats = queue_stats(ctx, session, None)
    return respond(queue_out(snapshot.policy, snapshot.version, name, stats))


@router.delete("/{name}", status_code=204, summary="Delete a queue with no active jobs (center admin)")
def delete_queue(name: QueueName, request: Request, principal: CurrentPrincipal, session: WriteSession) -> Response:
    require(principal, Role.CENTER_ADMIN)
    ctx = context(request)

    def mutate(document: dict[str, Any]) -> None:
        queues = document.get("queues", {})
        if name not in queues:
            raise not_found("queue", name)
        children = sorted(n for n, q in queues.items() if q.get("parent") == name)
        if children:
            raise Problem("conflict", f"queue {name!r} has child queues ({', '.join(children)}); delete them first")
        active = session.execute(
            select(func.count()).where(JOBS.c.queue == name, JOBS.c.state.in_([s.value for s in ACTIVE_STATES]))
        ).scalar_one()
        if active:
            raise Problem("conflict", f"queue {name!r} has {active} active jobs; cancel them or wait for them")
        del queues[name]

    update_policy(ctx, session, principal, mutate)
    return Response(status_code=204)
