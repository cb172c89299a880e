"""What runs on the nodes: a job's ranks as subprocesses, held by the node's supervisor.

This module is imported inside Ray worker processes, so it depends on the standard library and Ray only. The
:class:`~scheduler.live.executors.ray.executor.RayExecutor` runs every rank of a job as a :class:`RankProcess`::

    RANK=1 WORLD_SIZE=2 MASTER_ADDR=10.0.0.7 MASTER_PORT=41234 CUDA_VISIBLE_DEVICES=4,5 ... sh -c "<entrypoint>"

with stdout and stderr appended to one log file per rank, the walltime enforced on the node itself (so a job is
stopped on time even while the scheduler service is down), SIGTERM then SIGKILL to its process group on stop.

One long-lived, detached :class:`NodeSupervisor` actor per node, named ``zhisuan.node.<node label>``, pinned to
its node by the Ray label ``zhisuan.io/node`` and holding no resources, spawns the ranks of every job placed on
its node. The job's placement group still reserves the devices, CPU and memory in Ray's accounting; the
supervisor starts a rank only once its bundle is reserved *on this node*, and stops it when the group is removed.
No Python worker process starts per rank, so a launch costs a fork, not an ``import ray`` (seconds on a busy
machine). The process learns where it runs from the Ray node label of the node its supervisor runs on (not from
the request), which is how the tests prove placement from inside the workers. The pure helpers below are usable
without Ray::

    >>> missing_requirements(["pytest", "surely-not-installed-zz>=1"])
    ['surely-not-installed-zz is not installed']
    >>> decode_utf8_prefix("héllo".encode()[:2])
    ('h', 1)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Ray node label carrying the scheduler's node id: :data:`scheduler.ray_node.NODE_LABEL`, spelled out here because
#: this module runs in fresh Ray worker processes and imports nothing but the standard library and Ray (a test
#: checks the two agree).
NODE_LABEL = "zhisuan.io/node"
#: Vendor-neutral visibility variable, set on every worker whatever its vendor.
ZHISUAN_VISIBLE_DEVICES = "ZHISUAN_VISIBLE_DEVICES"
WALLTIME_MESSAGE = "exceeded walltime"
TAIL_LINES = 20
#: Bumped when the supervisor's remote API changes: a new driver then starts new supervisors beside the old ones,
#: which keep serving the attempts they started (each launch record names its supervisors).
SUPERVISOR_VERSION = 1
PG_REMOVED_MESSAGE = "its placement group was removed"


def supervisor_name(node_label: str) -> str:
    """``supervisor_name("h100-a") == "zhisuan.node.v1.h100-a"`` (never parsed as a job's name: no ``zhisuan-``)."""
    return f"zhisuan.node.v{SUPERVISOR_VERSION}.{node_label}"


@dataclass(frozen=True)
class WorkerSpec:
    """Everything one rank needs; built by the executor from a launch request (picklable, no Ray objects)."""

    job_id: str
    attempt: int
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    node_rank: int
    node: str
    node_label: str
    model: str
    vendor: str
    devices: tuple[int, ...]
    milli: int
    visibility_env: tuple[str, ...]
    #: The vendor's runtime variables (``CUDA_DEVICE_ORDER=PCI_BUS_ID``...), set like the visibility variable.
    device_env: dict[str, str]
    entrypoint: str
    log_path: str
    namespace: str
    env: dict[str, str] = field(default_factory=dict)
    working_dir: str | None = None
    pip: tuple[str, ...] = ()
    walltime_s: float | None = None
    checkpoint_path: str | None = None
    kind: str = "training"
    stop_grace_s: float = 5.0
    rendezvous_timeout_s: float = 600.0


# ----------------------------------------------------------------------------------------------- helpers


def missing_requirements(requirements: tuple[str, ...] | list[str]) -> list[str]:
    """Requirements this Python cannot satisfy, one readable line each (empty: all satisfied)."""
    if not requirements:
        return []
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import InvalidRequirement, Requirement

    problems: list[str] = []
    for text in requirements:
        try:
            req = Requirement(text)
        except InvalidRequirement as err:
            problems.append(f"{text!r} is not a requirement this cluster can check ({err})")
            continue
        try:
            installed = version(req.name)
        except PackageNotFoundError:
            problems.append(f"{req.name} is not installed")
            continue
        if req.specifier and not req.specifier.contains(installed, prereleases=True):
            problems.append(f"{req.name} {installed} is installed, which does not satisfy {req.specifier}")
    return problems


def decode_utf8_prefix(data: bytes) -> tuple[str, int]:
    """Decode the longest prefix of ``data`` that does not end inside a UTF-8 character: (text, bytes used)."""
    for cut in range(4):
        end = len(data) - cut
        if end < 0:
            break
        try:
            return data[:end].decode("utf-8"), end
        except UnicodeDecodeError as err:
            if err.reason != "unexpected end of data":
                break
    return data.decode("utf-8", errors="replace"), len(data)


def read_log_file(path: str | Path, offset: int, limit: int) -> tuple[str, int]:
    """Up to ``limit`` bytes of a log from ``offset``: (text, next offset). A missing file reads as empty."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, offset))
            data = f.read(max(0, limit))
    except FileNotFoundError:
        return "", offset
    text, used = decode_utf8_prefix(data)
    if used == 0 and data:  # limit shorter than one character: return it whole rather than stall
        text, used = data.decode("utf-8", errors="replace"), len(data)
    return text, offset + used


def tail_lines(path: str | Path, lines: int = TAIL_LINES, max_bytes: int = 16384) -> list[str]:
    """The last ``lines`` lines of a log file (empty when it does not exist)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except FileNotFoundError:
        return []
    return data.decode("utf-8", errors="replace").splitlines()[-lines:]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        port: int = s.getsockname()[1]
        return port


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    """In the child before exec: get SIGKILL when the thread that spawned us dies (its holder was killed)."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


#: Shell exit codes that mean the entrypoint could not run at all (not executable, not found): retrying the same
#: command on the same image cannot help.
NOT_RUNNABLE_EXIT_CODES = frozenset({126, 127})


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}"
    return f"exited with code {code}"


@dataclass(frozen=True)
class NodeContext:
    """Where the calling Ray worker runs, as Ray says: node labels, Ray node id, IP."""

    labels: dict[str, str]
    ray_node_id: str
    ip: str

    @property
    def label(self) -> str:
        return self.labels.get(NODE_LABEL, "")

    @classmethod
    def current(cls) -> NodeContext:
        import ray

        ctx = ray.get_runtime_context()
        labels = {str(k): str(v) for k, v in ctx.get_node_labels().items()}
        return cls(labels, ctx.get_node_id(), str(ray.util.get_node_ip_address()))  # type: ignore[no-untyped-call]


#: Called in the rank's thread before it spawns; blocks until the rank may start, returns ``(phase, message)``
#: to end the rank with instead, or None to go on.
ReadyCheck = Callable[["RankProcess"], "tuple[str, str] | None"]
#: Rank 0's ``(MASTER_ADDR, MASTER_PORT)``, or a function that fetches it for a rank (giving up if it is stopped).
Master = tuple[str, int] | Callable[["RankProcess"], tuple[str, int]]


# ------------------------------------------------------------------------------------------- one rank


class RankProcess:
    """One rank's entrypoint on this node: spawned once, watched by its own thread, stopped on request.

    The thread that spawns the process waits for it to the end, so the process gets SIGKILL if its holder (a
    supervisor) dies (``PR_SET_PDEATHSIG`` fires when the spawning *thread* ends).
    """

    def __init__(self, spec: WorkerSpec, node: NodeContext) -> None:
        self.spec = spec
        self.node = node
        self._lock = threading.Lock()
        self._phase = "starting"
        self._message = ""
        self._exit_code: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._started = False
        self._spawned = threading.Event()
        self._done = threading.Event()
        self._stop_reason: str | None = None
        self._spawned_at: float | None = None
        self._ended_at: float | None = None
        #: False when the failure is the job's own setup (missing packages, directory, command): a retry on the
        #: same cluster would fail the same way, so the service fails the job at once.
        self._retryable = True
        if node.label != spec.node_label:
            self._end(
                "failed",
                f"Ray placed rank {spec.rank} on node {node.label or '(unlabelled)'!r}, "
                f"but the scheduler chose {spec.node!r}",
            )
        try:
            Path(spec.log_path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            self._end("failed", f"cannot create the log directory on node {spec.node}: {err}")

    # ----------------------------------------------------------------------------------------- control

    @property
    def stop_requested(self) -> bool:
        with self._lock:
            return self._stop_reason is not None or self._phase != "starting"

    @property
    def ended(self) -> bool:
        return self._done.is_set()

    @property
    def ended_at(self) -> float | None:
        return self._ended_at

    def start(self, master: Master, ready: ReadyCheck | None = None) -> bool:
        """Spawn the entrypoint in a new thread, once (False: started before, or already ended). ``master`` is
        rank 0's ``(address, port)``, or a function that fetches it (called once the rank may start)."""
        with self._lock:
            if self._started or self._phase != "starting":
                return False
            self._started = True
        thread = threading.Thread(
            target=self._run, args=(master, ready), name=f"zhisuan-{self.spec.job_id}-{self.spec.rank}", daemon=True
        )
        thread.start()
        return True

    def wait_spawned(self, timeout_s: float) -> None:
        self._spawned.wait(timeout_s)

    def request_stop(self, reason: str) -> None:
        """SIGTERM to the process group now, SIGKILL after the grace period; a rank not spawned yet never is."""
        with self._lock:
            if self._stop_reason is None and self._phase in ("starting", "running"):
                self._stop_reason = reason
            proc = self._proc
            if proc is None and self._phase == "starting":
                self._phase, self._message, self._ended_at = "stopped", reason, time.time()
                self._done.set()
        if proc is not None and proc.poll() is None:
            self._signal_group(proc, signal.SIGTERM)
            timer = threading.Timer(self.spec.stop_grace_s, self._signal_group, args=(proc, signal.SIGKILL))
            timer.daemon = True
            timer.start()

    def kill(self) -> None:
        """SIGKILL to the process group at once (the rank is being released)."""
        self.request_stop("released")
        proc = self._proc
        if proc is not None:
            self._signal_group(proc, signal.SIGKILL)

    def wait(self, timeout_s: float) -> bool:
        return self._done.wait(timeout_s)

    def note(self, message: str) -> None:
        """Say why a rank that has not started is waiting (shown in its status)."""
        with self._lock:
            if self._phase == "starting":
                self._message = message

    def fail(self, message: str) -> None:
        """End a rank that has not started (it never will)."""
        self._end("failed", message)

    def terminate(self, reason: str, wait_s: float | None = None) -> dict[str, Any]:
        """:meth:`request_stop`, then wait (default: the grace period + 2 s) and report."""
        self.request_stop(reason)
        self._done.wait(timeout=self.spec.stop_grace_s + 2 if wait_s is None else wait_s)
        return self.status()

    def status(self) -> dict[str, Any]:
        with self._lock:
            spec = self.spec
            terminal = self._phase not in ("starting", "running")
            return {
                "job_id": spec.job_id,
                "attempt": spec.attempt,
                "rank": spec.rank,
                "node": self.node.label or spec.node,
                "phase": self._phase,
                "exit_code": self._exit_code,
                "message": self._message,
                "retryable": self._retryable,
                "pid": self._proc.pid if self._proc is not None else None,
                "ray_node_id": self.node.ray_node_id,
                "labels": dict(self.node.labels),
                "spawned_at": self._spawned_at,
                "ended_at": self._ended_at,
                "log_path": spec.log_path,
                "tail": tail_lines(spec.log_path) if terminal else [],
            }

    # ------------------------------------------------------------------------------------------ internals

    def _run(self, master: Master, ready: ReadyCheck | None) -> None:
        try:
            proc = self._spawn(master, ready)
        finally:
            self._spawned.set()
        if proc is None:
            return
        spec = self.spec
        deadline = None if spec.walltime_s is None else time.monotonic() + spec.walltime_s
        while True:
            try:
                code = proc.wait(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
                break
            except subprocess.TimeoutExpired:
                deadline = None
                self.request_stop(f"{WALLTIME_MESSAGE} ({spec.walltime_s:g} s)")
        self._signal_group(proc, signal.SIGKILL)  # leftovers of the group (background children)
        with self._lock:
            stop_reason = self._stop_reason
        if stop_reason is not None:
            self._end("stopped", stop_reason, code)
        elif code == 0:
            self._end("succeeded", "exited with code 0", code)
        else:
            self._end("failed", _describe_exit(code), code, retryable=code not in NOT_RUNNABLE_EXIT_CODES)

    def _spawn(self, master: Master, ready: ReadyCheck | None) -> subprocess.Popen[bytes] | None:
        spec = self.spec
        if ready is not None:
            outcome = ready(self)
            if outcome is not None:
                self._end(*outcome)
                return None
        if self.stop_requested:
            return None
        problem = self._setup_problem()
        if problem:
            self._end("failed", problem, retryable=False)
            return None
        try:
            address = master(self) if callable(master) else master
        except Exception as err:
            self._end("failed", f"rank {spec.rank} could not reach rank 0 for the master address: {err}")
            return None
        env = self._environment(*address)
        shell = shutil.which("bash") or "/bin/sh"
        try:
            with open(spec.log_path, "ab") as log, self._lock:
                if self._stop_reason is not None or self._phase != "starting":  # stopped before it could start
                    if self._phase == "starting":
                        self._phase, self._message, self._ended_at = "stopped", self._stop_reason or "", time.time()
                    self._done.set()
                    return None
                proc = subprocess.Popen(
                    [shell, "-c", spec.entrypoint],
                    cwd=spec.working_dir or None,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
                self._proc = proc
                self._phase = "running"
                self._spawned_at = time.time()
                return proc
        except OSError as err:
            self._end("failed", f"cannot start the entrypoint on node {spec.node}: {err}", retryable=False)
            return None

    def _setup_problem(self) -> str | None:
        spec = self.spec
        if spec.working_dir and not Path(spec.working_dir).is_dir():
            return f"working_dir {spec.working_dir!r} does not exist on node {spec.node}"
        missing = missing_requirements(spec.pip)
        if missing:
            return (
                f"runtime_env pip on node {spec.node}: {'; '.join(missing)} (this cluster installs nothing at "
                f"launch; add the packages to the node image)"
            )
        return None

    def _environment(self, master_addr: str, master_port: int) -> dict[str, str]:
        spec = self.spec
        env = dict(os.environ)
        env.update(spec.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        # ``python`` in an entrypoint is the Python this Ray worker runs (the node's environment).
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        devices = ",".join(str(d) for d in spec.devices)
        for name in (*spec.visibility_env, ZHISUAN_VISIBLE_DEVICES):
            env[name] = devices
        env.update(spec.device_env)
        env.update(
            {
                "RANK": str(spec.rank),
                "LOCAL_RANK": str(spec.local_rank),
                "WORLD_SIZE": str(spec.world_size),
                "LOCAL_WORLD_SIZE": str(spec.local_world_size),
                "NODE_RANK": str(spec.node_rank),
                "MASTER_ADDR": master_addr,
                "MASTER_PORT": str(master_port),
                "ZHISUAN_JOB_ID": spec.job_id,
                "ZHISUAN_ATTEMPT": str(spec.attempt),
                "ZHISUAN_KIND": spec.kind,
                # From the Ray node label of the node this process's holder runs on, not from the request.
                "ZHISUAN_NODE": self.node.label,
                "ZHISUAN_RAY_NODE_ID": self.node.ray_node_id,
                "ZHISUAN_NODE_IP": self.node.ip,
                "ZHISUAN_MODEL": spec.model,
                "ZHISUAN_DEVICE_MILLI": str(spec.milli),
                "ZHISUAN_LOG_PATH": spec.log_path,
            }
        )
        if spec.checkpoint_path:
            env["ZHISUAN_CHECKPOINT_PATH"] = spec.checkpoint_path
        else:
            env.pop("ZHISUAN_CHECKPOINT_PATH", None)
        return env

    @staticmethod
    def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)

    def _end(self, phase: str, message: str, code: int | None = None, retryable: bool = True) -> None:
        with self._lock:
            if self._phase in ("starting", "running"):
                self._phase, self._message, self._exit_code = phase, message, code
                self._retryable = retryable
                self._ended_at = time.time()
        self._done.set()


# ------------------------------------------------------------------------------------- node supervisor

AttemptKey = tuple[str, int]


class NodeSupervisor:
    """Holds the ranks of every job on one node. Made a detached, threaded Ray actor by the executor.

    Everything it knows lives in this process; a new supervisor (after this one or its node died) knows nothing,
    and the executor reports the ranks the old one held as lost (their processes died with it). Its actor id
    names the incarnation: a launch record keeps the id of the supervisor it sent each rank to.
    """

    def __init__(self, node_label: str, reap_interval_s: float = 1.0, keep_ended_s: float = 86400.0) -> None:
        import ray

        self.node = NodeContext.current()
        self.node_label = node_label
        self.actor_id = ray.get_runtime_context().get_actor_id() or ""
        self.started_at = time.time()
        self.reap_interval_s = reap_interval_s
        self.keep_ended_s = keep_ended_s
        self._lock = threading.Lock()
        self._ranks: dict[tuple[str, int, int], RankProcess] = {}
        self._pgs: dict[AttemptKey, Any] = {}
        self._masters: dict[AttemptKey, tuple[str, int]] = {}
        self._stopped: dict[AttemptKey, tuple[str, float]] = {}
        self._reaper = threading.Thread(target=self._reap_loop, name="zhisuan-reaper", daemon=True)
        self._reaper.start()

    # ---------------------------------------------------------------------------------------- remote API

    def info(self) -> dict[str, Any]:
        return {
            "actor_id": self.actor_id,
            "node": self.node.label,
            "wanted": self.node_label,
            "ray_node_id": self.node.ray_node_id,
            "ip": self.node.ip,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "version": SUPERVISOR_VERSION,
        }

    def rendezvous(self, job_id: str, attempt: int) -> tuple[str, int]:
        """This node's address and a free port on it, the same for every call about one attempt."""
        with self._lock:
            return self._master_locked((job_id, attempt))

    def spawn(self, specs: list[WorkerSpec], pg: Any = None, rank0_supervisor: str | None = None) -> dict[str, Any]:
        """Accept ranks of one attempt (idempotent per rank); each starts once its bundle of ``pg`` is reserved
        on this node. Returns at once: ``{"actor_id", "ranks"}``.

        ``rank0_supervisor`` names the supervisor of rank 0's node, which gives out the job's master address
        (:meth:`rendezvous`); None when rank 0 is on this node."""
        if not specs:
            return {"actor_id": self.actor_id, "ranks": []}
        key = (specs[0].job_id, specs[0].attempt)
        started: list[RankProcess] = []
        with self._lock:
            master: Master = (
                self._master_locked(key)
                if rank0_supervisor is None
                else self._master_from(rank0_supervisor, key, specs[0].namespace)
            )
            if pg is not None:
                self._pgs.setdefault(key, pg)
            for spec in specs:
                if (spec.job_id, spec.attempt) != key:
                    raise ValueError("one spawn call carries the ranks of one attempt")
                rank_key = (spec.job_id, spec.attempt, spec.rank)
                if rank_key in self._ranks:
                    continue
                proc = RankProcess(spec, self.node)
                self._ranks[rank_key] = proc
                stopped = self._stopped.get(key)
                if stopped is not None:  # stopped before its launch arrived
                    proc.request_stop(stopped[0])
                else:
                    started.append(proc)
        for proc in started:
            proc.start(master, None if pg is None else self._bundle_check(pg))
        with self._lock:
            procs = [p for k, p in self._ranks.items() if k[:2] == key]
        return {"actor_id": self.actor_id, "ranks": [p.status() for p in procs]}

    def statuses(self, attempts: Iterable[AttemptKey] | None = None) -> dict[str, Any]:
        """Every rank of ``attempts`` (all when None) this supervisor holds: ``{"actor_id", "ranks": [...]}``."""
        wanted = None if attempts is None else {(str(j), int(a)) for j, a in attempts}
        with self._lock:
            procs = [p for k, p in self._ranks.items() if wanted is None or k[:2] in wanted]
        return {"actor_id": self.actor_id, "ranks": [p.status() for p in procs]}

    def terminate(self, job_id: str, attempt: int, reason: str, wait_s: float | None = None) -> list[dict[str, Any]]:
        """Stop every rank of an attempt (SIGTERM, SIGKILL after their grace), wait, report them. A rank whose
        launch arrives later is never started."""
        key = (job_id, attempt)
        with self._lock:
            self._stopped.setdefault(key, (reason, time.time()))
            procs = [p for k, p in self._ranks.items() if k[:2] == key]
        for proc in procs:
            proc.request_stop(reason)
        grace = max((p.spec.stop_grace_s for p in procs), default=0.0)
        deadline = time.monotonic() + (grace + 2 if wait_s is None else wait_s)
        for proc in procs:
            proc.wait(max(0.0, deadline - time.monotonic()))
        return [p.status() for p in procs]

    def release(self, job_id: str, attempt: int) -> int:
        """Forget an attempt whose outcome the executor recorded; kills whatever of it still runs. Returns how
        many ranks it held."""
        key = (job_id, attempt)
        with self._lock:
            self._stopped.setdefault(key, ("released", time.time()))
            procs = [self._ranks.pop(k) for k in [k for k in self._ranks if k[:2] == key]]
            self._pgs.pop(key, None)
            self._masters.pop(key, None)
        for proc in procs:
            if not proc.ended:
                proc.kill()
        return len(procs)

    def read_log(self, path: str, offset: int, limit: int) -> tuple[str, int]:
        return read_log_file(path, offset, limit)

    # ------------------------------------------------------------------------------------------ internals

    def _master_locked(self, key: AttemptKey) -> tuple[str, int]:
        master = self._masters.get(key)
        if master is None:
            master = self._masters[key] = (self.node.ip, free_port())
        return master

    def _master_from(self, name: str, key: AttemptKey, namespace: str) -> Callable[[RankProcess], tuple[str, int]]:
        """A function that asks the supervisor ``name`` (rank 0's node) for the attempt's master address."""

        def fetch(proc: RankProcess) -> tuple[str, int]:
            import ray

            deadline = time.monotonic() + proc.spec.rendezvous_timeout_s
            while not proc.stop_requested:
                try:
                    peer = ray.get_actor(name, namespace=namespace)
                    ref: Any = peer.rendezvous.remote(*key)
                    master: Any = ray.get(ref, timeout=max(1.0, deadline - time.monotonic()))
                    return str(master[0]), int(master[1])
                except ValueError:  # not registered (yet)
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            raise RuntimeError("stopped")

        return fetch

    def _bundle_check(self, pg: Any) -> ReadyCheck:
        def ready(proc: RankProcess) -> tuple[str, str] | None:
            """Wait until the rank's bundle is reserved, and check that it is reserved on this node."""
            import ray

            while not proc.stop_requested:
                try:
                    if pg.wait(1):
                        break
                    proc.note(f"waiting for its devices on {proc.spec.node} (placement group not placed yet)")
                except Exception:  # the group is gone (removed before it was ever placed)
                    return "stopped", f"{PG_REMOVED_MESSAGE} before rank {proc.spec.rank} started"
            else:
                return None  # stopped while waiting: the rank ends as stopped
            try:
                where = ray.util.placement_group_table(pg).get("bundles_to_node_id", {}).get(proc.spec.rank)
            except Exception:
                where = None
            if where and where != self.node.ray_node_id:
                return "failed", (
                    f"Ray reserved rank {proc.spec.rank}'s bundle on Ray node {where}, not on node "
                    f"{self.node.label} where its supervisor runs"
                )
            return None

        return ready

    def _reap_loop(self) -> None:
        while True:
            time.sleep(self.reap_interval_s)
            with contextlib.suppress(Exception):
                self._reap()

    def _reap(self) -> None:
        """Stop the ranks of attempts whose placement group is gone (the reservation is the source of truth) and
        forget ended attempts nobody released within ``keep_ended_s``."""
        import ray

        with self._lock:
            running = {k[:2] for k, p in self._ranks.items() if not p.ended and k[:2] in self._pgs}
            pgs = {key: self._pgs[key] for key in running}
        for key, pg in pgs.items():
            try:
                info = ray.util.placement_group_table(pg)
            except Exception:  # the GCS did not answer: keep everything running
                continue
            if not info or info.get("state") == "REMOVED":
                self.terminate(key[0], key[1], PG_REMOVED_MESSAGE, wait_s=0)
        now = time.time()
        with self._lock:
            by_attempt: dict[AttemptKey, list[RankProcess]] = {}
            for k, p in self._ranks.items():
                by_attempt.setdefault(k[:2], []).append(p)
            for key, procs in by_attempt.items():
                if all(p.ended and (p.ended_at or now) < now - self.keep_ended_s for p in procs):
                    for p in procs:
                        self._ranks.pop((key[0], key[1], p.spec.rank), None)
                    self._pgs.pop(key, None)
                    self._masters.pop(key, None)
            for key in [k for k, (_, at) in self._stopped.items() if at < now - self.keep_ended_s]:
                del self._stopped[key]
