"""Iluvatar CoreX GPUs through ``ixsmi``, whose interface is nvidia-smi's.

Discovery asks ``ixsmi --query-gpu=... --format=csv,noheader,nounits`` first (UUIDs, ECC) and falls back to the
default table (``IX-ML: 4.3.0  Driver Version: 4.3.0`` and two lines per GPU) where a build rejects the query.
On BI-V150 boards, which carry two chips, the table prints power on one chip of each pair and ``N/A / N/A`` on the
other; those devices report power as unavailable, not 0::

    >>> table = parse_ixsmi_table(open("tests/fixtures/iluvatar/ernie-docs-ixsmi-4.3.0-bi-v150.txt").read())
    >>> [(r.index, r.name, r.values["power_w"]) for r in table.readings][:2], table.driver_version
    ([(0, 'Iluvatar BI-V150', None), (1, 'Iluvatar BI-V150', 103.0)], '4.3.0')
    >>> query = parse_ixsmi_csv(open("tests/fixtures/iluvatar/ixsmi-query.csv").read())
    >>> [(r.index, r.values["power_w"]) for r in query]
    [(0, 57.1), (1, None)]
"""

from __future__ import annotations

import csv
import re

from agents.protocol import Health
from agents.shims.tool import (
    Mode,
    Parsed,
    Reading,
    ReadingShim,
    bus_id,
    celsius,
    nonneg,
    parse_number,
    parse_nvsmi_style,
    pct,
)

QUERY = (
    "index",
    "uuid",
    "name",
    "pci.bus_id",
    "memory.total",
    "memory.used",
    "utilization.gpu",
    "temperature.gpu",
    "power.draw",
    "clocks.sm",
    "ecc.errors.uncorrected.aggregate.total",
)


def _value(cell: str) -> float | None:
    # nvidia-smi style placeholders: "[N/A]", "N/A", "[Not Supported]", "[Unknown Error]"
    if "N/A" in cell or "Not Supported" in cell or "Error" in cell:
        return None
    return parse_number(cell)


def parse_ixsmi_csv(text: str) -> list[Reading]:
    return parse_ixsmi_query(text).readings


def parse_ixsmi_query(text: str) -> Parsed:
    out = Parsed()
    for row in csv.reader(text.splitlines()):
        cells = [c.strip() for c in row]
        if not cells or not cells[0].isdigit():
            if any(cells):
                out.problems.append(f"query line not understood: {','.join(cells)[:80]!r}")
            continue
        if len(cells) < len(QUERY):
            out.problems.append(f"query line has {len(cells)} of {len(QUERY)} values: {','.join(cells)[:80]!r}")
            continue
        ecc = _value(cells[10])
        reading = Reading(
            index=int(cells[0]),
            uuid=cells[1] if cells[1] and "N/A" not in cells[1] else None,
            name=cells[2],
            bus_id=bus_id(cells[3]),
            values={
                "memory_total_mib": nonneg(_value(cells[4])),
                "memory_used_mib": nonneg(_value(cells[5])),
                "utilization_pct": pct(_value(cells[6])),
                "temperature_c": celsius(_value(cells[7])),
                "power_w": nonneg(_value(cells[8])),
                "sm_clock_mhz": nonneg(_value(cells[9])),
                "ecc_uncorrectable_total": float(int(ecc)) if ecc is not None and ecc >= 0 else None,
            },
            health=Health.HEALTHY,
        )
        out.readings.append(reading)
    return out


def parse_ixsmi_table(text: str) -> Parsed:
    out = Parsed(readings=parse_nvsmi_style(text))
    ixml = re.search(r"IX-ML:\s*([0-9][\w.\-]*)", text)
    driver = re.search(r"Driver Version:\s*([0-9][\w.\-]*)", text)
    out.tool_version = ixml.group(1) if ixml else None
    out.driver_version = driver.group(1) if driver else None
    return out


def parse_ixsmi_version(text: str) -> Parsed:
    first = text.strip().splitlines()[0].strip() if text.strip() else ""
    return Parsed(driver_version=first if re.fullmatch(r"[0-9][\w.\-]*", first) else None)


class IluvatarShim(ReadingShim):
    vendor = "iluvatar"
    tool = "ixsmi"
    tools = ("ixsmi",)
    modes = (
        Mode("query", (f"--query-gpu={','.join(QUERY)}", "--format=csv,noheader,nounits"), parse_ixsmi_query),
        Mode("table", (), parse_ixsmi_table),
    )
    version_mode = Mode("driver", ("--query-gpu=driver_version", "--format=csv,noheader"), parse_ixsmi_version)
