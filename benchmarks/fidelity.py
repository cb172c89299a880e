"""Live vs simulated (issue 20): one job mix through the real product, then the same arrivals and runtimes replayed
in the simulator with the same core, policy and cluster; prints one JSON document.

The live half is what ``zhisuan up`` starts (:func:`api.up.running`): a local Ray cluster of three emulated 4×H100
nodes, the API on SQLite, one node agent per node, the scheduler service. Tenants submit through the SDK at the
mix's arrival times; every job's events (``started``: the start decision, ``running``, ``preempted``) and its end
are read back through the API, and every pending job's ``estimated_start`` is polled as a tenant would see it.

The mix (:func:`job_mix`) is a window of the public Philly trace shipped in ``tests/fixtures/traces/philly``: its
arrival gaps, GPU counts and virtual clusters (three tenants with quotas), durations and gaps compressed so that
the run lasts minutes at the chosen offered load (each job runs ``sleep D``); one job in eight becomes a
fractional inference service (two 0.5-device replicas at production-inference priority, which preempts training:
SYNTHETIC, Philly has no services). Users over-estimate: each job's walltime (the core's runtime estimate) is
1.5 × its runtime + 5 s.

The replay (:func:`replay`) runs the same jobs on the same nodes under the same policy and ``CoreConfig`` with the
simulator on the live service's clock (``SimConfig.step_period_s`` = the service's cycle, a step at least every
``step_every_s``) and the launch latency measured on the live run (``SimConfig.launch_latency_s``).

    .venv/bin/python benchmarks/fidelity.py                # 300 jobs, about 8 minutes
    .venv/bin/python benchmarks/fidelity.py --jobs 40      # the integration test's size
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import math
import os
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from api.client import ZhisuanClient  # noqa: E402
from api.settings import Settings  # noqa: E402
from api.up import developer_login, running  # noqa: E402
from scheduler.cluster import load_cluster  # noqa: E402
from scheduler.core import CoreConfig, QueueingConfig, SchedulerCore  # noqa: E402
from scheduler.eta import DEFAULT_BAND  # noqa: E402
from scheduler.live.service import ServiceConfig  # noqa: E402
from scheduler.model import JobKind, PriorityClass  # noqa: E402
from scheduler.placement import PlacementConfig  # noqa: E402
from scheduler.tenancy import load_policy  # noqa: E402
from simulations.loaders.base import parse_timestamp  # noqa: E402
from simulations.metrics import EtaScore  # noqa: E402
from simulations.schema import TraceJob  # noqa: E402
from simulations.timeline import SimConfig, TimelineSimulation  # noqa: E402

PHILLY = ROOT / "tests" / "fixtures" / "traces" / "philly" / "philly.csv.gz"
TENANTS = ("alpha", "beta", "gamma")
NODE_DEVICES, NODES = 4, 3
#: The core both halves run: preemption after 3 s of runtime (the product waits 10 minutes), FGD placement.
CORE = CoreConfig(placement=PlacementConfig(scorer="fgd"), queueing=QueueingConfig(min_runtime_s=3.0))


@dataclass(frozen=True)
class MixJob:
    """One job of the mix: when it is submitted (seconds after the first) and what it asks for."""

    name: str
    offset: float
    duration: float
    workers: int
    devices_per_worker: float
    tenant: str
    kind: str = "training"
    priority: str = "training"

    @property
    def walltime(self) -> float:
        return round(1.5 * self.duration + 5.0, 1)

    def spec(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "priority": self.priority,
            "workers": self.workers,
            "devices_per_worker": self.devices_per_worker,
            "models": ["H100"],
            "cpus_per_worker": 0.1,
            "memory_gib_per_worker": 0.1,
            "walltime_s": self.walltime,
            "entrypoint": f"sleep {self.duration:g}",
        }


def job_mix(
    count: int, load: float = 1.1, start: int = 61_000, median_s: float = 3.0, max_s: float = 20.0
) -> list[MixJob]:
    """``count`` consecutive Philly jobs from row ``start`` (jobs of at most 8 GPUs): durations mapped to seconds
    as ``median_s × sqrt(d / median d)`` clipped to [1.5 s, ``max_s``] (the order and spread of the trace, in
    minutes of wall time), GPU counts kept (8 GPUs: 2 workers × 4), arrival gaps scaled so that the offered load
    is ``load`` of the cluster's devices, the window's three busiest VCs as tenants (any other to the last)."""
    rows: list[tuple[float, float, int, str]] = []
    with gzip.open(PHILLY, "rt", newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            submit = parse_timestamp(row["timestamp"], "timestamp")
            rows.append((submit, float(row["duration"]), int(row["num_gpus"]), row["cluster"]))
    rows.sort(key=lambda r: r[0])
    window = [r for r in rows[start:] if 0 < r[2] <= NODE_DEVICES * 2][:count]
    trace_median = statistics.median(r[1] for r in window)
    counts: dict[str, int] = defaultdict(int)
    for r in window:
        counts[r[3]] += 1
    busiest = sorted(counts, key=lambda vc: (-counts[vc], vc))
    tenant_of = {vc: TENANTS[min(i, len(TENANTS) - 1)] for i, vc in enumerate(busiest)}
    shaped = []
    for i, (submit, duration, gpus, vc) in enumerate(window):
        seconds = round(min(max(median_s * math.sqrt(duration / trace_median), 1.5), max_s), 1)
        if i % 8 == 7:
            shaped.append((submit, seconds, 2, 0.5, vc, "inference"))
        else:
            workers, per_worker = (2, 4.0) if gpus == 8 else (1, float(gpus))
            shaped.append((submit, seconds, workers, per_worker, vc, "training"))
    work = sum(seconds * workers * per for _, seconds, workers, per, _, _ in shaped)
    origin, last = window[0][0], window[-1][0]
    gap_scale = work / (NODES * NODE_DEVICES * load) / max(last - origin, 1.0)
    jobs = []
    for i, (submit, seconds, workers, per, vc, kind) in enumerate(shaped):
        offset = round((submit - origin) * gap_scale, 2)
        if kind == "inference":
            jobs.append(
                MixJob(f"svc-{i:04d}", offset, seconds, workers, per, tenant_of[vc], kind, "production-inference")
            )
        else:
            jobs.append(MixJob(f"job-{i:04d}", offset, seconds, workers, per, tenant_of[vc]))
    return jobs


def write_cluster(path: Path) -> Path:
    nodes = [
        {
            "id": f"fid-h100-{i}",
            "model": "H100",
            "site": "local",
            "devices": NODE_DEVICES,
            "cpu_cores": 4,
            "memory_gib": 4,
            "island": f"nvl-{i}",
        }
        for i in range(NODES)
    ]
    document = {"name": "fidelity", "sites": {"local": {"region": "dev", "tier": "cloud"}}, "nodes": nodes}
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def write_policy(path: Path) -> Path:
    document = {
        "tenants": {"alpha": {"weight": 2}, "beta": {"weight": 1}, "gamma": {"weight": 1}},
        "queues": {
            "alpha": {"tenant": "alpha", "quota": {"H100": {"deserved": 6, "limit": 12}}},
            "beta": {"tenant": "beta", "quota": {"H100": {"deserved": 4, "limit": 10}}},
            "gamma": {"tenant": "gamma", "quota": {"H100": {"deserved": 2, "limit": 8}}},
        },
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


# ---------------------------------------------------------------------------------------------- live


@dataclass
class LiveJob:
    name: str
    id: str
    submitted: float
    starts: list[float] = field(default_factory=list)
    running: list[float] = field(default_factory=list)
    preemptions: int = 0
    end: float | None = None
    state: str = ""


@dataclass
class LiveRun:
    t0: float
    jobs: dict[str, LiveJob]
    forecasts: dict[str, list[tuple[float, float | None]]]
    wall_s: float
    interval_s: float
    #: ``GET /v1/jobs/{id}/eta`` answers for pending jobs: (asked at, estimated start, band start, band end).
    bands: list[tuple[float, float | None, float | None, float | None]] = field(default_factory=list)


def note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def live_run(mix: Sequence[MixJob], tmp: Path, interval_s: float, eta_every_s: float, timeout_s: float) -> LiveRun:
    """Submit ``mix`` through the API at its arrival times; read back every job's history."""
    cluster, policy = write_cluster(tmp / "cluster.yaml"), write_policy(tmp / "policy.yaml")
    settings = Settings(
        database_url=f"sqlite:///{tmp / 'zhisuan.db'}",
        rate_per_s=0.0,
        rate_burst=0.0,
        heartbeat_interval_s=2.0,
        policy_file=policy,
    )
    service = ServiceConfig(interval_s=interval_s, eta_every_s=eta_every_s, logs_every_s=5.0)
    began = time.perf_counter()
    with running(
        settings,
        cluster_file=cluster,
        port=free_port(),
        service_config=service,
        core_config=CORE,
        agent_interval_s=1.0,
        log_dir=str(tmp / "logs"),
    ) as run:
        assert run.admin_token is not None
        admin = ZhisuanClient(run.url, run.admin_token)
        deadline = time.monotonic() + 120
        while sum(1 for n in admin.nodes() if n.state == "ready" and n.source == "agent") < NODES:
            if time.monotonic() > deadline:
                raise RuntimeError("the emulated nodes did not come up")
            time.sleep(0.5)
        time.sleep(3 * interval_s + 1.0)  # the service has added every node to its state
        note(f"{NODES} nodes up after {time.perf_counter() - began:.0f} s; submitting {len(mix)} jobs")
        clients = {
            t: ZhisuanClient(run.url, developer_login(run.url, run.admin_token, tenant=t, user="u")) for t in TENANTS
        }
        jobs: dict[str, LiveJob] = {}
        forecasts: dict[str, list[tuple[float, float | None]]] = defaultdict(list)
        bands: list[tuple[float, float | None, float | None, float | None]] = []
        done = threading.Event()
        t0 = time.time() + 1.0

        def submit_all() -> None:
            for job in mix:
                pause = t0 + job.offset - time.time()
                if pause > 0:
                    time.sleep(pause)
                out = clients[job.tenant].submit(job.spec())
                jobs[job.name] = LiveJob(job.name, out.id, out.submitted_at)

        def poll_estimates() -> None:
            # What tenants see: every pending job's estimated start, as often as the service refreshes it.
            while not done.wait(eta_every_s / 2):
                now = time.time()
                waiting = list(admin.list_jobs(state="pending"))
                for item in waiting:
                    forecasts[item.name].append((now, item.estimated_start))
                if waiting:
                    # What `zhisuan eta` shows for one of them.
                    eta = admin.eta(waiting[-1].id)
                    bands.append((now, eta.estimated_start, eta.start_earliest, eta.start_latest))

        submitter = threading.Thread(target=submit_all, name="submitter", daemon=True)
        poller = threading.Thread(target=poll_estimates, name="eta-poller", daemon=True)
        submitter.start()
        poller.start()
        submitter.join()
        deadline = time.monotonic() + timeout_s
        while True:
            left = [j for j in admin.list_jobs() if not j.terminal]
            if not left or time.monotonic() > deadline:
                break
            states = {s: sum(j.state == s for j in left) for s in {j.state for j in left}}
            note(f"{time.time() - t0:.0f} s: {len(left)} not finished {states}")
            if len(left) <= 3:
                for j in left:
                    note(f"  {j.name} {j.state}: {'; '.join(r.message for r in j.reasons)[:300]}")
            time.sleep(5.0)
        done.set()
        poller.join()
        for job in jobs.values():
            out = admin.get_job(job.id)
            job.end, job.state = out.finished_at, out.state
            for event in admin.events(job.id):
                if event.kind == "started":
                    job.starts.append(event.at)
                elif event.kind == "running":
                    job.running.append(event.at)
                elif event.kind == "preempted":
                    job.preemptions += 1
    return LiveRun(t0, jobs, dict(forecasts), time.perf_counter() - began, interval_s, bands)


def save_live(live: LiveRun, path: Path) -> None:
    data = asdict(live)
    path.write_text(json.dumps(data))


def load_live(path: Path) -> LiveRun:
    data = json.loads(path.read_text())
    jobs = {name: LiveJob(**job) for name, job in data["jobs"].items()}
    forecasts = {name: [(at, start) for at, start in samples] for name, samples in data["forecasts"].items()}
    bands = [tuple(b) for b in data.get("bands", [])]
    return LiveRun(data["t0"], jobs, forecasts, data["wall_s"], data["interval_s"], bands)


# ---------------------------------------------------------------------------------------------- replay


def launch_latency(mix: Sequence[MixJob], live: LiveRun) -> dict[str, float]:
    """From jobs that ran once: decision -> running event, and the whole overhead of a run over its sleep."""
    by_name = {j.name: j for j in mix}
    launch, overhead = [], []
    for job in live.jobs.values():
        if len(job.starts) == 1 and job.running and job.end is not None:
            launch.append(job.running[0] - job.starts[0])
            overhead.append(job.end - job.starts[0] - by_name[job.name].duration)
    return {
        "decision_to_running_mean_s": statistics.mean(launch),
        "decision_to_running_p50_s": statistics.median(launch),
        "run_overhead_mean_s": statistics.mean(overhead),
        "run_overhead_p50_s": statistics.median(overhead),
        "jobs": len(launch),
    }


def replay(
    mix: Sequence[MixJob],
    live: LiveRun,
    tmp: Path,
    latency_s: float,
    period_s: float | None = None,
    phase_s: float = 0.0,
) -> dict[str, Any]:
    """The same arrivals (as the API recorded them) and runtimes through the simulator, on the service's clock."""
    catalog_nodes = load_cluster(write_cluster(tmp / "cluster.yaml")).nodes
    policy = load_policy(write_policy(tmp / "policy.yaml"))
    core = SchedulerCore(CORE, policy=policy)
    config = SimConfig(
        step_period_s=live.interval_s if period_s is None else period_s,
        step_every_s=ServiceConfig().step_every_s,
        launch_latency_s=latency_s,
        record_jobs=True,
        max_retries=10,
        eta_every_s=ServiceConfig().eta_every_s,
    )
    # ``phase_s`` shifts the arrivals against the simulator's clock: where the live service's cycles fell is not
    # recorded, so several phases give the spread of equally likely replays.
    origin = min(j.submitted for j in live.jobs.values()) - phase_s
    traces = []
    for job in sorted(mix, key=lambda j: live.jobs[j.name].submitted):
        submitted = live.jobs[job.name].submitted - origin
        traces.append(
            TraceJob(
                id=job.name,
                submit_time=submitted,
                duration_s=job.duration,
                workers=job.workers,
                devices_per_worker=job.devices_per_worker,
                models=("H100",),
                tenant=job.tenant,
                queue=job.tenant,
                user="u",
                kind=JobKind(job.kind),
                priority=PriorityClass[job.priority.upper().replace("-", "_")],
                cpu_milli_per_worker=100,
                memory_mib_per_worker=102,
                estimate_s=job.walltime,
            )
        )
    result = TimelineSimulation(list(catalog_nodes), core, config).run(traces)
    return {"origin": origin, "jobs": {r["id"]: r for r in result.jobs}, "summary": result.summary}


# ---------------------------------------------------------------------------------------------- compare


def _stats(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {}

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]

    return {"mean": statistics.mean(ordered), "p50": pick(0.5), "p90": pick(0.9), "max": ordered[-1]}


def compare(live: LiveRun, sim: dict[str, Any]) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for name, job in live.jobs.items():
        other = sim["jobs"].get(name)
        if not job.starts or job.end is None or other is None or other["end"] is None:
            continue
        rows.append(
            {
                "job": name,
                "live_wait": job.starts[0] - job.submitted,
                "sim_wait": other["start"] - other["submit"],
                "live_jct": job.end - job.submitted,
                "sim_jct": other["end"] - other["submit"],
                "live_preemptions": job.preemptions,
                "sim_preemptions": other["preemptions"],
            }
        )

    def mean(key: str) -> float:
        return statistics.mean(float(r[key]) for r in rows)

    out: dict[str, Any] = {"jobs_compared": len(rows)}
    for what in ("wait", "jct"):
        live_mean, sim_mean = mean(f"live_{what}"), mean(f"sim_{what}")
        out[what] = {
            "live_mean_s": round(live_mean, 3),
            "sim_mean_s": round(sim_mean, 3),
            "deviation_of_mean": round((sim_mean - live_mean) / live_mean, 4) if live_mean else None,
            "per_job_abs_deviation_s": {
                k: round(v, 3) for k, v in _stats([abs(r[f"sim_{what}"] - r[f"live_{what}"]) for r in rows]).items()
            },
        }
    out["preemptions"] = {
        "live": sum(r["live_preemptions"] for r in rows),
        "sim": sum(r["sim_preemptions"] for r in rows),
    }
    out["per_job"] = rows
    return out


def live_eta(live: LiveRun) -> dict[str, Any]:
    """What tenants saw (``estimated_start`` polled from the API) against the real first starts."""
    score = EtaScore(DEFAULT_BAND)
    for name, samples in live.forecasts.items():
        job = live.jobs.get(name)
        if job is None or not job.starts:
            continue
        forecast_yet = False
        for at, start in samples:
            # Until the service's first forecast for a job, the API shows none: that is not a forecast.
            forecast_yet = forecast_yet or start is not None
            if forecast_yet and job.submitted <= at < job.starts[0]:
                score.observe(at, {name: job.submitted}, {name: start})
        score.started(name, job.starts[0])
    return score.summary()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--load", type=float, default=1.1, help="offered load (device-seconds over capacity)")
    parser.add_argument("--start", type=int, default=61_000, help="first Philly row of the window")
    parser.add_argument("--interval", type=float, default=ServiceConfig().interval_s, help="service cycle (s)")
    parser.add_argument("--eta-every", type=float, default=ServiceConfig().eta_every_s)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for the last job")
    parser.add_argument("--latency", type=float, default=None, help="launch latency for the replay (default: measured)")
    parser.add_argument("--out", type=Path, help="also write the whole result (per job) here")
    parser.add_argument("--live-out", type=Path, help="write the live run's records here (for --live-in)")
    parser.add_argument("--live-in", type=Path, help="replay a recorded live run instead of running one")
    parser.add_argument("--period", type=float, default=None, help="the replay's clock (default: the service's)")
    parser.add_argument("--phases", type=int, default=5, help="replays at evenly spread phases of the clock")
    args = parser.parse_args()
    mix = job_mix(args.jobs, args.load, args.start)
    with tempfile.TemporaryDirectory(prefix="zs-fidelity-") as folder:
        tmp = Path(folder)
        if args.live_in is not None:
            live = load_live(args.live_in)
        else:
            live = live_run(mix, tmp, args.interval, args.eta_every, args.timeout)
        if args.live_out is not None:
            save_live(live, args.live_out)
        latency = launch_latency(mix, live)
        # The replay's launch latency: a run's overhead over its sleep, less the half cycle the simulator's clock
        # adds on average before it sees the end.
        chosen = (
            args.latency if args.latency is not None else max(latency["run_overhead_mean_s"] - args.interval / 2, 0)
        )
        period = args.period if args.period is not None else live.interval_s
        phases = [period * k / args.phases for k in range(args.phases)]
        replays = [replay(mix, live, tmp, chosen, period, phase) for phase in phases]
        sim = replays[0]
    result = {
        "benchmark": "live (API + scheduler service + local Ray) vs simulated, same jobs, core and policy",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_1m": os.getloadavg()[0]},
        "mix": {
            "jobs": len(mix),
            "load": args.load,
            "span_s": mix[-1].offset,
            "philly_start_row": args.start,
            "services": sum(j.kind == "inference" for j in mix),
            "gangs": sum(j.workers > 1 and j.kind == "training" for j in mix),
            "device_seconds": round(sum(j.duration * j.workers * j.devices_per_worker for j in mix), 1),
            "devices": NODES * NODE_DEVICES,
        },
        "live_wall_s": round(live.wall_s, 1),
        "live_states": dict(
            sorted(
                {
                    s: sum(j.state == s for j in live.jobs.values()) for s in {j.state for j in live.jobs.values()}
                }.items()
            )
        ),
        "latency": {k: round(v, 3) for k, v in latency.items()},
        "replay_launch_latency_s": round(chosen, 3),
        "service_interval_s": args.interval,
    }
    comparison = compare(live, sim)
    per_job = comparison.pop("per_job")
    result["comparison"] = comparison
    # The simulator's forecast over the unknown cycle phase: the mean of the phases' replays, and their spread.
    ensemble = [compare(live, r) for r in replays]
    for what in ("wait", "jct"):
        means = [e[what]["sim_mean_s"] for e in ensemble]
        live_mean = comparison[what]["live_mean_s"]
        comparison[what]["phases"] = {
            "replays": len(means),
            "sim_mean_s": round(statistics.mean(means), 3),
            "deviation_of_mean": round((statistics.mean(means) - live_mean) / live_mean, 4) if live_mean else None,
            "sim_mean_min_s": round(min(means), 3),
            "sim_mean_max_s": round(max(means), 3),
        }
    result["eta_live"] = live_eta(live)
    result["eta_sim"] = sim["summary"].get("eta")
    result["targets"] = {
        "mean_wait_within_2pct": abs(comparison["wait"]["phases"]["deviation_of_mean"] or 0) <= 0.02,
        "mean_jct_within_2pct": abs(comparison["jct"]["phases"]["deviation_of_mean"] or 0) <= 0.02,
    }
    if args.out is not None:
        args.out.write_text(json.dumps({**result, "per_job": per_job, "mix": [asdict(j) for j in mix]}, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
