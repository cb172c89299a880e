"""Scenarios, the CLI (JSON + HTML report, bad input), sweeps and the report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sim_support import ROOT, nodes
from typer.testing import CliRunner

from scheduler.errors import ConfigError
from scheduler.throughput import JobClass
from simulations.cli import app
from simulations.report import line_chart, render
from simulations.runner import RunSpec
from simulations.scenario import apply_changes, grow_demand, load_scenario, parse_scenario
from simulations.schema import TraceJob, write_native
from simulations.sweep import grid, run_sweep

runner = CliRunner()


def test_example_scenario_is_valid_and_expands() -> None:
    scenario = load_scenario(ROOT / "seeds" / "scenarios" / "ascend-expansion.yaml")
    runs = scenario.expand()
    assert [r.name for r in runs] == ["today", "+64 Ascend910B", "+64 Ascend910B binpack"]
    assert runs[0].changes == [] and runs[2].policy.scorer == "binpack"
    assert scenario.path(scenario.cluster or "").exists()


def test_changes_add_and_remove_pools() -> None:
    scenario = parse_scenario(
        {
            "name": "x",
            "changes": [
                {
                    "add": {
                        "model": "Ascend910B",
                        "site": "gz1",
                        "nodes": 2,
                        "devices_per_node": 8,
                        "cpu_cores": 192,
                        "memory_gib": 1536,
                    }
                },
                {"remove": {"model": "A100", "nodes": 1}},
            ],
        }
    )
    from scheduler.catalog import load_catalog

    after = apply_changes(nodes(count=3), scenario.changes, load_catalog())
    assert sum(1 for n in after if n.model == "A100") == 2
    assert sum(n.devices for n in after if n.model == "Ascend910B") == 16
    with pytest.raises(ConfigError, match="only 3 A100 nodes"):
        apply_changes(
            nodes(count=3),
            parse_scenario({"name": "y", "changes": [{"remove": {"model": "A100", "nodes": 5}}]}).changes,
            load_catalog(),
        )
    with pytest.raises(ConfigError, match="exactly one"):
        parse_scenario({"name": "z", "changes": [{}]})


def test_demand_growth_is_seeded_and_per_class() -> None:
    jobs = [
        TraceJob(
            id=str(i), submit_time=i, duration_s=1, job_class=JobClass.LLM_PRETRAIN if i % 2 else JobClass.CV_TRAIN
        )
        for i in range(1000)
    ]
    grown = list(grow_demand(jobs, {"llm-pretrain": 2.5, "default": 0.5}, seed=1))
    assert grown == list(grow_demand(jobs, {"llm-pretrain": 2.5, "default": 0.5}, seed=1))
    llm = sum(1 for j in grown if j.job_class.value == "llm-pretrain")
    cv = sum(1 for j in grown if j.job_class.value == "cv-train")
    assert 1150 < llm < 1350 and 200 < cv < 300


def _packing_inputs(tmp_path: Path) -> tuple[Path, Path]:
    node_list = tmp_path / "nodes.csv"
    node_list.write_text(
        "sn,cpu_milli,memory_mib,gpu,model\n"
        + "".join(f"n{i},64000,262144,8,V100M16\n" for i in range(4))
        + "c0,32000,1000,0,\n"
    )
    pods = tmp_path / "pods.csv"
    pods.write_text(
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\n"
        "a,1000,1024,1,500,\nb,2000,1024,1,1000,\nc,4000,1024,2,1000,V100M16\nd,1000,1024,0,0,\n"
    )
    return node_list, pods


def test_cli_packing_writes_json_and_a_self_contained_report(tmp_path: Path) -> None:
    node_list, pods = _packing_inputs(tmp_path)
    out_json, out_html = tmp_path / "r.json", tmp_path / "r.html"
    result = runner.invoke(
        app,
        [
            "simulate",
            "--cluster",
            str(node_list),
            "--trace",
            str(pods),
            "--format",
            "alibaba-openb",
            "--mode",
            "packing",
            "--policy",
            "fgd,random",
            "--seed",
            "3",
            "--json",
            str(out_json),
            "--report",
            str(out_html),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out_json.read_text())
    assert [r["policy"] for r in data["runs"]] == ["fgd", "random"]
    assert data["runs"][0]["cluster"]["skipped"]["skipped"] == {"CPU-only node (no accelerator pool to join)": 1}
    page = out_html.read_text()
    assert (
        page.count("<svg") >= 2
        and "<script" not in page
        and "http" not in page.replace("http://www.w3.org/2000/svg", "")
    )


def test_cli_bad_input_is_one_line_with_file_row_column(tmp_path: Path) -> None:
    node_list, _ = _packing_inputs(tmp_path)
    trace = tmp_path / "t.csv"
    trace.write_text("id,submit_time,duration_s\nok,0,10\nbad,1,-5\n")
    result = runner.invoke(app, ["simulate", "--cluster", str(node_list), "--trace", str(trace), "--strict", "--quiet"])
    assert result.exit_code == 2
    assert "t.csv:3: column 'duration_s': negative duration_s" in result.output.replace("\n", "")
    result = runner.invoke(
        app, ["simulate", "--cluster", str(node_list), "--trace", str(tmp_path / "none.csv"), "--quiet"]
    )
    assert result.exit_code == 2 and "no such file" in result.output and len(result.output.splitlines()) == 1


def test_cli_timeline_scenario_with_variants(tmp_path: Path) -> None:
    scenario = tmp_path / "s.yaml"
    scenario.write_text(
        f"name: small\ncluster: {ROOT / 'seeds' / 'clusters' / 'example.yaml'}\n"
        "workload: {synthetic: {jobs: 150, load: 0.9, seed: 2}}\n"
        "demand_growth: {llm-pretrain: 2}\n"
        "targets: {wait_p95_s: 100000}\n"
        "variants: [{name: base}, {name: more, changes: [{add: {model: H100, site: bj1, nodes: 2,"
        " devices_per_node: 8, cpu_cores: 192, memory_gib: 2048}}]}]\n"
    )
    out_json, out_html = tmp_path / "s.json", tmp_path / "s.html"
    result = runner.invoke(
        app, ["simulate", "--scenario", str(scenario), "--json", str(out_json), "--report", str(out_html), "--quiet"]
    )
    assert result.exit_code == 0, result.output
    runs = json.loads(out_json.read_text())["runs"]
    assert [r["scenario"] for r in runs] == ["base", "more"]
    assert runs[1]["cluster"]["devices"] == runs[0]["cluster"]["devices"] + 16
    # The synthetic demand is sized for the base cluster: both variants face the same jobs.
    assert runs[0]["trace"] == runs[1]["trace"]
    assert runs[0]["trace"]["sized_for_devices"] == runs[0]["cluster"]["devices"]
    assert runs[1]["summary"]["wait_s"]["mean"] <= runs[0]["summary"]["wait_s"]["mean"]
    for run in runs:
        s = run["summary"]
        assert s["jobs"]["finished"] > 100 and s["energy_kwh"] > 0 and run["targets"]["wait_p95_s"]["met"]
        assert set(s["ncu_hours_by_tenant"]) and 0 <= s["domestic_share_ncu"] <= 1
    assert "Scenario comparison" in out_html.read_text()


def test_sweep_backends_agree(tmp_path: Path) -> None:
    node_list, pods = _packing_inputs(tmp_path)
    base = RunSpec(cluster=str(node_list), trace=str(pods), format="alibaba-openb", mode="packing")
    specs = grid(base, policies=["binpack", "random"], seeds=[1])
    serial = run_sweep(specs, backend="serial")
    pooled = run_sweep(specs, backend="process", workers=2)

    def strip(rs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "wall_s"} for r in rs]

    assert strip(serial) == strip(pooled)
    with pytest.raises(ValueError, match="unknown sweep backend"):
        run_sweep(specs, backend="slurm")


def test_native_trace_timeline_via_cli(tmp_path: Path) -> None:
    trace = tmp_path / "jobs.csv"
    write_native(
        [TraceJob(id=f"j{i}", submit_time=i * 10.0, duration_s=100, devices_per_worker=1) for i in range(20)], trace
    )
    out = tmp_path / "o.json"
    result = runner.invoke(
        app,
        [
            "simulate",
            "--cluster",
            str(ROOT / "seeds" / "clusters" / "example.yaml"),
            "--trace",
            str(trace),
            "--json",
            str(out),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["summary"]["jobs"]["finished"] == 20


def test_report_helpers_handle_empty_and_nan() -> None:
    assert "no data" in line_chart({}, title="t", x_label="x", y_label="y")
    page = render([])
    assert page.startswith("<!doctype html>")
