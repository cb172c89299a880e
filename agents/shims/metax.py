"""MetaX GPUs through the ``mx-smi`` summary table (two table lines per GPU, like nvidia-smi)::

| 0           MetaX C500             | 0000:0f:00.0        | 87%                  |
| 36C         269W / 350W            | 52100/65536 MiB     |                      |

>>> text = open("tests/fixtures/metax/mx-smi.txt").read()
>>> [(r.index, r.name, r.values["utilization_pct"]) for r in parse_mx_smi(text)]
[(0, 'MetaX C500', 87.0), (1, 'MetaX C500', 0.0)]
"""

from __future__ import annotations

import re

from agents.protocol import Health
from agents.shims.tool import Reading, ReadingShim, ToolResult, nonneg, parse_number, pct

_FIRST = re.compile(r"^\|\s*(\d+)\s+(.+?)\s*\|\s*([0-9a-fA-F:.]+)\s*\|\s*(\S+)?")
_SECOND = re.compile(r"^\|\s*(\S+)\s+(\S+)\s*/\s*(\S+)\s*\|\s*(\S+)\s*/\s*(\S+)\s*MiB")


def parse_mx_smi(text: str) -> list[Reading]:
    readings: list[Reading] = []
    pending: Reading | None = None
    for line in text.splitlines():
        first = _FIRST.match(line)
        if first:
            pending = Reading(
                index=int(first.group(1)),
                name=first.group(2),
                bus_id=first.group(3),
                values={"utilization_pct": pct(parse_number(first.group(4)))},
                health=Health.HEALTHY,
            )
            readings.append(pending)
            continue
        second = _SECOND.match(line)
        if second and pending is not None:
            pending.values.update(
                {
                    "temperature_c": parse_number(second.group(1)),
                    "power_w": nonneg(parse_number(second.group(2))),
                    "power_limit_w": nonneg(parse_number(second.group(3))),
                    "memory_used_mib": nonneg(parse_number(second.group(4))),
                    "memory_total_mib": nonneg(parse_number(second.group(5))),
                }
            )
            pending = None
    return readings


class MetaxShim(ReadingShim):
    vendor = "metax"
    tool = "mx-smi"

    def _read(self) -> tuple[ToolResult, list[Reading]]:
        result = self._run()
        return result, parse_mx_smi(result.stdout) if result.ok else []
