"""The tenant view: overview, jobs, a job, usage, capacity, services, tokens and users.

Every figure comes from the API's own route functions (:func:`api.ui.data.api_call`) called with the viewer's
:class:`~api.deps.TenantScope`, or from :mod:`api.ui.data` (the same scope); nothing here filters by tenant itself.
"""

from __future__ import annotations

import csv
import io
import math
import re
import time
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Form, Query, Request, Response
from fastapi.responses import PlainTextResponse, RedirectResponse
from pydantic import ValidationError
from sqlalchemy import func, select

from api.deps import ReadSession, WriteSession
from api.models import TokenIn, UserIn
from api.problems import Problem, from_pydantic
from api.routers import jobs as jobs_api
from api.routers import nodes as nodes_api
from api.routers import queues as queues_api
from api.routers import usage as usage_api
from api.routers import users_tokens as tokens_api
from api.tables import JOBS
from api.ui import data, fmt
from api.ui.i18n import Translator
from api.ui.session import SESSION_NAME, Viewer, resolve
from api.ui.web import Page, UiRoute, language, render, to_toast
from scheduler.model import JobKind
from scheduler.spec import ACTIVE_STATES, HOLDING_STATES, TERMINAL_STATES, JobState

router = APIRouter(route_class=UiRoute)
ViewerDep = Annotated[Viewer, Depends(resolve)]
JOB_ID = re.compile(jobs_api.JOB_ID)
PAGE_SIZE = 50
IDLE_PCT = 5.0
TABS = ("all", "active", *[s.value for s in JobState])
REASON_HINTS = {
    "no-capacity": "Every acceptable pool is busy right now; the job starts when running jobs finish.",
    "model-mismatch": "No pool has the models the job accepts; allow more models.",
    "topology": "The job needs its workers close together (one node/island) and no such group is free.",
    "fragmentation": "Enough devices are free in total, but not on few enough nodes; it waits for whole nodes.",
    "quota": "The queue is at its quota limit; it starts when the queue's other jobs finish.",
    "flavor": "The queue has no quota for this model.",
    "reservation": "Devices are held for a larger, older job that starts first.",
    "priority": "Jobs of higher priority go first.",
    "unschedulable": "No pool of the installed inventory could ever run it as specified.",
}


# ------------------------------------------------------------------------------------------------ helpers


def job_devices(job: Mapping[str, Any]) -> tuple[str, float]:
    """``(models, devices)`` a job asks for."""
    spec = job["spec"]
    models = ", ".join(spec.get("models") or ()) or "any"
    return models, spec.get("workers", 1) * spec.get("devices_per_worker", 1)


def job_row(job: Mapping[str, Any], now: float) -> dict[str, Any]:
    models, count = job_devices(job)
    state = job["state"]
    if state == JobState.PENDING.value:
        span = ("waited {d}", now - job["submitted_at"])
    elif job["started_at"] is not None:
        span = ("ran {d}", (job["finished_at"] or now) - job["started_at"])
    else:
        span = ("waited {d}", (job["finished_at"] or now) - job["submitted_at"])
    return {**job, "models": models, "device_count": count, "span": span, "active": state not in TERMINAL_VALUES}


TERMINAL_VALUES = frozenset(s.value for s in TERMINAL_STATES)
ACTIVE_VALUES = frozenset(s.value for s in ACTIVE_STATES)


def stale_after_s(ctx: Any) -> float:
    """How old a device's latest sample may be before the page calls it stale. An agent sends a sample when one is
    due (the telemetry interval the API grants, 30 s and more: ``Settings.telemetry_interval``) or sooner when the
    work or the health on the node changed, and only with a heartbeat: older than that plus two heartbeats, it has
    stopped sending. (Three heartbeat intervals, as before protocol 2, called a quiet device stale half the time.)"""
    heartbeat = float(ctx.settings.heartbeat_interval(ctx.snapshots.fleet_size()))
    return float(ctx.settings.telemetry_interval(heartbeat)) + 2 * heartbeat


def telemetry_view(device: Mapping[str, Any] | None, now: float, stale_after: float) -> dict[str, Any]:
    """The latest sample of a device as the page shows it: each value, or an :class:`Unknown` with the reason;
    ``stale`` once it is older than ``stale_after`` seconds (:func:`stale_after_s`)."""
    if device is None:
        reason = "node from a cluster file: no agent reports telemetry"
        return {k: fmt.Unknown(reason) for k in ("util", "memory", "power", "temperature")} | {
            "healthy": None,
            "health_reason": "",
            "age": None,
            "stale": False,
        }
    tel = device.get("telemetry") or {}
    missing = set(tel.get("fields_unavailable") or ())

    def value(key: str) -> Any:
        if not tel:
            return fmt.Unknown("no sample yet")
        if key in missing:
            return fmt.Unknown("this device does not report it")
        found = tel.get(key)
        return found if found is not None else fmt.Unknown("not reported by the agent")

    received = tel.get("sampled_at") or tel.get("received_at")
    age = now - received if received else None
    return {
        "util": value("utilization_pct"),
        "memory": value("memory_used_mib"),
        "memory_total": tel.get("memory_total_mib"),
        "power": value("power_w"),
        "temperature": value("temperature_c"),
        "healthy": device.get("healthy"),
        "health_reason": device.get("health_reason") or "",
        "xid": tel.get("xid_events") or [],
        "ecc": tel.get("ecc_uncorrectable_total"),
        "age": age,
        "sampled_at": received,
        "stale": age is not None and age > stale_after,
    }


def is_idle(view: Mapping[str, Any], since: float) -> bool:
    """Allocated but idle: a fresh sample taken after ``since`` (the allocation plus one heartbeat: an older
    sample says nothing about the job) shows under 5 % utilisation."""
    util = view["util"]
    sampled = view.get("sampled_at")
    fresh = sampled is not None and sampled >= since and not view["stale"]
    return isinstance(util, int | float) and util < IDLE_PCT and fresh


def quota_rows(queue: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per flavor of a queue: usage against guarantee / deserved / limit, and the borrowed part."""
    rows = []
    for flavor, quota in sorted(queue["quota"].items()):
        usage = float(queue["usage"].get(flavor, 0.0))
        nominal = quota["deserved"] if quota["deserved"] is not None else (quota["guarantee"] or None)
        borrowed = max(0.0, usage - nominal) if nominal is not None else 0.0
        rows.append({"flavor": flavor, "usage": usage, "borrowed": borrowed, **quota})
    return rows


def headroom(queues: list[Mapping[str, Any]], model: str, relative: float) -> float | None:
    """Devices of ``model`` the viewer's queues may still take (min over the limits that apply; None: no limit).

    Only top-level queues are looked at: a child's use is inside its parent's."""
    best: float | None = None
    found_any = False
    for queue in queues:
        if queue["parent"] is not None:
            continue
        room: float | None = None
        limited = False
        for flavor, amount_per_device in ((model, 1.0), ("ncu", relative)):
            quota = queue["quota"].get(flavor)
            if quota is None:
                continue
            found_any = True
            if quota["limit"] is None or amount_per_device <= 0:
                continue
            limited = True
            left = max(0.0, quota["limit"] - float(queue["usage"].get(flavor, 0.0))) / amount_per_device
            room = left if room is None else min(room, left)
        if not limited and found_any:
            return None
        if room is not None:
            best = room if best is None else max(best, room)
    if not found_any:
        return 0.0
    return best


def free_per_node(nodes: Sequence[Mapping[str, Any]], used: Mapping[str, set[int]]) -> dict[str, list[int]]:
    """Per model, the free healthy whole devices of each ready node."""
    out: dict[str, list[int]] = {}
    for node in nodes:
        line = out.setdefault(node["model"], [])
        if node["state"] == "ready":
            line.append(data.free_devices(node, used))
    return out


def has_quota(queues: list[Mapping[str, Any]], model: str) -> bool:
    return any(q["parent"] is None and (model in q["quota"] or "ncu" in q["quota"]) for q in queues)


# ------------------------------------------------------------------------------------------------ overview


@router.get("/")
def overview(request: Request, viewer: ViewerDep, session: ReadSession, panel: str | None = None) -> Response:
    ctx = request.app.state.ctx
    scope = viewer.scope
    now = time.time()

    def cards() -> dict[str, Any]:
        counts = data.state_counts(session, scope)
        usage = data.api_call(
            usage_api.get_usage, request=request, scope=scope, session=session, tenant=None, start=None, end=None
        )
        queues = data.api_call(queues_api.list_queues, request=request, scope=scope, session=session)["items"]
        held = sum(float(q["usage"].get("ncu", 0.0)) for q in queues if q["parent"] is None)
        return {
            "counts": counts,
            "running": sum(counts[s.value] for s in HOLDING_STATES),
            "pending": counts[JobState.PENDING.value],
            "oldest": data.oldest_pending(session, scope),
            "ncu_held": held,
            "usage": usage,
        }

    def quotas() -> dict[str, Any]:
        queues = data.api_call(queues_api.list_queues, request=request, scope=scope, session=session)["items"]
        return {"queues": [{**q, "rows": quota_rows(q)} for q in queues]}

    def runnow() -> dict[str, Any]:
        queues = data.api_call(queues_api.list_queues, request=request, scope=scope, session=session)["items"]
        nodes = data.node_list(ctx, session, now)
        used = nodes_api.allocated_devices(session)
        models: dict[str, dict[str, Any]] = {}
        for node in nodes:
            entry = models.setdefault(node["model"], {"model": node["model"], "free": 0, "one_node": 0})
            free = data.free_devices(node, used)
            entry["free"] += free
            entry["one_node"] = max(entry["one_node"], free)
        rows = []
        for model, entry in sorted(models.items()):
            room = None if scope.all_tenants else headroom(queues, model, ctx.throughput.relative(model, "generic"))
            can = entry["free"] if room is None else min(entry["free"], math.floor(room + 1e-9))
            if can > 0:
                why = ""
            elif entry["free"] == 0:
                why = "no free devices"
            else:
                why = "quota full" if has_quota(queues, model) else "no quota for this model"
            rows.append({**entry, "room": room, "can": can, "why": why})
        return {"runnow": rows}

    def trend() -> dict[str, Any]:
        start = now - 86400
        alloc = data.allocation_series(ctx, session, scope, start, now, 48, now)
        pending = data.pending_series(session, scope, start, now, 48, now)
        return {"alloc": alloc, "pending_series": pending}

    def latest() -> dict[str, Any]:
        page = data.api_call(
            jobs_api.list_jobs,
            scope=scope,
            session=session,
            state=None,
            queue=None,
            kind=None,
            name=None,
            tenant=None,
            limit=5,
            cursor=None,
        )
        return {"latest": [job_row(j, now) for j in page["items"]]}

    page = Page(
        request,
        viewer,
        "overview.html",
        {"cards": cards, "quotas": quotas, "runnow": runnow, "trend": trend, "latest": latest},
        "Overview",
    )
    return page.response(panel)


# ---------------------------------------------------------------------------------------------------- jobs


def _jobs_page(
    request: Request,
    viewer: Viewer,
    session: Any,
    *,
    template: str,
    title: str,
    tab: str,
    queue: str | None,
    kind: str | None,
    name: str | None,
    tenant: str | None,
    cursor: str | None,
    upto: str | None,
    panel: str | None,
    extra_panels: Mapping[str, Any] | None = None,
) -> Response:
    now = time.time()
    scope = viewer.scope.narrow(tenant or None)
    if tab not in TABS:
        raise Problem("not-found", f"no job state {tab!r}")
    for value, what in ((cursor, "cursor"), (upto, "upto")):
        if value and not JOB_ID.match(value):
            raise Problem("not-found", f"{what} is not a job id")
    kind_enum = JobKind(kind) if kind in {k.value for k in JobKind} else None
    states = {"all": None, "active": ",".join(sorted(ACTIVE_VALUES))}.get(tab, tab)
    filters: list[Any] = []
    if queue:
        filters.append(JOBS.c.queue == queue)
    if kind_enum is not None:
        filters.append(JOBS.c.kind == kind_enum.value)
    if name:
        filters.append(JOBS.c.name == name)

    def tabs() -> dict[str, Any]:
        counts = data.state_counts(session, scope, filters)
        counts["all"] = sum(counts.values())
        counts["active"] = sum(counts[s] for s in ACTIVE_VALUES)
        return {"counts": counts, "tab": tab}

    def table() -> dict[str, Any]:
        # A live refresh keeps the rows it showed (``upto``: the newest id on screen) and says how many are newer,
        # so rows never jump under the reader's pointer.
        anchor = upto if upto and not cursor else None
        page = data.api_call(
            jobs_api.list_jobs,
            scope=scope,
            session=session,
            state=states,
            queue=queue or None,
            kind=kind_enum,
            name=name or None,
            tenant=None,
            limit=PAGE_SIZE,
            # ``cursor`` lists ids below it; anchor + "0" is the smallest id above the anchor, so it stays listed
            cursor=anchor + "0" if anchor else cursor,
        )
        newer = 0
        if anchor:
            statement = scope.apply(select(func.count()).where(JOBS.c.id > anchor, *filters), JOBS.c.tenant)
            if states:
                statement = statement.where(JOBS.c.state.in_(states.split(",")))
            newer = int(session.execute(statement).scalar_one())
        items = page["items"]
        top = items[0]["id"] if items else None
        return {
            "jobs": [job_row(j, now) for j in items],
            "next_cursor": page["next_cursor"],
            "newer": newer,
            "top": anchor or top,
            "cursor": cursor,
        }

    panels: dict[str, Any] = {"tabs": tabs, "table": table, **(extra_panels or {})}
    page = Page(request, viewer, template, panels, title)
    return page.response(
        panel, tab=tab, filters={"queue": queue or "", "kind": kind or "", "name": name or "", "tenant": tenant or ""}
    )


@router.get("/jobs")
def jobs_list(
    request: Request,
    viewer: ViewerDep,
    session: ReadSession,
    state: str = "all",
    queue: str | None = None,
    kind: str | None = None,
    name: str | None = None,
    tenant: str | None = None,
    cursor: str | None = None,
    upto: str | None = None,
    panel: str | None = None,
) -> Response:
    return _jobs_page(
        request,
        viewer,
        session,
        template="jobs.html",
        title="Jobs",
        tab=state,
        queue=queue,
        kind=kind,
        name=name,
        tenant=tenant if viewer.is_admin else None,
        cursor=cursor,
        upto=upto,
        panel=panel,
    )


@router.get("/jobs/{job_id}")
def job_page(
    job_id: str, request: Request, viewer: ViewerDep, session: ReadSession, panel: str | None = None
) -> Response:
    if not JOB_ID.match(job_id):
        raise Problem("not-found", "no such job")
    ctx = request.app.state.ctx
    scope = viewer.scope
    now = time.time()
    interval = ctx.settings.heartbeat_interval_s
    stale_after = stale_after_s(ctx)

    def header() -> dict[str, Any]:
        job = data.api_call(jobs_api.get_job, job_id=job_id, scope=scope, session=session)
        ncu_hours, charge = data.job_usage(ctx, session, job_id, job["spec"].get("job_class", "generic"), now)
        currency = ctx.snapshots.policy.policy.prices.currency
        return {"job": job_row(job, now), "ncu_hours": ncu_hours, "charge": charge, "currency": currency}

    def why() -> dict[str, Any]:
        answer = data.api_call(jobs_api.job_why, job_id=job_id, scope=scope, session=session)
        eta = data.api_call(jobs_api.job_eta, job_id=job_id, scope=scope, session=session)
        reasons = [{**r, "hint": REASON_HINTS.get(r["code"], "")} for r in answer["reasons"]]
        return {"why": answer, "reasons": reasons, "eta": eta}

    def placement() -> dict[str, Any]:
        job = data.api_call(jobs_api.get_job, job_id=job_id, scope=scope, session=session)
        rows = []
        holding = job["state"] in {s.value for s in HOLDING_STATES}
        nodes: dict[str, Any] = {}
        for worker in (job["placement"] or {}).get("workers", ()):
            node_id = worker["node"]
            if node_id not in nodes:
                try:
                    nodes[node_id] = data.api_call(
                        nodes_api.get_node,
                        node_id=node_id,
                        request=request,
                        _principal=viewer.principal,
                        session=session,
                    )
                except Problem:
                    nodes[node_id] = None
            node = nodes[node_id]
            by_index = {d["index"]: d for d in node["devices"]} if node else {}
            for index in worker["devices"]:
                device = by_index.get(index) if node and node["devices"] else None
                view = telemetry_view(device, now, stale_after)
                rows.append(
                    {
                        "rank": worker["rank"],
                        "node": node_id,
                        "index": index,
                        "milli": worker["milli"],
                        "cpu_milli": worker.get("cpu_milli", 0),
                        "memory_mib": worker.get("memory_mib", 0),
                        "t": view,
                        "idle": holding and is_idle(view, (job["started_at"] or now) + interval),
                        "uuid": device["uuid"] if device else "",
                    }
                )
        return {"placement_rows": rows, "placement": job["placement"], "holding": holding}

    def events() -> dict[str, Any]:
        items = data.api_call(jobs_api.job_events, job_id=job_id, scope=scope, session=session, limit=1000)["items"]
        return {"events": items}

    def logs() -> dict[str, Any]:
        job = data.api_call(jobs_api.get_job, job_id=job_id, scope=scope, session=session)
        workers = int(job["spec"].get("workers", 1))
        return {
            "log_ranks": list(range(min(workers, 256))),
            "log_attempts": list(range(job["attempt"] + 1)),
            "attempt": job["attempt"],
            "spec_text": orjson.dumps(job["spec"], option=orjson.OPT_INDENT_2).decode(),
        }

    page = Page(
        request,
        viewer,
        "job.html",
        {"header": header, "why": why, "placement": placement, "events": events, "logs": logs},
        "Job",
    )
    return page.response(panel, job_id=job_id)


@router.post("/jobs/{job_id}/cancel")
def cancel(job_id: str, request: Request, viewer: ViewerDep, session: WriteSession) -> Response:
    if not JOB_ID.match(job_id):
        raise Problem("not-found", "no such job")
    job = data.api_call(jobs_api.cancel_job, job_id=job_id, scope=viewer.scope, session=session)
    t = Translator(language(request))
    message = t("cancelling") if job["state"] == JobState.CANCELLING.value else t("cancelled")
    if request.headers.get("hx-request") != "true":
        return RedirectResponse(f"/ui/jobs/{job_id}", status_code=303)
    return render(
        request,
        "toast.html",
        {"message": f"{job['name']}: {message}", "status": 202},
        headers={**to_toast(request), "HX-Trigger": "zs:jobs"},
    )


@router.get("/jobs/{job_id}/logs.json")
def job_log_chunk(
    job_id: str,
    viewer: ViewerDep,
    session: ReadSession,
    rank: Annotated[int, Query(ge=0, le=100_000)] = 0,
    offset: Annotated[int, Query(ge=0)] = 0,
    attempt: Annotated[int | None, Query(ge=0)] = None,
) -> Response:
    """The API's log chunk for the page's live tail (the page appends it as text, never as markup)."""
    if not JOB_ID.match(job_id):
        raise Problem("not-found", "no such job")
    chunk = data.api_call(
        jobs_api.job_logs,
        job_id=job_id,
        scope=viewer.scope,
        session=session,
        rank=rank,
        offset=offset,
        limit=65536,
        attempt=attempt,
    )
    return Response(orjson.dumps(chunk), media_type="application/json")


@router.get("/jobs/{job_id}/logs.txt")
def job_log_download(
    job_id: str,
    viewer: ViewerDep,
    session: ReadSession,
    rank: Annotated[int, Query(ge=0, le=100_000)] = 0,
    attempt: Annotated[int | None, Query(ge=0)] = None,
) -> Response:
    if not JOB_ID.match(job_id):
        raise Problem("not-found", "no such job")
    parts: list[str] = []
    offset = 0
    while True:
        chunk = data.api_call(
            jobs_api.job_logs,
            job_id=job_id,
            scope=viewer.scope,
            session=session,
            rank=rank,
            offset=offset,
            limit=1 << 20,
            attempt=attempt,
        )
        parts.append(chunk["text"])
        if chunk["next_offset"] == offset:
            break
        offset = chunk["next_offset"]
    return PlainTextResponse(
        "".join(parts),
        headers={"Content-Disposition": f'attachment; filename="{job_id}-rank{rank}.log"'},
    )


# ------------------------------------------------------------------------------------------------- usage


def month_range(month: str | None, now: float) -> tuple[float, float, str]:
    start = fmt.parse_month(month) if month else None
    if start is None:
        start, end = usage_api.month_bounds(now)
    else:
        end = usage_api.month_bounds(start + 86400)[1]
    return start, end, fmt.month_label(start)


@router.get("/usage")
def usage_page(
    request: Request, viewer: ViewerDep, session: ReadSession, month: str | None = None, panel: str | None = None
) -> Response:
    now = time.time()
    start, end, label = month_range(month, now)

    def summary() -> dict[str, Any]:
        usage = data.api_call(
            usage_api.get_usage, request=request, scope=viewer.scope, session=session, tenant=None, start=start, end=end
        )
        return {"usage": usage}

    months = [fmt.month_label(usage_api.month_bounds(now)[0] - 86400 * 28 * i - 1) for i in range(0, 12)]
    months = sorted(set([fmt.month_label(now), *months]), reverse=True)
    page = Page(request, viewer, "usage.html", {"summary": summary}, "Usage")
    return page.response(panel, month=label, months=months)


def usage_csv(usage: Mapping[str, Any], tenant_lines: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """CSV of a usage answer: one line per model and per queue (and per tenant for the center's billing)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["group", "key", "ncu_hours", "device_hours", "charge", "currency"])
    for group in ("by_model", "by_queue"):
        for key, line in sorted(usage[group].items()):
            writer.writerow(
                [
                    group.removeprefix("by_"),
                    _cell(key),
                    f"{line['ncu_hours']:.6f}",
                    f"{line['device_hours']:.6f}",
                    f"{line['charge']:.6f}",
                    usage["currency"],
                ]
            )
    for key, line in sorted((tenant_lines or {}).items()):
        writer.writerow(
            [
                "tenant",
                _cell(key),
                f"{line['ncu_hours']:.6f}",
                f"{line['device_hours']:.6f}",
                f"{line['charge']:.6f}",
                usage["currency"],
            ]
        )
    writer.writerow(
        [
            "total",
            "",
            f"{usage['ncu_hours']:.6f}",
            f"{usage['device_hours']:.6f}",
            f"{usage['charge']:.6f}",
            usage["currency"],
        ]
    )
    writer.writerow(["billable", "", "", "", f"{usage['billable_charge']:.6f}", usage["currency"]])
    return out.getvalue()


def _cell(value: str) -> str:
    """A cell a spreadsheet will not run as a formula (names are tenant-chosen text)."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


@router.get("/usage.csv")
def usage_download(request: Request, viewer: ViewerDep, session: ReadSession, month: str | None = None) -> Response:
    start, end, label = month_range(month, time.time())
    usage = data.api_call(
        usage_api.get_usage, request=request, scope=viewer.scope, session=session, tenant=None, start=start, end=end
    )
    name = f"zhisuan-usage-{viewer.scope.tenant or 'center'}-{label}.csv"
    return Response(
        usage_csv(usage),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


# ------------------------------------------------------------------------------------------ capacity, services


@router.get("/capacity")
def capacity(request: Request, viewer: ViewerDep, session: ReadSession, panel: str | None = None) -> Response:
    ctx = request.app.state.ctx

    def pools() -> dict[str, Any]:
        nodes = data.node_list(ctx, session, time.time())
        return {"pools": data.pools(ctx, nodes, nodes_api.allocated_devices(session))}

    return Page(request, viewer, "capacity.html", {"pools": pools}, "Capacity").response(panel)


@router.get("/services")
def services(request: Request, viewer: ViewerDep, session: ReadSession, panel: str | None = None) -> Response:
    """PLACEHOLDER for the serving issue (16): inference jobs and their replicas from the job records. Endpoint,
    request rate and latency against the SLO are shown as unknown until serving reports them."""
    now = time.time()

    def inference() -> dict[str, Any]:
        page = data.api_call(
            jobs_api.list_jobs,
            scope=viewer.scope,
            session=session,
            state=",".join(sorted(ACTIVE_VALUES)),
            queue=None,
            kind=JobKind.INFERENCE,
            name=None,
            tenant=None,
            limit=200,
            cursor=None,
        )
        rows = []
        for job in page["items"]:
            placed = len((job["placement"] or {}).get("workers", ()))
            rows.append(
                {
                    **job_row(job, now),
                    "replicas": job["spec"].get("workers", 1),
                    "placed": placed,
                    "slo": job["spec"].get("slo"),
                }
            )
        return {"services": rows}

    return Page(request, viewer, "services.html", {"inference": inference}, "Services").response(panel)


# ------------------------------------------------------------------------------------------ tokens and users


@router.get("/tokens")
def tokens_page(request: Request, viewer: ViewerDep, session: ReadSession, panel: str | None = None) -> Response:
    def tokens() -> dict[str, Any]:
        answer = data.api_call(tokens_api.list_tokens, principal=viewer.principal, session=session, user=None)
        return {"tokens": answer["items"], "session_name": SESSION_NAME}

    return Page(request, viewer, "tokens.html", {"tokens": tokens}, "Tokens").response(panel, created=None)


@router.post("/tokens")
def token_create(
    request: Request,
    viewer: ViewerDep,
    session: WriteSession,
    name: Annotated[str, Form(max_length=200)] = "",
    expires_in_s: Annotated[str, Form(max_length=20)] = "",
    user: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    try:
        body = TokenIn.model_validate(
            {"name": name, "user": user or None, "expires_in_s": float(expires_in_s) if expires_in_s.strip() else None}
        )
    except ValueError as err:
        problem = (
            from_pydantic(err)
            if isinstance(err, ValidationError)
            else Problem("validation-error", "expires_in_s: write a number of seconds, or leave it empty")
        )
        raise problem from None
    created = data.api_call(tokens_api.create_token, body=body, principal=viewer.principal, session=session)
    answer = data.api_call(tokens_api.list_tokens, principal=viewer.principal, session=session, user=None)
    page = Page(request, viewer, "tokens.html", {}, "Tokens")
    return render(
        request,
        "panels/tokens.html",
        {"viewer": viewer, "page": page, "tokens": answer["items"], "created": created, "session_name": SESSION_NAME},
    )


@router.post("/tokens/{token_id}/revoke")
def token_revoke(token_id: str, request: Request, viewer: ViewerDep, session: WriteSession) -> Response:
    if not re.fullmatch(r"[0-9a-f]{16}", token_id):
        raise Problem("not-found", "no such token")
    tokens_api.revoke_token(token_id=token_id, request=request, principal=viewer.principal, session=session)
    if token_id == viewer.principal.token_id:
        response = Response(status_code=200, headers={"HX-Redirect": "/ui/login"})
        response.delete_cookie("zs_ui", path="/ui")
        return response
    answer = data.api_call(tokens_api.list_tokens, principal=viewer.principal, session=session, user=None)
    page = Page(request, viewer, "tokens.html", {}, "Tokens")
    return render(
        request,
        "panels/tokens.html",
        {"viewer": viewer, "page": page, "tokens": answer["items"], "created": None, "session_name": SESSION_NAME},
    )


@router.get("/users")
def users_page(request: Request, viewer: ViewerDep, session: ReadSession, panel: str | None = None) -> Response:
    if not viewer.can_manage_users:
        raise Problem("not-found", "no such page")

    def users() -> dict[str, Any]:
        answer = data.api_call(
            tokens_api.list_users, principal=viewer.principal, scope=viewer.scope, session=session, tenant=None
        )
        return {"users": answer["items"]}

    return Page(request, viewer, "users.html", {"users": users}, "Users").response(panel, form_errors=[])


@router.post("/users")
def user_create(
    request: Request,
    viewer: ViewerDep,
    session: WriteSession,
    name: Annotated[str, Form(max_length=200)] = "",
    role: Annotated[str, Form(max_length=40)] = "tenant-user",
    tenant: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    if not viewer.can_manage_users:
        raise Problem("not-found", "no such page")
    errors: list[dict[str, Any]] = []
    try:
        body = UserIn.model_validate({"name": name, "role": role, "tenant": tenant or None})
        tokens_api.create_user(body=body, request=request, principal=viewer.principal, session=session)
    except ValidationError as err:
        errors = from_pydantic(err).errors or []
    except Problem as problem:
        if problem.status >= 500:
            raise
        errors = problem.errors or [{"loc": [], "msg": problem.detail}]
    answer = data.api_call(
        tokens_api.list_users, principal=viewer.principal, scope=viewer.scope, session=session, tenant=None
    )
    page = Page(request, viewer, "users.html", {}, "Users")
    return render(
        request,
        "panels/users.html",
        {"viewer": viewer, "page": page, "users": answer["items"], "form_errors": errors},
        422 if errors else 200,
    )
