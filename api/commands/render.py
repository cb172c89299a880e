"""How the CLI prints: a human table, or the API's own keys as JSON/YAML (``-o json|yaml``), and the formats of
times, durations and states every command shares::

    >>> duration(7500), duration(45)
    ('2 h 5 min', '45 s')
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from api.models import JobOut, ReasonOut


class Fmt(StrEnum):
    TABLE = "table"
    JSON = "json"
    YAML = "yaml"


STATE_STYLE = {
    "pending": "yellow",
    "starting": "cyan",
    "running": "green",
    "cancelling": "magenta",
    "succeeded": "bold green",
    "failed": "bold red",
    "cancelled": "dim",
}


def stdout() -> Console:
    # Created per use so that it writes to the sys.stdout of the moment (tests swap it); fixed width off a tty.
    probe = Console()
    return probe if probe.is_terminal else Console(width=200, highlight=False)


def stderr() -> Console:
    return Console(stderr=True, highlight=False)


def emit(data: Any, fmt: Fmt, table: Callable[[Console], None]) -> None:
    """Print ``data`` as JSON/YAML, or call ``table`` to print it for humans."""
    if fmt is Fmt.JSON:
        sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    elif fmt is Fmt.YAML:
        sys.stdout.write(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    else:
        table(stdout())


def when(ts: float | None) -> str:
    """``2026-11-03 14:32 UTC`` (the date left out for today)."""
    if ts is None:
        return "-"
    moment = datetime.fromtimestamp(ts, UTC)
    if moment.date() == datetime.now(UTC).date():
        return moment.strftime("%H:%M UTC")
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``2 h 5 min``, ``3 d 4 h``."""
    seconds = abs(seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def relative(ts: float | None, now: float | None = None) -> str:
    """``in 12 min (14:32 UTC)`` or ``3 h ago (11:02 UTC)``."""
    if ts is None:
        return "unknown"
    delta = ts - (time.time() if now is None else now)
    span = duration(delta)
    if abs(delta) < 1:
        return f"now ({when(ts)})"
    return f"in {span} ({when(ts)})" if delta > 0 else f"{span} ago ({when(ts)})"


def ago(ts: float | None) -> str:
    if ts is None:
        return "-"
    return f"{duration(time.time() - ts)} ago"


def state_text(state: str) -> str:
    style = STATE_STYLE.get(state, "")
    return f"[{style}]{state}[/{style}]" if style else state


def num(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def job_size(job: JobOut) -> str:
    return f"{job.spec.workers}×{job.spec.devices_per_worker:g}"


def reasons_line(reasons: list[ReasonOut]) -> str:
    return "; ".join(r.message or r.code for r in reasons[:2])


def key_values(console: Console, rows: list[tuple[str, str]], title: str | None = None) -> None:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for key, value in rows:
        grid.add_row(key, value)
    if title:
        console.print(title)
    console.print(grid)
