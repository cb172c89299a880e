"""Cambricon MLUs through ``cnmon``.

Discovery tries ``cnmon info -u -m -e -p`` first (one ``Card N`` block per device, section headers such as
``Physical Memory Usage`` followed by indented ``Key : value`` lines: UUID, both temperatures, ECC counters) and
falls back to the default ``cnmon`` table, which every driver prints (v4.20 with ``Inited Driver`` and
``vMemory-Usage`` columns, v5.10 with ``Bus-Id`` and ``SR-IOV Compute-Mode``). :func:`parse_cnmon_json` reads the
JSON export (``cnmon info -e -m -u -j`` writes ``cnmon_info.json`` with a ``CnmonInfo`` array) for operators who
collect that file instead::

    >>> table = parse_cnmon_table(open("tests/fixtures/cambricon/paddle-docs-cnmon-5.10.13-mlu370-x8.txt").read())
    >>> [(r.index, r.name, r.bus_id, r.values["power_w"], r.values["memory_total_mib"]) for r in table.readings]
    [(0, 'MLU370-X8', '0000:39:00.0', 106.0, 23374.0), (1, 'MLU370-X8', '0000:3D:00.0', 106.0, 23374.0)]
    >>> table.tool_version, table.driver_version
    ('5.10.13', '5.10.13')
"""

from __future__ import annotations

import json
import re
from typing import Any

from agents.protocol import Health
from agents.shims.tool import Mode, Parsed, Reading, ReadingShim, bus_id, cells, celsius, nonneg, parse_number, pct


def parse_cnmon_text(text: str) -> list[Reading]:
    """Parse ``cnmon info`` text. A card whose block is cut short keeps what was printed before the cut."""
    return parse_cnmon_info(text).readings


def parse_cnmon_info(text: str) -> Parsed:
    out = Parsed()
    current: Reading | None = None
    section = ""
    for raw in text.splitlines():
        line = raw.rstrip()
        card = re.match(r"^\s*Card\s+(\d+)\s*$", line)
        if card:
            current = Reading(index=int(card.group(1)), name="")
            out.readings.append(current)
            section = ""
            continue
        if current is None or not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            section = line.strip().lower()  # "Physical Memory Usage", "Temperature", "Power Info", ...
            continue
        key = key.strip().lower()
        indented = raw[:1].isspace()
        if key == "driver" and not indented:
            out.driver_version = out.driver_version or value.strip().lstrip("v") or None
            continue
        _apply(current, f"{section}/{key}" if indented else key, value.strip())
    for reading in out.readings:
        if not reading.name:
            reading.name = "unknown"
            reading.problems.append("no product name printed for this card")
    return out


def _apply(reading: Reading, key: str, value: str) -> None:
    v = reading.values
    if key == "product name":
        reading.name = value
    elif key == "uuid":
        reading.uuid = value or None
    elif key in {"bus id", "pcie bus id", "bdf"}:
        reading.bus_id = bus_id(value) or value
    elif key.endswith("/mlu average"):
        v["utilization_pct"] = pct(parse_number(value))
        if v["utilization_pct"] is None and value:
            reading.problems.append(f"utilisation {value!r} not understood")
    elif key.startswith("physical memory usage/") and key.endswith("/total"):
        v["memory_total_mib"] = nonneg(parse_number(value))
    elif key.startswith("physical memory usage/") and key.endswith("/used"):
        v["memory_used_mib"] = nonneg(parse_number(value))
    elif key.startswith("temperature/") and key.endswith("/chip"):
        v["temperature_c"] = celsius(parse_number(value))
    elif key.startswith("power info/") and key.endswith("/usage"):
        v["power_w"] = nonneg(parse_number(value))
    elif key.startswith("power info/") and key.endswith("/cap"):
        v["power_limit_w"] = nonneg(parse_number(value))
    elif key.startswith("ecc") and "uncorrect" in key:
        count = parse_number(value)
        v["ecc_uncorrectable_total"] = int(count) if count is not None and count >= 0 else None


def parse_cnmon_table(text: str) -> Parsed:
    """Parse the default ``cnmon`` table: two lines per card (``Card VF Name Firmware | Bus-Id or Inited Driver |
    Util Ecc-Error`` then ``Fan Temp Pwr:Usage/Cap | Memory-Usage | ...``), then the process table."""
    out = Parsed()
    version = re.search(r"CNMON\s+v?(\d\S*)", text)
    out.tool_version = version.group(1) if version else None
    driver = re.search(r"Driver\s+v(\d\S*)", text)
    out.driver_version = driver.group(1) if driver else None
    pending: Reading | None = None
    for line in text.splitlines():
        if "Processes:" in line:
            break
        if not line.startswith("|") or line.startswith("|="):
            continue
        row = cells(line)
        if row[0].startswith(("Card", "Fan", "CNMON")):
            continue
        if len(row) < 3:
            if pending is not None:
                pending.problems.append(f"metrics line not understood: {line.strip()[:80]!r}")
                pending = None
            continue
        head = row[0].split()
        if len(head) >= 3 and head[0].isdigit():
            if pending is not None:
                pending.problems.append("metrics line missing")
            pending = _card_line(head, row)
            if pending.notes and out.driver_version is None:
                out.driver_version = pending.notes[0]
            pending.notes = []
            out.readings.append(pending)
            continue
        if pending is not None:
            _metrics_line(pending, row)
            pending = None
        elif any(c for c in row):
            out.problems.append(f"table row not understood: {line.strip()[:80]!r}")
    if pending is not None:
        pending.problems.append("metrics line missing (output cut short?)")
    return out


def _card_line(head: list[str], row: list[str]) -> Reading:
    # "0  /  MLU370-X8  v1.1.6": card, VF ("/" when SR-IOV is off), name, firmware
    name_tokens = [t for t in head[1:] if t != "/" and not re.fullmatch(r"v\d[\d.]*", t)]
    if head[1:2] != ["/"] and len(head) > 1 and head[1].isdigit():
        name_tokens = name_tokens[1:]  # a VF number
    reading = Reading(index=int(head[0]), name=" ".join(name_tokens) or "unknown", health=Health.HEALTHY)
    second = row[1].split()
    reading.bus_id = bus_id(row[1])
    if reading.bus_id is None and len(second) == 2 and re.fullmatch(r"v\d\S*", second[1]):
        reading.notes.append(second[1].lstrip("v"))  # v4.20: "Inited  Driver" = "On  v4.20.11"
    util = row[2].split()
    if util:
        reading.values["utilization_pct"] = pct(parse_number(util[0]))
        if reading.values["utilization_pct"] is None and util[0].upper() != "N/A":
            reading.problems.append(f"utilisation {util[0]!r} not understood")
    if len(util) > 1 and util[1].upper() != "N/A":
        count = parse_number(util[1])
        reading.values["ecc_uncorrectable_total"] = int(count) if count is not None and count >= 0 else None
    return reading


def _metrics_line(reading: Reading, row: list[str]) -> None:
    # "  0%   32C        106 W/ 250 W" | "0 MiB/ 23374 MiB" | ...
    first = row[0]
    temp = re.search(r"(-?\d+(?:\.\d+)?)\s*C\b", first)
    reading.values["temperature_c"] = celsius(float(temp.group(1))) if temp else None
    power = re.search(r"(\S+)\s*W\s*/\s*(\S+)\s*W", first)
    reading.values["power_w"] = nonneg(parse_number(power.group(1))) if power else None
    reading.values["power_limit_w"] = nonneg(parse_number(power.group(2))) if power else None
    memory = re.search(r"(\S+)\s*MiB\s*/\s*(\S+)\s*MiB", row[1])
    if memory:
        reading.values["memory_used_mib"] = nonneg(parse_number(memory.group(1)))
        reading.values["memory_total_mib"] = nonneg(parse_number(memory.group(2)))
    else:
        reading.problems.append(f"memory usage {row[1]!r} not understood")
    if temp is None and "N/A" not in first:
        reading.problems.append(f"temperature in {first.strip()!r} not understood")


def parse_cnmon_json(text: str) -> list[Reading]:
    """Parse the ``cnmon info -j`` export: ``{"CnmonInfo": [{"CardNum", "ProductName", "UUID",
    "PhysicalMemUsage": {"Total", "Used"}, "Temperature": {"Chip"}, "Utilization": {"MLUAverage"}}]}``."""
    doc = json.loads(text)
    readings = []
    for card in doc.get("CnmonInfo", []) if isinstance(doc, dict) else []:
        if not isinstance(card, dict):
            continue
        index = parse_number(str(card.get("CardNum", "")))
        if index is None or index < 0:
            continue
        memory: dict[str, Any] = card.get("PhysicalMemUsage") or {}
        temperature: dict[str, Any] = card.get("Temperature") or {}
        utilization: dict[str, Any] = card.get("Utilization") or {}
        if not all(isinstance(x, dict) for x in (memory, temperature, utilization)):
            continue
        values = {
            "memory_total_mib": nonneg(parse_number(str(memory.get("Total")))),
            "memory_used_mib": nonneg(parse_number(str(memory.get("Used")))),
            "temperature_c": celsius(parse_number(str(temperature.get("Chip")))),
            "utilization_pct": pct(parse_number(str(utilization.get("MLUAverage")))),
        }
        readings.append(
            Reading(
                index=int(index),
                name=str(card.get("ProductName") or "unknown"),
                uuid=str(card["UUID"]) if card.get("UUID") else None,
                values=values,
                health=Health.HEALTHY,
            )
        )
    return readings


class CambriconShim(ReadingShim):
    vendor = "cambricon"
    tool = "cnmon"
    tools = ("cnmon",)
    modes = (
        Mode("info", ("info", "-u", "-m", "-e", "-p"), parse_cnmon_info),
        Mode("table", (), parse_cnmon_table),
    )
