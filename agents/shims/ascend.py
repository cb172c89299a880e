"""Huawei Ascend NPUs through ``npu-smi``.

Fast ticks parse the ``npu-smi info`` summary table (one call for all chips: health, power, temperature, AI core
utilisation, memory). Slow ticks add the per-chip queries ``npu-smi info -t usages|power|temp -i N -c M``, whose
``key : value`` lines are more precise (HBM capacity, real-time power) but cost three calls per chip.
``npu-smi info -m`` maps (NPU, chip) to the logical id and the chip name used for the catalog.

The table changed across releases and boards, and the parser follows its header rather than fixed positions:

* 20.x (Atlas 300 / 310): ``Power(W) Temp(C)`` then ``Chip Device | Bus-Id | AICore(%) Memory-Usage(MB)``, the
  NPU line repeated for each of the card's four chips;
* 21.x adds ``Hugepages-Usage(page)`` to the first line;
* 22.x-25.x on 910A / 910B: ``Chip | Bus-Id | AICore(%) Memory-Usage(MB) HBM-Usage(MB)``, one chip per NPU;
* Atlas A3 (24.1.rc3 onwards): ``Chip Phy-ID``, two dies per NPU, the NPU line repeated per die and the board's
  power printed on the first die only (``-`` on the second).

::

    >>> table = parse_info_table(open("tests/fixtures/ascend/vllm-ascend-2035-24.1.rc3.7-a3.excerpt.txt").read())
    >>> [(r.npu, r.chip, r.name, r.power_w, r.hbm_total_mib) for r in table.rows]
    [(0, 0, 'Ascend910', 178.8, 65536.0), (0, 1, 'Ascend910', None, 65536.0)]
    >>> table.tool_version, table.second_id
    ('24.1.rc3.7', 'phy')
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from agents.protocol import DeviceInfo, DeviceSample, Health
from agents.shims.tool import ToolShim, bus_id, cells, celsius, nonneg, parse_number, pct

# npu-smi's health words (npu-smi source: is_unhealthy_state lists Warning, Alarm, Critical). Warning is a minor
# alarm that MindCluster still schedules on, so it is reported as a reason on a healthy device.
_UNHEALTHY = {"alarm", "critical", "error", "abnormal"}
_WARNING = {"warning"}
_EMPTY = {"", "-", "na", "n/a"}

# Column labels of the two header lines, as npu-smi prints them, mapped to the values they announce.
_FIRST_LINE = {"power(w)": "power", "temp(c)": "temp", "hugepages-usage(page)": "hugepages"}
_SECOND_LINE = {"aicore(%)": "aicore", "memory-usage(mb)": "memory", "hbm-usage(mb)": "hbm"}
_DEFAULT_FIRST = ["power", "temp", "hugepages"]
_DEFAULT_SECOND = ["aicore", "memory", "hbm"]


@dataclass
class ChipRow:
    """One chip of the ``npu-smi info`` table; ``None`` where the cell was ``NA``, ``-`` or unreadable."""

    npu: int
    chip: int
    name: str
    health: str
    second_id: int | None = None  # the "Device" (20.x/21.x) or "Phy-ID" (A3) column
    bus_id: str | None = None
    power_w: float | None = None
    temperature_c: float | None = None
    aicore_pct: float | None = None
    memory_used_mib: float | None = None
    memory_total_mib: float | None = None
    hbm_used_mib: float | None = None
    hbm_total_mib: float | None = None
    power_on_other_chip: bool = False
    problems: list[str] = field(default_factory=list)


@dataclass
class InfoTable:
    rows: list[ChipRow] = field(default_factory=list)
    tool_version: str | None = None
    driver_version: str | None = None
    second_id: str | None = None  # "device" | "phy" | None
    problems: list[str] = field(default_factory=list)


def _values(cell: str) -> list[str | tuple[str, str]]:
    """The values of a table cell: ``"0  3411 / 65536"`` → ``["0", ("3411", "65536")]`` (pairs kept together)."""
    out: list[str | tuple[str, str]] = []
    for match in re.finditer(r"(\S+?)\s*/\s*(\S+)|(\S+)", cell):
        if match.group(3) is not None:
            out.append(match.group(3))
        else:
            out.append((match.group(1), match.group(2)))
    return out


def _labels(cell: str, known: dict[str, str]) -> list[str]:
    labels = [known.get(token.lower(), "?") for token in cell.split()]
    return [label for label in labels if label != "?"]


def _num(value: str | tuple[str, str] | None, part: int | None = None) -> float | None:
    if value is None:
        return None
    if isinstance(value, tuple):
        return parse_number(value[part or 0]) if part is not None else None
    if value.strip().lower() in _EMPTY:
        return None
    return parse_number(value)


def _is_int(token: str) -> bool:
    return token.isdigit()


def parse_info_table(text: str) -> InfoTable:
    """Parse ``npu-smi info``. Rows cut off by truncated output are left out; rows that cannot be read are
    reported in ``problems`` (of the row when it is known, of the table otherwise)."""
    table = InfoTable()
    version = re.search(r"npu-smi\s+(\d\S*)", text)
    table.tool_version = version.group(1) if version else None
    driver = re.search(r"Version:\s*(\d\S*)", text)
    table.driver_version = driver.group(1) if driver else None
    first_fields: list[str] | None = None
    second_fields: list[str] | None = None
    current: tuple[int, str, str, list[str | tuple[str, str]]] | None = None
    for line in text.splitlines():
        if "Process id" in line or "Process name" in line:
            break  # the process table follows; nothing of ours below
        if not line.lstrip().startswith("|"):
            continue
        row = cells(line)
        if len(row) < 3:
            continue
        head = row[0].split()
        if head[:2] == ["NPU", "Name"] or (head and head[0] == "NPU" and "Health" in row[1]):
            first_fields = _labels(row[2], _FIRST_LINE)
            continue
        if head and head[0] == "Chip" and "Bus-Id" in row[1]:
            second_fields = _labels(row[2], _SECOND_LINE)
            table.second_id = {"device": "device", "phy-id": "phy"}.get(head[1].lower()) if len(head) > 1 else None
            continue
        # A chip line carries the PCI bus id in its second cell, an NPU line its health word. (The name alone
        # cannot tell them apart: the 310 is named "310".)
        chip_line = bus_id(row[1]) is not None or (
            bool(head) and all(_is_int(t) for t in head) and row[1].strip().lower() in _EMPTY
        )
        if not chip_line and len(head) >= 2 and _is_int(head[0]):
            # first line of an NPU (repeated per chip on 310 and A3 boards): "| 0  910B3 | OK | 93.6  45  0 / 0 |"
            current = (int(head[0]), " ".join(head[1:]), row[1], _values(row[2]))
            continue
        if not head or not all(_is_int(t) for t in head) or len(head) > 2:
            if row[0] and not row[0].startswith("="):
                table.problems.append(f"table row not understood: {line.strip()[:80]!r}")
            continue
        if current is None:
            table.problems.append(f"chip row before any NPU row: {line.strip()[:80]!r}")
            continue
        if first_fields is None or second_fields is None:
            if not any("header not found" in p for p in table.problems):
                table.problems.append("table header not found; columns read in the 22.x-25.x order")
            first_fields = first_fields or _DEFAULT_FIRST
            second_fields = second_fields or _DEFAULT_SECOND
        table.rows.append(_chip_row(current, head, row, first_fields, second_fields))
    return table


def _chip_row(
    current: tuple[int, str, str, list[str | tuple[str, str]]],
    head: list[str],
    row: list[str],
    first_fields: list[str],
    second_fields: list[str],
) -> ChipRow:
    npu, name, health, first = current
    chip = ChipRow(npu=npu, chip=int(head[0]), name=name, health=health)
    chip.second_id = int(head[1]) if len(head) > 1 else None
    chip.bus_id = bus_id(row[1])
    if chip.bus_id is None and row[1].strip().lower() not in _EMPTY:
        chip.problems.append(f"bus id {row[1]!r} not understood")
    first_values = dict(zip(first_fields, first, strict=False))
    second_values = dict(zip(second_fields, _values(row[2]), strict=False))
    power = first_values.get("power")
    chip.power_on_other_chip = power == "-"
    chip.power_w = nonneg(_num(power))
    chip.temperature_c = celsius(_num(first_values.get("temp")))
    aicore = second_values.get("aicore")
    chip.aicore_pct = pct(_num(aicore))
    if aicore is not None and chip.aicore_pct is None and str(aicore).lower() not in _EMPTY:
        chip.problems.append(f"AICore value {aicore!r} not understood")
    for key, used_attr, total_attr in (
        ("memory", "memory_used_mib", "memory_total_mib"),
        ("hbm", "hbm_used_mib", "hbm_total_mib"),
    ):
        value = second_values.get(key)
        if key not in second_fields:
            continue
        if not isinstance(value, tuple):
            chip.problems.append(f"{key.upper() if key == 'hbm' else 'memory'} usage {value!r} not understood")
            continue
        setattr(chip, used_attr, nonneg(_num(value, 0)))
        setattr(chip, total_attr, nonneg(_num(value, 1)))
        if getattr(chip, used_attr) is None:
            chip.problems.append(f"{'HBM' if key == 'hbm' else 'memory'} usage {'/'.join(value)!r} not understood")
    return chip


@dataclass
class ChipMap:
    """``npu-smi info -m``: (NPU id, chip id) → (logical id, chip name); MCU rows (logic id ``-``) are skipped."""

    chips: dict[tuple[int, int], tuple[int, str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


_MAP_LABELS = ("Chip Logic ID", "Chip Phy-ID", "Chip Count", "Chip Name", "Chip ID", "Slot ID", "NPU ID")


def parse_chip_map(text: str) -> dict[tuple[int, int], tuple[int, str]]:
    """The mapping of :func:`parse_chip_map_full`, for callers that need only the chips."""
    return parse_chip_map_full(text).chips


def parse_chip_map_full(text: str) -> ChipMap:
    """Parse ``npu-smi info -m`` by its header, so the 950-class layout (with ``Slot ID`` and ``Chip Phy-ID``)
    reads like the older four-column one::

        >>> text = "NPU ID Chip ID Chip Logic ID Chip Phy-ID Chip Name\\n0 0 0 0 Ascend910\\n0 1 - - Mcu"
        >>> parse_chip_map_full(text).chips
        {(0, 0): (0, 'Ascend910')}
    """
    out = ChipMap()
    columns: list[str] | None = None
    for line in text.splitlines():
        if "NPU ID" in line and "Chip" in line:
            header = line
            for label in _MAP_LABELS:
                header = header.replace(label, label.replace(" ", "_"))
            columns = header.split()
            continue
        parts = line.split()
        if not parts or not parts[0].isdigit():
            continue
        cols = columns or ["NPU_ID", "Chip_ID", "Chip_Logic_ID", "Chip_Name"]
        if "Chip_Name" not in cols or len(parts) < len(cols):
            out.problems.append(f"-m row not understood: {line.strip()[:80]!r}")
            continue
        name_at = cols.index("Chip_Name")
        fixed = dict(zip(cols[:name_at], parts[:name_at], strict=False))
        name = " ".join(parts[name_at : name_at + 1 + len(parts) - len(cols)])
        logic = fixed.get("Chip_Logic_ID", "-")
        npu, chip = fixed.get("NPU_ID", ""), fixed.get("Chip_ID", "")
        if logic == "-" or name.lower() == "mcu":
            continue  # the board's management MCU, not a compute chip
        if not (npu.isdigit() and chip.isdigit() and logic.isdigit()):
            out.problems.append(f"-m row not understood: {line.strip()[:80]!r}")
            continue
        out.chips[(int(npu), int(chip))] = (int(logic), name)
    return out


def _unique_chips(table: InfoTable) -> list[ChipRow]:
    """The chip rows with each (NPU, chip) once; a repeat is dropped and recorded as a problem of the table."""
    seen: set[tuple[int, int]] = set()
    rows = []
    for row in table.rows:
        if (row.npu, row.chip) in seen:
            table.problems.append(f"NPU {row.npu} chip {row.chip} is listed twice; the second row was ignored")
            continue
        seen.add((row.npu, row.chip))
        rows.append(row)
    return rows


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
    tools = ("npu-smi",)

    def __init__(self, per_chip: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.per_chip = per_chip
        self._keys: dict[int, tuple[int, int]] = {}  # device index -> (npu, chip)

    def _discover(self) -> list[DeviceInfo]:
        result = self._run("info")
        if not result.ok:
            return self._discover_failed(result)
        table = parse_info_table(result.stdout)
        self.tool_version, self.driver_version = table.tool_version, table.driver_version
        if not table.rows:
            what = "; ".join(table.problems) or "no chip rows recognised in 'npu-smi info'"
            return self._nothing_understood(result, what)
        chip_map = ChipMap()
        mapped = self._run("info", "-m")
        if mapped.ok:
            chip_map = parse_chip_map_full(mapped.stdout)
        rows = _unique_chips(table)
        buses = Counter(r.bus_id for r in rows)
        devices = []
        uuids: set[str] = set()
        self._keys = {}
        for position, row in enumerate(rows):
            logic, map_name = chip_map.chips.get((row.npu, row.chip), (position, ""))
            notes = (
                [] if (row.npu, row.chip) in chip_map.chips else ["logical id not in npu-smi info -m; table order used"]
            )
            if logic in self._keys:
                notes.append(f"logical id {logic} repeated by npu-smi info -m; table order used")
                logic = position
            shared_bus = row.bus_id is None or buses[row.bus_id] > 1
            stand_in = f"{row.bus_id}-chip{row.chip}" if shared_bus and row.bus_id else row.bus_id
            stand_in = stand_in or f"npu{row.npu}-chip{row.chip}"
            if f"ascend-{stand_in}" in uuids:  # two chips claiming one bus id: keep both, tell them apart
                stand_in = f"{stand_in}-npu{row.npu}-chip{row.chip}"
            uuids.add(f"ascend-{stand_in}")
            notes.append(
                f"npu-smi prints no UUID; uuid is derived from {'the PCI bus id' if row.bus_id else 'npu/chip ids'}"
            )
            if row.power_on_other_chip:
                notes.append("npu-smi prints this board's power on its first chip only")
            hbm = row.hbm_total_mib is not None and row.hbm_total_mib > 0
            devices.append(
                self.resolver.describe(
                    self.vendor,
                    logic,
                    f"ascend-{stand_in}",
                    row.name,
                    bus_id=row.bus_id,
                    memory_total_mib=row.hbm_total_mib if hbm else row.memory_total_mib,
                    other_names=[map_name] if map_name else [],
                    notes=notes,
                )
            )
            self._keys[logic] = (row.npu, row.chip)
        return self._present(devices)

    def _sample(self, fast: bool, now: float, wall: float) -> list[DeviceSample]:
        result = self._run("info")
        if not result.ok:
            return self.failed_samples(self.reason(result.describe()), now, wall)
        table = parse_info_table(result.stdout)
        rows = {(r.npu, r.chip): r for r in _unique_chips(table)}
        out: list[DeviceSample] = []
        for device in self.devices:
            key = self._keys.get(device.index)
            row = rows.get(key) if key else None
            if row is None:
                what = f"chip {key} missing from npu-smi info output"
                if table.problems:
                    what += f" ({'; '.join(table.problems)})"
                failed = self.failed_samples(self.reason(what), now, wall)
                out.extend(s for s in failed if s.index == device.index)
                continue
            sample = self._from_row(device, row, now, wall)
            if not fast and self.per_chip:
                self._add_per_chip(sample, row)
            out.append(self._finish(sample, row.problems, table.problems))
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
            sample.health_reasons.append(self.reason(f"health {row.health!r} not understood"))
        return sample

    def _add_per_chip(self, sample: DeviceSample, row: ChipRow) -> None:
        ids = ("-i", str(row.npu), "-c", str(row.chip))
        usages = self._run("info", "-t", "usages", *ids)
        if usages.ok:
            kv = parse_key_values(usages.stdout)
            capacity = nonneg(_first(kv, "HBMCapacity(MB)"))
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
            sample.health_reasons.append(self.reason(f"per-chip query failed: {usages.describe()}"))
        power = self._run("info", "-t", "power", *ids)
        if power.ok:
            watts = nonneg(_first(parse_key_values(power.stdout), "NPUReal-timePower(W)", "PowerDissipation(W)"))
            if watts is not None:
                sample.power_w = watts
        temp = self._run("info", "-t", "temp", *ids)
        if temp.ok:
            value = celsius(_first(parse_key_values(temp.stdout), "NPUTemperature(C)", "Temperature(C)"))
            if value is not None:
                sample.temperature_c = value
        sample.slow_sampled_monotonic_s = sample.sampled_monotonic_s
