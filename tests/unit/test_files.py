"""Cluster and job files: expansion, and one-line errors that name the file, the field and what is allowed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from scheduler.cluster import load_cluster
from scheduler.errors import ConfigError
from scheduler.jobfile import load_jobs

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_example_cluster_expands_with_islands_and_switches() -> None:
    cluster = load_cluster("example")
    state = cluster.state()
    assert cluster.devices == sum(n.devices for n in cluster.nodes) > 0
    h100 = [n for n in cluster.nodes if n.model == "H100"]
    assert h100 and all(n.site == "bj1" and n.switch.startswith("bj1-h100-switch") for n in h100)
    edge = [n for n in cluster.nodes if n.site == "sz-edge"]
    assert edge and all(n.tier.value == "edge" for n in edge)
    assert set(state.pools) >= {"bj1/H100", "gz1/Ascend910B"}


def test_aliases_resolve_to_catalog_ids(tmp_path: Path) -> None:
    path = write(
        tmp_path, "c.yaml", "pools: [{model: V100M32, nodes: 2, devices_per_node: 8, cpu_cores: 64, memory_gib: 256}]"
    )
    assert {n.model for n in load_cluster(path).nodes} == {"V100-32G"}


@pytest.mark.parametrize(
    ("text", "field", "fragment"),
    [
        (
            "pools: [{model: H900, nodes: 2, devices_per_node: 8, cpu_cores: 1, memory_gib: 1}]",
            "pools[0].model",
            "unknown accelerator model 'H900' (allowed: ",
        ),
        (
            "pools: [{model: H100, nodes: -2, devices_per_node: 8, cpu_cores: 1, memory_gib: 1}]",
            "pools[0].nodes",
            "greater than or equal to 0",
        ),
        (
            "pools: [{model: H100, site: mars, nodes: 1, devices_per_node: 8, cpu_cores: 1, memory_gib: 1}]",
            "pools[0].site",
            "unknown site 'mars' (allowed: default)",
        ),
        (
            "pools: [{model: H100, nodes: 1, devices_per_node: 8, cpu_cores: 1, memory_gib: 1, colour: red}]",
            "pools[0].colour",
            "unknown field",
        ),
        ("pools: [{model: H100, nodes: 1\n  - oops", "", "malformed YAML: line"),
        (
            "nodes: [{id: a, model: T4, devices: 1, cpu_cores: 1, memory_gib: 1},"
            " {id: a, model: T4, devices: 1, cpu_cores: 1, memory_gib: 1}]",
            "nodes",
            "duplicate node id 'a'",
        ),
    ],
)
def test_bad_cluster_files_name_file_field_and_fix(tmp_path: Path, text: str, field: str, fragment: str) -> None:
    path = write(tmp_path, "bad.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_cluster(path)
    message = str(info.value)
    assert message.startswith(str(path))
    assert "\n" not in message
    assert info.value.field == field
    assert fragment in message


@pytest.mark.parametrize(
    ("text", "field", "fragment"),
    [
        (
            "jobs: [{id: a, devices_per_worker: 16, models: [H100]}]",
            "jobs[0].devices_per_worker",
            "exceed the largest node",
        ),
        ("jobs: [{id: a, devices_per_worker: 1.5}]", "jobs[0].devices_per_worker", "only allowed below one device"),
        ("jobs: [{id: a, workers: -1}]", "jobs[0].workers", "greater than or equal to 1"),
        ("jobs: [{id: a, models: [TPUv5]}]", "jobs[0].models[0]", "unknown accelerator model 'TPUv5'"),
        ("jobs: [{id: a, models: [MI300X]}]", "jobs[0].models", "no pool of MI300X exists in this cluster"),
        ("jobs: [{id: a}, {id: a}]", "jobs[1].id", "duplicate job id"),
        ("jobs: [{id: a, kind: batch}]", "jobs[0].kind", "allowed: training, inference"),
    ],
)
def test_bad_job_files_are_rejected_whole(tmp_path: Path, text: str, field: str, fragment: str) -> None:
    path = write(tmp_path, "jobs.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_jobs(path, state=load_cluster("example").state())
    assert info.value.field == field
    assert fragment in str(info.value)


def test_job_aliases_resolve(tmp_path: Path) -> None:
    path = write(tmp_path, "jobs.yaml", "jobs: [{id: a, models: [v100, 'Tesla T4']}]")
    assert load_jobs(path)[0].models == ("V100-32G", "T4")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "api.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )


def test_cli_place_prints_decisions_as_json() -> None:
    import json

    result = run_cli("place", "-o", "json")
    assert result.returncode == 0, result.stderr
    decisions = json.loads(result.stdout)
    by_job = {d["job"]: d for d in decisions}
    assert by_job["llama-pretrain"]["decision"] == "start"
    assert len(by_job["llama-pretrain"]["workers"]) == 4
    assert by_job["too-big-for-h100"]["decision"] == "reject"
    assert by_job["too-big-for-h100"]["reasons"][0]["code"] == "unschedulable"
    assert by_job["too-big-for-h100"]["eta"] is None
    assert all(d["eta"] is None for d in decisions if d["decision"] == "start")


def test_cli_reports_bad_files_with_exit_code_2(tmp_path: Path) -> None:
    path = write(tmp_path, "jobs.yaml", "jobs: [{id: a, devices_per_worker: 16, models: [H100]}]")
    result = run_cli("place", "--jobs", str(path))
    assert result.returncode == 2
    assert "jobs[0].devices_per_worker" in result.stderr
