"""NVIDIA GPUs through NVML (the ``nvidia-ml-py`` package, imported as ``pynvml``).

Fast ticks read utilisation, memory, power, temperature and SM clock (2-11 µs per call on an H100). Slow ticks
add total energy (~2.8 ms), PCIe throughput (~21 ms), ECC counters, remapped rows, the enforced power limit and
MIG mode; between slow ticks the last slow readings are carried with ``slow_sampled_monotonic_s`` saying how old
they are. XID critical errors arrive through an NVML event set and are drained, without waiting, every tick.

The NVML module is a constructor argument so tests can inject a fake with the same function names and return
types. On a machine without the NVIDIA driver the real module raises ``NVMLError_LibraryNotFound`` (or
``DriverNotLoaded``) and the shim reports the vendor absent (output on a machine without a GPU)::

    >>> shim = NvmlShim()
    >>> shim.discover(), shim.status.state.value  # doctest: +SKIP
    ([], 'absent')
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from agents.protocol import METRIC_FIELDS, SLOW_FIELDS, DeviceInfo, DeviceSample, Health
from agents.shims.base import ModelResolver, Shim
from scheduler.catalog import Catalog

_MISSING = object()
_MIB = 1024 * 1024

# NVML return codes (nvml.h); compared by value so an injected module needs only ``NVMLError.value``.
_NOT_SUPPORTED = 3
_TIMEOUT = 10
_GPU_IS_LOST = 15
_EVENT_DRAIN_LIMIT = 1024  # bound the per-tick drain if a broken GPU floods events


class NvmlShim(Shim):
    vendor = "nvidia"

    def __init__(
        self,
        nvml: Any = _MISSING,
        catalog: Catalog | str | None = "default",
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        xid_events: bool = True,
    ) -> None:
        super().__init__()
        if nvml is _MISSING:
            import pynvml  # type: ignore[import-untyped]

            nvml = pynvml
        self.nvml = nvml
        self.resolver = ModelResolver(catalog)
        self.clock, self.wall_clock = clock, wall_clock
        self.want_xid_events = xid_events
        self._handles: list[Any] = []
        self._initialised = False
        self._event_set: Any = None
        self._xid_capable: set[int] = set()
        self._unsupported: set[tuple[int, str]] = set()  # (device, call) pairs that raised NotSupported once
        self._slow: dict[int, dict[str, Any]] = {}
        self._slow_at: dict[int, float] = {}

    # ------------------------------------------------------------------------------------------ discovery

    def discover(self) -> list[DeviceInfo]:
        nvml = self.nvml
        try:
            nvml.nvmlInit()
            self._initialised = True
            count = nvml.nvmlDeviceGetCount()
        except nvml.NVMLError as err:
            # LibraryNotFound / DriverNotLoaded / NoPermission: this node has no usable NVIDIA GPU.
            return self._absent(f"NVML unavailable: {err}")
        except OSError as err:
            return self._absent(f"NVML unavailable: {err}")
        self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        driver = self._plain(nvml.nvmlSystemGetDriverVersion)
        uuids = [str(self._plain(nvml.nvmlDeviceGetUUID, h) or f"nvidia-index{i}") for i, h in enumerate(self._handles)]
        devices = []
        for index, handle in enumerate(self._handles):
            pci = self._plain(nvml.nvmlDeviceGetPciInfo, handle)
            memory = self._plain(nvml.nvmlDeviceGetMemoryInfo, handle)
            peers = self._nvlink_peers(index, uuids)
            devices.append(
                self.resolver.describe(
                    self.vendor,
                    index,
                    uuids[index],
                    str(self._plain(nvml.nvmlDeviceGetName, handle) or "unknown"),
                    bus_id=_text(pci.busId) if pci is not None else None,
                    memory_total_mib=memory.total / _MIB if memory is not None else None,
                    interconnect="nvlink" if peers else None,
                    peers=peers,
                    mig_enabled=self._mig_enabled(handle),
                    driver_version=str(driver) if driver else None,
                )
            )
        if self.want_xid_events:
            self._register_xid_events()
        for device in devices:
            if device.index not in self._xid_capable:
                device.notes.append("XID critical-error events not available through NVML on this device")
        return self._present(devices, tool_version=str(driver) if driver else None)

    def _nvlink_peers(self, index: int, uuids: list[str]) -> list[str]:
        nvml = self.nvml
        caps = getattr(nvml, "NVML_P2P_CAPS_INDEX_NVLINK", None)
        if caps is None:
            return []
        peers = []
        for other, handle in enumerate(self._handles):
            if other == index:
                continue
            status = self._plain(nvml.nvmlDeviceGetP2PStatus, self._handles[index], handle, caps)
            if status == nvml.NVML_P2P_STATUS_OK:
                peers.append(uuids[other])
        return peers

    def _mig_enabled(self, handle: Any) -> bool | None:
        modes = self._plain(self.nvml.nvmlDeviceGetMigMode, handle)
        return None if modes is None else bool(modes[0] == self.nvml.NVML_DEVICE_MIG_ENABLE)

    def _register_xid_events(self) -> None:
        nvml = self.nvml
        xid_type = nvml.nvmlEventTypeXidCriticalError
        try:
            self._event_set = nvml.nvmlEventSetCreate()
        except nvml.NVMLError:
            self._event_set = None
            return
        for index, handle in enumerate(self._handles):
            try:
                if nvml.nvmlDeviceGetSupportedEventTypes(handle) & xid_type:
                    nvml.nvmlDeviceRegisterEvents(handle, xid_type, self._event_set)
                    self._xid_capable.add(index)
            except nvml.NVMLError:
                continue  # NotSupported on this SKU/driver: the device is flagged, not failed

    # --------------------------------------------------------------------------------------------- sample

    def sample(self, fast: bool = True) -> list[DeviceSample]:
        now, wall = self.clock(), self.wall_clock()
        xids = self._drain_xid_events()
        return [self._sample_device(d, fast, now, wall, xids.get(d.uuid, [])) for d in self.devices]

    def _sample_device(self, device: DeviceInfo, fast: bool, now: float, wall: float, xids: list[int]) -> DeviceSample:
        nvml, i = self.nvml, device.index
        handle = self._handles[i]
        sample = DeviceSample(
            vendor=self.vendor,
            index=i,
            uuid=device.uuid,
            model=device.model,
            sampled_monotonic_s=now,
            sampled_wall_time=wall,
            health=Health.HEALTHY,
            xid_events=xids,
        )
        reasons = sample.health_reasons
        util = self._read(i, "nvmlDeviceGetUtilizationRates", reasons, handle)
        if util is not None:
            sample.utilization_pct = float(util.gpu)
        memory = self._read(i, "nvmlDeviceGetMemoryInfo", reasons, handle)
        if memory is not None:
            sample.memory_used_mib = memory.used / _MIB
            sample.memory_total_mib = memory.total / _MIB
        milliwatts = self._read(i, "nvmlDeviceGetPowerUsage", reasons, handle)
        sample.power_w = milliwatts / 1000.0 if milliwatts is not None else None
        temp = self._read(i, "nvmlDeviceGetTemperature", reasons, handle, nvml.NVML_TEMPERATURE_GPU)
        sample.temperature_c = float(temp) if temp is not None else None
        sm = self._read(i, "nvmlDeviceGetClockInfo", reasons, handle, nvml.NVML_CLOCK_SM)
        sample.sm_clock_mhz = float(sm) if sm is not None else None
        if not fast:
            self._slow[i] = self._read_slow(i, handle, reasons)
            self._slow_at[i] = now
        for name, value in self._slow.get(i, {}).items():
            setattr(sample, name, value)
        sample.slow_sampled_monotonic_s = self._slow_at.get(i)
        if any("GPU is lost" in r for r in reasons):
            sample.health = Health.UNHEALTHY
        missing = [f for f in METRIC_FIELDS if f != "xid_events" and getattr(sample, f) is None]
        # Slow fields not read *yet* are not "unavailable"; fields read and found unsupported are.
        if i not in self._slow:
            missing = [f for f in missing if f not in SLOW_FIELDS]
        if i not in self._xid_capable:
            missing.append("xid_events")
        sample.flag_unavailable(*missing)
        return sample

    def _read_slow(self, i: int, handle: Any, reasons: list[str]) -> dict[str, Any]:
        nvml = self.nvml
        slow: dict[str, Any] = dict.fromkeys(SLOW_FIELDS)
        energy_mj = self._read(i, "nvmlDeviceGetTotalEnergyConsumption", reasons, handle)
        slow["energy_j"] = energy_mj / 1000.0 if energy_mj is not None else None
        limit_mw = self._read(i, "nvmlDeviceGetEnforcedPowerLimit", reasons, handle)
        slow["power_limit_w"] = limit_mw / 1000.0 if limit_mw is not None else None
        # NVML reports PCIe throughput in KB/s over a 20 ms window (hence the ~21 ms call).
        tx = self._read(i, "nvmlDeviceGetPcieThroughput", reasons, handle, nvml.NVML_PCIE_UTIL_TX_BYTES)
        rx = self._read(i, "nvmlDeviceGetPcieThroughput", reasons, handle, nvml.NVML_PCIE_UTIL_RX_BYTES)
        slow["pcie_tx_bytes_per_s"] = tx * 1024.0 if tx is not None else None
        slow["pcie_rx_bytes_per_s"] = rx * 1024.0 if rx is not None else None
        # Volatile counters (since driver load): aggregate ones never reset, so a repaired GPU would stay "bad".
        unc = self._read(
            i,
            "nvmlDeviceGetTotalEccErrors",
            reasons,
            handle,
            nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
            nvml.NVML_VOLATILE_ECC,
        )
        cor = self._read(
            i,
            "nvmlDeviceGetTotalEccErrors",
            reasons,
            handle,
            nvml.NVML_MEMORY_ERROR_TYPE_CORRECTED,
            nvml.NVML_VOLATILE_ECC,
        )
        slow["ecc_uncorrectable_total"] = int(unc) if unc is not None else None
        slow["ecc_correctable_total"] = int(cor) if cor is not None else None
        rows = self._read(i, "nvmlDeviceGetRemappedRows", reasons, handle)
        if rows is not None:
            _corr, unc_rows, pending, failure = rows
            slow["remapped_rows_uncorrectable"] = int(unc_rows)
            slow["remap_failure"] = bool(failure)
            if pending:
                reasons.append("row remapping pending: reset the GPU to apply it")
        mig = self._read(i, "nvmlDeviceGetMigMode", reasons, handle)
        slow["mig_enabled"] = None if mig is None else bool(mig[0] == nvml.NVML_DEVICE_MIG_ENABLE)
        return slow

    def _drain_xid_events(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = defaultdict(list)
        if self._event_set is None:
            return out
        nvml = self.nvml
        for _ in range(_EVENT_DRAIN_LIMIT):
            try:
                data = nvml.nvmlEventSetWait(self._event_set, 0)
            except nvml.NVMLError:
                break  # NVML_ERROR_TIMEOUT: no more events queued
            if data.eventType & nvml.nvmlEventTypeXidCriticalError:
                uuid = self._plain(nvml.nvmlDeviceGetUUID, data.device)
                if uuid is not None:
                    out[str(uuid)].append(int(data.eventData))
        return out

    # --------------------------------------------------------------------------------------------- helpers

    def _read(self, index: int, call: str, reasons: list[str], *args: Any) -> Any:
        """One NVML call; ``None`` when it fails. NotSupported is remembered so the call is not retried."""
        key = (index, f"{call}{args[1:]}")
        if key in self._unsupported:
            return None
        try:
            return getattr(self.nvml, call)(*args)
        except self.nvml.NVMLError as err:
            code = getattr(err, "value", None)
            if code == _NOT_SUPPORTED:
                self._unsupported.add(key)
            elif code == _GPU_IS_LOST:
                reasons.append(f"{call}: GPU is lost")
            else:
                reasons.append(f"{call}: {err}")
            return None

    def _plain(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except self.nvml.NVMLError:
            return None

    def close(self) -> None:
        nvml = self.nvml
        if self._event_set is not None:
            with contextlib.suppress(nvml.NVMLError):
                nvml.nvmlEventSetFree(self._event_set)
            self._event_set = None
        if self._initialised:
            with contextlib.suppress(nvml.NVMLError):
                nvml.nvmlShutdown()
            self._initialised = False


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
