"""Served inference under locust, through the whole product on a real local Ray cluster (issue 16).

Starts what ``zhisuan up`` starts (:func:`api.up.running`: a local Ray cluster of two emulated 4×H100 nodes,
the API on SQLite, the node agents) with the scheduler service running the serving controller as step 7 of its
cycle, a second API process with ``/v1/services``, and the router as its own process
(``zhisuan services router``). Locust runs in its own process (this file is also its locustfile) and logs every
request; the figures are computed from that log:

1. **overhead**: one locust user, back to back, calls one replica's ``POST /predict`` directly and then through
   the router: the router's added p50/p99 (target: ≤ 2 ms p50);
2. **throughput**: ``--users`` locust users without pause against the router (two replicas): requests/s through
   one router process, and the CPU it used;
3. **ramp**: a service of 1-8 quarter-device replicas (target 2 requests in flight each, p99 SLO ``--slo-ms``)
   under 1× → 3× → 1× load: replicas out and in, p99 per second, p99 outside the scale-up window (from the
   step to 3× until the p99 of every following second is within the SLO again), failed requests;
4. **update and kill** at 1× load: a new revision rolled out, then one replica SIGKILLed: failed requests in
   each (idempotent requests: ``Idempotency-Key``).

    .venv/bin/python benchmarks/serving.py                    # ~6 minutes; one JSON document on stdout
    .venv/bin/python benchmarks/serving.py --quick            # shorter phases (a smoke run)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Set (to the run's plan) when locust imports this file as its locustfile, in its own process.
LOCUST_PLAN = os.environ.get("ZHISUAN_SERVING_LOCUST")

if LOCUST_PLAN:
    # The locust side: the users, the load shape and the request log; nothing of the product is imported here
    # (locust patches the standard library with gevent on import).
    from locust import FastHttpUser, LoadTestShape, constant, constant_pacing, events, task

    _PLAN = json.loads(LOCUST_PLAN)
    _LOG = open(_PLAN["log"], "a", buffering=1 << 16)  # noqa: SIM115 - kept open for the whole run

    @events.request.add_listener  # type: ignore[untyped-decorator]
    def _record(response_time: float, response: object, exception: object, **_: object) -> None:
        status = getattr(response, "status_code", 0) or 0
        _LOG.write(f"{time.time():.4f},{response_time:.3f},{status},{1 if exception else 0}\n")

    @events.quitting.add_listener  # type: ignore[untyped-decorator]
    def _close(**_: object) -> None:
        _LOG.flush()

    class Caller(FastHttpUser):
        host = _PLAN["host"]
        wait_time = constant_pacing(_PLAN["pace_s"]) if _PLAN.get("pace_s") else constant(0)

        @task
        def call(self) -> None:
            headers = {"Idempotency-Key": uuid.uuid4().hex, "Content-Type": "application/json"}
            if _PLAN.get("key"):
                headers["Authorization"] = f"Bearer {_PLAN['key']}"
            self.client.post(_PLAN["path"], data=_PLAN["body"], headers=headers, name="call")

    class Stages(LoadTestShape):
        stages = _PLAN["stages"]

        def tick(self) -> tuple[int, float] | None:
            elapsed = self.get_run_time()  # type: ignore[no-untyped-call]
            for until, users in self.stages:
                if elapsed < until:
                    return users, max(users, 1)
            return None

else:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import httpx
    import psutil
    import uvicorn
    import yaml

    from api.app import create_app
    from api.db import make_engine
    from api.service_store import SqlServiceStore
    from api.serving_store import SqlServing
    from api.settings import Settings
    from api.up import developer_login, running
    from scheduler.core import CoreConfig, QueueingConfig, SchedulerCore
    from scheduler.live.executors.ray.executor import RayExecutor
    from scheduler.live.service import SchedulerService, ServiceConfig
    from scheduler.live.serving.controller import ServeConfig, ServeController

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

SERVER = ROOT / "seeds" / "examples" / "inference_server.py"
ZHISUAN = os.path.join(os.path.dirname(sys.executable), "zhisuan")
PREDICT = json.dumps({"inputs": [[1, 2, 3]]})
WARMUP_S = 10.0
COMPLETION = json.dumps({"prompt": "the scheduler", "max_tokens": 8})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait(check: Any, what: str, timeout_s: float = 120.0, poll_s: float = 0.25) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(poll_s)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass
class Bench:
    tmp: Path
    api: str
    router: str
    router_pid: int
    token: str
    tenant: str

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.api, headers={"Authorization": f"Bearer {self.token}"}, timeout=30)

    def deploy(self, body: dict[str, Any]) -> str:
        with self.http() as c:
            made = c.post("/v1/services", json=body)
            if made.status_code not in (200, 201):
                raise RuntimeError(f"deploy {body['name']}: {made.status_code} {made.text}")
            key = c.post(f"/v1/services/{body['name']}/keys", json={"name": "bench"})
            return str(key.json()["key"])

    def status(self, name: str) -> dict[str, Any]:
        with self.http() as c:
            out: dict[str, Any] = c.get(f"/v1/services/{name}").json()
            return out

    def ready(self, name: str, count: int, timeout_s: float = 120.0) -> dict[str, Any]:
        seen: dict[str, Any] = {}

        def check() -> bool:
            seen.update(self.status(name))
            return sum(1 for r in seen["replicas"] if r["phase"] == "ready") == count and len(seen["replicas"]) == count

        wait(check, f"{count} ready replicas of {name}", timeout_s)
        return seen

    def delete(self, name: str) -> None:
        with self.http() as c:
            c.delete(f"/v1/services/{name}")
            wait(lambda: c.get(f"/v1/services/{name}").status_code == 404, f"{name} gone", 120)

    def path(self, name: str, route: str) -> str:
        return f"/v1/services/{self.tenant}/{name}{route}"


def service(name: str, replicas: int, lo: int, hi: int, server_args: str, **serving: Any) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "inference",
        "replicas": replicas,
        "devices_per_worker": 0.25,
        "cpus_per_worker": 0.25,
        "memory_gib_per_worker": 0.25,
        "models": ["H100"],
        "priority": "production-inference",
        "entrypoint": f"{sys.executable} {SERVER} --port 0 {server_args}",
        "runtime_env": {"working_dir": str(ROOT)},
        "slo": {"p99_latency_ms": serving.pop("slo_ms", 1000)},
        "serving": {"min_replicas": lo, "max_replicas": hi, **serving},
    }


@dataclass
class LocustRun:
    log: Path
    started: float
    proc: subprocess.Popen[bytes]

    def records(self) -> list[tuple[float, float, int, int]]:
        out = []
        for line in self.log.read_text().splitlines():
            t, ms, status, failed = line.split(",")
            out.append((float(t), float(ms), int(status), int(failed)))
        return out

    def wait(self, timeout_s: float) -> None:
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(30)


def start_locust(
    tmp: Path, host: str, path: str, body: str, stages: list[tuple[float, int]], key: str | None, pace_s: float | None
) -> LocustRun:
    log = tmp / f"locust-{time.monotonic_ns()}.csv"
    log.write_text("")
    plan = {"host": host, "path": path, "body": body, "stages": stages, "key": key, "pace_s": pace_s, "log": str(log)}
    env = {**os.environ, "ZHISUAN_SERVING_LOCUST": json.dumps(plan)}
    args = [sys.executable, "-m", "locust", "-f", __file__, "--headless", "--only-summary", "--loglevel", "ERROR"]
    proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=(tmp / "locust.err").open("ab"))
    return LocustRun(log, time.time(), proc)


def summary(records: list[tuple[float, float, int, int]]) -> dict[str, Any]:
    ok = [ms for _, ms, status, failed in records if status == 200 and not failed]
    span = (records[-1][0] - records[0][0]) if len(records) > 1 else 0.0
    return {
        "requests": len(records),
        "ok": len(ok),
        "failed": sum(1 for _, _, status, failed in records if failed or status >= 500 or status == 0),
        "refused_429": sum(1 for _, _, status, _ in records if status == 429),
        "rps": round(len(records) / span, 1) if span else None,
        "p50_ms": round(pct(ok, 0.5) or 0, 3),
        "p99_ms": round(pct(ok, 0.99) or 0, 3),
    }


# ------------------------------------------------------------------------------------------------ phases


def overhead(b: Bench, seconds: float) -> dict[str, Any]:
    key = b.deploy(service("bench-echo", 1, 1, 1, "--token-ms 0 --prefill-ms 0", max_ongoing_requests=64))
    status = b.ready("bench-echo", 1)
    url = status["replicas"][0]["url"]
    direct = start_locust(b.tmp, url, "/predict", PREDICT, [(seconds, 1)], None, None)
    direct.wait(seconds + 60)
    routed = start_locust(b.tmp, b.router, b.path("bench-echo", "/predict"), PREDICT, [(seconds, 1)], key, None)
    routed.wait(seconds + 60)
    d, r = summary(direct.records()), summary(routed.records())
    return {
        "direct": d,
        "router": r,
        "added_p50_ms": round(r["p50_ms"] - d["p50_ms"], 3),
        "added_p99_ms": round(r["p99_ms"] - d["p99_ms"], 3),
        "target_added_p50_ms": 2.0,
        "key": key,
    }


def throughput(b: Bench, key: str, seconds: float, users: int) -> dict[str, Any]:
    with b.http() as c:
        body = service("bench-echo", 2, 2, 2, "--token-ms 0 --prefill-ms 0", max_ongoing_requests=64)
        c.post("/v1/services", json=body)
    b.ready("bench-echo", 2)
    router = psutil.Process(b.router_pid)
    router.cpu_percent(None)
    run = start_locust(b.tmp, b.router, b.path("bench-echo", "/predict"), PREDICT, [(seconds, users)], key, None)
    run.wait(seconds + 60)
    cpu = router.cpu_percent(None)
    out = summary(run.records())
    out["users"] = users
    out["router_cpu_percent"] = round(cpu, 1)
    b.delete("bench-echo")
    return out


def replicas_timeline(b: Bench, name: str, stop: threading.Event, into: list[tuple[float, int, int]]) -> None:
    while not stop.is_set():
        with contextlib.suppress(Exception):
            s = b.status(name)
            into.append((time.time(), int(s["ready"]), int(s["desired"] or 0)))
        stop.wait(1.0)


def ramp(
    b: Bench, base_users: int, pace_s: float, slo_ms: float, stage_s: tuple[float, float, float]
) -> dict[str, Any]:
    name = "bench-chat"
    key = b.deploy(
        service(
            name,
            2,
            1,
            8,
            "--token-ms 15 --slots 2",
            slo_ms=slo_ms,
            target_ongoing_requests=2,
            max_ongoing_requests=8,
            upscale_delay_s=2,
            downscale_delay_s=15,
        )
    )
    b.ready(name, 2)  # the count 1x load needs: the run starts steady
    one, three, back = stage_s
    stages = [(one, base_users), (one + three, 3 * base_users), (one + three + back, base_users)]
    stop = threading.Event()
    timeline: list[tuple[float, int, int]] = []
    watcher = threading.Thread(target=replicas_timeline, args=(b, name, stop, timeline), daemon=True)
    watcher.start()
    run = start_locust(b.tmp, b.router, b.path(name, "/v1/completions"), COMPLETION, stages, key, pace_s)
    run.wait(sum(stage_s) + 90)
    stop.set()
    watcher.join(5)
    records = run.records()
    t0 = run.started
    step_up = t0 + one
    per_second: dict[int, list[float]] = {}
    for t, ms, status, failed in records:
        if status == 200 and not failed:
            per_second.setdefault(int(t - t0), []).append(ms)
    p99s = {s: pct(v, 0.99) or 0.0 for s, v in sorted(per_second.items())}
    # The scale-up window: from the step to 3x until every following second's p99 is within the SLO.
    late = [s for s, p in p99s.items() if p > slo_ms and s >= int(one)]
    window_end = (max(late) + 1) if late else int(one)
    # The first seconds are locust's own start (connections, users spawning): left out of the figures.
    warm = t0 + WARMUP_S
    outside = [
        ms
        for t, ms, status, failed in records
        if status == 200 and not failed and t >= warm and not (step_up <= t < t0 + window_end)
    ]
    before = next((r for t, r, _ in timeline if t >= step_up), 0)
    grown = next((t for t, r, d in timeline if t >= step_up and r > before and r == d), None)
    peak = max((r for _, r, _ in timeline), default=0)
    after = [r for t, r, _ in timeline if t > t0 + one + three + back - 5]
    return {
        "stages_s": list(stage_s),
        "users": [base_users, 3 * base_users, base_users],
        "pace_s": pace_s,
        "slo_p99_ms": slo_ms,
        "all": summary(records),
        "scale_up_window_s": round(window_end - one, 1),
        "scale_out_s": round(grown - step_up, 1) if grown is not None else None,
        "warmup_s": WARMUP_S,
        "p99_outside_window_ms": round(pct(outside, 0.99) or 0, 1),
        "p99_within_slo_outside_window": (pct(outside, 0.99) or 0) <= slo_ms,
        "replicas_peak": peak,
        "replicas_start": timeline[0][1] if timeline else None,
        "replicas_end": after[-1] if after else None,
        "replicas_per_10s": [r for i, (_, r, _) in enumerate(timeline) if i % 10 == 0],
        "p99_ms_per_5s": [
            round(max(p99s.get(s, 0.0) for s in range(i, i + 5)), 1) for i in range(0, max(p99s, default=0) + 1, 5)
        ],
        "key": key,
    }


def update_and_kill(b: Bench, key: str, base_users: int, pace_s: float, seconds: float) -> dict[str, Any]:
    name = "bench-chat"
    body = service(
        name,
        2,
        2,
        2,
        "--token-ms 15 --slots 2",
        target_ongoing_requests=2,
        max_ongoing_requests=8,
    )
    with b.http() as c:
        c.post("/v1/services", json=body)
    b.ready(name, 2)
    run = start_locust(
        b.tmp, b.router, b.path(name, "/v1/completions"), COMPLETION, [(seconds, base_users)], key, pace_s
    )
    time.sleep(3)
    update_at = time.time()
    with b.http() as c:
        rolled = c.post("/v1/services", json={**body, "cpus_per_worker": 0.3}).json()

    def on_new_revision() -> bool:
        replicas = b.status(name)["replicas"]
        return len(replicas) == 2 and all(
            r["phase"] == "ready" and r["revision"] == rolled["revision"] for r in replicas
        )

    wait(on_new_revision, "the rolling update", 120)
    updated_at = time.time()
    time.sleep(2)
    victim = b.status(name)["replicas"][0]
    pid = httpx.get(victim["url"] + "/info", timeout=5).json()["pid"]
    kill_at = time.time()
    os.kill(pid, signal.SIGKILL)

    def noticed() -> bool:
        mine = [r for r in b.status(name)["replicas"] if r["job_id"] == victim["job_id"]]
        return not mine or mine[0]["phase"] != "ready" or mine[0]["attempt"] != victim["attempt"]

    wait(noticed, "the kill noticed", 60, 0.1)

    def back() -> bool:
        replicas = b.status(name)["replicas"]
        return len(replicas) == 2 and all(r["phase"] == "ready" for r in replicas)

    wait(back, "the replacement", 120)
    replaced_at = time.time()
    run.wait(seconds + 90)
    records = run.records()
    during_update = [r for r in records if update_at <= r[0] <= updated_at + 1]
    during_kill = [r for r in records if kill_at <= r[0] <= replaced_at + 1]
    b.delete(name)
    return {
        "update": {**summary(during_update), "took_s": round(updated_at - update_at, 1)},
        "kill": {**summary(during_kill), "replaced_in_s": round(replaced_at - kill_at, 1)},
        "all": summary(records),
    }


# ------------------------------------------------------------------------------------------------ the stack


def cluster_file(path: Path) -> Path:
    document = {
        "name": "serving-bench",
        "sites": {"local": {"region": "dev", "tier": "cloud"}},
        "nodes": [
            {"id": f"bench-h100-{c}", "model": "H100", "site": "local", "devices": 4, "cpu_cores": 4, "memory_gib": 4}
            for c in "ab"
        ],
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


@contextlib.contextmanager
def stack(tmp: Path) -> Iterator[Bench]:
    settings = Settings(
        database_url=f"sqlite:///{tmp / 'zhisuan.db'}", rate_per_s=0.0, rate_burst=0.0, heartbeat_interval_s=2.0
    )
    with running(
        settings,
        cluster_file=cluster_file(tmp / "cluster.yaml"),
        port=free_port(),
        scheduler=False,
        agent_interval_s=2.0,
    ) as run:
        assert run.admin_token is not None and run.ray_address is not None
        token = developer_login(run.url, run.admin_token, tenant="acme", user="bench")
        engine = make_engine(settings.database_url)
        executor = RayExecutor(run.ray_address, log_dir=str(tmp / "logs"))
        controller = ServeController(SqlServing(engine), ServeConfig(every_s=0.25))
        service_ = SchedulerService(
            SqlServiceStore(engine, heartbeat_interval_s=2.0),
            executor,
            ServiceConfig(holder="serving-bench", interval_s=0.1),
            core=SchedulerCore(CoreConfig(queueing=QueueingConfig(min_runtime_s=0.0))),
            serving=controller,
        )
        stop = threading.Event()
        scheduler = threading.Thread(target=service_.run, args=(stop,), daemon=True)
        scheduler.start()
        app = create_app(settings)
        api_port = free_port()
        api = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=api_port, log_level="warning"))
        api_thread = threading.Thread(target=api.run, daemon=True)
        api_thread.start()
        wait(lambda: api.started, "the services API", 30)
        router_port = free_port()
        env = {**os.environ, "ZHISUAN_DATABASE_URL": settings.database_url}
        with (tmp / "router.log").open("ab") as out:
            router = subprocess.Popen(
                [ZHISUAN, "services", "router", "--port", str(router_port)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        router_url = f"http://127.0.0.1:{router_port}"

        def router_up() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{router_url}/healthz", timeout=1).status_code == 200
            return False

        wait(router_up, "the router", 30)
        try:
            yield Bench(tmp, f"http://127.0.0.1:{api_port}", router_url, router.pid, token, "acme")
        finally:
            router.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                router.wait(20)
            stop.set()
            scheduler.join(15)
            service_.release_lock()
            controller.close()
            executor.close()
            api.should_exit = True
            api_thread.join(15)
            engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short phases (a smoke run)")
    parser.add_argument("--users", type=int, default=32, help="locust users of the throughput phase")
    parser.add_argument("--base-users", type=int, default=6, help="users at 1x load (each paced)")
    parser.add_argument("--pace-s", type=float, default=0.25, help="seconds between one user's requests")
    parser.add_argument("--slo-ms", type=float, default=400.0)
    parser.add_argument("--phases", default="overhead,throughput,ramp,update", help="comma-separated")
    args = parser.parse_args(argv)
    quick = args.quick
    seconds = 8.0 if quick else 20.0
    stage_s = (20.0, 45.0, 45.0) if quick else (45.0, 90.0, 90.0)
    began = time.time()
    with tempfile.TemporaryDirectory(prefix="zhisuan-serving-bench-") as tmp, stack(Path(tmp)) as b:
        figures: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}}
        phases = set(args.phases.split(","))
        if phases & {"overhead", "throughput"}:
            figures["overhead"] = overhead(b, seconds)
            key = figures["overhead"].pop("key")
            if "throughput" in phases:
                figures["throughput"] = throughput(b, key, seconds, args.users)
        if phases & {"ramp", "update"}:
            figures["ramp"] = ramp(b, args.base_users, args.pace_s, args.slo_ms, stage_s)
            ramp_key = figures["ramp"].pop("key")
            if "update" in phases:
                figures["update_and_kill"] = update_and_kill(
                    b, ramp_key, args.base_users, args.pace_s, 40.0 if quick else 60.0
                )
        figures["seconds"] = round(time.time() - began, 1)
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
