"""A real multi-node Ray cluster on this machine, one raylet per node of a cluster file (``zhisuan up``, tests).

Each emulated node is a ``ray start --address ... --block`` process declaring exactly what the node agent would
declare on a real machine (:func:`scheduler.ray_node.ray_node_spec`: the vendor resource × devices, CPUs, memory, and
the ``zhisuan.io/node|model|vendor|pool|island`` labels); the head carries no devices and no CPUs, so no worker
ever runs there::

    >>> with LocalCluster.from_file("seeds/clusters/local.yaml", max_nodes=3) as cluster:  # doctest: +SKIP
    ...     print(cluster.address)              # pass to RayExecutor(...) or ray.init(address=...)
    ...     cluster.kill_node("local-h100-00000")   # kill -9 that node's raylet (crash tests)
    192.0.2.2:41733

Why ``ray start`` processes rather than ``ray.cluster_utils.Cluster`` (which also takes ``labels`` in Ray 2.60):
the arguments are the very ones an operator runs on a real node (``RayNodeSpec.ray_start_args``), each node is its
own process tree (so killing one raylet is a faithful node crash), and the cluster does not live inside the
Python process that happens to start it. ``stop()`` terminates every process it started (never ``ray stop``,
which would kill other Ray clusters on the machine); it also runs at exit, and the processes get SIGKILL if the
starting process dies (``PR_SET_PDEATHSIG``, when started from the main thread).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import psutil

from scheduler.catalog import Catalog, load_catalog
from scheduler.cluster import load_cluster
from scheduler.model import Node
from scheduler.ray_node import NODE_LABEL, ray_label_value, ray_node_spec

#: GCS settings for a local cluster: notice a killed raylet within ~2 s (default: ~30 s) and do not prestart
#: idle Python workers on every node (this machine has few cores).
LOCAL_SYSTEM_CONFIG: dict[str, object] = {
    "health_check_initial_delay_ms": 1000,
    "health_check_period_ms": 500,
    "health_check_timeout_ms": 1000,
    "health_check_failure_threshold": 3,
    "enable_worker_prestart": False,
    "prestart_worker_first_driver": False,
}
OBJECT_STORE_BYTES = 100 * 2**20  # Ray's minimum is 75 MiB; emulated nodes move no data


class LocalClusterError(RuntimeError):
    """The local cluster could not start; the message carries the failing process's last output lines."""


@dataclass
class _Proc:
    name: str
    node: Node | None
    popen: subprocess.Popen[bytes]
    log_path: Path
    killed: bool = False

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


_handed_out: set[int] = set()


def _free_port() -> int:
    """A port free now and not handed out before by this process (nodes started at once must not collide)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("", 0))
            port: int = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def _node_ports() -> list[str]:
    """Explicit ports for every listener of one raylet: defaults are fixed (52365) or picked racily by each
    ``ray start``, so nodes started together on one machine would collide. Worker ports: any free one."""
    return [
        f"--node-manager-port={_free_port()}",
        f"--object-manager-port={_free_port()}",
        f"--metrics-export-port={_free_port()}",
        f"--dashboard-agent-grpc-port={_free_port()}",
        f"--dashboard-agent-listen-port={_free_port()}",
        f"--runtime-env-agent-port={_free_port()}",
        "--min-worker-port=0",
        "--max-worker-port=0",
    ]


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def spread_nodes(nodes: Sequence[Node], max_nodes: int | None) -> list[Node]:
    """Up to ``max_nodes`` nodes taken round-robin across models, so a small cluster stays heterogeneous.

    >>> from scheduler.model import Node
    >>> ns = [Node(id=f"{m}-{i}", model=m, devices=1, cpu_milli=1000, memory_mib=1)
    ...       for m in ("H100", "Ascend910B") for i in range(3)]
    >>> [n.id for n in spread_nodes(ns, 3)]
    ['H100-0', 'Ascend910B-0', 'H100-1']
    """
    if max_nodes is None or max_nodes >= len(nodes):
        return list(nodes)
    by_model: dict[str, list[Node]] = {}
    for node in nodes:
        by_model.setdefault(node.model, []).append(node)
    picked: list[Node] = []
    while len(picked) < max_nodes:
        for group in by_model.values():
            if group and len(picked) < max_nodes:
                picked.append(group.pop(0))
    return picked


class LocalCluster:
    """Head + one raylet per node; see the module docstring. Not thread-safe; start and stop from one thread."""

    def __init__(
        self,
        nodes: Sequence[Node],
        *,
        catalog: Catalog | None = None,
        include_dashboard: bool = False,
        system_config: dict[str, object] | None = None,
        work_dir: str | Path | None = None,
        start_timeout_s: float = 90.0,
        keep_work_dir: bool = False,
    ) -> None:
        if not nodes:
            raise ValueError("a local cluster needs at least one node")
        self.nodes = list(nodes)
        self.catalog = catalog or load_catalog()
        self.include_dashboard = include_dashboard
        self.system_config = dict(LOCAL_SYSTEM_CONFIG if system_config is None else system_config)
        self.start_timeout_s = start_timeout_s
        self._work_dir_arg = work_dir
        #: Ray's session directories and the ``ray start`` output; a directory we created is removed by stop()
        #: unless ``keep_work_dir`` (one given by the caller is always kept).
        self.keep_work_dir = keep_work_dir
        self.work_dir: Path | None = None
        self._address: str | None = None
        self.dashboard_url: str | None = None
        self._head: _Proc | None = None
        self._workers: dict[str, _Proc] = {}
        self._atexit_registered = False
        #: Every process ever seen in the clusters' trees (pid -> create time): a raylet that dies leaves its
        #: agents to init, out of any tree, and stop() must still find them.
        self._seen: dict[int, float] = {}
        self._watch_stop = threading.Event()
        self._watcher: threading.Thread | None = None

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        max_nodes: int | None = None,
        *,
        catalog: Catalog | None = None,
        include_dashboard: bool = False,
        system_config: dict[str, object] | None = None,
        work_dir: str | Path | None = None,
        start_timeout_s: float = 90.0,
        keep_work_dir: bool = False,
    ) -> LocalCluster:
        """A cluster of the nodes of a cluster file (at most ``max_nodes``, spread over its models)."""
        cluster = load_cluster(path, catalog)
        return cls(
            spread_nodes(cluster.nodes, max_nodes),
            catalog=catalog,
            include_dashboard=include_dashboard,
            system_config=system_config,
            work_dir=work_dir,
            start_timeout_s=start_timeout_s,
            keep_work_dir=keep_work_dir,
        )

    # -------------------------------------------------------------------------------------------- access

    @property
    def address(self) -> str:
        """The GCS address (``host:port``) drivers connect to; raises before :meth:`start`."""
        if self._address is None:
            raise LocalClusterError("the local cluster is not started")
        return self._address

    @property
    def running(self) -> bool:
        return self._address is not None

    def node(self, node_id: str) -> Node:
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise KeyError(f"no node {node_id!r} in this local cluster")

    # ------------------------------------------------------------------------------------------- start

    def _ray(self) -> str:
        beside = Path(sys.executable).with_name("ray")
        found = str(beside) if beside.exists() else shutil.which("ray")
        if not found:
            raise LocalClusterError("the `ray` command is not installed (pip install ray)")
        return found

    def _spawn(self, name: str, node: Node | None, args: list[str]) -> _Proc:
        assert self.work_dir is not None
        log_path = self.work_dir / f"{name}.log"
        env = dict(os.environ)
        env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        # `ray start --head` turns token authentication on when a token file exists (~/.ray/auth_token, left by
        # any local `ray.init()`), and then this process's GCS client, without the token, is refused.
        env.setdefault("RAY_AUTH_MODE", "disabled")
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        main = threading.current_thread() is threading.main_thread()
        with open(log_path, "ab") as out:
            popen = subprocess.Popen(
                [self._ray(), "start", "--block", *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # Ctrl-C reaches us, and we stop the nodes in order
                preexec_fn=_die_with_parent if main else None,
            )
        return _Proc(name, node, popen, log_path)

    def start(self) -> str:
        """Start the head and every node, wait until all registered with the GCS; returns :attr:`address`."""
        if self._address is not None:
            return self._address
        self.work_dir = Path(self._work_dir_arg or tempfile.mkdtemp(prefix="zs-ray-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True
        port = _free_port()
        head_args = [
            "--head",
            f"--port={port}",
            "--num-cpus=0",
            "--num-gpus=0",
            f"--object-store-memory={OBJECT_STORE_BYTES}",
            f"--include-dashboard={'true' if self.include_dashboard else 'false'}",
            f"--dashboard-port={_free_port()}",
            *_node_ports(),
            "--disable-usage-stats",
            "--labels=zhisuan.io/role=head",
            f"--temp-dir={self.work_dir / 'h'}",
        ]
        if self.system_config:
            head_args.append(f"--system-config={json.dumps(self.system_config)}")
        try:
            self._head = self._spawn("head", None, head_args)
            address = self._wait_for_gcs(port)
            for index, node in enumerate(self.nodes):
                spec = ray_node_spec(node, self.catalog[node.model].vendor, catalog=self.catalog)
                args = [
                    f"--address={address}",
                    # A session directory per node: Ray names its sockets by probing for free names, which
                    # races when several nodes of one machine start together in one directory.
                    f"--temp-dir={self.work_dir / str(index)}",
                    f"--object-store-memory={OBJECT_STORE_BYTES}",
                    *_node_ports(),
                    *spec.ray_start_args(),
                ]
                self._workers[node.id] = self._spawn(f"node-{node.id}", node, args)
            self._wait_for_nodes(address)
        except BaseException:
            self.stop()
            raise
        self._address = address
        self._remember()
        self._watch_stop.clear()
        self._watcher = threading.Thread(target=self._watch, name="zhisuan-localcluster-watch", daemon=True)
        self._watcher.start()
        if self.include_dashboard:
            self.dashboard_url = self._dashboard_url(address)
        return address

    def _remember(self) -> None:
        for proc in [self._head, *self._workers.values()]:
            if proc is not None:
                for member in _tree(proc.popen.pid):
                    with contextlib.suppress(psutil.Error):
                        self._seen.setdefault(member.pid, member.create_time())

    def _watch(self) -> None:
        while not self._watch_stop.wait(2.0):
            with contextlib.suppress(Exception):
                self._remember()

    def _check_alive(self) -> None:
        for proc in [self._head, *self._workers.values()]:
            if proc is not None and not proc.killed and proc.popen.poll() is not None:
                raise LocalClusterError(
                    f"`ray start` for {proc.name} exited with code {proc.popen.returncode}:\n{proc.tail()}"
                )

    def _wait_for_gcs(self, port: int) -> str:
        from ray._raylet import GcsClient  # type: ignore[attr-defined]

        deadline = time.monotonic() + self.start_timeout_s
        host = _local_ip()
        address = f"{host}:{port}"
        while time.monotonic() < deadline:
            self._check_alive()
            with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
                break  # listening: the client below would otherwise block for its own long timeout
            time.sleep(0.2)
        while time.monotonic() < deadline:
            self._check_alive()
            with contextlib.suppress(Exception):
                GcsClient(address=address).get_all_node_info(timeout=2)
                return address
            time.sleep(0.2)
        raise LocalClusterError(f"the Ray head did not answer on {address} in {self.start_timeout_s} s")

    def _alive_labels(self, address: str) -> dict[str, str]:
        """``zhisuan.io/node`` label -> Ray node id of every alive node."""
        from ray._raylet import GcsClient  # type: ignore[attr-defined]

        info = GcsClient(address=address).get_all_node_info(timeout=5)
        out: dict[str, str] = {}
        for node_id, node in info.items():
            if node.state == 0 and NODE_LABEL in node.labels:  # 0: ALIVE
                out[str(node.labels[NODE_LABEL])] = node_id.hex()
        return out

    def _wait_for_nodes(self, address: str) -> None:
        wanted = {ray_label_value(n.id) for n in self.nodes}
        deadline = time.monotonic() + self.start_timeout_s
        seen: set[str] = set()
        while time.monotonic() < deadline:
            self._check_alive()
            with contextlib.suppress(Exception):
                seen = set(self._alive_labels(address))
                if wanted <= seen:
                    return
            time.sleep(0.2)
        raise LocalClusterError(f"nodes did not register in {self.start_timeout_s} s: {sorted(wanted - seen)}")

    def _dashboard_url(self, address: str) -> str | None:
        from ray._raylet import GcsClient  # type: ignore[attr-defined]

        with contextlib.suppress(Exception):
            value = GcsClient(address=address).internal_kv_get(b"dashboard", b"dashboard", timeout=5)
            if value:
                return "http://" + bytes(value).decode()
        return None

    def alive_nodes(self) -> dict[str, str]:
        """Node id (label) -> Ray node id, of the nodes the GCS sees alive now."""
        return self._alive_labels(self.address)

    # --------------------------------------------------------------------------------------- crash tests

    def raylet_pid(self, node_id: str) -> int | None:
        proc = self._workers.get(node_id)
        if proc is None or proc.popen.poll() is not None:
            return None
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(proc.popen.pid).children(recursive=True):
                if child.name() == "raylet":
                    return child.pid
        return None

    def kill_node(self, node_id: str, wait_dead_s: float = 30.0) -> None:
        """A node crash: ``kill -9`` its raylet, wait until the GCS marks the node dead, then ``kill -9`` every
        other process the node had (Ray agents, workers, job processes), as if the machine had vanished."""
        self.node(node_id)
        proc = self._workers.get(node_id)
        if proc is None or proc.killed:
            return
        tree = _tree(proc.popen.pid)
        self._remember()
        pid = self.raylet_pid(node_id)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.killed = True
        deadline = time.monotonic() + wait_dead_s
        label = ray_label_value(node_id)
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if label not in self._alive_labels(self.address):
                    break
            time.sleep(0.2)
        else:
            raise LocalClusterError(f"node {node_id} is still alive {wait_dead_s} s after its raylet was killed")
        _kill(tree)
        _terminate([proc.popen], timeout_s=5)

    def kill_head(self) -> None:
        """The whole cluster disappears from the drivers' view: ``kill -9`` the head (GCS) and its processes."""
        if self._head is not None and not self._head.killed:
            _kill(_tree(self._head.popen.pid))
            self._head.killed = True
            _terminate([self._head.popen], timeout_s=5)

    # -------------------------------------------------------------------------------------------- stop

    def stop(self) -> None:
        """Terminate every process this cluster started (workers first, then the head). Idempotent."""
        self._watch_stop.set()
        self._remember()
        procs = [p for p in self._workers.values()] + ([self._head] if self._head is not None else [])
        popens = [p.popen for p in procs]
        head_gone = self._head is not None and self._head.killed
        # Raylets shut down gracefully in a second or two; without their GCS they wait for it instead.
        _terminate(popens, timeout_s=3 if head_gone else 15)
        leftovers = []
        for pid, created in self._seen.items():
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE:
                    leftovers.append(proc)
        _kill(leftovers)
        self._seen.clear()
        if self.work_dir is not None and self._work_dir_arg is None and not self.keep_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)
            self.work_dir = None
        self._workers.clear()
        self._head = None
        self._address = None
        self.dashboard_url = None

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _local_ip() -> str:
    import ray._private.services as services

    return str(services.get_node_ip_address())  # type: ignore[no-untyped-call]


def _tree(pid: int) -> list[psutil.Process]:
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    return []


def _kill(procs: Sequence[psutil.Process]) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(list(procs), timeout=5)


def _terminate(popens: Sequence[subprocess.Popen[bytes]], timeout_s: float) -> None:
    """SIGTERM each process tree, wait, then SIGKILL whatever of the trees is left."""
    trees = [proc for popen in popens for proc in _tree(popen.pid)]
    for popen in popens:
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                popen.send_signal(signal.SIGTERM)
    _gone, alive = psutil.wait_procs(trees, timeout=timeout_s)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)
    for popen in popens:
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=1)
