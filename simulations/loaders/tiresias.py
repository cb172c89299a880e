"""Tiresias (NSDI '19) simulator inputs: a job list and a cluster spec.

Jobs: ``job_id, num_gpu, submit_time, duration`` (plus ``iterations, model_name, interval``, kept as nothing
more than the class hint). Cluster: ``num_switch, num_node_p_switch, num_gpu_p_node, num_cpu_p_node,
mem_p_node`` (memory in GB). Tiresias does not say which GPU model it simulated; the cluster uses
``model`` (default V100) and the durations are not scaled.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from scheduler.catalog import Catalog
from scheduler.model import Node
from scheduler.throughput import JobClass
from simulations.loaders.base import (
    CsvRows,
    RowSkip,
    SkipReport,
    TraceError,
    gang_shape,
    integer,
    number,
    open_text,
)
from simulations.schema import TraceJob

if TYPE_CHECKING:
    from simulations.loaders import LoadOptions

JOB_COLUMNS = ("job_id", "num_gpu", "submit_time", "duration")
CLUSTER_COLUMNS = ("num_switch", "num_node_p_switch", "num_gpu_p_node", "num_cpu_p_node", "mem_p_node")


def read_jobs(path: Path, report: SkipReport, options: LoadOptions) -> Iterator[TraceJob]:
    with open_text(path) as handle:
        rows = CsvRows(handle, path, JOB_COLUMNS)
        for line, row in rows:
            report.rows += 1
            try:
                gpus = integer(row, "num_gpu", minimum=1)
                workers, per_worker = gang_shape(gpus, options.max_devices_per_worker)
                name = row.get("model_name", "").lower()
                yield TraceJob(
                    id=f"tiresias-{row['job_id'].strip()}",
                    submit_time=number(row, "submit_time", minimum=0),
                    duration_s=number(row, "duration", minimum=0),
                    workers=workers,
                    devices_per_worker=float(per_worker),
                    job_class=JobClass.CV_TRAIN if name else JobClass.GENERIC,
                    row=line,
                )
            except RowSkip as skip:
                report.skip(skip.reason, path, line, skip.column)


def read_cluster(path: Path, catalog: Catalog, model: str = "V100") -> list[Node]:
    """Expand the one-row spec into nodes, ``num_node_p_switch`` per switch."""
    entry = catalog.lookup(model)
    if entry is None:
        raise TraceError(path, f"unknown accelerator model {model!r} for the Tiresias cluster")
    with open_text(path) as handle:
        rows = list(CsvRows(handle, path, CLUSTER_COLUMNS))
    if not rows:
        raise TraceError(path, "the cluster spec has no data row", 2)
    line, row = rows[0]
    try:
        switches = integer(row, "num_switch", minimum=1)
        per_switch = integer(row, "num_node_p_switch", minimum=1)
        gpus = integer(row, "num_gpu_p_node", minimum=0)
        cpus = number(row, "num_cpu_p_node", minimum=0)
        mem = number(row, "mem_p_node", minimum=0)
    except RowSkip as skip:
        raise TraceError(path, skip.reason, line, skip.column) from None
    return [
        Node(
            id=f"tiresias-s{s}-n{n:03d}",
            model=entry.model,
            devices=gpus,
            cpu_milli=round(cpus * 1000),
            memory_mib=round(mem * 1024),
            switch=f"tiresias-s{s}",
        )
        for s in range(switches)
        for n in range(per_switch)
    ]
