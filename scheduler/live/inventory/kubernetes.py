"""The node inventory from Kubernetes Nodes: a pure mapping, and a list-then-watch loop with the real client.

:func:`map_node` turns one Node object, as ``kubectl get node -o json`` prints it, into an
:class:`~scheduler.live.inventory.base.InventoryNode` (the core's :class:`~scheduler.model.Node` plus whether it
may take work and why not) or a :class:`~scheduler.live.inventory.base.LeftOut` (why it cannot be used)::

    >>> node = {"metadata": {"name": "gpu-1", "labels": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
    ...                                                  "topology.kubernetes.io/zone": "bj1-a"}},
    ...         "spec": {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]},
    ...         "status": {"allocatable": {"cpu": "95500m", "memory": "1056760Ki", "nvidia.com/gpu": "8"},
    ...                    "conditions": [{"type": "Ready", "status": "True"}]}}
    >>> seen = map_node(node)
    >>> seen.node.model, seen.node.devices, seen.node.cpu_milli, seen.node.memory_mib, seen.node.site
    ('H100', 8, 95500, 1031, 'bj1-a')
    >>> seen.schedulable, seen.vendor
    (True, 'nvidia')

Every name it reads (resources, labels, annotations, tolerated taints) comes from ``seeds/kubernetes.yaml``
(:mod:`scheduler.live.inventory.kubernetes_names`); models resolve through the accelerator catalog's aliases.
Whole devices come from ``status.allocatable`` — or, on a HAMi/Volcano node, from the register annotation that
lists the physical devices, since their allocatable counts are devices × split. Virtualised resources are
reported in ``virtual`` and unknown extended resources in ``unknown_resources``; neither is ever counted.

:class:`KubernetesInventory` keeps the mapping current: a paginated list (``limit``/``continue``), then a watch
from the list's ``resourceVersion`` with bookmarks. The version is opaque (stored and sent back, never
compared). It lists again on a 410 Expired (an ERROR event inside an HTTP 200 stream, or a 410 on a ``continue``
token), on a stream that ends before the timeout it asked for (a quiet end means the server dropped it), and on
a broken connection. While the API server cannot be read it backs off (exponential, jittered) and serves the last
known inventory marked ``stale`` with the reason; an RBAC denial is one line naming the verb and the resource.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import orjson
from kubernetes import client
from kubernetes import config as kube_config
from kubernetes.watch.watch import iter_resp_lines
from pydantic import ValidationError
from tenacity import RetryCallState, Retrying, wait_exponential_jitter

from scheduler.catalog import Catalog, load_catalog
from scheduler.errors import ConfigError
from scheduler.live.inventory.base import Inventory, InventoryNode, LeftOut, RegisteredDevice
from scheduler.live.inventory.kubernetes_names import (
    KubernetesNames,
    Register,
    Toleration,
    VendorNames,
    load_kubernetes_names,
)
from scheduler.model import Node

log = logging.getLogger("zhisuan.inventory.kubernetes")

#: The client's own line splitter for watch streams and its configuration loaders (untyped upstream).
_iter_lines = cast(Callable[[Any], Iterator[str]], iter_resp_lines)
_load_incluster = cast(Callable[..., None], kube_config.load_incluster_config)
_load_kubeconfig = cast(Callable[..., None], kube_config.load_kube_config)

#: Conditions a kubelet reports that say nothing bad when False (node-problem-detector's are bad when True, too).
_READY = "Ready"
_BLOCKING_EFFECTS = ("NoSchedule", "NoExecute")

# ----------------------------------------------------------------------------------------------- quantities

_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([A-Za-z]*)$")
_SUFFIX = {
    "": 1.0,
    "n": 1e-9,
    "u": 1e-6,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
    "Ki": 2.0**10,
    "Mi": 2.0**20,
    "Gi": 2.0**30,
    "Ti": 2.0**40,
    "Pi": 2.0**50,
    "Ei": 2.0**60,
}


def parse_quantity(value: object) -> float:
    """A Kubernetes quantity as a float: ``parse_quantity("63500m") == 63.5``, ``parse_quantity("1Ki") == 1024``.

    Raises ``ValueError`` for anything else (the caller names the field).
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    match = _QUANTITY.match(str(value).strip())
    if match is None or match.group(2) not in _SUFFIX:
        raise ValueError(f"{value!r} is not a Kubernetes quantity")
    return float(match.group(1)) * _SUFFIX[match.group(2)]


# ----------------------------------------------------------------------------------------------- HAMi registers


class RegisterError(ValueError):
    """A register annotation that does not parse; the node is left out with this message."""


_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def _go_bool(text: str, where: str) -> bool:
    # Go's strconv.ParseBool, which the writers' readers use.
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise RegisterError(f"{where}: health {text!r} is not a boolean")


def _int(text: str, what: str, where: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise RegisterError(f"{where}: {what} {text!r} is not an integer") from None


def parse_register(value: str, fmt: str = "hami", type_prefix: str = "") -> list[RegisteredDevice]:
    """The physical devices a HAMi or Volcano register annotation lists, in every format their versions write.

    * HAMi JSON list (current NVIDIA plugin): objects with ``id, index, count, devmem, devcore, type, numa, mode,
      health``; Go's ``omitempty`` drops zero values, so a missing ``health`` is *false*.
    * HAMi CSV, devices separated by ``:``: 7 fields ``id,count,devmem,devcore,type,numa,health``; 8 fields add
      ``index``; 9 fields add ``index,mode``.
    * Volcano vGPU CSV: 6 fields ``id,count,devmem,type,health,mode``.

        >>> [d.id for d in parse_register("GPU-a,10,32768,100,NVIDIA-Tesla V100-PCIE-32GB,0,true:")]
        ['GPU-a']
        >>> parse_register('[{"id":"GPU-b","count":10,"devmem":46068,"devcore":100,"type":"NVIDIA-A40"}]',
        ...                type_prefix="NVIDIA-")[0].healthy
        False
    """
    text = value.strip()
    if text.startswith("["):
        return _parse_register_json(text, type_prefix)
    if ":" not in text:
        raise RegisterError("neither a JSON list nor ':'-separated devices")
    devices: list[RegisteredDevice] = []
    for position, segment in enumerate(text.split(":")):
        segment = segment.strip()
        if not segment:
            continue
        fields = segment.split(",")
        where = f"device {position}"
        if fmt == "volcano":
            if len(fields) < 6:
                raise RegisterError(f"{where}: {len(fields)} fields, Volcano's vGPU form has 6")
            devid, count, devmem, kind, health = fields[0], fields[1], fields[2], fields[3], fields[4]
            devcore, index = "100", str(position)
        else:
            if len(fields) not in (7, 8, 9):
                raise RegisterError(f"{where}: {len(fields)} fields, HAMi writes 7, 8 or 9")
            devid, count, devmem, devcore, kind, _numa, health = fields[:7]
            index = fields[7] if len(fields) >= 8 else str(position)
        devices.append(
            RegisteredDevice(
                id=devid,
                split=_int(count, "split count", where),
                memory_mib=_int(devmem, "memory", where),
                cores=_int(devcore, "cores", where),
                type=kind.removeprefix(type_prefix),
                healthy=_go_bool(health, where),
                index=_int(index, "index", where),
            )
        )
    if not devices:
        raise RegisterError("lists no device")
    return devices


def _parse_register_json(text: str, type_prefix: str) -> list[RegisteredDevice]:
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise RegisterError(f"malformed JSON: {exc}") from None
    if not isinstance(data, list) or not data:
        raise RegisterError("the JSON form must be a non-empty list of devices")
    devices = []
    for position, entry in enumerate(data):
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            raise RegisterError(f"device {position}: not an object with an 'id'")
        try:
            devices.append(
                RegisteredDevice(
                    id=entry["id"],
                    split=int(entry.get("count", 0)),
                    memory_mib=int(entry.get("devmem", 0)),
                    cores=int(entry.get("devcore", 0)),
                    type=str(entry.get("type", "")).removeprefix(type_prefix),
                    healthy=entry.get("health", False) is True,
                    index=int(entry.get("index", 0)),
                )
            )
        except (TypeError, ValueError):
            raise RegisterError(f"device {position}: count/devmem/devcore/index must be integers") from None
    return devices


# ----------------------------------------------------------------------------------------------- mapping


@dataclass(frozen=True)
class MappingOptions:
    """What the mapping needs beyond the table: extra tolerations Zhisuan's pods carry, and a site default."""

    tolerations: tuple[Toleration, ...] = ()
    default_site: str = "default"
    default_region: str = "default"


class NodeMapper:
    """Maps Node objects to the cluster model; holds the table, the catalog and a cache of model look-ups."""

    def __init__(
        self,
        names: KubernetesNames | None = None,
        catalog: Catalog | None = None,
        options: MappingOptions | None = None,
    ) -> None:
        self.catalog = catalog or load_catalog()
        if names is None:
            names = load_kubernetes_names(catalog=catalog) if catalog is not None else load_kubernetes_names()
        self.names = names
        self.options = options or MappingOptions()
        self._models: dict[str, tuple[str, str] | None] = {}

    def _lookup(self, name: str) -> tuple[str, str] | None:
        """(model, vendor) for a model name, cached: label values repeat across thousands of nodes."""
        try:
            return self._models[name]
        except KeyError:
            found = self.catalog.lookup(name)
            value = (found.model, found.vendor) if found is not None else None
            self._models[name] = value
            return value

    def map(self, obj: Mapping[str, Any]) -> InventoryNode | LeftOut:
        """See :func:`map_node`."""
        metadata = obj.get("metadata") or {}
        name = metadata.get("name")
        if not isinstance(name, str) or not name:
            return LeftOut("<unnamed>", "the object has no metadata.name")
        try:
            return self._map(name, metadata, obj.get("spec") or {}, obj.get("status") or {})
        except _Skip as skip:
            return LeftOut(name, str(skip))
        except (TypeError, AttributeError, ValueError) as exc:
            # A Node that does not have the API's shape (a string where a map belongs...): leave it out, say why.
            return LeftOut(name, f"not a well-formed Node object: {exc}")

    def _map(
        self, name: str, metadata: Mapping[str, Any], spec: Mapping[str, Any], status: Mapping[str, Any]
    ) -> InventoryNode:
        labels: Mapping[str, str] = metadata.get("labels") or {}
        annotations: Mapping[str, str] = metadata.get("annotations") or {}
        allocatable: Mapping[str, Any] = status.get("allocatable") or {}
        capacity: Mapping[str, Any] = status.get("capacity") or {}
        names = self.names

        # Sort every extended resource into a vendor's devices, a vendor's virtual resources, or unknown.
        device_counts: dict[str, dict[str, int]] = {}
        virtual: dict[str, float] = {}
        unknown: dict[str, str] = {}
        vendors: set[str] = set()
        for resource in {**capacity, **allocatable}:
            if "/" not in resource or resource.split("/", 1)[0].endswith("kubernetes.io"):
                continue
            raw = allocatable.get(resource, "0")
            classified = names.classify(resource)
            if classified is None:
                unknown[resource] = str(raw)
                continue
            amount = _resource_amount(raw, resource)
            vendors.add(classified.vendor)
            if classified.kind == "device":
                device_counts.setdefault(classified.vendor, {})[resource] = int(amount)
            else:
                virtual[resource] = amount
        registers: dict[str, list[tuple[str, Register, str]]] = {}
        for key, value in annotations.items():
            if not key.startswith(("hami.io/", "volcano.sh/")):
                continue
            found = names.registers(key)
            if found is not None:
                vendor, register = found
                registers.setdefault(vendor, []).append((key, register, value))
                vendors.add(vendor)

        if not vendors:
            if unknown:
                listed = ", ".join(f"{k}={v}" for k, v in sorted(unknown.items()))
                raise _Skip(
                    f"unknown vendor: extended resources {listed} are not in seeds/kubernetes.yaml "
                    "(add the vendor's names there if they are accelerators)"
                )
            raise _Skip("no accelerator: none of the resources seeds/kubernetes.yaml names (a CPU-only node)")
        if len(vendors) > 1:
            raise _Skip(f"devices of several vendors ({', '.join(sorted(vendors))}); a Zhisuan node holds one model")
        vendor = next(iter(vendors))
        table = names.vendors[vendor]

        reasons: list[str] = []
        registered: list[RegisteredDevice] = []
        model_candidates: list[tuple[str, str]] = []  # (name, where it came from)
        label_model = self._label_model(table, labels, model_candidates)
        if registers.get(vendor):
            for key, register, value in sorted(registers[vendor]):
                try:
                    registered.extend(parse_register(value, register.format, register.type_prefix))
                except RegisterError as exc:
                    raise _Skip(f"malformed annotation {key}: {exc}") from None
            # HAMi's (or Volcano's) device plugin advertises devices × split: the annotation is the truth.
            for resource, count in device_counts.get(vendor, {}).items():
                virtual[resource] = float(count)
            device_resource = next(iter(sorted(device_counts.get(vendor, {}))), "")
            devices = sum(1 for d in registered if d.healthy)
            for d in registered:
                if not d.healthy:
                    reasons.append(f"device {d.id} (index {d.index}) reported unhealthy in the register annotation")
            if label_model is None:
                for kind in dict.fromkeys(d.type for d in registered if d.type):
                    model_candidates.append((kind, "the register annotation's device type"))
        else:
            counted = {r: c for r, c in device_counts.get(vendor, {}).items()}
            if not counted:
                seen = ", ".join(sorted(virtual))
                raise _Skip(
                    f"{vendor} virtual resources only ({seen}) and no register annotation: the physical devices "
                    "cannot be counted"
                )
            nonzero = [r for r, c in counted.items() if c > 0] or list(counted)
            if len(nonzero) > 1:
                raise _Skip(f"several {vendor} device resources ({', '.join(sorted(nonzero))}); expected one model")
            resource = nonzero[0]
            spec_entry = next(d for d in table.devices if d.resource == resource)
            device_resource = resource
            devices = counted[resource]
            if spec_entry.replicas_label and labels.get(spec_entry.replicas_label):
                replicas = _int_label(labels, spec_entry.replicas_label)
                if replicas > 1:
                    # Time-slicing / MPS advertise each device `replicas` times.
                    virtual[resource] = float(devices)
                    devices //= replicas
            if spec_entry.model:
                model_candidates.append((spec_entry.model, f"the resource name {resource}"))

        if label_model is not None and any(s in label_model[0] for s in table.slice_models):
            raise _Skip(
                f"{label_model[1]} says {label_model[0]!r}: the advertised devices are slices (MIG single strategy), "
                "not whole devices"
            )
        model = vendor_of_model = None
        for candidate, _where in model_candidates:
            resolved = self._lookup(candidate)
            if resolved is not None:
                model, vendor_of_model = resolved
                break
        if model is None:
            if not model_candidates:
                labelled = ", ".join(m.label for m in table.model_labels) or "none in seeds/kubernetes.yaml"
                raise _Skip(f"model unknown: the {vendor} node carries no model label ({labelled})")
            tried = "; ".join(f"{c!r} from {w}" for c, w in model_candidates)
            raise _Skip(f"model not in the accelerator catalog (seeds/accelerators.yaml): {tried}")
        if vendor_of_model != vendor:
            raise _Skip(f"model {model} is a {vendor_of_model} model but the node's resources are {vendor}'s")

        schedulable = self._admission(spec, status, table, reasons)
        cpu_milli = round(_resource_amount(allocatable.get("cpu", "0"), "cpu") * 1000)
        memory_mib = int(_resource_amount(allocatable.get("memory", "0"), "memory") // 2**20)
        topology = names.topology
        site = _first(labels, topology.site) or self.options.default_site
        zone = _first(labels, topology.zone) or ""
        node_labels = {k: v for k, v in labels.items() if k.startswith("zhisuan.io/")}
        if devices == 0:
            schedulable = False
            reasons.append("no healthy device is allocatable")
        try:
            core_node = Node(
                id=name,
                model=model,
                devices=devices,
                cpu_milli=max(cpu_milli, 0),
                memory_mib=max(memory_mib, 0),
                site=site,
                region=_first(labels, topology.region) or self.options.default_region,
                tier=self.catalog[model].tier,
                island=_first(labels, topology.island) or "",
                switch=_first(labels, topology.switch) or "",
                labels=node_labels,
            )
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise _Skip(f"cannot be a Zhisuan node: {field}: {first['msg']}") from None
        return InventoryNode(
            node=core_node,
            vendor=vendor,
            schedulable=schedulable,
            reasons=tuple(reasons),
            virtual=virtual,
            unknown_resources=unknown,
            registered=tuple(registered),
            zone=zone,
            device_resource=device_resource,
        )

    def _label_model(
        self, table: VendorNames, labels: Mapping[str, str], candidates: list[tuple[str, str]]
    ) -> tuple[str, str] | None:
        for entry in table.model_labels:
            value = labels.get(entry.label)
            if value:
                value = value.removeprefix(entry.strip_prefix) if entry.strip_prefix else value
                where = f"label {entry.label}"
                candidates.append((value, where))
                return value, where
        return None

    def _admission(
        self, spec: Mapping[str, Any], status: Mapping[str, Any], table: VendorNames, reasons: list[str]
    ) -> bool:
        """Ready, not cordoned, no untolerated NoSchedule/NoExecute taint; other conditions become reasons."""
        ok = True
        ready = None
        for condition in status.get("conditions") or ():
            kind, state = condition.get("type"), condition.get("status")
            detail = ": ".join(p for p in (condition.get("reason"), condition.get("message")) if p)
            if kind == _READY:
                ready = state
                if state != "True":
                    reasons.append(f"Ready is {state}" + (f" ({detail})" if detail else ""))
            elif state == "True":
                # MemoryPressure, DiskPressure, PIDPressure, NetworkUnavailable, and node-problem-detector's
                # KernelDeadlock, ReadonlyFilesystem, ...: all mean trouble when True.
                reasons.append(f"{kind}" + (f": {detail}" if detail else ""))
        if ready is None:
            reasons.append("no Ready condition reported")
        if ready != "True":
            ok = False
        if spec.get("unschedulable"):
            ok = False
            reasons.append("cordoned (spec.unschedulable)")
        tolerations = (*table.tolerations, *self.options.tolerations)
        for taint in spec.get("taints") or ():
            if taint.get("effect") not in _BLOCKING_EFFECTS:
                continue
            if any(t.tolerates(taint) for t in tolerations):
                continue
            ok = False
            value = f"={taint['value']}" if taint.get("value") else ""
            reasons.append(f"taint {taint.get('key')}{value}:{taint.get('effect')} is not tolerated")
        return ok


class _Skip(Exception):
    """Raised inside the mapping for a node that is left out; the message is its reason."""


def _resource_amount(raw: object, resource: str) -> float:
    try:
        return parse_quantity(raw)
    except ValueError:
        raise _Skip(f"status.allocatable[{resource}]: {raw!r} is not a Kubernetes quantity") from None


def _int_label(labels: Mapping[str, str], key: str) -> int:
    try:
        return int(labels[key])
    except ValueError:
        raise _Skip(f"label {key}={labels[key]!r} is not an integer") from None


def _first(labels: Mapping[str, str], keys: Iterable[str]) -> str | None:
    for key in keys:
        value = labels.get(key)
        if value:
            return value
    return None


_DEFAULT_MAPPER: NodeMapper | None = None


def map_node(obj: Mapping[str, Any], mapper: NodeMapper | None = None) -> InventoryNode | LeftOut:
    """One Node object (a dict as the API serves it) → an :class:`InventoryNode`, or a :class:`LeftOut` saying
    why the node cannot be used. Pure: the same object always maps the same way (see the module docstring)."""
    global _DEFAULT_MAPPER
    if mapper is None:
        if _DEFAULT_MAPPER is None:
            _DEFAULT_MAPPER = NodeMapper()
        mapper = _DEFAULT_MAPPER
    return mapper.map(obj)


def node_objects(document: Any) -> list[dict[str, Any]]:
    """The Node objects in what ``kubectl get nodes -o json|yaml`` prints: a ``List``/``NodeList`` or one Node.

    Raises ``ValueError`` for a document that is neither.
    """
    if not isinstance(document, dict):
        raise ValueError(f"expected a Node or a List of Nodes, got {type(document).__name__}")
    kind = document.get("kind")
    if kind in ("List", "NodeList") or (kind is None and isinstance(document.get("items"), list)):
        items = document.get("items")
        if not isinstance(items, list):
            raise ValueError(f"a {kind or 'list'} without an items list")
        out: list[dict[str, Any]] = []
        for i, item in enumerate(items):
            if not isinstance(item, dict) or item.get("kind", "Node") != "Node":
                found = item.get("kind") if isinstance(item, dict) else type(item).__name__
                raise ValueError(f"items[{i}] is a {found}, not a Node")
            out.append(item)
        return out
    if kind == "Node":
        return [document]
    raise ValueError(f"expected kind Node, NodeList or List, got {kind!r}")


def inventory_from_objects(objects: Iterable[Mapping[str, Any]], mapper: NodeMapper | None = None) -> Inventory:
    """Map many Node objects at once (``zhisuan kube nodes``, the benchmark, a fresh list)."""
    nodes: list[InventoryNode] = []
    left: list[LeftOut] = []
    for obj in objects:
        seen = map_node(obj, mapper)
        if isinstance(seen, InventoryNode):
            nodes.append(seen)
        else:
            left.append(seen)
    return Inventory(nodes=tuple(nodes), left_out=tuple(left))


# ----------------------------------------------------------------------------------------------- API errors


def api_error_line(exc: BaseException, verb: str, resource: str) -> str:
    """One line for people: what failed, and for an RBAC denial the verb and resource to grant.

    >>> api_error_line(client.ApiException(status=403, reason="Forbidden"), "watch", "nodes")
    "RBAC denied: cannot watch nodes (grant the scheduler's ServiceAccount 'watch' on 'nodes'): Forbidden"
    """
    if isinstance(exc, client.ApiException):
        message = _status_message(exc) or (exc.reason or "")
        if exc.status == 403:
            return (
                f"RBAC denied: cannot {verb} {resource} (grant the scheduler's ServiceAccount '{verb}' on "
                f"'{resource}'): {message}"
            )
        if exc.status == 401:
            return f"unauthorized: the API server rejected the credentials while trying to {verb} {resource}"
        return f"cannot {verb} {resource}: HTTP {exc.status} {message}".rstrip()
    return f"cannot {verb} {resource}: API server unreachable ({type(exc).__name__}: {exc})"


def _status_message(exc: client.ApiException) -> str:
    body = exc.body
    if not body:
        return ""
    try:
        data = orjson.loads(body)
    except (orjson.JSONDecodeError, TypeError):
        return ""
    return str(data.get("message", "")) if isinstance(data, dict) else ""


class _Expired(Exception):
    """The server answered 410 Gone: the version or continue token is too old; list again."""


# ----------------------------------------------------------------------------------------------- the client


def kube_api_client(kubeconfig: str | Path | None = None, context: str | None = None) -> client.ApiClient:
    """A ``kubernetes`` client for the product: from ``kubeconfig`` (and ``context``) when given, else the pod's
    service account inside a cluster (``KUBERNETES_SERVICE_HOST`` set), else ``$KUBECONFIG`` or
    ``~/.kube/config``. Raises :class:`~scheduler.errors.ConfigError` with one line saying what to set."""
    configuration = client.Configuration()
    where = str(kubeconfig) if kubeconfig is not None else "the Kubernetes configuration"
    try:
        if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            where = "the in-cluster service account"
            _load_incluster(client_configuration=configuration)
        else:
            _load_kubeconfig(
                config_file=str(kubeconfig) if kubeconfig is not None else None,
                context=context,
                client_configuration=configuration,
                persist_config=False,
            )
    except (kube_config.ConfigException, OSError, TypeError, ValueError) as exc:
        raise ConfigError(
            where,
            "",
            f"cannot reach a Kubernetes API server with it ({str(exc).splitlines()[0] if str(exc) else exc!r}); "
            "set ZHISUAN_KUBECONFIG (--kubeconfig) or run inside the cluster with a service account",
        ) from None
    return client.ApiClient(configuration)


# ----------------------------------------------------------------------------------------------- the watch loop


class KubernetesInventory:
    """The Node inventory kept current by list-then-watch; ``inventory()`` is safe to call from any thread.

    ``api`` is a ``kubernetes.client.ApiClient`` (configured from a kubeconfig or in-cluster service account by
    the caller: :func:`kubernetes.config.load_incluster_config`). Call :meth:`run` in a thread; it returns when
    ``stop`` is set (an open watch is cut at once). A new :class:`Inventory` object is handed out after every
    change (a publisher compares identities to know when to write).
    """

    source = "kubernetes"

    def __init__(
        self,
        api: client.ApiClient,
        mapper: NodeMapper | None = None,
        *,
        page_size: int = 500,
        watch_timeout_s: int = 300,
        request_timeout_s: float = 30.0,
        label_selector: str | None = None,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 60.0,
        backoff_jitter_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._core = client.CoreV1Api(api)
        self.mapper = mapper or NodeMapper()
        self.page_size = page_size
        self.watch_timeout_s = watch_timeout_s
        self.request_timeout_s = request_timeout_s
        self.label_selector = label_selector
        self._wait = wait_exponential_jitter(multiplier=backoff_initial_s, max=backoff_max_s, jitter=backoff_jitter_s)
        self._failures = 0
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[str, InventoryNode | LeftOut] = {}
        self._snapshot: Inventory | None = None
        self._stale = True
        self._stale_reason = "not listed yet"
        self._response: Any = None
        self._stop: threading.Event | None = None
        #: The opaque version the next watch starts from (the list's, then each event's and bookmark's).
        self.resource_version: str | None = None
        self.lists = 0
        self.watches = 0
        self.events = 0
        self.last_error = ""

    # -------------------------------------------------------------------------------------- reading

    def inventory(self) -> Inventory:
        with self._lock:
            if self._snapshot is None:
                nodes: list[InventoryNode] = []
                left: list[LeftOut] = []
                for name in sorted(self._seen):
                    seen = self._seen[name]
                    if isinstance(seen, InventoryNode):
                        nodes.append(seen)
                    else:
                        left.append(seen)
                self._snapshot = Inventory(
                    nodes=tuple(nodes),
                    left_out=tuple(left),
                    stale=self._stale,
                    stale_reason=self._stale_reason if self._stale else "",
                )
            return self._snapshot

    # -------------------------------------------------------------------------------------- listing

    def sync(self) -> None:
        """A full paginated list; replaces the inventory at once when every page has arrived."""
        restarted = False
        while True:
            try:
                objects, version = self._list_all()
                break
            except _Expired:
                # The continue token outlived its snapshot: start over for a consistent list (once is enough;
                # a second 410 in a row is a real error).
                if restarted:
                    raise client.ApiException(status=410, reason="continue token expired twice") from None
                restarted = True
        mapped = {}
        for obj in objects:
            seen = self.mapper.map(obj)
            mapped[seen.name if isinstance(seen, LeftOut) else seen.node.id] = seen
        with self._lock:
            self._seen = mapped
            self.resource_version = version
            self._stale = False
            self._stale_reason = ""
            self._snapshot = None
        self.lists += 1
        self._failures = 0

    def _list_all(self) -> tuple[list[dict[str, Any]], str | None]:
        objects: list[dict[str, Any]] = []
        token: str | None = None
        version: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": self.page_size, "_preload_content": False}
            if token:
                kwargs["_continue"] = token
            if self.label_selector:
                kwargs["label_selector"] = self.label_selector
            try:
                response: Any = self._core.list_node(_request_timeout=self.request_timeout_s, **kwargs)
            except client.ApiException as exc:
                if exc.status == 410:
                    raise _Expired() from None
                raise
            page = orjson.loads(response.data)
            items = page.get("items") or []
            objects.extend(items)
            meta = page.get("metadata") or {}
            version = meta.get("resourceVersion", version)
            token = meta.get("continue") or None
            if not token:
                return objects, version

    # -------------------------------------------------------------------------------------- watching

    def apply(self, event: Mapping[str, Any]) -> str | None:
        """Apply one watch event; returns ``"expired"`` for a 410 ERROR event. Other ERROR events raise."""
        kind = event.get("type")
        obj = event.get("object") or {}
        meta = obj.get("metadata") or {}
        if kind == "ERROR":
            code = obj.get("code")
            if code == 410:
                return "expired"
            raise client.ApiException(status=int(code or 500), reason=str(obj.get("reason") or "watch error"))
        version = meta.get("resourceVersion")
        if kind == "BOOKMARK":
            if version:
                self.resource_version = version
            return None
        name = meta.get("name")
        if not isinstance(name, str):
            return None
        seen = self.mapper.map(obj) if kind in ("ADDED", "MODIFIED") else None
        with self._lock:
            if kind == "DELETED":
                self._seen.pop(name, None)
            elif seen is not None:
                self._seen[name] = seen
            if version:
                self.resource_version = version
            self._snapshot = None
        self.events += 1
        return None

    def watch_once(self) -> str:
        """One watch from :attr:`resource_version`; returns why it ended: ``expired``, ``timeout``, ``ended`` (before
        its timeout) or ``stopped``."""
        began = self._clock()
        kwargs: dict[str, Any] = {
            "watch": True,
            "allow_watch_bookmarks": True,
            "timeout_seconds": self.watch_timeout_s,
            "_preload_content": False,
            # Bookmarks and the server's own timeout bound the silence; past this the connection is dead.
            "_request_timeout": (self.request_timeout_s, self.watch_timeout_s + self.request_timeout_s),
        }
        if self.resource_version is not None:
            kwargs["resource_version"] = self.resource_version
        if self.label_selector:
            kwargs["label_selector"] = self.label_selector
        response: Any = self._core.list_node(**kwargs)
        self._response = response
        self.watches += 1
        stop = self._stop
        try:
            if stop is not None and stop.is_set():
                # Stopped while the request was on its way: the cutter may have looked before it was stored.
                return "stopped"
            for line in _iter_lines(response):
                if stop is not None and stop.is_set():
                    return "stopped"
                if not line:
                    continue
                try:
                    event = orjson.loads(line)
                except orjson.JSONDecodeError:
                    raise ValueError(f"watch stream: a line that is not JSON: {line[:80]!r}") from None
                if self.apply(event) == "expired":
                    return "expired"
        finally:
            self._response = None
            # A watch cut short leaves unread bytes on the connection: never hand it back to the pool.
            response.close()
            response.release_conn()
        # The server closes a watch when its timeoutSeconds are up. A stream that ends well before that ended
        # for some other reason (a proxy, an API server restart) and may have lost events: list again.
        if self._clock() - began >= self.watch_timeout_s * 0.9:
            return "timeout"
        return "ended"

    def run(self, stop: threading.Event) -> None:
        """List, then watch, until ``stop`` is set; see the module docstring for when it lists again."""
        self._stop = stop
        cutter = threading.Thread(target=self._cut_on_stop, args=(stop,), name="k8s-watch-cut", daemon=True)
        cutter.start()
        need_list = True
        while not stop.is_set():
            verb = "list"
            try:
                if need_list:
                    self.sync()
                    need_list = False
                verb = "watch"
                began = self._clock()
                outcome = self.watch_once()
                if outcome in ("expired", "ended"):
                    log.info("node watch %s; listing again", outcome)
                    need_list = True
                    if outcome == "ended" and self._clock() - began < 1.0:
                        # Something in between closes every watch at once (a proxy, an API server going
                        # down): back off as for an error instead of listing the nodes in a tight loop.
                        stop.wait(self._next_delay())
            except Exception as exc:
                if stop.is_set():
                    break
                self._failed(api_error_line(exc, verb, "nodes"))
                need_list = True
                stop.wait(self._next_delay())

    def _cut_on_stop(self, stop: threading.Event) -> None:
        stop.wait()
        response = self._response
        if response is not None:
            # The stream may be closing on its own at the same moment.
            with contextlib.suppress(Exception):
                response.shutdown()

    def _failed(self, line: str) -> None:
        if line != self.last_error:
            log.warning("%s (serving the last known inventory, marked stale)", line)
        self.last_error = line
        with self._lock:
            self._stale = True
            self._stale_reason = line
            self._snapshot = None

    def _next_delay(self) -> float:
        self._failures += 1
        state = RetryCallState(retry_object=Retrying(), fn=None, args=(), kwargs={})
        state.attempt_number = self._failures
        return float(self._wait(state))
