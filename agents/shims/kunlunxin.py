"""Kunlunxin XPUs through ``xpu-smi -m`` (one machine-readable line of 32 space-separated fields per device).

Field positions (0-based): 1 device id, 4 temperature (C), 8 power (W), 17 memory used (MiB), 18 memory total
(MiB), 19 utilisation (%), 21-22 the product name in parentheses, e.g. ``(P800 OAM)``::

    >>> text = open("tests/fixtures/kunlunxin/xpu-smi-m.txt").read()
    >>> [(r.index, r.name, r.values["memory_used_mib"]) for r in parse_xpu_smi_m(text)]
    [(0, 'P800 OAM', 1020.0), (1, 'P800 OAM', 90112.0)]
"""

from __future__ import annotations

import re

from agents.protocol import Health
from agents.shims.tool import Reading, ReadingShim, ToolResult, nonneg, parse_number, pct

_FIELDS = 32


def parse_xpu_smi_m(text: str) -> list[Reading]:
    readings = []
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 23 or not fields[1].isdigit():
            continue  # a header, a truncated line or another tool's noise
        name_tokens = " ".join(fields[21:23])
        name = name_tokens.strip("()") if name_tokens.startswith("(") else "unknown"
        reading = Reading(
            index=int(fields[1]),
            name=name,
            bus_id=fields[0] if re.fullmatch(r"[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.\d", fields[0]) else None,
            values={
                "temperature_c": parse_number(fields[4]),
                "power_w": nonneg(parse_number(fields[8])),
                "memory_used_mib": nonneg(parse_number(fields[17])),
                "memory_total_mib": nonneg(parse_number(fields[18])),
                "utilization_pct": pct(parse_number(fields[19])),
            },
            health=Health.HEALTHY,
        )
        if len(fields) != _FIELDS:
            reading.reasons.append(f"xpu-smi -m line has {len(fields)} fields, expected {_FIELDS}")
        readings.append(reading)
    return readings


class KunlunxinShim(ReadingShim):
    vendor = "kunlunxin"
    tool = "xpu-smi"

    def _read(self) -> tuple[ToolResult, list[Reading]]:
        result = self._run("-m")
        return result, parse_xpu_smi_m(result.stdout) if result.ok else []
