"""Hygon DCUs through ``hy-smi`` (a rocm-smi derivative) and its ``--json`` output.

One call reads everything: ``hy-smi --showproductname --showuniqueid --showpower --showtemp --showuse
--showmeminfo vram --json`` prints ``{"card0": {"Card Series": ..., "DCU use (%)": ..., ...}}``. Some hy-smi
builds print banner lines around the JSON, so the object is cut out of the text before parsing::

    >>> text = open("tests/fixtures/hygon/hy-smi.json").read()
    >>> [(r.index, r.values["power_w"]) for r in parse_hy_smi(text)]
    [(0, 80.0), (1, 231.0)]
"""

from __future__ import annotations

import json
import re
from typing import Any

from agents.protocol import Health
from agents.shims.tool import Reading, ReadingShim, ToolResult, nonneg, parse_number, pct

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


def extract_json_object(text: str) -> Any:
    """The JSON object in ``text``, ignoring banner lines before and after it."""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        raise ValueError("no JSON object in output")
    return json.loads(text[start : end + 1])


def _get(card: dict[str, Any], *keys: str) -> str | None:
    lowered = {k.strip().lower(): v for k, v in card.items()}
    for key in keys:
        if key.lower() in lowered:
            return str(lowered[key.lower()])
    return None


def parse_hy_smi(text: str) -> list[Reading]:
    doc = extract_json_object(text)
    readings = []
    for card_key, card in doc.items() if isinstance(doc, dict) else []:
        match = re.fullmatch(r"card(\d+)", str(card_key))
        if not match or not isinstance(card, dict):
            continue
        temperature = _get(card, "Temperature (Sensor junction) (C)", "Temperature (Sensor edge) (C)")
        values = {
            "utilization_pct": pct(parse_number(_get(card, "DCU use (%)", "GPU use (%)"))),
            "memory_total_mib": nonneg(parse_number(_get(card, "vram Total Memory (MiB)"))),
            "memory_used_mib": nonneg(parse_number(_get(card, "vram Total Used Memory (MiB)"))),
            "power_w": nonneg(parse_number(_get(card, "Average Graphics Package Power (W)"))),
            "temperature_c": parse_number(temperature),
        }
        readings.append(
            Reading(
                index=int(match.group(1)),
                name=_get(card, "Card Series", "Card Model") or "unknown",
                uuid=f"hygon-{uid}" if (uid := _get(card, "Unique ID")) else None,
                values=values,
                health=Health.HEALTHY,
            )
        )
    return readings


class HygonShim(ReadingShim):
    vendor = "hygon"
    tool = "hy-smi"

    def _read(self) -> tuple[ToolResult, list[Reading]]:
        result = self._run(*HY_SMI_ARGS)
        return result, parse_hy_smi(result.stdout) if result.ok else []
