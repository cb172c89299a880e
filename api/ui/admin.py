"""The center view (center admins only; every other role gets 404): devices and their use, the node grid,
fragmentation, queues and tenants with the queue editor, all jobs, nodes, billing per tenant, simulator reports.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import FileResponse
from markupsafe import Markup, escape
from pydantic import ValidationError
from sqlalchemy import select

from api.deps import ReadSession, WriteSession
from api.problems import Problem, from_pydantic
from api.routers import nodes as nodes_api
from api.routers import queues as queues_api
from api.routers import tenants as tenants_api
from api.routers import usage as usage_api
from api.tables import JOBS
from api.ui import data
from api.ui.i18n import Translator
from api.ui.pages import (
    IDLE_PCT,
    _jobs_page,
    month_range,
    quota_rows,
    stale_after_s,
    usage_csv,
)
from api.ui.session import Viewer, resolve
from api.ui.web import Page, UiRoute, config, language, render, require_admin
from scheduler.spec import JobState
from scheduler.tenancy import QueueSpec

router = APIRouter(prefix="/admin", route_class=UiRoute)


async def admin_viewer(request: Request) -> Viewer:
    viewer = await resolve(request)
    require_admin(viewer)
    return viewer


AdminDep = Annotated[Viewer, Depends(admin_viewer)]
QUEUE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")


# -------------------------------------------------------------------------------------------------- center


@router.get("")
def center(request: Request, viewer: AdminDep, session: ReadSession, panel: str | None = None) -> Response:
    ctx = request.app.state.ctx
    scope = viewer.scope
    now = time.time()
    interval = ctx.settings.heartbeat_interval_s
    stale_after = stale_after_s(ctx)  # the job page's rule for a device's latest sample

    @functools.cache
    def holding() -> tuple[dict[str, tuple[tuple[str, int], ...]], dict[str, float | None]]:
        """The devices jobs hold and when those jobs started: one query, however many panels want them."""
        return data.holding_work(session)

    @functools.cache
    def inventory() -> tuple[list[dict[str, Any]], dict[str, tuple[int, ...]], dict[str, int]]:
        """Nodes, allocated devices and each node's free healthy devices, read and counted once per request.
        The allocated indices of a node as a tuple (a handful; a set per node would stay tracked by the GC)."""
        nodes = data.node_list(ctx, session, now)
        used = {n: tuple(sorted({index for _, index in ws})) for n, ws in holding()[0].items()}
        return nodes, used, {node["id"]: data.free_devices(node, used) for node in nodes}

    def devices() -> dict[str, Any]:
        nodes, used, free = inventory()
        work, started = holding()
        telemetry = data.allocated_utilisation(session, used)
        holders = data.allocated_by_device(work)
        models: dict[str, dict[str, Any]] = {}
        idle: list[dict[str, Any]] = []
        for node in nodes:
            entry = models.setdefault(
                node["model"],
                {
                    "model": node["model"],
                    "total": 0,
                    "allocated": 0,
                    "free": 0,
                    "unhealthy": 0,
                    "down": 0,
                    "util_sum": 0.0,
                    "util_n": 0,
                    "util_unknown": 0,
                    "idle": 0,
                    "healthy": 0,
                },
            )
            entry["total"] += node["device_count"]
            if node["state"] == "down":
                entry["down"] += node["device_count"]
                continue
            entry["healthy"] += node["devices_healthy"]
            entry["free"] += free[node["id"]]
            entry["unhealthy"] += node["device_count"] - node["devices_healthy"]
            for index in used.get(node["id"], ()):  # sorted already
                entry["allocated"] += 1
                util, sampled_at = telemetry.get((node["id"], index), (None, None))
                fresh = sampled_at is not None and now - sampled_at <= stale_after
                if util is None or not fresh:
                    entry["util_unknown"] += 1
                    continue
                entry["util_sum"] += util
                entry["util_n"] += 1
                if util >= IDLE_PCT:
                    continue  # busy: when its jobs started does not matter
                jobs = holders.get((node["id"], index), ())
                since = max((started.get(j) or now for j in jobs), default=now)
                if (sampled_at or 0) >= since + interval:
                    entry["idle"] += 1
                    idle.append({"node": node["id"], "index": index, "util": util, "jobs": jobs})
        rows = []
        for model, entry in sorted(models.items()):
            relative = ctx.throughput.relative(model, "generic")
            rows.append(
                {
                    **entry,
                    "ncu_total": entry["total"] * relative,
                    "ncu_free": entry["free"] * relative,
                    "ratio": entry["allocated"] / entry["healthy"] if entry["healthy"] else None,
                    "util": entry["util_sum"] / entry["util_n"] if entry["util_n"] else None,
                    "domestic": bool((m := ctx.catalog.lookup(model)) and m.domestic),
                }
            )
        total_ncu = sum(r["ncu_total"] for r in rows)
        domestic_ncu = sum(r["ncu_total"] for r in rows if r["domestic"])
        return {
            "models": rows,
            "idle_devices": idle[:50],
            "idle_count": len(idle),
            "installed_domestic": domestic_ncu / total_ncu if total_ncu else None,
        }

    def jobs_cards() -> dict[str, Any]:
        counts = data.state_counts(session, scope)
        demand: dict[str, dict[str, float]] = {}
        unknown_ncu = 0
        spec = JOBS.c.spec
        pending = session.execute(
            select(
                spec["workers"].as_float(),
                spec["devices_per_worker"].as_float(),
                spec[("models", 0)].as_string(),
                spec["job_class"].as_string(),
            ).where(JOBS.c.state == JobState.PENDING.value)
        )
        for workers, per_worker, first_model, job_class in pending:
            count = (workers or 1) * (per_worker if per_worker is not None else 1)
            key = first_model or "any model"
            line = demand.setdefault(key, {"devices": 0.0, "ncu": 0.0, "jobs": 0})
            line["devices"] += count
            line["jobs"] += 1
            if first_model:
                line["ncu"] += count * ctx.throughput.relative(first_model, job_class or "generic")
            else:
                unknown_ncu += 1
        nodes, _, _ = inventory()
        agent = [n for n in nodes if n["source"] == "agent"]
        beats = [now - (n["last_heartbeat"] or n["registered_at"]) for n in agent if n["state"] != "down"]
        usage = data.api_call(
            usage_api.get_usage, request=request, scope=scope, session=session, tenant=None, start=None, end=None
        )
        return {
            "counts": counts,
            "running": sum(counts[s] for s in ("starting", "running", "cancelling")),
            "pending": counts["pending"],
            "demand": dict(sorted(demand.items())),
            "demand_ncu": sum(d["ncu"] for d in demand.values()),
            "preemptions": data.preemptions_since(session, scope, now - 86400),
            "down": sum(1 for n in nodes if n["state"] == "down"),
            "cordoned": sum(1 for n in nodes if n["state"] == "cordoned"),
            "oldest_beat": max(beats) if beats else None,
            "usage": usage,
        }

    def grid() -> dict[str, Any]:
        nodes, _, free = inventory()
        t = Translator(language(request))
        label = {"free": escape(t("Free"))}
        tree: dict[str, dict[str, dict[str, list[str]]]] = {}
        for node in nodes:
            healthy = node["devices_healthy"]
            count = free[node["id"]]
            state = node["state"]
            if state == "down":
                css = "down"
            elif state == "cordoned":
                css = "cordoned"
            elif count == 0:
                css = "full"
            elif count >= healthy:
                css = "all-free"
            else:
                css = "some-free"
            if healthy < node["device_count"]:
                css += " sick"
            if state not in label:
                label[state] = escape(t(state))
            # The cell as the template wrote it, built here: a thousand cells through Jinja were most of the
            # page's rendering time.
            node_id = escape(node["id"])
            tree.setdefault(node["pool"], {}).setdefault(node["island"] or "—", {}).setdefault(
                node["switch"] or "—", []
            ).append(
                f'<a class="cell {css}" href="/ui/admin/nodes/{node_id}" data-node="{node_id}" '
                f'title="{node_id}: {count}/{node["device_count"]} {label["free"]} · {label[state]}">{count}</a>'
            )
        return {
            "grid": {
                pool: {
                    island: {switch: Markup("".join(cells)) for switch, cells in switches.items()}
                    for island, switches in islands.items()
                }
                for pool, islands in tree.items()
            }
        }

    def fragmentation() -> dict[str, Any]:
        nodes, _, free = inventory()
        per_model: dict[str, list[int]] = {}  # free healthy devices of each ready node (pages.free_per_node)
        for node in nodes:
            line = per_model.setdefault(node["model"], [])
            if node["state"] == "ready":
                line.append(free[node["id"]])
        sizes = {n["model"]: n["device_count"] for n in nodes}
        rows = []
        for model, frees in sorted(per_model.items()):
            size = sizes.get(model, 0)
            histogram = [sum(1 for f in frees if f == k) for k in range(size + 1)]
            whole = sum(1 for f in frees if f >= size > 0)
            rows.append(
                {
                    "model": model,
                    "labels": [str(k) for k in range(size + 1)],
                    "histogram": histogram,
                    "one_node": max(frees, default=0),
                    "whole": whole,
                    "size": size,
                }
            )
        return {"fragments": rows}

    def trend() -> dict[str, Any]:
        start = now - 86400
        return {
            "alloc": data.allocation_series(ctx, session, scope, start, now, 48, now),
            "pending_series": data.pending_series(session, scope, start, now, 48, now),
        }

    panels = {"jobcards": jobs_cards, "devices": devices, "grid": grid, "fragmentation": fragmentation, "trend": trend}
    try:
        return Page(request, viewer, "admin/center.html", panels, "Center").response(panel)
    finally:
        # The rendered page keeps reference cycles (Jinja's context reaches the page and these closures) until
        # the cycle collector runs; emptied caches let the thousands of rows they hold go now, so they never
        # reach the oldest generation and set off a full collection (tens of ms, measured) in a later request.
        holding.cache_clear()
        inventory.cache_clear()


# ------------------------------------------------------------------------------------------ queues, tenants


def _flags(queue: Mapping[str, Any]) -> dict[str, Any]:
    starved = borrowing = False
    dominant: float | None = None
    for flavor, quota in queue["quota"].items():
        usage = float(queue["usage"].get(flavor, 0.0))
        nominal = quota["deserved"] if quota["deserved"] is not None else (quota["guarantee"] or None)
        if queue["pending"] > 0 and usage < quota["guarantee"]:
            starved = True
        if nominal is not None and usage > nominal + 1e-9:
            borrowing = True
        if nominal:
            share = usage / nominal
            dominant = share if dominant is None else max(dominant, share)
    return {"starved": starved, "borrowing": borrowing, "dominant": dominant}


def _tree(queues: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Queues in tree order (tenant, then parent before children) with their depth."""
    by_parent: dict[str | None, list[dict[str, Any]]] = {}
    for queue in queues:
        by_parent.setdefault(queue["parent"], []).append(queue)
    out: list[dict[str, Any]] = []

    def walk(parent: str | None, depth: int) -> None:
        for queue in sorted(by_parent.get(parent, []), key=lambda q: (q["tenant"], q["name"])):
            out.append({**queue, "depth": depth, "rows": quota_rows(queue), **_flags(queue)})
            walk(queue["name"], depth + 1)

    walk(None, 0)
    return out


@router.get("/queues")
def queues_page(
    request: Request, viewer: AdminDep, session: ReadSession, edit: str | None = None, panel: str | None = None
) -> Response:
    def queues() -> dict[str, Any]:
        items = data.api_call(queues_api.list_queues, request=request, scope=viewer.scope, session=session)["items"]
        return {"queues": _tree(items)}

    def tenants() -> dict[str, Any]:
        items = data.api_call(tenants_api.list_tenants, request=request, principal=viewer.principal)["items"]
        return {"tenants": items}

    def editor() -> dict[str, Any]:
        return {"form": _form_for(request, viewer, session, edit), "errors": {}, "error_list": [], "saved": None}

    panels = {"queuetree": queues, "tenants": tenants, "editor": editor}
    return Page(request, viewer, "admin/queues.html", panels, "Queues").response(panel)


def _form_for(request: Request, viewer: Viewer, session: Any, name: str | None) -> dict[str, Any]:
    blank = {"flavor": "", "guarantee": "", "deserved": "", "limit": "", "borrowing_limit": ""}
    if not name:
        return {
            "name": "",
            "parent": "",
            "tenant": "",
            "weight": "1",
            "domestic": "",
            "quota": [dict(blank)],
            "new": True,
        }
    items = data.api_call(queues_api.list_queues, request=request, scope=viewer.scope, session=session)["items"]
    found = next((q for q in items if q["name"] == name), None)
    if found is None:
        raise Problem("not-found", f"no queue {name!r}")
    rows = [
        {"flavor": flavor, **{k: "" if v is None else f"{v:g}" for k, v in quota.items()}}
        for flavor, quota in sorted(found["quota"].items())
    ]
    return {
        "name": name,
        "parent": found["parent"] or "",
        "tenant": found["tenant"] if not found["parent"] else "",
        "weight": f"{found['weight']:g}",
        "domestic": found["domestic"] or "",
        "quota": [*rows, dict(blank)],
        "new": False,
    }


def _number(text: str) -> float | str | None:
    text = text.strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        return text  # pydantic names the field and says it wants a number


def _field_of(loc: list[Any], name: str, flavors: list[str]) -> str:
    """The form field a problem's ``loc`` points at (``guarantee-0`` for the first quota row ...)."""
    parts = [str(p) for p in loc]
    for prefix in (["body"], ["policy", "queues", name]):
        if parts[: len(prefix)] == prefix:
            parts = parts[len(prefix) :]
            break
    if parts[:1] == ["quota"] and len(parts) >= 2:
        flavor = parts[1]
        row = flavors.index(flavor) if flavor in flavors else 0
        return f"{parts[2]}-{row}" if len(parts) >= 3 else f"flavor-{row}"
    return parts[0] if parts else "form"


@router.post("/queues")
async def queue_save(request: Request, viewer: AdminDep, session: WriteSession) -> Response:
    """Create or replace a queue through ``PUT /v1/queues/{name}``'s own code; its 422 shown field by field."""
    form = await request.form()

    def text(key: str) -> str:
        value = form.get(key, "")
        return value.strip()[:200] if isinstance(value, str) else ""

    name = text("name")
    rows = []
    for index in range(64):
        flavor = text(f"flavor-{index}")
        values = {k: text(f"{k}-{index}") for k in ("guarantee", "deserved", "limit", "borrowing_limit")}
        if f"flavor-{index}" not in form:
            break
        rows.append({"flavor": flavor, **values})
    flavors = [r["flavor"] for r in rows]
    body: dict[str, Any] = {"parent": text("parent") or None, "weight": _number(text("weight")) or 1.0, "quota": {}}
    if text("tenant"):
        body["tenant"] = text("tenant")
    if text("domestic"):
        body["domestic"] = text("domestic")
    for row in rows:
        if not row["flavor"]:
            continue
        entry = {k: _number(v) for k, v in row.items() if k != "flavor" and _number(v) is not None}
        body["quota"][row["flavor"]] = entry
    errors: list[dict[str, Any]] = []
    saved = None
    if not QUEUE_NAME.match(name):
        errors.append(
            {
                "loc": ["name"],
                "msg": "a queue name starts with a letter or digit and uses A-Z a-z 0-9 . _ / -",
                "type": "value_error",
            }
        )
    else:
        try:
            spec = QueueSpec.model_validate(body)
            answer = await _put(request, viewer, session, name, spec)
            saved = answer["policy_version"]
        except ValidationError as err:
            errors = from_pydantic(err).errors or []
        except Problem as problem:
            if problem.status != 422:
                raise
            errors = problem.errors or [{"loc": [], "msg": problem.detail, "type": "value_error"}]
            errors = [{**e, "detail": problem.detail} for e in errors]
    by_field: dict[str, list[str]] = {}
    for error in errors:
        by_field.setdefault(_field_of(list(error.get("loc", [])), name, flavors), []).append(error["msg"])
    blank = {"flavor": "", "guarantee": "", "deserved": "", "limit": "", "borrowing_limit": ""}
    shown = {
        "name": name,
        "parent": text("parent"),
        "tenant": text("tenant"),
        "weight": text("weight"),
        "domestic": text("domestic"),
        "quota": rows if errors else [*[r for r in rows if r["flavor"]], blank],
        "new": False,
    }
    page = Page(request, viewer, "admin/queues.html", {}, "Queues")
    headers = {"HX-Trigger": "zs:queues"} if saved is not None else None
    return render(
        request,
        "panels/editor.html",
        {"viewer": viewer, "page": page, "form": shown, "errors": by_field, "error_list": errors, "saved": saved},
        422 if errors else 200,
        headers,
    )


async def _put(request: Request, viewer: Viewer, session: Any, name: str, spec: QueueSpec) -> dict[str, Any]:
    from fastapi.concurrency import run_in_threadpool

    def call() -> dict[str, Any]:
        answer: dict[str, Any] = data.api_call(
            queues_api.put_queue, name=name, spec=spec, request=request, principal=viewer.principal, session=session
        )
        return answer

    return await run_in_threadpool(call)


# ---------------------------------------------------------------------------------------------------- jobs


@router.get("/jobs")
def all_jobs(
    request: Request,
    viewer: AdminDep,
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
    scope = viewer.scope.narrow(tenant or None)

    def reasons() -> dict[str, Any]:
        return {"by_reason": data.pending_by_reason(session, scope)}

    return _jobs_page(
        request,
        viewer,
        session,
        template="admin/jobs.html",
        title="All jobs",
        tab=state,
        queue=queue,
        kind=kind,
        name=name,
        tenant=tenant,
        cursor=cursor,
        upto=upto,
        panel=panel,
        extra_panels={"reasons": reasons},
    )


# --------------------------------------------------------------------------------------------------- nodes


NODES_PER_PAGE = 100


@router.get("/nodes")
def nodes_page(
    request: Request,
    viewer: AdminDep,
    session: ReadSession,
    pool: str | None = None,
    state: str | None = None,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    panel: str | None = None,
) -> Response:
    """Nodes, unhealthy and down ones first (then by id), 100 a page, filtered by pool and state in the URL."""
    ctx = request.app.state.ctx
    now = time.time()

    def nodes() -> dict[str, Any]:
        items = data.node_list(ctx, session, now)
        pools = sorted({n["pool"] for n in items})
        if pool:
            items = [n for n in items if n["pool"] == pool]
        if state:
            items = [n for n in items if n["state"] == state]
        rank = {"down": 0, "cordoned": 1}
        items.sort(key=lambda n: (rank.get(n["state"], 3 if n["devices_healthy"] == n["device_count"] else 2), n["id"]))
        shown = items[(page - 1) * NODES_PER_PAGE : page * NODES_PER_PAGE]
        running = data.jobs_by_node(session, viewer.scope)
        return {
            "nodes": [{**n, "jobs": running.get(n["id"], [])} for n in shown],
            "node_total": len(items),
            "pools": pools,
            "page_number": page,
            "pages": max(1, -(-len(items) // NODES_PER_PAGE)),
        }

    filters = {"pool": pool or "", "state": state or ""}
    return Page(request, viewer, "admin/nodes.html", {"nodes": nodes}, "Nodes").response(panel, filters=filters)


@router.get("/nodes/{node_id}")
def node_page(
    node_id: str,
    request: Request,
    viewer: AdminDep,
    session: ReadSession,
    panel: str | None = None,
) -> Response:
    from api.ui.pages import is_idle, telemetry_view

    ctx = request.app.state.ctx
    now = time.time()

    def node() -> dict[str, Any]:
        found = data.api_call(
            nodes_api.get_node, node_id=node_id, request=request, _principal=viewer.principal, session=session
        )
        running = data.jobs_by_node(session, viewer.scope).get(node_id, [])
        held = {i for job in running for i in job["devices"]}
        started = data.started_at(session, {job["id"] for job in running})
        # a sample says nothing about a job until it was taken a heartbeat after the job started
        since = max((started.get(job["id"]) or now for job in running), default=now)
        since += ctx.settings.heartbeat_interval_s
        stale_after = stale_after_s(ctx)
        devices = [
            {
                **d,
                "t": (view := telemetry_view(d, now, stale_after)),
                "allocated": d["index"] in held,
                "idle": d["index"] in held and is_idle(view, since),
            }
            for d in found["devices"]
        ]
        return {"node": found, "devices": devices, "node_jobs": running}

    return Page(request, viewer, "admin/node.html", {"node": node}, "Node").response(panel, node_id=node_id)


# -------------------------------------------------------------------------------------------------- billing


@router.get("/billing")
def billing(
    request: Request, viewer: AdminDep, session: ReadSession, month: str | None = None, panel: str | None = None
) -> Response:
    start, end, label = month_range(month, time.time())

    def bills() -> dict[str, Any]:
        return _bills(request, viewer, session, start, end)

    return Page(request, viewer, "admin/billing.html", {"bills": bills}, "Billing").response(panel, month=label)


def _bills(request: Request, viewer: Viewer, session: Any, start: float, end: float) -> dict[str, Any]:
    ctx = request.app.state.ctx
    total = data.api_call(
        usage_api.get_usage, request=request, scope=viewer.scope, session=session, tenant=None, start=start, end=end
    )
    tenants = []
    for tenant in sorted(ctx.snapshots.policy.policy.tenants):
        line = data.api_call(
            usage_api.get_usage,
            request=request,
            scope=viewer.scope,
            session=session,
            tenant=tenant,
            start=start,
            end=end,
        )
        tenants.append({"tenant": tenant, **line})
    return {"total": total, "tenant_bills": tenants}


@router.get("/billing.csv")
def billing_csv(request: Request, viewer: AdminDep, session: ReadSession, month: str | None = None) -> Response:
    start, end, label = month_range(month, time.time())
    bills = _bills(request, viewer, session, start, end)
    lines = {b["tenant"]: b for b in bills["tenant_bills"]}
    return Response(
        usage_csv(bills["total"], lines),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="zhisuan-billing-{label}.csv"'},
    )


# -------------------------------------------------------------------------------------------------- reports


def _reports() -> tuple[Path | None, list[str]]:
    folder = config().reports_dir
    if folder is None or not folder.is_dir():
        return folder, []
    return folder, sorted(p.name for p in folder.glob("*.html") if p.is_file())


@router.get("/reports")
def reports(request: Request, viewer: AdminDep, show: str | None = None) -> Response:
    folder, names = _reports()
    chosen = show if show in names else None
    return render(
        request,
        "admin/reports.html",
        {
            "viewer": viewer,
            "title": "Reports",
            "reports": names,
            "folder": str(folder) if folder else None,
            "chosen": chosen,
        },
    )


@router.get("/reports/file/{name}")
def report_file(name: str, viewer: AdminDep) -> Response:
    folder, names = _reports()
    if folder is None or name not in names:
        raise Problem("not-found", "no such report")
    response = FileResponse(folder / name, media_type="text/html")
    # The report is the simulator's own HTML: shown in a sandboxed frame, no script, nothing fetched.
    response.headers["Content-Security-Policy"] = (
        "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'self'"
    )
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    return response
