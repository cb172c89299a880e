"""The one interface every accelerator shim implements, and the normalised records it returns.

A shim adapts one vendor's tool or library (NVML, ``npu-smi``, ``cnmon``, ``amdsmi`` ...) to two calls::

    >>> from agents.shims.emulated import EmulatedShim
    >>> shim = EmulatedShim("H100", devices=2, seed=1)
    >>> [d.model for d in shim.discover()]
    ['H100', 'H100']
    >>> sample = shim.sample(fast=True)[0]
    >>> sample.utilization_pct, sample.health
    (0.0, <Health.HEALTHY: 'healthy'>)

Units are part of every field name (``memory_used_mib``, ``power_w``, ``energy_j``). A shim never invents a
number: a metric it could not read is ``None`` and its field name is listed in ``fields_unavailable``. A vendor
whose tool or library is missing is *absent* (``discover()`` returns ``[]`` and ``status.state`` says why), which
is normal on a machine without that vendor's devices and is never an error.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from agents.protocol import METRIC_FIELDS, DeviceInfo, DeviceSample, DeviceWork, Health, ShimState, ShimStatus
from scheduler.catalog import AcceleratorModel, Catalog, load_catalog


class Shim(ABC):
    """A vendor adapter. Subclasses set ``vendor`` and implement :meth:`discover` and :meth:`sample`.

    ``sample(fast=True)`` reads the cheap per-tick metrics; ``sample(fast=False)`` also reads the expensive ones
    (the agent calls it every ``slow_every`` ticks). Both must return one record per discovered device, even when
    the tool failed: such a record has health ``unknown``, the failure in ``health_reasons`` and every metric in
    ``fields_unavailable``.
    """

    vendor: str = "unknown"

    def __init__(self) -> None:
        self.status = ShimStatus(vendor=self.vendor, state=ShimState.ABSENT, reason="not discovered yet")
        self.devices: list[DeviceInfo] = []

    @abstractmethod
    def discover(self) -> list[DeviceInfo]:
        """Find this vendor's devices; ``[]`` (with ``status`` saying why) when the vendor is absent."""

    @abstractmethod
    def sample(self, fast: bool = True) -> list[DeviceSample]:
        """Read telemetry for every discovered device."""

    def follow(self, work: Sequence[DeviceWork]) -> None:  # noqa: B027 - optional hook, see below
        """Learn which work the center placed on this node's devices (all of it, replacing what was known).

        Real devices need nothing: their telemetry *is* the work. Emulated devices make their telemetry follow it.
        """

    def close(self) -> None:  # noqa: B027 - optional hook: most CLI shims hold nothing to release
        """Release vendor handles (NVML shutdown, event sets). Idempotent."""

    # ------------------------------------------------------------------ helpers shared by the vendor shims

    def _absent(self, reason: str) -> list[DeviceInfo]:
        self.status = ShimStatus(vendor=self.vendor, state=ShimState.ABSENT, reason=reason)
        self.devices = []
        return []

    def _present(self, devices: list[DeviceInfo], tool_version: str | None = None) -> list[DeviceInfo]:
        self.status = ShimStatus(vendor=self.vendor, state=ShimState.PRESENT, tool_version=tool_version)
        self.devices = devices
        return devices

    def failed_samples(self, reason: str, now_monotonic: float, now_wall: float) -> list[DeviceSample]:
        """One ``unknown`` record per known device when the tool could not be read at all."""
        out = []
        for device in self.devices:
            sample = DeviceSample(
                vendor=self.vendor,
                index=device.index,
                uuid=device.uuid,
                model=device.model,
                sampled_monotonic_s=now_monotonic,
                sampled_wall_time=now_wall,
                health=Health.UNKNOWN,
                health_reasons=[reason],
            )
            sample.flag_unavailable(*METRIC_FIELDS)
            out.append(sample)
        return out


# ------------------------------------------------------------------------------------------ model names


class ModelResolver:
    """Maps vendor product names to catalog model ids; never raises.

    The catalog file is maintained by another team and may be missing or mid-edit: then every device is reported
    with ``model=None`` and a note, and the agent keeps running::

        >>> ModelResolver(catalog=None).resolve("NVIDIA H100 80GB HBM3", vendor="nvidia")[0] is None
        True
    """

    def __init__(self, catalog: Catalog | str | None = "default") -> None:
        self.error: str | None = None
        if catalog == "default":
            try:
                self.catalog: Catalog | None = load_catalog()
            except Exception as err:  # the agent must come up even when the catalog file is broken
                self.catalog = None
                self.error = f"accelerator catalog unavailable: {err}"
        else:
            self.catalog = catalog if isinstance(catalog, Catalog) else None
            if self.catalog is None:
                self.error = "no accelerator catalog given"

    def lookup(self, name: str, memory_mib: float | None = None) -> AcceleratorModel | None:
        if self.catalog is None:
            return None
        try:
            return self.catalog.lookup_device(name, memory_mib)
        except Exception:  # a half-written catalog must not take the agent down
            return None

    def resolve(
        self, name: str, vendor: str, memory_mib: float | None = None, other_names: Sequence[str] = ()
    ) -> tuple[AcceleratorModel | None, list[str]]:
        """The catalog entry for the names a tool printed for one device, and notes for the record.

        Matching is data only: the catalog's aliases, and its ``device_names`` (with the device's memory) for
        names that several parts print. The names are tried in the order the tool gave them; a name that matches
        nothing never falls back to a similar-looking model::

            >>> ModelResolver().resolve("Ascend910", "huawei", memory_mib=65536)[0].model
            'Ascend910C'
            >>> ModelResolver().resolve("MLU370-X4", "cambricon", memory_mib=23308)[0] is None
            True
        """
        names = [n.strip() for n in (name, *other_names) if n and n.strip()]
        for candidate in dict.fromkeys(names):
            found = self.lookup(candidate, memory_mib)
            if found is not None:
                notes = [] if candidate == name else [f"catalog model resolved from {candidate!r} ({name!r} unknown)"]
                return found, notes
        why = (
            self.error
            or f"catalog has no model for {' / '.join(repr(n) for n in dict.fromkeys(names)) or 'an unnamed device'}"
        )
        if memory_mib and self.catalog is not None and any(self._ambiguous(n) for n in names):
            why += f" with {memory_mib:.0f} MiB"
        return None, [f"device model unknown: {why}"]

    def _ambiguous(self, name: str) -> bool:
        return (
            self.catalog is not None
            and self.catalog.lookup_device(name, None) is None
            and self.catalog.lookup(name) is not None
        )

    def describe(self, vendor: str, index: int, uuid: str, name: str, **fields: Any) -> DeviceInfo:
        """Build a :class:`DeviceInfo` with the catalog model, kind and notes filled in."""
        other_names = [n for n in fields.pop("other_names", ()) if n and n != name]
        entry, notes = self.resolve(name, vendor, fields.get("memory_total_mib"), other_names)
        return DeviceInfo(
            vendor=vendor,
            index=index,
            uuid=uuid,
            name=name,
            other_names=other_names,
            model=entry.model if entry else None,
            model_known=entry is not None,
            kind=entry.kind.value if entry else None,
            notes=[*notes, *fields.pop("notes", [])],
            **fields,
        )


def dedupe_uuids(samples: Sequence[DeviceSample]) -> list[DeviceSample]:
    """Keep the first record of each UUID; later duplicates are kept, renamed and marked ``unknown``.

    Two devices claiming one UUID is a vendor-tool bug (seen with cloned VFs); neither record can be trusted to
    describe "that" device, so the second is reported separately rather than silently merged or dropped.
    """
    seen: set[str] = set()
    out: list[DeviceSample] = []
    for sample in samples:
        if sample.uuid in seen:
            sample = sample.model_copy(
                update={
                    "uuid": f"{sample.uuid}#dup-{sample.vendor}-{sample.index}",
                    "health": Health.UNKNOWN,
                    "health_reasons": [*sample.health_reasons, f"duplicate uuid {sample.uuid!r}"],
                }
            )
        seen.add(sample.uuid)
        out.append(sample)
    return out
