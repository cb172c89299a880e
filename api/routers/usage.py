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
from sqlalchemy import func, select
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


#: The start entry of a run still open (a job in a holding state whose latest ledger entry is a start):
#: job id, tenant, model, queue, at, devices, price per NCU-hour, domestic, the job's class (from its spec).
#: A plain tuple: the garbage collector stops tracking tuples of strings and numbers, so the thousands a center
#: page holds never count towards a full collection.
OpenRun = tuple[str, str, str, str, float, float, float, bool, str | None]


def open_runs(session: Session, scope: TenantScope) -> list[OpenRun]:
    """The open runs in the scope, in the order their jobs' first entries were written.

    One join reads the entries of the holding jobs with each job's class (taken out of the spec by the database,
    not by decoding every spec). Kept in ``session.info`` for the session's life (a read session per request),
    so a page that shows the month's usage and the allocation trend (the center overview) reads them once."""
    key = ("api.routers.usage.open_runs", scope.tenant)
    cached: list[OpenRun] | None = session.info.get(key)
    if cached is not None:
        return cached
    entries = session.execute(
        scope.apply(
            select(
                LEDGER.c.job_id,
                LEDGER.c.kind,
                LEDGER.c.tenant,
                LEDGER.c.model,
                LEDGER.c.queue,
                LEDGER.c.at,
                LEDGER.c.devices,
                LEDGER.c.price_per_ncu_hour,
                LEDGER.c.domestic,
                JOBS.c.spec["job_class"].as_string(),
            )
            .select_from(LEDGER.join(JOBS, JOBS.c.id == LEDGER.c.job_id))
            .where(JOBS.c.state.in_([s.value for s in HOLDING_STATES]))
            .order_by(LEDGER.c.at, LEDGER.c.id),
            JOBS.c.tenant,
        )
    )
    latest: dict[str, Any] = {}
    for entry in entries:
        latest[entry[0]] = tuple(entry)  # not the row: rows kept across the loop reach the GC's oldest generation
    runs: list[OpenRun] = [(job_id, *rest) for job_id, kind, *rest in latest.values() if kind == "start"]
    session.info[key] = runs
    return runs


def compute_usage(
    ctx: AppContext, session: Session, scope: TenantScope, start: float, end: float, now: float
) -> dict[str, Any]:
    lines: list[tuple[str, str, str, float, float, float, float, bool]] = []  # tenant, model, queue, ncu, dh, $, kWh
    # Finished runs wholly inside the period count in full: the database adds them up per (tenant, model, queue,
    # domestic), a few dozen lines however many thousand runs a center's month holds (the row-by-row read grew
    # with the day of the month: 17 ms on the 6th, 38 ms for 30 days of the benchmark's ledger). Only the runs
    # that cross an edge of the period are read one by one, for their share. The sums are the same but for the
    # order of the additions (last bits of a float).
    seconds_or_0 = func.coalesce(LEDGER.c.seconds, 0.0)
    stop_rows = (LEDGER.c.kind == "stop", LEDGER.c.at > start, LEDGER.c.at - LEDGER.c.seconds < end)
    inside = (LEDGER.c.at - seconds_or_0 >= start) & (LEDGER.c.at <= end)
    groups = session.execute(
        scope.apply(
            select(
                LEDGER.c.tenant,
                LEDGER.c.model,
                LEDGER.c.queue,
                func.sum(LEDGER.c.ncu_hours),
                func.sum(LEDGER.c.devices * seconds_or_0),
                func.sum(LEDGER.c.charge),
                func.sum(func.coalesce(LEDGER.c.energy_kwh, 0.0)),
                LEDGER.c.domestic,
            )
            .where(*stop_rows, inside)
            .group_by(LEDGER.c.tenant, LEDGER.c.model, LEDGER.c.queue, LEDGER.c.domestic),
            LEDGER.c.tenant,
        )
    )
    for tenant, model_name, queue, ncu_hours, device_seconds, charge, energy_kwh, domestic in groups:
        lines.append(
            (
                tenant,
                model_name,
                queue,
                float(ncu_hours or 0.0),
                float(device_seconds or 0.0) / 3600,
                float(charge or 0.0),
                float(energy_kwh or 0.0),
                bool(domestic),
            )
        )
    edges = session.execute(
        scope.apply(
            select(
                LEDGER.c.tenant,
                LEDGER.c.model,
                LEDGER.c.queue,
                LEDGER.c.at,
                LEDGER.c.seconds,
                LEDGER.c.ncu_hours,
                LEDGER.c.devices,
                LEDGER.c.charge,
                LEDGER.c.energy_kwh,
                LEDGER.c.domestic,
            ).where(*stop_rows, ~inside),
            LEDGER.c.tenant,
        )
    )
    for tenant, model_name, queue, at, seconds, ncu_hours, devices, charge, energy_kwh, domestic in edges:
        seconds = seconds or 0.0
        began = at - seconds
        overlap = max(0.0, min(at, end) - max(began, start))
        share = overlap / seconds if seconds > 0 else (1.0 if start < at <= end else 0.0)
        lines.append(
            (
                tenant,
                model_name,
                queue,
                ncu_hours * share,
                devices * overlap / 3600,
                charge * share,
                (energy_kwh or 0.0) * share,
                bool(domestic),
            )
        )
    # Open runs: jobs holding devices whose latest ledger entry is a start.
    if start < now:
        relative: dict[tuple[str, str], float] = {}  # a few models and classes, thousands of runs
        tdp_w: dict[str, float | None] = {}
        for _, tenant, model_name, queue, at, devices, price, domestic, klass in open_runs(session, scope):
            overlap = max(0.0, min(now, end) - max(at, start))
            if overlap <= 0:
                continue
            device_hours = devices * overlap / 3600
            key = (model_name, klass or "generic")
            if key not in relative:
                relative[key] = ctx.throughput.relative(*key)
            ncu = device_hours * relative[key]
            if model_name not in tdp_w:
                model = ctx.catalog.lookup(model_name)
                tdp_w[model_name] = None if model is None else model.tdp_w or 0.0
            tdp = tdp_w[model_name]
            energy = tdp * device_hours / 1000 if tdp is not None else 0.0
            lines.append((tenant, model_name, queue, ncu, device_hours, ncu * price, energy, bool(domestic)))
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
