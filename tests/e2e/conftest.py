"""One deployment for the whole e2e directory (a Ray cluster takes ~30 s to start on a small machine).

Order matters only once: killing an emulated node cannot be undone, so ``test_e2e_node_loss.py`` runs last.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from e2e_support import (
    CLUSTER_FILE,
    CORE_CONFIG,
    HEARTBEAT_INTERVAL_S,
    POLICY_FILE,
    Deployment,
    service_config,
    wait_state,
)

from api.client import ZhisuanClient
from api.settings import Settings
from api.up import developer_login, running

LAST = ("test_e2e_node_loss.py",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.path.name in LAST)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _processes_under(path: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if any(str(path) in part for part in proc.info["cmdline"] or ()):
                found.append(proc)
    return found


@pytest.fixture(scope="session")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("e2e")
    log_dir = tmp / "worker-logs"
    settings = Settings(
        database_url=f"sqlite:///{tmp / 'zhisuan.db'}",
        rate_per_s=0.0,
        rate_burst=0.0,
        heartbeat_interval_s=HEARTBEAT_INTERVAL_S,
        policy_file=POLICY_FILE,
    )
    ray_dir: Path | None = None
    with running(
        settings,
        cluster_file=CLUSTER_FILE,
        port=_free_port(),
        service_config=service_config("in-process"),
        core_config=CORE_CONFIG,
        agent_interval_s=1.0,
        log_dir=str(log_dir),
    ) as run:
        assert run.cluster is not None and run.admin_token is not None
        ray_dir = run.cluster.work_dir
        admin = ZhisuanClient(run.url, run.admin_token)
        acme = ZhisuanClient(run.url, developer_login(run.url, run.admin_token, tenant="acme", user="alice"))
        other = ZhisuanClient(run.url, developer_login(run.url, run.admin_token, tenant="sme-vision", user="bob"))
        deployment = Deployment(run, tmp, log_dir, admin, acme, other)
        try:
            yield deployment
        finally:
            for runner in deployment.runners:
                with contextlib.suppress(subprocess.TimeoutExpired, ProcessLookupError):
                    runner.kill9()
            for client in (admin, acme, other):
                client.close()
    # Nothing of the cluster may outlive it: every raylet, agent and worker ran with its temp dir on the line.
    # Job processes name the test's temp dir on theirs (probe records, checkpoints).
    assert ray_dir is not None
    leaked = _processes_under(ray_dir) + _processes_under(tmp_path_factory.getbasetemp())
    assert not leaked, f"processes of the e2e deployment outlived it: {[(p.pid, p.name()) for p in leaked]}"


@pytest.fixture(autouse=True)
def clean(deployment: Deployment) -> Iterator[None]:
    """After each test: cancel whatever it left active, so the next test finds the cluster empty."""
    yield
    for job in deployment.admin.list_jobs():
        if not job.terminal:
            with contextlib.suppress(Exception):
                deployment.admin.cancel(job.id)
    if deployment.run.service is None:
        return  # nothing would carry the cancels out (a crash test that failed left no scheduler behind)
    for job in deployment.admin.list_jobs():
        if not job.terminal:
            wait_state(deployment.admin, job.id, "cancelled", "failed", "succeeded", timeout_s=60)
