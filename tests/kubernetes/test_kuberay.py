"""The generated RayCluster (schema, pod templates, Ray declarations), readiness, and the sizer against the replay
server — including the 4-node gang scaling scenario with the real client."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from kube_replay import ReplayServer, api_client

from scheduler.core import SchedulerCore
from scheduler.live.inventory.base import Inventory
from scheduler.live.inventory.kubernetes import inventory_from_objects, node_objects
from scheduler.live.kuberay import (
    KubeRayOptions,
    SizerError,
    WorkerGroupSizer,
    plan_worker_groups,
    raycluster,
    readiness,
)
from scheduler.model import DecisionKind, Job
from scheduler.ray_node import ray_node_spec
from scheduler.scaling import GroupTarget, ScalingRule
from scheduler.state import ClusterState

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "kubernetes"
SCHEMA = json.loads((FIXTURES / "schema" / "raycluster-v1-subset.schema.json").read_text())
#: Two Kubernetes minor versions the manifests must validate against.
K8S_VERSIONS = ("1.31.0", "1.35.0")


def cluster_inventory() -> Inventory:
    return inventory_from_objects(node_objects(json.loads((FIXTURES / "nodes" / "cluster-list.json").read_text())))


def h100_pool_inventory(count: int = 8) -> Inventory:
    base = json.loads((FIXTURES / "nodes" / "h100-hgx.json").read_text())
    objects = []
    for i in range(count):
        node = copy.deepcopy(base)
        node["metadata"]["name"] = f"bj1-h100-{i:02d}"
        del node["metadata"]["labels"]["zhisuan.io/island"]  # each node its own NVLink island
        objects.append(node)
    return inventory_from_objects(objects)


def test_the_generated_raycluster_matches_the_crd_subset_and_its_pods_validate_strictly() -> None:
    rc = raycluster(cluster_inventory(), KubeRayOptions(name="zhisuan", namespace="zhisuan"))
    jsonschema.validate(rc, SCHEMA)
    templates = [rc["spec"]["headGroupSpec"]["template"]] + [g["template"] for g in rc["spec"]["workerGroupSpecs"]]
    for template in templates:
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "t", **template.get("metadata", {})}}
        pod["spec"] = template["spec"]
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(pod, version, strict=True)


def test_the_schema_accepts_kuberays_own_sample_and_rejects_a_typo() -> None:
    sample = yaml.safe_load((FIXTURES / "kuberay" / "ray-cluster.sample.yaml").read_text())
    jsonschema.validate(sample, SCHEMA)
    typo = copy.deepcopy(sample)
    typo["spec"]["workerGroupSpecs"][0]["replica"] = 2
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(typo, SCHEMA)


def test_head_takes_no_work_and_workers_declare_what_the_agent_declares() -> None:
    inv = cluster_inventory()
    rc = raycluster(inv)
    assert rc["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert rc["spec"]["enableInTreeAutoscaling"] is False
    groups = {g["groupName"]: g for g in rc["spec"]["workerGroupSpecs"]}
    a3 = groups["gy1-ascend910c-gy1-superpod-2"]
    params = a3["rayStartParams"]
    resources = json.loads(params["resources"][1:-1].replace('\\"', '"'))
    plan = next(p for p in plan_worker_groups(inv) if p.name == a3["groupName"])
    shape = next(n.node for n in inv.nodes if n.node.id == "gy1-a3-0213")
    expected = ray_node_spec(shape.model_copy(update={"cpu_milli": plan.cpu_milli}), "huawei")
    assert resources == expected.resources == {"NPU": 16.0, "accelerator_type:Ascend910C": 1.0}
    labels = dict(kv.split("=", 1) for kv in params["labels"].split(","))
    assert labels["zhisuan.io/node"] == "$(NODE_NAME)"
    assert labels["zhisuan.io/island"] == "gy1-superpod-2"  # a named island: one group per island
    container = a3["template"]["spec"]["containers"][0]
    assert container["env"] == [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]
    assert container["resources"]["limits"]["huawei.com/Ascend910"] == "16"
    assert {"key": "huawei.com/Ascend910", "operator": "Exists"} in a3["template"]["spec"]["tolerations"]
    terms = a3["template"]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"][0]["matchFields"][0]["values"] == ["gy1-a3-0213"]
    # Nodes that are their own island share one pool group, where the island label is per pod too.
    pool = raycluster(h100_pool_inventory())["spec"]["workerGroupSpecs"]
    assert [g["groupName"] for g in pool] == ["bj1-h100"]
    pool_labels = dict(kv.split("=", 1) for kv in pool[0]["rayStartParams"]["labels"].split(","))
    assert pool_labels["zhisuan.io/island"] == pool_labels["zhisuan.io/node"] == "$(NODE_NAME)"
    assert pool[0]["rayStartParams"]["num-gpus"] == "8" and pool[0]["maxReplicas"] == 8


def test_a_node_name_ray_cannot_carry_as_a_label_gets_a_group_of_its_own() -> None:
    base = json.loads((FIXTURES / "nodes" / "h100-hgx.json").read_text())
    long = copy.deepcopy(base)
    long["metadata"]["name"] = "ip-10-0-3-17." + "x" * 60 + ".compute.internal"
    plans = plan_worker_groups(inventory_from_objects([long]))
    assert [p.identity for p in plans] == ["node"]
    rc = raycluster(inventory_from_objects([long]))
    labels = rc["spec"]["workerGroupSpecs"][0]["rayStartParams"]["labels"]
    assert "$(NODE_NAME)" not in labels and len(rc["spec"]["workerGroupSpecs"][0]["groupName"]) <= 40


def test_readiness_from_conditions_and_pods_with_absent_counts_as_zero() -> None:
    cluster = yaml.safe_load((FIXTURES / "kuberay" / "raycluster-status-provisioning.yaml").read_text())
    pods = yaml.safe_load((FIXTURES / "kuberay" / "pods-provisioning.yaml").read_text())["items"]
    state = readiness(cluster, pods)
    assert state.head_ready and not state.provisioned
    assert state.ready_workers == 0  # readyWorkerReplicas is absent from the status
    assert state.groups["bj1-h100"].ready == 1 and state.groups["bj1-h100"].nodes == ("bj1-h100-07",)
    assert not state.ready
    cluster["status"]["conditions"].append(
        {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreateWorkerPod", "message": "quota exceeded"}
    )
    assert readiness(cluster, pods).problems == ("ReplicaFailure: FailedCreateWorkerPod: quota exceeded",)


# ----------------------------------------------------------------------------------------------- the sizer


@pytest.fixture
def server() -> Iterator[ReplayServer]:
    with ReplayServer() as srv:
        yield srv


def stored(server: ReplayServer, inv: Inventory) -> dict[str, Any]:
    rc = raycluster(inv, KubeRayOptions(name="zhisuan", namespace="zhisuan"))
    rc["metadata"].update({"resourceVersion": "100", "generation": 1})
    rc["status"] = {}
    server.state.rayclusters[("zhisuan", "zhisuan")] = rc
    return rc


def worker_pod(group: str, node: str, index: int, ready: bool = True) -> dict[str, Any]:
    labels = {"ray.io/cluster": "zhisuan", "ray.io/group": group, "ray.io/node-type": "worker"}
    return {
        "metadata": {"name": f"zhisuan-{group}-worker-{index:05d}", "namespace": "zhisuan", "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "ray-worker", "image": "rayproject/ray:2.60.0"}]},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def test_a_409_makes_the_sizer_read_again_and_keep_the_other_controllers_write(server: ReplayServer) -> None:
    stored(server, h100_pool_inventory())
    edits: list[int] = []

    def other_controller(obj: dict[str, Any]) -> bool:
        if edits:
            return False
        obj["metadata"].setdefault("annotations", {})["example.com/touched"] = "yes"
        edits.append(1)
        return True

    server.state.interfere = other_controller
    sizer = WorkerGroupSizer(api_client(server), "zhisuan", "zhisuan")
    result = sizer.resize({"bj1-h100": GroupTarget(replicas=4, added=4)})
    assert (result.changed, result.conflicts, result.attempts) == (True, 1, 2)
    final = server.state.rayclusters[("zhisuan", "zhisuan")]
    assert final["spec"]["workerGroupSpecs"][0]["replicas"] == 4
    assert final["metadata"]["annotations"]["example.com/touched"] == "yes"  # no lost update
    puts = [r for r in server.state.requests if r.method == "PUT"]
    assert [p.body["metadata"]["resourceVersion"] for p in puts] == ["100", "5001"]
    # Nothing to change: no write at all.
    assert not sizer.resize({"bj1-h100": GroupTarget(replicas=4)}).changed


def test_the_sizer_gives_up_with_one_line_when_conflicts_never_stop(server: ReplayServer) -> None:
    stored(server, h100_pool_inventory())

    def always(obj: dict[str, Any]) -> bool:
        obj["metadata"].setdefault("annotations", {})["n"] = "x"
        return True

    server.state.interfere = always
    sizer = WorkerGroupSizer(api_client(server), "zhisuan", "zhisuan", max_attempts=3)
    with pytest.raises(SizerError, match="3 conflicts in a row"):
        sizer.resize({"bj1-h100": GroupTarget(replicas=2)})


def test_four_node_gang_against_the_replay_server_grows_by_four_starts_and_shrinks_after_grace(
    server: ReplayServer,
) -> None:
    inv = h100_pool_inventory(8)
    stored(server, inv)
    plans = plan_worker_groups(inv)
    sizer = WorkerGroupSizer(api_client(server), "zhisuan", "zhisuan")
    rule = ScalingRule(grace_s=300)
    core = SchedulerCore()
    # The core's state: every node known, none in service until its worker pod is ready.
    state = ClusterState([n.node for n in inv.nodes])
    for n in inv.nodes:
        state.set_schedulable(n.node.id, False)
    gang = Job(id="gang", workers=4, devices_per_worker=8, models=("H100",), runtime_s=600)

    def scale(now: float, pending: list[Job]) -> dict[str, GroupTarget]:
        views = sizer.views(plans)
        targets = rule.decide(state, pending, views, now)
        sizer.resize(targets)
        return targets

    # t=0: the gang arrives; the group grows by 4 in one write.
    assert core.step(state, [gang], now=0.0)[0].kind is DecisionKind.REJECT
    first = scale(0.0, [gang])["bj1-h100"]
    assert (first.added, first.replicas) == (4, 4)
    rc = server.state.rayclusters[("zhisuan", "zhisuan")]
    assert rc["spec"]["workerGroupSpecs"][0]["replicas"] == 4
    assert scale(10.0, [gang])["bj1-h100"].added == 0  # pods starting count: no second request
    # t=30: KubeRay's four pods are ready on four nodes; they come into service and the gang starts.
    nodes = [p for p in plans[0].nodes][:4]
    server.state.pods = [worker_pod("bj1-h100", node, i) for i, node in enumerate(nodes)]
    for node in nodes:
        state.set_schedulable(node, True)
    decisions = core.step(state, [gang], now=30.0)
    assert decisions[0].kind is DecisionKind.START
    assert set(decisions[0].placement.nodes) == set(nodes)  # type: ignore[union-attr]
    # While it runs, and long past the grace period, nothing holding work goes.
    for now in (40.0, 400.0, 600.0):
        target = scale(now, [])["bj1-h100"]
        assert target.remove == () and target.replicas == 4
    # t=630: it ends; after the grace period the four nodes go, by name.
    core.finish(state, "gang", now=630.0)
    assert scale(640.0, [])["bj1-h100"].remove == ()
    last = scale(940.0, [])["bj1-h100"]
    assert sorted(last.remove) == sorted(nodes) and last.replicas == 0
    group = server.state.rayclusters[("zhisuan", "zhisuan")]["spec"]["workerGroupSpecs"][0]
    assert group["replicas"] == 0
    assert sorted(group["scaleStrategy"]["workersToDelete"]) == sorted(p["metadata"]["name"] for p in server.state.pods)
