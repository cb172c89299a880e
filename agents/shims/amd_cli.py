"""AMD GPUs through the ``amd-smi`` or ``rocm-smi`` command-line tools, for hosts where the ``amdsmi`` Python
library does not import (it ships with ROCm but often not into the agent's Python).

``amd-smi`` is asked for ``static --json`` once (names, PCI addresses, VRAM size, driver) and ``metric --json``
each tick. Its JSON changed shape between releases: ROCm 6.0-6.3 print a list of per-GPU objects, 6.4 and later
``{"gpu_data": [...]}``; values are ``{"value": 42, "unit": "%"}`` objects or ``"N/A"``. Both are read. Where
``metric --json`` fails, ``amd-smi monitor -putm`` (a plain table) gives power, temperature and utilisation.
Without ``amd-smi``, ``rocm-smi --json`` is read (the format Hygon's tools share, see :mod:`agents.shims.hygon`)::

    >>> rows = parse_amd_smi_monitor(open("tests/fixtures/amd/rocm-blogs-amd-smi-monitor-putm-mi300x.txt").read())
    >>> [(r.index, r.values["power_w"], r.values["utilization_pct"]) for r in rows.readings][:2]
    [(0, 182.0, 83.0), (1, 143.0, 13.0)]
"""

from __future__ import annotations

import re
from typing import Any

from agents.protocol import DeviceInfo, DeviceSample, Health
from agents.shims.hygon import extract_json_object, parse_driver_version, parse_rocm_smi_json
from agents.shims.tool import (
    Mode,
    Parsed,
    Reading,
    ReadingShim,
    ToolOutcome,
    ToolShim,
    bus_id,
    celsius,
    nonneg,
    parse_number,
    pct,
    safe_parse,
    unique_readings,
)

_UNIT_TO_MIB = {"b": 1 / (1024 * 1024), "kb": 1 / 1024, "mb": 1.0, "mib": 1.0, "gb": 1024.0, "gib": 1024.0}
_UNIT_TO_J = {"j": 1.0, "uj": 1e-6, "mj": 1e-3, "kj": 1e3}


def _value(node: Any) -> tuple[float | None, str]:
    """``{"value": 42, "unit": "%"}`` → (42, "%"); ``"N/A"`` → (None, ""); ``"182 W"`` → (182, "W")."""
    if isinstance(node, dict):
        number, unit = _value(node.get("value"))
        return number, str(node.get("unit") or unit)
    if isinstance(node, bool) or node is None:
        return None, ""
    if isinstance(node, int | float):
        return float(node), ""
    text = str(node)
    unit = re.sub(r"^[-\d.\s]+", "", text).strip()
    return parse_number(text), unit


def _path(doc: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(key)
    return doc


def _first(doc: Any, *paths: tuple[str, ...]) -> Any:
    for path in paths:
        found = _path(doc, *path)
        if found not in (None, "N/A") and (not isinstance(found, dict) or found.get("value") not in (None, "N/A")):
            return found
    return None


def _mib(node: Any) -> float | None:
    number, unit = _value(node)
    if number is None:
        return None
    return nonneg(number * _UNIT_TO_MIB.get(unit.lower(), 1.0))


def _gpus(doc: Any) -> list[dict[str, Any]]:
    """The per-GPU objects of either JSON shape."""
    if isinstance(doc, dict) and isinstance(doc.get("gpu_data"), list):
        doc = doc["gpu_data"]
    if isinstance(doc, list):
        return [g for g in doc if isinstance(g, dict) and isinstance(g.get("gpu"), int)]
    return []


def parse_amd_smi_static(text: str) -> Parsed:
    """``amd-smi static --json``: the name, address, VRAM size and driver of each GPU."""
    out = Parsed()
    for gpu in _gpus(extract_json_object(text)):
        name = _first(gpu, ("asic", "market_name"), ("board", "product_name"))
        reading = Reading(index=gpu["gpu"], name=str(name or ""), health=Health.HEALTHY)
        reading.bus_id = bus_id(str(_first(gpu, ("bus", "bdf"), ("bdf",)) or ""))
        uuid = _first(gpu, ("asic", "asic_serial"), ("uuid",))
        reading.uuid = f"amd-{uuid}" if uuid else None
        total = _mib(_first(gpu, ("vram", "size"), ("vram", "vram_size")))
        if total is not None:
            reading.values["memory_total_mib"] = total
        limit, _ = _value(_first(gpu, ("limit", "socket_power"), ("limit", "max_power"), ("limit", "power")))
        if limit is not None:
            reading.values["power_limit_w"] = nonneg(limit)
        driver = _first(gpu, ("driver", "version"), ("driver", "driver_version"))
        out.driver_version = out.driver_version or (str(driver) if driver else None)
        if not name:
            reading.problems.append("static output has no market name")
        out.readings.append(reading)
    return out


def parse_amd_smi_metric(text: str) -> Parsed:
    """``amd-smi metric --json``: utilisation, power, temperature, memory, energy and ECC of each GPU."""
    out = Parsed()
    for gpu in _gpus(extract_json_object(text)):
        v: dict[str, float | None] = {}
        reading = Reading(index=gpu["gpu"], name="", health=Health.HEALTHY, values=v)
        util, _ = _value(_first(gpu, ("usage", "gfx_activity"), ("usage", "gfx_usage")))
        v["utilization_pct"] = pct(util)
        power, _ = _value(
            _first(gpu, ("power", "socket_power"), ("power", "current_socket_power"), ("power", "average_socket_power"))
        )
        v["power_w"] = nonneg(power)
        temp, _ = _value(_first(gpu, ("temperature", "hotspot"), ("temperature", "junction"), ("temperature", "edge")))
        v["temperature_c"] = celsius(temp)
        v["memory_used_mib"] = _mib(_first(gpu, ("mem_usage", "used_vram"), ("vram", "used")))
        total = _mib(_first(gpu, ("mem_usage", "total_vram"), ("vram", "total")))
        if total is not None:
            v["memory_total_mib"] = total
        clock, _ = _value(_first(gpu, ("clock", "gfx_0", "clk"), ("clock", "gfx", "clk")))
        v["sm_clock_mhz"] = nonneg(clock)
        energy, unit = _value(_first(gpu, ("energy", "total_energy_consumption")))
        if energy is not None:
            v["energy_j"] = nonneg(energy * _UNIT_TO_J.get(unit.lower(), 1.0))
        uncorrectable, _ = _value(_first(gpu, ("ecc", "total_uncorrectable_count"), ("ecc", "uncorrectable_count")))
        correctable, _ = _value(_first(gpu, ("ecc", "total_correctable_count"), ("ecc", "correctable_count")))
        if uncorrectable is not None:
            v["ecc_uncorrectable_total"] = nonneg(uncorrectable)
        if correctable is not None:
            v["ecc_correctable_total"] = nonneg(correctable)
        out.readings.append(reading)
    return out


def parse_amd_smi_static_text(text: str) -> Parsed:
    """The human-readable ``amd-smi static`` (``GPU: 0`` blocks of ``KEY: value`` lines)."""
    out = Parsed()
    current: Reading | None = None
    for line in text.splitlines():
        gpu = re.match(r"^GPU:\s*(\d+)\s*$", line)
        if gpu:
            current = Reading(index=int(gpu.group(1)), name="", health=Health.HEALTHY)
            out.readings.append(current)
            continue
        key, sep, value = line.strip().partition(":")
        if current is None or not sep:
            continue
        key, value = key.strip().upper(), value.strip()
        if key == "MARKET_NAME":
            current.name = value
        elif key == "BDF":
            current.bus_id = bus_id(value)
        elif key == "SIZE" and value:
            current.values["memory_total_mib"] = _mib(value)
    return out


def parse_amd_smi_monitor(text: str) -> Parsed:
    """``amd-smi monitor -putm``: a header (``GPU POWER GPU_TEMP ... GFX_UTIL ...``) and one row per GPU whose
    values carry units (``182 W``, ``42 °C``, ``83 %``), or ``N/A``."""
    out = Parsed()
    columns: list[str] | None = None
    for line in text.splitlines():
        tokens = line.split()
        if not tokens:
            continue
        if (tokens[0] == "GPU" and "POWER" in tokens) or "GFX_UTIL" in tokens:
            columns = tokens
            continue
        if columns is None or not tokens[0].isdigit():
            continue
        values = re.findall(r"N/A|-?\d+(?:\.\d+)?\s*(?:°C|C|W|%|MHz|MB|GB)?", line.split(maxsplit=1)[1])
        if len(values) != len(columns) - 1:
            out.problems.append(f"row has {len(values)} values for {len(columns) - 1} columns: {line.strip()[:80]!r}")
            continue
        reading = Reading(index=int(tokens[0]), name="", health=Health.HEALTHY)
        by_name = dict(zip(columns[1:], values, strict=True))
        reading.values["power_w"] = nonneg(parse_number(by_name.get("POWER")))
        reading.values["temperature_c"] = celsius(parse_number(by_name.get("GPU_TEMP")))
        reading.values["utilization_pct"] = pct(parse_number(by_name.get("GFX_UTIL")))
        if "GFX_CLOCK" in by_name:
            reading.values["sm_clock_mhz"] = nonneg(parse_number(by_name["GFX_CLOCK"]))
        if "VRAM_USED" in by_name:
            reading.values["memory_used_mib"] = _mib(by_name["VRAM_USED"])
        out.readings.append(reading)
    return out


ROCM_SMI_ARGS = (
    "--showproductname",
    "--showuniqueid",
    "--showbus",
    "--showuse",
    "--showpower",
    "--showtemp",
    "--showmeminfo",
    "vram",
    "--json",
)


class RocmSmiShim(ReadingShim):
    """AMD GPUs through ``rocm-smi --json`` (ROCm's older tool, still the only one on many hosts)."""

    vendor = "amd"
    tool = "rocm-smi"
    tools = ("rocm-smi",)
    uuid_prefix = "amd-"
    modes = (Mode("json", ROCM_SMI_ARGS, parse_rocm_smi_json),)
    version_mode = Mode("driver", ("--showdriverversion",), parse_driver_version)


class AmdSmiCliShim(ToolShim):
    """AMD GPUs through ``amd-smi``: ``static --json`` at discovery, ``metric --json`` (or ``monitor -putm``)
    on every tick."""

    vendor = "amd"
    tool = "amd-smi"
    tools = ("amd-smi",)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.metric_mode: Mode | None = None

    def _discover(self) -> list[DeviceInfo]:
        static = self._run("static", "--json")
        if static.outcome == ToolOutcome.MISSING:
            return self._discover_failed(static)
        parsed = safe_parse(parse_amd_smi_static, static.stdout) if static.ok else Parsed()
        if not parsed.readings:
            text = self._run("static")
            if text.ok:
                parsed = safe_parse(parse_amd_smi_static_text, text.stdout)
        version = self._run("version")
        if version.ok:
            found = re.search(r"AMDSMI Tool:\s*([0-9][\w.\-+]*)", version.stdout)
            self.tool_version = found.group(1) if found else None
        self.driver_version = parsed.driver_version
        readings = unique_readings(parsed)
        if not readings:
            return self._nothing_understood(static, "; ".join(parsed.problems) or "static output lists no GPU")
        for mode in (
            Mode("metric", ("metric", "--json"), parse_amd_smi_metric),
            Mode("monitor", ("monitor", "-putm"), parse_amd_smi_monitor),
        ):
            result = self._run(*mode.args)
            if result.ok and safe_parse(mode.parse, result.stdout).readings:
                self.metric_mode = mode
                break
        devices = []
        for reading in readings:
            devices.append(
                self.resolver.describe(
                    self.vendor,
                    reading.index,
                    reading.uuid or f"amd-{reading.bus_id or reading.index}",
                    reading.name,
                    bus_id=reading.bus_id,
                    memory_total_mib=reading.values.get("memory_total_mib"),
                    notes=[] if self.metric_mode else ["amd-smi printed no usable metrics at discovery"],
                )
            )
        self._static = {r.index: r for r in readings}
        return self._present(devices)

    def _sample(self, fast: bool, now: float, wall: float) -> list[DeviceSample]:
        mode = self.metric_mode
        if mode is None:
            return self.failed_samples(self.reason("neither 'metric --json' nor 'monitor' could be read"), now, wall)
        result = self._run(*mode.args)
        if not result.ok:
            return self.failed_samples(self.reason(result.describe()), now, wall)
        parsed = safe_parse(mode.parse, result.stdout)
        by_index = {r.index: r for r in unique_readings(parsed)}
        out: list[DeviceSample] = []
        for device in self.devices:
            reading = by_index.get(device.index)
            if reading is None:
                out.extend(
                    s
                    for s in self.failed_samples(self.reason(f"GPU {device.index} missing"), now, wall)
                    if s.index == device.index
                )
                continue
            sample = self._new_sample(device, now, wall)
            static = getattr(self, "_static", {}).get(device.index)
            for name, value in {**(static.values if static else {}), **reading.values}.items():
                setattr(sample, name, int(value) if value is not None and name.startswith("ecc_") else value)
            out.append(self._finish(sample, reading.problems, parsed.problems))
        return out
