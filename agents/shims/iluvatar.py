"""Iluvatar CoreX GPUs through ``ixsmi``, whose query interface is nvidia-smi's::

>>> text = open("tests/fixtures/iluvatar/ixsmi-query.csv").read()
>>> [(r.index, r.name, r.values["power_w"]) for r in parse_ixsmi_csv(text)]
[(0, 'Iluvatar BI-V150', 57.1), (1, 'Iluvatar BI-V150', None)]
"""

from __future__ import annotations

import csv

from agents.protocol import Health
from agents.shims.tool import Reading, ReadingShim, ToolResult, nonneg, parse_number, pct

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
    readings = []
    for row in csv.reader(text.splitlines()):
        cells = [c.strip() for c in row]
        if len(cells) < len(QUERY) or not cells[0].isdigit():
            continue
        ecc = _value(cells[10])
        reading = Reading(
            index=int(cells[0]),
            uuid=cells[1] if cells[1] and "N/A" not in cells[1] else None,
            name=cells[2],
            bus_id=cells[3] or None,
            values={
                "memory_total_mib": nonneg(_value(cells[4])),
                "memory_used_mib": nonneg(_value(cells[5])),
                "utilization_pct": pct(_value(cells[6])),
                "temperature_c": _value(cells[7]),
                "power_w": nonneg(_value(cells[8])),
                "sm_clock_mhz": nonneg(_value(cells[9])),
                "ecc_uncorrectable_total": int(ecc) if ecc is not None and ecc >= 0 else None,
            },
            health=Health.HEALTHY,
        )
        readings.append(reading)
    return readings


class IluvatarShim(ReadingShim):
    vendor = "iluvatar"
    tool = "ixsmi"

    def _read(self) -> tuple[ToolResult, list[Reading]]:
        result = self._run(f"--query-gpu={','.join(QUERY)}", "--format=csv,noheader,nounits")
        return result, parse_ixsmi_csv(result.stdout) if result.ok else []
