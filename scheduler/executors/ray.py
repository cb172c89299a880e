"""Run the core's placements on a Ray cluster: one pinned placement group and one actor per worker.

For attempt ``a`` of job ``j`` the executor creates, in its Ray namespace (default ``zhisuan``):

- a detached placement group ``zhisuan-j-a`` with one bundle per rank. Bundle ``r`` holds the vendor resource of
  the node's model (``GPU``, ``NPU``, ``MLU``... as the node agent declares it, see
  :func:`agents.agent.ray_resource_name`) × devices (a fraction of one device for an inference replica), plus
  the worker's CPU and memory, and is pinned to the node the core chose with
  ``bundle_label_selector=[{"zhisuan.io/node": <node id>}, ...]`` (Ray node labels, set by ``ray start
  --labels`` from :func:`agents.agent.ray_node_spec`);
- detached named actors ``zhisuan-j-a-r`` (:class:`~scheduler.executors.worker.ZhisuanWorker`), each in its
  bundle, which run the entrypoint with the vendor's visibility variable set to the devices the core chose.

Nothing lives only in the executor object: launch and final records go to Ray's GCS key-value store, so a new
executor (after a service restart) finds every job by name::

    >>> ex = RayExecutor("127.0.0.1:6379")                       # doctest: +SKIP
    >>> ex.launch(LaunchRequest("j1", 0, placement, "python train.py"))   # doctest: +SKIP
    >>> ex.status("j1").phase                                    # doctest: +SKIP
    <Phase.RUNNING: 'running'>
    >>> ex.read_logs("j1", rank=0).text                          # doctest: +SKIP
    'step 1 loss 0.93\\n'
    >>> ex.stop("j1", "cancelled by alice")                      # doctest: +SKIP

Once the executor observes an attempt in a terminal phase (gang rules in :func:`fold`: the other ranks are
stopped) it records the final status and releases the placement group and actors (``release_finished``), so
devices free up even if the service never calls :meth:`RayExecutor.stop`. :meth:`RayExecutor.poll` keeps listing
an ended attempt until a ``stop()`` acknowledges it; :meth:`RayExecutor.status` answers from the record until
:meth:`RayExecutor.forget`. Logs stay on the nodes (``log_dir``) after the workers are gone.

When the GCS does not accept connections every call raises :class:`ExecutorUnavailable` at once, and the driver
is configured never to end the process (Ray's default ends a driver whose GCS is gone for 60 s).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from agents.agent import device_visibility_env, ray_label_value, ray_resource_name
from scheduler.catalog import Catalog, load_catalog
from scheduler.executors.base import (
    ExecutionStatus,
    ExecutorError,
    ExecutorUnavailable,
    LaunchRequest,
    LogChunk,
    Phase,
    WorkerStatus,
)
from scheduler.executors.worker import (
    NODE_LABEL,
    TAIL_LINES,
    WALLTIME_MESSAGE,
    WorkerSpec,
    ZhisuanWorker,
    read_log_file,
    tail_lines,
)
from scheduler.model import MILLI

log = logging.getLogger("zhisuan.executor.ray")

PREFIX = "zhisuan-"
KV_NAMESPACE = "zhisuan"
DEFAULT_LOG_DIR = "/tmp/zhisuan/logs"
#: A Ray driver whose GCS stays unreachable this long ends its own process (Ray's default: 60 s). The scheduler
#: service must outlive its Ray cluster, so the executor's driver waits (years) and reports ExecutorUnavailable.
_RECONNECT_ENV = "RAY_gcs_rpc_server_reconnect_timeout_s"


def pg_name(job_id: str, attempt: int) -> str:
    """``pg_name("j1", 2) == "zhisuan-j1-2"``"""
    return f"{PREFIX}{job_id}-{attempt}"


def actor_name(job_id: str, attempt: int, rank: int) -> str:
    """``actor_name("j1", 2, 0) == "zhisuan-j1-2-0"``"""
    return f"{PREFIX}{job_id}-{attempt}-{rank}"


def parse_pg_name(name: str) -> tuple[str, int] | None:
    """``(job_id, attempt)`` of a placement group name, None when it is not one of ours.

    >>> parse_pg_name("zhisuan-llama-7b-3"), parse_pg_name("other")
    (('llama-7b', 3), None)
    """
    if not name.startswith(PREFIX):
        return None
    job, sep, attempt = name[len(PREFIX) :].rpartition("-")
    if not sep or not job or not attempt.isdigit():
        return None
    return job, int(attempt)


def parse_actor_name(name: str) -> tuple[str, int, int] | None:
    """``(job_id, attempt, rank)`` of a worker actor name.

    >>> parse_actor_name("zhisuan-llama-7b-3-1")
    ('llama-7b', 3, 1)
    """
    head, sep, rank = name.rpartition("-")
    parsed = parse_pg_name(head) if sep and rank.isdigit() else None
    return None if parsed is None else (parsed[0], parsed[1], int(rank))


@dataclass(frozen=True)
class WorkerPlan:
    """One rank: its bundle, the node it is pinned to, and the actor's spec."""

    bundle: dict[str, float]
    selector: dict[str, str]
    spec: WorkerSpec

    def actor_options(self) -> dict[str, Any]:
        """Resources of the actor: the whole bundle, so Ray's accounting matches the core's."""
        resources = {k: v for k, v in self.bundle.items() if k not in ("CPU", "GPU", "memory")}
        options: dict[str, Any] = {
            "num_cpus": self.bundle.get("CPU", 0.0),
            "num_gpus": self.bundle.get("GPU", 0.0),
            "resources": resources,
        }
        if self.bundle.get("memory"):
            options["memory"] = self.bundle["memory"]
        return options


def plan_workers(
    req: LaunchRequest,
    catalog: Catalog,
    log_dir: str,
    namespace: str,
    stop_grace_s: float = 5.0,
) -> list[WorkerPlan]:
    """Bundles, label selectors and worker specs for a launch request (pure: no Ray calls).

    >>> from scheduler.model import Placement, TopologyLevel, WorkerPlacement
    >>> p = Placement("svc", "Ascend910B", "gz1/Ascend910B",
    ...               (WorkerPlacement("npu-01", (3,), 250, cpu_milli=500, memory_mib=1024),), TopologyLevel.NODE)
    >>> plan = plan_workers(LaunchRequest("svc", 0, p, "serve"), load_catalog(), "/tmp/logs", "zhisuan")[0]
    >>> plan.bundle, plan.selector, plan.spec.visibility_env
    ({'NPU': 0.25, 'CPU': 0.5, 'memory': 1073741824.0}, {'zhisuan.io/node': 'npu-01'}, ('ASCEND_RT_VISIBLE_DEVICES',))
    """
    placement = req.placement
    try:
        vendor = catalog[placement.model].vendor
    except KeyError as err:
        raise ExecutorError(str(err)) from None
    resource = ray_resource_name(vendor)
    visibility = device_visibility_env(vendor)
    nodes = list(placement.nodes)
    per_node: dict[str, int] = {}
    plans: list[WorkerPlan] = []
    for rank, worker in enumerate(placement.workers):
        devices = len(worker.devices) * worker.milli / MILLI
        bundle: dict[str, float] = {}
        if devices > 0:
            bundle[resource] = round(devices, 4)
        if worker.cpu_milli > 0:
            bundle["CPU"] = worker.cpu_milli / 1000
        if worker.memory_mib > 0:
            bundle["memory"] = float(worker.memory_mib * 2**20)
        if not bundle:  # Ray refuses empty bundles; a worker with nothing reserved still needs a slot
            bundle["CPU"] = 0.001
        local_rank = per_node.get(worker.node, 0)
        per_node[worker.node] = local_rank + 1
        label = ray_label_value(worker.node)
        spec = WorkerSpec(
            job_id=req.job_id,
            attempt=req.attempt,
            rank=rank,
            world_size=req.world_size,
            local_rank=local_rank,
            local_world_size=0,  # filled below
            node_rank=nodes.index(worker.node),
            node=worker.node,
            node_label=label,
            model=placement.model,
            vendor=vendor,
            devices=tuple(worker.devices),
            milli=worker.milli,
            visibility_env=(visibility,) if visibility else (),
            entrypoint=req.entrypoint,
            log_path=str(Path(log_dir) / req.job_id / str(req.attempt) / f"rank-{rank}.log"),
            namespace=namespace,
            rank0_actor=actor_name(req.job_id, req.attempt, 0),
            env=dict(req.env),
            working_dir=req.working_dir,
            pip=tuple(req.pip),
            walltime_s=req.walltime_s,
            checkpoint_path=req.checkpoint_path,
            kind=req.kind.value,
            stop_grace_s=stop_grace_s,
        )
        plans.append(WorkerPlan(bundle, {NODE_LABEL: label}, spec))
    return [
        WorkerPlan(p.bundle, p.selector, _replace_spec(p.spec, local_world_size=per_node[p.spec.node])) for p in plans
    ]


def _replace_spec(spec: WorkerSpec, **changes: Any) -> WorkerSpec:
    return replace(spec, **changes)


# -------------------------------------------------------------------------------------- status folding


def fold(job_id: str, attempt: int, workers: Sequence[dict[str, Any]]) -> ExecutionStatus:
    """One job phase from its workers' raw states, gang-style (see :class:`ExecutionStatus`).

    >>> w = lambda r, phase, msg="", end=None: {"rank": r, "node": "n", "phase": phase, "message": msg,
    ...                                          "exit_code": None, "ended_at": end, "tail": [f"rank {r}"]}
    >>> fold("j", 0, [w(0, "running"), w(1, "failed", "exited with code 3", 5.0)]).message
    'rank 1 on n failed: exited with code 3'
    >>> fold("j", 0, [w(0, "stopped", "exceeded walltime (1 s)"), w(1, "failed", "exited with code 1")]).phase
    <Phase.STOPPED: 'stopped'>
    >>> fold("j", 0, [w(0, "succeeded"), w(1, "running")]).phase
    <Phase.RUNNING: 'running'>
    """
    statuses = tuple(
        WorkerStatus(
            rank=int(w["rank"]),
            node=str(w["node"]),
            phase=Phase(w["phase"]),
            exit_code=w.get("exit_code"),
            message=str(w.get("message", "")),
        )
        for w in sorted(workers, key=lambda w: int(w["rank"]))
    )
    by_rank = {int(w["rank"]): w for w in workers}

    def pick(candidates: list[WorkerStatus]) -> WorkerStatus:
        # The earliest to end is the cause; the others usually failed because of it.
        return min(candidates, key=lambda s: (by_rank[s.rank].get("ended_at") or float("inf"), s.rank))

    def result(phase: Phase, message: str, decider: WorkerStatus | None) -> ExecutionStatus:
        tail = by_rank[decider.rank].get("tail", []) if decider is not None else []
        return ExecutionStatus(job_id, attempt, phase, statuses, message, tuple(tail))

    if not statuses:
        return ExecutionStatus(job_id, attempt, Phase.LOST, (), "no workers found")
    lost = [s for s in statuses if s.phase is Phase.LOST]
    if lost:
        s = pick(lost)
        return result(Phase.LOST, f"rank {s.rank} on {s.node} lost: {s.message}", s)
    walltime = [s for s in statuses if s.phase is Phase.STOPPED and s.message.startswith(WALLTIME_MESSAGE)]
    if walltime:
        s = pick(walltime)
        return result(Phase.STOPPED, s.message, s)
    failed = [s for s in statuses if s.phase is Phase.FAILED]
    if failed:
        s = pick(failed)
        return result(Phase.FAILED, f"rank {s.rank} on {s.node} failed: {s.message}", s)
    stopped = [s for s in statuses if s.phase is Phase.STOPPED]
    if stopped:
        s = pick(stopped)
        return result(Phase.STOPPED, s.message, s)
    if all(s.phase is Phase.SUCCEEDED for s in statuses):
        return result(Phase.SUCCEEDED, "all workers exited with code 0", statuses[0])
    if any(s.phase is Phase.STARTING for s in statuses):
        waiting = [s.rank for s in statuses if s.phase is Phase.STARTING]
        return result(Phase.STARTING, f"starting ranks {waiting}", None)
    return result(Phase.RUNNING, "", None)


def status_to_json(status: ExecutionStatus) -> str:
    return json.dumps(asdict(status))


def status_from_json(text: str | bytes) -> ExecutionStatus:
    data = json.loads(text)
    workers = tuple(
        WorkerStatus(w["rank"], w["node"], Phase(w["phase"]), w["exit_code"], w["message"]) for w in data["workers"]
    )
    return ExecutionStatus(
        data["job_id"], data["attempt"], Phase(data["phase"]), workers, data["message"], tuple(data["last_log_lines"])
    )


@ray.remote(num_cpus=0, max_retries=0)
def _read_log_on_node(path: str, offset: int, limit: int) -> tuple[str, int]:
    return read_log_file(path, offset, limit)


# --------------------------------------------------------------------------------------------- executor


@dataclass
class _Attempt:
    """What the executor knows of one attempt: its launch record and, while cached, actor handles."""

    job_id: str
    attempt: int
    nodes: tuple[str, ...]
    log_paths: tuple[str, ...]
    handles: dict[int, Any]
    launched_at: float = 0.0


class RayExecutor:
    """The :class:`~scheduler.executors.base.Executor` on a Ray cluster (see the module docstring).

    ``address`` is the GCS address (``host:port``) of a running cluster. The executor connects this process to
    it as a Ray driver in ``namespace``; if the process is already connected, it must be to that namespace.
    ``log_dir`` is where workers write their logs on their nodes.
    """

    def __init__(
        self,
        address: str,
        namespace: str = "zhisuan",
        *,
        log_dir: str = DEFAULT_LOG_DIR,
        catalog: Catalog | None = None,
        call_timeout_s: float = 2.0,
        stop_grace_s: float = 5.0,
        connect_timeout_s: float = 30.0,
        release_finished: bool = True,
        pending_node_grace_s: float = 30.0,
    ) -> None:
        self.address = address
        self.namespace = namespace
        self.log_dir = log_dir
        self.catalog = catalog or load_catalog()
        self.call_timeout_s = call_timeout_s
        self.stop_grace_s = stop_grace_s
        self.release_finished = release_finished
        self.pending_node_grace_s = pending_node_grace_s
        self._verified_pgs: dict[str, bool] = {}
        self._lock = threading.RLock()
        self._attempts: dict[tuple[str, int], _Attempt] = {}
        self._last: dict[tuple[str, int, int], dict[str, Any]] = {}
        self._actor_cls = ray.remote(ZhisuanWorker)
        self._owns_connection = False
        self._connect(connect_timeout_s)

    # ----------------------------------------------------------------------------------------- connection

    def _connect(self, timeout_s: float) -> None:
        if ray.is_initialized():
            current = ray.get_runtime_context().namespace
            if current != self.namespace:
                raise ExecutorError(f"this process is connected to Ray namespace {current!r}, not {self.namespace!r}")
            return
        retrying = Retrying(
            stop=stop_after_delay(timeout_s),
            wait=wait_exponential(multiplier=0.2, max=2.0),
            retry=retry_if_exception_type(ConnectionError),
            reraise=True,
        )
        # Read once, when the driver starts; restored after so that processes this one starts do not inherit it.
        previous = os.environ.get(_RECONNECT_ENV)
        os.environ.setdefault(_RECONNECT_ENV, str(10 * 365 * 24 * 3600))
        try:
            retrying(
                ray.init,
                address=self.address,
                namespace=self.namespace,
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
        except ConnectionError as err:
            raise ExecutorUnavailable(f"cannot reach the Ray cluster at {self.address}: {err}") from err
        finally:
            if previous is None:
                os.environ.pop(_RECONNECT_ENV, None)
        self._owns_connection = True

    def _reachable(self) -> None:
        """Fail fast with :class:`ExecutorUnavailable` when the GCS does not accept connections: a Ray call
        would otherwise block until it comes back."""
        host, _, port = self.address.rpartition(":")
        try:
            with socket.create_connection((host or "127.0.0.1", int(port)), timeout=self.call_timeout_s):
                pass
        except (OSError, ValueError) as err:
            raise ExecutorUnavailable(f"the Ray cluster at {self.address} is unreachable: {err}") from err

    def close(self) -> None:
        """Disconnect (when this executor connected the process). Detached jobs keep running."""
        with self._lock:
            self._attempts.clear()
            self._last.clear()
        if self._owns_connection and ray.is_initialized():
            ray.shutdown()
        self._owns_connection = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------------------------------------- KV

    def _kv_key(self, kind: str, job_id: str, attempt: int | None = None) -> str:
        tail = "" if attempt is None else f"{attempt}"
        return f"{self.namespace}/{kind}/{job_id}/{tail}"

    def _kv_put(self, key: str, value: str) -> None:
        from ray.experimental.internal_kv import _internal_kv_put

        _internal_kv_put(key, value, overwrite=True, namespace=KV_NAMESPACE)

    def _kv_get(self, key: str) -> bytes | None:
        from ray.experimental.internal_kv import _internal_kv_get

        value = _internal_kv_get(key, namespace=KV_NAMESPACE)
        return value if isinstance(value, bytes) else None

    def _kv_list(self, prefix: str) -> list[str]:
        from ray.experimental.internal_kv import _internal_kv_list

        return [k.decode() for k in _internal_kv_list(prefix, namespace=KV_NAMESPACE)]

    def _kv_del(self, key: str, by_prefix: bool = False) -> None:
        from ray.experimental.internal_kv import _internal_kv_del

        _internal_kv_del(key, del_by_prefix=by_prefix, namespace=KV_NAMESPACE)

    def _finals(self, job_id: str | None = None, stopped: bool = True) -> dict[tuple[str, int], ExecutionStatus]:
        """Final records: ``final/`` (ended, not yet acknowledged by a :meth:`stop`) and, with ``stopped``, the
        acknowledged ``done/`` ones. :meth:`poll` lists only the former, so it does not grow with history."""
        out: dict[tuple[str, int], ExecutionStatus] = {}
        job = f"{job_id}/" if job_id is not None else ""
        prefixes = [f"{self.namespace}/final/{job}"] + ([f"{self.namespace}/done/{job}"] if stopped else [])
        for prefix in prefixes:
            for key in self._kv_list(prefix):
                value = self._kv_get(key)
                if value is not None:
                    status = status_from_json(value)
                    out[(status.job_id, status.attempt)] = status
        return out

    def _has_final(self, job_id: str, attempt: int) -> bool:
        return any(self._kv_get(self._kv_key(kind, job_id, attempt)) is not None for kind in ("final", "done"))

    # -------------------------------------------------------------------------------------------- launch

    def launch(self, req: LaunchRequest) -> None:
        """Create the pinned placement group and the worker actors, and start them; returns without waiting.

        Idempotent: an attempt that exists (or existed: it has a final record) is not created again; a launch
        that crashed half-way is completed.
        """
        self._reachable()
        if self._has_final(req.job_id, req.attempt):
            return
        plans = plan_workers(req, self.catalog, self.log_dir, self.namespace, self.stop_grace_s)
        nodes = [w.node for w in req.placement.workers]
        record = {
            "nodes": nodes,
            "log_paths": [p.spec.log_path for p in plans],
            "model": req.placement.model,
            "kind": req.kind.value,
            "launched_at": time.time(),
        }
        self._kv_put(self._kv_key("launch", req.job_id, req.attempt), json.dumps(record))
        name = pg_name(req.job_id, req.attempt)
        pg = self._get_pg(name)
        if pg is None:
            try:
                pg = ray.util.placement_group(
                    [p.bundle for p in plans],
                    strategy="PACK",
                    name=name,
                    lifetime="detached",
                    bundle_label_selector=[p.selector for p in plans],
                )
            except Exception as err:  # a concurrent launch won the name
                pg = self._get_pg(name)
                if pg is None:
                    raise ExecutorError(f"cannot create placement group {name}: {err}") from err
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        handles: dict[int, Any] = {}
        for rank, plan in enumerate(plans):
            handle = self._actor_cls.options(
                name=actor_name(req.job_id, req.attempt, rank),
                namespace=self.namespace,
                lifetime="detached",
                get_if_exists=True,
                max_restarts=0,
                max_concurrency=16,
                scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=rank),
                **plan.actor_options(),
            ).remote(plan.spec)
            handles[rank] = handle
        for handle in handles.values():
            handle.start.remote()  # fire and forget: status() reports progress
        with self._lock:
            self._attempts[(req.job_id, req.attempt)] = _Attempt(
                req.job_id, req.attempt, tuple(nodes), tuple(p.spec.log_path for p in plans), handles, time.time()
            )

    # ---------------------------------------------------------------------------------------------- scan

    def _get_pg(self, name: str) -> PlacementGroup | None:
        try:
            pg: PlacementGroup = ray.util.get_placement_group(name)
            return pg
        except ValueError:
            return None

    def _scan(self) -> dict[tuple[str, int], dict[str, Any] | None]:
        """Every attempt alive in the namespace, with its placement-group table entry (None: actors only)."""
        self._reachable()
        found: dict[tuple[str, int], dict[str, Any] | None] = {}
        try:
            table = ray.util.placement_group_table()
            named = ray.util.list_named_actors()
        except Exception as err:
            raise ExecutorUnavailable(f"Ray cluster at {self.address} did not answer: {err}") from err
        for info in table.values():
            parsed = parse_pg_name(str(info.get("name", "")))
            if parsed is None or info.get("state") == "REMOVED":
                continue
            pg_id = str(info["placement_group_id"])
            ours = self._verified_pgs.get(pg_id)
            if ours is None:  # names are per namespace, the table is cluster-wide: check once per group
                pg = self._get_pg(str(info["name"]))
                ours = pg is not None and pg.id.hex() == pg_id
                if ours:
                    self._verified_pgs[pg_id] = True
            if not ours:
                continue
            found[parsed] = info
        for entry in named:
            name = entry if isinstance(entry, str) else str(entry.get("name", ""))
            parsed_actor = parse_actor_name(name)
            if parsed_actor is not None:
                found.setdefault(parsed_actor[:2], None)
        return found

    def discover(self) -> set[tuple[str, int]]:
        return set(self._scan())

    def _attempt(self, job_id: str, attempt: int) -> _Attempt:
        with self._lock:
            known = self._attempts.get((job_id, attempt))
        if known is not None:
            return known
        raw = self._kv_get(self._kv_key("launch", job_id, attempt))
        record: dict[str, Any] = json.loads(raw) if raw else {}
        nodes = tuple(record.get("nodes", ()))
        log_paths = tuple(record.get("log_paths", ()))
        found = _Attempt(job_id, attempt, nodes, log_paths, {}, float(record.get("launched_at", 0.0)))
        with self._lock:
            self._attempts[(job_id, attempt)] = found
        return found

    def _handle(self, att: _Attempt, rank: int) -> Any | None:
        handle = att.handles.get(rank)
        if handle is None:
            try:
                handle = ray.get_actor(actor_name(att.job_id, att.attempt, rank), namespace=self.namespace)
            except ValueError:
                return None
            att.handles[rank] = handle
        return handle

    # -------------------------------------------------------------------------------------------- status

    def status(self, job_id: str) -> ExecutionStatus | None:
        scan = self._scan()
        alive = {a: info for (j, a), info in scan.items() if j == job_id}
        finals = self._finals(job_id)
        newest_alive = max(alive, default=-1)
        newest_final = max((a for (_, a) in finals), default=-1)
        if newest_alive < 0 and newest_final < 0:
            return None
        if newest_final >= newest_alive:
            return finals[(job_id, newest_final)]
        return self._status_of(job_id, newest_alive, alive[newest_alive])

    def poll(self) -> list[ExecutionStatus]:
        """Every attempt alive on the cluster, plus the ended ones nobody has :meth:`stop` -ped since."""
        scan = self._scan()
        out = {key: self._status_of(key[0], key[1], info) for key, info in scan.items()}
        for key, final in self._finals(stopped=False).items():
            out.setdefault(key, final)
        return [out[k] for k in sorted(out)]

    def _status_of(self, job_id: str, attempt: int, pg_info: dict[str, Any] | None) -> ExecutionStatus:
        att = self._attempt(job_id, attempt)
        world = len(pg_info["bundles"]) if pg_info else len(att.nodes)
        if world == 0:
            world = 1 + max((r for (j, a, r) in self._last if (j, a) == (job_id, attempt)), default=0)
        state = pg_info.get("state") if pg_info else None
        if state == "PENDING":
            absent = self._dead_nodes(att)
            if absent and time.time() - att.launched_at > self.pending_node_grace_s:
                # Pinned to a node Ray does not have: the placement group would wait forever.
                message = f"node {', '.join(sorted(absent))} is not in the Ray cluster"
                workers = [self._raw(att, r, "lost", message) for r in range(world)]
                status = fold(job_id, attempt, workers)
                return self._finish(att, status, workers, absent)
            stats = pg_info.get("stats", {}) if pg_info else {}
            message = f"waiting for devices on {', '.join(dict.fromkeys(att.nodes)) or 'the cluster'}"
            if stats.get("scheduling_state"):
                message += f" ({stats['scheduling_state'].lower()})"
            workers = [self._raw(att, r, "starting", message) for r in range(world)]
            return fold(job_id, attempt, workers)
        dead_nodes = self._dead_nodes(att) if state == "RESCHEDULING" else set()
        workers = self._query_workers(att, world, dead_nodes)
        status = fold(job_id, attempt, workers)
        if status.terminal:
            status = self._finish(att, status, workers, dead_nodes)
        return status

    def _raw(self, att: _Attempt, rank: int, phase: str, message: str) -> dict[str, Any]:
        node = att.nodes[rank] if rank < len(att.nodes) else "?"
        return {"rank": rank, "node": node, "phase": phase, "message": message, "exit_code": None, "tail": []}

    def _query_workers(self, att: _Attempt, world: int, dead_nodes: set[str]) -> list[dict[str, Any]]:
        refs: dict[int, Any] = {}
        results: dict[int, dict[str, Any]] = {}
        for rank in range(world):
            node = att.nodes[rank] if rank < len(att.nodes) else "?"
            if node in dead_nodes:
                results[rank] = self._lost(att, rank, f"node {node} died")
                continue
            handle = self._handle(att, rank)
            if handle is None:
                results[rank] = self._lost(att, rank, self._death_cause(att, rank) or "worker actor is gone")
                continue
            refs[rank] = handle.status.remote()
        if refs:
            ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=self.call_timeout_s)
            ready_set = set(ready)
            for rank, ref in refs.items():
                if ref not in ready_set:
                    results[rank] = self._unresponsive(att, rank)
                    continue
                try:
                    results[rank] = ray.get(ref)
                except ray.exceptions.ActorDiedError as err:
                    results[rank] = self._lost(att, rank, _first_line(err))
                except ray.exceptions.RayActorError as err:  # unavailable for now (network, restart)
                    results[rank] = self._unresponsive(att, rank, _first_line(err))
        with self._lock:
            for rank, raw in results.items():
                self._last[(att.job_id, att.attempt, rank)] = raw
        return [results[r] for r in range(world)]

    def _lost(self, att: _Attempt, rank: int, message: str) -> dict[str, Any]:
        raw = self._raw(att, rank, "lost", message)
        raw["tail"] = self._tail(att, rank)
        return raw

    def _unresponsive(self, att: _Attempt, rank: int, why: str = "") -> dict[str, Any]:
        last = self._last.get((att.job_id, att.attempt, rank))
        if last is not None and last["phase"] in ("starting", "running"):
            return last
        return self._raw(att, rank, "starting", why or "worker not answering yet")

    def _tail(self, att: _Attempt, rank: int) -> list[str]:
        if rank < len(att.log_paths) and Path(att.log_paths[rank]).exists():
            return tail_lines(att.log_paths[rank], TAIL_LINES)
        return []

    def _dead_nodes(self, att: _Attempt) -> set[str]:
        alive_labels = {
            str(n.get("Labels", {}).get(NODE_LABEL))
            for n in ray.nodes()  # type: ignore[no-untyped-call]
            if n.get("Alive") and n.get("Labels")
        }
        return {node for node in att.nodes if ray_label_value(node) not in alive_labels}

    def _death_cause(self, att: _Attempt, rank: int) -> str | None:
        """Why a worker actor died, from the GCS actor table (private Ray API: best effort)."""
        name = actor_name(att.job_id, att.attempt, rank)
        try:
            from ray._private.state import actors

            for info in actors().values():
                if info.get("Name") == name and info.get("State") == "DEAD":
                    cause = info.get("DeathCause")
                    text = str(getattr(getattr(cause, "actor_died_error_context", None), "error_message", ""))
                    return text.splitlines()[0] if text else "worker actor died"
        except Exception:
            pass
        return None

    def _finish(
        self, att: _Attempt, status: ExecutionStatus, workers: list[dict[str, Any]], dead_nodes: set[str]
    ) -> ExecutionStatus:
        """Gang semantics and cleanup once an attempt is terminal: stop the rest, record, release."""
        alive = [w for w in workers if w["phase"] in ("starting", "running")]
        if alive:
            reason = f"gang stopped: {status.message}"
            refs = []
            for w in alive:
                handle = self._handle(att, int(w["rank"]))
                if handle is not None:
                    refs.append(handle.terminate.remote(reason))
            if refs:
                ray.wait(refs, num_returns=len(refs), timeout=self.stop_grace_s + 2)
            # The job keeps the phase and cause it ended with; only the workers' own states are refreshed.
            after = fold(att.job_id, att.attempt, self._query_workers(att, len(workers), dead_nodes))
            status = replace(status, workers=after.workers)
        if self.release_finished:
            self._kv_put(self._kv_key("final", att.job_id, att.attempt), status_to_json(status))
            self._teardown(att)
        return status

    def _teardown(self, att: _Attempt) -> None:
        world = max(len(att.nodes), len(att.handles))
        for rank in range(world):
            handle = self._handle(att, rank)
            if handle is not None:
                try:
                    ray.kill(handle, no_restart=True)
                except Exception as err:
                    log.debug("kill %s rank %d: %s", att.job_id, rank, err)
        pg = self._get_pg(pg_name(att.job_id, att.attempt))
        if pg is not None:
            ray.util.remove_placement_group(pg)
        with self._lock:
            att.handles.clear()
            for key in [k for k in self._last if k[:2] == (att.job_id, att.attempt)]:
                del self._last[key]

    # ---------------------------------------------------------------------------------------------- stop

    def stop(self, job_id: str, reason: str) -> None:
        """Stop every live attempt of a job: SIGTERM, grace period, SIGKILL; then remove actors and the PG.

        Also acknowledges attempts that had already ended: :meth:`poll` stops listing them."""
        for (job, attempt), info in self._scan().items():
            if job != job_id:
                continue
            att = self._attempt(job, attempt)
            world = len(info["bundles"]) if info else max(len(att.nodes), 1)
            if not info or info.get("state") != "PENDING":
                refs = [h.terminate.remote(reason) for r in range(world) if (h := self._handle(att, r)) is not None]
                if refs:
                    ray.wait(refs, num_returns=len(refs), timeout=self.stop_grace_s + 2)
                workers = self._query_workers(att, world, self._dead_nodes(att))
            else:
                workers = [self._raw(att, r, "stopped", reason) for r in range(world)]
            status = fold(job, attempt, workers)
            if not status.terminal or status.phase is Phase.LOST:
                status = ExecutionStatus(job, attempt, Phase.STOPPED, status.workers, reason, status.last_log_lines)
            self._kv_put(self._kv_key("done", job, attempt), status_to_json(status))
            self._teardown(att)
        # Ended attempts the caller now knows about: out of poll()'s list, still readable by status().
        for (job, attempt), final in self._finals(job_id, stopped=False).items():
            self._kv_put(self._kv_key("done", job, attempt), status_to_json(final))
            self._kv_del(self._kv_key("final", job, attempt))

    def forget(self, job_id: str) -> None:
        """Drop every record of a job (after the service stored its final state); its logs stay on the nodes."""
        self._kv_del(f"{self.namespace}/final/{job_id}/", by_prefix=True)
        self._kv_del(f"{self.namespace}/done/{job_id}/", by_prefix=True)
        self._kv_del(f"{self.namespace}/launch/{job_id}/", by_prefix=True)
        with self._lock:
            for key in [k for k in self._attempts if k[0] == job_id]:
                del self._attempts[key]

    # ---------------------------------------------------------------------------------------------- logs

    def read_logs(self, job_id: str, rank: int, offset: int = 0, limit: int = 65536) -> LogChunk:
        """A worker's log from byte ``offset``: from its actor, else the file (shared disk), else its node."""
        attempts = {a for (j, a) in self._scan() if j == job_id} | {a for (_, a) in self._finals(job_id)}
        if not attempts:
            raise ExecutorError(f"no attempt of job {job_id!r} is known to this cluster")
        attempt = max(attempts)
        att = self._attempt(job_id, attempt)
        handle = self._handle(att, rank)
        if handle is not None:
            try:
                text, next_offset = ray.get(handle.read_log.remote(offset, limit), timeout=self.call_timeout_s * 5)
                return LogChunk(job_id, attempt, rank, offset, text, next_offset)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                pass
        if rank >= len(att.log_paths):
            raise ExecutorError(f"job {job_id!r} attempt {attempt} has no rank {rank}")
        path = att.log_paths[rank]
        if Path(path).exists():
            text, next_offset = read_log_file(path, offset, limit)
            return LogChunk(job_id, attempt, rank, offset, text, next_offset)
        node = att.nodes[rank]
        from ray.util.scheduling_strategies import In, NodeLabelSchedulingStrategy

        strategy = NodeLabelSchedulingStrategy({NODE_LABEL: In(ray_label_value(node))})  # type: ignore[no-untyped-call]
        try:
            ref = _read_log_on_node.options(scheduling_strategy=strategy).remote(path, offset, limit)
            text, next_offset = ray.get(ref, timeout=self.call_timeout_s * 5)
        except Exception as err:
            raise ExecutorError(f"the log of rank {rank} is on node {node}, which did not answer: {err}") from err
        return LogChunk(job_id, attempt, rank, offset, text, next_offset)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    for line in text.splitlines():
        if "died" in line or "node" in line.lower():
            return line.strip()
    return text.splitlines()[0] if text else type(err).__name__


def wait_for(
    executor: RayExecutor,
    job_id: str,
    phases: Iterable[Phase],
    timeout_s: float = 60.0,
    interval_s: float = 0.1,
) -> ExecutionStatus:
    """Poll ``status(job_id)`` until its phase is one of ``phases``; raises ``TimeoutError`` with the last one."""
    wanted = set(phases)
    deadline = time.monotonic() + timeout_s
    last: ExecutionStatus | None = None
    while time.monotonic() < deadline:
        last = executor.status(job_id)
        if last is not None and last.phase in wanted:
            return last
        time.sleep(interval_s)
    raise TimeoutError(f"job {job_id} did not reach {sorted(wanted)} in {timeout_s} s; last status: {last}")
