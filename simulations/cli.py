"""Command line: ``zhisuan simulate`` (and ``zhisuan sweep``), a typer sub-app.

The console script mounts :data:`app`; standalone it runs as ``python -m simulations.cli simulate ...``::

    zhisuan simulate --cluster tests/fixtures/traces/alibaba-openb/openb_node_list_gpu_node.csv \\
        --trace tests/fixtures/traces/alibaba-openb/openb_pod_list_default.csv --format alibaba-openb \\
        --mode packing --policy fgd,binpack,random --inflation 1.3 --seed 1 --report packing.html
    zhisuan simulate --scenario seeds/scenarios/ascend-expansion.yaml --report ascend.html --json ascend.json

Several policies (comma-separated) or a scenario with variants give several runs, compared in one report.
Bad input ends with one line naming the file, row and column, and exit status 2.
"""

from __future__ import annotations

import json
import math
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, cast

import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from scheduler.errors import ConfigError
from scheduler.tenancy import check_ordering
from simulations.loaders import FORMATS, TraceError
from simulations.packing import ARRIVALS, Arrivals
from simulations.planner import compare_runs, planner_section
from simulations.report import render
from simulations.runner import RunSpec, run
from simulations.sweep import BACKENDS, grid, run_sweep

app = typer.Typer(help="Replay traces and what-if scenarios through the scheduling core.", no_args_is_help=True)
err = Console(stderr=True)


class Mode(StrEnum):
    timeline = "timeline"
    packing = "packing"


TraceFormat = StrEnum("TraceFormat", {name: name for name in sorted(FORMATS)})  # type: ignore[misc]
PackingArrivals = StrEnum("PackingArrivals", {name: name for name in ARRIVALS})  # type: ignore[misc]


def _clean(value: Any) -> Any:
    """JSON cannot carry NaN: write ``null`` instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _write_outputs(results: list[dict[str, Any]], json_out: Path | None, report_out: Path | None, title: str) -> None:
    # Runs that kept per-job records are compared as a planner would (by size, fairness, SLO, cost); the records
    # themselves stay out of the outputs.
    compared = [r for r in results if r.get("mode") == "timeline" and "jobs" in r]
    planner = None
    if len(compared) > 1:
        weights: dict[str, float] = {}
        for r in compared:
            weights.update(r.get("tenant_weights", {}))
        planner = compare_runs(compared, weights)
    results = [{k: v for k, v in r.items() if k != "jobs"} for r in results]
    if json_out is not None:
        payload: Any = results[0] if len(results) == 1 else {"runs": results}
        if planner is not None:
            payload["planner"] = planner
        json_out.write_text(json.dumps(_clean(payload), indent=1, default=str), encoding="utf-8")
    if report_out is not None:
        section = planner_section(planner) if planner is not None else None
        report_out.write_text(render(results, title, section), encoding="utf-8")


def _headline(result: dict[str, Any]) -> str:
    name = result.get("scenario") or result.get("policy")
    if result.get("ordering") not in (None, "drf"):
        name = f"{name} / {result['ordering']}"
    if result.get("mode") == "packing":
        end = result.get(f"alloc_ratio_at_{round(result['inflation'] * 100)}")
        return (
            f"{name}: allocation {100 * (result.get('alloc_ratio_at_100') or 0):.2f}% at 100% arrived, "
            f"{100 * (end or 0):.2f}% at {round(result['inflation'] * 100)}% ({result['wall_s']:.2f} s)"
        )
    s = result["summary"]
    return (
        f"{name}: {s['jobs'].get('finished', 0)} jobs finished, wait p95 {s['wait_s']['p95']:.0f} s, "
        f"utilisation {s['utilisation']:.3f}, energy {s['energy_kwh']:.0f} kWh ({result['wall_s']:.1f} s)"
    )


def parse_knobs(items: list[str], option: str) -> dict[str, Any]:
    """``["min_runtime_s=0", "backfill=false"]`` -> ``{"min_runtime_s": 0, "backfill": False}`` (YAML values).

    >>> parse_knobs(["las_thresholds=[100, 200]", "backfill=false"], "--queueing")
    {'las_thresholds': [100, 200], 'backfill': False}
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{option} {item!r}: write KEY=VALUE")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _fail(exc: Exception) -> None:
    err.print(f"[red]error:[/red] {exc}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code=2)


@app.command("simulate")
def simulate(
    cluster: Annotated[Path | None, typer.Option(help="cluster YAML, openb node list, PAI machine spec")] = None,
    trace: Annotated[Path | None, typer.Option(help="trace file")] = None,
    format: Annotated[TraceFormat, typer.Option("--format", help="trace format")] = TraceFormat["native"],
    mode: Annotated[Mode, typer.Option(help="timeline replay or FGD packing experiment")] = Mode.timeline,
    policy: Annotated[str, typer.Option(help="scorer(s): fgd, binpack, spread, random; comma-separated")] = "fgd",
    inflation: Annotated[float, typer.Option(help="packing: stop at this × cluster GPUs arrived")] = 1.3,
    seed: Annotated[int, typer.Option(help="random seed (draws, random scorer, failures)")] = 0,
    scenario: Annotated[Path | None, typer.Option(help="what-if scenario YAML")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the results as JSON here")] = None,
    report: Annotated[Path | None, typer.Option(help="write a self-contained HTML report here")] = None,
    strict: Annotated[bool, typer.Option(help="stop at the first bad row instead of skipping it")] = False,
    include_cpu_only: Annotated[
        bool,
        typer.Option("--include-cpu-only/--gpu-pods-only", help="packing: also draw CPU-only pods (as the paper)"),
    ] = True,
    arrivals: Annotated[
        PackingArrivals,
        typer.Option(help="packing: the whole trace once in random order, then draws (as the paper), or draws only"),
    ] = PackingArrivals["shuffled-trace"],
    ordering: Annotated[
        str,
        typer.Option(
            help="ordering(s) of pending jobs, comma-separated (each a run, compared in one report): "
            "drf, fifo, fifo-strict, sjf, srtf, las, qssf"
        ),
    ] = "drf",
    policy_file: Annotated[
        Path | None, typer.Option("--policy-file", help="tenants, queues, quotas and per-queue orderings (YAML)")
    ] = None,
    queueing: Annotated[
        list[str] | None,
        typer.Option("--queueing", help="a QueueingConfig knob, KEY=VALUE (repeatable): min_runtime_s=0, ..."),
    ] = None,
    sim: Annotated[
        list[str] | None,
        typer.Option("--sim", help="a SimConfig knob, KEY=VALUE (repeatable): step_period_s=0.2, record_jobs=true"),
    ] = None,
    workers: Annotated[int, typer.Option(help="parallel runs for several policies/variants")] = 1,
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
    catalog: Annotated[Path | None, typer.Option(help="accelerator catalog (default seeds/)", hidden=True)] = None,
    throughput: Annotated[Path | None, typer.Option(help="throughput matrix (default seeds/)", hidden=True)] = None,
    autoscale: Annotated[
        bool,
        typer.Option(
            help="timeline: replay the KubeRay worker-group scaling rule (nodes start out of service, gangs get "
            "their nodes at once, idle ones go after --scale-grace); capacity over time in the report"
        ),
    ] = False,
    scale_grace: Annotated[float, typer.Option(min=0, help="--autoscale: seconds a node idles before it goes")] = 600.0,
    scale_startup: Annotated[
        float, typer.Option(min=0, help="--autoscale: seconds from a node's addition to its worker taking work")
    ] = 60.0,
    scale_interval: Annotated[
        float, typer.Option(min=0.001, help="--autoscale: seconds between two runs of the scaling rule")
    ] = 10.0,
) -> None:
    """Replay a trace (or a scenario) through the scheduling core; print a summary, write JSON/HTML."""
    if scenario is None and (cluster is None or trace is None):
        _fail(ValueError("give --cluster and --trace, or a --scenario that names them"))
    orderings = [o.strip() for o in ordering.split(",") if o.strip()]
    try:
        for name in orderings:
            check_ordering(name)
        queueing_knobs = parse_knobs(queueing or [], "--queueing")
        sim_knobs = parse_knobs(sim or [], "--sim")
    except ValueError as exc:
        _fail(exc)
        return
    base = RunSpec(
        cluster=str(cluster) if cluster else None,
        trace=str(trace) if trace else None,
        format=str(format.value),
        mode=mode.value,
        policy=policy.split(",")[0],
        seed=seed,
        inflation=inflation,
        scenario=str(scenario) if scenario else None,
        strict=strict,
        include_cpu_only=include_cpu_only,
        arrivals=cast(Arrivals, arrivals.value),
        catalog_path=str(catalog) if catalog else None,
        throughput_path=str(throughput) if throughput else None,
        ordering=orderings[0] if orderings else "drf",
        queueing=queueing_knobs,
        simulation=sim_knobs,
        policy_file=str(policy_file) if policy_file else None,
        autoscale=autoscale,
        scale_grace_s=scale_grace,
        scale_startup_s=scale_startup,
        scale_interval_s=scale_interval,
    )
    policies = [p.strip() for p in policy.split(",") if p.strip()]
    if (len(orderings) > 1 or len(policies) > 1) and mode is Mode.timeline:
        # Several policies of one workload: keep per-job records for the planner's comparison.
        base.simulation.setdefault("record_jobs", True)
    try:
        specs = grid(
            base,
            policies=policies if len(policies) > 1 or scenario is None else [],
            orderings=orderings if len(orderings) > 1 else [],
        )
        results = _execute(specs, workers, quiet)
    except (TraceError, ConfigError, ValueError, OSError) as exc:
        _fail(exc)
        return
    for result in results:
        err.print(_headline(result), highlight=False)
        if "scaling" in result:
            scaling = result["scaling"]
            err.print(
                f"  autoscaled: {scaling['node_hours_in_service']:.1f} node-hours in service of "
                f"{scaling['node_hours_installed']:.1f} installed, {len(scaling['decisions'])} scaling decisions",
                highlight=False,
            )
    title = f"Zhisuan simulation: {scenario.stem if scenario else (trace.name if trace else '')}"
    _write_outputs(results, json_out, report, title)
    if json_out is None and report is None:
        sys.stdout.write(json.dumps(_clean(results[0] if len(results) == 1 else {"runs": results}), default=str)[:2000])
        sys.stdout.write("\n")


def _execute(specs: list[RunSpec], workers: int, quiet: bool) -> list[dict[str, Any]]:
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=err,
        disable=quiet,
        transient=True,
    ) as progress:
        if workers > 1 and len(specs) > 1:
            task = progress.add_task("runs", total=len(specs), status="")
            return run_sweep(
                specs,
                backend="process",
                workers=workers,
                on_result=lambda i, r: progress.advance(task),
            )
        results = []
        for spec in specs:
            label = f"{spec.variant or spec.policy} ({spec.mode})"
            task = progress.add_task(label, total=100 if spec.mode == "packing" else None, status="")
            results.append(run(spec, _reporter(progress, task, spec.mode)))
            progress.update(task, completed=100, total=100)
        return results


def _reporter(progress: Progress, task: TaskID, mode: str) -> Any:
    def update(value: int) -> None:
        if mode == "packing":
            progress.update(task, completed=value, status=f"{value}% arrived")
        else:
            progress.update(task, status=f"{value:,} jobs arrived")

    return update


@app.command("sweep")
def sweep(
    scenario: Annotated[Path, typer.Option(help="scenario YAML whose variants form one axis")],
    policy: Annotated[str, typer.Option(help="comma-separated scorers (another axis); empty = scenario's")] = "",
    seeds: Annotated[str, typer.Option(help="comma-separated seeds (another axis)")] = "0",
    backend: Annotated[str, typer.Option(help=f"one of {', '.join(BACKENDS)}")] = "auto",
    address: Annotated[str | None, typer.Option(help="Ray cluster address (default: local Ray)")] = None,
    workers: Annotated[int | None, typer.Option(help="process-pool size")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write all results as JSON here")] = None,
    report: Annotated[Path | None, typer.Option(help="write the comparison report here")] = None,
) -> None:
    """Run a grid of scenario variants × policies × seeds (Ray tasks, or a local process pool)."""
    try:
        specs = grid(
            RunSpec(scenario=str(scenario)),
            policies=[p for p in policy.split(",") if p],
            seeds=[int(s) for s in seeds.split(",") if s],
        )
        results = run_sweep(specs, backend=backend, workers=workers, address=address)
    except (TraceError, ConfigError, ValueError, OSError) as exc:
        _fail(exc)
        return
    for spec, result in zip(specs, results, strict=True):
        result["scenario"] = f"{spec.variant} / {spec.policy} / seed {spec.seed}"
        err.print(_headline(result), highlight=False)
    _write_outputs(results, json_out, report, f"Zhisuan sweep: {scenario.stem}")


if __name__ == "__main__":
    app()
