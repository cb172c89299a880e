"""The native CSV schema (see ``simulations/README.md``): the loader every other format converts to.

>>> import io, tempfile, pathlib
>>> from simulations.loaders import open_trace
>>> path = pathlib.Path(tempfile.mkdtemp()) / "t.csv"
>>> _ = path.write_text("id,submit_time,duration_s,devices_per_worker\\nj1,0,60,0.5\\nj2,5,-1,1\\n")
>>> source = open_trace(path, "native")
>>> [job.id for job in source], source.report.summary().split(" (")[0]
(['j1'], '1 rows skipped: 1 negative duration_s')
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from scheduler.catalog import Catalog
from scheduler.model import MILLI, JobKind
from scheduler.throughput import JobClass
from simulations.loaders.base import CsvRows, RowSkip, SkipReport, integer, number, open_text
from simulations.schema import REQUIRED_NATIVE_COLUMNS, TraceJob, parse_bool, parse_priority

if TYPE_CHECKING:
    from simulations.loaders import LoadOptions


def read_native(path: Path, report: SkipReport, options: LoadOptions) -> Iterator[TraceJob]:
    catalog = options.resolved_catalog()
    with open_text(path) as handle:
        rows = CsvRows(handle, path, REQUIRED_NATIVE_COLUMNS)
        for line, row in rows:
            report.rows += 1
            try:
                yield _job(row, line, catalog)
            except RowSkip as skip:
                report.skip(skip.reason, path, line, skip.column)


def _job(row: dict[str, str], line: int, catalog: Catalog) -> TraceJob:
    job_id = row["id"].strip()
    if not job_id:
        raise RowSkip("missing id", "id")
    devices = number(row, "devices_per_worker", default=1.0, minimum=0)
    milli = round(devices * MILLI)
    if abs(devices * MILLI - milli) > 1e-6 or (milli > MILLI and milli % MILLI):
        raise RowSkip("devices_per_worker must be a whole count or a fraction below 1", "devices_per_worker")
    models: list[str] = []
    for name in filter(None, (m.strip() for m in row.get("models", "").split("|"))):
        entry = catalog.lookup(name)
        if entry is None:
            raise RowSkip("unknown accelerator model", "models")
        models.append(entry.model)
    origin = row.get("duration_model", "").strip()
    if origin:
        entry = catalog.lookup(origin)
        if entry is None:
            raise RowSkip("unknown accelerator model", "duration_model")
        origin = entry.model
    try:
        kind = JobKind(row.get("kind", "").strip() or "training")
    except ValueError:
        raise RowSkip("unknown kind", "kind") from None
    try:
        job_class = JobClass(row.get("job_class", "").strip() or "generic")
    except ValueError:
        raise RowSkip("unknown job_class", "job_class") from None
    try:
        priority = parse_priority(row.get("priority", "").strip() or "training")
    except ValueError:
        raise RowSkip("unknown priority", "priority") from None
    try:
        preemptible = parse_bool(row.get("preemptible", "").strip() or "true")
    except ValueError:
        raise RowSkip("not a boolean", "preemptible") from None
    return TraceJob(
        id=job_id,
        submit_time=number(row, "submit_time", minimum=0),
        duration_s=number(row, "duration_s", minimum=0),
        workers=integer(row, "workers", default=1, minimum=1),
        devices_per_worker=devices,
        cpu_milli_per_worker=integer(row, "cpu_milli_per_worker", default=0, minimum=0),
        memory_mib_per_worker=integer(row, "memory_mib_per_worker", default=0, minimum=0),
        models=tuple(models),
        duration_model=origin,
        tenant=row.get("tenant", "").strip() or "default",
        user=row.get("user", "").strip() or "default",
        queue=row.get("queue", "").strip() or "default",
        kind=kind,
        job_class=job_class,
        priority=priority,
        preemptible=preemptible,
        checkpoint_interval_s=number(row, "checkpoint_interval_s", default=0.0, minimum=0),
        slo_wait_s=number(row, "slo_wait_s", default=0.0, minimum=0),
        status=row.get("status", "").strip(),
        row=line,
    )
