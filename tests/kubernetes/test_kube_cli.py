"""``zhisuan kube nodes`` as a real process on the node fixtures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

NODES = Path(__file__).resolve().parent.parent / "fixtures" / "kubernetes" / "nodes"
ROOT = Path(__file__).resolve().parents[2]


def kube(*args: str) -> subprocess.CompletedProcess[str]:
    zhisuan = Path(sys.executable).with_name("zhisuan")
    return subprocess.run(
        [str(zhisuan), "kube", *args], capture_output=True, text=True, cwd=ROOT, timeout=120, check=False
    )


def test_json_report_of_a_list_and_single_yaml_objects() -> None:
    done = kube("nodes", str(NODES / "cluster-list.json"), str(NODES / "ascend-310p.yaml"), "-o", "json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    by_name = {n["name"]: n for n in report["nodes"]}
    h100 = by_name["bj1-h100-07"]
    assert {k: h100[k] for k in ("pool", "model", "vendor", "devices", "cpu", "island", "switch", "schedulable")} == {
        "pool": "bj1/H100",
        "model": "H100",
        "vendor": "nvidia",
        "devices": 8,
        "cpu": 223.5,
        "island": "bj1-hgx-07",
        "switch": "bj1-leaf-03",
        "schedulable": True,
    }
    assert by_name["sh1-h100-hami-01"]["virtual"] == {"nvidia.com/gpu": 80.0}
    assert len(by_name["sh1-h100-hami-01"]["registered_devices"]) == 8
    assert not by_name["bj1-h100-10"]["schedulable"]
    assert "cordoned (spec.unschedulable)" in by_name["bj1-h100-10"]["reasons"]
    left = {o["name"]: o["reason"] for o in report["left_out"]}
    assert left["sh1-h100-hami-02"].startswith("malformed annotation hami.io/node-nvidia-register")
    assert "unknown vendor" in left["gcu-01"]
    assert report["summary"]["left_out"] == len(left)


def test_table_output_names_nodes_left_out() -> None:
    done = kube("nodes", str(NODES / "cluster-list.json"))
    assert done.returncode == 0, done.stderr
    assert "left out" in done.stdout and "dgx-a100-mig" in done.stdout
    assert "schedulable" in done.stdout.splitlines()[-1]


def test_bad_files_exit_2_naming_the_file(tmp_path: Path) -> None:
    pods = tmp_path / "pods.yaml"
    pods.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n")
    done = kube("nodes", str(pods))
    assert done.returncode == 2
    assert "pods.yaml: expected kind Node, NodeList or List, got 'Pod'" in " ".join(done.stderr.split())
    missing = kube("nodes", str(tmp_path / "nope.json"))
    assert missing.returncode == 2 and "cannot read file" in missing.stderr


def test_raycluster_command_prints_the_generated_cluster() -> None:
    done = kube("raycluster", str(NODES / "cluster-list.json"), "--name", "center")
    assert done.returncode == 0, done.stderr
    import yaml

    rc = yaml.safe_load(done.stdout)
    assert rc["kind"] == "RayCluster" and rc["metadata"]["name"] == "center"
    assert "gy1-ascend910c-gy1-superpod-2" in {g["groupName"] for g in rc["spec"]["workerGroupSpecs"]}
    assert "left out gcu-01" in done.stderr
