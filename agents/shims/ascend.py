"""Huawei Ascend NPUs through ``npu-smi``.

Fast ticks parse the ``npu-smi info`` summary table (one call for all chips: health, power, temperature, AI core
utilisation, HBM usage). Slow ticks add the per-chip queries ``npu-smi info -t usages|power|temp -i N -c M``,
whose ``key : value`` lines are more precise (HBM capacity, real-time power) but cost three calls per chip.
``npu-smi info -m`` maps (NPU, chip) to the logical id and full chip name used for the catalog::

    >>> table = open("tests/fixtures/ascend/npu-smi-info-910b.txt").read()
    >>> rows = parse_info_table(table)
    >>> rows[0].npu, rows[0].chip, rows[0].power_w, rows[0].hbm_total_mib
    (0, 0, 93.6, 65536.0)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from agents.protocol import METRIC_FIELDS, DeviceInfo, DeviceSample, Health
from agents.shims.tool import ToolShim, nonneg, parse_number, pct

# npu-smi's health words (npu-smi source: is_unhealthy_state lists Warning, Alarm, Critical). Warning is a minor
# alarm that MindCluster still schedules on, so it is reported as a reason on a healthy device.
_UNHEALTHY = {"alarm", "critical", "error", "abnormal"}
_WARNING = {"warning"}


@dataclass
class ChipRow:
    """One chip of the ``npu-smi info`` table; ``None`` where the cell was ``NA`` or unreadable."""

    npu: int
    chip: int
    name: str
    health: str
    bus_id: str | None = None
    power_w: float | None = None
    temperature_c: float | None = None
    aicore_pct: float | None = None
    memory_used_mib: float | None = None
    memory_total_mib: float | None = None
    hbm_used_mib: float | None = None
    hbm_total_mib: float | None = None
    problems: list[str] = field(default_factory=list)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _tokens(cell: str) -> list[str]:
    return [t for t in re.split(r"[\s/]+", cell) if t]


def parse_info_table(text: str) -> list[ChipRow]:
    """Parse the chip rows of ``npu-smi info``. Rows cut off by truncated output are left out."""
    has_hbm = "HBM-Usage" in text
    rows: list[ChipRow] = []
    current: tuple[int, str, str, list[str]] | None = None  # npu, name, health, first-line values
    for line in text.splitlines():
        if "Process id" in line or "Process name" in line:
            break  # the process table follows; nothing of ours below
        if not line.startswith("|"):
            continue
        cells = _cells(line)
        if len(cells) < 3:
            continue
        head = cells[0].split()
        if len(head) >= 2 and head[0].isdigit() and not head[1].isdigit():
            # first line of an NPU: "| 0     910B3 | OK | 93.6   45   0 / 0 |"
            current = (int(head[0]), " ".join(head[1:]), cells[1], _tokens(cells[2]))
            continue
        if current is None or not head or not head[0].isdigit():
            continue
        # chip line: "| 0 | 0000:C1:00.0 | 0   0 / 0   3398 / 65536 |"; on 310P cards head is "chip device"
        npu, name, health, first = current
        values = _tokens(cells[2])
        row = ChipRow(npu=npu, chip=int(head[0]), name=name, health=health)
        row.bus_id = cells[1] if re.fullmatch(r"[0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.\d", cells[1]) else None
        row.power_w = nonneg(parse_number(first[0])) if len(first) > 0 else None
        row.temperature_c = parse_number(first[1]) if len(first) > 1 else None
        row.aicore_pct = pct(parse_number(values[0])) if values else None
        if len(values) >= 3:
            row.memory_used_mib = nonneg(parse_number(values[1]))
            row.memory_total_mib = nonneg(parse_number(values[2]))
        if has_hbm and len(values) >= 5:
            row.hbm_used_mib = nonneg(parse_number(values[3]))
            row.hbm_total_mib = nonneg(parse_number(values[4]))
        elif has_hbm:
            row.problems.append("HBM usage missing from npu-smi row")
        rows.append(row)
    return rows


def parse_chip_map(text: str) -> dict[tuple[int, int], tuple[int, str]]:
    """``npu-smi info -m``: (NPU id, chip id) → (logical id, chip name). MCU rows (logic id ``-``) are skipped."""
    mapping: dict[tuple[int, int], tuple[int, str]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0].isdigit() and parts[1].isdigit() and parts[2].isdigit():
            mapping[(int(parts[0]), int(parts[1]))] = (int(parts[2]), " ".join(parts[3:]))
    return mapping


def parse_key_values(text: str) -> dict[str, str]:
    """The ``\\tKey (unit)    : value`` lines of ``npu-smi info -t ...``; keys are compared without spaces."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip():
            values[re.sub(r"\s+", "", key)] = value.strip()
    return values


def _first(values: dict[str, str], *keys: str) -> float | None:
    for key in keys:
        if key in values:
            return parse_number(values[key])
    return None


class AscendShim(ToolShim):
    """Huawei Ascend through ``npu-smi``; ``per_chip`` enables the three per-chip queries on slow ticks."""

    vendor = "huawei"
    tool = "npu-smi"

    def __init__(self, per_chip: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.per_chip = per_chip
        self._keys: dict[int, tuple[int, int]] = {}  # device index -> (npu, chip)

    def _discover(self) -> list[DeviceInfo]:
        result = self._run("info")
        if not result.ok:
            return self._discover_failed(result)
        rows = parse_info_table(result.stdout)
        if not rows:
            return self._absent("npu-smi info listed no chips (unrecognised or truncated output)")
        chip_map = {}
        mapped = self._run("info", "-m")
        if mapped.ok:
            chip_map = parse_chip_map(mapped.stdout)
        version = re.search(r"npu-smi\s+(\S+)", result.stdout)
        devices = []
        self._keys = {}
        for position, row in enumerate(rows):
            logic, full_name = chip_map.get((row.npu, row.chip), (position, row.name))
            notes = [] if (row.npu, row.chip) in chip_map else ["logical id not in npu-smi info -m; table order used"]
            stand_in = row.bus_id or f"npu{row.npu}-chip{row.chip}"
            devices.append(
                self.resolver.describe(
                    self.vendor,
                    logic,
                    f"ascend-{stand_in}",
                    full_name,
                    bus_id=row.bus_id,
                    memory_total_mib=row.hbm_total_mib or row.memory_total_mib,
                    notes=[*notes, "npu-smi prints no UUID; uuid is derived from the PCI bus id"],
                )
            )
            self._keys[logic] = (row.npu, row.chip)
        return self._present(devices, tool_version=version.group(1) if version else None)

    def _sample(self, fast: bool, now: float, wall: float) -> list[DeviceSample]:
        result = self._run("info")
        if not result.ok:
            return self.failed_samples(result.describe(), now, wall)
        rows = {(r.npu, r.chip): r for r in parse_info_table(result.stdout)}
        out: list[DeviceSample] = []
        for device in self.devices:
            key = self._keys.get(device.index)
            row = rows.get(key) if key else None
            if row is None:
                failed = self.failed_samples(f"chip {key} missing from npu-smi info output", now, wall)
                out.extend(s for s in failed if s.index == device.index)
                continue
            sample = self._from_row(device, row, now, wall)
            if not fast and self.per_chip:
                self._add_per_chip(sample, row)
            out.append(sample)
        return out

    def _from_row(self, device: DeviceInfo, row: ChipRow, now: float, wall: float) -> DeviceSample:
        sample = self._new_sample(device, now, wall)
        sample.utilization_pct = row.aicore_pct
        hbm = row.hbm_total_mib is not None and row.hbm_total_mib > 0
        sample.memory_used_mib = row.hbm_used_mib if hbm else row.memory_used_mib
        sample.memory_total_mib = row.hbm_total_mib if hbm else row.memory_total_mib
        sample.power_w = row.power_w
        sample.temperature_c = row.temperature_c
        word = row.health.strip().lower()
        if word in _UNHEALTHY:
            sample.health = Health.UNHEALTHY
            sample.health_reasons.append(f"npu-smi health {row.health}")
        elif word in _WARNING:
            sample.health_reasons.append(f"npu-smi health {row.health} (minor alarm)")
        elif word != "ok":
            sample.health = Health.UNKNOWN
            sample.health_reasons.append(f"npu-smi health {row.health!r} not recognised")
        sample.health_reasons.extend(row.problems)
        self._flag_missing(sample)
        return sample

    def _add_per_chip(self, sample: DeviceSample, row: ChipRow) -> None:
        ids = ("-i", str(row.npu), "-c", str(row.chip))
        usages = self._run("info", "-t", "usages", *ids)
        if usages.ok:
            kv = parse_key_values(usages.stdout)
            capacity = _first(kv, "HBMCapacity(MB)")
            rate = pct(_first(kv, "HBMUsageRate(%)"))
            if capacity and rate is not None:
                sample.memory_total_mib = capacity
                # npu-smi gives only a whole-percent rate here; the table's MB figure is more precise if present
                if sample.memory_used_mib is None:
                    sample.memory_used_mib = round(capacity * rate / 100)
            aicore = pct(_first(kv, "AicoreUsageRate(%)", "AICoreUsageRate(%)"))
            if aicore is not None:
                sample.utilization_pct = aicore
        else:
            sample.health_reasons.append(usages.describe())
        power = self._run("info", "-t", "power", *ids)
        if power.ok:
            watts = nonneg(_first(parse_key_values(power.stdout), "NPUReal-timePower(W)", "PowerDissipation(W)"))
            if watts is not None:
                sample.power_w = watts
        temp = self._run("info", "-t", "temp", *ids)
        if temp.ok:
            celsius = _first(parse_key_values(temp.stdout), "NPUTemperature(C)", "Temperature(C)")
            if celsius is not None:
                sample.temperature_c = celsius
        sample.slow_sampled_monotonic_s = sample.sampled_monotonic_s
        sample.fields_unavailable = []
        self._flag_missing(sample)

    @staticmethod
    def _flag_missing(sample: DeviceSample) -> None:
        missing = [f for f in METRIC_FIELDS if f != "xid_events" and getattr(sample, f) is None]
        # XIDs are an NVIDIA notion; npu-smi reports faults through its health word instead.
        sample.flag_unavailable(*missing, "xid_events")
