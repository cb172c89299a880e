"""Active health checks of replicas: a thread that asks every replica's health route, concurrently, on a period.

The controller tells the prober which replicas to watch (:meth:`HealthProber.watch`) and reads back, per
``(job, attempt)``, when the replica first answered 200 and how many checks in a row it has failed since
(:meth:`HealthProber.results`). A replica not yet ready is asked more often, so a new replica starts taking
requests within a fraction of a second of being up. A check that does not answer within ``timeout_s`` fails:
a hung replica is caught exactly like a dead one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import httpx

log = logging.getLogger("zhisuan.serving.health")


@dataclass(frozen=True)
class Probe:
    """One replica to check: ``url`` is its health route's full URL."""

    url: str
    timeout_s: float = 2.0


@dataclass(frozen=True)
class ProbeResult:
    ready_at: float | None = None
    failures: int = 0
    checked_at: float = 0.0
    last_error: str = ""


class HealthProber:
    """Checks replicas' health routes from a background thread (start with :meth:`start`, end with :meth:`close`)."""

    def __init__(
        self, every_s: float = 1.0, starting_every_s: float = 0.2, clock: Callable[[], float] = time.time
    ) -> None:
        self.every_s = every_s
        self.starting_every_s = starting_every_s
        self.clock = clock
        self._lock = threading.Lock()
        self._targets: dict[tuple[str, int], Probe] = {}
        self._results: dict[tuple[str, int], ProbeResult] = {}
        self._due: dict[tuple[str, int], float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> HealthProber:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="serving-health", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def watch(self, targets: Mapping[tuple[str, int], Probe]) -> None:
        """Check exactly these replicas from now on (results of others are forgotten)."""
        with self._lock:
            self._targets = dict(targets)
            self._results = {k: v for k, v in self._results.items() if k in self._targets}
            self._due = {k: self._due.get(k, 0.0) for k in self._targets}

    def results(self) -> dict[tuple[str, int], ProbeResult]:
        with self._lock:
            return dict(self._results)

    def check_now(self) -> None:
        """Check every watched replica at its next turn of the loop (after a change of targets)."""
        with self._lock:
            self._due = dict.fromkeys(self._due, 0.0)

    # ------------------------------------------------------------------------------------------ the loop

    def _run(self) -> None:
        asyncio.run(self._loop())

    async def _loop(self) -> None:
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
        async with httpx.AsyncClient(limits=limits, trust_env=False) as client:
            while not self._stop.is_set():
                now = time.monotonic()
                with self._lock:
                    due = [(k, p) for k, p in self._targets.items() if self._due.get(k, 0.0) <= now]
                if due:
                    await asyncio.gather(*(self._check(client, key, probe) for key, probe in due))
                await asyncio.sleep(0.05)

    async def _check(self, client: httpx.AsyncClient, key: tuple[str, int], probe: Probe) -> None:
        error = ""
        try:
            answer = await client.get(probe.url, timeout=probe.timeout_s)
            ok = answer.status_code == 200
            if not ok:
                error = f"health route answered {answer.status_code}"
        except httpx.HTTPError as exc:
            ok = False
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        now = self.clock()
        with self._lock:
            if key not in self._targets:
                return
            was = self._results.get(key, ProbeResult())
            if ok:
                result = ProbeResult(was.ready_at if was.ready_at is not None else now, 0, now)
            else:
                result = ProbeResult(was.ready_at, was.failures + 1, now, error)
                if was.failures == 0 and was.ready_at is not None:
                    log.warning("replica %s attempt %d failed its health check: %s", key[0], key[1], error)
            self._results[key] = result
            period = self.every_s if result.ready_at is not None else self.starting_every_s
            self._due[key] = time.monotonic() + period


def close_quietly(prober: HealthProber | None) -> None:
    if prober is not None:
        with contextlib.suppress(Exception):
            prober.close()
