"""The native job schema every trace loader produces, and its CSV form.

One row is one job as submitted: when it arrived, what it asked for and how long it ran where it was measured.
The columns (only the first three are required; see ``simulations/README.md``)::

    id,submit_time,duration_s,workers,devices_per_worker,cpu_milli_per_worker,memory_mib_per_worker,models,
    duration_model,tenant,user,queue,kind,job_class,priority,preemptible,checkpoint_interval_s,slo_wait_s,status

    >>> from simulations.schema import TraceJob
    >>> job = TraceJob(id="j1", submit_time=0.0, duration_s=600.0, devices_per_worker=0.5, models=("T4",))
    >>> job.device_milli, job.gpu_request_milli
    (500, 500)
    >>> job.to_job().devices_per_worker
    0.5

**Duration scaling rule.** ``duration_s`` was measured on ``duration_model``. On the model ``M`` the job lands on,
it runs ``duration_s × rel(duration_model) / rel(M)`` where ``rel`` is the throughput matrix's relative
throughput for the job's class (A100 = 1.0). When the trace does not say where the duration was measured
(``duration_model`` empty) the duration is used unscaled on every model: guessing an origin would invent speed-ups.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from scheduler.model import MILLI, Job, JobKind, PriorityClass
from scheduler.throughput import JobClass, ThroughputMatrix

NATIVE_COLUMNS = (
    "id",
    "submit_time",
    "duration_s",
    "workers",
    "devices_per_worker",
    "cpu_milli_per_worker",
    "memory_mib_per_worker",
    "models",
    "duration_model",
    "tenant",
    "user",
    "queue",
    "kind",
    "job_class",
    "priority",
    "preemptible",
    "checkpoint_interval_s",
    "slo_wait_s",
    "status",
)
REQUIRED_NATIVE_COLUMNS = ("id", "submit_time", "duration_s")

_PRIORITY_NAMES = {p.name.lower().replace("_", "-"): p for p in PriorityClass}


@dataclass(slots=True)
class TraceJob:
    """One job of a trace in the native schema (times in seconds from the trace origin)."""

    id: str
    submit_time: float
    duration_s: float
    workers: int = 1
    devices_per_worker: float = 1.0
    cpu_milli_per_worker: int = 0
    memory_mib_per_worker: int = 0
    models: tuple[str, ...] = ()
    duration_model: str = ""
    tenant: str = "default"
    user: str = "default"
    queue: str = "default"
    kind: JobKind = JobKind.TRAINING
    job_class: JobClass = JobClass.GENERIC
    priority: PriorityClass = PriorityClass.TRAINING
    preemptible: bool = True
    checkpoint_interval_s: float = 0.0
    slo_wait_s: float = 0.0
    status: str = ""
    #: The job's name as the trace gives it (Helios' ``job_name``, ...): what QSSF groups history by.
    name: str = ""
    #: What the core is told the job will run, in reference seconds (a user's walltime); 0: the duration.
    estimate_s: float = 0.0
    #: Line of the source file the job came from (for error messages); 0 when generated.
    row: int = field(default=0, compare=False)

    @property
    def device_milli(self) -> int:
        """Milli-devices per worker (1000 = one whole device)."""
        return round(self.devices_per_worker * MILLI)

    @property
    def gpu_request_milli(self) -> int:
        """Total accelerator request in milli-devices (the FGD experiment's arrival measure)."""
        return self.device_milli * self.workers

    def reference_runtime(self, throughput: ThroughputMatrix) -> float:
        """Runtime in reference-model seconds when the origin is known, else the measured duration."""
        if self.duration_model:
            rel = throughput.relative(self.duration_model, self.job_class)
            if rel > 0:
                return self.duration_s * rel
        return self.duration_s

    def duration_on(self, model: str, throughput: ThroughputMatrix) -> float:
        """Seconds this job runs on ``model`` (the module's scaling rule)."""
        if not self.duration_model or model == self.duration_model:
            return self.duration_s
        origin = throughput.relative(self.duration_model, self.job_class)
        here = throughput.relative(model, self.job_class)
        if origin <= 0 or here <= 0:
            return self.duration_s
        return self.duration_s * origin / here

    def to_job(
        self, throughput: ThroughputMatrix | None = None, job_id: str | None = None, runtime: bool = True
    ) -> Job:
        """The core's :class:`~scheduler.model.Job` for this row (validated by the core's own model); without
        ``runtime`` the core is not told how long it runs."""
        seconds = self.reference_runtime(throughput) if throughput is not None else self.duration_s
        return Job(
            id=job_id or self.id,
            tenant=self.tenant,
            queue=self.queue,
            user=self.user,
            kind=self.kind,
            job_class=self.job_class,
            workers=self.workers,
            devices_per_worker=self.devices_per_worker,
            cpu_milli_per_worker=self.cpu_milli_per_worker,
            memory_mib_per_worker=self.memory_mib_per_worker,
            models=self.models,
            priority=self.priority,
            preemptible=self.preemptible,
            submit_time=max(self.submit_time, 0.0),
            runtime_s=(self.estimate_s or seconds) if runtime and seconds > 0 else None,
            labels={"name": self.name} if self.name else {},
        )


def parse_priority(value: str) -> PriorityClass:
    """``'training'``, ``'best-effort'`` … or an integer class value."""
    text = value.strip().lower()
    if text in _PRIORITY_NAMES:
        return _PRIORITY_NAMES[text]
    return PriorityClass(int(text))


def parse_bool(value: str) -> bool:
    text = value.strip().lower()
    if text in ("1", "true", "yes", "y", "t"):
        return True
    if text in ("0", "false", "no", "n", "f"):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def _num(value: float) -> str:
    # Integers print without a trailing ".0" so that files stay small and diff cleanly.
    if math.isfinite(value) and value == int(value):
        return str(int(value))
    return repr(value)


def native_row(job: TraceJob) -> list[str]:
    """The CSV cells of one job, in :data:`NATIVE_COLUMNS` order."""
    return [
        job.id,
        _num(job.submit_time),
        _num(job.duration_s),
        str(job.workers),
        _num(job.devices_per_worker),
        str(job.cpu_milli_per_worker),
        str(job.memory_mib_per_worker),
        "|".join(job.models),
        job.duration_model,
        job.tenant,
        job.user,
        job.queue,
        job.kind.value,
        job.job_class.value,
        job.priority.name.lower().replace("_", "-"),
        "true" if job.preemptible else "false",
        _num(job.checkpoint_interval_s),
        _num(job.slo_wait_s),
        job.status,
    ]


def write_native(jobs: Iterable[TraceJob], out: Path | TextIO) -> int:
    """Write jobs as native CSV (streaming); returns how many rows were written.

    >>> import io
    >>> buf = io.StringIO()
    >>> write_native([TraceJob(id="a", submit_time=1, duration_s=2)], buf)
    1
    >>> buf.getvalue().splitlines()[1]
    'a,1,2,1,1,0,0,,,default,default,default,training,generic,training,true,0,0,'
    """
    if isinstance(out, Path):
        with out.open("w", newline="", encoding="utf-8") as handle:
            return write_native(jobs, handle)
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(NATIVE_COLUMNS)
    count = 0
    for job in jobs:
        writer.writerow(native_row(job))
        count += 1
    return count


def iter_rows(jobs: Iterable[TraceJob]) -> Iterator[list[str]]:
    for job in jobs:
        yield native_row(job)
