"""Load generator: N emulated node agents in one process (asyncio), against a real API server.

Each emulated node is a real :class:`agents.agent.Agent` with an :class:`~agents.shims.emulated.EmulatedShim` of
8 devices: the agent decides what to send (registration, lease renewals, health it has not had acknowledged, the
newest sample when telemetry is due) and takes in the answers (429 + Retry-After, reregister, work); this module
only carries the bytes over aiohttp instead of the agent's own blocking client, so thousands share one event loop.
At most ``--connections`` requests are in flight at once (the latency below is measured from when a request got
one of them; the wait for it is reported apart, as ``queue_wait``).

All agents start at once: the registration is a thundering herd by construction, which the API admits with 429s.
``--faults`` nodes get a fatal XID on one device at a random moment (a health change the API must record at once).

    .venv/bin/python benchmarks/agents_load.py --url http://127.0.0.1:8000 --token zs_... --nodes 1000 -t 60

Prints JSON: registrations (time until all admitted, 429s, errors), heartbeats (count, per second, latency
p50/p99/max, queue wait, failures by kind), renewals that came later than the lease the API granted (a node the
API would have shown down while its agent was alive: expected 0), and the process's CPU seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import resource
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agents.agent import Agent, AgentConfig, AgentStopped, Throttled  # noqa: E402
from agents.protocol import HEARTBEAT_PATH, REGISTER_PATH  # noqa: E402
from agents.shims.emulated import EmulatedShim  # noqa: E402

MODELS = ("H100", "A100", "H20", "Ascend910B", "MLU590", "P800")


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary_ms(values: list[float]) -> dict[str, Any]:
    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1000, 2)

    return {
        "count": len(values),
        "p50_ms": ms(percentile(values, 0.5)),
        "p99_ms": ms(percentile(values, 0.99)),
        "p99.9_ms": ms(percentile(values, 0.999)),
        "max_ms": ms(max(values) if values else None),
    }


@dataclass
class Stats:
    started: float = field(default_factory=time.monotonic)
    registered: int = 0
    all_registered_s: float | None = None
    register_latency: list[float] = field(default_factory=list)
    register_throttled: int = 0
    register_errors: dict[str, int] = field(default_factory=dict)
    heartbeat_latency: list[float] = field(default_factory=list)
    heartbeat_times: list[float] = field(default_factory=list)
    queue_wait: list[float] = field(default_factory=list)
    heartbeat_errors: dict[str, int] = field(default_factory=dict)
    heartbeats_throttled: int = 0
    telemetry_sent: int = 0
    health_changes_sent: int = 0
    late_renewals: int = 0
    reregistered: int = 0
    faults_injected: int = 0

    def error(self, bucket: dict[str, int], kind: str) -> None:
        bucket[kind] = bucket.get(kind, 0) + 1


class Fleet:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.url = args.url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {args.token}", "Content-Type": "application/json"}
        self.stats = Stats()
        self.rng = random.Random(args.seed)
        self.stop = asyncio.Event()
        self.slots = asyncio.Semaphore(args.connections)
        self.agents: list[Agent] = []
        for i in range(args.nodes):
            node_id = f"{args.prefix}-{i:05d}"
            model = MODELS[i % len(MODELS)] if args.mixed_models else "H100"
            config = AgentConfig(
                api_url=self.url,
                node_token=args.token,
                node_id=node_id,
                interval_s=1.0,
                site=args.site,
                island=f"{args.prefix}-island-{i // 32}",
                switch=f"{args.prefix}-switch-{i // 8}",
                cpu_milli=128_000,
                memory_mib=1024 * 1024,
                backoff_initial_s=1.0,
                backoff_max_s=30.0,
                backoff_jitter_s=2.0,
            )
            agent = Agent(config, [EmulatedShim(model, devices=8, node=node_id)], rng=random.Random(i))
            agent.discover()
            self.agents.append(agent)
        self.faulty = set(self.rng.sample(range(args.nodes), min(args.faults, args.nodes)))

    async def post(self, session: aiohttp.ClientSession, path: str, body: str) -> tuple[int, str | None, bytes, float]:
        queued = time.perf_counter()
        async with self.slots:
            start = time.perf_counter()
            self.stats.queue_wait.append(start - queued)
            timeout = aiohttp.ClientTimeout(total=self.args.timeout)
            async with session.post(self.url + path, data=body, headers=self.headers, timeout=timeout) as r:
                content = await r.read()
                return r.status, r.headers.get("Retry-After"), content, time.perf_counter() - start

    async def register(self, session: aiohttp.ClientSession, agent: Agent) -> None:
        delay = 1.0
        while not self.stop.is_set():
            try:
                status, retry, content, took = await self.post(
                    session, REGISTER_PATH, agent.registration().model_dump_json()
                )
                self.stats.register_latency.append(took)
                agent.registered(status, retry, content)
                self.stats.registered += 1
                if self.stats.registered == len(self.agents):
                    self.stats.all_registered_s = time.monotonic() - self.stats.started
                return
            except Throttled as err:
                self.stats.register_throttled += 1
                await self.sleep(err.retry_after_s + agent.rng.uniform(0, 2.0))
            except AgentStopped:
                raise
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as err:
                self.stats.error(self.stats.register_errors, type(err).__name__)
                await self.sleep(delay + agent.rng.uniform(0, delay))
                delay = min(30.0, delay * 2)

    async def sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), timeout=max(0.0, seconds))

    async def node(self, session: aiohttp.ClientSession, index: int) -> None:
        agent = self.agents[index]
        await self.register(session, agent)
        fault_at: float | None = agent.clock() + self.rng.uniform(30, max(31.0, self.args.duration - 30))
        acked_at = agent.clock()
        while not self.stop.is_set():
            now = agent.clock()
            wake = agent.next_send_at
            if index in self.faulty and fault_at is not None:
                wake = min(wake, fault_at)
            await self.sleep(wake - now)
            if self.stop.is_set():
                return
            now = agent.clock()
            if index in self.faulty and fault_at is not None and now >= fault_at:
                shim = agent.shims[0]
                assert isinstance(shim, EmulatedShim)
                shim.inject_xid(self.rng.randrange(8), 79)
                agent.tick()
                fault_at = None
                self.stats.faults_injected += 1
            elif agent.telemetry_due(now):
                agent.tick()
            if not agent.heartbeat_due(now):
                continue
            if agent.registered_node_id is None:
                self.stats.reregistered += 1
                await self.register(session, agent)
                continue
            request = agent.heartbeat_request(now)
            try:
                status, retry, content, took = await self.post(session, HEARTBEAT_PATH, request.model_dump_json())
            except (aiohttp.ClientError, TimeoutError, OSError) as err:
                self.stats.error(self.stats.heartbeat_errors, type(err).__name__)
                agent._failed(now, err)
                continue
            lease = agent.lease_s or 3 * agent.heartbeat_interval_s
            if now - acked_at > lease:
                self.stats.late_renewals += 1
            ok = agent.heartbeat_answered(now, request, status, retry, content)
            if status == 429:
                self.stats.heartbeats_throttled += 1
            elif not ok:
                self.stats.error(self.stats.heartbeat_errors, f"HTTP {status}")
            else:
                acked_at = now
                self.stats.heartbeat_latency.append(took)
                self.stats.heartbeat_times.append(time.monotonic())
                self.stats.telemetry_sent += bool(request.batches)
                self.stats.health_changes_sent += bool(request.device_health)

    async def run(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop.set)  # stop early, still report
        connector = aiohttp.TCPConnector(limit=self.args.connections, limit_per_host=self.args.connections)
        cpu0 = _cpu()
        async with aiohttp.ClientSession(connector=connector) as session:
            tasks = [asyncio.create_task(self.node(session, i)) for i in range(len(self.agents))]
            await self.sleep(self.args.duration)
            self.stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
        wall = time.monotonic() - self.stats.started
        return self.report(wall, _cpu() - cpu0)

    def report(self, wall: float, cpu: float) -> dict[str, Any]:
        s = self.stats
        steady_from = (s.all_registered_s or wall) + s.started
        steady = [t for t in s.heartbeat_times if t >= steady_from]
        # Latencies of the heartbeats after the last registration (the herd's queueing left out).
        steady_latency = [
            lat for lat, t in zip(s.heartbeat_latency, s.heartbeat_times, strict=True) if t >= steady_from
        ]
        window = s.started + wall - steady_from
        intervals = sorted({round(a.heartbeat_interval_s, 3) for a in self.agents})
        return {
            "nodes": len(self.agents),
            "devices": 8 * len(self.agents),
            "duration_s": round(wall, 1),
            "connections": self.args.connections,
            "registrations": {
                "admitted": s.registered,
                "all_admitted_after_s": None if s.all_registered_s is None else round(s.all_registered_s, 1),
                "throttled_429": s.register_throttled,
                "errors": s.register_errors,
                "latency": summary_ms(s.register_latency),
            },
            "heartbeats": {
                "ok": len(s.heartbeat_latency),
                "per_s_steady": round(len(steady) / window, 1) if window > 0 else None,
                "latency": summary_ms(s.heartbeat_latency),
                "latency_after_herd": summary_ms(steady_latency),
                "queue_wait": summary_ms(s.queue_wait),
                "throttled_429": s.heartbeats_throttled,
                "errors": s.heartbeat_errors,
                "with_telemetry": s.telemetry_sent,
                "with_health_changes": s.health_changes_sent,
                "interval_s": intervals,
                "lease_s": sorted({a.lease_s for a in self.agents if a.lease_s}),
            },
            "late_renewals": s.late_renewals,
            "reregistered": s.reregistered,
            "faults_injected": s.faults_injected,
            "cpu_seconds": round(cpu, 1),
        }


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", help="a node-agent token (or --token-file)")
    parser.add_argument("--token-file", type=Path)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("-t", "--duration", type=float, default=60.0, help="seconds")
    parser.add_argument("--connections", type=int, default=128, help="requests in flight at most")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    parser.add_argument("--faults", type=int, default=10, help="nodes that get a fatal XID once")
    parser.add_argument("--prefix", default="emu")
    parser.add_argument("--site", default="dc1")
    parser.add_argument("--mixed-models", action="store_true", help="six catalog models instead of all H100")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the JSON here too")
    args = parser.parse_args(argv)
    if args.token is None:
        if args.token_file is None:
            parser.error("give --token or --token-file")
        args.token = args.token_file.read_text().strip()
    # A herd refused with 429 would log a warning per agent per retry: the JSON counts them instead.
    logging.getLogger("zhisuan.agent").setLevel(logging.ERROR)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(Fleet(args).run())
    text = json.dumps(result, indent=2)
    if args.out is not None:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
