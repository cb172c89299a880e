"""Trace loaders: public GPU-cluster traces → the native job schema (:class:`~simulations.schema.TraceJob`).

Pick a loader by format name; iterate the returned :class:`TraceSource` to stream jobs; read its ``report``
for the rows skipped and why::

    >>> from simulations.loaders import FORMATS, open_trace
    >>> sorted(FORMATS)
    ['alibaba-openb', 'alibaba-pai', 'gavel', 'helios', 'native', 'philly', 'tiresias']

``TraceSource.ordered`` says whether the format guarantees rows in submit order. The timeline replay streams
ordered sources (and stops with a :class:`TraceError` naming the row if one goes back in time) and sorts the
others in memory first, since their public files are not sorted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from scheduler.catalog import Catalog, load_catalog
from scheduler.model import Node
from scheduler.throughput import ThroughputMatrix
from simulations.loaders.base import RowSkip, SkipReport, TraceError
from simulations.schema import TraceJob


@dataclass
class LoadOptions:
    """Knobs shared by the loaders (all optional)."""

    catalog: Catalog | None = None
    throughput: ThroughputMatrix | None = None
    #: Bare GPU counts are split into workers of at most this many devices (the cluster's node size).
    max_devices_per_worker: int = 8
    #: Raise on the first skipped row instead of counting it.
    strict: bool = False
    #: Gavel job lists count steps: steps/s per job type come from this file (csv flat view or JSON).
    gavel_throughputs: Path | None = None
    #: PAI: the job table (user, submit time per job); looked up beside the task table when not given.
    pai_job_table: Path | None = None

    def resolved_catalog(self) -> Catalog:
        return self.catalog or load_catalog()


Reader = Callable[[Path, SkipReport, LoadOptions], Iterator[TraceJob]]


@dataclass
class TraceSource:
    """A trace file in a known format. Iterating it streams jobs (again on each iteration)."""

    path: Path
    format: str
    ordered: bool
    reader: Reader
    options: LoadOptions
    report: SkipReport = field(default_factory=SkipReport)

    def __iter__(self) -> Iterator[TraceJob]:
        self.report = SkipReport(strict=self.options.strict)
        for job in self.reader(self.path, self.report, self.options):
            self.report.jobs += 1
            yield job


def _formats() -> dict[str, tuple[Reader, bool]]:
    from simulations.loaders import gavel, helios, native, openb, pai, philly, tiresias

    return {
        "native": (native.read_native, True),
        "alibaba-openb": (openb.read_pods, True),
        "alibaba-pai": (pai.read_tasks, False),
        "philly": (philly.read_philly, False),
        "helios": (helios.read_helios, False),
        "gavel": (gavel.read_gavel, True),
        "tiresias": (tiresias.read_jobs, False),
    }


FORMATS: dict[str, tuple[Reader, bool]] = _formats()


def open_trace(path: str | Path, fmt: str, options: LoadOptions | None = None) -> TraceSource:
    """A :class:`TraceSource` for ``path`` read as ``fmt``; unknown formats and missing files raise."""
    if fmt not in FORMATS:
        raise TraceError(path, f"unknown trace format {fmt!r} (allowed: {', '.join(sorted(FORMATS))})")
    resolved = Path(path)
    if not resolved.exists():
        raise TraceError(path, "no such file")
    reader, ordered = FORMATS[fmt]
    opts = options or LoadOptions()
    return TraceSource(resolved, fmt, ordered, reader, opts, SkipReport(strict=opts.strict))


def load_nodes(path: str | Path, catalog: Catalog | None = None, report: SkipReport | None = None) -> list[Node]:
    """Nodes from a cluster YAML or a trace's node list (openb node list, PAI machine spec, Tiresias spec)."""
    from scheduler.cluster import load_cluster
    from simulations.loaders import openb, pai, tiresias
    from simulations.loaders.base import open_text

    resolved = Path(path)
    catalog = catalog or load_catalog()
    report = report or SkipReport()
    if resolved.suffix.lower() in (".yaml", ".yml", "") or not resolved.exists():
        return load_cluster(resolved, catalog).nodes
    with open_text(resolved) as handle:
        header = handle.readline()
    if "sn" in header.split(",") and "gpu" in header:
        return openb.read_nodes(resolved, report, catalog)
    if "num_node_p_switch" in header:
        return tiresias.read_cluster(resolved, catalog)
    if "machine" in header or resolved.name.startswith("pai_machine_spec"):
        return pai.read_machines(resolved, report, catalog)
    raise TraceError(
        resolved,
        "unknown cluster file (expected a cluster YAML, an openb node list, a PAI machine spec or a Tiresias spec)",
        1,
    )


__all__ = [
    "FORMATS",
    "LoadOptions",
    "RowSkip",
    "SkipReport",
    "TraceError",
    "TraceSource",
    "load_nodes",
    "open_trace",
]
