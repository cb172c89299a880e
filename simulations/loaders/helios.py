"""SenseTime Helios (SC '21): ``cluster_log.csv`` of one cluster (Venus, Earth, Saturn, Uranus).

Columns: ``job_id, user, gpu_num, cpu_num, node_num, state, submit_time, start_time, end_time, duration`` and
the virtual cluster (``vc``; some derived copies call it ``queue``). Times are dates (``YYYY-MM-DD HH:MM:SS``)
or seconds. ``duration`` is used when present, else ``end_time - start_time``. ``gpu_num`` GPUs over
``node_num`` nodes become ``node_num`` workers when it divides evenly, else :func:`gang_shape`; CPU-only jobs
(``gpu_num == 0``) are kept as device-less jobs. Jobs that ran for zero seconds (cancelled before start) are
skipped and counted. The durations are not scaled (the per-job GPU model is not published). A ``job_name``
(or ``jobname``, ``name``) column, where a copy has one, becomes the job's name (QSSF groups history by it).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from simulations.loaders.base import (
    CsvRows,
    RowSkip,
    SkipReport,
    gang_shape,
    integer,
    number,
    open_text,
    parse_timestamp,
)
from simulations.schema import TraceJob

if TYPE_CHECKING:
    from simulations.loaders import LoadOptions

COLUMNS = ("job_id", "gpu_num", "submit_time")


def read_helios(path: Path, report: SkipReport, options: LoadOptions) -> Iterator[TraceJob]:
    per_node = options.max_devices_per_worker
    with open_text(path) as handle:
        rows = CsvRows(handle, path, COLUMNS)
        if not rows.has("duration") and not (rows.has("start_time") and rows.has("end_time")):
            from simulations.loaders.base import TraceError

            raise TraceError(path, "missing required column duration (or start_time and end_time)", 1, "duration")
        tenant_column = next((c for c in ("vc", "queue", "partition") if rows.has(c)), None)
        for line, row in rows:
            report.rows += 1
            try:
                yield _job(row, line, per_node, tenant_column)
            except RowSkip as skip:
                report.skip(skip.reason, path, line, skip.column)


def _job(row: dict[str, str], line: int, per_node: int, tenant_column: str | None) -> TraceJob:
    gpus = integer(row, "gpu_num", minimum=0)
    submit = parse_timestamp(row["submit_time"], "submit_time")
    if row.get("duration", "").strip():
        duration = number(row, "duration", minimum=0)
    else:
        duration = parse_timestamp(row.get("end_time", ""), "end_time") - parse_timestamp(
            row.get("start_time", ""), "start_time"
        )
        if duration < 0:
            raise RowSkip("negative duration", "end_time")
    if duration <= 0:
        raise RowSkip("zero duration", "duration")
    nodes = integer(row, "node_num", default=1, minimum=0) or 1
    if gpus and gpus % nodes == 0 and gpus // nodes <= per_node:
        workers, per_worker = nodes, gpus // nodes
    else:
        workers, per_worker = gang_shape(gpus, per_node) if gpus else (1, 0)
    cpus = number(row, "cpu_num", default=0.0, minimum=0)
    tenant = (row.get(tenant_column, "") if tenant_column else "").strip() or "default"
    return TraceJob(
        id=row["job_id"].strip() or f"helios-{line}",
        submit_time=submit,
        duration_s=duration,
        workers=workers,
        devices_per_worker=float(per_worker),
        cpu_milli_per_worker=round(cpus * 1000 / workers),
        tenant=tenant,
        queue=tenant,
        user=row.get("user", "").strip() or "default",
        status=row.get("state", "").strip(),
        name=next((row[c].strip() for c in ("job_name", "jobname", "name") if row.get(c, "").strip()), ""),
        row=line,
    )
