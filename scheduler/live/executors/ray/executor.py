"""Run the core's placements on a Ray cluster: a pinned placement group per attempt, ranks spawned by node supervisors.

For attempt ``a`` of job ``j`` the executor, in its Ray namespace (default ``zhisuan``):

- creates a detached placement group ``zhisuan-j-a`` with one bundle per rank. Bundle ``r`` holds the vendor
  resource of the node's model (``GPU``, ``NPU``, ``MLU``... as the node agent declares it, see
  :func:`scheduler.ray_node.ray_resource_name`) × devices (a fraction of one device for an inference replica), plus
  the worker's CPU and memory, and is pinned to the node the core chose with
  ``bundle_label_selector=[{"zhisuan.io/node": <node id>}, ...]`` (Ray node labels, set by ``ray start
  --labels`` from :func:`scheduler.ray_node.ray_node_spec`). The group *is* the reservation in Ray's accounting;
- hands each node's ranks to that node's supervisor: a long-lived,
  detached, resource-less actor ``zhisuan.node.v1.<node>`` (:class:`~scheduler.live.executors.ray.node.NodeSupervisor`)
  pinned to the node by its label, started when the executor connects (and again whenever one is found dead),
  which spawns each rank's entrypoint as soon as the rank's bundle is reserved on that node, with the vendor's
  visibility variable set to the devices the core chose. A launch is one key-value write, one placement group
  and one call per node, all without waiting on each other; no Python worker process starts per rank.

Nothing lives only in the executor object: launch and final records go to Ray's GCS key-value store, the
placement groups and supervisors are detached and named, so a new executor (after a service restart) finds every
job::

    >>> ex = RayExecutor("127.0.0.1:6379")                       # doctest: +SKIP
    >>> ex.launch(LaunchRequest("j1", 0, placement, "python train.py"))   # doctest: +SKIP
    >>> ex.status("j1").phase                                    # doctest: +SKIP
    <Phase.RUNNING: 'running'>
    >>> ex.read_logs("j1", rank=0).text                          # doctest: +SKIP
    'step 1 loss 0.93\\n'
    >>> ex.stop("j1", "cancelled by alice")                      # doctest: +SKIP

Once the executor observes an attempt in a terminal phase (gang rules in :func:`fold`: the other ranks are
stopped) it records the final status and releases the placement group and the ranks (``release_finished``), so
devices free up even if the service never calls :meth:`RayExecutor.stop`. :meth:`RayExecutor.poll` keeps listing
an ended attempt until a ``stop()`` acknowledges it; :meth:`RayExecutor.status` answers from the record until
:meth:`RayExecutor.forget`. Logs stay on the nodes (``log_dir``) after the workers are gone.

Crash safety: a rank's process dies with the supervisor that spawned it (``PR_SET_PDEATHSIG``), and a new
supervisor on that node has a new actor id, which differs from the one in the attempt's launch record, so the
rank is reported ``lost``; a node's death takes its supervisor with it, likewise. A supervisor stops the ranks of
an attempt whose placement group was removed, so the reservation and the processes cannot drift apart.
:meth:`RayExecutor.poll` asks each supervisor once for all the attempts on its node, not each rank.

When the GCS does not accept connections every call raises :class:`ExecutorUnavailable` at once, and the driver
is configured never to end the process (Ray's default ends a driver whose GCS is gone for 60 s).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from scheduler.catalog import Catalog, load_catalog
from scheduler.live.executors.base import (
    ExecutionStatus,
    ExecutorError,
    ExecutorUnavailable,
    LaunchRequest,
    LogChunk,
    Phase,
)
from scheduler.live.executors.ray.bundles import WorkerPlan, pg_name, plan_workers
from scheduler.live.executors.ray.gang import fold, status_to_json
from scheduler.live.executors.ray.node import (
    TAIL_LINES,
    NodeSupervisor,
    WorkerSpec,
    read_log_file,
    supervisor_name,
    tail_lines,
)
from scheduler.live.executors.ray.records import Attempt, Index, Records
from scheduler.ray_node import NODE_LABEL, ray_label_value

log = logging.getLogger("zhisuan.executor.ray")

DEFAULT_LOG_DIR = "/tmp/zhisuan/logs"
#: The longest a launch waits for devices that this executor has just released to be free in Ray's view.
RELEASE_WAIT_S = 1.0
#: When a launch follows a release on its nodes, nudge Ray's GCS this long after (while the group is pending).
NUDGE_AFTER_S = (0.12, 0.3, 0.7)
#: Threads of a supervisor actor: concurrent calls it serves (status polls, stops, logs, launches).
SUPERVISOR_CONCURRENCY = 32
#: A Ray driver whose GCS stays unreachable this long ends its own process (Ray's default: 60 s). The scheduler
#: service must outlive its Ray cluster, so the executor's driver waits (years) and reports ExecutorUnavailable.
_RECONNECT_ENV = "RAY_gcs_rpc_server_reconnect_timeout_s"


@ray.remote(num_cpus=0, max_retries=0)
def _read_log_on_node(path: str, offset: int, limit: int) -> tuple[str, int]:
    return read_log_file(path, offset, limit)


# --------------------------------------------------------------------------------------------- executor


@dataclass
class _Supervisor:
    """This driver's handle on a node supervisor. ``up``: it answered; ``known``: it existed before we looked
    (so a first call may wait for it); neither: just created, not answering yet (calls would queue)."""

    name: str
    label: str
    handle: Any
    actor_id: str
    info_ref: Any
    up: bool = False
    known: bool = False
    info: dict[str, Any] = field(default_factory=dict)


class RayExecutor:
    """The :class:`~scheduler.live.executors.base.Executor` on a Ray cluster (see the module docstring).

    ``address`` is the GCS address (``host:port``) of a running cluster. The executor connects this process to
    it as a Ray driver in ``namespace``; if the process is already connected, it must be to that namespace.
    ``log_dir`` is where workers write their logs on their nodes.
    ``prestart_supervisors`` starts a supervisor on every labelled node at once (else on first use).
    ``spawn_grace_s``: how long a rank may stay unknown to its (unchanged) supervisor after the launch before it
    counts as lost (the launch call never reached it: the launching driver died in between).
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
        prestart_supervisors: bool = True,
        spawn_grace_s: float = 30.0,
    ) -> None:
        self.address = address
        self.namespace = namespace
        self.log_dir = log_dir
        self.catalog = catalog or load_catalog()
        self.call_timeout_s = call_timeout_s
        self.stop_grace_s = stop_grace_s
        self.release_finished = release_finished
        self.pending_node_grace_s = pending_node_grace_s
        self.spawn_grace_s = spawn_grace_s
        self.records = Records(namespace, address, call_timeout_s)
        self._lock = threading.RLock()
        self._attempts: dict[tuple[str, int], Attempt] = {}
        self._last: dict[tuple[str, int, int], dict[str, Any]] = {}
        self._sups: dict[str, _Supervisor] = {}
        #: placement group id -> (node labels, wait-until) of groups removed by this executor, until Ray has
        #: given their resources back (see _await_release)
        self._releasing: dict[str, tuple[set[str], float]] = {}
        self._timers: set[threading.Timer] = set()
        self._closed = False
        self._sup_cls: Any = ray.remote(NodeSupervisor)
        self._owns_connection = False
        self._connect(connect_timeout_s)
        if prestart_supervisors:
            self.start_supervisors()

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
        if self._closed:  # Ray's API would start a local cluster when the driver is disconnected
            raise ExecutorError("this executor is closed")
        host, _, port = self.address.rpartition(":")
        try:
            with socket.create_connection((host or "127.0.0.1", int(port)), timeout=self.call_timeout_s):
                pass
        except (OSError, ValueError) as err:
            raise ExecutorUnavailable(f"the Ray cluster at {self.address} is unreachable: {err}") from err

    def close(self) -> None:
        """Disconnect (when this executor connected the process). Detached jobs and supervisors keep running."""
        with self._lock:
            self._closed = True
            for timer in self._timers:
                timer.cancel()
            self._timers.clear()
            self._attempts.clear()
            self._last.clear()
            self._sups.clear()
        if self._owns_connection and ray.is_initialized():
            ray.shutdown()
        self._owns_connection = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ supervisors

    def start_supervisors(self, wait_s: float = 0.0) -> dict[str, bool]:
        """Make sure every alive labelled node has a supervisor; with ``wait_s``, wait until they answer.
        Returns node label -> answering."""
        self._reachable()
        labels = sorted(self._alive_labels())
        sups = [s for s in (self._supervisor(label) for label in labels) if s is not None]
        if wait_s > 0:
            self._await_supervisors(sups, wait_s)
        return {s.label: self._is_up(s) for s in sups}

    def _alive_labels(self) -> set[str]:
        return {
            str(n["Labels"][NODE_LABEL])
            for n in ray.nodes()  # type: ignore[no-untyped-call]
            if n.get("Alive") and NODE_LABEL in (n.get("Labels") or {})
        }

    def _supervisor(self, label: str, name: str | None = None, create: bool = True) -> _Supervisor | None:
        """The supervisor of node ``label`` (cached); a dead or missing one is created again when ``create``."""
        name = name or supervisor_name(label)
        with self._lock:
            sup = self._sups.get(name)
        if sup is not None:
            return sup
        known = True
        handle: Any
        try:
            handle = ray.get_actor(name, namespace=self.namespace)
        except ValueError:
            if not create:
                return None
            known = False
            handle = self._sup_cls.options(
                name=name,
                namespace=self.namespace,
                lifetime="detached",
                get_if_exists=True,  # another driver may create it at the same time
                max_restarts=0,  # a new incarnation must have a new actor id (see _not_held)
                max_concurrency=SUPERVISOR_CONCURRENCY,
                num_cpus=0,
                label_selector={NODE_LABEL: label},
            ).remote(label)
        sup = _Supervisor(name, label, handle, handle._actor_id.hex(), handle.info.remote(), known=known)
        with self._lock:
            return self._sups.setdefault(name, sup)

    def _drop_supervisor(self, sup: _Supervisor) -> None:
        with self._lock:
            if self._sups.get(sup.name) is sup:
                del self._sups[sup.name]

    def _is_up(self, sup: _Supervisor) -> bool:
        if not sup.up:
            ready, _ = ray.wait([sup.info_ref], timeout=0)
            if ready:
                try:
                    sup.info = ray.get(ready[0])
                    sup.up = True
                except ray.exceptions.RayActorError:
                    self._drop_supervisor(sup)
        return sup.up

    def _await_supervisors(self, sups: Sequence[_Supervisor], wait_s: float) -> None:
        refs = [s.info_ref for s in sups if not s.up]
        if refs:
            ray.wait(refs, num_returns=len(refs), timeout=wait_s)
        for sup in sups:
            self._is_up(sup)

    # ---------------------------------------------------------------------------------------------- KV

    # -------------------------------------------------------------------------------------------- launch

    def launch(self, req: LaunchRequest) -> None:
        """Create the pinned placement group and hand the ranks to their nodes; returns without waiting for them
        to start (at most ``call_timeout_s`` for the supervisors to accept).

        Idempotent: an attempt that exists (or existed: it has a final record) is not created again; a launch
        that crashed half-way is completed.
        """
        self._reachable()
        keys = [self.records.key(kind, req.job_id, req.attempt) for kind in ("final", "done", "launch")]
        found = self.records.multi_get(keys)
        if keys[0] in found or keys[1] in found:
            return
        relaunch = keys[2] in found
        plans = plan_workers(req, self.catalog, self.log_dir, self.namespace, self.stop_grace_s)
        nodes = tuple(w.node for w in req.placement.workers)
        att = Attempt(req.job_id, req.attempt, nodes, tuple(p.spec.log_path for p in plans))
        att.launched_at = time.time()
        sups: dict[str, _Supervisor] = {}
        for plan in plans:
            label = plan.spec.node_label
            if label not in sups:
                sup = self._supervisor(label)
                assert sup is not None
                sups[label] = sup
                att.supervisors[label] = (sup.name, sup.actor_id)
        self.records.put(keys[2], json.dumps(att.record()))
        name = pg_name(req.job_id, req.attempt)
        pg = self._get_pg(name) if relaunch else None
        nudge = False
        if pg is None:
            nudge = self._await_release(plans)
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
        att.pg = pg
        if nudge:
            self._nudge(pg)
        with self._lock:
            self._attempts[att.key] = att
        self._spawn(att, plans, pg, sups)

    def _spawn(self, att: Attempt, plans: list[WorkerPlan], pg: PlacementGroup, sups: dict[str, _Supervisor]) -> None:
        """One call per node supervisor, all at once; waits (``call_timeout_s``) only to learn about dead ones."""
        by_label: dict[str, list[WorkerSpec]] = {}
        for plan in plans:
            by_label.setdefault(plan.spec.node_label, []).append(plan.spec)
        rank0 = plans[0].spec.node_label
        rank0_name = sups[rank0].name

        def send(label: str) -> Any:
            return sups[label].handle.spawn.remote(by_label[label], pg, None if label == rank0 else rank0_name)

        refs = {label: send(label) for label in by_label}
        for _retry in range(2):
            died: list[str] = []
            waiting: dict[str, Any] = {}
            for label, ref in refs.items():
                if self._is_up(sups[label]):
                    waiting[label] = ref
                elif self._sups.get(sups[label].name) is not sups[label]:
                    died.append(label)
                else:  # still starting (or pinned to a node Ray does not have yet): it gets the call when up
                    att.pending[label] = ref
            if waiting:
                ready, _ = ray.wait(list(waiting.values()), num_returns=len(waiting), timeout=self.call_timeout_s)
                for label, ref in waiting.items():
                    if ref not in ready:
                        att.pending[label] = ref
                        continue
                    try:
                        ray.get(ref)
                    except ray.exceptions.RayActorError:
                        died.append(label)
            if not died:
                break
            # The supervisor died since we last used it: start a new one and hand it the ranks.
            for label in died:
                self._drop_supervisor(sups[label])
                sup = self._supervisor(label)
                assert sup is not None
                sups[label] = sup
                att.supervisors[label] = (sup.name, sup.actor_id)
            self.records.put(self.records.key("launch", att.job_id, att.attempt), json.dumps(att.record()))
            rank0_name = sups[rank0].name
            refs = {label: send(label) for label in died}

    def _await_release(self, plans: Sequence[WorkerPlan]) -> bool:
        """Wait (at most :data:`RELEASE_WAIT_S` after their removal) until the placement groups this executor
        removed on the nodes of ``plans`` have given their resources back in the GCS's view, unless the new
        bundles fit beside them; True when there were such groups.

        A group created before a raylet has returned the resources fails its first scheduling attempt, and the
        GCS retries only on its next 1-second tick or when another group is created. The wait is a raylet
        resource report (~0.1 s); :meth:`_nudge` covers what it misses (a group too short-lived to have shown
        up in the GCS's view at all)."""
        labels = {p.spec.node_label for p in plans}
        now = time.monotonic()
        with self._lock:
            for pg_id in [p for p, (_, until) in self._releasing.items() if until < now]:
                del self._releasing[pg_id]
            waiting = {p: until for p, (on, until) in self._releasing.items() if on & labels}
        overlapped = bool(waiting)
        first = True
        while waiting:
            try:
                per_node = ray._private.state.total_resources_per_node()  # type: ignore[no-untyped-call]
                if first and self._fits_now(plans):
                    return overlapped
            except Exception:
                return overlapped
            first = False
            held = " ".join(r for res in per_node.values() for r in res)
            waiting = {p: until for p, until in waiting.items() if p in held and until > time.monotonic()}
            with self._lock:
                for pg_id in [p for p in self._releasing if p not in waiting and self._releasing[p][0] & labels]:
                    del self._releasing[pg_id]
            if waiting:
                time.sleep(0.01)
        return overlapped

    def _nudge(self, pg: PlacementGroup, delays: Sequence[float] = NUDGE_AFTER_S) -> None:
        """While ``pg`` is still pending after each of ``delays`` (seconds, in the background), create and remove
        a tiny group on the head node: registering a group makes Ray's GCS retry the pending ones at once,
        instead of on its next 1-second tick."""

        def nudge(step: int) -> None:
            with self._lock:
                self._timers.discard(timer)
                if self._closed or not ray.is_initialized():  # a Ray call now would start a local cluster
                    return
            # The unwrapped functions: Ray's public ones would start a local cluster if the driver disconnected.
            pgs: Any = importlib.import_module("ray.util.placement_group")
            try:
                if pgs.placement_group_table.__wrapped__(pg).get("state") != "PENDING":
                    return
                probe = pgs.placement_group.__wrapped__([{"node:__internal_head__": 0.001}])
                pgs.remove_placement_group.__wrapped__(probe)
            except Exception:  # disconnected, or the GCS is away: the tick will do
                return
            if step + 1 < len(delays):
                schedule(delays[step + 1] - delays[step], step + 1)

        timer: threading.Timer | None = None

        def schedule(delay_s: float, step: int) -> None:
            nonlocal timer
            timer = threading.Timer(delay_s, nudge, args=(step,))
            timer.daemon = True
            with self._lock:
                if self._closed:
                    return
                self._timers.add(timer)
            timer.start()

        if delays:
            schedule(delays[0], 0)

    def _fits_now(self, plans: Sequence[WorkerPlan]) -> bool:
        """Whether the bundles of ``plans`` fit in what Ray shows free on their nodes now."""
        need: dict[str, dict[str, float]] = {}
        for plan in plans:
            per = need.setdefault(plan.spec.node_label, {})
            for resource, amount in plan.bundle.items():
                per[resource] = per.get(resource, 0.0) + amount
        by_label = {
            str(n["Labels"][NODE_LABEL]): str(n["NodeID"])
            for n in ray.nodes()  # type: ignore[no-untyped-call]
            if n.get("Alive") and NODE_LABEL in (n.get("Labels") or {})
        }
        free = ray._private.state.available_resources_per_node()  # type: ignore[no-untyped-call]
        for label, wanted in need.items():
            have = free.get(by_label.get(label, ""), {})
            if any(have.get(resource, 0.0) + 1e-9 < amount for resource, amount in wanted.items()):
                return False
        return True

    # ---------------------------------------------------------------------------------------------- scan

    def _get_pg(self, name: str) -> PlacementGroup | None:
        try:
            pg: PlacementGroup = ray.util.get_placement_group(name)
            return pg
        except ValueError:
            return None

    def _index(self, job_id: str | None = None) -> Index:
        self._reachable()
        return self.records.index(job_id)

    def alive_nodes(self, node_ids: Iterable[str]) -> set[str] | None:
        """Those of ``node_ids`` whose raylet is alive (the service's ``NodeLiveness``): a node whose agent still
        heartbeats but whose raylet crashed must take no new work."""
        self._reachable()
        try:
            nodes = ray.nodes()  # type: ignore[no-untyped-call]
        except Exception as err:
            raise ExecutorUnavailable(f"Ray cluster at {self.address} did not answer: {err}") from err
        alive = {
            str(node.get("Labels", {}).get(NODE_LABEL))
            for node in nodes
            if node.get("Alive") and NODE_LABEL in node.get("Labels", {})
        }
        return {node_id for node_id in node_ids if ray_label_value(node_id) in alive}

    def discover(self) -> set[tuple[str, int]]:
        """Attempts launched and not ended: each holds (or waits for) its placement group."""
        return self._index().live

    def _attempts_of(self, keys: Iterable[tuple[str, int]]) -> dict[tuple[str, int], Attempt]:
        """Attempts from the cache, the rest from their launch records (one GCS call for all)."""
        out: dict[tuple[str, int], Attempt] = {}
        missing: list[tuple[str, int]] = []
        with self._lock:
            for key in keys:
                known = self._attempts.get(key)
                if known is not None:
                    out[key] = known
                else:
                    missing.append(key)
        if missing:
            records = self.records.multi_get([self.records.key("launch", j, a) for j, a in missing])
            for job_id, attempt in missing:
                raw = records.get(self.records.key("launch", job_id, attempt))
                found = Attempt.from_record(job_id, attempt, json.loads(raw) if raw else {})
                with self._lock:
                    out[(job_id, attempt)] = self._attempts.setdefault((job_id, attempt), found)
        return out

    def _attempt(self, job_id: str, attempt: int) -> Attempt:
        return self._attempts_of([(job_id, attempt)])[(job_id, attempt)]

    # -------------------------------------------------------------------------------------------- status

    def status(self, job_id: str) -> ExecutionStatus | None:
        index = self._index(job_id)
        live = {a for _, a in index.live}
        ended = {a for _, a in index.final | index.done}
        while live or ended:
            newest_live, newest_ended = max(live, default=-1), max(ended, default=-1)
            if newest_ended >= newest_live:
                return self.records.ended([(job_id, newest_ended)]).get((job_id, newest_ended))
            found = self._statuses([(job_id, newest_live)]).get((job_id, newest_live))
            if found is not None:
                return found
            live.discard(newest_live)  # launched half-way, nothing on the cluster: an older one answers
        return None

    def poll(self) -> list[ExecutionStatus]:
        """Every attempt launched and not ended, plus the ended ones nobody has :meth:`stop` -ped since. Costs
        one key-value listing, one read of new records and one call per supervisor involved (none per rank)."""
        index = self._index()
        out = self._statuses(sorted(index.live))
        for key, final in self.records.ended(index.final - set(out) - index.done).items():
            out.setdefault(key, final)
        return [out[k] for k in sorted(out)]

    def _statuses(self, keys: Sequence[tuple[str, int]]) -> dict[tuple[str, int], ExecutionStatus]:
        """The status of each live attempt, querying every supervisor involved at once."""
        atts = self._attempts_of(keys)
        out: dict[tuple[str, int], ExecutionStatus] = {}
        queried = [(att, len(att.nodes)) for att in (atts[key] for key in keys) if att.nodes]
        raws = self._query(queried)
        for att, world in queried:
            workers = [raws[(att.job_id, att.attempt, r)] for r in range(world)]
            status = fold(att.job_id, att.attempt, workers)
            if status.terminal:
                status = self._finish(att, status, workers)
            out[att.key] = status
        return out

    def _raw(self, att: Attempt, rank: int, phase: str, message: str) -> dict[str, Any]:
        return {"rank": rank, "node": att.node(rank), "phase": phase, "message": message, "exit_code": None, "tail": []}

    def _query(self, attempts: Sequence[tuple[Attempt, int]]) -> dict[tuple[str, int, int], dict[str, Any]]:
        """Raw worker states of every rank of ``attempts``: one call per supervisor, all waited for together
        (``call_timeout_s``)."""
        results: dict[tuple[str, int, int], dict[str, Any]] = {}
        calls: dict[Any, tuple[_Supervisor, list[tuple[Attempt, list[int]]]]] = {}
        by_sup: dict[str, tuple[_Supervisor, list[tuple[Attempt, list[int]]]]] = {}
        alive: dict[str, set[str]] = {}
        for att, world in attempts:
            if att.pending:
                done, _ = ray.wait(list(att.pending.values()), num_returns=len(att.pending), timeout=0)
                for label in [label for label, ref in att.pending.items() if ref in done]:
                    del att.pending[label]  # answered (or failed): the supervisor's own report tells the rest
            ranks_by_label: dict[str, list[int]] = {}
            for rank in range(world):
                ranks_by_label.setdefault(ray_label_value(att.node(rank)), []).append(rank)
            for label, ranks in ranks_by_label.items():
                name, _actor_id = att.supervisors.get(label, (supervisor_name(label), ""))
                sup = self._supervisor(label, name, create=False)
                if sup is None or not (sup.up or sup.known or self._is_up(sup)):
                    for rank in ranks:
                        results[(att.job_id, att.attempt, rank)] = self._unanswered(att, rank, label, sup, alive)
                    continue
                by_sup.setdefault(sup.name, (sup, []))[1].append((att, ranks))
        for sup, items in by_sup.values():
            calls[sup.handle.statuses.remote([att.key for att, _ in items])] = (sup, items)
        if calls:
            ready, _ = ray.wait(list(calls), num_returns=len(calls), timeout=self.call_timeout_s)
            ready_set = set(ready)
            for ref, (sup, items) in calls.items():
                results.update(self._supervisor_reply(sup, items, ref, ref in ready_set))
        with self._lock:
            for key, raw in results.items():
                if raw["phase"] in ("starting", "running"):
                    self._last[key] = raw
        return results

    def _supervisor_reply(
        self, sup: _Supervisor, items: list[tuple[Attempt, list[int]]], ref: Any, ready: bool
    ) -> dict[tuple[str, int, int], dict[str, Any]]:
        out: dict[tuple[str, int, int], dict[str, Any]] = {}
        if not ready:
            if sup.known and not sup.up:
                sup.known = False  # found by name but not answering: do not wait for it again
            for att, ranks in items:
                for rank in ranks:
                    out[(att.job_id, att.attempt, rank)] = self._unresponsive(att, rank)
            return out
        try:
            reply: dict[str, Any] = ray.get(ref)
        except ray.exceptions.RayActorError as err:
            self._drop_supervisor(sup)
            died = isinstance(err, ray.exceptions.ActorDiedError)
            why = f"node supervisor {sup.name} died: {_first_line(err)}"
            for att, ranks in items:
                for rank in ranks:
                    key = (att.job_id, att.attempt, rank)
                    out[key] = self._lost(att, rank, why) if died else self._unresponsive(att, rank, why)
            if died:
                self._supervisor(sup.label)  # a new one for new launches (its ranks are not coming back)
            return out
        sup.up = True
        held = {(str(r["job_id"]), int(r["attempt"]), int(r["rank"])): r for r in reply["ranks"]}
        for att, ranks in items:
            for rank in ranks:
                key = (att.job_id, att.attempt, rank)
                out[key] = held.get(key) or self._not_held(att, rank, sup.label, str(reply["actor_id"]))
        return out

    def _not_held(self, att: Attempt, rank: int, label: str, actor_id: str) -> dict[str, Any]:
        """A rank its node's supervisor does not know: lost if that supervisor is not the one it was sent to,
        else not arrived yet (or never will: the launching driver died before sending it)."""
        sent_to = att.supervisors.get(label, ("", ""))[1]
        if sent_to and actor_id != sent_to:
            return self._lost(att, rank, f"the node supervisor on {att.node(rank)} was restarted; the rank died")
        if label in att.pending or time.time() - att.launched_at < self.spawn_grace_s:
            return self._raw(att, rank, "starting", f"handing over to the node supervisor on {att.node(rank)}")
        return self._lost(att, rank, f"the launch never reached the node supervisor on {att.node(rank)}")

    def _unanswered(
        self, att: Attempt, rank: int, label: str, sup: _Supervisor | None, alive: dict[str, set[str]]
    ) -> dict[str, Any]:
        """A rank whose supervisor is missing (dead, or never created) or not up yet. ``alive`` caches the alive
        node labels for one query (key ``""``)."""
        sent_to = att.supervisors.get(label, ("", ""))[1]
        node = att.node(rank)
        if sup is not None and sent_to and sup.actor_id != sent_to:
            return self._lost(att, rank, f"the node supervisor on {node} was restarted; the rank died")
        if "" not in alive:
            alive[""] = self._alive_labels()
        if label not in alive[""]:
            if sup is None or time.time() - att.launched_at > self.pending_node_grace_s:
                # Pinned to a node Ray does not have (any more): its placement group would wait forever.
                return self._lost(att, rank, f"node {node} is not in the Ray cluster")
        elif sup is None:
            return self._lost(att, rank, f"the node supervisor on {node} is gone")
        return self._raw(att, rank, "starting", f"waiting for the node supervisor on {node}")

    def _lost(self, att: Attempt, rank: int, message: str) -> dict[str, Any]:
        raw = self._raw(att, rank, "lost", message)
        raw["tail"] = self._tail(att, rank)
        return raw

    def _unresponsive(self, att: Attempt, rank: int, why: str = "") -> dict[str, Any]:
        last = self._last.get((att.job_id, att.attempt, rank))
        if last is not None and last["phase"] in ("starting", "running"):
            return last
        return self._raw(att, rank, "starting", why or "worker not answering yet")

    def _tail(self, att: Attempt, rank: int) -> list[str]:
        if rank < len(att.log_paths) and Path(att.log_paths[rank]).exists():
            return tail_lines(att.log_paths[rank], TAIL_LINES)
        return []

    def _dead_nodes(self, att: Attempt) -> set[str]:
        alive = self._alive_labels()
        return {node for node in att.nodes if ray_label_value(node) not in alive}

    # ------------------------------------------------------------------------------------- stop, teardown

    def _terminate(self, att: Attempt, world: int, reason: str) -> dict[int, dict[str, Any]]:
        """Stop every rank of an attempt (SIGTERM, SIGKILL after the grace period) and wait for them: each
        supervisor replies once its ranks ended. Ranks nobody answered for are left out."""
        calls: dict[Any, _Supervisor] = {}
        labels = dict.fromkeys(ray_label_value(att.node(r)) for r in range(world))
        for label in labels:
            name = att.supervisors.get(label, (supervisor_name(label), ""))[0]
            sup = self._supervisor(label, name, create=False)
            # One not up yet runs nothing: a launch it gets later finds the placement group gone.
            if sup is not None and (sup.up or sup.known or self._is_up(sup)):
                calls[sup.handle.terminate.remote(att.job_id, att.attempt, reason)] = sup
        out: dict[int, dict[str, Any]] = {}
        if not calls:
            return out
        ready, _ = ray.wait(list(calls), num_returns=len(calls), timeout=self.stop_grace_s + 2)
        for ref in ready:
            try:
                reply = ray.get(ref)
            except ray.exceptions.RayActorError:
                self._drop_supervisor(calls[ref])
                continue
            for raw in reply:
                out[int(raw["rank"])] = raw
        return out

    def _finish(self, att: Attempt, status: ExecutionStatus, workers: list[dict[str, Any]]) -> ExecutionStatus:
        """Gang semantics and cleanup once an attempt is terminal: stop the rest, record, release."""
        if any(w["phase"] in ("starting", "running") for w in workers):
            stopped = self._terminate(att, len(workers), f"gang stopped: {status.message}")
            after = [stopped.get(int(w["rank"]), w) if w["phase"] in ("starting", "running") else w for w in workers]
            # The job keeps the phase and cause it ended with; only the workers' own states are refreshed.
            status = replace(status, workers=fold(att.job_id, att.attempt, after).workers)
        if self.release_finished:
            self.records.put(self.records.key("final", att.job_id, att.attempt), status_to_json(status))
            self._teardown(att, len(workers))
        return status

    def _teardown(self, att: Attempt, world: int) -> None:
        """Release the attempt's ranks (their holders kill what is left) and remove its placement group."""
        for label, (name, _actor_id) in att.supervisors.items():
            sup = self._supervisor(label, name, create=False)
            if sup is not None and (sup.up or self._is_up(sup)):
                sup.handle.release.remote(att.job_id, att.attempt)  # fire and forget
        pg = att.pg or self._get_pg(pg_name(att.job_id, att.attempt))
        if pg is not None:
            try:
                ray.util.remove_placement_group(pg)
            except Exception as err:  # removed already
                log.debug("remove placement group of %s: %s", att.key, err)
            with self._lock:
                self._releasing[pg.id.hex()] = (set(att.labels), time.monotonic() + RELEASE_WAIT_S)
        with self._lock:
            att.pending.clear()
            for key in [k for k in self._last if k[:2] == att.key]:
                del self._last[key]

    def stop(self, job_id: str, reason: str) -> None:
        """Stop every live attempt of a job: SIGTERM, grace period, SIGKILL; then release the ranks and remove
        the placement group. Also acknowledges attempts that had already ended: :meth:`poll` stops listing them
        (and their release is done again, in case it was cut short)."""
        index = self._index(job_id)
        for key in sorted(index.live):
            att = self._attempt(*key)
            world = max(len(att.nodes), 1)
            stopped = self._terminate(att, world, reason)
            workers = [stopped.get(r) or self._raw(att, r, "stopped", reason) for r in range(world)]
            status = fold(att.job_id, att.attempt, workers)
            if not status.terminal or status.phase is Phase.LOST:
                status = ExecutionStatus(*key, Phase.STOPPED, status.workers, reason, status.last_log_lines)
            self._teardown(att, world)
            self.records.put(self.records.key("done", *key), status_to_json(status))
        # Ended attempts the caller now knows about: out of poll()'s list, still readable by status().
        unacknowledged = index.final - index.done
        for key, final in self.records.ended(unacknowledged).items():
            att = self._attempt(*key)
            self._teardown(att, max(len(att.nodes), 1))
            self.records.put(self.records.key("done", *key), status_to_json(final))
            self.records.delete(self.records.key("final", *key))

    def forget(self, job_id: str) -> None:
        """Drop every record of a job (after the service stored its final state); its logs stay on the nodes."""
        self.records.forget(job_id)
        with self._lock:
            for key in [k for k in self._attempts if k[0] == job_id]:
                del self._attempts[key]

    # ---------------------------------------------------------------------------------------------- logs

    def read_logs(self, job_id: str, rank: int, offset: int = 0, limit: int = 65536) -> LogChunk:
        """A worker's log from byte ``offset``: from the file (this machine or a shared disk), else from its
        node (its supervisor, else a task there)."""
        self._reachable()
        launched = self.records.list(self.records.key("launch", job_id))
        attempts = {int(a) for k in launched if (a := k.rsplit("/", 1)[-1]).isdigit()}
        if not attempts:
            raise ExecutorError(f"no attempt of job {job_id!r} is known to this cluster")
        attempt = max(attempts)
        att = self._attempt(job_id, attempt)
        if rank >= len(att.log_paths):
            raise ExecutorError(f"job {job_id!r} attempt {attempt} has no rank {rank}")
        path = att.log_paths[rank]
        if Path(path).exists():
            text, next_offset = read_log_file(path, offset, limit)
            return LogChunk(job_id, attempt, rank, offset, text, next_offset)
        node = att.node(rank)
        label = ray_label_value(node)
        remote: Any = None
        # Any incarnation of the node's supervisor reads the file.
        sup = self._supervisor(label, att.supervisors.get(label, (supervisor_name(label), ""))[0], create=False)
        if sup is not None and (sup.up or sup.known or self._is_up(sup)):
            remote = sup.handle.read_log.remote(path, offset, limit)
        if remote is None:
            from ray.util.scheduling_strategies import In, NodeLabelSchedulingStrategy

            strategy = NodeLabelSchedulingStrategy({NODE_LABEL: In(label)})  # type: ignore[no-untyped-call]
            remote = _read_log_on_node.options(scheduling_strategy=strategy).remote(path, offset, limit)
        try:
            text, next_offset = ray.get(remote, timeout=self.call_timeout_s * 5)
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
