"""A scenario sweep as Ray tasks on a real local multi-node Ray cluster (head + 2 emulated nodes).

The head declares no CPUs, so every ``num_cpus=1`` sweep task runs in a worker process of an emulated node's
raylet: the results must equal a serial run of the same grid, in the grid's order.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray

from scheduler.live.localcluster import LocalCluster
from scheduler.model import Node
from simulations.runner import RunSpec
from simulations.sweep import grid, run_sweep

pytestmark = pytest.mark.slow

NODES = [
    Node(id=f"sweep-{i}", model="H100", devices=1, cpu_milli=2000, memory_mib=2048, site="local") for i in range(2)
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(NODES, work_dir=tmp_path_factory.mktemp("ray-sweep")) as local:
        yield local


def _inputs(tmp_path: Path) -> tuple[Path, Path]:
    node_list = tmp_path / "nodes.csv"
    node_list.write_text(
        "sn,cpu_milli,memory_mib,gpu,model\n" + "".join(f"n{i},64000,262144,8,V100M16\n" for i in range(8))
    )
    pods = tmp_path / "pods.csv"
    pods.write_text(
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\n"
        "a,1000,1024,1,500,\nb,2000,1024,1,1000,\nc,4000,1024,2,1000,V100M16\nd,8000,4096,1,250,\n"
    )
    return node_list, pods


def _without_timing(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in results]


def test_sweep_runs_as_ray_tasks_on_the_cluster_and_matches_serial(cluster: LocalCluster, tmp_path: Path) -> None:
    node_list, pods = _inputs(tmp_path)
    base = RunSpec(cluster=str(node_list), trace=str(pods), format="alibaba-openb", mode="packing")
    specs = grid(base, policies=["fgd", "binpack"], seeds=[1, 2])
    finished: list[int] = []
    try:
        on_ray = run_sweep(specs, backend="ray", address=cluster.address, on_result=lambda i, _: finished.append(i))
        assert ray.cluster_resources().get("CPU") == 4.0, "the runs had only the emulated nodes' CPUs to use"
    finally:
        ray.shutdown()
    assert sorted(finished) == [0, 1, 2, 3]
    assert _without_timing(on_ray) == _without_timing(run_sweep(specs, backend="serial"))
    assert [(r["policy"], r["seed"]) for r in on_ray] == [(s.policy, s.seed) for s in specs]
    assert all(r["pods_placed"] > 0 and 0 < r["alloc_ratio_at_100"] <= 1 for r in on_ray)
