"""Served inference on the real local multi-node Ray cluster: one endpoint over several fractional replicas, a
replica killed under load, a rolling update under load, preemption of best-effort work by a production service
and a free-tier service held at its quota.

The module runs its own scheduler service (the deployment's, plus the serving controller as step 7 of its
cycle) in a thread of the test process, an API process with ``/v1/services`` (a second API on the same
database, as a multi-process deployment has), and the router as its own process (``zhisuan services router``).
Requests go to the router with service keys, exactly as a tenant's users would send them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from e2e_support import CORE_CONFIG, H100_NODES, HEARTBEAT_INTERVAL_S, REPO, Deployment, service_config, wait_until

from api.app import create_app
from api.client import ZhisuanClient
from api.db import make_engine
from api.service_store import SqlServiceStore
from api.serving_store import SqlServing
from api.up import developer_login
from scheduler.core import SchedulerCore
from scheduler.live.executors.ray.executor import RayExecutor
from scheduler.live.service import SchedulerService
from scheduler.live.serving.controller import ServeConfig, ServeController

pytestmark = pytest.mark.slow
SERVER = REPO / "seeds" / "examples" / "inference_server.py"
ZHISUAN = os.path.join(os.path.dirname(sys.executable), "zhisuan")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Serving:
    dep: Deployment
    api: str
    router: str
    tokens: dict[str, str]
    service: SchedulerService
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=60.0, trust_env=False))

    def client(self, who: str) -> httpx.Client:
        return httpx.Client(base_url=self.api, headers={"Authorization": f"Bearer {self.tokens[who]}"}, timeout=30)

    def deploy(self, who: str, body: dict[str, Any]) -> tuple[dict[str, Any], str]:
        with self.client(who) as c:
            made = c.post("/v1/services", json=body)
            assert made.status_code in (200, 201), made.text
            key = c.post(f"/v1/services/{body['name']}/keys", json={"name": "e2e"})
            assert key.status_code == 201, key.text
            return made.json(), key.json()["key"]

    def status(self, who: str, name: str) -> dict[str, Any]:
        with self.client(who) as c:
            answer = c.get(f"/v1/services/{name}")
            assert answer.status_code == 200, answer.text
            out: dict[str, Any] = answer.json()
            return out

    def ready(self, who: str, name: str, count: int, timeout_s: float = 90.0) -> dict[str, Any]:
        seen: dict[str, Any] = {}

        def check() -> bool:
            seen.update(self.status(who, name))
            return seen["ready"] == count and sum(1 for r in seen["replicas"] if r["phase"] == "ready") == count

        try:
            wait_until(check, f"{count} ready replicas of {name}", timeout_s, poll_s=0.25)
        except AssertionError as err:
            raise AssertionError(f"{err}; last status: {seen.get('message')} {seen.get('replicas')}") from None
        return seen

    def delete(self, who: str, name: str) -> None:
        with self.client(who) as c:
            if c.delete(f"/v1/services/{name}").status_code != 202:
                return
            wait_until(lambda: c.get(f"/v1/services/{name}").status_code == 404, f"{name} gone", 90, 0.25)

    def call(self, tenant: str, name: str, key: str, path: str = "/v1/completions", **body: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": uuid.uuid4().hex}
        payload = body or {"prompt": "the replica", "max_tokens": 4}
        return self.http.post(f"{self.router}/v1/services/{tenant}/{name}{path}", json=payload, headers=headers)


def served(name: str, **fields: Any) -> dict[str, Any]:
    serving = fields.pop("serving", {})
    server_args = fields.pop("server_args", "")
    body: dict[str, Any] = {
        "name": name,
        "kind": "inference",
        "replicas": 1,
        "devices_per_worker": 0.25,
        "cpus_per_worker": 0.25,
        "memory_gib_per_worker": 0.125,
        "models": ["H100"],
        "priority": "production-inference",
        "entrypoint": f"{sys.executable} {SERVER} --port 0 {server_args}",
        "runtime_env": {"working_dir": str(REPO)},
        "serving": {"max_replicas": 3, "upscale_delay_s": 0.5, "downscale_delay_s": 5.0, **serving},
    }
    body.update(fields)
    return body


@contextlib.contextmanager
def load(clients: int, call: Callable[[], int]) -> Iterator[list[int]]:
    results: list[int] = []
    done = threading.Event()

    def loop() -> None:
        while not done.is_set():
            results.append(call())

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    try:
        yield results
    finally:
        done.set()
        for t in threads:
            t.join(90)


@pytest.fixture(scope="module")
def serving(deployment: Deployment) -> Iterator[Serving]:
    dep = deployment
    run = dep.run
    admin_token = run.admin_token
    assert admin_token is not None
    with ZhisuanClient(run.url, admin_token) as admin:
        with contextlib.suppress(Exception):
            admin.create_tenant("lab", type="university", tier="basic")
        admin.put_queue("lab", {"tenant": "lab", "quota": {"H100": {"limit": 0.5}}})
    tokens = {
        "acme": developer_login(run.url, admin_token, tenant="acme", user="svc-admin"),
        "lab": developer_login(run.url, admin_token, tenant="lab", user="li"),
        "sme": developer_login(run.url, admin_token, tenant="sme-vision", user="svc-bob"),
    }
    run.stop_scheduler()
    engine = make_engine(dep.database_url)
    executor = RayExecutor(str(run.ray_address), log_dir=str(dep.log_dir))
    controller = ServeController(SqlServing(engine), ServeConfig(every_s=0.25, health_every_s=0.5))
    service = SchedulerService(
        SqlServiceStore(engine, heartbeat_interval_s=HEARTBEAT_INTERVAL_S),
        executor,
        service_config("serving-e2e"),
        core=SchedulerCore(CORE_CONFIG),
        serving=controller,
    )
    stop = threading.Event()
    scheduler = threading.Thread(target=service.run, args=(stop,), name="serving-scheduler", daemon=True)
    scheduler.start()
    app = create_app(run.settings)
    api_port = _free_port()
    api_server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=api_port, log_level="warning"))
    api_thread = threading.Thread(target=api_server.run, daemon=True)
    api_thread.start()
    wait_until(lambda: api_server.started, "the services API", 30)
    router_port = _free_port()
    router_log = dep.tmp / "router.log"
    env = {**os.environ, "ZHISUAN_DATABASE_URL": dep.database_url}
    with open(router_log, "ab") as out:
        router = subprocess.Popen(
            [ZHISUAN, "services", "router", "--port", str(router_port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=env,
            start_new_session=True,
        )
    router_url = f"http://127.0.0.1:{router_port}"

    def router_up() -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{router_url}/healthz", timeout=1).status_code == 200
        return False

    wait_until(router_up, "the router process", 30, 0.2)
    state = Serving(dep, f"http://127.0.0.1:{api_port}", router_url, tokens, service)
    try:
        yield state
    finally:
        state.http.close()
        router.send_signal(signal.SIGTERM)
        try:
            router.wait(20)
        except subprocess.TimeoutExpired:
            router.kill()
        stop.set()
        scheduler.join(15)
        service.release_lock()
        controller.close()
        executor.close()
        api_server.should_exit = True
        api_thread.join(15)
        engine.dispose()
        run.start_scheduler()


def test_one_endpoint_answers_through_replicas_on_fractional_devices(serving: Serving) -> None:
    body = served("e2e-chat", replicas=2, serving={"min_replicas": 2, "max_replicas": 2})
    _, key = serving.deploy("acme", body)
    try:
        status = serving.ready("acme", "e2e-chat", 2)
        seen: Counter[str] = Counter()
        for _ in range(30):
            answer = serving.http.get(
                f"{serving.router}/v1/services/acme/e2e-chat/info", headers={"Authorization": f"Bearer {key}"}
            )
            assert answer.status_code == 200, answer.text
            info = answer.json()
            seen[info["job"]] += 1
            assert info["device_milli"] == "250"
        assert set(seen) == {r["job_id"] for r in status["replicas"]}
        # Each replica sees exactly the device the core gave it, and they sit on both H100 nodes (spread).
        with ZhisuanClient(serving.dep.run.url, serving.tokens["acme"]) as acme:
            placements = {r["job_id"]: acme.get_job(r["job_id"]).placement for r in status["replicas"]}
        assert {p.workers[0].node for p in placements.values() if p is not None} == set(H100_NODES)
        for job_id, p in placements.items():
            assert p is not None and p.workers[0].milli == 250
            info = serving.http.get(
                next(r["url"] for r in status["replicas"] if r["job_id"] == job_id) + "/info"
            ).json()
            assert info["visible_devices"]["CUDA_VISIBLE_DEVICES"] == str(p.workers[0].devices[0])
        streamed = serving.http.post(
            f"{serving.router}/v1/services/acme/e2e-chat/v1/completions",
            json={"prompt": "a", "max_tokens": 6, "stream": True},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert streamed.headers["content-type"].startswith("text/event-stream")
        assert streamed.text.rstrip().endswith("data: [DONE]")
    finally:
        serving.delete("acme", "e2e-chat")


def test_a_replica_killed_mid_load_fails_no_idempotent_request(serving: Serving) -> None:
    body = served("e2e-kill", replicas=3, serving={"min_replicas": 3, "max_replicas": 3})
    _, key = serving.deploy("acme", body)
    try:
        status = serving.ready("acme", "e2e-kill", 3)
        victim = status["replicas"][0]
        pid = serving.http.get(victim["url"] + "/info").json()["pid"]
        with load(4, lambda: serving.call("acme", "e2e-kill", key).status_code) as results:
            time.sleep(1.5)
            os.kill(pid, signal.SIGKILL)
            time.sleep(3.0)
        assert len(results) > 30
        assert Counter(results) == {200: len(results)}, Counter(results)
        # The scheduler retries the killed replica (a new attempt): back to three.
        serving.ready("acme", "e2e-kill", 3)
    finally:
        serving.delete("acme", "e2e-kill")


def test_a_rolling_update_under_load_answers_every_request(serving: Serving) -> None:
    body = served("e2e-roll", replicas=2, serving={"min_replicas": 2, "max_replicas": 2})
    _, key = serving.deploy("acme", body)
    try:
        before = {r["job_id"] for r in serving.ready("acme", "e2e-roll", 2)["replicas"]}
        with load(3, lambda: serving.call("acme", "e2e-roll", key).status_code) as results:
            time.sleep(1.0)
            updated, _ = serving.deploy("acme", {**body, "cpus_per_worker": 0.3})
            assert updated["outcome"] == "updated" and updated["revision"] == 2

            def rolled() -> bool:
                replicas = serving.status("acme", "e2e-roll")["replicas"]
                ready = [r for r in replicas if r["phase"] == "ready"]
                return len(ready) == 2 and all(r["revision"] == 2 for r in ready) and len(replicas) == 2

            wait_until(rolled, "every replica on revision 2", 120, 0.25)
            time.sleep(1.0)
        assert len(results) > 30
        assert Counter(results) == {200: len(results)}, Counter(results)
        after = {r["job_id"] for r in serving.status("acme", "e2e-roll")["replicas"]}
        assert before.isdisjoint(after)
    finally:
        serving.delete("acme", "e2e-roll")


def test_a_production_service_preempts_best_effort_work_and_a_free_tier_one_stops_at_its_quota(
    serving: Serving,
) -> None:
    sme = ZhisuanClient(serving.dep.run.url, serving.tokens["sme"])
    fillers = []
    try:
        for i in range(8):  # every H100 of both nodes
            fillers.append(
                sme.submit(
                    {
                        "name": f"fill-{i}",
                        "entrypoint": "sleep 600",
                        "models": ["H100"],
                        "devices_per_worker": 1,
                        "cpus_per_worker": 0.125,
                        "memory_gib_per_worker": 0.125,
                        "priority": "best-effort",
                    }
                ).id
            )
        wait_until(lambda: all(sme.get_job(j).state == "running" for j in fillers), "the fillers running", 90, 0.5)
        prod = served(
            "e2e-prod",
            devices_per_worker=1,
            server_args="--token-ms 150 --slots 1",
            serving={"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 1},
        )
        _, key = serving.deploy("acme", prod)
        serving.ready("acme", "e2e-prod", 1)
        with load(5, lambda: serving.call("acme", "e2e-prod", key).status_code) as results:
            serving.ready("acme", "e2e-prod", 3, timeout_s=120)
        assert Counter(results).get(200, 0) > 0 and set(results) <= {200, 429}, Counter(results)
        events = [e for j in fillers for e in sme.events(j) if e.kind == "preempted"]
        assert len(events) == 3, [e.message for e in events]
        assert all("higher priority" in e.message for e in events)
        # Room again (the quota is what must stop the next service, not capacity).
        for job_id in fillers:
            sme.cancel(job_id)
        wait_until(lambda: all(sme.get_job(j).terminal for j in fillers), "the fillers cancelled", 60, 0.5)
        serving.delete("acme", "e2e-prod")
        # A free-tier service asks for four quarter-device replicas under load; its quota holds half a device.
        free = served(
            "e2e-free",
            priority="best-effort",
            server_args="--token-ms 150 --slots 1",
            serving={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 1},
        )
        _, free_key = serving.deploy("lab", free)
        serving.ready("lab", "e2e-free", 1)
        with load(6, lambda: serving.call("lab", "e2e-free", free_key).status_code):

            def held() -> bool:
                status = serving.status("lab", "e2e-free")
                waiting = [r for r in status["replicas"] if r["phase"] == "pending" and r["reasons"]]
                return status["desired"] == 4 and status["ready"] == 2 and len(waiting) == 2

            wait_until(held, "the free-tier service held at 2 of 4 by its quota", 90, 0.25)
        status = serving.status("lab", "e2e-free")
        assert all("above its limit of 0.5" in r["reasons"][0] for r in status["replicas"] if r["phase"] == "pending")
        assert "waiting to be placed" in status["message"]
    finally:
        for job_id in fillers:
            with contextlib.suppress(Exception):
                sme.cancel(job_id)
        serving.delete("acme", "e2e-prod")
        serving.delete("lab", "e2e-free")
        sme.close()
