"""The planner's comparison of policies: several timeline runs of one workload side by side.

From each run's per-job records (``SimConfig.record_jobs``) and summary: queueing-delay and JCT distributions by
job size, utilisation over time, fairness across tenants (each tenant's share of device-hours against its share
of the weights, and Jain's index of those ratios), inference SLO attainment, NCU-hours and cost. The numbers come
as JSON (:func:`compare_runs`) and as an HTML section (:func:`planner_section`) of the simulation report::

    >>> jain([1.0, 1.0, 1.0]), round(jain([1.0, 0.0]), 2)
    (1.0, 0.5)
    >>> size_class({"devices": 0.5}), size_class({"devices": 8.0}), size_class({"devices": 32.0})
    ('fractional', '5-8', '>8')
"""

from __future__ import annotations

import html
import math
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from simulations.metrics import cdf
from simulations.report import bar_chart, line_chart

SIZES = ("fractional", "1", "2-4", "5-8", ">8")


def size_class(job: Mapping[str, Any]) -> str:
    """Job size by devices asked for: fractional, 1, 2-4, 5-8, >8."""
    devices = float(job["devices"])
    if devices < 1:
        return "fractional"
    if devices <= 1:
        return "1"
    if devices <= 4:
        return "2-4"
    if devices <= 8:
        return "5-8"
    return ">8"


def jain(values: Sequence[float]) -> float:
    """Jain's fairness index, (Σx)² / (n Σx²): 1 when all are equal, 1/n when one has everything."""
    if not values:
        return math.nan
    squares = sum(v * v for v in values)
    return (sum(values) ** 2) / (len(values) * squares) if squares else 1.0


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def run_metrics(result: Mapping[str, Any], weights: Mapping[str, float] | None = None) -> dict[str, Any]:
    """The planner's numbers of one run (its ``jobs`` records, ``summary`` and ``plots``)."""
    jobs = [j for j in result.get("jobs", []) if j.get("start") is not None]
    summary = result["summary"]
    by_size: dict[str, dict[str, list[float]]] = {size: {"wait": [], "jct": []} for size in SIZES}
    for job in jobs:
        sized = by_size[size_class(job)]
        sized["wait"].append(job["start"] - job["submit"])
        if job.get("end") is not None:
            sized["jct"].append(job["end"] - job["submit"])
    device_hours: Mapping[str, float] = summary.get("device_hours_by_tenant", {})
    tenants = sorted(set(device_hours) | set(weights or {}))
    total_hours = sum(device_hours.values())
    weight_of = {t: (weights or {}).get(t, 1.0) for t in tenants}
    total_weight = sum(weight_of.values())
    fairness = {}
    ratios = []
    for tenant in tenants:
        share = device_hours.get(tenant, 0.0) / total_hours if total_hours else 0.0
        entitled = weight_of[tenant] / total_weight if total_weight else 0.0
        ratio = share / entitled if entitled else math.nan
        fairness[tenant] = {"share": share, "weight_share": entitled, "share_over_weight": ratio}
        if math.isfinite(ratio):
            ratios.append(ratio)
    return {
        "label": result.get("label") or f"{result.get('ordering', 'drf')} / {result.get('policy', '')}",
        "ordering": result.get("ordering"),
        "scorer": result.get("policy"),
        "jobs": len(jobs),
        "wait_mean_s": summary["wait_s"]["mean"],
        "wait_p95_s": summary["wait_s"]["p95"],
        "jct_mean_s": summary["jct_s"]["mean"],
        "jct_p95_s": summary["jct_s"]["p95"],
        "by_size": {
            size: {
                "jobs": len(v["wait"]),
                "wait_mean_s": _mean(v["wait"]),
                "jct_mean_s": _mean(v["jct"]),
                "wait_cdf": cdf(v["wait"], 50),
                "jct_cdf": cdf(v["jct"], 50),
            }
            for size, v in by_size.items()
            if v["wait"]
        },
        "utilisation": summary.get("utilisation"),
        "utilisation_series": result.get("plots", {}).get("utilisation", []),
        "tenants": fairness,
        "jain_share_over_weight": jain(ratios),
        "slo_attainment": summary.get("slo_attainment"),
        "ncu_hours": summary.get("ncu_hours"),
        "cost": summary.get("cost", {}),
        "preemptions": summary.get("jobs", {}).get("preempted", 0),
        "runtimes": result.get("runtimes"),
        "predicted_durations": summary.get("predicted_durations"),
    }


def compare_runs(results: Sequence[Mapping[str, Any]], weights: Mapping[str, float] | None = None) -> dict[str, Any]:
    """The planner's JSON: one entry per run, in the order given."""
    return {"runs": [run_metrics(r, weights) for r in results if r.get("mode") == "timeline"]}


def _cell(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return html.escape(str(value))


def planner_section(report: Mapping[str, Any]) -> str:
    """The HTML of the policy comparison (empty without two runs that recorded their jobs)."""
    runs = [r for r in report.get("runs", []) if r["jobs"]]
    if len(runs) < 2:
        return ""
    head = (
        "<tr><th>policy</th><th>jobs</th><th>wait mean s</th><th>wait p95 s</th><th>JCT mean s</th>"
        "<th>JCT p95 s</th><th>utilisation</th><th>Jain (share/weight)</th><th>SLO</th><th>NCU-h</th><th>cost</th>"
        "<th>preemptions</th></tr>"
    )
    rows = "".join(
        "<tr>"
        + "".join(
            f"<td>{_cell(v, d)}</td>"
            for v, d in (
                (r["label"], 0),
                (r["jobs"], 0),
                (r["wait_mean_s"], 1),
                (r["wait_p95_s"], 1),
                (r["jct_mean_s"], 1),
                (r["jct_p95_s"], 1),
                (r["utilisation"], 3),
                (r["jain_share_over_weight"], 3),
                (r["slo_attainment"], 3),
                (r["ncu_hours"], 1),
                (r["cost"].get("total"), 0),
                (r["preemptions"], 0),
            )
        )
        + "</tr>"
        for r in runs
    )
    parts = ["<h2>Policies side by side</h2>", f"<table>{head}{rows}</table>"]
    sizes = [s for s in SIZES if any(s in r["by_size"] for r in runs)]
    size_rows = "".join(
        f"<tr><td>{html.escape(s)}</td>"
        + "".join(
            "<td>{} / {}</td>".format(
                _cell(r["by_size"].get(s, {}).get("wait_mean_s")), _cell(r["by_size"].get(s, {}).get("jct_mean_s"))
            )
            for r in runs
        )
        + "</tr>"
        for s in sizes
    )
    parts.append(
        "<h3>Mean wait / mean JCT (s) by job size (devices)</h3><table><tr><th>size</th>"
        + "".join(f"<th>{html.escape(r['label'])}</th>" for r in runs)
        + f"</tr>{size_rows}</table>"
    )
    for size in sizes:
        parts.append(
            line_chart(
                {r["label"]: r["by_size"][size]["wait_cdf"] for r in runs if size in r["by_size"]},
                title=f"Queueing delay CDF, jobs of {size} device(s)",
                x_label="seconds",
                y_label="fraction of jobs",
            )
        )
        parts.append(
            line_chart(
                {r["label"]: r["by_size"][size]["jct_cdf"] for r in runs if size in r["by_size"]},
                title=f"JCT CDF, jobs of {size} device(s)",
                x_label="seconds",
                y_label="fraction of jobs",
            )
        )
    parts.append(
        line_chart(
            {r["label"]: r["utilisation_series"] for r in runs},
            title="Utilisation over time",
            x_label="hours",
            y_label="allocated / capacity",
            x_scale=3600.0,
            step=True,
        )
    )
    tenants = sorted({t for r in runs for t in r["tenants"]})
    fair_rows = "".join(
        f"<tr><td>{html.escape(t)}</td>"
        + "".join(
            f"<td>{_cell(100 * r['tenants'][t]['share'])} % of {_cell(100 * r['tenants'][t]['weight_share'])} %"
            f" ({_cell(r['tenants'][t]['share_over_weight'], 2)})</td>"
            if t in r["tenants"]
            else "<td>–</td>"
            for r in runs
        )
        + "</tr>"
        for t in tenants
    )
    parts.append(
        "<h3>Share of device-hours vs share of weight, per tenant (ratio)</h3><table><tr><th>tenant</th>"
        + "".join(f"<th>{html.escape(r['label'])}</th>" for r in runs)
        + f"</tr>{fair_rows}</table>"
    )
    parts.append(bar_chart({r["label"]: r["jain_share_over_weight"] for r in runs}, title="Jain's index, share/weight"))
    parts.append(bar_chart({r["label"]: r["slo_attainment"] or 0.0 for r in runs}, title="Inference SLO attainment"))
    parts.append(bar_chart({r["label"]: r["ncu_hours"] or 0.0 for r in runs}, title="NCU-hours"))
    parts.append(bar_chart({r["label"]: r["cost"].get("total") or 0.0 for r in runs}, title="Cost"))
    notes = [f"{r['label']}: runtimes: {r['runtimes']}" for r in runs if r.get("runtimes")]
    notes += [
        f"{r['label']}: predicted durations by history group: {r['predicted_durations']}"
        for r in runs
        if r.get("predicted_durations")
    ]
    if notes:
        parts.append(
            "<h3>What the orderings knew</h3><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>"
        )
    return "".join(parts)


def tenant_weights(policy_document: Mapping[str, Any] | None) -> dict[str, float]:
    """Fair-share weights per tenant of a policy document (tenants not named weigh 1)."""
    tenants = (policy_document or {}).get("tenants", {}) or {}
    out: dict[str, float] = defaultdict(lambda: 1.0)
    for name, spec in tenants.items():
        out[name] = float((spec or {}).get("weight", 1.0))
    return dict(out)
