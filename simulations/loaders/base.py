"""What every loader shares: errors that name file, row and column; counted skips; a streaming CSV reader.

Loaders never hold two copies of a trace: they read one row at a time and yield
:class:`~simulations.schema.TraceJob` objects. A row that cannot be used is *skipped and counted* with its
reason (the first location of each reason is kept for the message); a problem with the file as a whole
(unknown format, missing columns, times out of order in a stream) raises :class:`TraceError`::

    >>> from simulations.loaders.base import SkipReport
    >>> report = SkipReport()
    >>> report.skip("negative duration", "trace.csv", 7, "duration")
    >>> report.summary()
    '1 rows skipped: 1 negative duration (first at trace.csv:7 column duration)'
"""

from __future__ import annotations

import csv
import gzip
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO


class TraceError(ValueError):
    """A trace that cannot be replayed as given; ``str(err)`` names the file, row and column."""

    def __init__(self, path: str | Path, problem: str, row: int | None = None, column: str | None = None) -> None:
        self.path = str(path)
        self.row = row
        self.column = column
        self.problem = problem
        where = self.path
        if row is not None:
            where += f":{row}"
        if column is not None:
            where += f": column {column!r}"
        super().__init__(f"{where}: {problem}")


class RowSkip(Exception):
    """Raised inside a loader for a row to skip; carries the reason and the offending column."""

    def __init__(self, reason: str, column: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.column = column


@dataclass
class SkipReport:
    """Rows read and rows skipped, per reason, with the first place each reason occurred."""

    rows: int = 0
    jobs: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    first: dict[str, str] = field(default_factory=dict)
    #: When set, the first skip raises instead (``--strict``).
    strict: bool = False

    def skip(self, reason: str, path: str | Path, row: int, column: str | None = None) -> None:
        if self.strict:
            raise TraceError(path, reason, row, column)
        self.skipped[reason] += 1
        if reason not in self.first:
            self.first[reason] = f"{path}:{row}" + (f" column {column}" if column else "")

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        if not self.skipped:
            return "no rows skipped"
        parts = [f"{count} {reason} (first at {self.first[reason]})" for reason, count in self.skipped.most_common()]
        return f"{self.total_skipped} rows skipped: " + "; ".join(parts)

    def as_dict(self) -> dict[str, object]:
        return {
            "rows": self.rows,
            "jobs": self.jobs,
            "skipped": dict(self.skipped.most_common()),
            "first": dict(self.first),
        }


class CsvRows:
    """A streaming ``csv.DictReader``-like reader that checks required columns and knows its line numbers.

    >>> import io
    >>> rows = CsvRows(io.StringIO("a,b\\n1,2\\n"), "t.csv", required=("a",))
    >>> [(line, row["b"]) for line, row in rows]
    [(2, '2')]
    """

    def __init__(
        self,
        handle: TextIO,
        path: str | Path,
        required: Sequence[str] = (),
        header: Sequence[str] | None = None,
        delimiter: str = ",",
    ) -> None:
        self.path = str(path)
        self._reader = csv.reader(handle, delimiter=delimiter)
        if header is None:
            try:
                first = next(self._reader)
            except StopIteration:
                raise TraceError(path, "the file is empty (no header row)", 1) from None
            header = [h.strip().lstrip("\ufeff") for h in first]
        self.columns = list(header)
        self.index = {name: i for i, name in enumerate(self.columns)}
        missing = [c for c in required if c not in self.index]
        if missing:
            raise TraceError(
                path,
                f"missing required column(s) {', '.join(missing)} (found: {', '.join(self.columns) or 'none'})",
                1,
                missing[0],
            )

    def has(self, column: str) -> bool:
        return column in self.index

    def __iter__(self) -> Iterator[tuple[int, dict[str, str]]]:
        columns = self.columns
        width = len(columns)
        for cells in self._reader:
            line = self._reader.line_num
            if not cells or (len(cells) == 1 and not cells[0].strip()):
                continue
            if len(cells) < width:
                cells = cells + [""] * (width - len(cells))
            yield line, dict(zip(columns, cells, strict=False))


def number(row: dict[str, str], column: str, *, default: float | None = None, minimum: float | None = None) -> float:
    """Parse a float cell or raise :class:`RowSkip` naming the column (NaN/empty use ``default``)."""
    text = row.get(column, "").strip()
    if not text or text.lower() in ("nan", "none", "null", "na"):
        if default is None:
            raise RowSkip(f"missing {column}", column)
        return default
    try:
        value = float(text)
    except ValueError:
        raise RowSkip(f"non-numeric {column}", column) from None
    if not math.isfinite(value):
        raise RowSkip(f"non-finite {column}", column)
    if minimum is not None and value < minimum:
        raise RowSkip(f"negative {column}" if minimum == 0 else f"{column} below {minimum:g}", column)
    return value


def integer(row: dict[str, str], column: str, *, default: int | None = None, minimum: int | None = None) -> int:
    value = number(row, column, default=None if default is None else float(default), minimum=minimum)
    if value != int(value):
        raise RowSkip(f"non-integer {column}", column)
    return int(value)


def open_text(path: str | Path) -> TextIO:
    """Open a trace file for reading (UTF-8, universal newlines; ``.gz`` files decompressed as they stream); a
    clear :class:`TraceError` if it cannot."""
    try:
        if str(path).endswith(".gz"):
            return gzip.open(path, "rt", encoding="utf-8", newline="")
        return Path(path).open(encoding="utf-8", newline="")
    except OSError as exc:
        raise TraceError(path, f"cannot read file: {exc.strerror or exc}") from exc


# ---------------------------------------------------------------------------------------------- shared rules


def gang_shape(devices: int, per_node: int) -> tuple[int, int]:
    """Split a bare device count into ``(workers, devices per worker)`` for a cluster of ``per_node``-device nodes.

    Traces that only say "n GPUs" ran as one worker per node: ``n <= per_node`` is one worker; a multiple of
    ``per_node`` is that many full-node workers; anything else becomes ``n`` single-device workers.

    >>> gang_shape(4, 8), gang_shape(16, 8), gang_shape(12, 8)
    ((1, 4), (2, 8), (12, 1))
    """
    if devices <= per_node:
        return 1, devices
    if devices % per_node == 0:
        return devices // per_node, per_node
    return devices, 1


def parse_timestamp(text: str, column: str) -> float:
    """Seconds: a number, or a ``YYYY-MM-DD HH:MM:SS[.ffffff]`` date taken as UTC (raises :class:`RowSkip`)."""
    import datetime as _dt

    value = text.strip()
    if not value or value.lower() in ("nan", "none", "null", "na"):
        raise RowSkip(f"missing {column}", column)
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = _dt.datetime.fromisoformat(value.replace("/", "-"))
    except ValueError:
        raise RowSkip(f"unparseable {column}", column) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_dt.UTC)
    return moment.timestamp()
