"""What the end-to-end tests share: the deployment's settings, the service runner process, and polling helpers.

The deployment is the product as ``zhisuan up`` runs it (:func:`api.up.running`): a real local Ray cluster
(head + the three emulated nodes of ``cluster.yaml``), the API on uvicorn over a SQLite file, one emulated node
agent per node, and the scheduler service. Tests talk to it only as tenants do, through the SDK over HTTP.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from api.client import ZhisuanClient
from api.models import JobOut
from api.up import Running
from scheduler.core import CoreConfig, QueueingConfig
from scheduler.live.service import ServiceConfig

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CLUSTER_FILE = HERE / "cluster.yaml"
POLICY_FILE = HERE / "policy.yaml"
PROBE = HERE / "probe.py"
RUNNER = HERE / "service_runner.py"
H100_NODES = ("e2e-h100-a", "e2e-h100-b")
NPU_NODE = "e2e-npu-a"

#: Preemption may stop a job at once (the product default waits 10 minutes of runtime first).
CORE_CONFIG = CoreConfig(queueing=QueueingConfig(min_runtime_s=0.0))
LEASE_S = 3.0


#: The agents' heartbeat interval in every e2e deployment (the API's setting and the service store's alike).
HEARTBEAT_INTERVAL_S = 2.0


def service_config(holder: str | None = None) -> ServiceConfig:
    """The service's knobs in every e2e deployment (in-process and runner processes alike): fast cycles, a
    3 s leader lease, one retry after 0.5 s."""
    extra: dict[str, Any] = {"holder": holder} if holder else {}
    return ServiceConfig(
        interval_s=0.1,
        lease_s=LEASE_S,
        max_retries=1,
        retry_backoff_s=0.5,
        logs_every_s=0.3,
        eta_every_s=5.0,
        **extra,
    )


@dataclass
class Deployment:
    run: Running
    tmp: Path
    log_dir: Path
    admin: ZhisuanClient
    acme: ZhisuanClient
    other: ZhisuanClient
    runners: list[ServiceProcess] = field(default_factory=list)

    @property
    def database_url(self) -> str:
        return self.run.settings.database_url


# ------------------------------------------------------------------------------------------------ specs


def probe_cmd(
    record: Path | None = None, sleep: float = 0.0, exit_rank: int = -1, code: int = 0, fail_after: float = 0.0
) -> str:
    cmd = f"{sys.executable} {PROBE} --sleep {sleep}"
    if record is not None:
        cmd += f" --record {record}"
    if exit_rank >= 0:
        cmd += f" --exit-rank {exit_rank} --code {code} --fail-after {fail_after}"
    return cmd


def spec(name: str, entrypoint: str, **fields: Any) -> dict[str, Any]:
    """A job spec sized for the e2e nodes (2 CPUs, 2 GiB each): half a CPU and 256 MiB per worker."""
    out: dict[str, Any] = {
        "name": name,
        "entrypoint": entrypoint,
        "cpus_per_worker": 0.5,
        "memory_gib_per_worker": 0.25,
        "models": ["H100"],
    }
    out.update(fields)
    return out


# ------------------------------------------------------------------------------------------------ polling


def wait_for(
    client: ZhisuanClient,
    job_id: str,
    check: Callable[[JobOut], bool],
    what: str,
    timeout_s: float = 60.0,
    poll_s: float = 0.1,
) -> JobOut:
    """Poll the job through the API until ``check`` holds; on timeout the error shows the job and its events."""
    deadline = time.monotonic() + timeout_s
    job = client.get_job(job_id)
    while not check(job):
        if time.monotonic() > deadline:
            events = "\n".join(f"  {e.kind}: {e.message[:300]}" for e in client.events(job_id))
            raise AssertionError(
                f"job {job.name} ({job_id}) did not become {what} in {timeout_s} s: state {job.state}, "
                f"attempt {job.attempt}, message {job.message!r}\nevents:\n{events}"
            )
        time.sleep(poll_s)
        job = client.get_job(job_id)
    return job


def wait_state(
    client: ZhisuanClient, job_id: str, *states: str, attempt: int | None = None, timeout_s: float = 60.0
) -> JobOut:
    def ok(job: JobOut) -> bool:
        return job.state in states and (attempt is None or job.attempt == attempt)

    label = "/".join(states) + ("" if attempt is None else f" (attempt {attempt})")
    return wait_for(client, job_id, ok, label, timeout_s)


def wait_until(check: Callable[[], bool], what: str, timeout_s: float = 30.0, poll_s: float = 0.1) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(poll_s)


def event_kinds(client: ZhisuanClient, job_id: str) -> list[str]:
    return [e.kind for e in client.events(job_id)]


def full_log(client: ZhisuanClient, job_id: str, rank: int = 0) -> tuple[int, str]:
    """(attempt, text) of a worker's whole log as the API serves it (the job's current attempt)."""
    offset, parts, attempt = 0, [], 0
    while True:
        chunk = client.logs(job_id, rank=rank, offset=offset)
        attempt = chunk.attempt
        parts.append(chunk.text)
        if not chunk.text or chunk.next_offset <= offset:
            return attempt, "".join(parts)
        offset = chunk.next_offset


def wait_log(
    client: ZhisuanClient, job_id: str, needle: str, rank: int = 0, attempt: int | None = None, timeout_s: float = 30.0
) -> str:
    found: list[str] = []

    def check() -> bool:
        got_attempt, text = full_log(client, job_id, rank)
        found[:] = [text]
        return needle in text and (attempt is None or got_attempt == attempt)

    try:
        wait_until(check, f"{needle!r} in the log of {job_id} rank {rank}", timeout_s, poll_s=0.25)
    except AssertionError as err:
        raise AssertionError(f"{err}; log so far:\n{found[0] if found else ''}") from None
    return found[0]


def probe_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[len("PROBE ") :]) for line in text.splitlines() if line.startswith("PROBE ")]


# ------------------------------------------------------------------------------------------------ records


def read_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def runs_of(records: Iterable[dict[str, Any]]) -> dict[tuple[str, int, int], dict[str, float | None]]:
    """(job, attempt, rank) -> {"start": t, "end": t|None}; raises if any (job, attempt, rank) started twice."""
    runs: dict[tuple[str, int, int], dict[str, float | None]] = {}
    for rec in records:
        key = (rec["job"], rec["attempt"], rec["rank"])
        if rec["event"] == "start":
            assert key not in runs, f"{key} ran twice"
            runs[key] = {"start": rec["t"], "end": None}
        elif rec["event"] == "end":
            assert key in runs, f"{key} ended without starting"
            assert runs[key]["end"] is None, f"{key} ended twice"
            runs[key]["end"] = rec["t"]
    return runs


def wait_started(record: Path, job_id: str, attempt: int, ranks: int, timeout_s: float = 30.0) -> None:
    """Wait until every rank of an attempt has recorded its start: the executor says "running" once the
    processes are spawned, a moment before the probe has written its first line."""

    def started() -> bool:
        got = {
            r["rank"]
            for r in read_records(record)
            if r["event"] == "start" and (r["job"], r["attempt"]) == (job_id, attempt)
        }
        return got == set(range(ranks))

    wait_until(started, f"{ranks} ranks of {job_id} attempt {attempt} to start", timeout_s)


def assert_attempts_never_overlap(records: list[dict[str, Any]]) -> None:
    """Every worker of an attempt ended before any worker of the job's next attempt started."""
    runs = runs_of(records)
    by_job: dict[str, dict[int, list[dict[str, float | None]]]] = {}
    for (job, attempt, _rank), run in runs.items():
        by_job.setdefault(job, {}).setdefault(attempt, []).append(run)
    for job, attempts in by_job.items():
        ordered = sorted(attempts)
        for before, after in itertools.pairwise(ordered):
            ends = [r["end"] for r in attempts[before]]
            assert all(e is not None for e in ends), f"{job} attempt {before} never ended but {after} started"
            first_start = min(r["start"] for r in attempts[after] if r["start"] is not None)
            assert max(e for e in ends if e is not None) <= first_start, (
                f"{job}: attempt {before} was still running when attempt {after} started"
            )


# ------------------------------------------------------------------------------------------------ runner


class ServiceProcess:
    """A scheduler service in its own process (``service_runner.py``), which tests can ``kill -9``."""

    def __init__(self, deployment: Deployment, holder: str, *extra: str) -> None:
        self.holder = holder
        self.out = deployment.tmp / f"service-{holder}.log"
        args = [
            sys.executable,
            str(RUNNER),
            "--database-url",
            deployment.database_url,
            "--ray-address",
            str(deployment.run.ray_address),
            "--holder",
            holder,
            "--log-dir",
            str(deployment.log_dir),
            *extra,
        ]
        with open(self.out, "ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
        deployment.runners.append(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def lines(self) -> list[dict[str, Any]]:
        """The JSON lines the runner printed (one per cycle that did something, plus ``frozen`` markers)."""
        out = []
        for line in self.out.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):
                    out.append(json.loads(line))
        return out

    def text(self) -> str:
        return self.out.read_text(errors="replace")

    def kill9(self) -> None:
        if self.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self, timeout_s: float = 20.0) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill9()
