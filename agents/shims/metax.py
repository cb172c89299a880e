"""MetaX GPUs through the ``mx-smi`` summary table (``ht-smi`` on hosts that install it under that name).

Two lines per GPU, like nvidia-smi; values are read by their units, so the layouts of mx-smi 2.x releases read
alike (``| 0   MetaX C550 | 0000:0f:00.0 | 0% |`` then ``| 29C   53W / 450W | 858/65536 MiB | Available |``).
The header gives the versions (``mx-smi  version: 2.2.4``, ``Kernel Mode Driver Version: 2.15.9``)::

    >>> table = parse_mx_smi_table(open("tests/fixtures/metax/ernie-docs-mx-smi-2.2.4-c550.txt").read())
    >>> [(r.index, r.name, r.values["power_w"], r.values["memory_total_mib"]) for r in table.readings][:2]
    [(0, 'MetaX C550', 53.0, 65536.0), (1, 'MetaX C550', 53.0, 65536.0)]
    >>> table.tool_version, table.driver_version
    ('2.2.4', '2.15.9')
"""

from __future__ import annotations

import re

from agents.shims.tool import Mode, Parsed, Reading, ReadingShim, parse_nvsmi_style


def parse_mx_smi(text: str) -> list[Reading]:
    return parse_mx_smi_table(text).readings


def parse_mx_smi_table(text: str) -> Parsed:
    out = Parsed(readings=parse_nvsmi_style(text))
    tool = re.search(r"(?:mx-smi\s+version:|MX-SMI)\s*([0-9][\w.\-]*)", text, re.IGNORECASE)
    driver = re.search(r"(?:Kernel Mode )?Driver Version:\s*([0-9][\w.\-]*)", text)
    maca = re.search(r"MACA Version:\s*([0-9][\w.\-]*)", text)
    out.tool_version = tool.group(1) if tool else None
    out.driver_version = driver.group(1) if driver else (maca.group(1) if maca else None)
    return out


class MetaxShim(ReadingShim):
    vendor = "metax"
    tool = "mx-smi"
    tools = ("mx-smi", "ht-smi")
    modes = (Mode("table", (), parse_mx_smi_table),)
