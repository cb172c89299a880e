"""Job files: a list of jobs validated against the catalog and, optionally, against a cluster.

    # seeds/examples/demo-jobs.yaml
    jobs:
      - {id: llama-pretrain, tenant: acme, workers: 4, devices_per_worker: 8, job_class: llm-pretrain}
      - {id: chat-svc, tenant: acme, kind: inference, workers: 3, devices_per_worker: 0.5}

    >>> from scheduler.jobfile import load_jobs
    >>> jobs = load_jobs("seeds/examples/demo-jobs.yaml")
    >>> jobs[0].id
    'llama-pretrain'

A job that names an unknown model, or asks for more devices per worker than any node of its acceptable models
has, is rejected with a one-line :class:`~scheduler.errors.ConfigError` naming the file and the job's field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scheduler.catalog import Catalog, load_catalog
from scheduler.errors import ConfigError, load_yaml_mapping, validate_model
from scheduler.model import Job
from scheduler.state import ClusterState
from scheduler.throughput import ThroughputMatrix, load_throughput


def check_job(
    job: Job,
    catalog: Catalog,
    source: str | Path = "<job>",
    field: str = "",
    state: ClusterState | None = None,
    throughput: ThroughputMatrix | None = None,
) -> Job:
    """Resolve model aliases to catalog ids and, given a cluster, check some node could ever host one worker."""
    prefix = f"{field}." if field else ""
    resolved = tuple(
        catalog.resolve(name, source=source, field=f"{prefix}models[{i}]").model for i, name in enumerate(job.models)
    )
    if resolved != job.models:
        job = job.model_copy(update={"models": resolved})
    if state is None:
        return job
    throughput = throughput or load_throughput()
    models = resolved or tuple(throughput.models_for(job.job_class))
    present = [m for m in models if m in state.pools_by_model]
    if not present:
        raise ConfigError(
            source,
            f"{prefix}models",
            f"no pool of {', '.join(models) or 'any model'} exists in this cluster",
            allowed=sorted(state.pools_by_model),
        )
    largest = max(state.max_worker_devices(m) for m in present)
    if job.whole_devices > largest:
        raise ConfigError(
            source,
            f"{prefix}devices_per_worker",
            f"{job.whole_devices} devices per worker exceed the largest node ({largest} devices) of "
            f"{', '.join(present)}; split the work over more workers",
        )
    return job


def parse_jobs(
    data: dict[str, Any],
    source: str | Path = "<jobs>",
    catalog: Catalog | None = None,
    state: ClusterState | None = None,
) -> list[Job]:
    """Validate every job of a ``{jobs: [...]}`` document; nothing is returned unless all are valid."""
    catalog = catalog or load_catalog()
    raw = data.get("jobs")
    if not isinstance(raw, list):
        raise ConfigError(source, "jobs", "expected a list of jobs")
    jobs: list[Job] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        job = validate_model(Job, item, source, prefix=f"jobs[{i}]")
        if job.id in seen:
            raise ConfigError(source, f"jobs[{i}].id", f"duplicate job id {job.id!r}")
        seen.add(job.id)
        jobs.append(check_job(job, catalog, source, f"jobs[{i}]", state))
    return jobs


def load_jobs(path: str | Path, catalog: Catalog | None = None, state: ClusterState | None = None) -> list[Job]:
    return parse_jobs(load_yaml_mapping(path), path, catalog, state)
