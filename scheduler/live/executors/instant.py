"""An executor that runs nothing: every launch is accepted at once and its workers "run" on a clock.

It keeps the :class:`~scheduler.live.executors.base.Executor` contract exactly (idempotent launches per
``(job, attempt)``, gang phases, poll until stopped, forget), so the scheduler service can be driven at center
scale without Ray (``benchmarks/scale.py``), without a database (with
:class:`~scheduler.live.memory_store.MemoryStore`), or on the simulator's virtual clock. A job's run ends after
``runtime(request)`` seconds of the given clock (None: it runs until stopped)::

    >>> from scheduler.model import Placement, TopologyLevel, WorkerPlacement
    >>> now = [0.0]
    >>> ex = InstantExecutor(clock=lambda: now[0], runtime=lambda req: 60.0)
    >>> p = Placement("j1", "H100", "bj1/H100", (WorkerPlacement("gpu-01", (0,), 1000),), TopologyLevel.NODE)
    >>> ex.launch(LaunchRequest("j1", 0, p, "python train.py"))
    >>> ex.status("j1").phase.value
    'running'
    >>> now[0] = 61.0
    >>> ex.status("j1").phase.value
    'succeeded'
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from dataclasses import dataclass

from scheduler.live.executors.base import (
    ExecutionStatus,
    ExecutorError,
    LaunchRequest,
    LogChunk,
    Phase,
    WorkerStatus,
)


@dataclass
class _Run:
    request: LaunchRequest
    started_at: float
    ends_at: float | None
    stopped: str | None = None
    #: The status as of the run's last change of phase (a run changes phase at most twice).
    status: ExecutionStatus | None = None


class InstantExecutor:
    """Launches are accepted instantly; a run succeeds ``runtime(request)`` clock-seconds after its launch.

    A poll costs O(runs that changed) plus a copy of the list: statuses are built when a run changes phase, and
    the runs due to end wait in a heap (the service polls every cycle, with 10,000s of runs at center scale).
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        runtime: Callable[[LaunchRequest], float | None] = lambda request: None,
    ) -> None:
        self.clock = clock
        self.runtime = runtime
        self._runs: dict[str, _Run] = {}
        #: (end, job id, attempt) of every run that ends by itself, earliest first (stale entries are skipped).
        self._ends: list[tuple[float, str, int]] = []
        #: Every (job, attempt) ever launched, in order (what a benchmark or test checks nothing ran twice with).
        self.launched: list[tuple[str, int]] = []

    def launch(self, req: LaunchRequest) -> None:
        run = self._runs.get(req.job_id)
        if run is not None and run.request.attempt == req.attempt:
            return
        if run is not None and run.request.attempt > req.attempt:
            raise ExecutorError(
                f"{req.job_id}: attempt {req.attempt} is older than running attempt {run.request.attempt}"
            )
        now = self.clock()
        runtime = self.runtime(req)
        run = self._runs[req.job_id] = _Run(req, now, None if runtime is None else now + runtime)
        run.status = self._status(run, now)
        if run.ends_at is not None:
            heapq.heappush(self._ends, (run.ends_at, req.job_id, req.attempt))
        self.launched.append((req.job_id, req.attempt))

    def status(self, job_id: str) -> ExecutionStatus | None:
        self._advance(self.clock())
        run = self._runs.get(job_id)
        return None if run is None else run.status

    def poll(self) -> list[ExecutionStatus]:
        self._advance(self.clock())
        return [run.status for run in self._runs.values() if run.status is not None]

    def stop(self, job_id: str, reason: str) -> None:
        now = self.clock()
        self._advance(now)
        run = self._runs.get(job_id)
        if run is not None and run.stopped is None and not self._ended(run, now):
            run.stopped = reason
            run.status = self._status(run, now)

    def forget(self, job_id: str) -> None:
        self._runs.pop(job_id, None)

    def read_logs(self, job_id: str, rank: int, offset: int = 0, limit: int = 65536) -> LogChunk:
        run = self._runs.get(job_id)
        if run is None:
            raise ExecutorError(f"unknown job {job_id!r}")
        return LogChunk(job_id, run.request.attempt, rank, offset, "")

    def discover(self) -> set[tuple[str, int]]:
        self._advance(self.clock())
        return {(j, r.request.attempt) for j, r in self._runs.items() if r.status is not None and not r.status.terminal}

    def close(self) -> None:
        """Nothing to release: runs live in this object."""

    def _advance(self, now: float) -> None:
        """Move every run whose end has come to its final status."""
        ends = self._ends
        while ends and ends[0][0] <= now:
            _, job_id, attempt = heapq.heappop(ends)
            run = self._runs.get(job_id)
            if run is not None and run.request.attempt == attempt and run.stopped is None:
                run.status = self._status(run, now)

    def _ended(self, run: _Run, now: float) -> bool:
        return run.ends_at is not None and now >= run.ends_at

    def _status(self, run: _Run, now: float) -> ExecutionStatus:
        req = run.request
        if run.stopped is not None:
            phase, message = Phase.STOPPED, run.stopped
        elif self._ended(run, now):
            phase, message = Phase.SUCCEEDED, "succeeded"
        else:
            phase, message = Phase.RUNNING, ""
        exit_code = 0 if phase is Phase.SUCCEEDED else None
        workers = tuple(
            WorkerStatus(rank, w.node, phase, exit_code=exit_code) for rank, w in enumerate(req.placement.workers)
        )
        return ExecutionStatus(req.job_id, req.attempt, phase, workers, message)
