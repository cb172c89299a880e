"""The worker actor: one per rank of a job, it runs the job's entrypoint as a subprocess on its node.

This module is imported inside Ray worker processes, so it depends on the standard library and Ray only. The
:class:`~scheduler.executors.ray.RayExecutor` creates one detached, named :class:`ZhisuanWorker` per rank in the
job's placement group; the actor checks that it landed on the node the scheduler chose (the Ray node label
``zhisuan.io/node``), meets rank 0 for the master address, and spawns::

    RANK=1 WORLD_SIZE=2 MASTER_ADDR=10.0.0.7 MASTER_PORT=41234 CUDA_VISIBLE_DEVICES=4,5 ... sh -c "<entrypoint>"

with stdout and stderr appended to one log file per worker. The actor enforces the walltime itself, so a job is
stopped on time even while the scheduler service is down. The pure helpers below are usable without Ray::

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Ray node label carrying the scheduler's node id (declared by the node agent / ``LocalCluster``).
NODE_LABEL = "zhisuan.io/node"
#: Vendor-neutral visibility variable, set on every worker whatever its vendor.
ZHISUAN_VISIBLE_DEVICES = "ZHISUAN_VISIBLE_DEVICES"
WALLTIME_MESSAGE = "exceeded walltime"
TAIL_LINES = 20


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
    entrypoint: str
    log_path: str
    namespace: str
    rank0_actor: str
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
    """In the child before exec: get SIGKILL when the thread that spawned us dies (the actor was killed)."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}"
    return f"exited with code {code}"


# ------------------------------------------------------------------------------------------------- actor


class ZhisuanWorker:
    """One rank of a job. Made a Ray actor by the executor (``ray.remote(ZhisuanWorker)``), threaded."""

    def __init__(self, spec: WorkerSpec) -> None:
        import ray

        self.spec = spec
        self._lock = threading.Lock()
        self._phase = "starting"
        self._message = ""
        self._exit_code: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._start_called = False
        self._spawned = threading.Event()
        self._done = threading.Event()
        self._stop_reason: str | None = None
        self._spawned_at: float | None = None
        self._ended_at: float | None = None
        self._master: tuple[str, int] | None = None
        ctx = ray.get_runtime_context()
        self._labels = {str(k): str(v) for k, v in ctx.get_node_labels().items()}
        self._ray_node_id = ctx.get_node_id()
        self._ip = str(ray.util.get_node_ip_address())  # type: ignore[no-untyped-call]
        self._actual_node = self._labels.get(NODE_LABEL, "")
        if self._actual_node != spec.node_label:
            self._end(
                "failed",
                f"Ray placed rank {spec.rank} on node {self._actual_node or '(unlabelled)'!r}, "
                f"but the scheduler chose {spec.node!r}",
            )
        try:
            Path(spec.log_path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            self._end("failed", f"cannot create the log directory on node {spec.node}: {err}")

    # ---------------------------------------------------------------------------------------- remote API

    def rendezvous(self) -> tuple[str, int]:
        """Rank 0's address and a free port on its node: the job's ``MASTER_ADDR``/``MASTER_PORT``."""
        with self._lock:
            if self._master is None:
                self._master = (self._ip, free_port())
            return self._master

    def start(self) -> dict[str, Any]:
        """Spawn the entrypoint once (later calls only report). Returns :meth:`status`."""
        spec = self.spec
        with self._lock:
            if self._start_called or self._phase != "starting":
                return self._status_locked()
            self._start_called = True
        try:
            master = self._meet_rank0()
        except Exception as err:
            self._end("failed", f"rank {spec.rank} could not reach rank 0 for the master address: {err}")
            return self.status()
        problem = self._setup_problem()
        if problem:
            self._end("failed", problem)
            return self.status()
        env = self._environment(*master)
        thread = threading.Thread(target=self._run, args=(env,), name=f"zhisuan-rank-{spec.rank}", daemon=True)
        thread.start()
        self._spawned.wait(timeout=60)
        return self.status()

    def status(self) -> dict[str, Any]:
        with self._lock:
            return self._status_locked()

    def read_log(self, offset: int, limit: int) -> tuple[str, int]:
        return read_log_file(self.spec.log_path, offset, limit)

    def tail(self, lines: int = TAIL_LINES) -> list[str]:
        return tail_lines(self.spec.log_path, lines)

    def terminate(self, reason: str, wait_s: float | None = None) -> dict[str, Any]:
        """Stop the entrypoint (SIGTERM to its process group, SIGKILL after the grace period)."""
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
        self._done.wait(timeout=self.spec.stop_grace_s + 2 if wait_s is None else wait_s)
        return self.status()

    # ------------------------------------------------------------------------------------------ internals

    def _meet_rank0(self) -> tuple[str, int]:
        import ray

        if self.spec.rank == 0:
            return self.rendezvous()
        deadline = time.monotonic() + self.spec.rendezvous_timeout_s
        while True:
            try:
                rank0 = ray.get_actor(self.spec.rank0_actor, namespace=self.spec.namespace)
                ref: Any = rank0.rendezvous.remote()
                master: Any = ray.get(ref, timeout=max(1.0, deadline - time.monotonic()))
                return str(master[0]), int(master[1])
            except ValueError:  # rank 0 is not registered yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

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
                # From the Ray node label of the node this actor runs on, not from the request: it proves where.
                "ZHISUAN_NODE": self._actual_node,
                "ZHISUAN_RAY_NODE_ID": self._ray_node_id,
                "ZHISUAN_NODE_IP": self._ip,
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

    def _run(self, env: dict[str, str]) -> None:
        spec = self.spec
        shell = shutil.which("bash") or "/bin/sh"
        try:
            with open(spec.log_path, "ab") as log, self._lock:
                if self._stop_reason is not None:  # stopped before it could start
                    self._phase, self._message, self._ended_at = "stopped", self._stop_reason, time.time()
                    self._done.set()
                    return
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
        except OSError as err:
            self._end("failed", f"cannot start the entrypoint on node {spec.node}: {err}")
            return
        finally:
            self._spawned.set()
        deadline = None if spec.walltime_s is None else time.monotonic() + spec.walltime_s
        while True:
            try:
                code = proc.wait(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
                break
            except subprocess.TimeoutExpired:
                deadline = None
                self.terminate(f"{WALLTIME_MESSAGE} ({spec.walltime_s:g} s)", wait_s=0)
        self._signal_group(proc, signal.SIGKILL)  # leftovers of the group (background children)
        with self._lock:
            stop_reason = self._stop_reason
        if stop_reason is not None:
            self._end("stopped", stop_reason, code)
        elif code == 0:
            self._end("succeeded", "exited with code 0", code)
        else:
            self._end("failed", _describe_exit(code), code)

    @staticmethod
    def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)

    def _end(self, phase: str, message: str, code: int | None = None) -> None:
        with self._lock:
            if self._phase in ("starting", "running"):
                self._phase, self._message, self._exit_code = phase, message, code
                self._ended_at = time.time()
        self._done.set()

    def _status_locked(self) -> dict[str, Any]:
        spec = self.spec
        terminal = self._phase not in ("starting", "running")
        return {
            "rank": spec.rank,
            "node": self._actual_node or spec.node,
            "phase": self._phase,
            "exit_code": self._exit_code,
            "message": self._message,
            "pid": self._proc.pid if self._proc is not None else None,
            "ray_node_id": self._ray_node_id,
            "labels": dict(self._labels),
            "spawned_at": self._spawned_at,
            "ended_at": self._ended_at,
            "log_path": spec.log_path,
            "tail": tail_lines(spec.log_path) if terminal else [],
        }
