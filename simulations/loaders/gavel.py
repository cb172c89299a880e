"""Gavel-style job lists (Stanford Gavel, OSDI '20): tab-separated, one job per line, no header.

Gavel's current 10-field form is ``job_type, command, working_directory, num_steps_arg, needs_data_dir,
total_steps, scale_factor, priority_weight, SLO, arrival_time``; the older 7-field form is ``job_type, command,
num_steps_arg, needs_data_dir, total_steps, arrival_time, scale_factor`` (both are accepted). A job is counted
in *steps*: its duration on a V100 is ``total_steps / steps_per_s`` from Gavel's measured throughputs (the flat
``throughput_matrix_isolated.csv`` or ``simulation_throughputs.json``), looked up beside the trace when
:attr:`LoadOptions.gavel_throughputs` is not given. ``scale_factor`` is the GPU count of the job.
"""

from __future__ import annotations

import ast
import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from scheduler.throughput import JobClass
from simulations.loaders.base import RowSkip, SkipReport, TraceError, gang_shape, open_text
from simulations.schema import TraceJob

if TYPE_CHECKING:
    from simulations.loaders import LoadOptions

_CLASS_HINTS = (
    ("resnet", JobClass.CV_TRAIN),
    ("cyclegan", JobClass.CV_TRAIN),
    ("transformer", JobClass.LLM_FINETUNE),
    ("lm ", JobClass.LLM_FINETUNE),
    ("recommendation", JobClass.RECSYS_TRAIN),
)


def job_class_of(job_type: str) -> JobClass:
    """Gavel job types map to job classes by model family; A3C (RL) stays generic."""
    lowered = job_type.lower() + " "
    for hint, job_class in _CLASS_HINTS:
        if hint in lowered:
            return job_class
    return JobClass.GENERIC


def load_steps_per_second(path: Path) -> dict[tuple[str, int], float]:
    """``(job_type, GPUs) -> V100 steps/s`` from Gavel's csv flat view or its JSON."""
    table: dict[tuple[str, int], float] = {}
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        for key, entry in data.get("v100", {}).items():
            job_type, gpus = ast.literal_eval(key)
            value = entry.get("null") if isinstance(entry, dict) else None
            if isinstance(value, int | float) and value > 0:
                table[(str(job_type), int(gpus))] = float(value)
        return table
    with open_text(path) as handle:
        for row in csv.DictReader(handle):
            try:
                table[(row["job_type"], int(row["scale_factor_gpus"]))] = float(row["v100_steps_per_s"])
            except (KeyError, ValueError) as exc:
                raise TraceError(path, f"not a Gavel throughput table ({exc})") from exc
    return table


def _find_throughputs(path: Path, options: LoadOptions) -> Path:
    if options.gavel_throughputs is not None:
        return options.gavel_throughputs
    for name in ("throughput_matrix_isolated.csv", "simulation_throughputs.json"):
        for folder in (path.parent, path.parent.parent / "gavel"):
            if (folder / name).exists():
                return folder / name
    raise TraceError(path, "Gavel job lists count steps: give the steps/s table (gavel_throughputs)")


def read_gavel(path: Path, report: SkipReport, options: LoadOptions) -> Iterator[TraceJob]:
    steps = load_steps_per_second(_find_throughputs(path, options))
    catalog = options.resolved_catalog()
    v100 = catalog.lookup("V100")
    origin = v100.model if v100 is not None else ""
    last = 0.0
    with open_text(path) as handle:
        for line, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            report.rows += 1
            fields = text.rstrip("\n").split("\t")
            try:
                if len(fields) == 10:
                    job_type, total, scale, arrival = fields[0], fields[5], fields[6], fields[9]
                elif len(fields) == 7:
                    job_type, total, arrival, scale = fields[0], fields[4], fields[5], fields[6]
                else:
                    raise TraceError(path, f"expected 10 (or 7) tab-separated fields, found {len(fields)}", line)
                gpus = _int(scale, "scale_factor")
                rate = steps.get((job_type, gpus))
                if rate is None:
                    raise RowSkip("no measured throughput for job type", "job_type")
                submit = _float(arrival, "arrival_time")
                if submit < last:
                    raise TraceError(path, f"arrival_time {submit:g} is earlier than the previous job's", line)
                last = submit
                workers, per_worker = gang_shape(gpus, options.max_devices_per_worker)
                yield TraceJob(
                    id=f"gavel-{line}",
                    submit_time=submit,
                    duration_s=_float(total, "total_steps") / rate,
                    workers=workers,
                    devices_per_worker=float(per_worker),
                    duration_model=origin,
                    job_class=job_class_of(job_type),
                    row=line,
                )
            except RowSkip as skip:
                report.skip(skip.reason, path, line, skip.column)


def _float(text: str, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise RowSkip(f"non-numeric {column}", column) from None
    if value < 0:
        raise RowSkip(f"negative {column}", column)
    return value


def _int(text: str, column: str) -> int:
    value = _float(text, column)
    if value != int(value) or value < 1:
        raise RowSkip(f"{column} must be a positive integer", column)
    return int(value)
