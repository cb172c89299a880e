"""Alibaba cluster-trace-gpu-v2023 "openb": node lists and pod lists.

Pods: ``name, cpu_milli, memory_mib, num_gpu, gpu_milli`` are required; ``gpu_spec`` (allowed models joined by
``|``), ``qos``, ``pod_phase``, ``creation_time``, ``deletion_time`` and ``scheduled_time`` are optional (some
published variants drop them). A pod with ``num_gpu == 1`` asks for ``gpu_milli`` of one GPU; ``num_gpu > 1``
asks for whole GPUs; ``num_gpu == 0`` for none. Without times a pod has ``submit_time = 0`` and
``duration_s = 0``: fine for the packing experiment, skipped (and counted) by the timeline replay.

``qos`` LS (latency-sensitive) pods become inference services at production-inference priority, BE pods
best-effort, the rest training. The duration is ``deletion_time - creation_time``; the model a pod ran on is not
published, so durations are not scaled (``duration_model`` stays empty).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from scheduler.catalog import Catalog
from scheduler.model import MILLI, JobKind, Node, PriorityClass
from simulations.loaders.base import CsvRows, RowSkip, SkipReport, integer, number, open_text
from simulations.schema import TraceJob

if TYPE_CHECKING:
    from simulations.loaders import LoadOptions

POD_COLUMNS = ("name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli")
NODE_COLUMNS = ("sn", "cpu_milli", "memory_mib", "gpu", "model")

_QOS = {
    "LS": (JobKind.INFERENCE, PriorityClass.PRODUCTION_INFERENCE),
    "BE": (JobKind.TRAINING, PriorityClass.BEST_EFFORT),
    "BURSTABLE": (JobKind.TRAINING, PriorityClass.TRAINING),
    "GUARANTEED": (JobKind.TRAINING, PriorityClass.TRAINING),
    "": (JobKind.TRAINING, PriorityClass.TRAINING),
}


def resolve_models(spec: str, catalog: Catalog) -> tuple[str, ...]:
    """Catalog model ids for a ``|``-joined list of trace names; unknown names are dropped, all-unknown skips."""
    names = [n.strip() for n in spec.split("|") if n.strip()]
    models: list[str] = []
    for name in names:
        entry = catalog.lookup(name)
        if entry is not None and entry.model not in models:
            models.append(entry.model)
    if names and not models:
        raise RowSkip("unknown accelerator model", "gpu_spec")
    return tuple(models)


def read_pods(path: Path, report: SkipReport, options: LoadOptions) -> Iterator[TraceJob]:
    catalog = options.resolved_catalog()
    with open_text(path) as handle:
        rows = CsvRows(handle, path, POD_COLUMNS)
        timed = rows.has("creation_time") and rows.has("deletion_time")
        for line, row in rows:
            report.rows += 1
            try:
                yield _pod(row, line, catalog, timed)
            except RowSkip as skip:
                report.skip(skip.reason, path, line, skip.column)


def _pod(row: dict[str, str], line: int, catalog: Catalog, timed: bool) -> TraceJob:
    name = row["name"].strip()
    if not name:
        raise RowSkip("missing name", "name")
    num_gpu = integer(row, "num_gpu", minimum=0)
    gpu_milli = integer(row, "gpu_milli", default=0, minimum=0)
    if num_gpu == 1:
        if not 0 < gpu_milli <= MILLI:
            raise RowSkip("gpu_milli out of range (1-1000)", "gpu_milli")
        devices = gpu_milli / MILLI
    else:
        devices = float(num_gpu)
    submit, duration = 0.0, 0.0
    if timed:
        submit = number(row, "creation_time", minimum=0)
        end = number(row, "deletion_time", default=submit)
        duration = end - submit
        if duration < 0:
            raise RowSkip("negative duration", "deletion_time")
    qos = row.get("qos", "").strip()
    kind, priority = _QOS.get(qos.upper(), _QOS[""])
    return TraceJob(
        id=name,
        submit_time=submit,
        duration_s=duration,
        workers=1,
        devices_per_worker=devices,
        cpu_milli_per_worker=integer(row, "cpu_milli", minimum=0),
        memory_mib_per_worker=integer(row, "memory_mib", minimum=0),
        models=resolve_models(row.get("gpu_spec", ""), catalog),
        kind=kind,
        priority=priority,
        preemptible=qos.upper() != "LS",
        status=row.get("pod_phase", "").strip(),
        row=line,
    )


def read_nodes(path: Path, report: SkipReport, catalog: Catalog) -> list[Node]:
    """Accelerator nodes of an openb node list; CPU-only nodes are skipped and counted.

    The core places device-less jobs on accelerator pools only (it has no CPU-only pool), so CPU-only nodes
    could never receive work.
    """
    nodes: list[Node] = []
    with open_text(path) as handle:
        rows = CsvRows(handle, path, NODE_COLUMNS)
        for line, row in rows:
            report.rows += 1
            try:
                gpus = integer(row, "gpu", minimum=0)
                name = row["model"].strip()
                if gpus == 0 or not name:
                    raise RowSkip("CPU-only node (no accelerator pool to join)", "gpu")
                entry = catalog.lookup(name)
                if entry is None:
                    raise RowSkip("unknown accelerator model", "model")
                nodes.append(
                    Node(
                        id=row["sn"].strip(),
                        model=entry.model,
                        devices=gpus,
                        cpu_milli=integer(row, "cpu_milli", minimum=0),
                        memory_mib=integer(row, "memory_mib", minimum=0),
                    )
                )
            except RowSkip as skip:
                report.skip(skip.reason, path, line, skip.column)
    return nodes
