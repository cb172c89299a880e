"""What the dashboard shows that the REST API has no endpoint for yet, read-only and scoped by the API's own
:class:`~api.deps.TenantScope` (``scope.apply`` / ``scope.clause``: never a second copy of the tenant filter).

Everything else on the pages comes from the API's route functions themselves (:func:`api_call`), so a number on
a page is the number the API answers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from fastapi import Response
from sqlalchemy import case, func, select
from sqlmodel import Session

from api.deps import AppContext, TenantScope
from api.problems import Problem
from api.routers import usage as usage_api
from api.store import node_status
from api.tables import DEVICES, JOB_EVENTS, JOBS, LEDGER, NODES
from scheduler.spec import HOLDING_STATES, JobState


def api_call(route: Callable[..., Response], /, **kwargs: Any) -> Any:
    """Call one of the API's route functions and read its JSON answer (the page shows what the API says)."""
    response = route(**kwargs)
    return orjson.loads(bytes(response.body))


def state_counts(session: Session, scope: TenantScope, where: Iterable[Any] = ()) -> dict[str, int]:
    """Jobs per state in the scope (the tabs' counts: every filter but the state one)."""
    statement = scope.apply(select(JOBS.c.state, func.count()).group_by(JOBS.c.state), JOBS.c.tenant)
    for clause in where:
        statement = statement.where(clause)
    counts = {s.value: 0 for s in JobState}
    for state, count in session.execute(statement):
        counts[state] = int(count)
    return counts


def pending_by_reason(session: Session, scope: TenantScope) -> dict[str, int]:
    """Pending jobs per reason code (a job with several reasons counts once per code; none: ``unexplained``)."""
    statement = scope.apply(select(JOBS.c.reasons).where(JOBS.c.state == JobState.PENDING.value), JOBS.c.tenant)
    counts: dict[str, int] = {}
    for (reasons,) in session.execute(statement):
        codes = {r.get("code", "") for r in reasons or []} or {"unexplained"}
        for code in codes:
            counts[code] = counts.get(code, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def oldest_pending(session: Session, scope: TenantScope) -> float | None:
    statement = scope.apply(
        select(func.min(JOBS.c.submitted_at)).where(JOBS.c.state == JobState.PENDING.value), JOBS.c.tenant
    )
    value = session.execute(statement).scalar()
    return float(value) if value is not None else None


def preemptions_since(session: Session, scope: TenantScope, since: float) -> int:
    statement = scope.apply(
        select(func.count())
        .select_from(JOB_EVENTS.join(JOBS, JOBS.c.id == JOB_EVENTS.c.job_id))
        .where(JOB_EVENTS.c.kind == "preempted", JOB_EVENTS.c.at >= since),
        JOBS.c.tenant,
    )
    return int(session.execute(statement).scalar_one())


def jobs_by_node(session: Session, scope: TenantScope) -> dict[str, list[dict[str, Any]]]:
    """Per node, the jobs (in the scope) holding devices there: id, name, tenant, devices."""
    holding = [s.value for s in HOLDING_STATES]
    rows = session.execute(
        scope.apply(
            select(JOBS.c.id, JOBS.c.name, JOBS.c.tenant, JOBS.c.placement).where(JOBS.c.state.in_(holding)),
            JOBS.c.tenant,
        )
    ).all()
    out: dict[str, list[dict[str, Any]]] = {}
    for job_id, name, tenant, placement in rows:
        for worker in (placement or {}).get("workers", ()):
            out.setdefault(worker.get("node", ""), []).append(
                {"id": job_id, "name": name, "tenant": tenant, "devices": list(worker.get("devices", ()))}
            )
    return out


def allocated_by_device(
    work_by_node: Mapping[str, Iterable[tuple[str, int]]],
) -> dict[tuple[str, int], tuple[str, ...]]:
    """(node, device index) -> ids of the jobs holding a share of it (center admins only: names no tenant).
    ``work_by_node``: :func:`holding_work`'s (job id, index) per node."""
    out: dict[tuple[str, int], tuple[str, ...]] = {}
    for node, work in work_by_node.items():
        for job_id, index in work:
            key = (node, index)
            out[key] = (*out.get(key, ()), job_id)  # tuples of strings: the GC stops tracking them
    return out


def started_at(session: Session, job_ids: Iterable[str]) -> dict[str, float | None]:
    """When each job's current run started (center views: the ids come from the holding placements)."""
    ids = sorted(set(job_ids))
    if not ids:
        return {}
    rows = session.execute(select(JOBS.c.id, JOBS.c.started_at).where(JOBS.c.id.in_(ids)))
    return {job_id: at for job_id, at in rows}


# ----------------------------------------------------------------------------------------- inventory


def node_list(ctx: AppContext, session: Session, now: float) -> list[dict[str, Any]]:
    """``GET /v1/nodes`` without the telemetry: the same node fields and states (:func:`api.store.node_status`),
    and per device only its health: ``healthy_indices``, the indices of the node's healthy devices (a ``range``
    when they are 0..n-1, as discovered devices are; None when the node has no device rows). Reading every
    device's telemetry document is most of the cost of listing a thousand nodes; the center's grid, node list and
    "can it run now" need none of it.

    The database counts the devices per node (a thousand rows, not eight thousand) and lists only the unhealthy
    ones; only a node whose indices are not 0..n-1 has its indices read one by one. Only the columns shown are
    read."""
    healthy_int = case((DEVICES.c.healthy, 1), else_=0)
    per_node = {
        node_id: (int(count), int(healthy or 0), low, high)
        for node_id, count, healthy, low, high in session.execute(
            select(
                DEVICES.c.node_id,
                func.count(),
                func.sum(healthy_int),
                func.min(DEVICES.c.index),
                func.max(DEVICES.c.index),
            ).group_by(DEVICES.c.node_id)
        )
    }
    unhealthy: dict[str, set[int]] = {}
    for node_id, index in session.execute(
        select(DEVICES.c.node_id, DEVICES.c.index).where(DEVICES.c.healthy.is_(False))
    ).all():
        unhealthy.setdefault(node_id, set()).add(index)
    irregular = sorted(n for n, (count, _, low, high) in per_node.items() if low != 0 or high != count - 1)
    listed: dict[str, list[int]] = {}
    if irregular:
        for node_id, index in session.execute(
            select(DEVICES.c.node_id, DEVICES.c.index).where(DEVICES.c.node_id.in_(irregular))
        ).all():
            listed.setdefault(node_id, []).append(index)
    columns = [
        NODES.c[name]
        for name in (
            "id",
            "hostname",
            "model",
            "vendor",
            "pool",
            "site",
            "island",
            "switch",
            "devices",
            "source",
            "state",
            "last_heartbeat",
            "registered_at",
            "lease_expires_at",
            "agent_version",
        )
    ]
    interval = ctx.settings.heartbeat_interval_s
    out = []
    for row in session.execute(select(*columns).order_by(NODES.c.id)).mappings():
        found = per_node.get(row["id"])
        indices: range | tuple[int, ...] | None = None
        healthy = row["devices"]
        if found is not None:
            sick = unhealthy.get(row["id"])
            every = listed.get(row["id"])
            indices = range(found[0]) if every is None else tuple(sorted(every))
            if sick:
                indices = tuple(i for i in indices if i not in sick)
            healthy = found[1]
        out.append(
            {
                "id": row["id"],
                "hostname": row["hostname"],
                "model": row["model"],
                "vendor": row["vendor"],
                "pool": row["pool"],
                "site": row["site"],
                "island": row["island"],
                "switch": row["switch"],
                "device_count": row["devices"],
                "devices_healthy": healthy,
                "source": row["source"],
                "state": node_status(row, now, interval),
                "last_heartbeat": row["last_heartbeat"],
                "registered_at": row["registered_at"],
                "agent_version": row["agent_version"],
                "healthy_indices": indices,
            }
        )
    return out


def holding_work(session: Session) -> tuple[dict[str, tuple[tuple[str, int], ...]], dict[str, float | None]]:
    """Per node, the devices that jobs in a holding state hold, as (job id, device index) — the placements
    :func:`api.store.device_work` reads, without its validated records (thousands a page) — and when each of those
    jobs' current run started: one query for both, read row by row (each decoded placement dies young).

    Tuples, not lists: the garbage collector stops tracking tuples of strings and numbers, so what a page holds
    while it renders does not bring the next full collection (tens of ms with the API's heap) closer."""
    work: dict[str, list[tuple[str, int]]] = {}
    started: dict[str, float | None] = {}
    statement = select(JOBS.c.id, JOBS.c.placement, JOBS.c.started_at).where(
        JOBS.c.state.in_([s.value for s in HOLDING_STATES])
    )
    for job_id, placement, started_at in session.execute(statement):
        started[job_id] = started_at
        for worker in (placement or {}).get("workers", ()):
            items = work.setdefault(worker.get("node", ""), [])
            items.extend((job_id, d) for d in worker.get("devices", ()))
    return {node: tuple(items) for node, items in work.items()}, started


def free_devices(node: Mapping[str, Any], used: Mapping[str, Collection[int]]) -> int:
    """Free healthy whole devices of a node (from :func:`node_list`), as ``GET /v1/pools`` counts them (ready
    nodes only)."""
    if node["state"] != "ready":
        return 0
    healthy = node["healthy_indices"]
    if healthy is None:
        healthy = range(node["device_count"])
    held = used.get(node["id"])
    if not held:
        return len(healthy)
    return sum(1 for index in healthy if index not in held)


def pools(ctx: AppContext, nodes: list[dict[str, Any]], used: Mapping[str, Collection[int]]) -> list[dict[str, Any]]:
    """``GET /v1/pools`` from :func:`node_list` (the same counts: down nodes add devices but no healthy or free
    ones; only ready nodes have free devices). A test holds the two equal."""
    out: dict[str, dict[str, Any]] = {}
    for node in nodes:
        entry = ctx.catalog.lookup(node["model"])
        pool = out.setdefault(
            node["pool"],
            {
                "pool": node["pool"],
                "model": node["model"],
                "vendor": entry.vendor if entry else node["vendor"],
                "site": node["site"],
                "nodes": 0,
                "devices": 0,
                "devices_free": 0,
                "devices_healthy": 0,
                "domestic": bool(entry and entry.domestic),
            },
        )
        pool["nodes"] += 1
        pool["devices"] += node["device_count"]
        if node["state"] == "down":
            continue
        pool["devices_healthy"] += node["devices_healthy"]
        pool["devices_free"] += free_devices(node, used)
    return [out[name] for name in sorted(out)]


def allocated_utilisation(
    session: Session, used: Mapping[str, Collection[int]]
) -> dict[tuple[str, int], tuple[float | None, float | None]]:
    """(node, device) -> (utilisation %, sampled at) of every device a job holds (``used``: node -> the indices
    held, from :func:`holding_work`), read from inside the telemetry document by the database."""
    if not used:
        return {}
    util = DEVICES.c.telemetry["utilization_pct"].as_float()
    sampled = DEVICES.c.telemetry["sampled_at"].as_float()
    rows = session.execute(
        select(DEVICES.c.node_id, DEVICES.c.index, util, sampled).where(DEVICES.c.node_id.in_(sorted(used)))
    )
    return {(node, index): (u, at) for node, index, u, at in rows if index in used.get(node, ())}


# ----------------------------------------------------------------------------------------- over time


@dataclass
class Series:
    """Values per bucket of a time window, per key (model, or a single key).

    An interval adds its partial first and last buckets directly and its whole buckets through a difference
    array, so thousands of day-long runs cost O(1) each, not O(buckets)::

        >>> s = Series(0.0, 10.0, 4)
        >>> s.add("a", 5.0, 40.0, 2.0)
        >>> s.values["a"]
        [1.0, 2.0, 2.0, 2.0]
    """

    start: float
    step: float
    buckets: int
    _parts: dict[str, list[float]] = field(default_factory=dict)
    _whole: dict[str, list[float]] = field(default_factory=dict)

    def add(self, key: str, begin: float, end: float, amount: float) -> None:
        """Spread ``amount`` (a rate, e.g. NCU held) over [begin, end) as a time-weighted mean per bucket."""
        begin = max(begin, self.start)
        end = min(end, self.start + self.step * self.buckets)
        if end <= begin:
            return
        parts = self._parts.setdefault(key, [0.0] * self.buckets)
        whole = self._whole.setdefault(key, [0.0] * (self.buckets + 1))
        first = min(self.buckets - 1, int((begin - self.start) // self.step))
        last = max(first, min(self.buckets - 1, math.ceil((end - self.start) / self.step) - 1))
        if first == last:
            parts[first] += amount * (end - begin) / self.step
            return
        parts[first] += amount * (self.start + (first + 1) * self.step - begin) / self.step
        parts[last] += amount * (end - (self.start + last * self.step)) / self.step
        whole[first + 1] += amount
        whole[last] -= amount

    def count(self, key: str, begin: float, end: float) -> None:
        self.add(key, begin, end, 1.0)

    @property
    def values(self) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for key, parts in self._parts.items():
            running = 0.0
            line = []
            for index, part in enumerate(parts):
                running += self._whole[key][index]
                line.append(part + running)
            out[key] = line
        return out

    @property
    def times(self) -> list[float]:
        return [self.start + (i + 1) * self.step for i in range(self.buckets)]


def allocation_series(
    ctx: AppContext, session: Session, scope: TenantScope, start: float, end: float, buckets: int, now: float
) -> Series:
    """NCU held over [start, end) by model, rebuilt from the ledger (exact: the ledger is what billing reads):
    finished runs from their stop rows, runs still open (jobs holding devices) from their latest start row,
    counted up to ``now`` — the same two sources as ``GET /v1/usage``."""
    series = Series(start, (end - start) / buckets, buckets)
    stops = session.execute(
        scope.apply(
            select(LEDGER.c.model, LEDGER.c.at, LEDGER.c.seconds, LEDGER.c.ncu_hours).where(
                LEDGER.c.kind == "stop", LEDGER.c.at > start, LEDGER.c.at - LEDGER.c.seconds < end
            ),
            LEDGER.c.tenant,
        )
    )
    for model, at, seconds, ncu_hours in stops:
        if seconds and seconds > 0:
            series.add(model, at - seconds, at, ncu_hours * 3600 / seconds)
    # Open runs: as ``GET /v1/usage`` reads them (the same read, made once per request when a page shows both).
    relative: dict[tuple[str, str], float] = {}
    for _, _, model, _, at, devices, _, _, job_class in usage_api.open_runs(session, scope):
        if at >= min(end, now):
            continue
        key = (model, job_class or "generic")
        if key not in relative:
            relative[key] = ctx.throughput.relative(*key)
        series.add(model, at, min(end, now), devices * relative[key])
    return series


def pending_series(session: Session, scope: TenantScope, start: float, end: float, buckets: int, now: float) -> Series:
    """Pending jobs over [start, end): each job waits from submission until it started or ended."""
    series = Series(start, (end - start) / buckets, buckets)
    # The database leaves out the jobs that stopped waiting before the window (most of a week's): the same test
    # as below, ``started or finished or now`` (0 and NULL alike are "not yet"), so no row that counts is lost.
    stopped = func.coalesce(func.nullif(JOBS.c.started_at, 0), func.nullif(JOBS.c.finished_at, 0), now)
    statement = scope.apply(
        select(JOBS.c.submitted_at, JOBS.c.started_at, JOBS.c.finished_at, JOBS.c.state).where(
            JOBS.c.submitted_at < end,
            (JOBS.c.state == JobState.PENDING.value) | ((JOBS.c.submitted_at >= start - 7 * 86400) & (stopped > start)),
        ),
        JOBS.c.tenant,
    )
    pending = JobState.PENDING.value  # once, not an enum lookup per row
    for submitted, started, finished, state in session.execute(statement):
        stop = now if state == pending else (started or finished or now)
        if stop > start:
            series.count("pending", max(submitted, start), min(stop, end))
    return series


def job_usage(ctx: AppContext, session: Session, job_id: str, job_class: str, now: float) -> tuple[float, float]:
    """NCU-hours and charge of one job so far (its ledger rows; an open run up to now at its recorded price).

    The caller has already checked the job is visible (``visible_job``)."""
    ncu_hours = charge = 0.0
    open_start: Any = None
    rows = session.execute(
        select(LEDGER).where(LEDGER.c.job_id == job_id).order_by(LEDGER.c.at, LEDGER.c.id)
    ).mappings()
    for row in rows:
        if row["kind"] == "start":
            open_start = row
            continue
        open_start = None
        ncu_hours += row["ncu_hours"]
        charge += row["charge"]
    if open_start is not None and now > open_start["at"]:
        ncu = open_start["devices"] * (now - open_start["at"]) / 3600
        ncu *= ctx.throughput.relative(open_start["model"], job_class)
        ncu_hours += ncu
        charge += ncu * open_start["price_per_ncu_hour"]
    return ncu_hours, charge


def not_found_page(what: str, name: str) -> Problem:
    return Problem("not-found", f"no {what} {name!r} (it may belong to another tenant, or never existed)")
