"""Moore Threads GPUs through ``mthreads-gmi``.

Discovery tries ``mthreads-gmi -q --json`` (a ``GPU`` array mirroring ``nvidia-smi -q``: ``Index``, ``Product
Name``, ``FB Memory Usage``, ``Utilization``, ``Temperature`` and ``Power Readings``, values with units such as
``"49152MiB"``; some builds emit keys with trailing spaces, ``"Power Draw "``) and falls back to the default table
that every release prints (``mthreads-gmi:2.2.0  Driver Version:3.0.0``, then three lines per GPU: ``ID Name |
PCIe | %GPU Mem``, ``Device Type Perf | Pcie Lane Width | Temp MPC Capable``, ``| ECC Mode``). The table has no
power column; those devices report power as unavailable::

    >>> path = "tests/fixtures/moorethreads/gpustack-3511-mthreads-gmi-2.2.0-s4000.excerpt.txt"
    >>> table = parse_mthreads_table(open(path).read())
    >>> [(r.index, r.name, r.values["memory_total_mib"], r.values["temperature_c"]) for r in table.readings][:1]
    [(0, 'MTT S4000', 49152.0, 44.0)]
    >>> table.tool_version, table.driver_version
    ('2.2.0', '3.0.0')
"""

from __future__ import annotations

import re
from typing import Any

from agents.protocol import Health
from agents.shims.hygon import extract_json_object
from agents.shims.tool import Mode, Parsed, Reading, ReadingShim, bus_id, celsius, nonneg, parse_number, pct


def _strip_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k).strip(): _strip_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strip_keys(v) for v in value]
    return value


def _num(section: Any, key: str) -> float | None:
    if not isinstance(section, dict) or section.get(key) is None:
        return None
    return parse_number(str(section[key]))


def parse_mthreads_json(text: str) -> list[Reading]:
    return parse_mthreads_query_json(text).readings


def parse_mthreads_query_json(text: str) -> Parsed:
    doc = _strip_keys(extract_json_object(text))
    out = Parsed()
    if isinstance(doc, dict) and doc.get("Driver Version"):
        out.driver_version = str(doc["Driver Version"])
    gpus = doc.get("GPU", []) if isinstance(doc, dict) else []
    for gpu in gpus if isinstance(gpus, list) else []:
        index = parse_number(str(gpu.get("Index"))) if isinstance(gpu, dict) else None
        if index is None or index < 0:
            continue
        pci = gpu.get("PCI") if isinstance(gpu.get("PCI"), dict) else {}
        out.readings.append(
            Reading(
                index=int(index),
                name=str(gpu.get("Product Name") or "unknown"),
                uuid=str(gpu["GPU UUID"]) if gpu.get("GPU UUID") else None,
                bus_id=bus_id(str(pci.get("Bus Id"))) if pci.get("Bus Id") else None,
                values={
                    "memory_total_mib": nonneg(_num(gpu.get("FB Memory Usage"), "Total")),
                    "memory_used_mib": nonneg(_num(gpu.get("FB Memory Usage"), "Used")),
                    "utilization_pct": pct(_num(gpu.get("Utilization"), "Gpu")),
                    "temperature_c": celsius(_num(gpu.get("Temperature"), "GPU Current Temp")),
                    "power_w": nonneg(_num(gpu.get("Power Readings"), "Power Draw")),
                },
                health=Health.HEALTHY,
            )
        )
    return out


_FIRST = re.compile(r"^(\d+)\s+(\S.*?)\s*$")
_MEMORY = re.compile(r"(\d+(?:\.\d+)?)MiB\((\d+(?:\.\d+)?)MiB\)")


def parse_mthreads_table(text: str) -> Parsed:
    out = Parsed()
    tool = re.search(r"mthreads-gmi:\s*([0-9][\w.\-]*)", text)
    driver = re.search(r"Driver Version:\s*([0-9][\w.\-]*)", text)
    out.tool_version = tool.group(1) if tool else None
    out.driver_version = driver.group(1) if driver else None
    block: list[list[str]] = []

    def flush() -> None:
        if block:
            out.readings.append(_block(block))
            block.clear()

    for line in text.splitlines():
        if line.startswith("+") or line.startswith("---"):
            flush()
            continue
        parts = [p.strip() for p in line.split("|")]
        if len(parts) < 3:
            continue
        if _FIRST.match(parts[0]) and bus_id(parts[1]):
            flush()
            block.append(parts)
        elif block:
            block.append(parts)
    flush()
    return out


def _block(block: list[list[str]]) -> Reading:
    match = _FIRST.match(block[0][0])
    assert match is not None
    reading = Reading(index=int(match.group(1)), name=match.group(2), bus_id=bus_id(block[0][1]), health=Health.HEALTHY)
    third = block[0][2].split()
    if third:
        reading.values["utilization_pct"] = pct(parse_number(third[0]))
    memory = _MEMORY.search(block[0][2])
    if memory:
        reading.values["memory_used_mib"] = nonneg(float(memory.group(1)))
        reading.values["memory_total_mib"] = nonneg(float(memory.group(2)))
    else:
        reading.problems.append(f"memory {block[0][2]!r} not understood")
    if len(block) > 1:
        temp = re.match(r"(-?\d+(?:\.\d+)?)C\b", block[1][2])
        reading.values["temperature_c"] = celsius(float(temp.group(1))) if temp else None
        if temp is None and not block[1][2].startswith("N/A"):
            reading.problems.append(f"temperature {block[1][2]!r} not understood")
    else:
        reading.problems.append("device block has no second line (output cut short?)")
    return reading


class MooreThreadsShim(ReadingShim):
    vendor = "moorethreads"
    tool = "mthreads-gmi"
    tools = ("mthreads-gmi",)
    modes = (
        Mode("json", ("-q", "--json"), parse_mthreads_query_json),
        Mode("table", (), parse_mthreads_table),
    )
