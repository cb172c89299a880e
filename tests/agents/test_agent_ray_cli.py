"""Ray declaration of a node, the typer CLI, and the docstring examples of every agent module."""

from __future__ import annotations

import doctest
import importlib
import json

import pytest
from agent_fakes import StubApi
from typer.testing import CliRunner

from agents.cli import app
from scheduler.catalog import load_catalog
from scheduler.live.executors.ray import node as worker
from scheduler.model import Node
from scheduler.ray_node import NODE_LABEL, ray_label_value, ray_node_spec

runner = CliRunner()


def _node(model: str = "H100", devices: int = 8) -> Node:
    return Node(
        id="gpu-01", model=model, devices=devices, cpu_milli=96_000, memory_mib=512 * 1024, site="bj1", island="nvl-a"
    )


@pytest.mark.parametrize(
    ("vendor", "model", "name"),
    [
        ("nvidia", "H100", "GPU"),
        ("huawei", "Ascend910B", "NPU"),
        ("cambricon", "MLU370", "MLU"),
        ("kunlunxin", "P800", "XPU"),
        ("hygon", "K100", "DCU"),
        ("iluvatar", "BI-V150", "IXGPU"),
    ],
)
def test_ray_resources_per_vendor(vendor: str, model: str, name: str) -> None:
    spec = ray_node_spec(_node(model), vendor)
    assert load_catalog().vendor(vendor).ray_resource == name
    if name == "GPU":
        assert spec.num_gpus == 8 and name not in spec.resources
    else:
        assert spec.num_gpus == 0 and spec.resources[name] == 8
    assert spec.resources[f"accelerator_type:{model}"] == 1
    assert spec.labels == {
        "zhisuan.io/node": "gpu-01",
        "zhisuan.io/model": model,
        "zhisuan.io/vendor": vendor,
        "zhisuan.io/pool": f"bj1.{model}",
        "zhisuan.io/island": "nvl-a",
    }
    assert spec.num_cpus == 96 and spec.memory_bytes == 512 * 2**30


def test_ray_spec_declares_only_healthy_devices_and_valid_labels() -> None:
    spec = ray_node_spec(_node(), "nvidia", healthy_devices=6)
    assert spec.num_gpus == 6
    args = spec.ray_start_args()
    assert "--num-gpus=6" in args and any(a.startswith("--labels=zhisuan.io/island=nvl-a,") for a in args)
    assert ray_label_value("bj1/H100 (x)") == "bj1.H100..x"
    assert ray_label_value("/") == "none"


def test_node_side_label_matches_the_shared_one() -> None:
    # The node-side module spells the label out to stay free of pydantic; it must not drift.
    assert worker.NODE_LABEL == NODE_LABEL


def test_cli_discover_emulated() -> None:
    result = runner.invoke(app, ["discover", "--emulate", "H100:2"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert len(out["devices"]) == 2 and out["samples"][0]["utilization_pct"] == 0


def test_cli_discover_real_vendors_absent_here() -> None:
    result = runner.invoke(app, ["discover", "--vendor", "nvidia", "--vendor", "huawei", "--tool-timeout", "2"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["devices"] == [] and {v["state"] for v in out["vendors"]} == {"absent"}


def test_cli_ray_spec() -> None:
    result = runner.invoke(app, ["ray-spec", "--emulate", "H100:4", "--node-id", "n7", "--site", "sz"])
    assert result.exit_code == 0, result.output
    spec = json.loads(result.output)["spec"]
    assert spec["num_gpus"] == 4 and spec["labels"]["zhisuan.io/pool"] == "sz.H100"


def test_cli_run_against_loopback_api(api: StubApi) -> None:
    result = runner.invoke(
        app,
        [
            "run",
            "--api-url",
            api.url,
            "--token",
            api.token,
            "--node-id",
            "cli-node",
            "--emulate",
            "H100:2",
            "--interval",
            "0.05",
            "--ticks",
            "3",
            "--exporter-port",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output
    assert api.registrations[0].node.node_id == "cli-node"
    assert api.received_seqs[:2] == [0, 1]


def test_cli_run_with_bad_token_exits_nonzero(api: StubApi) -> None:
    result = runner.invoke(
        app,
        [
            "run",
            "--api-url",
            api.url,
            "--token",
            "nope",
            "--emulate",
            "H100:1",
            "--ticks",
            "2",
            "--exporter-port",
            "0",
            "--interval",
            "0.05",
        ],
    )
    assert result.exit_code == 2


@pytest.mark.parametrize(
    "module",
    [
        "agents.shims.base",
        "agents.health",
        "agents.shims.tool",
        "agents.shims.ascend",
        "agents.shims.cambricon",
        "agents.shims.hygon",
        "agents.shims.kunlunxin",
        "agents.shims.iluvatar",
        "agents.shims.metax",
        "agents.shims.moorethreads",
        "agents.shims.amd",
        "agents.shims.nvml",
        "agents.shims.emulated",
        "agents.protocol",
        "agents.agent",
        "agents.exporter",
        "agents.shims",
    ],
)
def test_docstring_examples(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
