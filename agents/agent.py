"""The node agent: discover devices, sample them every tick, judge health, report to the API, declare to Ray.

One thread does everything, in this order each tick: sample (fast metrics; slow ones every ``slow_every`` ticks),
evaluate health, append the batch to a bounded buffer, then, if the backoff allows, heartbeat.

What a heartbeat carries depends on the API (:mod:`agents.protocol`). An API that asks for **changes only**
(it answers ``telemetry_interval_s``, protocol 2) gets a lease renewal every ``interval_s`` it sets (longer as
the fleet grows), the health of the devices whose health it has not acknowledged yet, and the newest batch only
when a telemetry sample is due, health changed or the work on the node did; a health change is sent at the next
tick, not the next interval. The time series stay here, for Prometheus (:mod:`agents.exporter`). Otherwise every
buffered batch is sent, as protocol 1 did. A herd of agents refused with 429 comes back after ``Retry-After``
plus jitter. When the API is unreachable the agent keeps sampling; the buffer keeps the newest
``buffer_max_batches`` batches and counts the ones it had to drop.

A vendor whose tool or library fails at discovery (state ``error``: the tool timed out, NVML init failed) is
tried again with backoff: at start (:meth:`Agent.discover_with_retry`, before the first registration, so a
node is not registered without the devices of a tool that was only slow once), and then from the loop, which
registers again with the new devices once the vendor answers. A MIG GPU is offered as its MIG devices: the
node's device count counts those, never the GPU as well (:func:`schedulable_devices`)::

    >>> from agents.shims.emulated import EmulatedShim
    >>> agent = Agent(AgentConfig(api_url="http://127.0.0.1:9", node_token="t", node_id="n1"),
    ...               [EmulatedShim("H100", devices=2)])
    >>> len(agent.discover())
    2
    >>> batch = agent.tick()
    >>> batch.seq, len(batch.samples), agent.buffered
    (0, 2, 1)
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import psutil
from pydantic import BaseModel, ConfigDict, Field
from tenacity import RetryCallState, RetryError, Retrying, stop_never, wait_exponential_jitter

from agents import health as health_rules
from agents.exporter import TelemetryStore
from agents.protocol import (
    HEARTBEAT_PATH,
    REGISTER_PATH,
    DeviceInfo,
    DeviceSample,
    Health,
    HeartbeatRequest,
    HeartbeatResponse,
    NodeDescriptor,
    RegisterRequest,
    RegisterResponse,
    ShimState,
    ShimStatus,
    TelemetryBatch,
    schedulable_devices,
)
from agents.shims.base import Shim, dedupe_uuids
from scheduler.model import Node

AGENT_VERSION = "0.1.0"
log = logging.getLogger("zhisuan.agent")


class AgentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api_url: str
    node_token: str = Field(repr=False)
    node_id: str = Field(default_factory=socket.gethostname, min_length=1)
    interval_s: float = Field(default=1.0, gt=0)
    slow_every: int = Field(default=30, ge=1, description="read the slow metrics every N ticks")
    buffer_max_batches: int = Field(default=600, ge=1)
    max_batches_per_heartbeat: int = Field(default=60, ge=1)
    request_timeout_s: float = Field(default=5.0, gt=0)
    backoff_initial_s: float = Field(default=1.0, gt=0)
    backoff_max_s: float = Field(default=60.0, gt=0)
    backoff_jitter_s: float = Field(default=1.0, ge=0)
    site: str = "default"
    region: str = "default"
    tier: str = "cloud"
    island: str = ""
    switch: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    cpu_milli: int | None = Field(default=None, ge=0, description="default: this machine's logical CPUs")
    memory_mib: int | None = Field(default=None, ge=0, description="default: this machine's memory")
    discovery_attempts: int = Field(
        default=5,
        ge=1,
        description="discoveries at start while a vendor fails (state error) before registering without it; "
        "with no device found at all the agent keeps trying (a registration would be refused)",
    )
    discovery_backoff_initial_s: float = Field(default=1.0, gt=0)
    discovery_backoff_max_s: float = Field(default=60.0, gt=0, description="also the loop's retry ceiling")


class AgentStopped(RuntimeError):
    """The API refused the agent in a way retrying cannot fix (bad token, rejected registration)."""


class Throttled(RuntimeError):
    """The API is admitting a herd (429): come back after ``retry_after_s``."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"the API asked to retry after {retry_after_s:g} s")
        self.retry_after_s = retry_after_s


def retry_after(header: str | None, default_s: float = 1.0) -> float:
    """Seconds of a ``Retry-After`` header (seconds form; an HTTP date or garbage counts as ``default_s``).

    >>> retry_after("3"), retry_after(None), retry_after("Wed, 21 Oct 2015 07:28:00 GMT")
    (3.0, 1.0, 1.0)
    """
    try:
        return max(0.0, float(header)) if header is not None else default_s
    except ValueError:
        return default_s


class Backoff:
    """Exponential backoff with jitter (tenacity's ``wait_exponential_jitter``), driven by the agent loop.

    The loop cannot block in a retry decorator, because sampling must go on while the API is down; it asks for
    the next delay after each failure instead::

        >>> b = Backoff(initial_s=1, max_s=8, jitter_s=0)
        >>> [b.failure() for _ in range(5)]
        [1.0, 2.0, 4.0, 8.0, 8.0]
    """

    def __init__(self, initial_s: float, max_s: float, jitter_s: float) -> None:
        self._wait = wait_exponential_jitter(multiplier=initial_s, max=max_s, jitter=jitter_s)
        self.failures = 0

    def failure(self) -> float:
        self.failures += 1
        state = RetryCallState(retry_object=Retrying(), fn=None, args=(), kwargs={})
        state.attempt_number = self.failures
        return float(self._wait(state))

    def success(self) -> None:
        self.failures = 0


class Agent:
    """See the module docstring. ``client`` is an ``httpx.Client`` (tests pass one; default: a new one)."""

    def __init__(
        self,
        config: AgentConfig,
        shims: Sequence[Shim],
        client: httpx.Client | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        on_tick: Callable[[Agent, TelemetryBatch], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.shims = list(shims)
        self._client = client
        self.clock, self.wall_clock = clock, wall_clock
        self.rng = rng or random.Random()
        self.on_tick = on_tick
        self.started_monotonic = clock()
        self.devices: list[DeviceInfo] = []
        self.interval_s = config.interval_s
        self.registered_node_id: str | None = None
        self.backoff = Backoff(config.backoff_initial_s, config.backoff_max_s, config.backoff_jitter_s)
        self.next_send_at = 0.0
        self._buffer: deque[TelemetryBatch] = deque()
        self._seq = 0
        self._sticky: dict[str, list[str]] = {}
        self._sampled_at: dict[int, float] = {}  # seq -> monotonic sampling time, for ages at send time
        self.latest: dict[str, DeviceSample] = {}
        self.dropped_batches_total = 0
        self.rejected_batches_total = 0
        self.heartbeats_ok = 0
        self.heartbeat_failures = 0
        self.throttled = 0
        self.last_tick_s = 0.0
        #: Changes only (the API answered ``telemetry_interval_s``): see the module docstring.
        self.changes_only = False
        self.heartbeat_interval_s = config.interval_s
        self.telemetry_interval_s: float | None = None
        self.lease_s: float | None = None
        self._acked_health: dict[str, Health] = {}
        self._telemetry_at = float("-inf")
        self._work: tuple[tuple[str, int, float], ...] | None = None
        self._work_changed = False
        #: While backing off after a failure, not even a health change is sent before this.
        self._hold_until = 0.0
        #: Vendors that failed discovery are tried again from the loop at this pace (reset when they answer).
        self.discovery_backoff = Backoff(
            config.discovery_backoff_initial_s, config.discovery_backoff_max_s, config.backoff_jitter_s
        )
        self.next_discovery_at = 0.0
        self.discoveries = 0
        #: The switch that stops :meth:`run` (or the registration retries): once set, failures are not warned.
        self._stop: threading.Event | None = None

    @property
    def client(self) -> httpx.Client:
        """The HTTP client (made on first use: an agent driven by another transport never needs one)."""
        if self._client is None:
            self._client = httpx.Client(timeout=self.config.request_timeout_s)
        return self._client

    # ------------------------------------------------------------------------------------------ discovery

    def discover(self) -> list[DeviceInfo]:
        """Ask every shim for its devices; absent vendors contribute nothing."""
        for shim in self.shims:
            self._discover_shim(shim)
        return self._collect()

    @property
    def failed_shims(self) -> list[Shim]:
        """Vendors whose tool or library failed at the last discovery (state ``error``): worth another try."""
        return [s for s in self.shims if s.status.state == ShimState.ERROR]

    def rediscover(self) -> bool:
        """Discover again the vendors that failed; True when the devices changed (register again to say so)."""
        before = [d.uuid for d in self.devices]
        for shim in self.failed_shims:
            self._discover_shim(shim)
        return [d.uuid for d in self._collect()] != before

    def discover_with_retry(
        self, stop: threading.Event | None = None, sleep: Callable[[float], None] | None = None
    ) -> list[DeviceInfo]:
        """Discover, and while a vendor fails discover it again with backoff: ``discovery_attempts`` times in all,
        or until ``stop`` is set; without any device at all, until a vendor answers (or ``stop``)."""
        stop = stop or threading.Event()
        config = self.config

        def again(state: RetryCallState) -> bool:
            if stop.is_set() or not self.failed_shims:
                return False
            retry = not self.devices or state.attempt_number < config.discovery_attempts
            log.warning(
                "discovery attempt %d: %s; %s",
                state.attempt_number,
                "; ".join(f"{s.vendor}: {s.status.reason}" for s in self.failed_shims),
                "trying again" if retry else "registering without it, tried again while the agent runs",
            )
            return retry

        first = True

        def attempt() -> list[DeviceInfo]:
            nonlocal first
            if first:
                first = False
                return self.discover()
            self.rediscover()
            return self.devices

        retrying = Retrying(
            wait=wait_exponential_jitter(
                multiplier=config.discovery_backoff_initial_s,
                max=config.discovery_backoff_max_s,
                jitter=config.backoff_jitter_s,
            ),
            retry=again,
            stop=stop_never,
            sleep=sleep or (lambda seconds: _pause(stop, seconds)),
        )
        return retrying(attempt)

    def _discover_shim(self, shim: Shim) -> None:
        try:
            shim.discover()
        except Exception as err:  # a shim bug must not stop the agent: the vendor is in error, tried again later
            log.exception("shim %s failed at discovery", shim.vendor)
            shim.status = ShimStatus(vendor=shim.vendor, state=ShimState.ERROR, reason=f"discovery failed: {err!r}")
            shim.devices = []
        self.discoveries += 1
        log.info("shim %s: %s %s", shim.vendor, shim.status.state.value, shim.status.reason)

    def _collect(self) -> list[DeviceInfo]:
        self.devices = [d for shim in self.shims for d in shim.devices if shim.status.state == ShimState.PRESENT]
        return self.devices

    @property
    def present_shims(self) -> list[Shim]:
        return [s for s in self.shims if s.status.state == ShimState.PRESENT]

    def node_descriptor(self) -> NodeDescriptor:
        """The node as the scheduler sees it: its catalog model, and how many devices of that model work can be
        placed on (a device the catalog does not know is reported, not counted; a GPU in MIG mode counts as its
        MIG devices)."""
        models = {d.model for d in self.devices if d.model}
        # A node has accelerators of one model (design); several models mean a misconfigured node.
        model = models.pop() if len(models) == 1 else None
        offered = [d for d in schedulable_devices(self.devices) if model is None or d.model == model]
        vendors = {d.vendor for d in offered}
        cfg = self.config
        return NodeDescriptor(
            node_id=cfg.node_id,
            hostname=socket.gethostname(),
            model=model,
            vendor=vendors.pop() if len(vendors) == 1 else None,
            devices=len(offered),
            cpu_milli=cfg.cpu_milli if cfg.cpu_milli is not None else (psutil.cpu_count() or 0) * 1000,
            memory_mib=cfg.memory_mib if cfg.memory_mib is not None else psutil.virtual_memory().total // 2**20,
            site=cfg.site,
            region=cfg.region,
            tier=cfg.tier,
            island=cfg.island,
            switch=cfg.switch,
            labels=dict(cfg.labels),
        )

    # --------------------------------------------------------------------------------------------- ticking

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def ticks(self) -> int:
        """Ticks taken so far (the next batch's ``seq``)."""
        return self._seq

    def tick(self) -> TelemetryBatch:
        """Sample every present shim once, judge health and buffer the batch."""
        start = self.clock()
        slow = self._seq % self.config.slow_every == 0
        samples: list[DeviceSample] = []
        for shim in self.present_shims:
            try:
                samples.extend(shim.sample(fast=not slow))
            except Exception as err:  # a shim bug must not stop the other vendors' telemetry
                log.exception("shim %s failed", shim.vendor)
                samples.extend(shim.failed_samples(f"{shim.vendor} shim error: {err!r}", start, self.wall_clock()))
        judged = []
        for sample in dedupe_uuids(samples):
            sticky = self._sticky.setdefault(sample.uuid, [])
            sticky.extend(r for r in health_rules.fatal_reasons(sample) if r not in sticky)
            judged.append(health_rules.evaluate(sample, sticky))
        for sample in judged:
            self.latest[sample.uuid] = sample
        batch = TelemetryBatch(
            seq=self._seq,
            age_s=0.0,
            sampled_wall_time=self.wall_clock(),
            slow=slow,
            samples=judged,
        )
        self._seq += 1
        if len(self._buffer) >= self.config.buffer_max_batches:
            lost = self._buffer.popleft()  # keep the newest: the API cares more about now than a minute ago
            self._sampled_at.pop(lost.seq, None)
            self.dropped_batches_total += 1
        self._buffer.append(batch)
        self._sampled_at[batch.seq] = start
        while self.changes_only and len(self._buffer) > 1:  # only the newest batch is ever sent
            self._sampled_at.pop(self._buffer.popleft().seq, None)
        self.last_tick_s = self.clock() - start
        if self.on_tick is not None:
            self.on_tick(self, batch)
        return batch

    def clear_faults(self, uuid: str) -> None:
        """Forget the sticky faults of a device (after an operator reset it)."""
        self._sticky.pop(uuid, None)

    # ------------------------------------------------------------------------------------------ API calls

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.config.node_token}"}

    def _url(self, path: str) -> str:
        return self.config.api_url.rstrip("/") + path

    def registration(self) -> RegisterRequest:
        """The body of a registration (what :meth:`register` sends; another transport may send it instead)."""
        return RegisterRequest(
            agent_version=AGENT_VERSION,
            node=self.node_descriptor(),
            devices=self.devices,
            shims=[s.status for s in self.shims],
            sent_wall_time=self.wall_clock(),
        )

    def register(self) -> RegisterResponse:
        """One registration attempt. Raises ``httpx.HTTPError`` on transport/5xx, :class:`Throttled` on 429,
        :class:`AgentStopped` on other 4xx."""
        response = self.client.post(
            self._url(REGISTER_PATH), content=self.registration().model_dump_json(), headers=self._headers() | _JSON
        )
        return self.registered(response.status_code, response.headers.get("retry-after"), response.content)

    def registered(self, status: int, retry_after_header: str | None, content: bytes) -> RegisterResponse:
        """Take in the API's answer to a registration (raises as :meth:`register` does)."""
        if status == 429:
            self.throttled += 1
            raise Throttled(retry_after(retry_after_header))
        if 400 <= status < 500:
            raise AgentStopped(f"registration refused: HTTP {status} {content[:200].decode(errors='replace')}")
        if status >= 500:
            raise httpx.HTTPStatusError(
                f"registration failed: HTTP {status}",
                request=httpx.Request("POST", self._url(REGISTER_PATH)),
                response=httpx.Response(status),
            )
        reply = RegisterResponse.model_validate_json(content)
        self.registered_node_id = reply.node_id
        self._acked_health = {}  # a new registration knows no health yet: send it all
        self.changes_only = reply.telemetry_interval_s is not None
        if self.changes_only:
            self._follow_lease(reply.heartbeat_interval_s, reply.telemetry_interval_s, reply.lease_s)
            # The first renewal somewhere in the first interval: a herd registering together spreads out.
            self.next_send_at = self.clock() + self.rng.uniform(0.0, self.heartbeat_interval_s)
        elif reply.heartbeat_interval_s:
            self.interval_s = reply.heartbeat_interval_s
        return reply

    def _follow_lease(self, interval: float | None, telemetry: float | None, lease: float | None) -> None:
        if interval:
            self.heartbeat_interval_s = interval
        if telemetry:
            self.telemetry_interval_s = telemetry
        if lease:
            self.lease_s = lease

    def register_with_retry(
        self,
        sleep: Callable[[float], None] = time.sleep,
        attempts: int = 0,
        stop: threading.Event | None = None,
    ) -> RegisterResponse:
        """Register, retrying transport errors and 5xx with backoff, and 429 after its ``Retry-After`` plus
        jitter (``attempts=0``: forever). Once ``stop`` is set it tries no more and raises :class:`AgentStopped`
        (a sleep that ``stop`` cuts short must not turn the backoff into a busy loop)."""
        from tenacity import retry_if_exception_type, stop_after_attempt, stop_when_event_set
        from tenacity.stop import stop_base

        backoff = wait_exponential_jitter(
            multiplier=self.config.backoff_initial_s,
            max=self.config.backoff_max_s,
            jitter=self.config.backoff_jitter_s,
        )

        def wait(state: RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome is not None else None
            if isinstance(error, Throttled):
                return error.retry_after_s + self.rng.uniform(0.0, max(self.config.backoff_jitter_s, 1.0))
            return float(backoff(state))

        until: stop_base = stop_after_attempt(attempts) if attempts else stop_never
        if stop is not None:
            self._stop = stop
            until = until | stop_when_event_set(stop)
        retrying = Retrying(
            wait=wait, retry=retry_if_exception_type((httpx.HTTPError, Throttled)), stop=until, sleep=sleep
        )
        try:
            return retrying(self.register)
        except RetryError as err:
            if stop is not None and stop.is_set():
                raise AgentStopped("stopped before the API accepted the registration") from err
            err.reraise()
            raise  # unreachable: reraise raises the last attempt's error

    def flush(self) -> bool:
        """One heartbeat attempt now. True when the API acknowledged it."""
        now = self.clock()
        try:
            if self.registered_node_id is None:
                self.register()
            if not self._buffer and not self.changes_only:
                return True
            request = self.heartbeat_request(now)
            response = self.client.post(
                self._url(HEARTBEAT_PATH), content=request.model_dump_json(), headers=self._headers() | _JSON
            )
        except AgentStopped:
            raise
        except Throttled as err:
            self._failed(now, err, err.retry_after_s)
            return False
        except (httpx.HTTPError, ValueError) as err:  # ValueError: an unparsable reply from a broken proxy
            self._failed(now, err)
            return False
        return self.heartbeat_answered(
            now, request, response.status_code, response.headers.get("retry-after"), response.content
        )

    def heartbeat_due(self, now: float) -> bool:
        """Whether to heartbeat now: the interval passed, or (changes only) a health change waits to be sent."""
        if now >= self.next_send_at:
            return True
        return self.changes_only and now >= self._hold_until and bool(self._changed_health())

    def telemetry_due(self, now: float) -> bool:
        """Whether the next heartbeat will carry a batch (changes only): a sample is due, or the work changed."""
        interval = self.telemetry_interval_s or 0.0
        return not self.changes_only or self._work_changed or now - self._telemetry_at >= interval

    def _changed_health(self) -> dict[str, Health]:
        return {u: s.health for u, s in self.latest.items() if self._acked_health.get(u) is not s.health}

    def heartbeat_request(self, now: float) -> HeartbeatRequest:
        """The body of the next heartbeat (what :meth:`flush` sends; another transport may send it instead)."""
        if self.changes_only:
            health = self._changed_health()
            due = now - self._telemetry_at >= (self.telemetry_interval_s or 0.0)
            batches = list(self._buffer)[-1:] if (due or health or self._work_changed) else []
        else:
            health = {uuid: s.health for uuid, s in self.latest.items()}
            batches = list(self._buffer)[: self.config.max_batches_per_heartbeat]
        aged = [b.model_copy(update={"age_s": max(0.0, now - self._sampled_at.get(b.seq, now))}) for b in batches]
        return HeartbeatRequest(
            node_id=self.registered_node_id or self.config.node_id,
            agent_uptime_s=max(0.0, now - self.started_monotonic),
            sent_wall_time=self.wall_clock(),
            batches=aged,
            buffered_batches=max(0, len(self._buffer) - len(batches)),
            dropped_batches_total=self.dropped_batches_total,
            rejected_batches_total=self.rejected_batches_total,
            device_health=health,
        )

    def heartbeat_answered(
        self, now: float, request: HeartbeatRequest, status: int, retry_after_header: str | None, content: bytes
    ) -> bool:
        """Take in the API's answer to ``request`` (sent at ``now``). True when it was acknowledged."""
        if status in (401, 403):
            raise AgentStopped(f"heartbeat refused: HTTP {status}")
        if status == 429:
            self.throttled += 1
            self._failed(now, Throttled(retry_after(retry_after_header)), retry_after(retry_after_header))
            return False
        if status == 404:
            self.registered_node_id = None  # the API forgot us: register again next attempt, keep the buffer
            self._failed(now, RuntimeError("API does not know this node"))
            return False
        if status == 422:
            rejected = min(len(self._buffer), max(1, len(request.batches)))
            for _ in range(rejected):
                if self._buffer:
                    self._sampled_at.pop(self._buffer.popleft().seq, None)
            self.rejected_batches_total += rejected
            log.error("API rejected %d batches: %s", rejected, content[:500].decode(errors="replace"))
            return False
        if status >= 400:
            self._failed(now, RuntimeError(f"HTTP {status}"))
            return False
        try:
            reply = HeartbeatResponse.model_validate_json(content)
        except ValueError as err:
            self._failed(now, err)
            return False
        sent = max((b.seq for b in request.batches), default=-1)
        # Acknowledged, or (changes only) older than what was just sent: a newer sample supersedes them.
        last = max(reply.acked_seq, sent) if self.changes_only else reply.acked_seq
        while self._buffer and self._buffer[0].seq <= last:
            done = self._buffer.popleft()
            self._sampled_at.pop(done.seq, None)
        if reply.reregister:
            self.registered_node_id = None
        elif reply.telemetry_interval_s is not None:
            self.changes_only = True
            self._follow_lease(reply.interval_s, reply.telemetry_interval_s, reply.lease_s)
        elif reply.interval_s:
            self.interval_s = reply.interval_s
        self._acked_health.update(request.device_health)
        if request.batches:
            self._telemetry_at = now
            self._work_changed = False
        if reply.work is not None:
            work = tuple(sorted((w.job_id, w.index, w.share) for w in reply.work))
            if work != self._work:
                self._work_changed = self._work is not None or bool(work)
                self._work = work
            for shim in self.present_shims:
                shim.follow(reply.work)
        self.heartbeats_ok += 1
        self.backoff.success()
        self._hold_until = now
        self.next_send_at = now + self.heartbeat_interval_s if self.changes_only else now
        return True

    def _failed(self, now: float, err: Exception, at_least_s: float = 0.0) -> None:
        self.heartbeat_failures += 1
        delay = self.backoff.failure()
        if at_least_s:  # the API said when: that, plus jitter so that a refused herd does not return as one
            delay = at_least_s + self.rng.uniform(0.0, max(self.config.backoff_jitter_s, 1.0))
        self.next_send_at = self._hold_until = now + delay
        # Told to stop (zhisuan up going down, SIGTERM): a last heartbeat that fails is no news to the operator.
        level = logging.DEBUG if self._stop is not None and self._stop.is_set() else logging.WARNING
        log.log(level, "API unreachable (%s); retry in %.1f s, %d batches buffered", err, delay, len(self._buffer))

    # ------------------------------------------------------------------------------------------------ loop

    def run(self, stop: threading.Event | None = None, max_ticks: int | None = None) -> None:
        """Tick every ``interval_s`` and heartbeat when the backoff allows, until ``stop`` is set."""
        stop = self._stop = stop or threading.Event()
        if not self.devices:
            self.discover()
        next_tick = self.clock()
        ticks = 0
        while not stop.is_set():
            now = self.clock()
            if now >= next_tick:
                self._retry_discovery(now)
                self.tick()
                ticks += 1
                next_tick += self.interval_s
                if next_tick < now:  # we fell behind (suspended VM): skip, do not burst
                    next_tick = now + self.interval_s
                if self.heartbeat_due(now):
                    self.flush()
                if max_ticks is not None and ticks >= max_ticks:
                    break
            stop.wait(max(0.0, next_tick - self.clock()))

    def _retry_discovery(self, now: float) -> None:
        """From the loop: the vendors in error are discovered again with backoff; new devices register again."""
        if not self.failed_shims:
            self.discovery_backoff.success()
            return
        if now < self.next_discovery_at:
            return
        if self.discovery_backoff.failures and self.rediscover():
            log.info("devices found on discovering again: %d; registering again", len(self.devices))
            self.registered_node_id = None  # the next flush registers the node with them
        self.next_discovery_at = now + self.discovery_backoff.failure()

    def close(self) -> None:
        for shim in self.shims:
            shim.close()
        if self._client is not None:
            self._client.close()


_JSON = {"Content-Type": "application/json"}


def _pause(stop: threading.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less if ``stop`` is set meanwhile."""
    stop.wait(seconds)


def core_node(descriptor: NodeDescriptor) -> Node | None:
    """The scheduler core's :class:`~scheduler.model.Node` for a registered node; None if its model is unknown."""
    if descriptor.model is None:
        return None
    data: dict[str, Any] = descriptor.model_dump(
        include={"model", "devices", "cpu_milli", "memory_mib", "site", "region", "tier", "island", "switch", "labels"}
    )
    return Node(id=descriptor.node_id, **data)


def export_to(store: TelemetryStore) -> Callable[[Agent, TelemetryBatch], None]:
    """An ``on_tick`` hook that publishes each batch and the agent's counters to a Prometheus store."""

    def hook(agent: Agent, batch: TelemetryBatch) -> None:
        store.update(
            agent.devices,
            batch.samples,
            buffered_batches=agent.buffered,
            dropped_batches_total=agent.dropped_batches_total,
            rejected_batches_total=agent.rejected_batches_total,
            heartbeats_total=agent.heartbeats_ok,
            heartbeat_failures_total=agent.heartbeat_failures,
            tick_seconds=agent.last_tick_s,
        )

    return hook
