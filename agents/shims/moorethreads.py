"""Moore Threads GPUs through ``mthreads-gmi -q --json``.

The JSON mirrors ``nvidia-smi -q``: a ``GPU`` array with ``Index``, ``Product Name``, ``FB Memory Usage``,
``Utilization``, ``Temperature`` and ``Power Readings`` objects whose values carry units (``"49152MiB"``,
``"35C"``). Some builds emit keys with trailing spaces (``"Power Draw "``); keys are compared stripped::

    >>> text = open("tests/fixtures/moorethreads/mthreads-gmi-q.json").read()
    >>> [(r.index, r.name, r.values["power_w"]) for r in parse_mthreads_json(text)]
    [(0, 'MTT S4000', 212.5), (1, 'MTT S4000', 48.0)]
"""

from __future__ import annotations

from typing import Any

from agents.protocol import Health
from agents.shims.hygon import extract_json_object
from agents.shims.tool import Reading, ReadingShim, ToolResult, nonneg, parse_number, pct


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
    doc = _strip_keys(extract_json_object(text))
    gpus = doc.get("GPU", []) if isinstance(doc, dict) else []
    readings = []
    for gpu in gpus if isinstance(gpus, list) else []:
        index = parse_number(str(gpu.get("Index"))) if isinstance(gpu, dict) else None
        if index is None:
            continue
        pci = gpu.get("PCI") if isinstance(gpu.get("PCI"), dict) else {}
        readings.append(
            Reading(
                index=int(index),
                name=str(gpu.get("Product Name") or "unknown"),
                uuid=str(gpu["GPU UUID"]) if gpu.get("GPU UUID") else None,
                bus_id=str(pci.get("Bus Id")) if pci.get("Bus Id") else None,
                values={
                    "memory_total_mib": nonneg(_num(gpu.get("FB Memory Usage"), "Total")),
                    "memory_used_mib": nonneg(_num(gpu.get("FB Memory Usage"), "Used")),
                    "utilization_pct": pct(_num(gpu.get("Utilization"), "Gpu")),
                    "temperature_c": _num(gpu.get("Temperature"), "GPU Current Temp"),
                    "power_w": nonneg(_num(gpu.get("Power Readings"), "Power Draw")),
                },
                health=Health.HEALTHY,
            )
        )
    return readings


class MooreThreadsShim(ReadingShim):
    vendor = "moorethreads"
    tool = "mthreads-gmi"

    def _read(self) -> tuple[ToolResult, list[Reading]]:
        result = self._run("-q", "--json")
        return result, parse_mthreads_json(result.stdout) if result.ok else []
