"""A real dashboard deployment for the UI tests: the API (uvicorn on 127.0.0.1, in a thread) over SQLite, three
emulated node agents heartbeating through the real agent code, and the real scheduler service placing jobs
through :class:`~api.service_store.SqlServiceStore` with an in-process executor.

The executor is :class:`ScriptedExecutor`: the :class:`InstantExecutor` (launches succeed at once, runs last
until stopped) plus worker logs the test writes (``emit``), which the service copies into the database exactly
as it copies a Ray worker's log. Tests drive everything through the API, the browser and the shims.

Users: ``alice@acme`` (tenant-user), ``boss@acme`` (tenant-admin), ``bob@sme-vision`` (tenant-user), the center
admin ``center`` (bootstrap token).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from sqlalchemy import Engine

from agents.agent import Agent, AgentConfig
from agents.shims.emulated import EmulatedShim
from api.app import create_app
from api.db import make_engine
from api.deps import AppContext
from api.service_store import SqlServiceStore
from api.settings import Settings
from scheduler.catalog import SEEDS_DIR
from scheduler.live.executors.base import LogChunk
from scheduler.live.executors.instant import InstantExecutor
from scheduler.live.service import SchedulerService, ServiceConfig

POLICY = SEEDS_DIR / "policy.yaml"
HEARTBEAT_S = 1.0
#: (node id, model, devices, island, switch)
#: acme's guarantee holds 16 H100 for it, so other tenants need more than 16 installed to run anything.
NODES = (
    ("h100-a", "H100", 8, "isl-1", "sw-1"),
    ("h100-b", "H100", 8, "isl-1", "sw-1"),
    ("h100-c", "H100", 8, "isl-1", "sw-2"),
    ("h100-d", "H100", 8, "isl-2", "sw-3"),
    ("asc-a", "Ascend910B", 8, "isl-3", "sw-4"),
)


class ScriptedExecutor(InstantExecutor):
    """:class:`InstantExecutor` whose workers write the log lines a test hands to :meth:`emit`."""

    def __init__(self) -> None:
        super().__init__()
        self._logs: dict[tuple[str, int], bytearray] = {}
        self._lock = threading.Lock()

    def emit(self, job_id: str, text: str, rank: int = 0) -> None:
        with self._lock:
            self._logs.setdefault((job_id, rank), bytearray()).extend(text.encode())

    def read_logs(self, job_id: str, rank: int, offset: int = 0, limit: int = 65536) -> LogChunk:
        chunk = super().read_logs(job_id, rank, offset, limit)
        with self._lock:
            data = bytes(self._logs.get((job_id, rank), b""))[offset : offset + limit]
        return LogChunk(job_id, chunk.attempt, rank, offset, data.decode("utf-8", errors="ignore"))


def _wait(stop: threading.Event, seconds: float) -> None:
    stop.wait(seconds)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Dashboard:
    url: str
    app: FastAPI
    engine: Engine
    executor: ScriptedExecutor
    shims: dict[str, EmulatedShim]
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def ctx(self) -> AppContext:
        ctx: AppContext = self.app.state.ctx
        return ctx

    def api(self, who: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.tokens[who]}"}, timeout=30)

    def submit(self, who: str, **spec: Any) -> dict[str, Any]:
        body = {"devices_per_worker": 1, "entrypoint": "python train.py", "models": ["H100"], **spec}
        with self.api(who) as client:
            response = client.post("/v1/jobs", json=body)
        assert response.status_code == 201, response.text
        job: dict[str, Any] = response.json()
        return job

    def job(self, who: str, job_id: str) -> dict[str, Any]:
        with self.api(who) as client:
            response = client.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        return job

    def wait_state(self, who: str, job_id: str, *states: str, timeout_s: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.job(who, job_id)
            if job["state"] in states:
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"{job_id} is {job['state']}, not {states} after {timeout_s} s")
            time.sleep(0.1)

    def wait(self, what: Callable[[], bool], timeout_s: float = 20.0, message: str = "") -> None:
        deadline = time.monotonic() + timeout_s
        while not what():
            if time.monotonic() > deadline:
                raise AssertionError(message or "timed out")
            time.sleep(0.1)

    def cancel(self, who: str, job_id: str) -> None:
        with self.api(who) as client:
            response = client.post(f"/v1/jobs/{job_id}/cancel")
        assert response.status_code in (202, 409), response.text

    def cancel_all(self) -> None:
        with self.api("admin") as client:
            jobs = client.get("/v1/jobs", params={"state": "pending,starting,running", "limit": 500}).json()
            for job in jobs["items"]:
                client.post(f"/v1/jobs/{job['id']}/cancel")
        for job in jobs["items"]:
            self.wait_state("admin", job["id"], "cancelled", "failed", "succeeded")


def _provision(dash: Dashboard, admin_token: str) -> str:
    dash.tokens["admin"] = admin_token
    with dash.api("admin") as client:
        for name, tenant, role in (
            ("alice", "acme", "tenant-user"),
            ("boss", "acme", "tenant-admin"),
            ("bob", "sme-vision", "tenant-user"),
        ):
            response = client.post("/v1/users", json={"name": name, "tenant": tenant, "role": role})
            assert response.status_code == 201, response.text
            response = client.post("/v1/tokens", json={"user": f"{name}@{tenant}", "name": "tests"})
            assert response.status_code == 201, response.text
            dash.tokens[name] = response.json()["token"]
        response = client.post("/v1/nodes/tokens", json={"node_id": None})
        assert response.status_code == 201, response.text
        node_token: str = response.json()["token"]
    return node_token


@contextmanager
def running_dashboard(tmp: Path, **settings: Any) -> Iterator[Dashboard]:
    """Start the whole deployment; stop it in reverse order."""
    database_url = f"sqlite:///{tmp / 'zhisuan.db'}"
    config = Settings(
        database_url=database_url,
        policy_file=POLICY,
        cluster_file=None,
        rate_per_s=0.0,
        rate_burst=0.0,
        heartbeat_interval_s=HEARTBEAT_S,
        cache_refresh_s=0.2,
        admin_token_file=tmp / "admin-token",
    ).with_(**settings)
    app = create_app(config)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    api_thread = threading.Thread(target=server.run, name="ui-api", daemon=True)
    api_thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not api_thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the API server did not start")
        time.sleep(0.02)
    engine = make_engine(database_url)
    executor = ScriptedExecutor()
    dash = Dashboard(f"http://127.0.0.1:{port}", app, engine, executor, {})
    stop = threading.Event()
    threads: list[threading.Thread] = []
    try:
        admin = app.state.ctx.bootstrap_token
        assert admin is not None
        node_token = _provision(dash, admin)
        for node_id, model, devices, island, switch in NODES:
            shim = EmulatedShim(model, devices=devices, node=node_id)
            dash.shims[node_id] = shim
            agent = Agent(
                AgentConfig(
                    api_url=dash.url,
                    node_token=node_token,
                    node_id=node_id,
                    interval_s=HEARTBEAT_S / 2,
                    site="bj1",
                    island=island,
                    switch=switch,
                    cpu_milli=64_000,
                    memory_mib=512 * 1024,
                ),
                [shim],
            )

            def loop(agent: Agent = agent) -> None:
                agent.discover()
                agent.register_with_retry(sleep=lambda seconds: _wait(stop, seconds))
                agent.run(stop)

            threads.append(threading.Thread(target=loop, name=f"agent-{node_id}", daemon=True))
        store = SqlServiceStore(engine, heartbeat_interval_s=HEARTBEAT_S)
        service = SchedulerService(
            store, executor, ServiceConfig(interval_s=0.1, eta_every_s=1.0, logs_every_s=0.2, holder="ui-tests")
        )
        threads.append(threading.Thread(target=service.run, args=(stop,), name="scheduler", daemon=True))
        for thread in threads:
            thread.start()
        with dash.api("admin") as client:

            def registered() -> bool:
                nodes = client.get("/v1/nodes").json()["items"]
                return len(nodes) == len(NODES) and all(n["state"] == "ready" for n in nodes)

            dash.wait(registered, 30, "the emulated nodes did not register")
        yield dash
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
        server.should_exit = True
        api_thread.join(timeout=15)
        engine.dispose()
