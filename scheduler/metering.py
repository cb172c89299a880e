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
from dataclasses import replace

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
