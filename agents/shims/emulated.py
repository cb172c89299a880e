"""Emulated devices of any catalog model, whose telemetry follows the work placed on them.

Used by ``zhisuan up``, the tests and the benchmarks on machines without accelerators. Utilisation is the sum of
the compute shares of the work on a device (capped at 100 %), memory the sum of its requests, power rises
linearly from an idle floor to the catalog TDP with utilisation, temperature follows power, and energy integrates
power over the shim's clock. Faults are injected on demand. Everything is deterministic for a given seed and
clock::

    >>> shim = EmulatedShim("H100", devices=2, seed=7)
    >>> _ = shim.discover()
    >>> shim.place(0, "job-1", compute_fraction=0.75, memory_mib=40_000)
    >>> s = shim.sample(fast=True)[0]
    >>> s.utilization_pct, s.memory_used_mib, 0.15 * 700 < s.power_w <= 700
    (75.0, 40000.0, True)
    >>> shim.inject_xid(0, 79)
    >>> shim.sample(fast=True)[0].xid_events
    [79]

The catalog gives memory and TDP. Where the catalog has no number (an opaque or half-documented model) the
emulated metric is reported unavailable rather than made up: an emulator that invents a TDP would teach the
scheduler's energy accounting a number nobody measured.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from agents.protocol import METRIC_FIELDS, DeviceInfo, DeviceSample, DeviceWork, Health
from agents.shims.base import ModelResolver, Shim
from scheduler.catalog import AcceleratorModel, Catalog

#: Idle power as a share of TDP. An emulation parameter, not a data-sheet value (datacentre GPUs idle at
#: roughly 10-20 % of TDP); it only shapes the emulated curve.
IDLE_POWER_FRACTION = 0.15
AMBIENT_C = 30.0
#: Temperature rise at full TDP, again an emulation parameter.
FULL_LOAD_RISE_C = 45.0


@dataclass
class _Device:
    work: dict[str, tuple[float, float]] = field(default_factory=dict)  # work id -> (compute share, MiB)
    load_override: tuple[float, float] | None = None
    energy_j: float = 0.0
    last_t: float | None = None
    pending_xids: list[int] = field(default_factory=list)
    ecc_uncorrectable: int = 0
    remap_failure: bool = False
    lost: bool = False
    hung: bool = False


class EmulatedShim(Shim):
    """``devices`` emulated devices of catalog ``model`` on one node.

    ``node`` prefixes the UUIDs so that emulated nodes of one cluster never share a device UUID.
    """

    vendor = "emulated"

    def __init__(
        self,
        model: str,
        devices: int = 8,
        seed: int = 0,
        node: str = "node",
        catalog: Catalog | str | None = "default",
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        noise_pct: float = 0.0,
    ) -> None:
        super().__init__()
        self.model_name = model
        self.count = devices
        self.node = node
        self.resolver = ModelResolver(catalog)
        self.clock, self.wall_clock = clock, wall_clock
        self.noise_pct = noise_pct
        self._rng = random.Random(seed)
        self._state = [_Device() for _ in range(devices)]
        entry, _notes = self.resolver.resolve(model, vendor="emulated")
        self.spec: AcceleratorModel | None = entry
        # The emulated vendor is the catalog vendor: the exporter and Ray labels then look like the real thing.
        self.vendor = entry.vendor if entry else "emulated"

    # --------------------------------------------------------------------------------------- work & faults

    def place(self, index: int, work_id: str, compute_fraction: float, memory_mib: float) -> None:
        """Put work on a device: ``compute_fraction`` of its compute (0-1) and ``memory_mib`` of its memory."""
        if not 0 <= compute_fraction <= 1:
            raise ValueError("compute_fraction must be within 0..1")
        self._state[index].work[work_id] = (compute_fraction, max(0.0, float(memory_mib)))

    def remove(self, index: int, work_id: str) -> None:
        self._state[index].work.pop(work_id, None)

    def follow(self, work: Sequence[DeviceWork]) -> None:
        """Make every device carry exactly the center's work: compute and memory in proportion to each share.

        >>> shim = EmulatedShim("H100", devices=2)
        >>> _ = shim.discover()
        >>> shim.follow([DeviceWork(job_id="j1", index=1, share=0.5)])
        >>> [(s.utilization_pct, s.memory_used_mib) for s in shim.sample()]
        [(0.0, 0.0), (50.0, 40960.0)]
        """
        memory = self.spec.memory_gib * 1024 if self.spec and self.spec.memory_gib else 0.0
        by_device: list[dict[str, tuple[float, float]]] = [{} for _ in self._state]
        for item in work:
            if item.index < len(by_device):  # work on a device this node does not have is the API's mistake
                by_device[item.index][item.job_id] = (item.share, item.share * memory)
        for state, placed in zip(self._state, by_device, strict=True):
            state.work = placed

    def set_load(self, index: int, utilization_pct: float, memory_used_mib: float) -> None:
        """Pin a device's load directly (benchmarks, dashboards); overrides placed work until cleared."""
        self._state[index].load_override = (
            min(100.0, max(0.0, float(utilization_pct))),
            max(0.0, float(memory_used_mib)),
        )

    def clear_load(self, index: int) -> None:
        self._state[index].load_override = None

    def inject_xid(self, index: int, xid: int) -> None:
        """Queue an XID event; it is reported once, in the next sample (like an NVML event)."""
        self._state[index].pending_xids.append(xid)

    def inject_ecc(self, index: int, uncorrectable: int = 1) -> None:
        self._state[index].ecc_uncorrectable += uncorrectable

    def inject_remap_failure(self, index: int) -> None:
        self._state[index].remap_failure = True

    def inject_lost(self, index: int) -> None:
        """The device stops answering (XID 79-like): every metric becomes unavailable."""
        self._state[index].lost = True

    def clear_faults(self, index: int) -> None:
        state = self._state[index]
        state.pending_xids.clear()
        state.ecc_uncorrectable = 0
        state.remap_failure = False
        state.lost = False

    # --------------------------------------------------------------------------------------------- shim API

    def discover(self) -> list[DeviceInfo]:
        memory = self.spec.memory_gib * 1024 if self.spec and self.spec.memory_gib else None
        island = self.spec.island_size if self.spec else 1
        uuids = [f"EMU-{self.node}-{self.model_name}-{i}" for i in range(self.count)]
        devices = []
        for i in range(self.count):
            # Devices in the same fast-interconnect domain (catalog island size) are each other's peers.
            start = (i // island) * island
            peers = [uuids[j] for j in range(start, min(start + island, self.count)) if j != i]
            interconnect = self.spec.interconnect.type.value if self.spec and self.spec.interconnect else None
            devices.append(
                self.resolver.describe(
                    self.vendor,
                    i,
                    uuids[i],
                    self.model_name,
                    memory_total_mib=memory,
                    interconnect=interconnect if peers else None,
                    peers=peers,
                    notes=["emulated device"],
                )
            )
        return self._present(devices, tool_version="emulated")

    def sample(self, fast: bool = True) -> list[DeviceSample]:
        now, wall = self.clock(), self.wall_clock()
        return [self._sample(i, device, now, wall, fast) for i, device in enumerate(self.devices)]

    def _sample(self, i: int, device: DeviceInfo, now: float, wall: float, fast: bool) -> DeviceSample:
        state = self._state[i]
        sample = DeviceSample(
            vendor=self.vendor,
            index=i,
            uuid=device.uuid,
            model=device.model,
            sampled_monotonic_s=now,
            sampled_wall_time=wall,
            health=Health.HEALTHY,
            xid_events=list(state.pending_xids),
        )
        state.pending_xids.clear()
        if state.lost:
            sample.health = Health.UNHEALTHY
            sample.health_reasons.append("emulated: device fell off the bus")
            sample.flag_unavailable(*(f for f in METRIC_FIELDS if f != "xid_events"))
            return sample
        util, used = self._load(state)
        if util > 0 and self.noise_pct:
            util = min(100.0, max(0.0, util + self._rng.uniform(-self.noise_pct, self.noise_pct)))
        sample.utilization_pct = round(util, 3)
        sample.memory_total_mib = device.memory_total_mib
        if device.memory_total_mib is not None:
            sample.memory_used_mib = min(used, device.memory_total_mib)
        tdp = self.spec.tdp_w if self.spec else None
        if tdp is not None:
            idle = IDLE_POWER_FRACTION * tdp
            power = idle + (tdp - idle) * util / 100.0
            sample.power_w = round(power, 3)
            sample.power_limit_w = tdp
            sample.temperature_c = round(AMBIENT_C + FULL_LOAD_RISE_C * power / tdp, 2)
            if state.last_t is not None:
                state.energy_j += power * max(0.0, now - state.last_t)
            state.last_t = now
            sample.energy_j = round(state.energy_j, 3)
        sample.sm_clock_mhz = None
        sample.ecc_uncorrectable_total = state.ecc_uncorrectable
        sample.ecc_correctable_total = 0
        sample.remapped_rows_uncorrectable = 0
        sample.remap_failure = state.remap_failure
        sample.mig_enabled = False
        if not fast:
            sample.slow_sampled_monotonic_s = now
        sample.flag_unavailable(*(f for f in METRIC_FIELDS if f != "xid_events" and getattr(sample, f) is None))
        return sample

    def _load(self, state: _Device) -> tuple[float, float]:
        if state.load_override is not None:
            return state.load_override
        share = sum((c for c, _ in state.work.values()), 0.0)
        memory = sum((m for _, m in state.work.values()), 0.0)
        return min(100.0, share * 100.0), memory
