"""NVIDIA GPUs through NVML (the ``nvidia-ml-py`` package, imported as ``pynvml``).

Fast ticks read utilisation, memory, power, temperature, SM clock and the clock event (throttle) reasons (2-11 µs
per call on an H100). Slow ticks add total energy (~2.8 ms), PCIe throughput (~21 ms), ECC counters, remapped
rows, the enforced power limit and MIG mode; between slow ticks the last slow readings are carried with
``slow_sampled_monotonic_s`` saying how old they are. XID critical errors and ECC error events arrive through an
NVML event set and are drained, without waiting, every tick.

A GPU in MIG mode is reported with its MIG devices: each is a device of its own (``MIG-...`` uuid,
``parent_uuid``, ``profile`` such as ``1g.10gb`` and ``fraction`` = its GPU slices over the parent's), with the
parent's catalog model; NVML reads memory per MIG device and utilisation, power and temperature only per GPU, so
those are unavailable on the MIG records and the parent carries them. NVLink peers come from NVML's P2P status
(on NVSwitch baseboards every GPU of the board), and links that end on an NVSwitch are noted.

The NVML module is a constructor argument so tests can inject a fake with the same function names and return
types. On a machine without the NVIDIA driver the real module raises ``NVMLError_LibraryNotFound`` (or
``DriverNotLoaded``) and the shim reports the vendor absent (output on a machine without a GPU). Any other NVML
error at discovery (``Unknown``, ``Timeout``, ``GpuIsLost``, a driver/library mismatch in the middle of a driver
upgrade) is an ``error``: the GPUs are there but did not answer, and the agent tries again with backoff::

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

from agents.protocol import METRIC_FIELDS, SLOW_FIELDS, DeviceInfo, DeviceSample, Health, ShimState, ShimStatus
from agents.shims.base import ModelResolver, Shim
from scheduler.catalog import Catalog

_MISSING = object()
_MIB = 1024 * 1024

# NVML return codes (nvml.h); compared by value so an injected module needs only ``NVMLError.value``.
_NOT_SUPPORTED = 3
_TIMEOUT = 10
_GPU_IS_LOST = 15
_NOT_FOUND = 6
#: Errors that mean "no usable NVIDIA GPU here" (vendor absent) rather than "the GPUs did not answer this time".
_ABSENT_ERRORS = frozenset({4, 9, 12, 13})  # NoPermission, DriverNotLoaded, LibraryNotFound, FunctionNotFound
_EVENT_DRAIN_LIMIT = 1024  # bound the per-tick drain if a broken GPU floods events

# Clock event ("throttle") reasons by NVML constant name (nvml.h nvmlClocksEventReason*), reported as lower-case
# names. Resolved against the module at run time so an older pynvml without a constant simply lacks that reason.
_THROTTLE_REASONS = (
    ("GpuIdle", "gpu_idle"),
    ("ApplicationsClocksSetting", "applications_clocks_setting"),
    ("SwPowerCap", "sw_power_cap"),
    ("HwSlowdown", "hw_slowdown"),
    ("SyncBoost", "sync_boost"),
    ("SwThermalSlowdown", "sw_thermal_slowdown"),
    ("HwThermalSlowdown", "hw_thermal_slowdown"),
    ("HwPowerBrakeSlowdown", "hw_power_brake_slowdown"),
    ("DisplayClockSetting", "display_clock_setting"),
)


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
        self._mig_handles: dict[str, tuple[Any, int]] = {}  # MIG uuid -> (MIG handle, parent index)
        self._initialised = False
        self._event_set: Any = None
        self._xid_capable: set[int] = set()
        self._ecc_event_capable: set[int] = set()
        self._unsupported: set[tuple[int, str]] = set()  # (device, call) pairs that raised NotSupported once
        self._slow: dict[int, dict[str, Any]] = {}
        self._slow_at: dict[int, float] = {}

    # ------------------------------------------------------------------------------------------ discovery

    def discover(self) -> list[DeviceInfo]:
        nvml = self.nvml
        try:
            if not self._initialised:
                nvml.nvmlInit()
                self._initialised = True
            count = nvml.nvmlDeviceGetCount()
            self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except nvml.NVMLError as err:
            if getattr(err, "value", None) in _ABSENT_ERRORS:
                # LibraryNotFound / DriverNotLoaded / NoPermission: this node has no usable NVIDIA GPU.
                return self._absent(f"NVML unavailable: {err}")
            return self._failed(f"NVML did not answer at discovery: {err}")
        except OSError as err:
            return self._absent(f"NVML unavailable: {err}")
        driver = self._plain(nvml.nvmlSystemGetDriverVersion)
        uuids = [str(self._plain(nvml.nvmlDeviceGetUUID, h) or f"nvidia-index{i}") for i, h in enumerate(self._handles)]
        devices = []
        self._mig_handles = {}
        for index, handle in enumerate(self._handles):
            pci = self._plain(nvml.nvmlDeviceGetPciInfo, handle)
            memory = self._plain(nvml.nvmlDeviceGetMemoryInfo, handle)
            peers = self._nvlink_peers(index, uuids)
            switch_links = self._nvswitch_links(handle)
            mig = self._mig_enabled(handle)
            parent = self.resolver.describe(
                self.vendor,
                index,
                uuids[index],
                str(self._plain(nvml.nvmlDeviceGetName, handle) or "unknown"),
                bus_id=_text(pci.busId) if pci is not None else None,
                memory_total_mib=memory.total / _MIB if memory is not None else None,
                interconnect="nvlink" if peers else None,
                peers=peers,
                mig_enabled=mig,
                driver_version=str(driver) if driver else None,
            )
            if switch_links:
                parent.notes.append(f"{switch_links} NVLink links end on an NVSwitch")
            devices.append(parent)
            if mig:
                children = self._mig_devices(parent, handle)
                devices.extend(children)
                parent.notes.append(f"MIG enabled: offered as {len(children)} MIG devices")
        if self.want_xid_events:
            self._register_events()
        for device in devices:
            if device.parent_uuid is None and device.index not in self._xid_capable:
                device.notes.append("XID critical-error events not available through NVML on this device")
        self._present(devices, tool_version=str(driver) if driver else None)
        # NVML is the driver's own library: the version it reports is the driver's (what `nvidia-smi` prints).
        self.status.driver_version, self.status.command = self.status.tool_version, "NVML"
        return devices

    def _mig_devices(self, parent: DeviceInfo, handle: Any) -> list[DeviceInfo]:
        """The MIG devices of a GPU in MIG mode, each a fraction of its parent with the parent's model."""
        nvml = self.nvml
        slots = self._call("nvmlDeviceGetMaxMigDeviceCount", handle) or 0
        out = []
        for slot in range(int(slots)):
            try:
                mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
            except nvml.NVMLError:
                continue  # NOT_FOUND: no MIG device in this slot
            uuid = self._plain(nvml.nvmlDeviceGetUUID, mig)
            if uuid is None:
                continue
            name = str(self._plain(nvml.nvmlDeviceGetName, mig) or f"{parent.name} MIG")
            memory = self._plain(nvml.nvmlDeviceGetMemoryInfo, mig)
            attrs = self._call("nvmlDeviceGetAttributes", mig)
            slices = getattr(attrs, "gpuInstanceSliceCount", None)
            profile = name.rsplit("MIG", 1)[1].strip() if "MIG" in name else None
            out.append(
                DeviceInfo(
                    vendor=self.vendor,
                    index=parent.index,
                    uuid=str(uuid),
                    name=name,
                    model=parent.model,
                    model_known=parent.model_known,
                    kind=parent.kind,
                    memory_total_mib=memory.total / _MIB if memory is not None else None,
                    bus_id=parent.bus_id,
                    interconnect=parent.interconnect,
                    mig_enabled=True,
                    driver_version=parent.driver_version,
                    parent_uuid=parent.uuid,
                    profile=profile,
                    fraction=min(1.0, slices / slots) if slices and slots else None,
                    notes=[f"MIG device {slot} of {parent.uuid}"],
                )
            )
            self._mig_handles[str(uuid)] = (mig, parent.index)
        return out

    def _nvswitch_links(self, handle: Any) -> int:
        """How many of this GPU's active NVLink links end on an NVSwitch (0 without NVLink or NVSwitch)."""
        nvml = self.nvml
        switch = getattr(nvml, "NVML_NVLINK_DEVICE_TYPE_SWITCH", None)
        links = int(getattr(nvml, "NVML_NVLINK_MAX_LINKS", 0))
        if switch is None:
            return 0
        count = 0
        for link in range(links):
            try:
                if not nvml.nvmlDeviceGetNvLinkState(handle, link):
                    continue
                if nvml.nvmlDeviceGetNvLinkRemoteDeviceType(handle, link) == switch:
                    count += 1
            except (nvml.NVMLError, AttributeError):
                break  # NotSupported (no NVLink), past the last link of this GPU, or an older pynvml
        return count

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

    def _register_events(self) -> None:
        """XID critical errors and single/double-bit ECC errors, on every GPU that supports them."""
        nvml = self.nvml
        xid_type = nvml.nvmlEventTypeXidCriticalError
        ecc_types = getattr(nvml, "nvmlEventTypeDoubleBitEccError", 0) | getattr(
            nvml, "nvmlEventTypeSingleBitEccError", 0
        )
        try:
            self._event_set = nvml.nvmlEventSetCreate()
        except nvml.NVMLError:
            self._event_set = None
            return
        for index, handle in enumerate(self._handles):
            try:
                supported = int(nvml.nvmlDeviceGetSupportedEventTypes(handle))
                wanted = supported & (xid_type | ecc_types)
                if wanted:
                    nvml.nvmlDeviceRegisterEvents(handle, wanted, self._event_set)
                if wanted & xid_type:
                    self._xid_capable.add(index)
                if wanted & ecc_types:
                    self._ecc_event_capable.add(index)
            except nvml.NVMLError:
                continue  # NotSupported on this SKU/driver: the device is flagged, not failed

    # --------------------------------------------------------------------------------------------- sample

    def sample(self, fast: bool = True) -> list[DeviceSample]:
        now, wall = self.clock(), self.wall_clock()
        xids, ecc = self._drain_events()
        out: list[DeviceSample] = []
        parents: dict[str, DeviceSample] = {}
        for device in self.devices:
            if device.parent_uuid is not None:
                out.append(self._sample_mig(device, now, wall, parents.get(device.parent_uuid)))
                continue
            sample = self._sample_device(device, fast, now, wall, xids.get(device.uuid, []))
            sample.ecc_events = ecc.get(device.uuid, [])
            parents[device.uuid] = sample
            out.append(sample)
        return out

    def _sample_mig(self, device: DeviceInfo, now: float, wall: float, parent: DeviceSample | None) -> DeviceSample:
        """A MIG device: its own memory; the parent's faults (XIDs, ECC events, lost GPU) are its faults too."""
        handle, _index = self._mig_handles[device.uuid]
        sample = DeviceSample(
            vendor=self.vendor,
            index=device.index,
            uuid=device.uuid,
            model=device.model,
            sampled_monotonic_s=now,
            sampled_wall_time=wall,
            health=Health.HEALTHY,
            mig_enabled=True,
        )
        memory = self._read(device.index, "nvmlDeviceGetMemoryInfo", sample.health_reasons, handle)
        if memory is not None:
            sample.memory_used_mib = memory.used / _MIB
            sample.memory_total_mib = memory.total / _MIB
        if parent is not None:
            sample.xid_events = list(parent.xid_events)
            sample.ecc_events = list(parent.ecc_events)
            sample.throttle_reasons = list(parent.throttle_reasons)
            if parent.health == Health.UNHEALTHY:
                sample.health = Health.UNHEALTHY
                sample.health_reasons.append(f"parent GPU {device.parent_uuid} unhealthy")
        missing = [f for f in METRIC_FIELDS if f not in ("xid_events", "mig_enabled") and getattr(sample, f) is None]
        sample.flag_unavailable(*missing)
        return sample

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
        sample.throttle_reasons = self._throttle_reasons(i, handle, reasons)
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

    def _throttle_reasons(self, index: int, handle: Any, reasons: list[str]) -> list[str]:
        nvml = self.nvml
        call = "nvmlDeviceGetCurrentClocksEventReasons"
        if not hasattr(nvml, call):  # renamed in NVML 12.2; older bindings have only the throttle name
            call = "nvmlDeviceGetCurrentClocksThrottleReasons"
        mask = self._read(index, call, reasons, handle)
        if mask is None:
            return []
        names = []
        for constant, name in _THROTTLE_REASONS:
            bit = getattr(
                nvml, f"nvmlClocksEventReason{constant}", getattr(nvml, f"nvmlClocksThrottleReason{constant}", 0)
            )
            if bit and int(mask) & int(bit):
                names.append(name)
        return names

    def _drain_events(self) -> tuple[dict[str, list[int]], dict[str, list[str]]]:
        """XIDs and ECC events queued since the last tick, by GPU uuid."""
        xids: dict[str, list[int]] = defaultdict(list)
        ecc: dict[str, list[str]] = defaultdict(list)
        if self._event_set is None:
            return xids, ecc
        nvml = self.nvml
        double = getattr(nvml, "nvmlEventTypeDoubleBitEccError", 0)
        single = getattr(nvml, "nvmlEventTypeSingleBitEccError", 0)
        for _ in range(_EVENT_DRAIN_LIMIT):
            try:
                data = nvml.nvmlEventSetWait(self._event_set, 0)
            except nvml.NVMLError:
                break  # NVML_ERROR_TIMEOUT: no more events queued
            uuid = self._plain(nvml.nvmlDeviceGetUUID, data.device)
            if uuid is None:
                continue
            if data.eventType & nvml.nvmlEventTypeXidCriticalError:
                xids[str(uuid)].append(int(data.eventData))
            if double and data.eventType & double:
                ecc[str(uuid)].append("double-bit")
            if single and data.eventType & single:
                ecc[str(uuid)].append("single-bit")
        return xids, ecc

    # --------------------------------------------------------------------------------------------- helpers

    def _read(self, index: int, call: str, reasons: list[str], *args: Any) -> Any:
        """One NVML call; ``None`` when it fails. NotSupported is remembered so the call is not retried."""
        key = (index, f"{call}{args[1:]}")
        if key in self._unsupported:
            return None
        function = getattr(self.nvml, call, None)
        if function is None:  # an older pynvml without this call: as good as NotSupported
            self._unsupported.add(key)
            return None
        try:
            return function(*args)
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

    def _call(self, name: str, *args: Any) -> Any:
        """``_plain`` for calls an older pynvml may lack."""
        function = getattr(self.nvml, name, None)
        return None if function is None else self._plain(function, *args)

    def _failed(self, reason: str) -> list[DeviceInfo]:
        """NVML is there but failed (state ``error``): released, so that the next discovery starts afresh."""
        self.close()
        self.status = ShimStatus(vendor=self.vendor, state=ShimState.ERROR, reason=reason, command="NVML")
        self.devices, self._handles = [], []
        return []

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
