"""KubeRayCapacity, the scheduler service's step 3b on Kubernetes, with the real client against the replay server:
which nodes are in service, what it does when the API server is down or the RayCluster lacks a group, and the
service's mask (a node out of service takes no work, and its running work stays)."""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kube_replay import ReplayServer, api_client, status_object

from scheduler.catalog import SEEDS_DIR
from scheduler.core import SchedulerCore
from scheduler.errors import load_yaml_mapping
from scheduler.live.capacity import FixedCapacity
from scheduler.live.executors.instant import InstantExecutor
from scheduler.live.inventory.base import Inventory
from scheduler.live.inventory.kubernetes import inventory_from_objects
from scheduler.live.kuberay import KubeRayCapacity, KubeRayOptions, WorkerGroupSizer, raycluster
from scheduler.live.memory_store import MemoryStore
from scheduler.live.service import SchedulerService, ServiceConfig
from scheduler.model import Job
from scheduler.scaling import ScalingRule
from scheduler.spec import JobSpec
from scheduler.state import ClusterState

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "kubernetes"


def h100_objects(count: int) -> list[dict[str, Any]]:
    base = json.loads((FIXTURES / "nodes" / "h100-hgx.json").read_text())
    out = []
    for i in range(count):
        node = copy.deepcopy(base)
        node["metadata"]["name"] = f"bj1-h100-{i:02d}"
        del node["metadata"]["labels"]["zhisuan.io/island"]
        out.append(node)
    return out


class Fixed:
    """An inventory source that always answers the same inventory."""

    source = "kubernetes"

    def __init__(self, inventory: Inventory) -> None:
        self._inventory = inventory

    def inventory(self) -> Inventory:
        return self._inventory


def worker_pod(node: str, index: int, ready: bool = True) -> dict[str, Any]:
    labels = {"ray.io/cluster": "zhisuan", "ray.io/group": "bj1-h100", "ray.io/node-type": "worker"}
    return {
        "metadata": {"name": f"zhisuan-bj1-h100-worker-{index:05d}", "namespace": "zhisuan", "labels": labels},
        "spec": {"nodeName": node},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


@pytest.fixture
def server() -> Iterator[ReplayServer]:
    with ReplayServer() as srv:
        yield srv


def capacity(server: ReplayServer, objects: list[dict[str, Any]], replicas: int = 0) -> KubeRayCapacity:
    inventory = inventory_from_objects(objects)
    rc = raycluster(inventory, KubeRayOptions(name="zhisuan", namespace="zhisuan"), {"bj1-h100": replicas})
    rc["metadata"]["resourceVersion"] = "100"
    server.state.rayclusters[("zhisuan", "zhisuan")] = rc
    sizer = WorkerGroupSizer(api_client(server), "zhisuan", "zhisuan", max_attempts=2)
    return KubeRayCapacity(sizer, Fixed(inventory), ScalingRule(grace_s=60), poll_s=1.0)


def test_in_service_means_a_ready_pod_not_being_deleted_on_a_schedulable_node(server: ReplayServer) -> None:
    objects = h100_objects(4)
    objects[3]["spec"]["unschedulable"] = True  # cordoned in Kubernetes
    manager = capacity(server, objects, replicas=4)
    server.state.pods = [
        worker_pod("bj1-h100-00", 0),
        worker_pod("bj1-h100-01", 1, ready=False),  # starting
        worker_pod("bj1-h100-02", 2),
        worker_pod("bj1-h100-03", 3),
    ]
    group = server.state.rayclusters[("zhisuan", "zhisuan")]["spec"]["workerGroupSpecs"][0]
    group["scaleStrategy"] = {"workersToDelete": ["zhisuan-bj1-h100-worker-00002"]}  # being deleted
    assert manager.in_service(0.0) == {
        "bj1-h100-00": True,
        "bj1-h100-01": False,
        "bj1-h100-02": False,
        "bj1-h100-03": False,
    }
    assert manager.in_service(0.5) is None  # within poll_s: nothing new, and no request
    assert manager.groups["bj1-h100"].replicas == 4


def test_an_api_server_that_is_down_or_denies_changes_nothing_and_raises_nothing(
    server: ReplayServer, caplog: pytest.LogCaptureFixture
) -> None:
    manager = capacity(server, h100_objects(4))
    pending = [Job(id="gang", workers=4, devices_per_worker=8, models=("H100",))]
    assert manager.in_service(0.0) is not None
    # The write's first read is denied (RBAC), then a look finds the API server unavailable.
    server.state.fail_next.append((403, status_object(403, "Forbidden", 'cannot get resource "rayclusters"')))
    with caplog.at_level(logging.WARNING, "zhisuan.kuberay"):
        assert manager.size(ClusterState(), pending, {}, 0.0, lambda job: job.models) == ()
    assert "RBAC denied: cannot get rayclusters.ray.io" in manager.last_error
    assert any("keep their size" in r.message for r in caplog.records)
    server.state.fail_next.append((503, status_object(503, "ServiceUnavailable", "etcd is down")))
    assert manager.in_service(10.0) is None  # the last word stands
    assert "HTTP 503 etcd is down" in manager.last_error
    assert manager.size(ClusterState(), pending, {}, 10.0, lambda job: job.models) == ()  # no fresh look
    # It answers again: the gang's four nodes are asked for in one write.
    assert manager.in_service(20.0) is not None and manager.last_error == ""
    manager.size(ClusterState(), pending, {}, 20.0, lambda job: job.models)
    assert server.state.rayclusters[("zhisuan", "zhisuan")]["spec"]["workerGroupSpecs"][0]["replicas"] == 4


def test_a_group_missing_from_the_raycluster_keeps_its_nodes_out_of_service(
    server: ReplayServer, caplog: pytest.LogCaptureFixture
) -> None:
    manager = capacity(server, h100_objects(2))
    server.state.rayclusters[("zhisuan", "zhisuan")]["spec"]["workerGroupSpecs"] = []
    with caplog.at_level(logging.WARNING, "zhisuan.kuberay"):
        assert manager.in_service(0.0) == {"bj1-h100-00": False, "bj1-h100-01": False}
        manager.in_service(5.0)
    warnings = [r.message for r in caplog.records if "is not in RayCluster" in r.message]
    assert len(warnings) == 1 and "zhisuan kube raycluster" in warnings[0]  # said once, not every look


def test_the_service_masks_nodes_out_of_service_and_keeps_work_where_it_runs() -> None:
    clock = [1000.0]
    store = MemoryStore()
    store.set_policy(load_yaml_mapping(SEEDS_DIR / "policy.yaml"))
    for node in inventory_from_objects(h100_objects(2)).nodes:
        store.put_node(node.node)
    manager = FixedCapacity({"bj1-h100-00": False, "bj1-h100-01": True})
    service = SchedulerService(
        store,
        InstantExecutor(clock=lambda: clock[0]),
        ServiceConfig(holder="mask", step_every_s=0.0),
        core=SchedulerCore(),
        clock=lambda: clock[0],
        capacity=manager,
    )
    spec = JobSpec(name="one", workers=1, devices_per_worker=8, models=("H100",), entrypoint="true")
    first = "j1"
    store.submit(first, spec, tenant="acme", user="alice", now=clock[0])
    for _ in range(3):
        service.cycle()
        clock[0] += 1
    placed = service.state.allocations[first].nodes
    assert placed == ("bj1-h100-01",)  # the node out of service took nothing
    second = "j2"
    store.submit(second, spec.model_copy(update={"name": "two"}), tenant="acme", user="alice", now=clock[0])
    # The node with work leaves service: its job stays, and nothing new goes anywhere.
    manager.nodes = {"bj1-h100-00": False, "bj1-h100-01": False}
    for _ in range(3):
        service.cycle()
        clock[0] += 1
    assert first in service.state.allocations and second not in service.state.allocations
    manager.nodes["bj1-h100-00"] = True
    for _ in range(3):
        service.cycle()
        clock[0] += 1
    assert service.state.allocations[second].nodes == ("bj1-h100-00",)


def test_in_its_own_thread_an_api_server_that_went_away_never_holds_the_caller(server: ReplayServer) -> None:
    manager = capacity(server, h100_objects(4))
    manager.poll_s = 0.05
    manager.start()
    try:
        deadline = time.monotonic() + 5
        answer = None
        while answer is None and time.monotonic() < deadline:
            answer = manager.in_service(0.0)
            time.sleep(0.01)
        assert answer == dict.fromkeys((f"bj1-h100-{i:02d}" for i in range(4)), False)
        pending = [Job(id="gang", workers=4, devices_per_worker=8, models=("H100",))]
        manager.size(ClusterState(), pending, {}, 0.0, lambda job: job.models)  # handed to the thread
        # Until the write is carried out and looked at again, nothing is handed over (a look from before the
        # write would put nodes it removes back in service).
        while manager.in_service(1.0) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert manager.groups["bj1-h100"].replicas == 4
        assert server.state.rayclusters[("zhisuan", "zhisuan")]["spec"]["workerGroupSpecs"][0]["replicas"] == 4
        server.stop()  # connections refused from now on (urllib3's errors, not the API's)
        while "unreachable" not in manager.last_error and time.monotonic() < deadline:
            began = time.monotonic()
            assert manager.in_service(2.0) is None
            assert time.monotonic() - began < 0.05  # the caller (the scheduler's cycle) never waits for it
            time.sleep(0.01)
        assert "cannot get rayclusters.ray.io: API server unreachable" in manager.last_error
    finally:
        manager.close()


def test_without_a_thread_a_refused_connection_is_logged_not_raised(server: ReplayServer) -> None:
    manager = capacity(server, h100_objects(2))
    server.stop()
    assert manager.in_service(0.0) is None
    assert "API server unreachable" in manager.last_error
