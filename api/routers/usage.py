"""``/v1/usage``: NCU-hours, device-hours, energy and money of a tenant over a period, from the ledger.

Stop entries carry the amounts of a finished run; a run that overlaps the period's edges counts only for its
part inside the period. A job still running counts up to now, from its open start entry, at the price recorded
on it. Basic-tier tenants get ``prices.basic_free_ncu_hours`` free per period.
"""

from __future__ import annotations

import calendar
import time
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy import select
from sqlmodel import Session

from api.deps import AppContext, ReadSession, Scope, TenantScope, context, respond
from api.models import V1_PROBLEMS, UsageOut
from api.problems import Problem
from api.tables import JOBS, LEDGER
from scheduler.model import ServiceTier
from scheduler.spec import HOLDING_STATES

router = APIRouter(prefix="/v1/usage", tags=["usage"], responses=V1_PROBLEMS)


def month_bounds(now: float) -> tuple[float, float]:
    """The calendar month (UTC) containing ``now``.

    >>> month_bounds(1_700_000_000.0)  # 2023-11-14
    (1698796800.0, 1701388800.0)
    """
    day = datetime.fromtimestamp(now, UTC)
    start = datetime(day.year, day.month, 1, tzinfo=UTC)
    days = calendar.monthrange(day.year, day.month)[1]
    return start.timestamp(), start.timestamp() + days * 86400.0


def _add(bucket: dict[str, dict[str, float]], key: str, ncu: float, device_hours: float, charge: float) -> None:
    line = bucket.setdefault(key, {"ncu_hours": 0.0, "device_hours": 0.0, "charge": 0.0})
    line["ncu_hours"] += ncu
    line["device_hours"] += device_hours
    line["charge"] += charge


def compute_usage(
    ctx: AppContext, session: Session, scope: TenantScope, start: float, end: float, now: float
) -> dict[str, Any]:
    lines: list[tuple[str, str, str, float, float, float, float, bool]] = []  # tenant, model, queue, ncu, dh, $, kWh
    stops = session.execute(
        scope.apply(
            select(LEDGER).where(LEDGER.c.kind == "stop", LEDGER.c.at > start, LEDGER.c.at - LEDGER.c.seconds < end),
            LEDGER.c.tenant,
        )
    ).mappings()
    for row in stops:
        seconds = row["seconds"] or 0.0
        began = row["at"] - seconds
        overlap = max(0.0, min(row["at"], end) - max(began, start))
        share = overlap / seconds if seconds > 0 else (1.0 if start < row["at"] <= end else 0.0)
        lines.append(
            (
                row["tenant"],
                row["model"],
                row["queue"],
                row["ncu_hours"] * share,
                row["devices"] * overlap / 3600,
                row["charge"] * share,
                (row["energy_kwh"] or 0.0) * share,
                bool(row["domestic"]),
            )
        )
    # Open runs: jobs holding devices whose latest ledger entry is a start.
    holding = session.execute(
        scope.apply(
            select(JOBS.c.id, JOBS.c.spec).where(JOBS.c.state.in_([s.value for s in HOLDING_STATES])), JOBS.c.tenant
        )
    ).all()
    classes = {job_id: (spec or {}).get("job_class", "generic") for job_id, spec in holding}
    if classes and start < now:
        latest: dict[str, Any] = {}
        entries = session.execute(
            select(LEDGER).where(LEDGER.c.job_id.in_(list(classes))).order_by(LEDGER.c.at, LEDGER.c.id)
        ).mappings()
        for entry in entries:
            latest[entry["job_id"]] = entry
        for job_id, entry in latest.items():
            if entry["kind"] != "start":
                continue
            overlap = max(0.0, min(now, end) - max(entry["at"], start))
            if overlap <= 0:
                continue
            device_hours = entry["devices"] * overlap / 3600
            ncu = device_hours * ctx.throughput.relative(entry["model"], classes[job_id])
            model = ctx.catalog.lookup(entry["model"])
            energy = (model.tdp_w or 0.0) * device_hours / 1000 if model is not None else 0.0
            lines.append(
                (
                    entry["tenant"],
                    entry["model"],
                    entry["queue"],
                    ncu,
                    device_hours,
                    ncu * entry["price_per_ncu_hour"],
                    energy,
                    bool(entry["domestic"]),
                )
            )
    policy = ctx.snapshots.policy.policy
    prices = policy.prices
    by_model: dict[str, dict[str, float]] = {}
    by_queue: dict[str, dict[str, float]] = {}
    per_tenant: dict[str, dict[str, float]] = {}
    ncu_total = device_hours_total = charge_total = energy_total = domestic_ncu = 0.0
    for tenant, model_name, queue, ncu, device_hours, charge, energy, domestic in lines:
        _add(by_model, model_name, ncu, device_hours, charge)
        _add(by_queue, queue, ncu, device_hours, charge)
        _add(per_tenant, tenant, ncu, device_hours, charge)
        ncu_total += ncu
        device_hours_total += device_hours
        charge_total += charge
        energy_total += energy
        domestic_ncu += ncu if domestic else 0.0
    free_total = billable_total = 0.0
    tenants = [scope.tenant] if scope.tenant is not None else sorted(per_tenant)
    for tenant in tenants:
        line = per_tenant.get(tenant, {"ncu_hours": 0.0, "charge": 0.0})
        free = 0.0
        if policy.tier(tenant) is ServiceTier.BASIC:
            free = min(line["ncu_hours"], prices.basic_free_ncu_hours)
        free_total += free
        basic_price = prices.per_ncu_hour.get(ServiceTier.BASIC, 0.0)
        billable_total += max(0.0, line["charge"] - free * basic_price)
    return {
        "tenant": scope.tenant,
        "start": start,
        "end": end,
        "ncu_hours": ncu_total,
        "device_hours": device_hours_total,
        "charge": charge_total,
        "free_ncu_hours": free_total,
        "billable_charge": billable_total,
        "currency": prices.currency,
        "energy_kwh": energy_total,
        "domestic_share": domestic_ncu / ncu_total if ncu_total else 0.0,
        "by_model": by_model,
        "by_queue": by_queue,
    }


@router.get("", response_model=UsageOut, summary="Usage and bill of a tenant over a period")
def get_usage(
    request: Request,
    scope: Scope,
    session: ReadSession,
    tenant: Annotated[str | None, Query(description="center admins: one tenant (default: all)")] = None,
    start: Annotated[float | None, Query(ge=0, description="epoch seconds; default: start of this month (UTC)")] = None,
    end: Annotated[float | None, Query(ge=0, description="epoch seconds; default: end of this month (UTC)")] = None,
) -> Response:
    scope = scope.narrow(tenant)
    now = time.time()
    month_start, month_end = month_bounds(now)
    start = month_start if start is None else start
    end = month_end if end is None else end
    if end <= start:
        raise Problem(
            "validation-error",
            f"end ({end:g}) must be after start ({start:g})",
            errors=[{"loc": ["query", "end"], "msg": "must be after start", "type": "value_error"}],
        )
    return respond(compute_usage(context(request), session, scope, start, end, now))
