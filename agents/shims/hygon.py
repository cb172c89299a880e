"""Hygon DCUs through ``hy-smi`` (Hygon's rocm-smi) or DTK's own ``rocm-smi``, JSON first, the table second.

One call reads everything: ``hy-smi --showproductname --showuniqueid --showpower --showtemp --showuse
--showmeminfo vram --json`` prints ``{"card0": {"Card Series": ..., "DCU use (%)": ..., ...}}``. Some builds print
banner lines around the JSON, so the object is cut out of the text first. Builds differ in key spelling (``DCU
use (%)``, ``HCU use (%)`` on newer tools, rocm-smi's ``GPU use (%)``; memory in MiB or, like upstream rocm-smi,
in bytes), and keys are matched by pattern. When the JSON mode is missing the default table is read (``DCU Temp
AvgPwr ... DCU%``, newer tools ``HCU``); it prints no product name, so such devices have no catalog model::

    >>> cards = parse_hy_smi_json(open("tests/fixtures/hygon/gpustack-dtk24.04.3-rocm-smi.json").read()).readings
    >>> [(r.index, r.name, r.values["memory_total_mib"], r.values["temperature_c"]) for r in cards]
    [(0, 'DCU xxxx', 65520.0, 39.0)]
    >>> rows = parse_smi_table(open("tests/fixtures/hygon/paddle-docs-dtk23.10-rocm-smi.txt").read()).readings
    >>> [(r.index, r.values["power_w"], r.values["utilization_pct"]) for r in rows][:2]
    [(0, 38.0, 0.0), (1, 41.0, 0.0)]
"""

from __future__ import annotations

import json
import re
from typing import Any

from agents.protocol import Health
from agents.shims.tool import Mode, Parsed, Reading, ReadingShim, bus_id, celsius, nonneg, parse_number, pct

HY_SMI_ARGS = (
    "--showproductname",
    "--showuniqueid",
    "--showpower",
    "--showtemp",
    "--showuse",
    "--showmeminfo",
    "vram",
    "--json",
)

_MIB = 1024 * 1024


def extract_json_object(text: str) -> Any:
    """The JSON value in ``text`` (an object or an array), ignoring banner lines before and after it."""
    starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    if not starts:
        raise ValueError("no JSON in output")
    start = min(starts)
    end = max(text.rfind("}"), text.rfind("]"))
    if end <= start:
        raise ValueError("no complete JSON in output")
    return json.loads(text[start : end + 1])


def _find(card: dict[str, Any], *patterns: str) -> tuple[str, str] | None:
    """The first (key, value) whose key matches one of ``patterns`` (case-insensitive, in order)."""
    for pattern in patterns:
        regex = re.compile(pattern, re.IGNORECASE)
        for key, value in card.items():
            if regex.fullmatch(str(key).strip()) and value not in (None, ""):
                return str(key), str(value)
    return None


def _memory_mib(card: dict[str, Any], which: str) -> float | None:
    found = _find(card, rf"vram {which} memory \((mib|b)\)")
    if found is None:
        return None
    value = nonneg(parse_number(found[1]))
    if value is None:
        return None
    return value / _MIB if found[0].lower().endswith("(b)") else value


def parse_rocm_smi_json(text: str) -> Parsed:
    """Parse rocm-smi-style JSON (Hygon's hy-smi, DTK rocm-smi, AMD rocm-smi): ``cardN`` objects."""
    doc = extract_json_object(text)
    out = Parsed()
    for card_key, card in doc.items() if isinstance(doc, dict) else []:
        match = re.fullmatch(r"card(\d+)", str(card_key))
        if not match or not isinstance(card, dict):
            continue
        values: dict[str, float | None] = {}
        reading = Reading(index=int(match.group(1)), name="", health=Health.HEALTHY, values=values)
        name = _find(card, "card series", "card model", "device name", "marketing name")
        reading.name = name[1] if name else ""
        if not name:
            reading.notes.append("no product name printed")
        uid = _find(card, "unique id")
        if uid and uid[1].upper() not in {"N/A", "NA"}:
            reading.uuid = uid[1]
        bus = _find(card, "pci bus")
        reading.bus_id = bus_id(bus[1]) if bus else None
        use = _find(card, r"(dcu|hcu|gpu) use \(%\)")
        values["utilization_pct"] = pct(parse_number(use[1])) if use else None
        values["memory_total_mib"] = _memory_mib(card, "total")
        values["memory_used_mib"] = _memory_mib(card, "total used")
        power = _find(card, r"(current|average) (socket )?graphics package power \(w\)", r"average .*power \(w\)")
        values["power_w"] = nonneg(parse_number(power[1])) if power else None
        cap = _find(card, r"max graphics package power \(w\)")
        if cap:
            values["power_limit_w"] = nonneg(parse_number(cap[1]))
        temp = _find(card, r"temperature \(sensor junction\) \(c\)", r"temperature \(sensor edge\) \(c\)")
        values["temperature_c"] = celsius(parse_number(temp[1])) if temp else None
        for label, found in (("utilisation", use), ("power", power), ("temperature", temp)):
            if found and parse_number(found[1]) is None and found[1].strip().upper() not in {"N/A", "NA"}:
                reading.problems.append(f"{label} {found[1]!r} ({found[0]}) not understood")
        out.readings.append(reading)
    if isinstance(doc, dict) and not out.readings:
        out.problems.append(f"JSON has no cardN objects (keys: {', '.join(list(map(str, doc))[:5])})")
    return out


def parse_hy_smi(text: str) -> list[Reading]:
    """The readings of :func:`parse_hy_smi_json` (kept for callers that want only the devices)."""
    return parse_hy_smi_json(text).readings


parse_hy_smi_json = parse_rocm_smi_json

# Table columns (as printed in the header) → the metric each carries. Units ride on the values ("30.0c", "38.0W").
_TABLE_COLUMNS = {
    "temp": "temperature_c",
    "avgpwr": "power_w",
    "pwrcap": "power_limit_w",
    "dcu%": "utilization_pct",
    "hcu%": "utilization_pct",
    "gpu%": "utilization_pct",
}


def parse_smi_table(text: str) -> Parsed:
    """Parse the concise ``hy-smi`` / DTK ``rocm-smi`` table: a header naming the columns, then one line per
    device whose tokens follow the header (``0  30.0c  38.0W  0.0%  auto  280.0W  0%  0%``)."""
    out = Parsed()
    columns: list[str] | None = None
    for line in text.splitlines():
        tokens = line.split()
        if not tokens or set(line.strip()) <= {"="}:
            continue
        if tokens[0].upper() in {"DCU", "HCU", "GPU"} and "Temp" in tokens:
            columns = [t.lower() for t in tokens]
            continue
        if columns is None or not tokens[0].isdigit():
            if columns is not None and not line.strip().startswith("="):
                out.problems.append(f"table row not understood: {line.strip()[:80]!r}")
            continue
        if len(tokens) != len(columns):
            out.problems.append(f"row has {len(tokens)} values for {len(columns)} columns: {line.strip()[:80]!r}")
            continue
        reading = Reading(index=int(tokens[0]), name="", health=Health.HEALTHY)
        reading.notes.append("the table prints no product name")
        for column, token in zip(columns, tokens, strict=True):
            metric = _TABLE_COLUMNS.get(column)
            if metric is None:
                continue
            number = parse_number(token)
            if metric == "temperature_c":
                value = celsius(number)
            elif metric == "utilization_pct":
                value = pct(number)
            else:
                value = nonneg(number)
            if number is None and token.upper() not in {"N/A", "NA"}:
                reading.problems.append(f"{column} value {token!r} not understood")
            reading.values[metric] = value
        out.readings.append(reading)
    return out


def parse_driver_version(text: str) -> Parsed:
    found = re.search(r"driver version\W+([0-9][\w.\-]*)", text, re.IGNORECASE)
    return Parsed(driver_version=found.group(1) if found else None)


class HygonShim(ReadingShim):
    vendor = "hygon"
    tool = "hy-smi"
    tools = ("hy-smi", "rocm-smi")
    uuid_prefix = "hygon-"
    modes = (
        Mode("json", HY_SMI_ARGS, parse_rocm_smi_json),
        Mode("table", (), parse_smi_table),
    )
    version_mode = Mode("driver", ("--showdriverversion",), parse_driver_version)
