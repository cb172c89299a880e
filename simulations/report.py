"""Self-contained HTML reports: inline SVG plots and tables, no scripts, no external files.

    >>> from simulations.report import line_chart
    >>> svg = line_chart({"fgd": [(0.0, 0.0), (1.0, 0.9)]}, title="alloc", x_label="arrived", y_label="allocated")
    >>> svg.startswith("<svg") and "fgd" in svg
    True

:func:`render` takes the JSON results of :func:`simulations.runner.run` (one or several: policies of a packing
experiment, variants of a scenario) and lays out: for timelines, utilisation and queue length over time, JCT CDF
per job class, pools and tenants; for packing, the allocation-vs-arrival curve against the FGD paper's published
numbers; for several results, a scenario comparison.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#17becf")

#: FGD paper (ATC '23), default openb list, mean of 10 seeds: GPU allocation % at 100% and 130% arrived.
FGD_PUBLISHED = {
    "Random": (86.30, 87.47),
    "DotProduct": (90.62, 90.85),
    "GPU clustering": (91.65, 91.88),
    "GPU packing": (91.78, 92.00),
    "Best fit": (92.86, 93.08),
    "FGD": (95.23, 95.39),
}


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}"
    return html.escape(str(value))


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = min((m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw), default=raw)
    start = math.ceil(lo / step) * step
    ticks = []
    value = start
    while value <= hi + 1e-9 * step:
        ticks.append(round(value, 10))
        value += step
    return ticks


def line_chart(
    series: Mapping[str, Sequence[tuple[float, float]]],
    *,
    title: str,
    x_label: str,
    y_label: str,
    width: int = 640,
    height: int = 300,
    x_scale: float = 1.0,
    step: bool = False,
    markers: Mapping[str, Sequence[tuple[float, float]]] | None = None,
    y_floor: float | None = None,
) -> str:
    """An SVG line chart of named ``(x, y)`` series (``x`` divided by ``x_scale`` for display); the y axis starts
    at 0, or at ``y_floor`` for a close-up."""
    left, right, top, bottom = 60, 150, 30, 45
    plot_w, plot_h = width - left - right, height - top - bottom
    points = [(x / x_scale, y) for pts in series.values() for x, y in pts]
    points += [(x, y) for pts in (markers or {}).values() for x, y in pts]
    finite = [(x, y) for x, y in points if math.isfinite(x) and math.isfinite(y)]
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<text x="{width / 2 - right / 2:.0f}" y="16" text-anchor="middle" font-size="13">{html.escape(title)}</text>',
    ]
    if not finite:
        out.append(f'<text x="{width / 2:.0f}" y="{height / 2:.0f}" text-anchor="middle">no data</text></svg>')
        return "".join(out)
    x0, x1 = min(x for x, _ in finite), max(x for x, _ in finite)
    y0 = min(0.0, min(y for _, y in finite)) if y_floor is None else y_floor
    y1 = max(y for _, y in finite)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y1 = y0 + 1

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * plot_w

    def sy(y: float) -> float:
        return top + plot_h - (y - y0) / (y1 - y0) * plot_h

    out.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>')
    for t in _ticks(x0, x1):
        out.append(
            f'<line x1="{sx(t):.1f}" y1="{top + plot_h}" x2="{sx(t):.1f}" y2="{top + plot_h + 4}" stroke="#999"/>'
        )
        out.append(f'<text x="{sx(t):.1f}" y="{top + plot_h + 16}" text-anchor="middle">{_fmt(t)}</text>')
    for t in _ticks(y0, y1):
        out.append(f'<line x1="{left}" y1="{sy(t):.1f}" x2="{left + plot_w}" y2="{sy(t):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 5}" y="{sy(t) + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    out.append(
        f'<text x="{left + plot_w / 2:.0f}" y="{height - 8}" text-anchor="middle">{html.escape(x_label)}</text>'
        f'<text transform="translate(14 {top + plot_h / 2:.0f}) rotate(-90)" text-anchor="middle">'
        f"{html.escape(y_label)}</text>"
    )
    for i, (name, pts) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        coords: list[str] = []
        previous: tuple[float, float] | None = None
        for x, y in pts:
            if not (math.isfinite(x) and math.isfinite(y)):
                continue
            px, py = sx(x / x_scale), sy(y)
            if step and previous is not None:
                coords.append(f"{px:.1f},{previous[1]:.1f}")
            coords.append(f"{px:.1f},{py:.1f}")
            previous = (px, py)
        if coords:
            out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.6" points="{" ".join(coords)}"/>')
        ly = top + 12 + i * 16
        out.append(
            f'<line x1="{left + plot_w + 10}" y1="{ly - 4}" x2="{left + plot_w + 28}" y2="{ly - 4}" '
            f'stroke="{color}" stroke-width="2"/><text x="{left + plot_w + 32}" y="{ly}">{html.escape(name)}</text>'
        )
    offset = len(series)
    for j, (name, pts) in enumerate((markers or {}).items()):
        color = PALETTE[(offset + j) % len(PALETTE)]
        for x, y in pts:
            out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3.5" fill="none" stroke="{color}"/>')
        ly = top + 12 + (offset + j) * 16
        out.append(
            f'<circle cx="{left + plot_w + 19}" cy="{ly - 4}" r="3.5" fill="none" stroke="{color}"/>'
            f'<text x="{left + plot_w + 32}" y="{ly}">{html.escape(name)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def bar_chart(values: dict[str, float], *, title: str, unit: str = "", width: int = 640) -> str:
    """Horizontal bars, one per name (for scenario comparison)."""
    height = 40 + 22 * len(values)
    finite = [v for v in values.values() if math.isfinite(v)]
    top_value = max(finite, default=1.0) or 1.0
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        f'font-size="11"><text x="10" y="16" font-size="13">{html.escape(title)}</text>'
    ]
    for i, (name, value) in enumerate(values.items()):
        y = 28 + i * 22
        length = (value / top_value * (width - 260)) if math.isfinite(value) and value > 0 else 0
        out.append(
            f'<text x="150" y="{y + 12}" text-anchor="end">{html.escape(name)}</text>'
            f'<rect x="155" y="{y}" width="{length:.1f}" height="16" fill="{PALETTE[i % len(PALETTE)]}"/>'
            f'<text x="{160 + length:.1f}" y="{y + 12}">{_fmt(value)}{html.escape(unit)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _label(result: dict[str, Any]) -> str:
    return str(result.get("scenario") or result.get("policy") or "run")


def _timeline_section(result: dict[str, Any]) -> str:
    s = result["summary"]
    plots = result.get("plots", {})
    parts = [f"<h2>{html.escape(_label(result))}: timeline</h2>"]
    rows = [
        ("jobs arrived / finished", f"{s['jobs'].get('arrived', 0)} / {s['jobs'].get('finished', 0)}"),
        ("wait p50 / p95 / p99 (s)", " / ".join(_fmt(s["wait_s"][k]) for k in ("p50", "p95", "p99"))),
        ("JCT p50 / p95 / p99 (s)", " / ".join(_fmt(s["jct_s"][k]) for k in ("p50", "p95", "p99"))),
        (
            "utilisation (whole run / arrival window)",
            f"{_fmt(s['utilisation'])} / {_fmt(s.get('utilisation_arrival_window'))}",
        ),
        ("fragmented devices (time mean)", _fmt(s["fragmentation_devices_mean"])),
        ("inference SLO attainment", _fmt(s["slo_attainment"])),
        ("energy (kWh)", _fmt(s["energy_kwh"])),
        (f"cost ({s['cost']['currency']})", _fmt(s["cost"]["total"])),
        ("NCU-hours", _fmt(s["ncu_hours"])),
        ("domestic share (NCU-hours)", _fmt(s["domestic_share_ncu"])),
    ]
    parts.append(_table(["metric", "value"], rows))
    if result.get("targets"):
        parts.append("<h3>Targets</h3>")
        parts.append(
            _table(
                ["target", "wanted", "measured", "met"],
                [(k, v["target"], v["measured"], "yes" if v["met"] else "NO") for k, v in result["targets"].items()],
            )
        )
    hours = 3600.0
    parts.append(
        line_chart(
            {"allocated share": plots.get("utilisation", [])},
            title="Utilisation over time",
            x_label="hours",
            y_label="allocated / capacity",
            x_scale=hours,
            step=True,
        )
    )
    parts.append(
        line_chart(
            {"pending": plots.get("queue", []), "running": plots.get("running", [])},
            title="Queue length over time",
            x_label="hours",
            y_label="jobs",
            x_scale=hours,
            step=True,
        )
    )
    parts.append(
        line_chart(
            {c: [(x, y) for x, y in pts] for c, pts in plots.get("jct_cdf", {}).items()},
            title="JCT CDF per job class",
            x_label="hours",
            y_label="fraction of jobs",
            x_scale=hours,
        )
    )
    parts.append("<h3>Pools</h3>")
    parts.append(
        _table(
            ["pool", "model", "devices", "utilisation", "energy kWh", "domestic"],
            [
                (pid, p["model"], p["devices"], p["utilisation"], p["energy_kwh"], "yes" if p["domestic"] else "")
                for pid, p in s["pools"].items()
            ],
        )
    )
    tenants = list(s["ncu_hours_by_tenant"].items())[:20]
    parts.append("<h3>NCU-hours per tenant (top 20)</h3>")
    parts.append(
        _table(
            ["tenant", "NCU-hours", "device-hours"], [(t, v, s["device_hours_by_tenant"].get(t)) for t, v in tenants]
        )
    )
    return "".join(parts)


def _scaling_section(result: dict[str, Any]) -> str:
    """Capacity over time under the worker-group scaling rule (``zhisuan simulate --autoscale``)."""
    scaling = result["scaling"]
    parts = [
        f"<h2>{html.escape(_label(result))}: capacity (worker groups sized by the scaling rule)</h2>",
        f"<p>Grace {_fmt(scaling['grace_s'])} s, rule every {_fmt(scaling['interval_s'])} s, a new node takes work "
        f"{_fmt(scaling['startup_s'])} s after it is added. Node-hours in service: "
        f"{_fmt(scaling.get('node_hours_in_service'))} of {_fmt(scaling.get('node_hours_installed'))} installed.</p>",
    ]
    groups = scaling.get("groups", {})
    parts.append(
        _table(
            ["group", "pool", "installed", "peak in service", "node-hours in service", "node-hours installed"],
            [
                (
                    name,
                    g["pool"],
                    g["installed"],
                    g["peak_in_service"],
                    g["node_hours_in_service"],
                    g["node_hours_installed"],
                )
                for name, g in groups.items()
            ],
        )
    )
    series: dict[str, list[tuple[float, float]]] = {}
    for point in scaling["capacity"]:
        series.setdefault(f"{point['group']} in service", []).append((point["t"], point["in_service"]))
    end = max((t for pts in series.values() for t, _ in pts), default=0.0)
    for pts in series.values():
        pts.append((end, pts[-1][1]))  # the last level holds to the end of the chart
    parts.append(
        line_chart(
            series, title="Nodes in service over time", x_label="hours", y_label="nodes", x_scale=3600.0, step=True
        )
    )
    decisions = scaling["decisions"]
    parts.append(f"<h3>Scaling decisions ({len(decisions)}; the first 50)</h3>")
    parts.append(
        _table(
            ["time (s)", "group", "added", "removed", "for"],
            [
                (d["t"], d["group"], d["added"], ", ".join(d["removed"]) or "-", ", ".join(d["for"]) or "-")
                for d in decisions[:50]
            ],
        )
    )
    return "".join(parts)


def _packing_section(results: list[dict[str, Any]]) -> str:
    series = {
        f"{r['policy']} (seed {r['seed']})": [(p["arrived"] * 100, p["allocated"] * 100) for p in r["curve"]]
        for r in results
    }
    markers = {
        f"paper: {name}": [(100.0, a), (130.0, b)]
        for name, (a, b) in FGD_PUBLISHED.items()
        if name in ("FGD", "Best fit", "Random")
    }
    frag = {
        f"{r['policy']} (seed {r['seed']})": [(p["arrived"] * 100, p["fragmentation"] * 100) for p in r["curve"]]
        for r in results
    }
    rows = [
        (
            r["policy"],
            r["seed"],
            (r.get("alloc_ratio_at_100") or math.nan) * 100,
            (r.get(f"alloc_ratio_at_{round(r['inflation'] * 100)}") or math.nan) * 100,
            r.get("unallocated_gpus_at_end"),
            r["pods_drawn"],
            r["wall_s"],
        )
        for r in results
    ]
    published = [(name, a, b) for name, (a, b) in FGD_PUBLISHED.items()]
    # Policies differ by a few points near full arrival: a close-up from 80 % arrived shows it.
    close = {name: [(x, y) for x, y in points if x >= 80] for name, points in series.items()}
    lows = [y for points in close.values() for _, y in points]
    floor = 5 * math.floor(min(lows) / 5) if lows else None
    order = (
        "the whole pod list once in seeded random order, then pods drawn from it with replacement"
        if results and results[0].get("arrivals", "shuffled-trace") == "shuffled-trace"
        else "pods drawn with replacement in seeded random order"
    )
    return "".join(
        [
            "<h2>FGD packing experiment</h2>",
            f"<p>Submitted one at a time, never deleted: {order}, until the arrived GPU request reaches the "
            "inflation × cluster GPUs (Weng et al., ATC '23).</p>",
            _table(["policy", "seed", "alloc % at 100%", "alloc % at end", "unallocated GPUs", "pods", "wall s"], rows),
            line_chart(
                series,
                title="GPU allocation vs arrived request",
                x_label="arrived GPU request (% of capacity)",
                y_label="allocated GPUs (%)",
                markers=markers,
            ),
            line_chart(
                close,
                title="Close-up from 80 % arrived",
                x_label="arrived GPU request (% of capacity)",
                y_label="allocated GPUs (%)",
                markers=markers,
                y_floor=floor,
            ),
            line_chart(
                frag,
                title="Fragmented GPUs vs arrived request",
                x_label="arrived (% of capacity)",
                y_label="fragmented (% of capacity)",
            ),
            "<h3>Published (FGD paper, mean of 10 seeds)</h3>",
            _table(["policy", "alloc % at 100%", "alloc % at 130%"], published),
        ]
    )


def _comparison_section(results: list[dict[str, Any]]) -> str:
    timelines = [r for r in results if r.get("mode") == "timeline"]
    if len(timelines) < 2:
        return ""
    names = [_label(r) for r in timelines]
    rows = [
        (
            name,
            r["summary"]["wait_s"]["mean"],
            r["summary"]["wait_s"]["p95"],
            r["summary"]["wait_s"]["p99"],
            r["summary"]["jct_s"]["p50"],
            r["summary"].get("utilisation_arrival_window"),
            r["summary"]["slo_attainment"],
            r["summary"]["energy_kwh"],
            r["summary"]["cost"]["total"],
            r["summary"]["domestic_share_ncu"],
        )
        for name, r in zip(names, timelines, strict=True)
    ]
    return "".join(
        [
            "<h2>Scenario comparison</h2>",
            _table(
                [
                    "variant",
                    "wait mean s",
                    "wait p95 s",
                    "wait p99 s",
                    "JCT p50 s",
                    "utilisation",
                    "SLO",
                    "energy kWh",
                    "cost",
                    "domestic share",
                ],
                rows,
            ),
            # Most jobs start at once in a healthy cluster, so the tail and the mean tell variants apart.
            bar_chart(
                {n: r["summary"]["wait_s"]["p99"] for n, r in zip(names, timelines, strict=True)},
                title="Queue wait p99",
                unit=" s",
            ),
            bar_chart(
                {n: r["summary"]["wait_s"]["mean"] for n, r in zip(names, timelines, strict=True)},
                title="Queue wait, mean",
                unit=" s",
            ),
            bar_chart(
                {
                    n: r["summary"].get("utilisation_arrival_window") or 0.0
                    for n, r in zip(names, timelines, strict=True)
                },
                title="Utilisation over the arrival window",
            ),
            bar_chart(
                {n: r["summary"]["cost"]["total"] for n, r in zip(names, timelines, strict=True)},
                title="Cost (energy + amortised hardware)",
            ),
            line_chart(
                {n: r.get("plots", {}).get("utilisation", []) for n, r in zip(names, timelines, strict=True)},
                title="Utilisation over time, per variant",
                x_label="hours",
                y_label="allocated / capacity",
                x_scale=3600.0,
                step=True,
            ),
        ]
    )


STYLE = """
body{font-family:sans-serif;margin:2em;max-width:1000px;color:#222}
table{border-collapse:collapse;margin:0.6em 0 1.2em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}svg{display:block;margin:0.8em 0}
pre{background:#f7f7f7;padding:0.6em;overflow:auto;font-size:11px}
"""


def render(results: list[dict[str, Any]], title: str = "Zhisuan simulation report", planner: str | None = None) -> str:
    """The whole HTML page for one or several run results (``planner``: the policy comparison's section,
    :func:`simulations.planner.planner_section`)."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    packing = [r for r in results if r.get("mode") == "packing"]
    if packing:
        parts.append(_packing_section(packing))
    parts.append(_comparison_section(results))
    if planner is not None:
        parts.append(planner)
    for result in results:
        if result.get("mode") == "timeline":
            parts.append(_timeline_section(result))
            if result.get("scaling"):
                parts.append(_scaling_section(result))
    inputs = [
        {k: r.get(k) for k in ("cluster", "trace", "replay_skipped", "policy", "seed", "scenario")} for r in results
    ]
    parts.append("<h2>Inputs</h2><pre>" + html.escape(json.dumps(inputs, indent=1, default=str)) + "</pre>")
    parts.append("</body></html>")
    return "".join(parts)
