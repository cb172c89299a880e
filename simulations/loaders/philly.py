"""Microsoft Philly: the original ``cluster_job_log`` (JSON) and the ``philly.csv`` derived form.

* ``philly.csv`` (the AdaptDL artifact): ``timestamp`` (submit, ``YYYY-MM-DD HH:MM:SS``), ``duration`` (s),
  ``num_gpus``, ``gpu_time``, ``cluster`` (virtual cluster = tenant).
* ``cluster_job_log``: a JSON array of ``{status, vc, jobid, attempts: [{start_time, end_time, detail: [{ip,
  gpus: [...]}]}], submitted_time, user}``. The GPU count is the largest over attempts; the duration is the sum
  of the attempts' run times (the time the job actually held GPUs). It is read one object at a time.

Philly ran mostly Pascal-era GPUs but the trace does not say which per job, so durations are not scaled. Bare
GPU counts become gangs with :func:`~simulations.loaders.base.gang_shape`. Neither file is sorted by submit time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from simulations.loaders.base import (
    CsvRows,
    RowSkip,
    SkipReport,
    TraceError,
    gang_shape,
    integer,
    number,
    open_text,
    parse_timestamp,
)
from simulations.schema import TraceJob

if TYPE_CHECKING:
    from simulations.loaders import LoadOptions

CSV_COLUMNS = ("timestamp", "duration", "num_gpus")


def read_philly(path: Path, report: SkipReport, options: LoadOptions) -> Iterator[TraceJob]:
    with open_text(path) as handle:
        head = handle.read(1)
        while head and head.isspace():
            head = handle.read(1)
    if head in ("[", "{"):
        yield from _read_json(path, report, options)
    else:
        yield from _read_csv(path, report, options)


def _read_csv(path: Path, report: SkipReport, options: LoadOptions) -> Iterator[TraceJob]:
    per_node = options.max_devices_per_worker
    with open_text(path) as handle:
        rows = CsvRows(handle, path, CSV_COLUMNS)
        for line, row in rows:
            report.rows += 1
            try:
                gpus = integer(row, "num_gpus", minimum=0)
                if gpus == 0:
                    raise RowSkip("no GPUs", "num_gpus")
                workers, per_worker = gang_shape(gpus, per_node)
                cluster = row.get("cluster", "").strip() or "default"
                yield TraceJob(
                    id=f"philly-{line - 1}",
                    submit_time=parse_timestamp(row["timestamp"], "timestamp"),
                    duration_s=number(row, "duration", minimum=0),
                    workers=workers,
                    devices_per_worker=float(per_worker),
                    tenant=cluster,
                    queue=cluster,
                    row=line,
                )
            except RowSkip as skip:
                report.skip(skip.reason, path, line, skip.column)


def iter_json_array(path: Path, chunk_size: int = 1 << 20) -> Iterator[tuple[int, Any]]:
    """Stream ``(record number, object)`` from a top-level JSON array without loading the whole file."""
    decoder = json.JSONDecoder()
    with open_text(path) as handle:
        buffer = handle.read(chunk_size).lstrip()
        if not buffer.startswith("["):
            raise TraceError(path, "expected a JSON array of jobs", 1)
        buffer = buffer[1:]
        record = 0
        eof = False
        while True:
            buffer = buffer.lstrip().lstrip(",").lstrip()
            if buffer.startswith("]"):
                return
            try:
                value, end = decoder.raw_decode(buffer)
            except json.JSONDecodeError as exc:
                if eof:
                    raise TraceError(path, f"malformed JSON in record {record + 1}: {exc.msg}", record + 1) from exc
                more = handle.read(chunk_size)
                eof = not more
                buffer += more
                continue
            record += 1
            buffer = buffer[end:]
            if len(buffer) < chunk_size // 2 and not eof:
                more = handle.read(chunk_size)
                eof = not more
                buffer += more
            yield record, value


def _read_json(path: Path, report: SkipReport, options: LoadOptions) -> Iterator[TraceJob]:
    per_node = options.max_devices_per_worker
    for record, obj in iter_json_array(path):
        report.rows += 1
        try:
            yield _json_job(obj, record, per_node)
        except RowSkip as skip:
            report.skip(skip.reason, path, record, skip.column)


def _json_job(obj: Any, record: int, per_node: int) -> TraceJob:
    if not isinstance(obj, dict):
        raise RowSkip("record is not an object")
    submitted = obj.get("submitted_time")
    if not isinstance(submitted, str):
        raise RowSkip("missing submitted_time", "submitted_time")
    attempts = obj.get("attempts") or []
    gpus = 0
    duration = 0.0
    for attempt in attempts:
        if not isinstance(attempt, dict):
            continue
        count = sum(len(d.get("gpus") or []) for d in attempt.get("detail") or [] if isinstance(d, dict))
        gpus = max(gpus, count)
        start, end = attempt.get("start_time"), attempt.get("end_time")
        if isinstance(start, str) and isinstance(end, str):
            try:
                span = parse_timestamp(end, "end_time") - parse_timestamp(start, "start_time")
            except RowSkip:
                continue
            if span < 0:
                raise RowSkip("negative duration", "attempts")
            duration += span
    if not attempts or duration <= 0:
        raise RowSkip("never ran (no complete attempt)", "attempts")
    if gpus == 0:
        raise RowSkip("no GPUs", "attempts")
    workers, per_worker = gang_shape(gpus, per_node)
    vc = str(obj.get("vc") or "default")
    return TraceJob(
        id=str(obj.get("jobid") or f"philly-{record}"),
        submit_time=parse_timestamp(submitted, "submitted_time"),
        duration_s=duration,
        workers=workers,
        devices_per_worker=float(per_worker),
        tenant=vc,
        queue=vc,
        user=str(obj.get("user") or "default"),
        status=str(obj.get("status") or ""),
        row=record,
    )
