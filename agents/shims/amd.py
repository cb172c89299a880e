"""AMD GPUs through the ``amdsmi`` Python library (ROCm's AMD SMI), else the ``amd-smi`` / ``rocm-smi`` tools.

Where the library does not import (or cannot initialise), the shim falls back to
:class:`agents.shims.amd_cli.AmdSmiCliShim` and then :class:`agents.shims.amd_cli.RocmSmiShim`, so a host with
ROCm's tools but without the Python package still reports its GPUs.

The library module is a constructor argument (default: ``import amdsmi``), so tests inject an object with the
same function names and return shapes: ``amdsmi_get_gpu_vram_usage`` returns ``{"vram_total", "vram_used"}`` in
MB, ``amdsmi_get_power_info`` ``{"current_socket_power", "average_socket_power", "power_limit"}`` in W,
``amdsmi_get_gpu_activity`` ``{"gfx_activity", "umc_activity", "mm_activity"}`` in %, and the library returns the
string ``"N/A"`` for a value the GPU does not report::

    >>> AmdShim(module=None).discover()
    []
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from agents.protocol import METRIC_FIELDS, DeviceInfo, DeviceSample, Health, ShimState
from agents.shims.amd_cli import AmdSmiCliShim, RocmSmiShim
from agents.shims.base import ModelResolver, Shim
from agents.shims.tool import Runner, ToolShim
from scheduler.catalog import Catalog

_MISSING = object()


def _load_amdsmi() -> Any:
    try:
        import amdsmi  # type: ignore[import-not-found]
    except ImportError:
        return None
    return amdsmi


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(str(value).split()[0])
    except (ValueError, IndexError):
        return None  # "N/A"


class AmdShim(Shim):
    vendor = "amd"

    def __init__(
        self,
        module: Any = _MISSING,
        catalog: Catalog | str | None = "default",
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        cli: bool = True,
        amd_smi: str | None = None,
        rocm_smi: str | None = None,
        timeout_s: float = 5.0,
        runner: Runner | None = None,
    ) -> None:
        super().__init__()
        self.smi = _load_amdsmi() if module is _MISSING else module
        self.resolver = ModelResolver(catalog)
        self.clock, self.wall_clock = clock, wall_clock
        self._handles: list[Any] = []
        self._initialised = False
        self._slow: dict[int, dict[str, float | None]] = {}
        tool_args: dict[str, Any] = {
            "catalog": catalog,
            "timeout_s": timeout_s,
            "runner": runner,
            "clock": clock,
            "wall_clock": wall_clock,
        }
        self.fallbacks: list[ToolShim] = (
            [AmdSmiCliShim(binary=amd_smi, **tool_args), RocmSmiShim(binary=rocm_smi, **tool_args)] if cli else []
        )
        self.cli: ToolShim | None = None

    def discover(self) -> list[DeviceInfo]:
        if self.smi is None:
            return self._discover_cli("amdsmi Python package not installed")
        try:
            self.smi.amdsmi_init()
            self._initialised = True
            self._handles = list(self.smi.amdsmi_get_processor_handles())
        except Exception as err:  # AmdSmiLibraryException when the amdgpu driver is not loaded
            return self._discover_cli(f"amdsmi unusable: {err}")
        if not self._handles:
            return self._absent("amdsmi found no AMD GPUs")
        devices = []
        for index, handle in enumerate(self._handles):
            name = str(self._call("amdsmi_get_gpu_asic_info", handle).get("market_name") or "unknown")
            uuid = self._call_raw("amdsmi_get_gpu_device_uuid", handle)
            bdf = self._call_raw("amdsmi_get_gpu_device_bdf", handle)
            vram = self._call("amdsmi_get_gpu_vram_usage", handle)
            devices.append(
                self.resolver.describe(
                    self.vendor,
                    index,
                    str(uuid) if uuid else f"amd-{bdf or index}",
                    name,
                    bus_id=str(bdf) if bdf else None,
                    memory_total_mib=_num(vram.get("vram_total")),
                )
            )
        return self._present(devices)

    def _discover_cli(self, why: str) -> list[DeviceInfo]:
        """The library is unusable: try ``amd-smi`` then ``rocm-smi``; the first that finds GPUs is used."""
        reasons = [why]
        for shim in self.fallbacks:
            devices = shim.discover()
            if shim.status.state == ShimState.PRESENT:
                self.cli = shim
                self.status = shim.status.model_copy(update={"reason": f"{why}; using {shim.tool}"})
                self.devices = devices
                return devices
            reasons.append(shim.status.reason)
            if shim.status.state == ShimState.ERROR:
                self.status = shim.status.model_copy(update={"reason": "; ".join(reasons)})
                self.devices = []
                return []
        return self._absent("; ".join(reasons))

    def sample(self, fast: bool = True) -> list[DeviceSample]:
        if self.cli is not None:
            return self.cli.sample(fast)
        now, wall = self.clock(), self.wall_clock()
        out = []
        for device in self.devices:
            handle = self._handles[device.index]
            sample = DeviceSample(
                vendor=self.vendor,
                index=device.index,
                uuid=device.uuid,
                model=device.model,
                sampled_monotonic_s=now,
                sampled_wall_time=wall,
                health=Health.HEALTHY,
            )
            errors: list[str] = []
            activity = self._call("amdsmi_get_gpu_activity", handle, errors=errors)
            sample.utilization_pct = _pct(_num(activity.get("gfx_activity")))
            vram = self._call("amdsmi_get_gpu_vram_usage", handle, errors=errors)
            sample.memory_used_mib = _num(vram.get("vram_used"))
            sample.memory_total_mib = _num(vram.get("vram_total"))
            power = self._call("amdsmi_get_power_info", handle, errors=errors)
            current = _num(power.get("current_socket_power"))
            sample.power_w = current if current is not None else _num(power.get("average_socket_power"))
            sample.power_limit_w = _num(power.get("power_limit"))
            sample.temperature_c = _num(self._temperature(handle, errors))
            clock_info = self._call("amdsmi_get_clock_info", handle, self._enum("AmdSmiClkType", "GFX"), errors=errors)
            sample.sm_clock_mhz = _num(clock_info.get("clk"))
            if not fast:
                self._slow[device.index] = self._read_slow(handle, errors)
                sample.slow_sampled_monotonic_s = now
            for name, value in self._slow.get(device.index, {}).items():
                setattr(sample, name, int(value) if value is not None and name.startswith("ecc") else value)
            sample.health_reasons.extend(errors)
            sample.flag_unavailable(*(f for f in METRIC_FIELDS if getattr(sample, f) is None), "xid_events")
            out.append(sample)
        return out

    def _read_slow(self, handle: Any, errors: list[str]) -> dict[str, float | None]:
        energy = self._call("amdsmi_get_energy_count", handle, errors=errors)
        accumulator = _num(energy.get("energy_accumulator", energy.get("power")))
        resolution = _num(energy.get("counter_resolution"))  # microjoules per count
        ecc = self._call("amdsmi_get_gpu_total_ecc_count", handle, errors=errors)
        return {
            "energy_j": accumulator * resolution / 1e6 if accumulator is not None and resolution else None,
            "ecc_uncorrectable_total": _num(ecc.get("uncorrectable_count")),
            "ecc_correctable_total": _num(ecc.get("correctable_count")),
        }

    def _temperature(self, handle: Any, errors: list[str]) -> Any:
        kind = self._enum("AmdSmiTemperatureType", "HOTSPOT")
        metric = self._enum("AmdSmiTemperatureMetric", "CURRENT")
        return self._call_raw("amdsmi_get_temp_metric", handle, kind, metric, errors=errors)

    def _enum(self, enum_name: str, member: str) -> Any:
        enum = getattr(self.smi, enum_name, None)
        return getattr(enum, member, member)

    def _call(self, fn: str, *args: Any, errors: list[str] | None = None) -> dict[str, Any]:
        value = self._call_raw(fn, *args, errors=errors)
        return value if isinstance(value, dict) else {}

    def _call_raw(self, fn: str, *args: Any, errors: list[str] | None = None) -> Any:
        try:
            return getattr(self.smi, fn)(*args)
        except Exception as err:
            # "not supported" is a property of the GPU model, not a fault; anything else is worth a reason.
            if errors is not None and "not_supported" not in str(err).lower().replace(" ", "_"):
                errors.append(f"{fn}: {err}")
            return None

    def close(self) -> None:
        if self._initialised and self.smi is not None:
            try:
                self.smi.amdsmi_shut_down()
            finally:
                self._initialised = False


def _pct(value: float | None) -> float | None:
    return value if value is not None and 0 <= value <= 100 else None
