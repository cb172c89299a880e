"""Alibaba cluster-trace-gpu-v2020 (PAI): ``pai_task_table`` (+ ``pai_job_table``) and ``pai_machine_spec``.

The published tables have no header row (the names are in separate ``.header`` files); the loader accepts a
file with or without one. One task becomes one job: ``inst_num`` workers, each asking for ``plan_gpu`` percent
of one GPU (100 = one GPU, 800 = eight), ``plan_cpu`` percent of a core and ``plan_mem`` GB. Tasks without an
end time (still running or waiting when the trace was cut) are skipped and counted.

``gpu_type`` names the model the task ran on: when the catalog knows it, it constrains placement and is the
duration's origin for throughput scaling; ``MISC`` and unknown names leave the job free to run anywhere,
unscaled. With the job table, ``user`` and the job's submit time (its ``start_time``) are used; without it the
task's own start time is the submit time and the user is unknown.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from scheduler.catalog import Catalog
from scheduler.model import MILLI, Node
from simulations.loaders.base import CsvRows, RowSkip, SkipReport, TraceError, integer, number, open_text
from simulations.schema import TraceJob

if TYPE_CHECKING:
    from simulations.loaders import LoadOptions

TASK_COLUMNS = (
    "job_name",
    "task_name",
    "inst_num",
    "status",
    "start_time",
    "end_time",
    "plan_cpu",
    "plan_mem",
    "plan_gpu",
    "gpu_type",
)
JOB_COLUMNS = ("job_name", "inst_id", "user", "status", "start_time", "end_time")
MACHINE_COLUMNS = ("machine", "gpu_type", "cap_cpu", "cap_mem", "cap_gpu")


def _rows(path: Path, handle: TextIO, columns: tuple[str, ...], required: tuple[str, ...]) -> CsvRows:
    """Headerless tables take their names from ``<file>.header`` (as published) or the known list."""
    first = handle.readline()
    handle.seek(0)
    cells = [c.strip() for c in first.strip().split(",")]
    if cells and cells[0] == columns[0]:
        return CsvRows(handle, path, required)
    header_file = path.with_suffix(".header")
    header = columns
    if header_file.exists():
        header = tuple(c.strip() for c in header_file.read_text(encoding="utf-8").strip().split(","))
    return CsvRows(handle, path, required, header=header)


def _job_table(path: Path) -> dict[str, tuple[str, float]]:
    """``job_name -> (user, submit time)``: a compact index, not a copy of the table."""
    index: dict[str, tuple[str, float]] = {}
    users: dict[str, str] = {}
    with open_text(path) as handle:
        for _, row in _rows(path, handle, JOB_COLUMNS, ("job_name", "user", "start_time")):
            try:
                submit = number(row, "start_time", minimum=0)
            except RowSkip:
                continue
            user = row["user"].strip() or "default"
            index[row["job_name"].strip()] = (users.setdefault(user, user), submit)
    return index


def read_tasks(path: Path, report: SkipReport, options: LoadOptions) -> Iterator[TraceJob]:
    catalog = options.resolved_catalog()
    job_table = options.pai_job_table
    if job_table is None:
        sibling = path.with_name(path.name.replace("pai_task_table", "pai_job_table"))
        if sibling != path and sibling.exists():
            job_table = sibling
    jobs = _job_table(job_table) if job_table is not None else {}
    with open_text(path) as handle:
        rows = _rows(path, handle, TASK_COLUMNS, TASK_COLUMNS)
        for line, row in rows:
            report.rows += 1
            try:
                yield _task(row, line, catalog, jobs, options.max_devices_per_worker)
            except RowSkip as skip:
                report.skip(skip.reason, path, line, skip.column)


def _task(
    row: dict[str, str], line: int, catalog: Catalog, jobs: dict[str, tuple[str, float]], per_node: int
) -> TraceJob:
    job_name = row["job_name"].strip()
    start = number(row, "start_time", minimum=0)
    try:
        end = number(row, "end_time", minimum=0)
    except RowSkip:
        raise RowSkip(f"no end time (status {row['status'].strip() or 'unknown'})", "end_time") from None
    if end < start:
        raise RowSkip("negative duration", "end_time")
    workers = integer(row, "inst_num", minimum=1)
    plan_gpu = number(row, "plan_gpu", default=0.0, minimum=0)
    if plan_gpu <= 100:
        devices = round(plan_gpu * MILLI / 100) / MILLI
    else:
        # Several GPUs per instance: whole devices (the trace rounds plan_gpu to multiples of 100 in practice).
        devices = float(math.ceil(plan_gpu / 100 - 1e-9))
        if devices > per_node:
            raise RowSkip("an instance asks for more GPUs than a node has", "plan_gpu")
    gpu_type = row["gpu_type"].strip()
    entry = catalog.lookup(gpu_type) if gpu_type and gpu_type.upper() != "MISC" else None
    user, submit = jobs.get(job_name, ("default", start))
    return TraceJob(
        id=f"{job_name}/{row['task_name'].strip()}",
        submit_time=min(submit, start),
        duration_s=end - start,
        workers=workers,
        devices_per_worker=devices,
        cpu_milli_per_worker=round(number(row, "plan_cpu", default=0.0, minimum=0) * 10),
        memory_mib_per_worker=round(number(row, "plan_mem", default=0.0, minimum=0) * 1024),
        models=(entry.model,) if entry is not None and devices > 0 else (),
        duration_model=entry.model if entry is not None else "",
        tenant=user,
        user=user,
        status=row["status"].strip(),
        row=line,
    )


def read_machines(path: Path, report: SkipReport, catalog: Catalog) -> list[Node]:
    """Nodes from ``pai_machine_spec`` (``cap_cpu`` cores, ``cap_mem`` GB, ``cap_gpu`` devices)."""
    nodes: list[Node] = []
    with open_text(path) as handle:
        for line, row in _rows(path, handle, MACHINE_COLUMNS, MACHINE_COLUMNS):
            report.rows += 1
            try:
                gpus = integer(row, "cap_gpu", default=0, minimum=0)
                name = row["gpu_type"].strip()
                if gpus == 0:
                    raise RowSkip("CPU-only node (no accelerator pool to join)", "cap_gpu")
                entry = catalog.lookup(name)
                if entry is None:
                    raise RowSkip("unknown accelerator model", "gpu_type")
                nodes.append(
                    Node(
                        id=row["machine"].strip(),
                        model=entry.model,
                        devices=gpus,
                        cpu_milli=round(number(row, "cap_cpu", minimum=0) * 1000),
                        memory_mib=round(number(row, "cap_mem", minimum=0) * 1024),
                    )
                )
            except RowSkip as skip:
                report.skip(skip.reason, path, line, skip.column)
    if not nodes:
        raise TraceError(path, "no accelerator machines in the machine spec")
    return nodes
