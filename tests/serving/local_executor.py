"""An executor that runs each worker as a real process on this machine (for the serving tests without Ray).

It keeps the :class:`~scheduler.live.executors.base.Executor` contract the way the Ray executor does — launches
idempotent per ``(job, attempt)``, the worker's environment (rank, world size, ``ZHISUAN_*``, the device
visibility of the node the core chose), logs per rank, SIGTERM then SIGKILL on stop — but every "node" is this
machine. :meth:`LocalProcessExecutor.kill` sends a signal to one worker (a crash, or SIGSTOP for a hang).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from scheduler.live.executors.base import ExecutionStatus, ExecutorError, LaunchRequest, LogChunk, Phase, WorkerStatus


@dataclass
class _Run:
    request: LaunchRequest
    procs: list[subprocess.Popen[bytes]]
    logs: list[Path]
    stopped: str | None = None
    stopping: list[threading.Thread] = field(default_factory=list)


class LocalProcessExecutor:
    def __init__(self, log_dir: Path, cwd: Path, stop_grace_s: float = 5.0) -> None:
        self.log_dir = log_dir
        self.cwd = cwd
        self.stop_grace_s = stop_grace_s
        self._runs: dict[str, _Run] = {}
        self._lock = threading.Lock()
        self.launched: list[tuple[str, int]] = []

    def launch(self, req: LaunchRequest) -> None:
        with self._lock:
            run = self._runs.get(req.job_id)
            if run is not None and run.request.attempt == req.attempt:
                return
            if run is not None:
                self._stop(run, "superseded")
            procs, logs = [], []
            for rank, worker in enumerate(req.placement.workers):
                path = self.log_dir / req.job_id / str(req.attempt) / f"rank-{rank}.log"
                path.parent.mkdir(parents=True, exist_ok=True)
                env = {
                    **os.environ,
                    **req.env,
                    "RANK": str(rank),
                    "WORLD_SIZE": str(req.world_size),
                    "ZHISUAN_JOB_ID": req.job_id,
                    "ZHISUAN_ATTEMPT": str(req.attempt),
                    "ZHISUAN_KIND": req.kind.value,
                    "ZHISUAN_NODE": worker.node,
                    "ZHISUAN_NODE_IP": "127.0.0.1",
                    "ZHISUAN_MODEL": req.placement.model,
                    "ZHISUAN_DEVICE_MILLI": str(worker.milli),
                    "CUDA_VISIBLE_DEVICES": ",".join(map(str, worker.devices)),
                }
                with path.open("wb") as out:
                    procs.append(
                        subprocess.Popen(
                            req.entrypoint,
                            shell=True,
                            cwd=req.working_dir or self.cwd,
                            env=env,
                            stdout=out,
                            stderr=subprocess.STDOUT,
                            start_new_session=True,
                        )
                    )
                logs.append(path)
            self._runs[req.job_id] = _Run(req, procs, logs)
            self.launched.append((req.job_id, req.attempt))

    def kill(self, job_id: str, sig: int = signal.SIGKILL, rank: int = 0) -> int:
        """Send ``sig`` to one worker's process group; its pid."""
        proc = self._runs[job_id].procs[rank]
        os.killpg(proc.pid, sig)
        return proc.pid

    def status(self, job_id: str) -> ExecutionStatus | None:
        run = self._runs.get(job_id)
        return None if run is None else self._status(run)

    def poll(self) -> list[ExecutionStatus]:
        with self._lock:
            runs = list(self._runs.values())
        return [self._status(run) for run in runs]

    def stop(self, job_id: str, reason: str) -> None:
        with self._lock:
            run = self._runs.get(job_id)
            if run is not None:
                self._stop(run, reason)

    def _stop(self, run: _Run, reason: str) -> None:
        if run.stopped is not None:
            return
        run.stopped = reason
        for proc in run.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                    os.killpg(proc.pid, signal.SIGCONT)  # a stopped (hung) process gets its SIGTERM too
                thread = threading.Thread(target=self._reap, args=(proc,), daemon=True)
                thread.start()
                run.stopping.append(thread)

    def _reap(self, proc: subprocess.Popen[bytes]) -> None:
        try:
            proc.wait(self.stop_grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._runs.pop(job_id, None)

    def read_logs(self, job_id: str, rank: int, offset: int = 0, limit: int = 65536) -> LogChunk:
        run = self._runs.get(job_id)
        if run is None or rank >= len(run.logs):
            raise ExecutorError(f"unknown job {job_id!r} or rank {rank}")
        with run.logs[rank].open("rb") as f:
            f.seek(offset)
            data = f.read(limit)
        text = data.decode(errors="ignore")
        return LogChunk(job_id, run.request.attempt, rank, offset, text, offset + len(data))

    def discover(self) -> set[tuple[str, int]]:
        return {(j, r.request.attempt) for j, r in self._runs.items() if r.stopped is None}

    def close(self) -> None:
        """Stop every worker (the tests own these processes)."""
        with self._lock:
            runs = list(self._runs.values())
            for run in runs:
                self._stop(run, "executor closed")
        for run in runs:
            for thread in run.stopping:
                thread.join(self.stop_grace_s + 5)

    def _status(self, run: _Run) -> ExecutionStatus:
        req = run.request
        workers = []
        for rank, (proc, worker) in enumerate(zip(run.procs, req.placement.workers, strict=True)):
            code = proc.poll()
            if code is None:
                phase = Phase.RUNNING
            elif run.stopped is not None:
                phase = Phase.STOPPED
            else:
                phase = Phase.SUCCEEDED if code == 0 else Phase.FAILED
            workers.append(WorkerStatus(rank, worker.node, phase, exit_code=code))
        phases = {w.phase for w in workers}
        if run.stopped is not None:
            phase, message = Phase.STOPPED, run.stopped
        elif Phase.FAILED in phases:
            phase, message = Phase.FAILED, "a worker failed"
            for proc, w in zip(run.procs, workers, strict=True):
                if w.phase is Phase.RUNNING:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
        elif phases == {Phase.SUCCEEDED}:
            phase, message = Phase.SUCCEEDED, "succeeded"
        else:
            phase, message = Phase.RUNNING, ""
        return ExecutionStatus(req.job_id, req.attempt, phase, tuple(workers), message)


def wait_until(check: object, timeout_s: float = 30.0, poll_s: float = 0.05, what: str = "condition") -> None:
    """Poll ``check()`` until it is true."""
    assert callable(check)
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(poll_s)
