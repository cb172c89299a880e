"""Metering: ledger entries for every start and stop, priced per service tier, with energy where known.

A stop entry carries the device-seconds, NCU-hours (device-hours × the job class's relative throughput on the
model it ran on), an energy estimate (board power × time, from the catalog's TDP — an upper bound, so it is
flagged ``energy_estimated``) and the charge::

    >>> from scheduler.metering import domestic_share
    >>> domestic_share([])
    0.0
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from scheduler.catalog import Catalog
from scheduler.model import LedgerEntry, LedgerKind, StopCause
from scheduler.state import RunningJob
from scheduler.tenancy import QueuePolicy


class Meter:
    """Turns starts and stops of running jobs into ledger entries under a policy's prices."""

    def __init__(self, catalog: Catalog, policy: QueuePolicy) -> None:
        self.catalog = catalog
        self.policy = policy

    def start(self, running: RunningJob) -> LedgerEntry:
        job, placement = running.job, running.placement
        tier = self.policy.tier(job.tenant)
        entry = self.catalog.lookup(placement.model)
        return LedgerEntry(
            kind=LedgerKind.START,
            job_id=job.id,
            tenant=job.tenant,
            queue=job.queue,
            user=job.user,
            model=placement.model,
            pool=placement.pool,
            devices=sum(len(w.devices) * w.milli for w in placement.workers) / 1000,
            at=running.started_at,
            tier=tier,
            price_per_ncu_hour=self.policy.prices.per_ncu_hour.get(tier, 0.0),
            domestic=bool(entry and entry.domestic),
        )

    def stop(self, running: RunningJob, now: float, cause: StopCause) -> LedgerEntry:
        opened = self.start(running)
        seconds = max(0.0, now - running.started_at)
        ncu_hours = opened.devices * seconds / 3600 * running.relative
        entry = self.catalog.lookup(running.placement.model)
        energy = entry.tdp_w * opened.devices * seconds / 3.6e6 if entry is not None and entry.tdp_w else None
        return replace(
            opened,
            kind=LedgerKind.STOP,
            at=now,
            seconds=seconds,
            ncu_hours=ncu_hours,
            energy_kwh=energy,
            charge=ncu_hours * opened.price_per_ncu_hour,
            cause=cause,
        )


def domestic_share(entries: Iterable[LedgerEntry]) -> float:
    """Share of NCU-hours delivered on domestic accelerators (国产化率 of delivered compute)."""
    total = domestic = 0.0
    for entry in entries:
        total += entry.ncu_hours
        if entry.domestic:
            domestic += entry.ncu_hours
    return domestic / total if total else 0.0


@dataclass(frozen=True)
class ServiceUsage:
    """What one served service used: its replicas' device-hours, NCU-hours and charge from the ledger (runs that
    stopped), the device-hours of runs still going (charged when they stop), and the requests the routers
    counted."""

    device_hours: float = 0.0
    ncu_hours: float = 0.0
    charge: float = 0.0
    running_device_hours: float = 0.0
    requests: int = 0
    errors: int = 0
    tokens: int = 0

    @property
    def charge_per_1k_requests(self) -> float | None:
        return self.charge / self.requests * 1000 if self.requests else None


def service_usage(
    entries: Iterable[LedgerEntry], now: float, requests: int = 0, errors: int = 0, tokens: int = 0
) -> ServiceUsage:
    """Add up a service's replica runs: every stop entry is a finished run; a start entry with no stop after it
    on the same job is a run still going, counted up to ``now``::

        >>> from scheduler.model import LedgerEntry, LedgerKind
        >>> def entry(kind, at, seconds=0.0):
        ...     return LedgerEntry(kind, "r1", "acme", "acme", "ann", "H100", "bj1/H100", 0.5, at, seconds,
        ...                        ncu_hours=0.5 * seconds / 3600 * 2, charge=seconds / 3600 * 18)
        >>> use = service_usage([entry(LedgerKind.START, 0), entry(LedgerKind.STOP, 3600, 3600),
        ...                      entry(LedgerKind.START, 3600)], now=5400, requests=1000)
        >>> use.device_hours, use.running_device_hours, use.charge, use.charge_per_1k_requests
        (0.5, 0.25, 18.0, 18.0)
    """
    device_hours = ncu_hours = charge = running = 0.0
    open_runs: dict[str, LedgerEntry] = {}
    for entry in sorted(entries, key=lambda e: (e.at, e.kind is LedgerKind.START)):
        if entry.kind is LedgerKind.START:
            open_runs[entry.job_id] = entry
            continue
        open_runs.pop(entry.job_id, None)
        device_hours += entry.devices * entry.seconds / 3600
        ncu_hours += entry.ncu_hours
        charge += entry.charge
    for started in open_runs.values():
        running += started.devices * max(0.0, now - started.at) / 3600
    return ServiceUsage(device_hours, ncu_hours, charge, running, requests, errors, tokens)
