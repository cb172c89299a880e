"""The node agent: discover devices, sample them every tick, judge health, report to the API, declare to Ray.

One thread does everything, in this order each tick: sample (fast metrics; slow ones every ``slow_every`` ticks),
evaluate health, append the batch to a bounded buffer, then, if the backoff allows, send the buffer in one
heartbeat. When the API is unreachable the agent keeps sampling; the buffer keeps the newest
``buffer_max_batches`` batches and counts the ones it had to drop::

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
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import psutil
from pydantic import BaseModel, ConfigDict, Field
from tenacity import RetryCallState, Retrying, wait_exponential_jitter

from agents import health as health_rules
from agents.exporter import TelemetryStore
from agents.protocol import (
    HEARTBEAT_PATH,
    REGISTER_PATH,
    DeviceInfo,
    DeviceSample,
    HeartbeatRequest,
    HeartbeatResponse,
    NodeDescriptor,
    RegisterRequest,
    RegisterResponse,
    ShimState,
    TelemetryBatch,
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


class AgentStopped(RuntimeError):
    """The API refused the agent in a way retrying cannot fix (bad token, rejected registration)."""


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
    ) -> None:
        self.config = config
        self.shims = list(shims)
        self.client = client or httpx.Client(timeout=config.request_timeout_s)
        self.clock, self.wall_clock = clock, wall_clock
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
        self.last_tick_s = 0.0

    # ------------------------------------------------------------------------------------------ discovery

    def discover(self) -> list[DeviceInfo]:
        """Ask every shim for its devices; absent vendors contribute nothing."""
        devices: list[DeviceInfo] = []
        for shim in self.shims:
            found = shim.discover()
            log.info("shim %s: %s %s", shim.vendor, shim.status.state.value, shim.status.reason)
            devices.extend(found)
        self.devices = devices
        return devices

    @property
    def present_shims(self) -> list[Shim]:
        return [s for s in self.shims if s.status.state == ShimState.PRESENT]

    def node_descriptor(self) -> NodeDescriptor:
        models = {d.model for d in self.devices if d.model}
        vendors = {d.vendor for d in self.devices}
        cfg = self.config
        return NodeDescriptor(
            node_id=cfg.node_id,
            hostname=socket.gethostname(),
            # A node has accelerators of one model (design); several models mean a misconfigured node.
            model=models.pop() if len(models) == 1 else None,
            vendor=vendors.pop() if len(vendors) == 1 else None,
            devices=len(self.devices),
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

    def register(self) -> RegisterResponse:
        """One registration attempt. Raises ``httpx.HTTPError`` on transport/5xx, :class:`AgentStopped` on 4xx."""
        body = RegisterRequest(
            agent_version=AGENT_VERSION,
            node=self.node_descriptor(),
            devices=self.devices,
            shims=[s.status for s in self.shims],
            sent_wall_time=self.wall_clock(),
        )
        response = self.client.post(
            self._url(REGISTER_PATH), content=body.model_dump_json(), headers=self._headers() | _JSON
        )
        if 400 <= response.status_code < 500:
            raise AgentStopped(f"registration refused: HTTP {response.status_code} {response.text[:200]}")
        response.raise_for_status()
        reply = RegisterResponse.model_validate_json(response.content)
        self.registered_node_id = reply.node_id
        if reply.heartbeat_interval_s:
            self.interval_s = reply.heartbeat_interval_s
        return reply

    def register_with_retry(self, sleep: Callable[[float], None] = time.sleep, attempts: int = 0) -> RegisterResponse:
        """Register, retrying transport errors and 5xx with backoff (``attempts=0``: forever)."""
        from tenacity import retry_if_exception_type, stop_after_attempt, stop_never

        retrying = Retrying(
            wait=wait_exponential_jitter(
                multiplier=self.config.backoff_initial_s,
                max=self.config.backoff_max_s,
                jitter=self.config.backoff_jitter_s,
            ),
            retry=retry_if_exception_type(httpx.HTTPError),
            stop=stop_after_attempt(attempts) if attempts else stop_never,
            sleep=sleep,
            reraise=True,
        )
        return retrying(self.register)

    def flush(self) -> bool:
        """One heartbeat attempt with the oldest buffered batches. True when the API acknowledged them."""
        now = self.clock()
        try:
            if self.registered_node_id is None:
                self.register()
            if not self._buffer:
                return True
            response = self._post_heartbeat(now)
        except AgentStopped:
            raise
        except (httpx.HTTPError, ValueError) as err:  # ValueError: an unparsable reply from a broken proxy
            self._failed(now, err)
            return False
        if response.status_code in (401, 403):
            raise AgentStopped(f"heartbeat refused: HTTP {response.status_code}")
        if response.status_code == 404:
            self.registered_node_id = None  # the API forgot us: register again next attempt, keep the buffer
            self._failed(now, RuntimeError("API does not know this node"))
            return False
        if response.status_code == 422:
            rejected = min(len(self._buffer), self.config.max_batches_per_heartbeat)
            for _ in range(rejected):
                self._sampled_at.pop(self._buffer.popleft().seq, None)
            self.rejected_batches_total += rejected
            log.error("API rejected %d batches: %s", rejected, response.text[:500])
            return False
        if response.status_code >= 400:
            self._failed(now, RuntimeError(f"HTTP {response.status_code}"))
            return False
        reply = HeartbeatResponse.model_validate_json(response.content)
        while self._buffer and self._buffer[0].seq <= reply.acked_seq:
            done = self._buffer.popleft()
            self._sampled_at.pop(done.seq, None)
        if reply.interval_s:
            self.interval_s = reply.interval_s
        if reply.reregister:
            self.registered_node_id = None
        if reply.work is not None:
            for shim in self.present_shims:
                shim.follow(reply.work)
        self.heartbeats_ok += 1
        self.backoff.success()
        self.next_send_at = now
        return True

    def _post_heartbeat(self, now: float) -> httpx.Response:
        batches = list(self._buffer)[: self.config.max_batches_per_heartbeat]
        aged = [b.model_copy(update={"age_s": max(0.0, now - self._sampled_at.get(b.seq, now))}) for b in batches]
        body = HeartbeatRequest(
            node_id=self.registered_node_id or self.config.node_id,
            agent_uptime_s=max(0.0, now - self.started_monotonic),
            sent_wall_time=self.wall_clock(),
            batches=aged,
            buffered_batches=len(self._buffer) - len(batches),
            dropped_batches_total=self.dropped_batches_total,
            rejected_batches_total=self.rejected_batches_total,
            device_health={uuid: s.health for uuid, s in self.latest.items()},
        )
        return self.client.post(
            self._url(HEARTBEAT_PATH), content=body.model_dump_json(), headers=self._headers() | _JSON
        )

    def _failed(self, now: float, err: Exception) -> None:
        self.heartbeat_failures += 1
        delay = self.backoff.failure()
        self.next_send_at = now + delay
        log.warning("API unreachable (%s); retry in %.1f s, %d batches buffered", err, delay, len(self._buffer))

    # ------------------------------------------------------------------------------------------------ loop

    def run(self, stop: threading.Event | None = None, max_ticks: int | None = None) -> None:
        """Tick every ``interval_s`` and heartbeat when the backoff allows, until ``stop`` is set."""
        stop = stop or threading.Event()
        if not self.devices:
            self.discover()
        next_tick = self.clock()
        ticks = 0
        while not stop.is_set():
            now = self.clock()
            if now >= next_tick:
                self.tick()
                ticks += 1
                next_tick += self.interval_s
                if next_tick < now:  # we fell behind (suspended VM): skip, do not burst
                    next_tick = now + self.interval_s
                if now >= self.next_send_at:
                    self.flush()
                if max_ticks is not None and ticks >= max_ticks:
                    break
            stop.wait(max(0.0, next_tick - self.clock()))

    def close(self) -> None:
        for shim in self.shims:
            shim.close()
        self.client.close()


_JSON = {"Content-Type": "application/json"}


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
