"""Load test of the tenant REST API (issue 5): a realistic mix of tenants submitting and watching jobs.

Two user classes (pick one or both on the command line; ``benchmarks/api_load.py`` drives them):

* ``Submitter`` — submissions only (``POST /v1/jobs`` with an ``Idempotency-Key``), the issue's throughput target.
* ``Tenant`` — what tenants and their dashboards do: submit (about half the requests), list their own jobs with
  filters, read a recent job, its events, ``why`` and ``eta``, cancel some pending jobs, retry a submission
  with the same key (answered 200 with the original job), look at queues and usage.

Tenants, as in ``seeds/policy.yaml`` (weights = share of simulated users): acme (enterprise, H100 training and
fractional inference on three queues), gov-bureau (domestic only, Ascend), sme-vision (CV on any model),
univ-a (A100/any), student-1 (one small device). Specs are 1-8-device training workers (gangs of 1-4 workers),
fractional inference replicas (0.25/0.5 device) with latency SLOs, and the job classes of the throughput matrix.

Tokens: ``ZHISUAN_BENCH_TOKENS`` names a JSON file ``{"tenants": {tenant: {"queues": [...], "tokens": [...]}}}``
(``benchmarks/api_load.py`` writes it before locust starts, with ``python benchmarks/locustfile.py HOST ADMIN_TOKEN_FILE
OUT``); without it, every locust process creates its own users and tokens when its first user starts, through the
API with the center admin's token (``ZHISUAN_ADMIN_TOKEN``, or the file named by ``ZHISUAN_ADMIN_TOKEN_FILE``).
Every simulated user takes its own token where there are enough (with ``--processes P``, set
``ZHISUAN_BENCH_PROCESSES=P`` so that the processes take disjoint tokens), so the server's per-token rate limit
(50/s by default) is not what is measured.

Any answer other than the expected status is a failure (locust counts it), with the status and the start of the
problem document as the message::

    locust -f benchmarks/locustfile.py --headless -u 100 -r 100 -t 60s --host http://127.0.0.1:8000 Submitter
"""

from __future__ import annotations

import itertools
import json
import os
import random
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path
from typing import Any

import orjson
from gevent.lock import Semaphore
from locust import FastHttpUser, constant, events, task
from locust.env import Environment
from locust.runners import WorkerRunner

#: tenant -> share of the simulated users
TENANT_WEIGHTS = {"acme": 3, "gov-bureau": 2, "sme-vision": 2, "univ-a": 2, "student-1": 1}
USERS_PER_TENANT = 4
TOKENS_PER_USER = 6
JSON_HEADERS = {"Content-Type": "application/json"}
_tenants: dict[str, dict[str, list[str]]] = {}
_users = itertools.count()
_jobs = itertools.count()
_per_tenant: dict[str, itertools.count[int]] = {}
#: per locust process (set after a ``--processes`` fork): names of its users, prefix of its idempotency keys
_process: dict[str, str] = {}
_provisioning = Semaphore()


# ------------------------------------------------------------------------------------------------ job specs


def _training(rng: random.Random, name: str, queue: str, job_class: str, models: list[str], **extra: Any) -> Any:
    devices = rng.choice([1, 1, 2, 4, 8, 8])
    workers = rng.choice([1, 1, 1, 2, 4]) if devices == 8 else 1
    spec: dict[str, Any] = {
        "name": name,
        "kind": "training",
        "workers": workers,
        "devices_per_worker": devices,
        "job_class": job_class,
        "queue": queue,
        "cpus_per_worker": 8 * devices,
        "memory_gib_per_worker": 64 * devices,
        "entrypoint": f"torchrun --nproc-per-node {devices} train.py --config configs/{name}.yaml",
        "runtime_env": {"working_dir": ".", "env_vars": {"NCCL_DEBUG": "WARN"}, "pip": ["torch>=2.4"]},
        "walltime_s": rng.choice([1800, 3600, 4 * 3600, 24 * 3600]),
        "checkpoint": {"path": f"/ckpt/{queue}/{name}", "interval_s": 600},
        "labels": {"project": name.split("-")[0]},
        **extra,
    }
    if models:
        spec["models"] = models
    if rng.random() < 0.2:
        spec["priority"] = "best-effort"
    return spec


def _inference(rng: random.Random, name: str, queue: str, job_class: str, models: list[str], **extra: Any) -> Any:
    spec: dict[str, Any] = {
        "name": name,
        "kind": "inference",
        "replicas": rng.choice([1, 2, 4]),
        "devices_per_worker": rng.choice([0.25, 0.5, 0.5, 1]),
        "job_class": job_class,
        "queue": queue,
        "cpus_per_worker": 2,
        "memory_gib_per_worker": 16,
        "priority": "production-inference",
        "preemptible": False,
        "entrypoint": "python serve.py --port 0",
        "slo": {"p99_latency_ms": rng.choice([50, 100, 200])},
        **extra,
    }
    if models:
        spec["models"] = models
    return spec


def spec_for(tenant: str, queues: list[str], rng: random.Random, n: int) -> dict[str, Any]:
    """One realistic job spec of ``tenant`` (the name is made unique with ``n``)."""
    roll = rng.random()
    if tenant == "acme":
        if roll < 0.3:
            queue = "acme-serving" if "acme-serving" in queues else queues[0]
            return _inference(rng, f"chat-{n}", queue, "llm-inference", ["H100"])
        queue = "acme-research" if roll < 0.6 and "acme-research" in queues else queues[0]
        return _training(rng, f"llm-ft-{n}", queue, rng.choice(["llm-finetune", "llm-pretrain"]), ["H100"])
    if tenant == "gov-bureau":
        if roll < 0.25:
            return _inference(rng, f"ocr-{n}", queues[0], "cv-inference", ["Ascend310P"], domestic="required")
        return _training(rng, f"gov-llm-{n}", queues[0], "llm-pretrain", ["Ascend910B"], domestic="required")
    if tenant == "sme-vision":
        if roll < 0.4:
            return _inference(rng, f"detect-{n}", queues[0], "cv-inference", rng.choice([[], ["T4"]]))
        return _training(rng, f"yolo-{n}", queues[0], "cv-train", rng.choice([[], ["A100", "H100"]]))
    if tenant == "univ-a":
        job_class = rng.choice(["cv-train", "recsys-train", "generic", "llm-finetune"])
        return _training(rng, f"thesis-{n}", queues[0], job_class, rng.choice([[], ["A100"], ["MLU590", "P800"]]))
    spec = _training(rng, f"homework-{n}", queues[0], "generic", ["T4"])
    return {**spec, "workers": 1, "devices_per_worker": 1, "cpus_per_worker": 4, "memory_gib_per_worker": 16}


# ---------------------------------------------------------------------------------------------- tokens


def _call(host: str, token: str, method: str, path: str, body: Any = None) -> Any:
    request = urllib.request.Request(
        host.rstrip("/") + path,
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    for _ in range(30):
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:
            if err.code != 429:  # the admin token is rate limited too: wait as told
                raise
            time.sleep(float(err.headers.get("Retry-After", "1")))
    raise RuntimeError(f"{method} {path}: still rate limited")


def provision(host: str, admin_token: str, tag: str) -> dict[str, dict[str, list[str]]]:
    """Users and tokens of every tenant in :data:`TENANT_WEIGHTS`, created with the center admin's token."""
    queues = _call(host, admin_token, "GET", "/v1/queues")["items"]
    out: dict[str, dict[str, list[str]]] = {}
    for tenant in TENANT_WEIGHTS:
        mine = [q["name"] for q in queues if q["tenant"] == tenant]
        # the tenant's own queue first: specs without a queue preference use it
        mine.sort(key=lambda name: (name != tenant, name))
        tokens = []
        for i in range(USERS_PER_TENANT):
            role = "tenant-admin" if i == 0 else "tenant-user"
            body = {"name": f"bench-{tag}-{i}", "tenant": tenant, "role": role}
            user = _call(host, admin_token, "POST", "/v1/users", body)
            for _ in range(TOKENS_PER_USER):
                created = _call(host, admin_token, "POST", "/v1/tokens", {"user": user["id"], "name": "locust"})
                tokens.append(created["token"])
        out[tenant] = {"queues": mine, "tokens": tokens}
    return out


@events.init.add_listener
def _report_errors(environment: Environment, **_: Any) -> None:
    """Write locust's error report to ``ZHISUAN_BENCH_ERRORS`` at the end (``benchmarks/api_load.py`` reads it)."""
    if errors_file := os.environ.get("ZHISUAN_BENCH_ERRORS"):

        @events.quit.add_listener
        def _write_errors(**_: Any) -> None:
            if environment.runner is not None and not isinstance(environment.runner, WorkerRunner):
                errors = list(environment.runner.stats.serialize_errors().values())
                Path(errors_file).write_text(json.dumps(errors, indent=1, default=str))


def _ensure_tenants(host: str | None) -> None:
    """Load or create this process's tokens, once (the first user to start does it; the others wait)."""
    with _provisioning:
        if _tenants:
            return
        _process["prefix"] = f"{os.getpid():x}{random.SystemRandom().getrandbits(32):08x}"
        if path := os.environ.get("ZHISUAN_BENCH_TOKENS"):
            _tenants.update(json.loads(Path(path).read_text())["tenants"])
            return
        admin = os.environ.get("ZHISUAN_ADMIN_TOKEN")
        if not admin and (token_file := os.environ.get("ZHISUAN_ADMIN_TOKEN_FILE")):
            admin = Path(token_file).read_text().strip()
        if not admin or not host:
            raise SystemExit("set ZHISUAN_BENCH_TOKENS, or ZHISUAN_ADMIN_TOKEN(_FILE) and --host, to give users tokens")
        _tenants.update(provision(host, admin, _process["prefix"]))


# ----------------------------------------------------------------------------------------------- users


class _TenantBase(FastHttpUser):
    abstract = True
    #: closed loop, no think time: the throughput is what the server (and locust) can do
    wait_time = constant(0)

    def on_start(self) -> None:
        _ensure_tenants(self.host)
        index = next(_users)
        weighted = [t for t, w in TENANT_WEIGHTS.items() for _ in range(w) if t in _tenants]
        self.tenant = weighted[index % len(weighted)]
        info = _tenants[self.tenant]
        self.queues = info["queues"]
        # ``--processes``: process w of P takes tokens w, w+P, w+2P... so no two processes share a token
        processes = max(1, int(os.environ.get("ZHISUAN_BENCH_PROCESSES", "1")))
        worker = getattr(self.environment.runner, "worker_index", 0) % processes
        mine = info["tokens"][worker::processes] or info["tokens"]
        token = mine[next(_per_tenant.setdefault(self.tenant, itertools.count())) % len(mine)]
        self.auth = {"Authorization": f"Bearer {token}"}
        self.rng = random.Random(f"{_process['prefix']}-{index}")
        self.recent: deque[str] = deque(maxlen=50)
        self.pending: deque[str] = deque(maxlen=50)
        self.last: tuple[bytes, str, str] | None = None

    def _expect(self, response: Any, status: int) -> bool:
        if response.status_code == status:
            response.success()
            return True
        text = (response.text or "")[:200] if response.status_code else str(response.error)
        response.failure(f"{response.status_code}: {text}")
        return False

    def submit(self, keep: bool) -> None:
        n = next(_jobs)
        body = orjson.dumps(spec_for(self.tenant, self.queues, self.rng, n))
        key = f"{_process['prefix']}-{n}"
        headers = {**self.auth, **JSON_HEADERS, "Idempotency-Key": key}
        with self.client.post("/v1/jobs", data=body, headers=headers, name="submit", catch_response=True) as r:
            if self._expect(r, 201) and keep:
                job_id = orjson.loads(r.content)["id"]
                self.recent.append(job_id)
                self.pending.append(job_id)
                self.last = (body, key, job_id)


class Submitter(_TenantBase):
    """Submissions only."""

    @task
    def submit_job(self) -> None:
        self.submit(keep=False)


class Tenant(_TenantBase):
    """The mixed profile: submissions and everything a tenant reads or cancels."""

    @task(20)
    def submit_job(self) -> None:
        self.submit(keep=True)

    @task(1)
    def retry_submission(self) -> None:
        """A client that lost the answer sends the same body with the same key: 200 with the same job."""
        if self.last is None:
            return self.submit_job()
        body, key, job_id = self.last
        headers = {**self.auth, **JSON_HEADERS, "Idempotency-Key": key}
        with self.client.post("/v1/jobs", data=body, headers=headers, name="submit (retry)", catch_response=True) as r:
            if self._expect(r, 200) and orjson.loads(r.content)["id"] != job_id:
                r.failure(f"replay answered another job than {job_id}")

    @task(6)
    def list_jobs(self) -> None:
        query = self.rng.choice(
            [
                "?limit=20",
                "?state=pending&limit=20",
                "?state=pending,running&kind=training&limit=50",
                f"?queue={self.rng.choice(self.queues)}&limit=20",
                "?kind=inference&limit=10",
            ]
        )
        with self.client.get(f"/v1/jobs{query}", headers=self.auth, name="list", catch_response=True) as r:
            self._expect(r, 200)

    def _read(self, suffix: str, name: str) -> None:
        if not self.recent:
            return self.submit_job()
        job_id = self.rng.choice(self.recent)
        with self.client.get(f"/v1/jobs/{job_id}{suffix}", headers=self.auth, name=name, catch_response=True) as r:
            self._expect(r, 200)

    @task(8)
    def status(self) -> None:
        self._read("", "status")

    @task(2)
    def why(self) -> None:
        self._read("/why", "why")

    @task(2)
    def eta(self) -> None:
        self._read("/eta", "eta")

    @task(1)
    def job_events(self) -> None:
        self._read("/events", "events")

    @task(2)
    def cancel(self) -> None:
        if not self.pending:
            return self.submit_job()
        job_id = self.pending.popleft()  # nothing runs them in this benchmark: still pending, cancelled at once
        with self.client.post(f"/v1/jobs/{job_id}/cancel", headers=self.auth, name="cancel", catch_response=True) as r:
            self._expect(r, 202)

    @task(1)
    def queues_and_usage(self) -> None:
        path = self.rng.choice(["/v1/queues", "/v1/usage"])
        with self.client.get(path, headers=self.auth, name=path.removeprefix("/v1/"), catch_response=True) as r:
            self._expect(r, 200)


if __name__ == "__main__":
    # python benchmarks/locustfile.py HOST ADMIN_TOKEN_FILE OUT: create the users and tokens once, write them to OUT
    # (the JSON file ZHISUAN_BENCH_TOKENS names), so that locust does not spend its measured time on them.
    host, token_file, out = sys.argv[1:4]
    created = provision(host, Path(token_file).read_text().strip(), f"{os.getpid():x}")
    Path(out).write_text(json.dumps({"tenants": created}, indent=1))
