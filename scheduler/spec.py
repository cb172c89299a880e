"""The job spec a tenant submits (YAML or JSON), validated by the same pydantic models the core uses.

A spec says what to run and what it needs; the API adds who submitted it and when, and turns it into the core's
:class:`~scheduler.model.Job` with :meth:`JobSpec.to_job`::

    >>> spec = JobSpec.model_validate({
    ...     "name": "resnet-ddp", "workers": 2, "devices_per_worker": 4, "job_class": "cv-train",
    ...     "entrypoint": "python train.py --epochs 3", "walltime_s": 3600,
    ...     "checkpoint": {"path": "/ckpt/resnet", "interval_s": 600},
    ... })
    >>> job = spec.to_job("job-1", tenant="acme", user="alice", queue="acme", submit_time=0.0)
    >>> (job.workers, job.total_devices, job.runtime_s)
    (2, 8.0, 3600.0)

Inference services may ask for a fraction of one device per replica (``devices_per_worker: 0.25``) and carry a
latency SLO; training gangs ask for whole devices.

Once submitted, a job moves through the states of :class:`JobState`::

    >>> JobState.PENDING in ACTIVE_STATES, JobState.CANCELLED in TERMINAL_STATES, JobState.RUNNING in HOLDING_STATES
    (True, True, True)
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from scheduler.errors import load_yaml_mapping, parse_yaml_mapping, validate_model
from scheduler.model import (
    MILLI,
    DomesticPreference,
    Job,
    JobKind,
    PriorityClass,
    TopologyLevel,
    priority_by_name,
    topology_by_name,
)
from scheduler.throughput import JobClass

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Variables the executor sets itself; a spec may not override where its workers run or who they are.
RESERVED_ENV = frozenset(
    {
        "RANK",
        "LOCAL_RANK",
        "WORLD_SIZE",
        "MASTER_ADDR",
        "MASTER_PORT",
        "CUDA_VISIBLE_DEVICES",
        "CUDA_DEVICE_ORDER",
        "ASCEND_RT_VISIBLE_DEVICES",
        "MLU_VISIBLE_DEVICES",
        "XPU_VISIBLE_DEVICES",
        "HIP_VISIBLE_DEVICES",
    }
)


class JobState(StrEnum):
    PENDING = "pending"
    STARTING = "starting"
    RUNNING = "running"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATES: frozenset[JobState] = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
ACTIVE_STATES: frozenset[JobState] = frozenset(set(JobState) - TERMINAL_STATES)
#: States that hold devices (a placement).
HOLDING_STATES: frozenset[JobState] = frozenset({JobState.STARTING, JobState.RUNNING, JobState.CANCELLING})


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RuntimeEnv(_Spec):
    """Environment of every worker: variables, working directory and Python packages it needs."""

    env_vars: dict[str, str] = Field(default_factory=dict)
    working_dir: str | None = None
    pip: tuple[str, ...] = ()

    @field_validator("env_vars")
    @classmethod
    def _valid_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not _ENV_NAME.match(name):
                raise ValueError(f"environment variable name {name!r} is not valid (letters, digits, _)")
            if name in RESERVED_ENV or name.startswith("ZHISUAN_"):
                raise ValueError(f"environment variable {name} is set by the scheduler; remove it from the spec")
        return value


class Checkpoint(_Spec):
    """Where a training job keeps checkpoints; a requeued job resumes from the last one."""

    path: str = Field(min_length=1, max_length=1000)
    interval_s: float = Field(default=1800.0, gt=0)


class InferenceSlo(_Spec):
    p99_latency_ms: float = Field(gt=0, le=600_000)


class RateLimit(_Spec):
    """Requests one service key may send: a sustained rate and a burst above it."""

    requests_per_s: float = Field(gt=0, le=1_000_000)
    burst: int = Field(default=0, ge=0, le=10_000_000, description="0: as many as one second's rate")


class Serving(_Spec):
    """An inference service behind one endpoint: replicas the load decides, between ``min_replicas`` and
    ``max_replicas`` (see :mod:`scheduler.serving` for the rule).

    The autoscaler aims at ``target_ongoing_requests`` requests in flight per replica and, with an ``slo``, at a
    p99 latency within it. ``min_replicas: 0`` (scale to zero) needs a ``cold_start_budget_s``: how long the
    first request after an idle spell may wait for a replica to start before it is answered 503.
    A replica takes at most ``max_ongoing_requests`` at once; the router queues at most
    ``max_queued_requests`` more per service and answers 429 beyond that, or when a queued request found no
    free replica within ``queue_timeout_s``.

        >>> Serving(min_replicas=1, max_replicas=4, target_ongoing_requests=2).max_replicas
        4
    """

    min_replicas: int = Field(default=1, ge=0, le=1000)
    max_replicas: int = Field(default=1, ge=1, le=1000)
    target_ongoing_requests: float = Field(default=2.0, gt=0, le=10_000)
    max_ongoing_requests: int = Field(default=8, ge=1, le=100_000)
    max_queued_requests: int = Field(default=64, ge=0, le=1_000_000)
    queue_timeout_s: float = Field(default=5.0, gt=0, le=3600)
    request_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    cold_start_budget_s: float | None = Field(default=None, gt=0, le=3600)
    #: Seconds the load must ask for more (fewer) replicas before the autoscaler adds (removes) one.
    upscale_delay_s: float = Field(default=3.0, ge=0, le=3600)
    downscale_delay_s: float = Field(default=30.0, ge=0, le=24 * 3600)
    #: A service with ``min_replicas: 0`` goes to zero after this long without a request.
    idle_before_zero_s: float = Field(default=300.0, gt=0, le=7 * 24 * 3600)
    health_path: str = Field(default="/healthz", pattern=r"^/[^\s?#]*$", max_length=200)
    #: A replica that has not answered its health route this long after it started is replaced.
    startup_timeout_s: float = Field(default=300.0, gt=0, le=3600)
    #: How long a replica being removed keeps its requests in flight before it is stopped anyway.
    drain_timeout_s: float = Field(default=30.0, ge=0, le=3600)
    #: Requests other than GET/HEAD/OPTIONS/PUT/DELETE are retried on another replica only when they carry an
    #: ``Idempotency-Key`` header, or always when this is set (a model that computes the same answer twice).
    retry_post: bool = False
    rate_limit: RateLimit | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Serving:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) is more than max_replicas ({self.max_replicas}); "
                "raise max_replicas or lower min_replicas"
            )
        if self.target_ongoing_requests > self.max_ongoing_requests:
            raise ValueError(
                f"target_ongoing_requests ({self.target_ongoing_requests:g}) is more than a replica may take "
                f"(max_ongoing_requests {self.max_ongoing_requests}): the target could never be reached; "
                "lower it or raise max_ongoing_requests"
            )
        if self.min_replicas == 0 and self.cold_start_budget_s is None:
            raise ValueError(
                "min_replicas 0 (scale to zero) needs cold_start_budget_s: how long a request may wait for the "
                "first replica to start"
            )
        return self


class JobSpec(_Spec):
    """What a tenant submits. Sizes are per worker (training) or per replica (inference)."""

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    kind: JobKind = JobKind.TRAINING
    workers: int = Field(default=1, ge=1, le=4096, description="training workers, or inference replicas")
    devices_per_worker: float = Field(default=1, ge=0, le=64)
    models: tuple[str, ...] = Field(default=(), description="acceptable accelerator models; empty: any")
    job_class: JobClass = JobClass.GENERIC
    domestic: DomesticPreference = DomesticPreference.ANY
    cpus_per_worker: float = Field(default=1.0, ge=0, le=1024)
    memory_gib_per_worker: float = Field(default=4.0, ge=0, le=16384)
    priority: PriorityClass = PriorityClass.TRAINING
    preemptible: bool = True
    queue: str | None = Field(default=None, min_length=1, max_length=200, description="default: the tenant's")
    entrypoint: str = Field(min_length=1, max_length=10_000, description="shell command line run by every worker")
    runtime_env: RuntimeEnv = Field(default_factory=RuntimeEnv)
    walltime_s: float | None = Field(default=None, gt=0, le=90 * 24 * 3600.0, description="hard limit")
    checkpoint: Checkpoint | None = None
    slo: InferenceSlo | None = None
    #: Served behind one endpoint with autoscaling (``zhisuan services deploy``); ``replicas`` is then the count
    #: to start with.
    serving: Serving | None = None
    topology_required: TopologyLevel = TopologyLevel.POOL
    topology_preferred: TopologyLevel = TopologyLevel.NODE
    labels: dict[str, str] = Field(default_factory=dict)

    _topology_by_name = field_validator("topology_required", "topology_preferred", mode="before")(
        lambda value: topology_by_name(value)
    )
    _priority_by_name = field_validator("priority", mode="before")(lambda value: priority_by_name(value))

    @model_validator(mode="before")
    @classmethod
    def _replicas_alias(cls, data: Any) -> Any:
        # Inference specs read more naturally with "replicas"; both spellings mean the same field.
        if isinstance(data, dict) and "replicas" in data:
            data = dict(data)
            if "workers" in data:
                raise ValueError("give either workers or replicas, not both")
            data["workers"] = data.pop("replicas")
        return data

    @model_validator(mode="after")
    def _consistent(self) -> JobSpec:
        milli = self.devices_per_worker * MILLI
        if self.kind is JobKind.TRAINING and 0 < milli < MILLI:
            raise ValueError("training workers take whole devices; fractions are for inference replicas")
        if self.slo is not None and self.kind is not JobKind.INFERENCE:
            raise ValueError("slo applies to inference services only")
        if self.checkpoint is not None and self.kind is not JobKind.TRAINING:
            raise ValueError("checkpoint applies to training jobs only")
        if self.serving is not None:
            self._servable(self.serving)
        # Let the core's own validation speak for sizes and topology (fractions, levels).
        self.to_job("validation", tenant="validation", user="validation", queue=self.queue or "validation")
        return self

    def _servable(self, serving: Serving) -> None:
        if self.kind is not JobKind.INFERENCE:
            raise ValueError("serving applies to inference services only (kind: inference)")
        if not serving.min_replicas <= self.workers <= serving.max_replicas:
            raise ValueError(
                f"replicas ({self.workers}) must be between serving.min_replicas ({serving.min_replicas}) and "
                f"serving.max_replicas ({serving.max_replicas}): it is the count a service starts with"
            )
        if self.walltime_s is not None:
            raise ValueError("walltime_s does not apply to a served service (its replicas run until scaled in)")
        if self.slo is not None and self.slo.p99_latency_ms > serving.request_timeout_s * 1000:
            raise ValueError(
                f"slo.p99_latency_ms ({self.slo.p99_latency_ms:g}) is longer than serving.request_timeout_s "
                f"({serving.request_timeout_s:g} s): requests are cut off before the SLO could be missed; raise "
                "request_timeout_s or tighten the SLO"
            )

    def to_job(self, job_id: str, *, tenant: str, user: str, queue: str, submit_time: float = 0.0) -> Job:
        """The core's view of this spec: sizes, constraints, priority and runtime estimate."""
        return Job(
            id=job_id,
            tenant=tenant,
            queue=queue,
            user=user,
            kind=self.kind,
            job_class=self.job_class,
            workers=self.workers,
            devices_per_worker=self.devices_per_worker,
            cpu_milli_per_worker=round(self.cpus_per_worker * 1000),
            memory_mib_per_worker=round(self.memory_gib_per_worker * 1024),
            models=self.models,
            domestic=self.domestic,
            priority=self.priority,
            preemptible=self.preemptible,
            submit_time=submit_time,
            runtime_s=self.walltime_s,
            topology_required=self.topology_required,
            topology_preferred=self.topology_preferred,
            labels=self.labels,
        )


def parse_spec(text: str, source: str = "<spec>") -> JobSpec:
    """Parse a YAML or JSON job spec; any problem is a :class:`ConfigError` that says where and what to fix.

    >>> parse_spec("name: x\\nentrypoint: echo hi\\nworkers: 0")
    Traceback (most recent call last):
    ...
    scheduler.errors.ConfigError: <spec>: workers: Input should be greater than or equal to 1 (got 0)
    """
    return validate_model(JobSpec, parse_yaml_mapping(text, source), source)


def load_spec(path: str | Path) -> JobSpec:
    """Read a job spec file (YAML or JSON)."""
    return validate_model(JobSpec, load_yaml_mapping(path), path)
