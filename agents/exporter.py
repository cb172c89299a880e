"""Prometheus export of the agent's latest telemetry.

Two families are exported from the same samples:

* ``zhisuan_device_*`` for every vendor, in Prometheus base units (bytes, watts, joules, celsius, hertz), labels
  ``node``, ``device`` (vendor index), ``uuid``, ``model`` (catalog id or ``unknown``), ``vendor``;
* ``DCGM_FI_DEV_*`` for NVIDIA devices, with dcgm-exporter's names and units (FB in MiB, energy in mJ, the last
  XID as a gauge) and its labels (``gpu``, ``UUID``, ``device``, ``modelName``, ``Hostname``) next to ours, so
  dashboards written for dcgm-exporter keep working.

A metric the shim could not read is simply absent from the scrape (never exported as 0); which fields are
missing is itself exported as ``zhisuan_device_field_unavailable{field=...} 1``::

    >>> store = TelemetryStore(node="n1")
    >>> registry = make_registry(store)
    >>> from prometheus_client import generate_latest
    >>> b"zhisuan_agent_buffered_batches" in generate_latest(registry)
    True
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agents.protocol import DeviceInfo, DeviceSample, Health

_MIB = 1024 * 1024
_LABELS = ["node", "device", "uuid", "model", "vendor"]
_DCGM_LABELS = ["gpu", "UUID", "device", "modelName", "Hostname", "node", "uuid", "model", "vendor"]

#: zhisuan_device_* gauges: (metric name, sample field, scale to base unit, help)
NEUTRAL_GAUGES: tuple[tuple[str, str, float, str], ...] = (
    ("zhisuan_device_utilization_percent", "utilization_pct", 1.0, "Device compute utilisation (%)."),
    ("zhisuan_device_memory_used_bytes", "memory_used_mib", _MIB, "Device memory in use (bytes)."),
    ("zhisuan_device_memory_total_bytes", "memory_total_mib", _MIB, "Device memory capacity (bytes)."),
    ("zhisuan_device_power_watts", "power_w", 1.0, "Device power draw (W)."),
    ("zhisuan_device_power_limit_watts", "power_limit_w", 1.0, "Enforced power limit (W)."),
    ("zhisuan_device_temperature_celsius", "temperature_c", 1.0, "Device temperature (C)."),
    ("zhisuan_device_clock_hertz", "sm_clock_mhz", 1e6, "SM / AI-core clock (Hz)."),
    ("zhisuan_device_pcie_tx_bytes_per_second", "pcie_tx_bytes_per_s", 1.0, "PCIe transmit throughput (B/s)."),
    ("zhisuan_device_pcie_rx_bytes_per_second", "pcie_rx_bytes_per_s", 1.0, "PCIe receive throughput (B/s)."),
    ("zhisuan_device_remapped_rows_uncorrectable", "remapped_rows_uncorrectable", 1.0, "Rows remapped (uncorr.)."),
    ("zhisuan_device_row_remap_failure", "remap_failure", 1.0, "1 when row remapping has failed."),
    ("zhisuan_device_mig_enabled", "mig_enabled", 1.0, "1 when MIG mode is enabled."),
)
#: zhisuan_device_* counters (name without ``_total``, field, scale, help)
NEUTRAL_COUNTERS: tuple[tuple[str, str, float, str], ...] = (
    ("zhisuan_device_energy_joules", "energy_j", 1.0, "Energy consumed since driver load (J)."),
    ("zhisuan_device_ecc_uncorrectable_errors", "ecc_uncorrectable_total", 1.0, "Uncorrectable ECC errors."),
    ("zhisuan_device_ecc_correctable_errors", "ecc_correctable_total", 1.0, "Correctable ECC errors."),
)
#: dcgm-exporter names (etc/default-counters.csv) and their units
DCGM_GAUGES: tuple[tuple[str, str, float, str], ...] = (
    ("DCGM_FI_DEV_GPU_UTIL", "utilization_pct", 1.0, "GPU utilization (in %)."),
    ("DCGM_FI_DEV_FB_USED", "memory_used_mib", 1.0, "Framebuffer memory used (in MiB)."),
    ("DCGM_FI_DEV_POWER_USAGE", "power_w", 1.0, "Power draw (in W)."),
    ("DCGM_FI_DEV_GPU_TEMP", "temperature_c", 1.0, "GPU temperature (in C)."),
    ("DCGM_FI_DEV_SM_CLOCK", "sm_clock_mhz", 1.0, "SM clock frequency (in MHz)."),
    ("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "energy_j", 1000.0, "Total energy consumption since boot (in mJ)."),
    ("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "ecc_uncorrectable_total", 1.0, "Total double-bit volatile ECC errors."),
    ("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "ecc_correctable_total", 1.0, "Total single-bit volatile ECC errors."),
    ("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "remapped_rows_uncorrectable", 1.0, "Uncorrectable remapped rows."),
    ("DCGM_FI_DEV_ROW_REMAP_FAILURE", "remap_failure", 1.0, "Whether remapping of rows has failed."),
)


class TelemetryStore:
    """The latest sample per device and the agent's counters, shared with the scrape thread."""

    def __init__(self, node: str, hostname: str | None = None) -> None:
        self.node = node
        self.hostname = hostname or node
        self._lock = threading.Lock()
        self._devices: dict[str, DeviceInfo] = {}
        self._samples: dict[str, DeviceSample] = {}
        self._last_xid: dict[str, int] = {}
        self._xid_counts: dict[str, int] = {}
        self.stats: dict[str, float] = {
            "buffered_batches": 0,
            "dropped_batches_total": 0,
            "rejected_batches_total": 0,
            "heartbeats_total": 0,
            "heartbeat_failures_total": 0,
            "tick_seconds": 0.0,
        }

    def update(self, devices: Sequence[DeviceInfo], samples: Iterable[DeviceSample], **stats: float) -> None:
        with self._lock:
            self._devices = {d.uuid: d for d in devices}
            for sample in samples:
                self._samples[sample.uuid] = sample
                if sample.xid_events:
                    self._last_xid[sample.uuid] = sample.xid_events[-1]
                    self._xid_counts[sample.uuid] = self._xid_counts.get(sample.uuid, 0) + len(sample.xid_events)
            self.stats.update(stats)

    def snapshot(
        self,
    ) -> tuple[dict[str, DeviceInfo], list[DeviceSample], dict[str, int], dict[str, int], dict[str, float]]:
        with self._lock:
            return (
                dict(self._devices),
                list(self._samples.values()),
                dict(self._last_xid),
                dict(self._xid_counts),
                dict(self.stats),
            )


class DeviceCollector(Collector):
    """Builds the metric families from a :class:`TelemetryStore` at scrape time."""

    def __init__(self, store: TelemetryStore) -> None:
        self.store = store

    def collect(self) -> Iterable[Metric]:
        devices, samples, last_xid, xid_counts, stats = self.store.snapshot()
        node = self.store.node
        gauges = {name: GaugeMetricFamily(name, doc, labels=_LABELS) for name, _f, _s, doc in NEUTRAL_GAUGES}
        counters = {name: CounterMetricFamily(name, doc, labels=_LABELS) for name, _f, _s, doc in NEUTRAL_COUNTERS}
        dcgm = {name: GaugeMetricFamily(name, doc, labels=_DCGM_LABELS) for name, _f, _s, doc in DCGM_GAUGES}
        fb_free = GaugeMetricFamily("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).", labels=_DCGM_LABELS)
        xid = GaugeMetricFamily(
            "DCGM_FI_DEV_XID_ERRORS", "Value of the last XID error encountered.", labels=_DCGM_LABELS
        )
        xid_total = CounterMetricFamily("zhisuan_device_xid_events", "XID events seen by the agent.", labels=_LABELS)
        health = GaugeMetricFamily(
            "zhisuan_device_health", "1 for the device's current health state.", labels=[*_LABELS, "state"]
        )
        unavailable = GaugeMetricFamily(
            "zhisuan_device_field_unavailable", "1 for each metric the shim could not read.", labels=[*_LABELS, "field"]
        )
        age = GaugeMetricFamily(
            "zhisuan_device_sample_wall_time_seconds", "Agent wall clock of the latest sample.", labels=_LABELS
        )
        for sample in sorted(samples, key=lambda s: (s.vendor, s.index)):
            info = devices.get(sample.uuid)
            model = sample.model or "unknown"
            labels = [node, str(sample.index), sample.uuid, model, sample.vendor]
            for name, field, scale, _doc in NEUTRAL_GAUGES:
                value = getattr(sample, field)
                if value is not None:
                    gauges[name].add_metric(labels, float(value) * scale)
            for name, field, scale, _doc in NEUTRAL_COUNTERS:
                value = getattr(sample, field)
                if value is not None:
                    counters[name].add_metric(labels, float(value) * scale)
            xid_total.add_metric(labels, float(xid_counts.get(sample.uuid, 0)))
            for state in Health:
                health.add_metric([*labels, state.value], 1.0 if sample.health == state else 0.0)
            for field in sample.fields_unavailable:
                unavailable.add_metric([*labels, field], 1.0)
            age.add_metric(labels, sample.sampled_wall_time)
            if sample.vendor == "nvidia":
                model_name = info.name if info else model
                dcgm_ids = [str(sample.index), sample.uuid, f"nvidia{sample.index}", model_name, self.store.hostname]
                dl = [*dcgm_ids, node, sample.uuid, model, sample.vendor]
                for name, field, scale, _doc in DCGM_GAUGES:
                    value = getattr(sample, field)
                    if value is not None:
                        dcgm[name].add_metric(dl, float(value) * scale)
                if sample.memory_used_mib is not None and sample.memory_total_mib is not None:
                    fb_free.add_metric(dl, max(0.0, sample.memory_total_mib - sample.memory_used_mib))
                if "xid_events" not in sample.fields_unavailable:
                    xid.add_metric(dl, float(last_xid.get(sample.uuid, 0)))
        yield from gauges.values()
        yield from counters.values()
        yield xid_total
        yield health
        yield unavailable
        yield age
        yield from dcgm.values()
        yield fb_free
        yield xid
        agent_labels = ["node"]
        for key, doc in (
            ("buffered_batches", "Telemetry batches waiting to be sent."),
            ("tick_seconds", "Duration of the last sampling tick (s)."),
        ):
            g = GaugeMetricFamily(f"zhisuan_agent_{key}", doc, labels=agent_labels)
            g.add_metric([node], float(stats.get(key, 0)))
            yield g
        for key, doc in (
            ("dropped_batches", "Batches dropped because the buffer was full."),
            ("rejected_batches", "Batches the API rejected as invalid."),
            ("heartbeats", "Heartbeats the API acknowledged."),
            ("heartbeat_failures", "Heartbeat attempts that failed."),
        ):
            c = CounterMetricFamily(f"zhisuan_agent_{key}", doc, labels=agent_labels)
            c.add_metric([node], float(stats.get(f"{key}_total", 0)))
            yield c


def make_registry(store: TelemetryStore) -> CollectorRegistry:
    """A fresh registry with only the device collector (not the process-global default registry)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DeviceCollector(store))
    return registry


def start_exporter(
    store: TelemetryStore, port: int, addr: str = "0.0.0.0"
) -> tuple[WSGIServer, threading.Thread, CollectorRegistry]:
    """Serve ``/metrics`` on ``addr:port`` from a background thread. Stop with ``server.shutdown()``."""
    registry = make_registry(store)
    server, thread = start_http_server(port, addr=addr, registry=registry)
    return server, thread, registry
