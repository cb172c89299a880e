"""The Kubernetes pieces wired into the product: ``api.up.running`` (what ``zhisuan server --inventory kubernetes
--size-worker-groups`` runs) with the real ``kubernetes`` client, configured from a kubeconfig file, against the
replay API server on 127.0.0.1.

* The Node inventory reaches the server's database (``GET /v1/nodes``, ``GET /v1/inventory``); a cordon arriving
  on the watch cordons the node; when the API server goes away the last known nodes stay and the source is
  stale with the reason, in the API and in ``zhisuan nodes`` (a real process).
* The scheduler service with :class:`InstantExecutor` sizes the replay server's RayCluster while a small
  controller plays KubeRay (pods created for ``replicas`` on the group's nodes, ready a second later, deleted as
  ``workersToDelete`` names them): a 4-node gang grows the group by 4 in one write, starts when the pods are
  ready — on those nodes — and the nodes go after the grace period, never while they hold work.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kube_replay import ReplayServer, Stream

from api.client import ZhisuanClient
from api.settings import Settings
from api.up import Running, running
from scheduler.catalog import SEEDS_DIR
from scheduler.live.executors.instant import InstantExecutor
from scheduler.live.inventory.kubernetes import inventory_from_objects
from scheduler.live.kuberay import KubeRayOptions, raycluster
from scheduler.live.service import ServiceConfig
from scheduler.spec import JobState

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "kubernetes"
BIN = Path(sys.executable).parent


def h100_nodes(count: int) -> list[dict[str, Any]]:
    """``count`` copies of the recorded HGX H100 Node, each its own NVLink island (one pool worker group)."""
    base = json.loads((FIXTURES / "nodes" / "h100-hgx.json").read_text())
    nodes = []
    for i in range(count):
        node = copy.deepcopy(base)
        node["metadata"]["name"] = f"bj1-h100-{i:02d}"
        node["metadata"]["labels"]["kubernetes.io/hostname"] = f"bj1-h100-{i:02d}"
        del node["metadata"]["labels"]["zhisuan.io/island"]
        nodes.append(node)
    return nodes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def kubeconfig(path: Path, server: ReplayServer) -> Path:
    """A kubeconfig as kubectl writes one, pointing at the replay server (plain HTTP, a bearer token)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "replay", "cluster": {"server": server.url}}],
        "users": [{"name": "zhisuan", "user": {"token": "replay-token"}}],
        "contexts": [{"name": "replay", "context": {"cluster": "replay", "user": "zhisuan"}}],
        "current-context": "replay",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def settings(tmp: Path, server: ReplayServer, **changes: Any) -> Settings:
    return Settings(
        database_url=f"sqlite:///{tmp / 'zhisuan.db'}",
        policy_file=SEEDS_DIR / "policy.yaml",
        cluster_file=None,
        rate_per_s=0.0,
        rate_burst=0.0,
        cache_refresh_s=0.2,
        inventory="kubernetes",
        kubeconfig=kubeconfig(tmp / "kubeconfig", server),
        inventory_publish_s=1.0,
    ).with_(**changes)


def wait_for(condition: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached in {timeout} s")


def get(run: Running, path: str) -> Any:
    assert run.admin_token is not None
    response = httpx.get(run.url + path, headers={"Authorization": f"Bearer {run.admin_token}"}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def kubernetes_source(run: Running) -> dict[str, Any]:
    return next(s for s in get(run, "/v1/inventory")["items"] if s["source"] == "kubernetes")


# ----------------------------------------------------------------------------------------------- inventory


def test_the_servers_database_follows_the_nodes_and_marks_the_source_stale_when_the_api_server_goes(
    tmp_path: Path,
) -> None:
    server = ReplayServer().start()
    malformed = yaml.safe_load((FIXTURES / "nodes" / "hami-malformed.yaml").read_text())
    server.state.nodes = [*h100_nodes(4), malformed]
    server.state.max_page = 2
    cordoned = copy.deepcopy(server.state.nodes[3])
    cordoned["metadata"]["resourceVersion"] = "1001"
    cordoned["spec"]["unschedulable"] = True
    server.state.nodes[3] = cordoned  # what a list answers from now on, too
    # The first watch: the cordon of bj1-h100-03 a little later, then held open as the API server does.
    server.state.streams.append(Stream([{"type": "MODIFIED", "object": cordoned}], end="hold", delay_s=0.5))
    try:
        with running(settings(tmp_path, server), port=free_port(), agents=False, scheduler=False) as run:
            assert run.kubernetes is not None
            # Until the first list is in, the source says so ("not listed yet"): stale, no nodes.
            source = wait_for(
                lambda: next(
                    (s for s in get(run, "/v1/inventory")["items"] if s["source"] == "kubernetes" and not s["stale"]),
                    None,
                ),
                what="a first publish of a listed inventory",
            )
            assert source["every_s"] == 1.0 and source["nodes"] == 4
            assert source["left_out"][0]["name"] == "sh1-h100-hami-02"
            assert "hami.io/node-nvidia-register" in source["left_out"][0]["reason"]
            nodes = {n["id"]: n for n in get(run, "/v1/nodes")["items"]}
            assert sorted(nodes) == [f"bj1-h100-{i:02d}" for i in range(4)]
            assert {(n["source"], n["model"], n["device_count"], n["pool"]) for n in nodes.values()} == {
                ("kubernetes", "H100", 8, "bj1/H100")
            }
            # Pages of two: the real client followed the continue tokens.
            assert [r.query.get("continue") for r in server.requests("/api/v1/nodes") if "watch" not in r.query][
                :3
            ] == [None, "page-2", "page-4"]

            # The cordon on the watch: the node is cordoned in the database and the reason is shown.
            def cordon_published() -> bool:
                state = {n["id"]: n["state"] for n in get(run, "/v1/nodes")["items"]}
                return bool(state["bj1-h100-03"] == "cordoned")

            wait_for(cordon_published, what="the cordon")
            source = kubernetes_source(run)
            assert source["reasons"]["bj1-h100-03"] == ["cordoned (spec.unschedulable)"]
            assert (source["nodes"], source["schedulable"]) == (4, 3)

            # The API server goes away: the last known nodes stay; the source says it is stale, and why.
            server.stop()
            stale = wait_for(lambda: kubernetes_source(run)["stale"] and kubernetes_source(run), what="staleness")
            assert "API server unreachable" in stale["reason"] and stale["nodes"] == 4
            assert len(get(run, "/v1/nodes")["items"]) == 4
            assert {n["state"] for n in get(run, "/v1/nodes")["items"]} == {"ready", "cordoned"}

            # zhisuan nodes, as a process: the nodes on stdout, one warning line on stderr.
            env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "xdg"), "COLUMNS": "200"}
            assert run.admin_token is not None
            done = subprocess.run(
                [str(BIN / "zhisuan"), "nodes", "--url", run.url, "--token", run.admin_token],
                capture_output=True,
                text=True,
                env=env,
                timeout=60,
            )
            assert done.returncode == 0, done.stderr
            assert "bj1-h100-00" in done.stdout
            warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
            assert len(warnings) == 1, done.stderr
            assert "kubernetes inventory is stale" in warnings[0] and "unreachable" in warnings[0]
            as_json = subprocess.run(
                [str(BIN / "zhisuan"), "nodes", "--url", run.url, "--token", run.admin_token, "-o", "json"],
                capture_output=True,
                text=True,
                env=env,
                timeout=60,
            )
            assert len(json.loads(as_json.stdout)) == 4  # the warning never gets into the JSON
    finally:
        server.stop()


def test_bad_settings_name_what_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ZHISUAN_INVENTORY='k8s': write one of file, kubernetes"):
        Settings.from_env({"ZHISUAN_INVENTORY": "k8s"})
    with pytest.raises(ValueError, match="needs the Kubernetes inventory"):
        Settings.from_env({"ZHISUAN_SIZE_WORKER_GROUPS": "1"})
    with pytest.raises(ValueError, match="write it as namespace/name"):
        Settings.from_env({"ZHISUAN_INVENTORY": "kubernetes", "ZHISUAN_RAYCLUSTER": "zhisuan"})
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path), "ZHISUAN_DATABASE_URL": f"sqlite:///{tmp_path}/db"}
    env["COLUMNS"] = "80"  # errors are one line whatever the terminal's width
    done = subprocess.run(
        [str(BIN / "zhisuan"), "server", "--size-worker-groups", "--port", str(free_port())],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 2 and "--inventory kubernetes" in done.stderr, done.stderr
    missing = tmp_path / "nowhere.yaml"
    done = subprocess.run(
        [str(BIN / "zhisuan"), "server", "--inventory", "kubernetes", "--kubeconfig", str(missing)],
        capture_output=True,
        text=True,
        env={**env, "ZHISUAN_POLICY_FILE": ""},
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "nowhere.yaml" in done.stderr and "ZHISUAN_KUBECONFIG" in done.stderr, done.stderr


# ----------------------------------------------------------------------------------------------- sizing


@dataclass
class FakeKubeRay:
    """Plays KubeRay's part on the replay server: a pod per replica on the group's nodes (ready ``startup_s``
    later), and the pods named in ``workersToDelete`` deleted (the list then cleared, as KubeRay does)."""

    server: ReplayServer
    startup_s: float = 1.0
    created: dict[str, float] = field(default_factory=dict)
    ready_at: dict[str, float] = field(default_factory=dict)
    deleted: dict[str, float] = field(default_factory=dict)
    #: Pods KubeRay would have had to pick itself (replicas below the pods, none named): must stay empty.
    unnamed: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.wait(0.05):
            with self.server.lock:
                self.reconcile(time.time())

    def reconcile(self, now: float) -> None:
        state = self.server.state
        cluster = state.rayclusters[("zhisuan", "zhisuan")]
        for group in cluster["spec"]["workerGroupSpecs"]:
            name = group["groupName"]
            doomed = (group.get("scaleStrategy") or {}).get("workersToDelete") or []
            if doomed:
                for pod in [p for p in state.pods if p["metadata"]["name"] in doomed]:
                    state.pods.remove(pod)
                    self.deleted[pod["metadata"]["name"]] = now
                group["scaleStrategy"]["workersToDelete"] = []
                state.rv_counter += 1
                cluster["metadata"]["resourceVersion"] = str(state.rv_counter)
            pods = [p for p in state.pods if p["metadata"]["labels"]["ray.io/group"] == name]
            affinity = group["template"]["spec"]["affinity"]["nodeAffinity"]
            allowed = affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
            nodes = allowed["matchFields"][0]["values"]
            used = {p["spec"]["nodeName"] for p in pods}
            while len(pods) < int(group.get("replicas") or 0):
                node = next(n for n in nodes if n not in used)
                used.add(node)
                pod = worker_pod(name, node, len(self.created))
                self.created[pod["metadata"]["name"]] = now
                state.pods.append(pod)
                pods.append(pod)
            if len(pods) > int(group.get("replicas") or 0):
                self.unnamed.extend(p["metadata"]["name"] for p in pods)
            for pod in pods:
                pod_name = pod["metadata"]["name"]
                if pod_name not in self.ready_at and now - self.created[pod_name] >= self.startup_s:
                    pod["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
                    self.ready_at[pod_name] = now


def worker_pod(group: str, node: str, index: int) -> dict[str, Any]:
    labels = {"ray.io/cluster": "zhisuan", "ray.io/group": group, "ray.io/node-type": "worker"}
    return {
        "metadata": {"name": f"zhisuan-{group}-worker-{index:05d}", "namespace": "zhisuan", "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "ray-worker", "image": "rayproject/ray:2.60.0"}]},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}]},
    }


@pytest.fixture
def kuberay() -> Iterator[tuple[ReplayServer, FakeKubeRay]]:
    server = ReplayServer().start()
    server.state.nodes = h100_nodes(8)
    rc = raycluster(inventory_from_objects(server.state.nodes), KubeRayOptions(name="zhisuan", namespace="zhisuan"))
    rc["metadata"].update({"resourceVersion": "100", "generation": 1})
    rc["status"] = {"conditions": [{"type": "HeadPodReady", "status": "True"}]}
    server.state.rayclusters[("zhisuan", "zhisuan")] = rc
    controller = FakeKubeRay(server)
    thread = threading.Thread(target=controller.run, name="fake-kuberay", daemon=True)
    thread.start()
    try:
        yield server, controller
    finally:
        controller.stop.set()
        thread.join(5)
        server.stop()


def test_the_service_grows_a_group_by_4_for_a_4_node_gang_starts_it_when_ready_and_shrinks_after_grace(
    tmp_path: Path, kuberay: tuple[ReplayServer, FakeKubeRay]
) -> None:
    server, controller = kuberay
    grace = 2.0
    config = settings(tmp_path, server, size_worker_groups=True, scale_grace_s=grace, scale_poll_s=0.2)
    executor = InstantExecutor(runtime=lambda request: 2.0)
    with running(
        config,
        port=free_port(),
        agents=False,
        executor=executor,
        service_config=ServiceConfig(interval_s=0.1, step_every_s=0.5, holder="wiring-test"),
    ) as run:
        assert run.capacity is not None and run.admin_token is not None
        wait_for(lambda: len(get(run, "/v1/nodes")["items"]) == 8, what="eight nodes published")
        with ZhisuanClient(run.url, run.admin_token) as admin:
            admin.create_user("alice", tenant="acme")
            token = admin.create_token("alice@acme").token
        assert token is not None
        with ZhisuanClient(run.url, token) as alice:
            submitted = time.time()
            job = alice.submit(
                {
                    "name": "llm-gang",
                    "workers": 4,
                    "devices_per_worker": 8,
                    "models": ["H100"],
                    "entrypoint": "python train.py",
                }
            )
            started = wait_for(
                lambda: (j := alice.get_job(job.id)).state in (JobState.RUNNING, JobState.SUCCEEDED) and j,
                what="the gang running",
            )
            done = wait_for(lambda: (j := alice.get_job(job.id)).terminal and j, what="the gang finished")
        assert done.state is JobState.SUCCEEDED, done.message
        puts = [r for r in server.state.requests if r.method == "PUT"]
        # One write took the group from 0 to 4 replicas: never 1, 2 or 3 on the way.
        replicas = [p.body["spec"]["workerGroupSpecs"][0]["replicas"] for p in puts]
        assert replicas[0] == 4, replicas
        assert all(r in (0, 4) for r in replicas), replicas
        # The gang started after its four pods were ready, on exactly their nodes.
        assert len(controller.ready_at) == 4
        assert started.started_at is not None and started.started_at >= max(controller.ready_at.values()) - 0.05
        assert started.started_at >= submitted + controller.startup_s
        assert started.placement is not None
        placed = sorted(w.node for w in started.placement.workers)
        pods = {p["spec"]["nodeName"]: p["metadata"]["name"] for p in server.state.pods}
        assert placed == sorted(pods)
        # After the grace period the four nodes go, named, and nothing went while the gang held them.
        wait_for(lambda: len(controller.deleted) == 4, timeout=grace + 10, what="the idle nodes removed")
        assert done.finished_at is not None
        assert min(controller.deleted.values()) >= done.finished_at + grace - 0.05
        assert sorted(controller.deleted) == sorted(pods.values())
        assert controller.unnamed == []
        last = server.state.rayclusters[("zhisuan", "zhisuan")]["spec"]["workerGroupSpecs"][0]
        assert last["replicas"] == 0
        capacity = run.capacity
        wait_for(lambda: len(capacity.decisions) == 2, what="the removal recorded")  # written after the PUT
        decisions = [(d["added"], sorted(d["removed"])) for d in capacity.decisions]
        assert decisions == [(4, []), (0, sorted(placed))]
        assert executor.launched == [(job.id, started.attempt)]  # launched once, never twice
