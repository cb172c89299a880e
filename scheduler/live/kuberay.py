"""Ray on Kubernetes through KubeRay: the RayCluster Zhisuan generates, its readiness, and the sizer of its groups.

**Generation.** :func:`raycluster` turns the node inventory into one ``ray.io/v1`` RayCluster:

* a head that takes no work (``num-cpus: "0"``, label ``zhisuan.io/role=head``);
* worker groups of one pod per node, each pod pinned to its group's nodes by ``nodeAffinity`` on
  ``metadata.name`` (exact, whatever labels the vendor's tools write), tolerating the vendor's taints, and
  requesting the node's whole devices under the resource the device plugin advertises (``nvidia.com/gpu: 8``,
  ``huawei.com/Ascend910: 16``) — paired in ``rayStartParams`` with the Ray resources and ``zhisuan.io/*`` labels
  the agent declares on bare metal (:func:`scheduler.ray_node.ray_node_spec`), so label-pinned placement works
  unchanged. KubeRay only maps ``*gpu`` limits to Ray resources; the NPU/MLU/XPU/DCU ones are declared here.

**The per-pod ``zhisuan.io/node`` label.** A group's labels are the same for all its pods, but the executor pins
bundles to one node. Each worker container gets ``NODE_NAME`` from the downward API (``spec.nodeName``) and the
group's ``labels`` start parameter says ``zhisuan.io/node=$(NODE_NAME)``: KubeRay writes start parameters into the
container's ``args``, and the kubelet expands ``$(VAR)`` references in ``args`` from the container's environment
before the shell runs, so each pod declares its own node. That equals the bare-metal label
(:func:`~scheduler.ray_node.ray_label_value` of the node id) only for names Ray accepts as label values (at most 63
characters of ``[A-Za-z0-9._-]``); a node whose name is not such a value gets a group of its own with the label
written out. ``zhisuan.io/island`` is per pod too: nodes that are their own island (the default) share one group per
pool and declare ``island=$(NODE_NAME)``; nodes of a named multi-node island (NVLink domain, SuperPod) get one group
per island. So there are three identities — ``pool``, ``island`` and ``node`` groups — and every node is in one.

**Readiness** (:func:`readiness`) reads the RayCluster's conditions (``HeadPodReady``, ``ReplicaFailure``...) and
its Pods (``ray.io/cluster=<name>``): the status omits zero counts, so an absent ``readyWorkerReplicas`` is 0.

**Sizing** (:class:`WorkerGroupSizer`) writes the scaling rule's targets (:mod:`scheduler.scaling`): it reads the
RayCluster, sets ``replicas`` of the groups it was told about and names the pods of removed nodes in
``scaleStrategy.workersToDelete`` (so KubeRay deletes those and no busy one), and replaces the object with the
``resourceVersion`` it read as a precondition. A 409 — another controller wrote in between — makes it read again
and re-apply only its own change, so neither write is lost.

**Capacity** (:class:`KubeRayCapacity`) is the scheduler service's step 3b on Kubernetes (the
:class:`~scheduler.live.capacity.CapacityManager` port): a node is in service only while a ready worker pod of its
group runs there, and the groups are sized by the scaling rule from the service's own pending jobs.

    >>> from scheduler.live.inventory.kubernetes import inventory_from_objects
    >>> from scheduler.live.inventory.base import Inventory
    >>> rc = raycluster(Inventory(), KubeRayOptions(name="zs"))
    >>> rc["kind"], rc["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"], rc["spec"]["workerGroupSpecs"]
    ('RayCluster', '0', [])
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import urllib3
from kubernetes import client

from scheduler.backfill import Reservation
from scheduler.live.inventory.base import Inventory, InventoryNode, InventorySource
from scheduler.live.inventory.kubernetes import api_error_line
from scheduler.live.inventory.kubernetes_names import KubernetesNames, Toleration, load_kubernetes_names
from scheduler.model import Job, Node
from scheduler.ray_node import ISLAND_LABEL, NODE_LABEL, ray_label_value, ray_node_spec
from scheduler.scaling import GroupTarget, GroupView, ScalingRule
from scheduler.state import ClusterState

log = logging.getLogger("zhisuan.kuberay")

GROUP = "ray.io"
VERSION = "v1"
PLURAL = "rayclusters"
#: Labels KubeRay puts on every Pod it creates.
CLUSTER_LABEL = "ray.io/cluster"
GROUP_LABEL = "ray.io/group"
NODE_TYPE_LABEL = "ray.io/node-type"
#: The reference the kubelet expands in a container's args (see the module docstring).
NODE_NAME_REF = "$(NODE_NAME)"

Identity = Literal["pool", "island", "node"]


@dataclass(frozen=True)
class KubeRayOptions:
    """What the generated RayCluster looks like beyond the inventory."""

    name: str = "zhisuan"
    namespace: str = "zhisuan"
    image: str = "rayproject/ray:2.60.0"
    ray_version: str = "2.60.0"
    service_account: str = "zhisuan-ray"
    head_cpu: str = "2"
    head_memory: str = "8Gi"
    #: Share of a node's allocatable CPU and memory left to DaemonSets (agent, device plugin, kube-proxy...).
    cpu_reserve: float = 0.05
    memory_reserve: float = 0.10
    #: Tolerations every worker carries on top of its vendor's (e.g. a site's dedicated-node taint).
    tolerations: tuple[Toleration, ...] = ()


@dataclass(frozen=True)
class WorkerGroupPlan:
    """One worker group: its nodes, its identity and the shape of its pods."""

    name: str
    identity: Identity
    pool: str
    model: str
    vendor: str
    nodes: tuple[str, ...]
    device_resource: str
    devices: int
    cpu_milli: int
    memory_mib: int
    island: str = ""

    def view(self, replicas: int, ready_nodes: Sequence[str]) -> GroupView:
        """What the scaling rule needs of this group."""
        return GroupView(
            name=self.name,
            pool=self.pool,
            model=self.model,
            devices=self.devices,
            cpu_milli=self.cpu_milli,
            memory_mib=self.memory_mib,
            replicas=replicas,
            max_replicas=len(self.nodes),
            nodes=tuple(ready_nodes),
        )


_LABEL_SAFE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")


def group_name(*parts: str) -> str:
    """A worker group name (it becomes part of Pod names): lowercase DNS-label characters, at most 40.

    >>> group_name("bj1/H100"), group_name("gy1/Ascend910C", "gy1-superpod-2")
    ('bj1-h100', 'gy1-ascend910c-gy1-superpod-2')
    """
    raw = "-".join(parts).lower()
    name = re.sub(r"[^a-z0-9-]+", "-", raw).strip("-") or "group"
    if len(name) > 40:
        name = f"{name[:32].rstrip('-')}-{hashlib.sha1(raw.encode()).hexdigest()[:7]}"
    return name


def plan_worker_groups(inventory: Inventory, reserve: tuple[float, float] = (0.05, 0.10)) -> list[WorkerGroupPlan]:
    """Split the inventory's nodes into worker groups (see the module docstring for the three identities).

    A node with no device resource a pod could request (Hygon DCUs counted from HAMi's register only) is in no
    group. Pods must fit every node of their group, so a group's shape is its smallest node, less ``reserve``.
    """
    buckets: dict[tuple[str, str, str], list[InventoryNode]] = {}
    for seen in inventory.nodes:
        node = seen.node
        if not seen.device_resource or seen.vendor is None:
            continue
        if not _LABEL_SAFE.match(node.id):
            key = ("node", node.pool, node.id)
        elif node.island != node.id:
            key = ("island", node.pool, node.island)
        else:
            key = ("pool", node.pool, "")
        buckets.setdefault(key, []).append(seen)
    plans = []
    cpu_reserve, memory_reserve = reserve
    for (identity, pool, detail), members in sorted(buckets.items()):
        first = members[0]
        name = group_name(pool) if identity == "pool" else group_name(pool, detail)
        plans.append(
            WorkerGroupPlan(
                name=name,
                identity=identity,  # type: ignore[arg-type]
                pool=pool,
                model=first.node.model,
                vendor=first.vendor or "",
                nodes=tuple(sorted(m.node.id for m in members)),
                device_resource=first.device_resource,
                devices=min(m.node.devices for m in members),
                cpu_milli=int(min(m.node.cpu_milli for m in members) * (1 - cpu_reserve)) // 100 * 100,
                memory_mib=int(min(m.node.memory_mib for m in members) * (1 - memory_reserve)),
                island=first.node.island if identity != "pool" else "",
            )
        )
    return plans


def _group_labels(plan: WorkerGroupPlan) -> dict[str, str]:
    shape = Node(
        id=plan.nodes[0],
        model=plan.model,
        devices=plan.devices,
        cpu_milli=plan.cpu_milli,
        memory_mib=plan.memory_mib,
        site=plan.pool.split("/", 1)[0],
        island=plan.island or plan.nodes[0],
    )
    labels = dict(ray_node_spec(shape, plan.vendor).labels)
    if plan.identity != "node":
        labels[NODE_LABEL] = NODE_NAME_REF
    if plan.identity == "pool":
        labels[ISLAND_LABEL] = NODE_NAME_REF
    return labels


def ray_start_params(plan: WorkerGroupPlan) -> dict[str, str]:
    """The group's ``rayStartParams``: what the agent's ``ray start`` would declare for one of its nodes."""
    shape = Node(
        id=plan.nodes[0], model=plan.model, devices=plan.devices, cpu_milli=plan.cpu_milli, memory_mib=plan.memory_mib
    )
    spec = ray_node_spec(shape, plan.vendor)
    params = {
        "num-cpus": f"{spec.num_cpus:g}",
        "num-gpus": f"{spec.num_gpus:g}",
        "memory": str(spec.memory_bytes),
        "labels": ",".join(f"{k}={v}" for k, v in sorted(_group_labels(plan).items())),
    }
    if spec.resources:
        # KubeRay passes the value to bash as is: the JSON must arrive as one quoted word.
        params["resources"] = '"' + json.dumps(spec.resources, sort_keys=True).replace('"', '\\"') + '"'
    return params


def _worker_group(plan: WorkerGroupPlan, options: KubeRayOptions, names: KubernetesNames, replicas: int) -> Any:
    tolerations = [t.as_k8s() for t in (*names.tolerations(plan.vendor), *options.tolerations)]
    quantities = {
        "cpu": f"{plan.cpu_milli}m",
        "memory": f"{plan.memory_mib}Mi",
        plan.device_resource: str(plan.devices),
    }
    pod_spec: dict[str, Any] = {
        "serviceAccountName": options.service_account,
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": list(plan.nodes)}]}
                    ]
                }
            },
            # One worker per node: the core counts a node's devices once.
            "podAntiAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "labelSelector": {"matchLabels": {CLUSTER_LABEL: options.name, NODE_TYPE_LABEL: "worker"}},
                        "topologyKey": "kubernetes.io/hostname",
                    }
                ]
            },
        },
        "containers": [
            {
                "name": "ray-worker",
                "image": options.image,
                "env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
                "resources": {"limits": dict(quantities), "requests": dict(quantities)},
                "lifecycle": {"preStop": {"exec": {"command": ["/bin/sh", "-c", "ray stop"]}}},
            }
        ],
    }
    if tolerations:
        pod_spec["tolerations"] = tolerations
    return {
        "groupName": plan.name,
        "replicas": replicas,
        "minReplicas": 0,
        "maxReplicas": len(plan.nodes),
        "rayStartParams": ray_start_params(plan),
        "template": {
            "metadata": {
                "labels": {
                    "app.kubernetes.io/name": "zhisuan-ray-worker",
                    "zhisuan.io/pool": ray_label_value(plan.pool),
                    "zhisuan.io/model": ray_label_value(plan.model),
                    "zhisuan.io/group-identity": plan.identity,
                }
            },
            "spec": pod_spec,
        },
    }


def raycluster(
    inventory: Inventory,
    options: KubeRayOptions | None = None,
    replicas: Mapping[str, int] | None = None,
    names: KubernetesNames | None = None,
) -> dict[str, Any]:
    """The RayCluster for ``inventory`` (a dict ready to create). ``replicas`` per group default to 0: the
    sizer, not the Ray autoscaler, grows them (``enableInTreeAutoscaling`` stays off)."""
    options = options or KubeRayOptions()
    names = names or load_kubernetes_names()
    plans = plan_worker_groups(inventory, (options.cpu_reserve, options.memory_reserve))
    head_quantities = {"cpu": options.head_cpu, "memory": options.head_memory}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "RayCluster",
        "metadata": {
            "name": options.name,
            "namespace": options.namespace,
            "labels": {"app.kubernetes.io/name": "zhisuan", "app.kubernetes.io/component": "ray"},
        },
        "spec": {
            "rayVersion": options.ray_version,
            "enableInTreeAutoscaling": False,
            "headGroupSpec": {
                "serviceType": "ClusterIP",
                "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0", "labels": "zhisuan.io/role=head"},
                "template": {
                    "metadata": {"labels": {"app.kubernetes.io/name": "zhisuan-ray-head"}},
                    "spec": {
                        "serviceAccountName": options.service_account,
                        "containers": [
                            {
                                "name": "ray-head",
                                "image": options.image,
                                "ports": [
                                    {"containerPort": 6379, "name": "gcs-server"},
                                    {"containerPort": 8265, "name": "dashboard"},
                                    {"containerPort": 10001, "name": "client"},
                                ],
                                "resources": {"limits": dict(head_quantities), "requests": dict(head_quantities)},
                            }
                        ],
                    },
                },
            },
            "workerGroupSpecs": [
                _worker_group(plan, options, names, (replicas or {}).get(plan.name, 0)) for plan in plans
            ],
        },
    }


# ----------------------------------------------------------------------------------------------- readiness


@dataclass(frozen=True)
class GroupReadiness:
    desired: int
    ready: int
    #: Nodes (Kubernetes node names) where a ready worker pod of the group runs.
    nodes: tuple[str, ...]


@dataclass(frozen=True)
class Readiness:
    head_ready: bool
    provisioned: bool
    #: ``status.readyWorkerReplicas`` (KubeRay omits it at 0).
    ready_workers: int
    groups: dict[str, GroupReadiness] = field(default_factory=dict)
    problems: tuple[str, ...] = ()

    @property
    def ready(self) -> bool:
        return self.head_ready and all(g.ready >= g.desired for g in self.groups.values())


def _pod_ready(pod: Mapping[str, Any]) -> bool:
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    status = pod.get("status") or {}
    if status.get("phase") != "Running":
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or ())


def readiness(cluster: Mapping[str, Any], pods: Iterable[Mapping[str, Any]]) -> Readiness:
    """Readiness of a RayCluster from its conditions and its Pods (see the module docstring)."""
    status = cluster.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or ()}
    problems = []
    for kind in ("ReplicaFailure", "RayClusterSuspending", "RayClusterSuspended"):
        cond = conditions.get(kind)
        if cond is not None and cond.get("status") == "True":
            problems.append(f"{kind}: {cond.get('reason', '')}: {cond.get('message', '')}".rstrip(": "))
    head_condition = conditions.get("HeadPodReady")
    ready_by_group: dict[str, list[str]] = {}
    head_pod_ready = False
    for pod in pods:
        labels = (pod.get("metadata") or {}).get("labels") or {}
        if labels.get(CLUSTER_LABEL) != (cluster.get("metadata") or {}).get("name"):
            continue
        if labels.get(NODE_TYPE_LABEL) == "head":
            head_pod_ready = head_pod_ready or _pod_ready(pod)
        elif labels.get(NODE_TYPE_LABEL) == "worker" and _pod_ready(pod):
            node = (pod.get("spec") or {}).get("nodeName", "")
            ready_by_group.setdefault(labels.get(GROUP_LABEL, ""), []).append(node)
    head_ready = head_pod_ready if head_condition is None else head_condition.get("status") == "True"
    groups = {}
    for spec in (cluster.get("spec") or {}).get("workerGroupSpecs") or ():
        name = spec.get("groupName", "")
        nodes = tuple(sorted(ready_by_group.get(name, [])))
        groups[name] = GroupReadiness(desired=int(spec.get("replicas") or 0), ready=len(nodes), nodes=nodes)
    return Readiness(
        head_ready=head_ready,
        provisioned=(conditions.get("RayClusterProvisioned") or {}).get("status") == "True",
        ready_workers=int(status.get("readyWorkerReplicas") or 0),
        groups=groups,
        problems=tuple(problems),
    )


# ----------------------------------------------------------------------------------------------- sizing


class SizerError(RuntimeError):
    """The RayCluster could not be read or written (one line, like the inventory's errors)."""


#: What a request to an API server that is down, slow or denying raises: the API's answer, or no answer at all
#: (connection refused or reset, a read timeout: urllib3's errors).
_UNREACHABLE = (client.ApiException, urllib3.exceptions.HTTPError, OSError)


@dataclass(frozen=True)
class ResizeResult:
    changed: bool
    attempts: int
    conflicts: int
    resource_version: str = ""


class WorkerGroupSizer:
    """Reads a RayCluster and its Pods, and writes worker-group targets with optimistic concurrency."""

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        name: str,
        *,
        max_attempts: int = 8,
        request_timeout_s: float = 30.0,
    ) -> None:
        self._objects = client.CustomObjectsApi(api)
        self._core = client.CoreV1Api(api)
        self.namespace = namespace
        self.name = name
        self.max_attempts = max_attempts
        #: A slow API server fails a request after this long instead of holding its caller.
        self.request_timeout_s = request_timeout_s

    def get(self) -> dict[str, Any]:
        try:
            obj = cast(
                dict[str, Any],
                self._objects.get_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, self.name, _request_timeout=self.request_timeout_s
                ),
            )
        except _UNREACHABLE as exc:
            raise SizerError(api_error_line(exc, "get", "rayclusters.ray.io")) from None
        return obj

    def pods(self) -> list[dict[str, Any]]:
        try:
            response: Any = self._core.list_namespaced_pod(
                self.namespace,
                label_selector=f"{CLUSTER_LABEL}={self.name}",
                _preload_content=False,
                _request_timeout=self.request_timeout_s,
            )
        except _UNREACHABLE as exc:
            raise SizerError(api_error_line(exc, "list", "pods")) from None
        items: list[dict[str, Any]] = json.loads(response.data).get("items") or []
        return items

    def readiness(self) -> Readiness:
        return readiness(self.get(), self.pods())

    def views(self, plans: Sequence[WorkerGroupPlan], node_ids: Mapping[str, str] | None = None) -> list[GroupView]:
        """The scaling rule's view of each planned group: spec replicas, and the nodes of its ready pods
        (``node_ids`` maps Kubernetes node names to cluster-state ids where they differ)."""
        state = self.readiness()
        cluster = self.get()
        replicas = {g.get("groupName"): int(g.get("replicas") or 0) for g in cluster["spec"]["workerGroupSpecs"]}
        out = []
        for plan in plans:
            ready = state.groups.get(plan.name)
            nodes = [(node_ids or {}).get(n, n) for n in (ready.nodes if ready else ())]
            out.append(plan.view(replicas.get(plan.name, 0), nodes))
        return out

    def resize(self, targets: Mapping[str, GroupTarget]) -> ResizeResult:
        """Write ``targets`` (group → replicas and nodes to remove); re-read and retry on 409 Conflict."""
        conflicts = 0
        pod_names: dict[tuple[str, str], str] | None = None
        for attempt in range(1, self.max_attempts + 1):
            cluster = self.get()
            if pod_names is None and any(t.remove for t in targets.values()):
                pod_names = {}
                for pod in self.pods():
                    labels = pod["metadata"].get("labels") or {}
                    node = (pod.get("spec") or {}).get("nodeName")
                    if labels.get(NODE_TYPE_LABEL) == "worker" and node:
                        pod_names[(labels.get(GROUP_LABEL, ""), node)] = pod["metadata"]["name"]
            if not _apply_targets(cluster, targets, pod_names or {}):
                return ResizeResult(False, attempt, conflicts, cluster["metadata"].get("resourceVersion", ""))
            try:
                written = cast(
                    dict[str, Any],
                    self._objects.replace_namespaced_custom_object(
                        GROUP,
                        VERSION,
                        self.namespace,
                        PLURAL,
                        self.name,
                        cluster,
                        _request_timeout=self.request_timeout_s,
                    ),
                )
            except client.ApiException as exc:
                if exc.status == 409:
                    conflicts += 1
                    log.info("RayCluster %s changed under us (409); reading it again", self.name)
                    continue
                raise SizerError(api_error_line(exc, "update", "rayclusters.ray.io")) from None
            except _UNREACHABLE as exc:
                raise SizerError(api_error_line(exc, "update", "rayclusters.ray.io")) from None
            return ResizeResult(True, attempt, conflicts, written["metadata"].get("resourceVersion", ""))
        raise SizerError(
            f"cannot update rayclusters.ray.io {self.namespace}/{self.name}: {conflicts} conflicts in a row "
            "(another controller keeps writing it)"
        )


def _apply_targets(
    cluster: dict[str, Any], targets: Mapping[str, GroupTarget], pod_names: Mapping[tuple[str, str], str]
) -> bool:
    """Set replicas and workersToDelete of the targeted groups in place; True if anything changed."""
    changed = False
    for group in cluster.get("spec", {}).get("workerGroupSpecs") or ():
        target = targets.get(group.get("groupName", ""))
        if target is None:
            continue
        if int(group.get("replicas") or 0) != target.replicas:
            group["replicas"] = target.replicas
            changed = True
        doomed = [pod_names[(group["groupName"], n)] for n in target.remove if (group["groupName"], n) in pod_names]
        if doomed:
            strategy = group.setdefault("scaleStrategy", {})
            current = strategy.get("workersToDelete") or []
            merged = list(dict.fromkeys([*current, *doomed]))
            if merged != current:
                strategy["workersToDelete"] = merged
                changed = True
    return changed


# ----------------------------------------------------------------------------------------------- capacity


@dataclass(frozen=True)
class GroupState:
    """One worker group as the last look at the RayCluster and its Pods found it."""

    plan: WorkerGroupPlan
    replicas: int
    max_replicas: int
    min_replicas: int
    #: Nodes with a ready worker pod of the group that is not being deleted, and that Kubernetes lets take work.
    in_service: tuple[str, ...]


@dataclass(frozen=True)
class _Look:
    """One reading of the RayCluster and its Pods, taken after ``generation`` writes had been carried out."""

    generation: int
    groups: dict[str, GroupState]
    answer: dict[str, bool]


class KubeRayCapacity:
    """The :class:`~scheduler.live.capacity.CapacityManager` of a KubeRay RayCluster whose groups Zhisuan sizes.

    Its groups are planned from the node inventory (:func:`plan_worker_groups`, as :func:`raycluster` generated
    them); each look (every ``poll_s``) reads the RayCluster and its Pods once. A node is in service while a ready
    worker pod of its group runs there — not one already named in ``workersToDelete`` — and its Node is
    schedulable. Sizing runs :class:`~scheduler.scaling.ScalingRule` on each fresh look and writes the targets that
    differ through :class:`WorkerGroupSizer` (``resourceVersion`` preconditions, 409 retries).

    After :meth:`start` the looks and the writes happen in a thread of their own, so an API server that is slow
    never holds the scheduler's cycle: :meth:`in_service` hands over the newest look, and only one taken after
    every write handed off so far (a look from before a write would put the nodes it removes back in service).
    Without :meth:`start` (tests) both happen in the caller. An API server that cannot be read or written is
    logged (once per message) and the last look stands; nothing is raised.
    """

    def __init__(
        self,
        sizer: WorkerGroupSizer,
        inventory: InventorySource,
        rule: ScalingRule | None = None,
        *,
        poll_s: float = 2.0,
        reserve: tuple[float, float] = (0.05, 0.10),
    ) -> None:
        self.sizer = sizer
        self.inventory = inventory
        self.rule = rule or ScalingRule()
        self.poll_s = poll_s
        self.reserve = reserve
        self.groups: dict[str, GroupState] = {}
        #: What it decided to write: one entry per group whose target changed (for logs and tests).
        self.decisions: list[dict[str, Any]] = []
        self.last_error = ""
        self._last_look = float("-inf")
        self._fresh = False
        self._plans: list[WorkerGroupPlan] = []
        self._planned_from: Inventory | None = None
        self._missing: set[str] = set()
        self._lock = threading.Lock()
        self._latest: _Look | None = None
        #: Writes handed off, and the targets of the one not carried out yet.
        self._handed = 0
        self._todo: dict[str, GroupTarget] | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -------------------------------------------------------------------------------------- the thread

    def start(self) -> None:
        """Look and write from a thread of its own (see the class docstring)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="kuberay-capacity", daemon=True)
            self._thread.start()

    def close(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _work(self) -> None:
        while not self._stop.is_set():
            self._write_handed()
            self._look_now()
            self._wake.wait(self.poll_s)
            self._wake.clear()

    # -------------------------------------------------------------------------------------- looking

    def in_service(self, now: float) -> dict[str, bool] | None:
        if self._thread is None:
            if now - self._last_look < self.poll_s:
                return None
            self._last_look = now
            self._look_now()
        with self._lock:
            look = self._latest
            if look is None or look.generation != self._handed:
                return None
            self._latest = None
        self.groups = look.groups
        self._fresh = True
        return look.answer

    def _look_now(self) -> None:
        """Read the RayCluster and its Pods once; the result waits for :meth:`in_service`."""
        with self._lock:
            generation = self._handed - (1 if self._todo is not None else 0)
        inventory = self.inventory.inventory()
        if inventory is not self._planned_from:
            self._plans = plan_worker_groups(inventory, self.reserve)
            self._planned_from = inventory
        plans = self._plans
        schedulable = {n.node.id: n.schedulable for n in inventory.nodes}
        try:
            cluster = self.sizer.get()
            pods = self.sizer.pods()
        except SizerError as exc:
            self._failed(str(exc))
            return
        self._recovered()
        groups = self._groups(plans, cluster, pods, schedulable)
        answer = {node: False for plan in plans for node in plan.nodes}
        for group in groups.values():
            answer.update(dict.fromkeys(group.in_service, True))
        with self._lock:
            self._latest = _Look(generation, groups, answer)

    def _groups(
        self,
        plans: Sequence[WorkerGroupPlan],
        cluster: Mapping[str, Any],
        pods: Sequence[Mapping[str, Any]],
        schedulable: Mapping[str, bool],
    ) -> dict[str, GroupState]:
        state = readiness(cluster, pods)
        specs = {g.get("groupName", ""): g for g in (cluster.get("spec") or {}).get("workerGroupSpecs") or ()}
        doomed = {
            name for spec in specs.values() for name in ((spec.get("scaleStrategy") or {}).get("workersToDelete") or ())
        }
        leaving = set()
        for pod in pods:
            meta = pod.get("metadata") or {}
            if meta.get("name") in doomed:
                leaving.add(((meta.get("labels") or {}).get(GROUP_LABEL, ""), (pod.get("spec") or {}).get("nodeName")))
        groups = {}
        for plan in plans:
            spec = specs.get(plan.name)
            if spec is None:
                if plan.name not in self._missing:
                    self._missing.add(plan.name)
                    log.warning(
                        "worker group %s (%d nodes of %s) is not in RayCluster %s/%s: its nodes take no work "
                        "(regenerate it: zhisuan kube raycluster)",
                        plan.name,
                        len(plan.nodes),
                        plan.pool,
                        self.sizer.namespace,
                        self.sizer.name,
                    )
                continue
            self._missing.discard(plan.name)
            ready = state.groups.get(plan.name)
            nodes = tuple(
                n
                for n in (ready.nodes if ready else ())
                if n in plan.nodes and schedulable.get(n, False) and (plan.name, n) not in leaving
            )
            limit = spec.get("maxReplicas")
            groups[plan.name] = GroupState(
                plan=plan,
                replicas=int(spec.get("replicas") or 0),
                max_replicas=min(len(plan.nodes), int(limit)) if limit is not None else len(plan.nodes),
                min_replicas=int(spec.get("minReplicas") or 0),
                in_service=nodes,
            )
        return groups

    # -------------------------------------------------------------------------------------- sizing

    def size(
        self,
        state: ClusterState,
        pending: Sequence[Job],
        reservations: Mapping[str, Reservation],
        now: float,
        acceptable: Callable[[Job], Sequence[str]],
    ) -> tuple[str, ...]:
        if not self._fresh:
            return ()
        self._fresh = False
        self.rule.acceptable = acceptable
        views = [
            GroupView(
                name=name,
                pool=g.plan.pool,
                model=g.plan.model,
                devices=g.plan.devices,
                cpu_milli=g.plan.cpu_milli,
                memory_mib=g.plan.memory_mib,
                replicas=g.replicas,
                max_replicas=g.max_replicas,
                nodes=g.in_service,
                min_replicas=g.min_replicas,
            )
            for name, g in self.groups.items()
        ]
        targets = self.rule.decide(state, pending, views, now, reservations)
        changed = {name: t for name, t in targets.items() if t.replicas != self.groups[name].replicas or t.remove}
        if not changed:
            return ()
        with self._lock:
            self._handed += 1
            self._todo = changed
        if self._thread is None:
            if not self._write_handed():
                return ()
        else:
            self._wake.set()
        taken: list[str] = []
        for name, target in changed.items():
            before = self.groups[name]
            self.groups[name] = GroupState(
                before.plan,
                target.replicas,
                before.max_replicas,
                before.min_replicas,
                tuple(n for n in before.in_service if n not in target.remove),
            )
            taken.extend(target.remove)
            self.decisions.append(
                {
                    "t": now,
                    "group": name,
                    "replicas": target.replicas,
                    "added": target.added,
                    "removed": list(target.remove),
                    "for": list(target.serving),
                }
            )
            log.info(
                "worker group %s: %d -> %d replicas%s%s",
                name,
                before.replicas,
                target.replicas,
                f" for {', '.join(target.serving)}" if target.added else "",
                f", removing idle {', '.join(target.remove)}" if target.remove else "",
            )
        return tuple(taken)

    def _write_handed(self) -> bool:
        """Carry out the write handed off, if any; False if it failed (the next look shows what stands)."""
        with self._lock:
            targets, self._todo = self._todo, None
        if targets is None:
            return True
        try:
            self.sizer.resize(targets)
        except SizerError as exc:
            self._failed(str(exc))
            return False
        self._recovered()
        return True

    def _failed(self, line: str) -> None:
        if line != self.last_error:
            log.warning("%s (worker groups keep their size until it answers)", line)
        self.last_error = line

    def _recovered(self) -> None:
        if self.last_error:
            log.info("RayCluster %s/%s answers again", self.sizer.namespace, self.sizer.name)
        self.last_error = ""
