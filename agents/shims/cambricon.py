"""Cambricon MLUs through ``cnmon``.

The shim parses the text of ``cnmon info -u -m -e -p`` (one ``Card N`` block per device, section headers such as
``Physical Memory Usage`` followed by indented ``Key : value`` lines). :func:`parse_cnmon_json` reads the JSON
export (``cnmon info -e -m -u -j`` writes ``cnmon_info.json`` with a ``CnmonInfo`` array) for operators who
collect that file instead::

    >>> text = open("tests/fixtures/cambricon/cnmon-info.txt").read()
    >>> [(r.index, r.name, r.values["utilization_pct"]) for r in parse_cnmon_text(text)]
    [(0, 'MLU370-X8', 35.0), (1, 'MLU370-X8', 0.0)]
"""

from __future__ import annotations

import json
import re
from typing import Any

from agents.protocol import Health
from agents.shims.tool import Reading, ReadingShim, ToolResult, nonneg, parse_number, pct


def parse_cnmon_text(text: str) -> list[Reading]:
    """Parse ``cnmon info`` text. A card whose block is cut short keeps what was printed before the cut."""
    readings: list[Reading] = []
    current: Reading | None = None
    section = ""
    for raw in text.splitlines():
        line = raw.rstrip()
        card = re.match(r"^\s*Card\s+(\d+)\s*$", line)
        if card:
            current = Reading(index=int(card.group(1)), name="")
            readings.append(current)
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
        section_key = f"{section}/{key}" if indented else key
        _apply(current, section_key, value.strip())
    for reading in readings:
        if not reading.name:
            reading.name = "unknown"
            reading.reasons.append("cnmon printed no product name")
    return readings


def _apply(reading: Reading, key: str, value: str) -> None:
    v = reading.values
    if key == "product name":
        reading.name = value
    elif key == "uuid":
        reading.uuid = value or None
    elif key in {"bus id", "pcie bus id", "bdf"}:
        reading.bus_id = value
    elif key.endswith("/mlu average"):
        v["utilization_pct"] = pct(parse_number(value))
    elif key.startswith("physical memory usage/") and key.endswith("/total"):
        v["memory_total_mib"] = nonneg(parse_number(value))
    elif key.startswith("physical memory usage/") and key.endswith("/used"):
        v["memory_used_mib"] = nonneg(parse_number(value))
    elif key.startswith("temperature/") and key.endswith("/chip"):
        v["temperature_c"] = parse_number(value)
    elif key.startswith("power info/") and key.endswith("/usage"):
        v["power_w"] = nonneg(parse_number(value))
    elif key.startswith("power info/") and key.endswith("/cap"):
        v["power_limit_w"] = nonneg(parse_number(value))
    elif key.startswith("ecc") and "uncorrect" in key:
        count = parse_number(value)
        v["ecc_uncorrectable_total"] = int(count) if count is not None and count >= 0 else None


def parse_cnmon_json(text: str) -> list[Reading]:
    """Parse the ``cnmon info -j`` export: ``{"CnmonInfo": [{"CardNum", "ProductName", "UUID",
    "PhysicalMemUsage": {"Total", "Used"}, "Temperature": {"Chip"}, "Utilization": {"MLUAverage"}}]}``."""
    doc = json.loads(text)
    readings = []
    for card in doc.get("CnmonInfo", []) if isinstance(doc, dict) else []:
        if not isinstance(card, dict):
            continue
        index = parse_number(str(card.get("CardNum", "")))
        if index is None:
            continue
        memory: dict[str, Any] = card.get("PhysicalMemUsage") or {}
        temperature: dict[str, Any] = card.get("Temperature") or {}
        utilization: dict[str, Any] = card.get("Utilization") or {}
        values = {
            "memory_total_mib": nonneg(parse_number(str(memory.get("Total")))),
            "memory_used_mib": nonneg(parse_number(str(memory.get("Used")))),
            "temperature_c": parse_number(str(temperature.get("Chip"))),
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

    def _read(self) -> tuple[ToolResult, list[Reading]]:
        result = self._run("info", "-u", "-m", "-e", "-p")
        return result, parse_cnmon_text(result.stdout) if result.ok else []
