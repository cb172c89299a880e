"""The serving stack without Ray or a database: the real scheduler loop, controller, router and replica processes.

The helpers of tests/serving (its conftest makes the ``stack`` fixture from :func:`make_stack`).

:class:`Stack` runs :class:`~scheduler.live.service.SchedulerService` (with the
:class:`~scheduler.live.serving.controller.ServeController` step) in a thread on a
:class:`~scheduler.live.memory_store.MemoryStore` of two emulated 4×H100 nodes, a
:class:`~local_executor.LocalProcessExecutor` that starts each replica as a real process here
(``seeds/examples/inference_server.py``), and a :class:`~scheduler.live.serving.router.ServiceRouter` on a
free port of 127.0.0.1 that tests call over HTTP.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from local_executor import LocalProcessExecutor, wait_until

from scheduler.core import CoreConfig, QueueingConfig, SchedulerCore
from scheduler.errors import load_yaml_mapping
from scheduler.live.memory_store import MemoryStore
from scheduler.live.service import SchedulerService, ServiceConfig
from scheduler.live.serving.controller import ServeConfig, ServeController
from scheduler.live.serving.memory import MemoryServing
from scheduler.live.serving.router import RouterConfig, ServiceRouter, running
from scheduler.live.serving.store import ServiceRecord
from scheduler.model import Node
from scheduler.spec import JobSpec, JobState

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
POLICY = HERE / "policy.yaml"
SERVER = REPO / "seeds" / "examples" / "inference_server.py"
NODES = ("h100-a", "h100-b")


def server_cmd(*args: str) -> str:
    return " ".join([sys.executable, str(SERVER), "--host", "127.0.0.1", "--port", "0", *args])


def service_spec(
    name: str = "chat", *, replicas: int = 1, server_args: tuple[str, ...] = (), **serving: Any
) -> JobSpec:
    """A served spec: quarter-device replicas of the example server on H100."""
    fields: dict[str, Any] = {"max_replicas": 4, "upscale_delay_s": 0.5, "downscale_delay_s": 2.0}
    fields.update(serving)
    return JobSpec.model_validate(
        {
            "name": name,
            "kind": "inference",
            "replicas": replicas,
            "devices_per_worker": 0.25,
            "cpus_per_worker": 0.25,
            "memory_gib_per_worker": 0.25,
            "models": ["H100"],
            "priority": "production-inference",
            "entrypoint": server_cmd(*server_args),
            "serving": fields,
        }
    )


@dataclass
class Stack:
    store: MemoryStore
    serving: MemoryServing
    executor: LocalProcessExecutor
    service: SchedulerService
    controller: ServeController
    router: ServiceRouter
    url: str
    client: httpx.Client
    stop: threading.Event = field(default_factory=threading.Event)

    def deploy(self, spec: JobSpec, tenant: str = "acme", user: str = "ann") -> tuple[ServiceRecord, str]:
        """Deploy a service and make a key for it; ``(record, key)``."""
        record = self.serving.deploy(tenant, spec.name, spec, user=user, now=time.time())
        _, key = self.serving.create_key(record.id, now=time.time())
        return record, key

    def endpoint(self, record: ServiceRecord) -> str:
        return f"{self.url}/v1/services/{record.tenant}/{record.name}"

    def routable(self, record: ServiceRecord) -> list[str]:
        route = self.serving.routes().get((record.tenant, record.name))
        return [e.job_id for e in route.endpoints] if route is not None else []

    def router_sees(self, record: ServiceRecord) -> list[str]:
        service = self.router.services.get((record.tenant, record.name))
        return sorted(service.replicas) if service is not None else []

    def wait_ready(self, record: ServiceRecord, count: int, timeout_s: float = 40.0) -> list[str]:
        """Until the router routes to exactly ``count`` replicas of the service; their job ids."""
        wait_until(lambda: len(self.router_sees(record)) == count, timeout_s, what=f"{count} routable replicas")
        return self.router_sees(record)

    def replicas(self, record: ServiceRecord, *states: JobState) -> list[str]:
        wanted = set(states) or set(JobState)
        return sorted(r.job_id for r in self.serving.replicas() if r.service_id == record.id and r.job_state in wanted)


def make_stack(tmp: Path, serve: ServeConfig | None = None, router: RouterConfig | None = None) -> Iterator[Stack]:
    store = MemoryStore()
    store.set_policy(load_yaml_mapping(POLICY))
    for node in NODES:
        store.put_node(Node(id=node, model="H100", devices=4, cpu_milli=16_000, memory_mib=64 * 1024, site="local"))
    serving = MemoryServing(store)
    executor = LocalProcessExecutor(tmp / "logs", REPO, stop_grace_s=3.0)
    controller = ServeController(
        serving,
        serve
        or ServeConfig(
            every_s=0.1,
            health_every_s=0.25,
            health_starting_every_s=0.1,
            health_timeout_s=0.5,
            load_fresh_s=2.0,
            route_refresh_s=0.1,
        ),
    )
    config = ServiceConfig(holder="serving-tests", interval_s=0.05, lease_s=10.0, max_retries=1, retry_backoff_s=0.2)
    core = SchedulerCore(CoreConfig(queueing=QueueingConfig(min_runtime_s=0.0)))
    service = SchedulerService(store, executor, config, core=core, serving=controller)
    rtr = ServiceRouter(serving, router or RouterConfig(refresh_s=0.1, report_every_s=0.2, key_cache_s=0.5))
    stop = threading.Event()
    thread = threading.Thread(target=service.run, args=(stop,), name="scheduler", daemon=True)
    thread.start()
    try:
        with running(rtr) as url, httpx.Client(timeout=30.0, trust_env=False) as client:
            yield Stack(store, serving, executor, service, controller, rtr, url, client, stop)
    finally:
        stop.set()
        thread.join(10)
        controller.close()
        executor.close()


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@contextlib.contextmanager
def load(client_count: int, fn: Any) -> Iterator[list[Any]]:
    """Run ``fn()`` in ``client_count`` threads in a loop while the block runs; yields the results list."""
    results: list[Any] = []
    done = threading.Event()

    def loop() -> None:
        while not done.is_set():
            results.append(fn())

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(client_count)]
    for t in threads:
        t.start()
    try:
        yield results
    finally:
        done.set()
        for t in threads:
            t.join(60)
