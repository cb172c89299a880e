"""Helpers of the scale tests: real API processes (``python -m api.app``) on a fresh PostgreSQL database, with
rate limits in the Redis at 127.0.0.1:6379; skipped loudly when either is not there."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "api"))
sys.path.insert(0, str(ROOT))  # benchmarks/ (the load generator and the failover are the benchmark's own)

from api_stack import (  # noqa: E402
    free_port,
)

REDIS_URL = os.environ.get("ZHISUAN_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def redis_available() -> str | None:
    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
        return None
    except Exception as err:
        return f"{err.__class__.__name__}: {err}"


@dataclass
class ApiProcess:
    url: str
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class Cluster:
    """Several API processes of one center (one database, one Redis)."""

    database_url: str
    env: dict[str, str]
    token_file: Path
    processes: list[ApiProcess] = field(default_factory=list)

    def start(self, count: int) -> list[ApiProcess]:
        for _ in range(count):
            port = free_port()
            command = [sys.executable, "-m", "api.app", "--port", str(port)]
            process = subprocess.Popen(command, cwd=ROOT, env=self.env)
            api = ApiProcess(f"http://127.0.0.1:{port}", process)
            self.processes.append(api)
        for api in self.processes:
            _wait_ready(api)
        return self.processes

    @property
    def admin(self) -> str:
        return self.token_file.read_text().strip()

    def stop(self) -> None:
        for api in self.processes:
            api.stop()


def _wait_ready(api: ApiProcess, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if api.process.poll() is not None:
            raise RuntimeError(f"the API process exited with {api.process.returncode}")
        try:
            if httpx.get(api.url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{api.url} did not become ready")


def make_cluster(postgres_url: str, tmp_path: Path, **env: str) -> Cluster:
    error = redis_available()
    if error is not None:
        pytest.skip(f"Redis NOT TESTED: no server at {REDIS_URL} ({error})")
    token_file = tmp_path / "admin-token"
    variables = {
        **os.environ,
        "ZHISUAN_DATABASE_URL": postgres_url,
        "ZHISUAN_ADMIN_TOKEN_FILE": str(token_file),
        "ZHISUAN_REDIS_URL": REDIS_URL,
        "ZHISUAN_CLUSTER_FILE": str(ROOT / "seeds" / "clusters" / "local.yaml"),
        "PYTHONPATH": str(ROOT),
        **env,
    }
    return Cluster(postgres_url, variables, token_file)
