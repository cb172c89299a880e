"""The live control plane at center scale (issue 18), end to end on PostgreSQL and Redis; prints JSON.

On a fresh PostgreSQL database (created on ``--postgres-url``'s server, dropped afterwards) it starts the API as
``--workers`` processes on one port (``python -m api.app --workers N``, rate limits in Redis), then:

1. **agents** — ``--nodes`` emulated node agents (8 devices each, ``benchmarks/agents_load.py``, one asyncio
   process) register at once (a thundering herd the API admits with 429 + Retry-After) and heartbeat. Figures
   for the window after the last registration: heartbeat latency, heartbeats per second, the API's CPU per 1,000
   nodes, and every few seconds the number of agent nodes whose lease had run out while their agent was alive
   (false downs: expected 0). ``--restart-api-at S`` kills every API process S seconds in and starts them again.
2. **scheduler** — with the agents still running: ``--jobs`` pending jobs written straight into the table (the
   tenant mix of the center, spread over the fleet's six models), then the real scheduler service on the SQL
   store with :class:`~scheduler.live.executors.instant.InstantExecutor` (launches accepted at once, runs of 2-10
   minutes). Figures: the first cycle (adopting and reading everything), then over a steady window of
   ``--scheduler-duration`` seconds cycle times with work to do and idle, the estimated-start slices and how often
   a whole pass was stored, submit → decided (a decision committed for a job submitted through the API); then a
   database failover (every connection to the database terminated for ``--outage`` seconds): how long the
   service took to be back (leader, a whole cycle done), the lease term before and after, submit → decided while
   it recovered, and whether any (job, attempt) was launched twice.
3. **mixed** — the agents and the scheduler stopped: locust's mixed tenant profile (``benchmarks/locustfile.py``,
   ``Tenant``) through the API processes for ``--mixed-duration`` seconds; requests/s, p50/p99, errors, whether
   every accepted job is stored; with ``--flood`` one more client floods ``GET /v1/jobs`` with one token.
4. **cycle** (alone: ``--phases cycle``) — the scheduler service by itself on the in-memory store: its cost per
   cycle at ``--nodes`` and ``--jobs`` before the machine is shared with the API, the database and the agents.

Each phase reports the CPU seconds of the API processes, PostgreSQL, Redis, the load generators and of the whole
machine (what else ran beside it: other people's tests share these two cores).

    .venv/bin/python benchmarks/scale.py                                   # everything, full size (~20 min)
    .venv/bin/python benchmarks/scale.py --nodes 1000 --jobs 10000 --agents-duration 60 --scheduler-duration 60
    .venv/bin/python benchmarks/scale.py --phases mixed --workers 2 --mixed-duration 60 --flood
    .venv/bin/python benchmarks/scale.py --phases cycle --nodes 10000 --jobs 100000   # the service alone, in memory
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from benchmarks.api_load import (  # noqa: E402
    create_postgres_database,
    drop_postgres_database,
    free_port,
    read_stats,
    wait_ready,
)

MODELS = ("H100", "A100", "H20", "Ascend910B", "MLU590", "P800")
TENANTS = {"acme": 3, "gov-bureau": 2, "sme-vision": 2, "univ-a": 2, "student-1": 1}
POLICY = """\
# SYNTHETIC: the example tenants with quotas sized for a 10,000-node center (benchmarks/scale.py).
tenants:
  gov-bureau: {type: government, tier: premium, weight: 2, domestic: required}
  acme: {type: enterprise, tier: premium, weight: 2}
  sme-vision: {type: sme, tier: standard}
  univ-a: {type: university, tier: basic}
  student-1: {type: individual, tier: basic, weight: 0.5}
queues:
  gov-bureau: {tenant: gov-bureau, quota: {ncu: {deserved: 20000}}}
  acme: {tenant: acme, quota: {ncu: {deserved: 30000}}}
  sme-vision: {tenant: sme-vision, quota: {ncu: {deserved: 15000}}}
  univ-a: {tenant: univ-a, quota: {ncu: {deserved: 15000}}}
  student-1: {tenant: student-1, quota: {ncu: {deserved: 2000}}}
prices:
  currency: CNY
  per_ncu_hour: {basic: 0.0, standard: 12.0, premium: 18.0}
"""


# ------------------------------------------------------------------------------------------------ CPU


class Cpu:
    """CPU seconds of the processes of each part, between two calls of :meth:`sample`."""

    def __init__(self) -> None:
        self.parts: dict[str, list[int]] = {}

    def add(self, name: str, pid: int) -> None:
        self.parts.setdefault(name, []).append(pid)

    def _seconds(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, pids in self.parts.items():
            out[name] = sum(_tree_cpu(pid) for pid in pids)
        out["scale_py"] = sum(psutil.Process().cpu_times()[:2])
        for name, proc_names in (("postgresql", ("postgres", "postmaster")), ("redis", ("redis-server",))):
            total = 0.0
            for proc in psutil.process_iter(["name", "ppid"]):
                if proc.info["name"] in proc_names:
                    with contextlib.suppress(psutil.Error):
                        times = proc.cpu_times()
                        total += times.user + times.system
                        with contextlib.suppress(psutil.Error):
                            if psutil.Process(proc.info["ppid"]).name() not in proc_names:
                                # The postmaster: the CPU of its backends that exited meanwhile is counted here.
                                total += times.children_user + times.children_system
            out[name] = total
        machine = psutil.cpu_times()
        out["machine"] = (
            machine.user + machine.system + getattr(machine, "nice", 0.0) + getattr(machine, "softirq", 0.0)
        )
        return out

    def sample(self) -> dict[str, float]:
        return self._seconds()

    @staticmethod
    def delta(before: dict[str, float], after: dict[str, float], wall: float) -> dict[str, Any]:
        # A part started after ``before`` (locust) counts from zero.
        used: dict[str, Any] = {k: round(v - before.get(k, 0.0), 1) for k, v in after.items()}
        ours = sum(v for k, v in used.items() if k != "machine")
        used["other_on_machine"] = round(max(0.0, used["machine"] - ours), 1)
        used["wall"] = round(wall, 1)
        used["cores_busy"] = round(used["machine"] / wall, 2) if wall else None
        return used


def _tree_cpu(pid: int) -> float:
    """CPU of a process, its live descendants, and the descendants it reaped."""
    total = 0.0
    with contextlib.suppress(psutil.Error):
        proc = psutil.Process(pid)
        times = proc.cpu_times()
        total += times.user + times.system + times.children_user + times.children_system
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += sum(child.cpu_times()[:2])
    return total


# ------------------------------------------------------------------------------------------------ API


class Api:
    """The API as ``--workers`` processes on one port, on ``database_url``."""

    def __init__(
        self, database_url: str, tmp: Path, workers: int, redis_url: str | None, rate_limit: str, heartbeat_rate: float
    ) -> None:
        self.database_url, self.tmp, self.workers = database_url, tmp, workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token_file = tmp / "admin-token"
        self.env = {
            **os.environ,
            "ZHISUAN_DATABASE_URL": database_url,
            "ZHISUAN_ADMIN_TOKEN_FILE": str(self.token_file),
            "ZHISUAN_POLICY_FILE": str(tmp / "policy.yaml"),
            # The example cluster's nodes too, so that every model the locust profile asks for exists.
            "ZHISUAN_CLUSTER_FILE": str(ROOT / "seeds" / "clusters" / "example.yaml"),
            "ZHISUAN_RATE_LIMIT": rate_limit,
            "ZHISUAN_HEARTBEAT_RATE": str(heartbeat_rate),
            "PYTHONPATH": str(ROOT),
        }
        if redis_url:
            self.env["ZHISUAN_REDIS_URL"] = redis_url
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [sys.executable, "-m", "api.app", "--port", str(self.port), "--workers", str(self.workers)]
        self.process = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=sys.stderr, stderr=sys.stderr)
        wait_ready(self.url, self.process, timeout_s=120)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        """Every API process at once, as a crash or a redeploy would."""
        if self.process is not None:
            for child in psutil.Process(self.process.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    child.kill()
            self.process.kill()
            self.process.wait()

    @property
    def admin(self) -> str:
        return self.token_file.read_text().strip()

    def call(self, method: str, path: str, token: str, body: Any = None) -> Any:
        for _ in range(30):
            r = httpx.request(
                method, self.url + path, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=30
            )
            if r.status_code != 429:
                r.raise_for_status()
                return r.json()
            time.sleep(float(r.headers.get("Retry-After", "1")))
        raise RuntimeError(f"{method} {path}: still rate limited")


# ------------------------------------------------------------------------------------------------ jobs


def job_spec(rng: random.Random, tenant: str, n: int) -> dict[str, Any]:
    """A pending job of the center's mix, on the fleet's models (gangs of up to 4 × 8 devices)."""
    devices = rng.choice([1, 1, 2, 4, 8, 8])
    workers = rng.choice([1, 1, 1, 2, 4]) if devices == 8 else 1
    models = ["Ascend910B"] if tenant == "gov-bureau" else rng.choice([["H100"], ["A100", "H20"], [], ["P800"]])
    spec: dict[str, Any] = {
        "name": f"{tenant}-{n}",
        "kind": "training",
        "workers": workers,
        "devices_per_worker": devices,
        "job_class": rng.choice(["llm-finetune", "llm-pretrain", "cv-train", "generic"]),
        "queue": tenant,
        "cpus_per_worker": 8 * devices,
        "memory_gib_per_worker": 64 * devices,
        "entrypoint": "python train.py",
        "walltime_s": rng.choice([1800, 3600, 4 * 3600]),
    }
    if models:
        spec["models"] = models
    if tenant == "gov-bureau":
        spec["domestic"] = "required"
    return spec


def insert_jobs(database_url: str, count: int, seed: int = 1) -> float:
    """Write ``count`` pending jobs straight into ``jobs`` (as the API's group commit would); seconds taken."""
    from api.db import make_engine, write_engine
    from api.tables import JOBS, new_job_id
    from scheduler.spec import JobSpec

    rng = random.Random(seed)
    weighted = [t for t, w in TENANTS.items() for _ in range(w)]
    engine = make_engine(database_url)
    started = time.monotonic()
    try:
        rows: list[dict[str, Any]] = []
        now = time.time()
        for n in range(count):
            tenant = weighted[n % len(weighted)]
            spec = JobSpec.model_validate(job_spec(rng, tenant, n))
            rows.append(
                {
                    "id": new_job_id(now + n * 1e-4),
                    "tenant": tenant,
                    "user": f"bench@{tenant}",
                    "queue": tenant,
                    "name": spec.name,
                    "kind": spec.kind.value,
                    "state": "pending",
                    "version": 0,
                    "priority": int(spec.priority),
                    "spec": spec.model_dump(mode="json"),
                    "submitted_at": now,
                    "updated_at": now,
                    "attempt": 0,
                    "reasons": [],
                    "message": "",
                }
            )
        with write_engine(engine).begin() as conn:
            for start in range(0, len(rows), 5000):
                conn.execute(JOBS.insert(), rows[start : start + 5000])
    finally:
        engine.dispose()
    return time.monotonic() - started


# ------------------------------------------------------------------------------------------------ phases


def count_lapsed(database_url: str) -> tuple[int, int]:
    """(agent nodes whose lease ran out, agent nodes)."""
    from sqlalchemy import func, select

    from api.db import make_engine
    from api.tables import NODES

    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            now = time.time()
            lapsed = conn.execute(
                select(func.count()).where(NODES.c.source == "agent", NODES.c.lease_expires_at < now)
            ).scalar_one()
            total = conn.execute(select(func.count()).where(NODES.c.source == "agent")).scalar_one()
        return int(lapsed), int(total)
    finally:
        engine.dispose()


class Agents:
    """``benchmarks/agents_load.py`` as a subprocess."""

    def __init__(self, api: Api, token: str, nodes: int, duration: float, tmp: Path, connections: int) -> None:
        self.out = tmp / "agents.json"
        command = [
            sys.executable,
            str(HERE / "agents_load.py"),
            "--url",
            api.url,
            "--token",
            token,
            "--nodes",
            str(nodes),
            "-t",
            str(duration),
            "--mixed-models",
            "--connections",
            str(connections),
            "--out",
            str(self.out),
        ]
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=sys.stderr)

    def result(self, timeout: float) -> dict[str, Any]:
        self.process.wait(timeout=timeout)
        data: dict[str, Any] = json.loads(self.out.read_text())
        return data


def watch_downs(database_url: str, stop: threading.Event, every_s: float, seen: list[tuple[float, int, int]]) -> None:
    while not stop.wait(every_s):
        with contextlib.suppress(Exception):
            lapsed, total = count_lapsed(database_url)
            seen.append((time.time(), lapsed, total))


def phase_agents(args: argparse.Namespace, api: Api, cpu: Cpu, node_token: str, tmp: Path) -> tuple[Agents, Any]:
    """Start the agents; return them (still running into the scheduler phase) and the agents-window report."""
    # Long enough for the herd (up to --agents-duration), the window and the scheduler phase; stopped after them.
    total = 2 * args.agents_duration + (args.scheduler_duration + 300 if "scheduler" in args.phases else 0)
    agents = Agents(api, node_token, args.nodes, total, tmp, args.connections)
    cpu.add("agents_load", agents.process.pid)
    started = time.time()
    # The herd: wait until every node is registered (or the agents window ends).
    while time.time() - started < args.agents_duration:
        _, registered = count_lapsed(api.database_url)
        if registered >= args.nodes:
            break
        time.sleep(2)
    herd_s = time.time() - started
    before = cpu.sample()
    window_start = time.time()
    downs: list[tuple[float, int, int]] = []
    stop = threading.Event()
    watcher = threading.Thread(target=watch_downs, args=(api.database_url, stop, 5.0, downs), daemon=True)
    watcher.start()
    restarted: dict[str, Any] | None = None
    deadline = window_start + args.agents_duration  # the whole window after the herd
    if args.restart_api_at and time.time() < window_start + args.restart_api_at:
        time.sleep(max(0.0, window_start + args.restart_api_at - time.time()))
        t0 = time.time()
        api.kill()
        api.start()
        cpu.parts["api"] = [api.process.pid] if api.process else []
        restarted = {"at_s": round(t0 - started, 1), "back_after_s": round(time.time() - t0, 1)}
    time.sleep(max(0.0, deadline - time.time()))
    after = cpu.sample()
    stop.set()
    watcher.join()
    wall = time.time() - window_start
    used = Cpu.delta(before, after, wall)
    report = {
        "nodes": args.nodes,
        "devices": args.nodes * 8,
        "registration_herd_s": round(herd_s, 1),
        "steady_window_s": round(wall, 1),
        "cpu_seconds": used,
        "api_cpu_per_1000_nodes_pct_of_core": round(100 * used["api"] / wall / (args.nodes / 1000), 2)
        if wall
        else None,
        "lease_checks": len(downs),
        "lapsed_leases_max": max((d[1] for d in downs), default=None),
        "restart": restarted,
    }
    return agents, report


class TimedStore:
    """Wraps the SQL service store: when each job first got a committed decision, when estimates were stored."""

    def __init__(self, store: Any, decided: dict[str, float], eta_stored: list[float]) -> None:
        self._store, self._decided, self._eta_stored = store, decided, eta_stored
        #: Every read of the change feed: (when, job ids, node ids, resync).
        self.feed: list[tuple[float, int, int, bool]] = []

    def changes(self, cursor: Any) -> Any:
        found = self._store.changes(cursor)
        self.feed.append((time.time(), len(found.jobs), len(found.nodes), found.resync))
        return found

    def set_estimated_starts(self, starts: Any) -> None:
        self._eta_stored.append(time.time())
        self._store.set_estimated_starts(starts)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def commit_step(self, fence: Any, now: float, decisions: Any, versions: Any, reasons: Any) -> Any:
        outcome = self._store.commit_step(fence, now, decisions, versions, reasons)
        t = time.time()
        for decision in decisions:
            self._decided.setdefault(decision.job_id, t)
        return outcome


def phase_scheduler(args: argparse.Namespace, api: Api, cpu: Cpu) -> dict[str, Any]:
    from api.db import make_engine
    from api.service_store import SqlServiceStore
    from scheduler.live.executors.instant import InstantExecutor
    from scheduler.live.service import SchedulerService, ServiceConfig

    inserted_s = insert_jobs(api.database_url, args.jobs)
    engine = make_engine(api.database_url, pool_size=4)
    decided: dict[str, float] = {}
    eta_stored: list[float] = []
    store = TimedStore(SqlServiceStore(engine), decided, eta_stored)
    rng = random.Random(7)
    executor = InstantExecutor(runtime=lambda request: rng.uniform(120, 600))
    service = SchedulerService(store, executor, ServiceConfig(holder="scale-bench"))
    cycles: list[tuple[float, float, Any, int | None]] = []
    #: The scheduler thread's own CPU seconds per cycle (what a cycle costs, whatever else the cores ran).
    cycle_cpu: list[tuple[float, float, bool, bool]] = []
    original = service.cycle

    def timed() -> Any:
        start, cpu_start = time.perf_counter(), time.thread_time()
        report = original()
        cycles.append((time.time(), time.perf_counter() - start, report, service.term))
        cycle_cpu.append((time.time(), time.thread_time() - cpu_start, _busy(report), report.planned_eta))
        return report

    service.cycle = timed  # type: ignore[method-assign]
    # Where the time of a cycle goes: the policy core's step is O(pending) by design; the estimated-start pass is
    # too, but planned a slice per cycle (``ServiceConfig.eta_slice_s``): each cycle's slice is timed, and when
    # each whole pass was stored (how fresh the estimates a tenant sees are).
    parts: dict[str, list[float]] = {"core_step": [], "eta_slice": []}

    def timing(name: str, function: Any) -> Any:
        def timed_part(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                parts[name].append(time.perf_counter() - start)

        return timed_part

    service.core.step = timing("core_step", service.core.step)  # type: ignore[method-assign]
    service._refresh_eta = timing("eta_slice", service._refresh_eta)  # type: ignore[method-assign]
    stop = threading.Event()
    thread = threading.Thread(target=service.run, args=(stop,), name="scheduler", daemon=True)
    before = cpu.sample()
    t0 = time.time()
    thread.start()
    # Submissions through the API, a few per second, timed to their first committed decision.
    submitted: dict[str, float] = {}
    probe_errors: collections.Counter[str] = collections.Counter()
    users = api.call("POST", "/v1/users", api.admin, {"name": "probe", "tenant": "acme", "role": "tenant-user"})
    token = api.call("POST", "/v1/tokens", api.admin, {"user": users["id"], "name": "probe"})["token"]
    failover: dict[str, Any] = {}
    probe_rng = random.Random(3)
    recovered_at: float | None = None
    with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {token}"}, timeout=10) as client:
        n = 0

        def probe() -> None:
            nonlocal n
            spec = job_spec(probe_rng, "acme", 10_000_000 + n)
            sent = time.time()
            try:
                r = client.post("/v1/jobs", json=spec)
            except httpx.HTTPError as err:  # counted, not fatal: the failover makes some
                probe_errors[type(err).__name__] += 1
            else:
                if r.status_code == 201:
                    submitted[r.json()["id"]] = sent
                else:
                    probe_errors[f"HTTP {r.status_code}"] += 1
            n += 1
            time.sleep(1.0 / args.probe_rate)

        # The steady window starts when the cold start (reading and deciding everything once) is over.
        while not cycles and time.time() - t0 < 600:
            probe()
        steady_from = time.time()
        while time.time() - steady_from < args.scheduler_duration:
            probe()
        steady_until = time.time()
        # Then the failover, and the service's way back: leader again, with a whole cycle behind it.
        failover = fail_over(api.database_url, args.outage)
        back = failover["at"] + failover["outage_s"]
        while time.time() - back < args.recovery:
            probe()
            if any(c[0] > back and c[2].leader for c in cycles):
                recovered_at = time.time()
                break
        time.sleep(5)
    stop.set()
    thread.join(timeout=600)  # the cycle in progress finishes: nothing of it may overlap the next phase
    after = cpu.sample()
    wall = time.time() - t0
    engine.dispose()
    first = cycles[0] if cycles else None
    rest = [c for c in cycles[1:] if steady_from <= c[0] <= steady_until]
    busy = [c[1] for c in rest if _busy(c[2])]
    # Idle: nothing changed and no slice of the estimated-start pass was due (a slice is ``eta_slice_s`` of work).
    idle = [c[1] for c in rest if not _busy(c[2]) and not c[2].planned_eta]
    eta_only = [c[1] for c in rest if not _busy(c[2]) and c[2].planned_eta]
    steady_cpu = [c for c in cycle_cpu[1:] if steady_from <= c[0] <= steady_until]
    steady_eta = [t for t in eta_stored if steady_from <= t <= steady_until]
    eta_gaps = [b - a for a, b in itertools.pairwise(steady_eta)]
    latency = [decided[j] - t for j, t in submitted.items() if j in decided and steady_from <= t <= steady_until]
    during_failover = [decided[j] - t for j, t in submitted.items() if j in decided and t > steady_until]
    launched = collections.Counter(executor.launched)
    if failover:
        at = failover["at"]
        before_f = [c for c in cycles if c[0] < at and c[2].leader]
        after_f = [c for c in cycles if c[0] > at + failover["outage_s"] and c[2].leader]
        failover.update(
            {
                "recovered_after_s": round(recovered_at - at, 2) if recovered_at else None,
                "submit_to_decided_while_recovering": _ms_summary(during_failover),
                "leader_again_after_s": round(after_f[0][0] - at, 2) if after_f else None,
                "term_before": before_f[-1][3] if before_f else None,
                "term_after": after_f[0][3] if after_f else None,
            }
        )
        failover.pop("at")
    return {
        "jobs_inserted": args.jobs,
        "insert_s": round(inserted_s, 1),
        "first_cycle_s": round(first[1], 2) if first else None,
        "first_cycle": _describe(first[2]) if first else None,
        "cycles": len(cycles),
        "steady_window_s": round(steady_until - steady_from, 1),
        # Every cycle: (seconds since the service started, wall s, stepped, starts, pending).
        "cycle_timeline": [
            (round(c[0] - t0, 1), round(c[1], 3), c[2].stepped, len(c[2].started), c[2].pending) for c in cycles
        ],
        "feed_timeline": [(round(t - t0, 1), jobs, nodes, resync) for t, jobs, nodes, resync in store.feed],
        "probe_latency_timeline": sorted(
            (round(t - t0, 1), round(decided[j] - t, 1) if j in decided else None) for j, t in submitted.items()
        ),
        "steady_cycles": len(rest),
        "cycle_with_work": _ms_summary(busy),
        "cycle_with_work_cpu": _ms_summary([c[1] for c in steady_cpu if c[2]]),
        "cycle_idle_cpu": _ms_summary([c[1] for c in steady_cpu if not c[2] and not c[3]]),
        "core_step": _ms_summary(parts["core_step"][1:]),
        "eta_slice": _ms_summary(parts["eta_slice"][1:]),
        "eta_passes_stored": len(eta_stored),
        "eta_pass_every_s": {
            "median": round(statistics.median(eta_gaps), 1) if eta_gaps else None,
            "max": round(max(eta_gaps), 1) if eta_gaps else None,
        },
        "cycle_idle": _ms_summary(idle),
        "cycle_eta_slice_only": _ms_summary(eta_only),
        "started_total": sum(len(c[2].started) for c in cycles),
        "finished_total": sum(len(c[2].finished) for c in cycles),
        "pending_at_end": cycles[-1][2].pending if cycles else None,
        "submit_to_decided": {
            **_ms_summary(latency),
            "submitted": len(submitted),
            "decided": len(latency),
            "refused_or_failed": dict(probe_errors),
        },
        "failover": failover,
        "launched": len(executor.launched),
        "double_launches": sum(1 for count in launched.values() if count > 1),
        "cpu_seconds": Cpu.delta(before, after, wall),
    }


def _busy(report: Any) -> bool:
    return bool(report.stepped or report.started or report.finished or report.requeued or report.cancelled)


def _describe(report: Any) -> dict[str, Any]:
    return {"started": len(report.started), "pending": report.pending, "stepped": report.stepped}


def _ms_summary(values: list[float]) -> dict[str, Any]:
    ordered = sorted(values)

    def q(p: float) -> float | None:
        return round(1000 * ordered[min(len(ordered) - 1, int(p * len(ordered)))], 1) if ordered else None

    return {"count": len(ordered), "p50_ms": q(0.5), "p99_ms": q(0.99), "max_ms": q(1.0)}


def fail_over(database_url: str, outage_s: float) -> dict[str, Any]:
    """What clients see of a failover: the database refuses connections for ``outage_s`` and every open one is
    cut, then it is back (only the benchmark's own database: the server is shared)."""
    import psycopg

    name = database_url.rsplit("/", 1)[-1]
    server = database_url.rsplit("/", 1)[0] + "/postgres"
    server = server.replace("postgresql+psycopg://", "postgresql://")
    at = time.time()
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        try:
            killed = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s AND pid <> "
                "pg_backend_pid()",
                (name,),
            ).fetchone()
            time.sleep(outage_s)
        finally:
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    return {"at": at, "outage_s": outage_s, "connections_terminated": killed[0] if killed else 0}


def phase_mixed(args: argparse.Namespace, api: Api, cpu: Cpu, tmp: Path) -> dict[str, Any]:
    tokens_file = tmp / "tokens.json"
    subprocess.run(
        [sys.executable, str(HERE / "locustfile.py"), api.url, str(api.token_file), str(tokens_file)],
        cwd=ROOT,
        env=api.env,
        check=True,
    )
    from sqlalchemy import func, select

    from api.db import make_engine
    from api.tables import JOBS

    engine = make_engine(api.database_url)
    with engine.connect() as conn:
        keyed_before = conn.execute(select(func.count()).where(JOBS.c.idempotency_key.is_not(None))).scalar_one()
    prefix = tmp / "locust"
    master = str(free_port())
    command = [
        str(Path(sys.executable).with_name("locust")),
        "-f",
        str(HERE / "locustfile.py"),
        "--headless",
        "--only-summary",
        "-u",
        str(args.users),
        "-r",
        str(args.users),
        "-t",
        f"{args.mixed_duration}s",
        "--stop-timeout",
        "30",
        "--host",
        api.url,
        "--json-file",
        str(prefix),
        "--loglevel",
        "WARNING",
        "--processes",
        str(args.locust_processes),
        "--master-bind-port",
        master,
        "--master-port",
        master,
        "Tenant",
    ]
    env = {
        **api.env,
        "ZHISUAN_BENCH_TOKENS": str(tokens_file),
        "ZHISUAN_BENCH_PROCESSES": str(args.locust_processes),
    }
    flood: dict[str, Any] = {}
    flood_stop = threading.Event()
    flood_thread = None
    if args.flood:
        user = api.call("POST", "/v1/users", api.admin, {"name": "flood", "tenant": "univ-a", "role": "tenant-user"})
        flood_token = api.call("POST", "/v1/tokens", api.admin, {"user": user["id"], "name": "flood"})["token"]
        flood_thread = threading.Thread(target=_flood, args=(api.url, flood_token, flood_stop, flood), daemon=True)
    before = cpu.sample()
    reaped = _children_cpu()
    t0 = time.time()
    locust = subprocess.Popen(command, cwd=ROOT, env=env, stdout=sys.stderr, stderr=sys.stderr)
    if flood_thread is not None:
        flood_thread.start()
    exit_code = locust.wait(timeout=args.mixed_duration + 180)
    flood_stop.set()
    if flood_thread is not None:
        flood_thread.join()
    after = cpu.sample()
    # locust has exited: its CPU (and its worker processes') is in this process's reaped children.
    after["locust"] = _children_cpu() - reaped
    wall = time.time() - t0
    stats, _ = read_stats(Path(f"{prefix}.json"))
    entries = json.loads(Path(f"{prefix}.json").read_text())
    total = _all_requests(entries)
    with engine.connect() as conn:
        keyed = conn.execute(select(func.count()).where(JOBS.c.idempotency_key.is_not(None))).scalar_one()
    engine.dispose()
    submits_ok = stats.get("submit", {}).get("ok", 0)
    return {
        "workers": args.workers,
        "users": args.users,
        "locust_processes": args.locust_processes,
        "duration_s": args.mixed_duration,
        "locust_exit_code": exit_code,
        "requests_per_s": total,
        "errors": sum(e["failures"] for e in stats.values()),
        "requests": stats,
        "every_accepted_job_stored": keyed - keyed_before == submits_ok,
        "stored_with_keys": keyed - keyed_before,
        "submissions_ok": submits_ok,
        "flood": flood or None,
        "cpu_seconds": Cpu.delta(before, after, wall),
    }


def _all_requests(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Requests per second of every request type together (whole seconds, the partial first and last left out),
    and the p50/p99 over all of them."""
    from benchmarks.api_load import percentile

    per_second: dict[int, int] = collections.Counter()
    times: dict[str, int] = collections.Counter()
    for entry in entries:
        for t, n in entry["num_reqs_per_sec"].items():
            per_second[int(t)] += n
        for ms, n in entry["response_times"].items():
            times[ms] += n
    if len(per_second) < 3:
        return {"seconds": 0}
    first, last = min(per_second), max(per_second)
    rates = [per_second.get(t, 0) for t in range(first + 1, last)]
    return {
        "mean_per_s": round(sum(rates) / len(rates), 1),
        "min_1s": min(rates),
        "p50_ms": percentile(times, 0.5),
        "p99_ms": percentile(times, 0.99),
    }


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _flood(url: str, token: str, stop: threading.Event, out: dict[str, Any]) -> None:
    """One token asking for its job list as fast as four connections allow."""
    counts: collections.Counter[int] = collections.Counter()

    def hammer() -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10) as client:
            while not stop.is_set():
                try:
                    counts[client.get("/v1/jobs?limit=20").status_code] += 1
                except httpx.HTTPError:
                    counts[0] += 1

    threads = [threading.Thread(target=hammer, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.update({"statuses": {str(k): v for k, v in sorted(counts.items())}})


# ------------------------------------------------------------------------------------------------ main


def phase_cycle(args: argparse.Namespace) -> dict[str, Any]:
    """The service's own cost per cycle, alone in this process: the same service code on the in-memory store, no
    API, no database, no agents (what a cycle costs before the machine is shared). ``--nodes`` nodes of the
    fleet's models, ``--jobs`` pending jobs of the tenant mix, then ``--cycles`` cycles 0.2 s apart with five
    submissions every fifth cycle, run as :meth:`SchedulerService.run` runs them (what survived a cycle frozen)."""
    import yaml

    from scheduler.live.executors.instant import InstantExecutor
    from scheduler.live.heap import LongLivedHeap
    from scheduler.live.memory_store import MemoryStore
    from scheduler.live.service import SchedulerService, ServiceConfig
    from scheduler.model import Node
    from scheduler.spec import JobSpec

    store = MemoryStore()
    store.set_policy(yaml.safe_load(POLICY))
    for i in range(args.nodes):
        model = MODELS[i % len(MODELS)]
        store.put_node(Node(id=f"n{i:05d}", model=model, devices=8, cpu_milli=128_000, memory_mib=1024 * 1024))
    rng = random.Random(1)
    weighted = [t for t, w in TENANTS.items() for _ in range(w)]

    def submit(job_id: str, n: int) -> None:
        tenant = weighted[n % len(weighted)]
        spec = JobSpec.model_validate(job_spec(rng, tenant, n))
        store.submit(job_id, spec, tenant=tenant, user=f"bench@{tenant}", now=time.time())

    for n in range(args.jobs):
        submit(f"j{n:07d}", n)
    runtimes = random.Random(7)
    executor = InstantExecutor(runtime=lambda request: runtimes.uniform(120, 600))
    service = SchedulerService(store, executor, ServiceConfig(holder="cycle-bench"))
    parts: dict[str, list[float]] = collections.defaultdict(list)
    for name in ("_reconcile", "_persist", "_refresh_eta", "_copy_logs"):
        original = getattr(service, name)

        def timed_part(*a: Any, _name: str = name, _original: Any = original, **k: Any) -> Any:
            start = time.perf_counter()
            try:
                return _original(*a, **k)
            finally:
                parts[_name.lstrip("_")].append(time.perf_counter() - start)

        setattr(service, name, timed_part)
    step = service.core.step

    def timed_step(*a: Any, **k: Any) -> Any:
        start = time.perf_counter()
        try:
            return step(*a, **k)
        finally:
            parts["core_step"].append(time.perf_counter() - start)

    service.core.step = timed_step  # type: ignore[method-assign]
    heap = LongLivedHeap()
    start = time.perf_counter()
    service.cycle()
    first = time.perf_counter() - start
    heap.after_cycle()
    parts.clear()
    busy: list[float] = []
    idle: list[float] = []
    for k in range(args.cycles):
        if k % 5 == 0:
            for m in range(5):
                submit(f"p{k}-{m}", m)
        start = time.perf_counter()
        report = service.cycle()
        (busy if _busy(report) else idle).append(time.perf_counter() - start)
        heap.after_cycle()
        time.sleep(0.2)
    return {
        "nodes": args.nodes,
        "jobs": args.jobs,
        "first_cycle_s": round(first, 2),
        "cycle_with_work": _ms_summary(busy),
        "cycle_without_step": _ms_summary(idle),
        **{name: _ms_summary(values) for name, values in sorted(parts.items())},
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.phases == {"cycle"}:
        return {"cpus": os.cpu_count(), "cycle": phase_cycle(args)}
    tmp = Path(tempfile.mkdtemp(prefix="zhisuan-scale-"))
    (tmp / "policy.yaml").write_text(POLICY)
    database_url = create_postgres_database(args.postgres_url)
    result: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "workers": args.workers,
        "heartbeat_rate": args.heartbeat_rate,
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "beside": _beside(),
    }
    cpu = Cpu()
    api = Api(database_url, tmp, args.workers, args.redis_url, args.rate_limit, args.heartbeat_rate)
    agents: Agents | None = None
    try:
        api.start()
        assert api.process is not None
        cpu.add("api", api.process.pid)
        node_token = api.call("POST", "/v1/nodes/tokens", api.admin, {"name": "scale"})["token"]
        if "agents" in args.phases:
            agents, result["agents"] = phase_agents(args, api, cpu, node_token, tmp)
        if "scheduler" in args.phases:
            try:
                result["scheduler"] = phase_scheduler(args, api, cpu)
            except Exception as err:  # keep what the other phases measured
                result["scheduler"] = {"error": f"{type(err).__name__}: {err}"}
        if agents is not None:
            agents.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(Exception):
                agents.process.wait(timeout=60)
            with contextlib.suppress(Exception):
                result.setdefault("agents", {})["load_generator"] = json.loads(agents.out.read_text())
        if "mixed" in args.phases:
            try:
                result["mixed"] = phase_mixed(args, api, cpu, tmp)
            except Exception as err:
                result["mixed"] = {"error": f"{type(err).__name__}: {err}"}
    finally:
        if agents is not None and agents.process.poll() is None:
            agents.process.kill()
        api.stop()
        drop_postgres_database(args.postgres_url, database_url)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return result


def _beside() -> list[str]:
    """The busiest other processes on the machine right now (what the measurement shares the cores with)."""
    procs = []
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            proc.cpu_percent(None)
            procs.append(proc)
    time.sleep(1.0)
    busy = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            share = proc.cpu_percent(None)
            if share >= 5 and proc.pid != os.getpid():
                busy.append((share, " ".join(proc.info["cmdline"] or [proc.info["name"] or ""])[:100]))
    return [f"{share:.0f}% {cmd}" for share, cmd in sorted(busy, reverse=True)[:8]]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("ZHISUAN_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    parser.add_argument("--redis-url", default=os.environ.get("ZHISUAN_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--phases", default="agents,scheduler,mixed", help="or: cycle (the service alone, in memory)")
    parser.add_argument("--cycles", type=int, default=30, help="cycles of the cycle phase")
    parser.add_argument("--workers", type=int, default=2, help="API processes")
    parser.add_argument("--rate-limit", default="50/s burst 200")
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=256, help="agent requests in flight at most")
    parser.add_argument(
        "--heartbeat-rate",
        type=float,
        default=200.0,
        help="ZHISUAN_HEARTBEAT_RATE of the API: heartbeats/s it plans for (10,000 nodes at 200/s: every 50 s)",
    )
    parser.add_argument("--agents-duration", type=float, default=600.0)
    parser.add_argument("--restart-api-at", type=float, default=0.0, help="kill and restart the API at S seconds")
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--scheduler-duration", type=float, default=180.0)
    parser.add_argument("--probe-rate", type=float, default=5.0, help="submissions per second timed to decided")
    parser.add_argument("--outage", type=float, default=5.0, help="seconds the database is away in the failover")
    parser.add_argument("--recovery", type=float, default=300.0, help="seconds the service may take to come back")
    parser.add_argument("--mixed-duration", type=int, default=60)
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument("--locust-processes", type=int, default=2)
    parser.add_argument("--flood", action="store_true")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    args.phases = set(args.phases.split(","))
    # Started in the background, a process ignores SIGINT: let SIGTERM stop it cleanly (databases dropped).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    text = json.dumps(run(args), indent=2, default=str)
    if args.out is not None:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
