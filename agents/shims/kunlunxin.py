"""Kunlunxin XPUs through ``xpu-smi`` (also installed as ``xpu_smi``).

Discovery tries the machine-readable ``xpu-smi -m`` (one line of 32 space-separated fields per device) and falls
back to the default table, which has two layouts in the wild:

* XRE 4.x (R200/R300): ``Runtime Version`` / ``Driver Version`` lines, then a ``DEVICES`` table with
  ``DevID | PCI Addr | Model | SN | INODE | UseRate | L3 | Memory`` columns (read by its header; the ``VIDEO``
  and ``PROCESSES`` tables after it are ignored);
* XRE 5.x (P800): an nvidia-smi-like ``XPU-SMI  Driver Version: ...`` table, three lines per device.

``-m`` field positions (0-based) follow public parsers of real P800 output: 1 device id, 4 temperature (C),
8 power (W), 17 memory used (MiB), 18 memory total (MiB), 19 utilisation (%), 21-22 the product name in
parentheses, e.g. ``(P800 OAM)``::

    >>> table = parse_xpu_smi_table(open("tests/fixtures/kunlunxin/paddle-docs-xpu_smi-r300.txt").read())
    >>> [(r.index, r.name, r.bus_id, r.values) for r in table.readings][:1]
    [(0, 'R300', '0000:53:00.0', {'utilization_pct': 0.0, 'memory_used_mib': 0.0, 'memory_total_mib': 32768.0})]
    >>> table.tool_version, table.driver_version
    ('4.31', '4.0')
"""

from __future__ import annotations

import re

from agents.protocol import Health
from agents.shims.tool import (
    Mode,
    Parsed,
    Reading,
    ReadingShim,
    bus_id,
    cells,
    celsius,
    nonneg,
    parse_number,
    parse_nvsmi_style,
    pct,
)

_FIELDS = 32


def parse_xpu_smi_m(text: str) -> list[Reading]:
    """The readings of ``xpu-smi -m`` (see :func:`parse_xpu_smi_machine`)."""
    return parse_xpu_smi_machine(text).readings


def parse_xpu_smi_machine(text: str) -> Parsed:
    out = Parsed()
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 23 or not fields[1].isdigit():
            if len(fields) > 3:
                out.problems.append(f"-m line not understood: {line.strip()[:80]!r}")
            continue  # a header, a truncated line or another tool's noise
        name_tokens = " ".join(fields[21:23])
        name = name_tokens.strip("()") if name_tokens.startswith("(") else "unknown"
        reading = Reading(
            index=int(fields[1]),
            name=name,
            bus_id=bus_id(fields[0]),
            values={
                "temperature_c": celsius(parse_number(fields[4])),
                "power_w": nonneg(parse_number(fields[8])),
                "memory_used_mib": nonneg(parse_number(fields[17])),
                "memory_total_mib": nonneg(parse_number(fields[18])),
                "utilization_pct": pct(parse_number(fields[19])),
            },
            health=Health.HEALTHY,
        )
        if len(fields) != _FIELDS:
            reading.problems.append(f"-m line has {len(fields)} fields, expected {_FIELDS}")
        if reading.values["utilization_pct"] is None and fields[19] != "-":
            reading.problems.append(f"utilisation {fields[19]!r} not understood")
        out.readings.append(reading)
    return out


def parse_xpu_smi_table(text: str) -> Parsed:
    """Parse the default ``xpu-smi`` output, either layout (see the module docstring)."""
    out = Parsed()
    driver = re.search(r"Driver Version:\s*([0-9][\w.\-]*)", text)
    out.driver_version = driver.group(1) if driver else None
    runtime = re.search(r"(?:Runtime|XPU-RT) Version:\s*([0-9][\w.\-]*)", text)
    out.tool_version = runtime.group(1) if runtime else None
    if "XPU-SMI" in text or re.search(r"^\|\s+\d+\s+\S.*\|\s*[0-9A-Fa-f]{8}:", text, re.MULTILINE):
        out.readings = parse_nvsmi_style(text)
        return out
    columns: list[str] | None = None
    for line in text.splitlines():
        if not line.strip().startswith("|"):
            continue
        row = cells(line)
        if row and row[0] == "DevID":
            columns = [c.lower() for c in row] if "pci addr" in [c.lower() for c in row] else None
            continue
        if columns is None or not row or not row[0].isdigit():
            continue
        if len(row) != len(columns):
            out.problems.append(f"row has {len(row)} cells for {len(columns)} columns: {line.strip()[:80]!r}")
            continue
        by_name = dict(zip(columns, row, strict=True))
        reading = Reading(index=int(row[0]), name=by_name.get("model", "") or "unknown", health=Health.HEALTHY)
        reading.bus_id = bus_id(by_name.get("pci addr"))
        if "userate" in by_name:
            reading.values["utilization_pct"] = pct(parse_number(by_name["userate"]))
        memory = re.fullmatch(r"(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)\s*MB", by_name.get("memory", ""))
        if memory:
            reading.values["memory_used_mib"] = nonneg(float(memory.group(1)))
            reading.values["memory_total_mib"] = nonneg(float(memory.group(2)))
        elif "memory" in by_name:
            reading.problems.append(f"memory {by_name['memory']!r} not understood")
        out.readings.append(reading)
    return out


class KunlunxinShim(ReadingShim):
    vendor = "kunlunxin"
    tool = "xpu-smi"
    tools = ("xpu-smi", "xpu_smi")
    modes = (
        Mode("machine", ("-m",), parse_xpu_smi_machine),
        Mode("table", (), parse_xpu_smi_table),
    )
