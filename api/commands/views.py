"""What a tenant sees of the center: ``zhisuan queues | usage | nodes``."""

from __future__ import annotations

import calendar
import re
from pathlib import PurePath
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from api.client import ApiError, ZhisuanClient
from api.commands.common import (
    OutputOpt,
    ProfileOpt,
    TokenOpt,
    UrlOpt,
    connect,
    handle_errors,
)
from api.commands.render import (
    Fmt,
    ago,
    emit,
    key_values,
    stderr,
    when,
)
from api.models import DeviceOut, InventorySourceOut, NodeOut, QueueOut, UsageOut


def amount_text(value: float) -> str:
    return f"{round(value, 2):g}"


def quota_text(queue: QueueOut) -> str:
    lines = []
    for flavor in sorted(set(queue.quota) | set(queue.usage)):
        q = queue.quota.get(flavor)
        used = queue.usage.get(flavor, 0.0)
        if q is None:
            lines.append(f"{flavor}: {amount_text(used)} used")
            continue
        parts = [f"{amount_text(used)} used"]
        if q.guarantee:
            parts.append(f"guarantee {q.guarantee:g}")
        if q.deserved is not None:
            parts.append(f"deserved {q.deserved:g}")
        if q.limit is not None:
            parts.append(f"limit {q.limit:g}")
        if q.borrowing_limit is not None:
            parts.append(f"borrow ≤ {q.borrowing_limit:g}")
        lines.append(f"{flavor}: {', '.join(parts)}")
    return "\n".join(lines) or "unlimited"


def queues_table(console: Console, items: list[QueueOut]) -> None:
    if not items:
        console.print("No queues.")
        return
    t = Table(box=None, header_style="bold", show_lines=False)
    for column in ("queue", "tenant", "parent", "quota (devices or ncu)", "pending", "running"):
        t.add_column(column, justify="right" if column in ("pending", "running") else "left")
    for q in items:
        t.add_row(
            escape(q.name),
            escape(q.tenant or "-"),
            escape(q.parent or "-"),
            escape(quota_text(q)),
            str(q.pending),
            str(q.running),
        )
    console.print(t)


@handle_errors
def queues(
    url: UrlOpt = None, token: TokenOpt = None, profile: ProfileOpt = None, output: OutputOpt = Fmt.TABLE
) -> None:
    """Queues you can submit to (all of them for center admins), with quotas and usage."""
    with connect(url, token, profile) as client:
        items = client.queues()
    emit([q.to_dict() for q in items], output, lambda c: queues_table(c, items))


def month_range(month: str) -> tuple[float, float]:
    """``2026-11`` → epoch seconds of 2026-11-01 00:00 UTC and 2026-12-01 00:00 UTC."""
    match = re.fullmatch(r"(\d{4})-(\d{1,2})", month.strip())
    if not match or not 1 <= int(match.group(2)) <= 12:
        raise typer.BadParameter(f"{month!r} is not a month like 2026-11", param_hint="--month")
    year, mon = int(match.group(1)), int(match.group(2))
    start = calendar.timegm((year, mon, 1, 0, 0, 0))
    end = calendar.timegm((year + 1, 1, 1, 0, 0, 0)) if mon == 12 else calendar.timegm((year, mon + 1, 1, 0, 0, 0))
    return float(start), float(end)


def _usage_lines(console: Console, title: str, lines: dict[str, Any], currency: str) -> None:
    if not lines:
        return
    t = Table(title=title, box=None, header_style="bold")
    for column in (title.split()[-1], "NCU-h", "device-h", f"charge ({currency})"):
        t.add_column(column, justify="left" if column == title.split()[-1] else "right")
    for key, line in sorted(lines.items()):
        t.add_row(escape(key), f"{line.ncu_hours:,.2f}", f"{line.device_hours:,.2f}", f"{line.charge:,.2f}")
    console.print(t)


def usage_table(console: Console, u: UsageOut) -> None:
    rows = [
        ("tenant", escape(u.tenant or "-")),
        ("period", f"{when(u.start)} – {when(u.end)}"),
        ("NCU-hours", f"{u.ncu_hours:,.2f} ({u.free_ncu_hours:,.2f} free)"),
        ("device-hours", f"{u.device_hours:,.2f}"),
        ("charge", f"{u.charge:,.2f} {u.currency} (billable {u.billable_charge:,.2f})"),
        ("energy", f"{u.energy_kwh:,.1f} kWh"),
    ]
    if u.domestic_share is not None:
        rows.append(("domestic share", f"{u.domestic_share:.0%}"))
    key_values(console, rows)
    _usage_lines(console, "by model", u.by_model, u.currency)
    _usage_lines(console, "by queue", u.by_queue, u.currency)


@handle_errors
def usage(
    tenant: Annotated[str | None, typer.Option(help="tenant (center admins; default: yours)")] = None,
    month: Annotated[str | None, typer.Option(help="calendar month, e.g. 2026-11 (default: this month)")] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    profile: ProfileOpt = None,
    output: OutputOpt = Fmt.TABLE,
) -> None:
    """UsageOut and bill in NCU-hours, device-hours and money."""
    start, end = month_range(month) if month else (None, None)
    with connect(url, token, profile) as client:
        answer = client.usage(tenant=tenant, start=start, end=end)
    emit(answer.to_dict(), output, lambda c: usage_table(c, answer))


_HEALTH_STYLE = {"healthy": "green", "unhealthy": "red", "unknown": "yellow"}


def health_text(d: DeviceOut) -> str:
    """``healthy``, or ``unhealthy``/``unknown`` with the reason (a server before 0005 reports only ``healthy``).

    >>> health_text(DeviceOut(index=0, uuid="u", model=None, healthy=True, health="unknown",
    ...                       health_reason="cnmon timed out", telemetry=None))
    '[yellow]unknown[/yellow]: cnmon timed out'
    """
    state = d.health or ("healthy" if d.healthy else "unhealthy")
    style = _HEALTH_STYLE.get(state, "yellow")
    text = f"[{style}]{escape(state)}[/{style}]"
    return f"{text}: {escape(d.health_reason)}" if d.health_reason and state != "healthy" else text


def device_text(d: DeviceOut) -> str:
    """What the vendor tool printed for the device, whether the catalog knew it, and its MIG place.

    >>> device_text(DeviceOut(index=7, uuid="u", model=None, healthy=True, telemetry=None, name="MLU370-X4",
    ...                       other_names=["MLU370"], model_known=False))
    'MLU370-X4; [yellow]not in the catalog[/yellow] (also printed as MLU370)'
    """
    parts = [escape(d.name)] if d.name else []
    also = f"also printed as {escape(', '.join(d.other_names))}" if d.other_names else ""
    if d.model_known is False:
        parts.append("[yellow]not in the catalog[/yellow]" + (f" ({also})" if also else ""))
    elif also:
        parts.append(also)
    if d.parent_uuid:
        named = bool(d.profile and d.name and d.profile in d.name)
        what = "MIG device" if named or not d.profile else f"MIG {escape(d.profile)}"
        share = f", {d.fraction:.0%} of it" if d.fraction else ""
        parts.append(f"{what} of {escape(d.parent_uuid)}{share}")
    return "; ".join(parts) or "-"


def _node_detail(console: Console, n: NodeOut) -> None:
    key_values(
        console,
        [
            ("node", escape(n.id) + (f" ({escape(n.hostname)})" if n.hostname and n.hostname != n.id else "")),
            ("model", f"{n.model} ({n.vendor})"),
            ("pool", escape(str(n.pool))),
            ("where", " / ".join(escape(str(v)) for v in (n.region, n.site, n.switch, n.island) if v)),
            ("state", str(n.state)),
            ("devices", f"{n.devices_healthy} of {n.device_count} healthy"),
            ("heartbeat", ago(n.last_heartbeat)),
            *([("agent", escape(n.agent_version))] if n.agent_version else []),
        ],
    )
    if n.shims:
        t = Table(box=None, header_style="bold", title="vendors the agent tried", title_justify="left")
        for column in ("vendor", "state", "tool", "driver", "reason"):
            t.add_column(column)
        for shim in n.shims:
            style = {"present": "green", "error": "red"}.get(shim.state)
            state = f"[{style}]{escape(shim.state)}[/{style}]" if style else escape(shim.state)
            command = PurePath(shim.command).name if shim.command else None  # the tool, not where it lives
            tool = " ".join(escape(v) for v in (command, shim.tool_version) if v) or "-"
            t.add_row(escape(shim.vendor), state, tool, escape(shim.driver_version or "-"), escape(shim.reason))
        console.print(t)
    if n.devices:
        t = Table(box=None, header_style="bold")
        for column in ("index", "model", "health", "device", "uuid"):
            t.add_column(column)
        for d in n.devices:
            model = str(d.model) if d.model else ("-" if d.model_known is False else str(n.model))
            t.add_row(str(d.index), model, health_text(d), device_text(d), escape(d.uuid or "-"))
        console.print(t)
        unknown: dict[str, list[int]] = {}  # why the catalog did not know a part, once per reason
        for d in n.devices:
            for note in d.notes or []:
                if "unknown" in note:
                    unknown.setdefault(note, []).append(d.index)
        for note, indexes in unknown.items():
            which = "device" + ("s" if len(indexes) > 1 else "")
            console.print(f"  {which} {', '.join(map(str, indexes))}: {escape(note)}", soft_wrap=True)


def _warn_stale(client: ZhisuanClient) -> None:
    """One warning line on stderr per inventory source whose nodes are the last known ones (``GET
    /v1/inventory``); a server without that endpoint says nothing."""
    try:
        sources = [InventorySourceOut.from_api(s) for s in client.request("GET", "/v1/inventory").get("items", [])]
    except ApiError as exc:
        if exc.status == 404:
            return
        raise
    for source in sources:
        if source.stale:
            stderr().print(
                f"[yellow]warning:[/yellow] the {source.source} inventory is stale: {escape(source.reason)} "
                f"(its nodes are shown as last known, changed {when(source.changed_at)})",
                soft_wrap=True,
            )


@handle_errors
def nodes(
    node_id: Annotated[str | None, typer.Argument(help="one node's details and devices", show_default=False)] = None,
    pools: Annotated[bool, typer.Option("--pools", help="pools (a model at a site) instead of nodes")] = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
    profile: ProfileOpt = None,
    output: OutputOpt = Fmt.TABLE,
) -> None:
    """Capacity: nodes, or pools with --pools (free and healthy devices)."""
    with connect(url, token, profile) as client:
        if pools:
            items = client.pools()

            def pool_table(console: Console) -> None:
                t = Table(box=None, header_style="bold")
                for column in ("pool", "model", "vendor", "site", "nodes", "devices", "free", "healthy", "domestic"):
                    t.add_column(
                        column, justify="right" if column in ("nodes", "devices", "free", "healthy") else "left"
                    )
                for p in items:
                    t.add_row(
                        escape(p.pool),
                        str(p.model),
                        str(p.vendor),
                        str(p.site),
                        str(p.nodes),
                        str(p.devices),
                        f"{p.devices_free:g}",
                        str(p.devices_healthy),
                        "yes" if p.domestic else "no",
                    )
                console.print(t if items else "No pools.")

            emit([p.to_dict() for p in items], output, pool_table)
            return
        if node_id is not None:
            node = client.node(node_id)
            emit(node.to_dict(), output, lambda c: _node_detail(c, node))
            return
        listed = client.nodes()
        _warn_stale(client)

    def node_table(console: Console) -> None:
        t = Table(box=None, header_style="bold")
        for column in ("node", "model", "pool", "devices", "state", "heartbeat"):
            t.add_column(column)
        for n in listed:
            t.add_row(
                escape(n.id),
                str(n.model),
                escape(str(n.pool)),
                str(n.size),
                str(n.state),
                ago(n.last_heartbeat),
            )
        console.print(t if listed else "No nodes.")

    emit([n.to_dict() for n in listed], output, node_table)
