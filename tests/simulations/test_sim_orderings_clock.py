"""The simulator as a planner's instrument: the live service's clock (period, launch latency), preempted jobs that
resume, wake-ups at LAS thresholds, hidden runtimes, the planner's comparison (JSON + HTML, CLI) and the ETA band."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sim_support import nodes, public_trace
from typer.testing import CliRunner

from api.commands.jobs import eta_text
from api.models import EtaOut
from scheduler.core import CoreConfig, QueueingConfig, SchedulerCore
from scheduler.eta import Calibration, EtaBand
from scheduler.model import JobKind, PriorityClass
from simulations.cli import app
from simulations.planner import compare_runs, jain, planner_section
from simulations.runner import RunSpec, run
from simulations.schema import TraceJob, write_native
from simulations.timeline import SimConfig, TimelineSimulation


def one_node(devices: int = 4) -> list:  # type: ignore[type-arg]
    return nodes(count=1, devices=devices)


def replay(jobs: list[TraceJob], config: SimConfig, ordering: str = "drf", **queueing: object) -> dict[str, dict]:  # type: ignore[type-arg]
    core = SchedulerCore(CoreConfig(queueing=QueueingConfig(ordering=ordering, **queueing)))  # type: ignore[arg-type]
    config.record_jobs = True
    result = TimelineSimulation(one_node(), core, config).run(jobs)
    return {r["id"]: r for r in result.jobs}


def test_reports_are_seen_at_the_next_cycle_and_arrivals_at_once() -> None:
    jobs = [
        TraceJob(id="a", submit_time=0.0, duration_s=10.3, devices_per_worker=4),
        TraceJob(id="b", submit_time=0.5, duration_s=5.0, devices_per_worker=4),
    ]
    records = replay(jobs, SimConfig(step_period_s=1.0))
    assert records["a"]["start"] == 0.0 and records["a"]["end"] == pytest.approx(11.0)
    assert records["b"]["start"] == pytest.approx(11.0) and records["b"]["end"] == pytest.approx(16.0)
    on_period = replay(jobs, SimConfig(step_period_s=1.0, arrivals_on_period=True))
    assert on_period["b"]["start"] == pytest.approx(11.0)
    late = replay(
        [TraceJob(id="c", submit_time=0.5, duration_s=2.0, devices_per_worker=4)],
        SimConfig(step_period_s=1.0, arrivals_on_period=True),
    )
    assert late["c"]["start"] == pytest.approx(1.0)


def test_launch_latency_holds_the_devices_before_the_run() -> None:
    records = replay(
        [TraceJob(id="a", submit_time=0.0, duration_s=10.0, devices_per_worker=4)], SimConfig(launch_latency_s=2.0)
    )
    assert records["a"]["start"] == 0.0 and records["a"]["end"] == pytest.approx(12.0)


def test_a_preempted_job_resumes_where_it_stopped_when_configured() -> None:
    jobs = [
        TraceJob(id="train", submit_time=0.0, duration_s=100.0, devices_per_worker=4),
        TraceJob(
            id="serve",
            submit_time=40.0,
            duration_s=10.0,
            devices_per_worker=4,
            kind=JobKind.INFERENCE,
            priority=PriorityClass.PRODUCTION_INFERENCE,
        ),
    ]
    resumed = replay(jobs, SimConfig(preempted_resume=True), min_runtime_s=0.0, preempted_resume=True)
    assert resumed["train"]["preemptions"] == 1 and resumed["train"]["end"] == pytest.approx(110.0)
    restarted = replay(jobs, SimConfig(), min_runtime_s=0.0)
    assert restarted["train"]["end"] == pytest.approx(150.0)  # no checkpoint: all 100 s again after 50 s


def test_las_displaces_a_job_at_the_moment_it_crosses_a_threshold() -> None:
    jobs = [
        TraceJob(id="old", submit_time=0.0, duration_s=100.0, devices_per_worker=4),
        TraceJob(id="new", submit_time=10.0, duration_s=10.0, devices_per_worker=4),
    ]
    records = replay(
        jobs, SimConfig(preempted_resume=True), "las", min_runtime_s=0.0, preempted_resume=True, las_thresholds=(100.0,)
    )
    # 4 devices attain 100 device-seconds at t=25: the newcomer (level 0) goes first from then on.
    assert records["new"]["start"] == pytest.approx(25.0) and records["old"]["preemptions"] == 1
    assert records["old"]["end"] == pytest.approx(110.0)


def test_hidden_runtimes_leave_sjf_to_the_estimator_and_the_result_says_so(tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    write_native(
        [TraceJob(id=f"j{i}", submit_time=float(i), duration_s=60.0 * (5 - i), devices_per_worker=8) for i in range(5)],
        trace,
    )
    cluster = public_trace("tiresias", "n32g4.csv")
    spec = RunSpec(
        cluster=str(cluster), trace=str(trace), format="native", ordering="sjf", simulation={"hide_runtimes": True}
    )
    assert "hidden from the core" in run(spec)["runtimes"]
    assert "oracle" in run(RunSpec(cluster=str(cluster), trace=str(trace), ordering="sjf"))["runtimes"]


def busy_trace(path: Path) -> Path:
    jobs = [
        TraceJob(
            id=f"j{i:02d}",
            submit_time=float(5 * i),
            duration_s=float(30 + 97 * i % 400),
            workers=1 + i % 3,
            devices_per_worker=4.0 if i % 4 else 0.5,
            tenant="ab"[i % 2],
            queue="ab"[i % 2],
            kind=JobKind.INFERENCE if i % 7 == 0 else JobKind.TRAINING,
        )
        for i in range(40)
    ]
    write_native(jobs, path)
    return path


def test_planner_compares_orderings_by_size_fairness_slo_and_cost(tmp_path: Path) -> None:
    trace = busy_trace(tmp_path / "busy.csv")
    cluster = str(public_trace("tiresias", "n32g4.csv"))
    runs = [
        run(RunSpec(cluster=cluster, trace=str(trace), ordering=o, simulation={"record_jobs": True}))
        for o in ("fifo", "sjf")
    ]
    report = compare_runs(runs, {"a": 2.0, "b": 1.0})
    assert [r["ordering"] for r in report["runs"]] == ["fifo", "sjf"]
    for entry in report["runs"]:
        assert entry["jobs"] == 40 and set(entry["tenants"]) == {"a", "b"}
        assert entry["tenants"]["a"]["weight_share"] == pytest.approx(2 / 3)
        assert 0.5 <= entry["jain_share_over_weight"] <= 1.0
        assert {"fractional", "5-8"} <= set(entry["by_size"]) and entry["by_size"]["5-8"]["wait_cdf"]
        assert entry["cost"]["total"] > 0 and entry["ncu_hours"] > 0
    html = planner_section(report)
    assert "Policies side by side" in html and "Queueing delay CDF" in html and "Jain" in html
    assert jain([2.0, 2.0]) == 1.0


def test_cli_compares_orderings_in_one_report_and_refuses_bad_names(tmp_path: Path) -> None:
    trace = busy_trace(tmp_path / "busy.csv")
    cluster = str(public_trace("tiresias", "n32g4.csv"))
    out, page = tmp_path / "r.json", tmp_path / "r.html"
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "simulate",
            "--cluster",
            cluster,
            "--trace",
            str(trace),
            "--ordering",
            "drf,fifo-strict,las",
            "--queueing",
            "min_runtime_s=0",
            "--json",
            str(out),
            "--report",
            str(page),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert [r["ordering"] for r in data["planner"]["runs"]] == ["drf", "fifo-strict", "las"]
    assert all("jobs" not in r for r in data["runs"])  # per-job records stay out of the output
    assert "Policies side by side" in page.read_text()
    bad = runner.invoke(app, ["simulate", "--cluster", cluster, "--trace", str(trace), "--ordering", "lifo"])
    assert bad.exit_code == 2
    message = " ".join(bad.output.split())
    assert "unknown ordering 'lifo' (allowed: drf, fifo, fifo-strict, sjf, srtf, las, qssf)" in message
    knob = runner.invoke(app, ["simulate", "--cluster", cluster, "--trace", str(trace), "--queueing", "speed=2"])
    assert knob.exit_code == 2 and "unknown queueing parameter 'speed'" in " ".join(knob.output.split())


def test_eta_band_calibration_and_what_zhisuan_eta_shows() -> None:
    band = EtaBand(early=0.9, late=1.0, floor_s=120.0)
    assert band.around(start=1600.0, now=1000.0) == (1060.0, 2200.0)
    assert band.around(start=1010.0, now=1000.0) == (1000.0, 1130.0)  # never before now; the floor
    calibration = Calibration(window=10, least=2)
    for job, (made, forecast, real) in enumerate([(0.0, 100.0, 200.0), (0.0, 50.0, 100.0), (0.0, 10.0, 30.0)]):
        calibration.remember(f"j{job}", made, forecast)
        calibration.started(f"j{job}", real)
    assert calibration.factor == 2.0 and calibration.scaled(start=160.0, now=100.0) == 220.0
    shown = EtaOut.from_api(
        {
            "job_id": "j",
            "state": "pending",
            "estimated_start": 1_000_720.0,
            "estimated_finish": None,
            "computed_at": None,
            "start_earliest": 1_000_300.0,
            "start_latest": 1_001_500.0,
        }
    )
    text = eta_text(shown, now=1_000_000.0)
    assert text.startswith("starts between ") and " and " in text and "(most likely in 12 min" in text
