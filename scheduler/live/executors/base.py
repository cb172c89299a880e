"""The executor interface: how the scheduler service runs the core's decisions on real machines.

The service turns a START decision into a :class:`LaunchRequest` and hands it to an :class:`Executor`; from then
on it only polls. An executor is level-triggered like the service: everything it knows lives on the cluster (not
in the executor object), so a re-created executor finds what an earlier one launched::

    >>> from scheduler.model import Placement, TopologyLevel, WorkerPlacement
    >>> placement = Placement("job-1", "H100", "bj1/H100", (WorkerPlacement("gpu-01", (0, 1), 1000),),
    ...                       TopologyLevel.NODE)
    >>> req = LaunchRequest("job-1", 0, placement, "python train.py", walltime_s=3600)
    >>> req.world_size, req.kind.value
    (1, 'training')
    >>> ExecutionStatus("job-1", 0, Phase.FAILED, (), "rank 0 exited with code 3").terminal
    True

``launch`` is idempotent per ``(job_id, attempt)``; a new attempt of a job (a retry, a requeue after
preemption) gets a new attempt number and never reuses an old one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, runtime_checkable

from scheduler.model import JobKind, Placement


class Phase(StrEnum):
    """Where a job (or one worker of it) is. The last four are terminal."""

    STARTING = "starting"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"
    LOST = "lost"

    @property
    def terminal(self) -> bool:
        return self not in (Phase.STARTING, Phase.RUNNING)


@dataclass(frozen=True, slots=True)
class LaunchRequest:
    """Everything an executor needs to run one attempt of a job on the nodes and devices the core chose.

    ``env`` is added to every worker's environment; the executor's own variables (rank, master address, device
    visibility, ``ZHISUAN_*``) win over it. ``working_dir`` is a directory that exists on the nodes (a shared
    file system or the node image); ``pip`` lists requirements (``"torch>=2"``) the workers' Python must have.
    """

    job_id: str
    attempt: int
    placement: Placement
    entrypoint: str
    env: dict[str, str] = field(default_factory=dict)
    working_dir: str | None = None
    pip: tuple[str, ...] = ()
    walltime_s: float | None = None
    checkpoint_path: str | None = None
    kind: JobKind = JobKind.TRAINING

    def __post_init__(self) -> None:
        if self.placement.job_id != self.job_id:
            raise ValueError(f"placement is for job {self.placement.job_id!r}, not {self.job_id!r}")
        if self.attempt < 0:
            raise ValueError(f"attempt must be >= 0, got {self.attempt}")
        if not self.placement.workers:
            raise ValueError("placement has no workers")
        if not self.entrypoint.strip():
            raise ValueError("entrypoint is empty")
        if self.walltime_s is not None and self.walltime_s <= 0:
            raise ValueError(f"walltime_s must be > 0, got {self.walltime_s}")

    @property
    def world_size(self) -> int:
        return len(self.placement.workers)


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """One worker (rank) of a job: the node it runs on and how its process is doing."""

    rank: int
    node: str
    phase: Phase
    exit_code: int | None = None
    message: str = ""
    #: False when the worker failed in its own setup (see :class:`ExecutionStatus`).
    retryable: bool = True


@dataclass(frozen=True, slots=True)
class ExecutionStatus:
    """One attempt of a job as the cluster sees it now.

    The job's phase folds its workers' phases, gang-style: one lost worker makes the job ``lost``, one failed
    worker makes it ``failed`` (the others are stopped), walltime makes it ``stopped``; it has ``succeeded``
    only when every worker exited 0. ``last_log_lines`` are the tail of the worker that decided the phase.
    """

    job_id: str
    attempt: int
    phase: Phase
    workers: tuple[WorkerStatus, ...] = ()
    message: str = ""
    last_log_lines: tuple[str, ...] = ()
    #: False when a retry would fail the same way (a missing runtime-env package or working directory, an
    #: entrypoint that is not there): the service then fails the job at once instead of retrying.
    retryable: bool = True

    @property
    def terminal(self) -> bool:
        return self.phase.terminal


@dataclass(frozen=True, slots=True)
class LogChunk:
    """``text`` is the worker's log from byte ``offset`` up to byte ``next_offset`` (pass it to read on).

    ``next_offset == offset`` means nothing new was written yet. A chunk never splits a UTF-8 character.
    """

    job_id: str
    attempt: int
    rank: int
    offset: int
    text: str
    next_offset: int = -1

    def __post_init__(self) -> None:
        if self.next_offset < 0:
            object.__setattr__(self, "next_offset", self.offset + len(self.text.encode()))


class ExecutorError(RuntimeError):
    """A request the executor cannot carry out (unknown job, bad placement)."""


class ExecutorUnavailable(ExecutorError):
    """The cluster behind the executor cannot be reached; retry later (nothing was changed)."""


@runtime_checkable
class Executor(Protocol):
    """What the scheduler service calls. Every method is safe to repeat."""

    def launch(self, req: LaunchRequest) -> None:
        """Start one attempt of a job; launching the same ``(job_id, attempt)`` again does not run it twice."""
        ...

    def status(self, job_id: str) -> ExecutionStatus | None:
        """The newest attempt of a job this executor can find, None when it finds none."""
        ...

    def poll(self) -> list[ExecutionStatus]:
        """Every attempt on the cluster, including ones launched by an earlier executor object."""
        ...

    def stop(self, job_id: str, reason: str) -> None:
        """Stop every attempt of a job, tear down its workers and free its devices. Idempotent."""
        ...

    def forget(self, job_id: str) -> None:
        """Drop the executor's records of a job whose final state the caller has stored."""
        ...

    def read_logs(self, job_id: str, rank: int, offset: int = 0, limit: int = 65536) -> LogChunk:
        """Up to ``limit`` bytes of a worker's combined stdout/stderr, from byte ``offset``."""
        ...

    def discover(self) -> set[tuple[str, int]]:
        """``(job_id, attempt)`` of everything that holds resources on the cluster (for crash reconciliation)."""
        ...

    def close(self) -> None:
        """Release the executor's connection; jobs keep running."""
        ...
