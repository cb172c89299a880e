"""Measurements of a replay: waits, JCT, utilisation, fragmentation, SLOs, energy, cost, NCU-hours, domestic share.

Everything is accumulated incrementally (O(1) or O(nodes touched) per event), so metrics never add a scan of
the cluster to the event loop. Time series for the report are decimated on the fly to a bounded number of
points::

    >>> from simulations.metrics import Series, percentiles
    >>> s = Series(max_points=4)
    >>> for t in range(10):
    ...     s.add(float(t), float(t))
    >>> len(s.times) <= 4
    True
    >>> percentiles([1.0, 2.0, 3.0, 4.0], (50, 100))
    {'p50': 2.0, 'p100': 4.0}

**Fragmentation** follows the FGD paper (Weng et al., ATC '23, §3): for a task shape ``m``, a node's fragment is
all of its free GPU capacity if ``m`` cannot run there, else the free capacity on devices ``m`` cannot use
(partly used devices for a whole-GPU task, devices with less than ``m``'s fraction for a fractional one). The
node's fragmentation is the expectation over the workload's GPU-demand distribution. Unlike the FGD scorer in
the core, the metric considers GPU demand only (not CPU or memory), so it measures GPU fragmentation alone.

**Energy**: busy device-hours × TDP + idle device-hours × TDP × ``idle_power_fraction``, all × PUE, with TDP
from the catalog (``default_tdp_w`` for models that publish none, e.g. opaque trace models; reported).
"""

from __future__ import annotations

import bisect
import math
import statistics
from array import array
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from scheduler.catalog import Catalog
from scheduler.eta import DEFAULT_BAND, EtaBand
from scheduler.model import MILLI, Job, JobKind, Placement
from scheduler.state import ClusterState, NodeState
from scheduler.throughput import ThroughputMatrix


def percentiles(values: Sequence[float], points: Iterable[int] = (50, 95, 99)) -> dict[str, float]:
    """Nearest-rank percentiles of ``values`` (NaN when empty)."""
    ordered = sorted(values)
    out: dict[str, float] = {}
    for p in points:
        if not ordered:
            out[f"p{p}"] = math.nan
            continue
        rank = max(1, math.ceil(p / 100 * len(ordered)))
        out[f"p{p}"] = ordered[min(rank, len(ordered)) - 1]
    return out


def summary_stats(values: Sequence[float]) -> dict[str, float]:
    stats = percentiles(values)
    stats["mean"] = sum(values) / len(values) if len(values) else math.nan
    stats["count"] = float(len(values))
    return stats


def cdf(values: Sequence[float], points: int = 100) -> list[tuple[float, float]]:
    """``(value, fraction ≤ value)`` at up to ``points`` evenly spaced ranks, for plotting."""
    ordered = sorted(values)
    n = len(ordered)
    if not n:
        return []
    step = max(1, n // points)
    out = [(ordered[i], (i + 1) / n) for i in range(0, n, step)]
    if out[-1][1] < 1.0:
        out.append((ordered[-1], 1.0))
    return out


class EtaScore:
    """Forecast starts (as a tenant sees them, refreshed every so often) against the real starts.

    A job's forecast *at submission* is the first one made after it arrived; the ones after are *along the wait*.
    Errors are ``forecast - real start`` (positive: it started earlier than forecast). The band is what
    ``zhisuan eta`` shows (:class:`~scheduler.eta.EtaBand` around the forecast, as seen when it was made); a job
    with no forecast counts as outside it::

        >>> score = EtaScore()
        >>> score.observe(10.0, {"a": 0.0}, {"a": 110.0})
        >>> score.observe(60.0, {"a": 0.0}, {"a": 100.0})
        >>> score.started("a", 100.0)
        >>> s = score.summary()
        >>> s["at_submission"]["median_abs_error_s"], s["at_submission"]["median_relative_error"]
        (10.0, 0.1)
        >>> s["at_submission"]["in_band"], s["along_wait"]["forecasts"]
        (1.0, 2)
    """

    def __init__(self, band: EtaBand = DEFAULT_BAND) -> None:
        self.band = band
        #: Per waiting job: its submit time and the forecasts made for it, ``(made at, forecast start)``.
        self._waiting: dict[str, tuple[float, list[tuple[float, float | None]]]] = {}
        #: Per started job: submit, real start, forecasts.
        self._done: list[tuple[float, float, list[tuple[float, float | None]]]] = []

    def observe(self, now: float, submits: dict[str, float], starts: dict[str, float | None]) -> None:
        for job_id, start in starts.items():
            entry = self._waiting.get(job_id)
            if entry is None:
                entry = self._waiting[job_id] = (submits.get(job_id, now), [])
            entry[1].append((now, start))

    def started(self, job_id: str, at: float) -> None:
        entry = self._waiting.pop(job_id, None)
        if entry is not None and entry[1]:
            self._done.append((entry[0], at, entry[1]))

    def summary(self) -> dict[str, Any]:
        first_errors: list[float] = []
        first_relative: list[float] = []
        first_in: list[bool] = []
        waits: list[float] = []
        along_errors: list[float] = []
        along_in: list[bool] = []
        missing = 0
        for submit, start, forecasts in self._done:
            wait = start - submit
            waits.append(wait)
            for n, (made, forecast) in enumerate(forecasts):
                if forecast is None:
                    inside = False
                    missing += n == 0
                else:
                    low, high = self.band.around(forecast, made)
                    inside = low <= start <= high
                    error = forecast - start
                    along_errors.append(abs(error))
                    if n == 0:
                        first_errors.append(abs(error))
                        if wait > 0:
                            first_relative.append(abs(error) / wait)
                along_in.append(inside)
                if n == 0:
                    first_in.append(inside)

        def median(values: list[float]) -> float | None:
            return statistics.median(values) if values else None

        median_wait = median(waits)
        median_first = median(first_errors)
        return {
            "jobs": len(self._done),
            "median_wait_s": median_wait,
            "band": {"early": self.band.early, "late": self.band.late, "floor_s": self.band.floor_s},
            "at_submission": {
                "median_abs_error_s": median_first,
                "median_relative_error": median(first_relative),
                "median_abs_error_over_median_wait": (
                    median_first / median_wait if median_first is not None and median_wait else None
                ),
                "p90_abs_error_s": percentiles(first_errors, (90,))["p90"] if first_errors else None,
                "in_band": sum(first_in) / len(first_in) if first_in else None,
                "without_forecast": missing,
            },
            "along_wait": {
                "forecasts": len(along_in),
                "median_abs_error_s": median(along_errors),
                "in_band": sum(along_in) / len(along_in) if along_in else None,
            },
        }


class Series:
    """A time series that keeps at most ``max_points`` points by halving its resolution when full."""

    def __init__(self, max_points: int = 600) -> None:
        self.max_points = max_points
        self.times: list[float] = []
        self.values: list[float] = []
        self._spacing = 0.0

    def add(self, time: float, value: float) -> None:
        if self.times and time - self.times[-1] < self._spacing:
            # Keep the latest value of the bucket: the plot shows the state at the bucket's end.
            self.values[-1] = value
            return
        self.times.append(time)
        self.values.append(value)
        if len(self.times) > self.max_points:
            self.times = self.times[::2]
            self.values = self.values[::2]
            span = self.times[-1] - self.times[0]
            self._spacing = span / (self.max_points / 2) if span > 0 else 0.0

    def points(self) -> list[tuple[float, float]]:
        return list(zip(self.times, self.values, strict=True))


# ------------------------------------------------------------------------------------------ fragmentation


@dataclass(frozen=True)
class GpuShape:
    """A GPU demand: ``whole`` devices, or ``milli`` of one device when ``whole == 0``."""

    whole: int
    milli: int


def workload_shapes(jobs: Iterable[Job], top: int = 24) -> list[tuple[GpuShape, float]]:
    """The ``top`` most common GPU demands of ``jobs`` with their shares (device-less jobs are left out)."""
    counts: Counter[GpuShape] = Counter()
    for job in jobs:
        if job.whole_devices:
            counts[GpuShape(job.whole_devices, 0)] += 1
        elif job.is_fractional:
            counts[GpuShape(0, job.device_milli)] += 1
    common = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0].whole, kv[0].milli))[:top]
    total = sum(c for _, c in common) or 1
    return [(shape, c / total) for shape, c in common]


class FragmentationMeter:
    """Expected GPU fragment per node (milli), kept up to date for the nodes an event touches.

    >>> from scheduler.model import Node
    >>> state = ClusterState([Node(id="n", model="A100", devices=2, cpu_milli=0, memory_mib=0)])
    >>> meter = FragmentationMeter([(GpuShape(1, 0), 1.0)], state)
    >>> meter.total
    0.0
    >>> state.nodes["n"].free[0] = 500   # half a device used: that half is a fragment for 1-GPU tasks
    >>> meter.refresh(state.nodes["n"]); meter.total
    500.0
    """

    def __init__(self, shapes: list[tuple[GpuShape, float]], state: ClusterState) -> None:
        self.shapes = shapes
        self._cache: dict[tuple[int, ...], float] = {}
        self._per_node: dict[str, float] = {}
        self.total = 0.0
        for pool in state.pools.values():
            for ns in pool.nodes:
                self.refresh(ns)

    def node_value(self, free: tuple[int, ...]) -> float:
        value = self._cache.get(free)
        if value is None:
            total = sum(free)
            whole = sum(1 for f in free if f == MILLI)
            best = max(free, default=0)
            value = 0.0
            for shape, share in self.shapes:
                if shape.whole:
                    frag = sum(f for f in free if f < MILLI) if whole >= shape.whole else total
                else:
                    frag = sum(f for f in free if f < shape.milli) if best >= shape.milli else total
                value += share * frag
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[free] = value
        return value

    def refresh(self, ns: NodeState) -> None:
        if not self.shapes:
            return
        if ns.schedulable:
            free = tuple(sorted(f if ok else 0 for f, ok in zip(ns.free, ns.healthy, strict=True)))
        else:
            free = ()
        value = self.node_value(free)
        old = self._per_node.get(ns.id, 0.0)
        self._per_node[ns.id] = value
        self.total += value - old


# ------------------------------------------------------------------------------------------ economics


@dataclass
class Economics:
    """Energy and money: PUE, electricity price, idle power, TDP fallback, hardware prices and amortisation."""

    pue: float = 1.3
    electricity_price_per_kwh: float = 0.6
    idle_power_fraction: float = 0.3
    default_tdp_w: float = 300.0
    amortisation_years: float = 5.0
    price_per_device: dict[str, float] = field(default_factory=dict)
    currency: str = "CNY"


# ------------------------------------------------------------------------------------------ collector


class PoolMeter:
    """Allocated milli-devices of one pool integrated over time (for utilisation and energy)."""

    __slots__ = ("area", "capacity_milli", "devices", "last", "model", "used")

    def __init__(self, model: str, capacity_milli: int, devices: int, start: float) -> None:
        self.model = model
        self.capacity_milli = capacity_milli
        self.devices = devices
        self.used = 0
        self.area = 0.0
        self.last = start

    def change(self, now: float, delta: int) -> None:
        self.area += self.used * (now - self.last)
        self.last = now
        self.used += delta


class Metrics:
    """Collects what the timeline replay reports. The simulation calls the ``on_*`` hooks."""

    def __init__(
        self,
        state: ClusterState,
        catalog: Catalog,
        throughput: ThroughputMatrix,
        economics: Economics | None = None,
        shapes: list[tuple[GpuShape, float]] | None = None,
        default_slo_wait_s: float = 60.0,
        start: float = 0.0,
    ) -> None:
        self.state = state
        self.catalog = catalog
        self.throughput = throughput
        self.economics = economics or Economics()
        self.default_slo_wait_s = default_slo_wait_s
        self.start_time: float | None = None
        self.end_time = start
        self.pools = {
            pid: PoolMeter(p.model, p.capacity_milli, p.capacity_milli // MILLI, start)
            for pid, p in state.pools.items()
        }
        self.frag = FragmentationMeter(shapes or [], state)
        self._frag_area = 0.0
        self._frag_last = start
        self.waits: dict[str, array[float]] = defaultdict(lambda: array("d"))
        self.jcts: dict[str, array[float]] = defaultdict(lambda: array("d"))
        self.slo_met = 0
        self.slo_total = 0
        self.counts: Counter[str] = Counter()
        self.reject_reasons: Counter[str] = Counter()
        self.ncu_hours: defaultdict[str, float] = defaultdict(float)
        self.device_hours: defaultdict[str, float] = defaultdict(float)
        self.domestic_ncu_hours = 0.0
        self.domestic_device_hours = 0.0
        self.lost_device_hours = 0.0
        self.utilisation = Series()
        self.queue = Series()
        self.running = Series()
        self.fragmentation = Series()
        self._capacity = sum(p.capacity_milli for p in state.pools.values()) or 1
        self._used = 0
        self._domestic = {m.model: m.domestic for m in catalog}
        self._window: tuple[float, float] | None = None

    # -------------------------------------------------------------------------------------- hooks

    def _touch(self, now: float, placement: Placement, sign: int) -> None:
        delta = sign * sum(w.milli * len(w.devices) for w in placement.workers)
        self.pools[placement.pool].change(now, delta)
        self._used += delta
        self._frag_area += self.frag.total * (now - self._frag_last)
        self._frag_last = now
        nodes = self.state.nodes
        for node_id in placement.nodes:
            self.frag.refresh(nodes[node_id])
        self.utilisation.add(now, self._used / self._capacity)
        self.fragmentation.add(now, self.frag.total / MILLI)

    def on_arrival(self, now: float) -> None:
        if self.start_time is None:
            self.start_time = now
            for meter in self.pools.values():
                meter.last = now
            self._frag_last = now
        self.counts["arrived"] += 1

    def on_start(
        self, now: float, job: Job, placement: Placement, first_start: bool, submit: float, slo_wait_s: float = 0.0
    ) -> None:
        self.counts["starts"] += 1
        self._touch(now, placement, +1)
        if first_start:
            wait = now - submit
            self.waits[job.job_class.value].append(wait)
            if job.kind is JobKind.INFERENCE:
                # An inference service meets its SLO when it starts within its wait budget.
                self.slo_total += 1
                self.slo_met += wait <= (slo_wait_s or self.default_slo_wait_s)

    def on_stop(self, now: float, job: Job, placement: Placement, started: float, outcome: str) -> None:
        """``outcome``: finished, failed, preempted, node-failure, job-failure, cut (end of horizon)."""
        self._touch(now, placement, -1)
        self.counts[outcome] += 1
        devices = sum(w.milli * len(w.devices) for w in placement.workers) / MILLI
        hours = devices * (now - started) / 3600.0
        ncu = self.throughput.ncu_hours(placement.model, job.job_class, hours)
        self.device_hours[job.tenant] += hours
        self.ncu_hours[job.tenant] += ncu
        if self._domestic.get(placement.model, False):
            self.domestic_ncu_hours += ncu
            self.domestic_device_hours += hours

    def on_complete(self, job: Job, now: float, submit: float) -> None:
        self.jcts[job.job_class.value].append(now - submit)

    def on_lost(self, device_hours: float) -> None:
        self.lost_device_hours += device_hours

    def on_pass(self, now: float, pending: int, running: int) -> None:
        self.queue.add(now, float(pending))
        self.running.add(now, float(running))

    def arrivals_ended(self, now: float) -> None:
        """Snapshot busy area at the last arrival: utilisation over the arrival window excludes the drain tail."""
        area = sum(m.area + m.used * (now - m.last) for m in self.pools.values())
        self._window = (now, area)

    def close(self, now: float) -> None:
        self.end_time = now
        for meter in self.pools.values():
            meter.change(now, 0)
        self._frag_area += self.frag.total * (now - self._frag_last)
        self._frag_last = now

    # -------------------------------------------------------------------------------------- results

    def summary(self) -> dict[str, Any]:
        start = self.start_time if self.start_time is not None else self.end_time
        span = max(self.end_time - start, 1e-9)
        econ = self.economics
        pools: dict[str, Any] = {}
        energy_kwh = 0.0
        hardware = 0.0
        tdp_defaulted: list[str] = []
        busy_total = 0.0
        capacity_total = 0.0
        for pid, meter in self.pools.items():
            entry = self.catalog.lookup(meter.model)
            tdp = entry.tdp_w if entry is not None and entry.tdp_w is not None else None
            if tdp is None:
                tdp_defaulted.append(meter.model)
                tdp = econ.default_tdp_w
            busy_h = meter.area / MILLI / 3600.0
            all_h = meter.devices * span / 3600.0
            kwh = (busy_h * tdp + max(all_h - busy_h, 0.0) * tdp * econ.idle_power_fraction) * econ.pue / 1000.0
            energy_kwh += kwh
            price = econ.price_per_device.get(meter.model, 0.0)
            amortised = meter.devices * price * (span / (365.25 * 86400)) / econ.amortisation_years
            hardware += amortised
            busy_total += meter.area
            capacity_total += meter.capacity_milli * span
            pools[pid] = {
                "model": meter.model,
                "devices": meter.devices,
                "utilisation": meter.area / (meter.capacity_milli * span) if meter.capacity_milli else 0.0,
                "busy_device_hours": busy_h,
                "energy_kwh": kwh,
                "hardware_cost": amortised,
                "domestic": self._domestic.get(meter.model, False),
            }
        all_waits = [w for values in self.waits.values() for w in values]
        all_jcts = [j for values in self.jcts.values() for j in values]
        total_ncu = sum(self.ncu_hours.values())
        total_dev_h = sum(self.device_hours.values())
        return {
            "span_s": span,
            "jobs": dict(self.counts),
            "wait_s": summary_stats(all_waits),
            "wait_s_by_class": {c: summary_stats(v) for c, v in sorted(self.waits.items())},
            "jct_s": summary_stats(all_jcts),
            "jct_s_by_class": {c: summary_stats(v) for c, v in sorted(self.jcts.items())},
            "utilisation": busy_total / capacity_total if capacity_total else 0.0,
            "utilisation_arrival_window": self._window_utilisation(start),
            "pools": pools,
            "fragmentation_devices_mean": self._frag_area / span / MILLI,
            "slo_attainment": self.slo_met / self.slo_total if self.slo_total else None,
            "slo_jobs": self.slo_total,
            "energy_kwh": energy_kwh,
            "tdp_defaulted_models": sorted(set(tdp_defaulted)),
            "cost": {
                "currency": econ.currency,
                "energy": energy_kwh * econ.electricity_price_per_kwh,
                "hardware": hardware,
                "total": energy_kwh * econ.electricity_price_per_kwh + hardware,
            },
            "ncu_hours_by_tenant": dict(sorted(self.ncu_hours.items(), key=lambda kv: (-kv[1], kv[0]))),
            "device_hours_by_tenant": dict(sorted(self.device_hours.items(), key=lambda kv: (-kv[1], kv[0]))),
            "ncu_hours": total_ncu,
            "domestic_share_ncu": self.domestic_ncu_hours / total_ncu if total_ncu else 0.0,
            "domestic_share_device_hours": self.domestic_device_hours / total_dev_h if total_dev_h else 0.0,
            "lost_device_hours": self.lost_device_hours,
            "reject_reasons": dict(self.reject_reasons.most_common()),
        }

    def _window_utilisation(self, start: float) -> float | None:
        if self._window is None:
            return None
        end, area = self._window
        capacity = sum(m.capacity_milli for m in self.pools.values()) * (end - start)
        return area / capacity if capacity > 0 else None

    def plots(self) -> dict[str, Any]:
        """Series for the report: utilisation, queue length, running jobs, fragmentation, JCT CDF per class."""
        return {
            "utilisation": self.utilisation.points(),
            "queue": self.queue.points(),
            "running": self.running.points(),
            "fragmentation": self.fragmentation.points(),
            "jct_cdf": {c: cdf(v) for c, v in sorted(self.jcts.items())},
            "wait_cdf": {c: cdf(v) for c, v in sorted(self.waits.items())},
        }


def interpolate(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """Linear interpolation of a monotone ``xs`` series at ``x`` (clamped at the ends)."""
    if not xs:
        return math.nan
    i = bisect.bisect_left(xs, x)
    if i <= 0:
        return ys[0]
    if i >= len(xs):
        return ys[-1]
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
