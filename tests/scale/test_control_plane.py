"""The control plane with several API processes on PostgreSQL and Redis, and the scheduler's read path.

Real processes (``python -m api.app``) on one database: a revocation through one is refused by the other within
a second; rate limits are one bucket per token across processes, and a flooding token does not slow another; a
herd of agents is admitted with 429 + Retry-After; the change feed sees a transaction that commits late; an idle
scheduler cycle reads the feed and nothing else; a database outage in the middle of scheduling pauses the service,
which takes the lease back with a new term and launches nothing twice.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from scale_stack import ROOT, Cluster, make_cluster
from sqlalchemy import event, insert, select, text

from api.db import make_engine, migrate
from api.service_store import ChangeFeed, SqlServiceStore
from api.tables import JOBS, LEADER_LOCK, NODES, POLICY_VERSIONS
from benchmarks.scale import POLICY, fail_over, insert_jobs
from scheduler.errors import load_yaml_mapping
from scheduler.live.executors.instant import InstantExecutor
from scheduler.live.service import SchedulerService, ServiceConfig
from scheduler.spec import HOLDING_STATES


@pytest.fixture(scope="module")
def cluster(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("cluster")
    # Small limits, so that the tests can reach them: 5 requests/s per token (burst 10), 4 agent requests in flight.
    running = make_cluster(postgres_url, tmp, ZHISUAN_RATE_LIMIT="5/s burst 10", ZHISUAN_AGENT_IN_FLIGHT="4")
    running.start(2)
    try:
        yield running
    finally:
        running.stop()


def _call(url: str, token: str, method: str, path: str, body: Any = None) -> httpx.Response:
    for _ in range(50):
        r = httpx.request(method, url + path, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        if r.status_code != 429:
            return r
        time.sleep(float(r.headers.get("Retry-After", "1")))
    raise AssertionError(f"{method} {path} stayed rate limited")


def _user_token(cluster: Cluster, name: str) -> tuple[str, str]:
    url = cluster.processes[0].url
    user = _call(url, cluster.admin, "POST", "/v1/users", {"name": name, "tenant": "acme", "role": "tenant-user"})
    assert user.status_code == 201, user.text
    created = _call(url, cluster.admin, "POST", "/v1/tokens", {"user": user.json()["id"], "name": name})
    assert created.status_code == 201, created.text
    return created.json()["id"], created.json()["token"]


def test_a_revoked_token_is_refused_by_every_process_within_a_second(cluster: Cluster) -> None:
    a, b = cluster.processes
    token_id, token = _user_token(cluster, "leaver")
    for api in (a, b):  # both processes have the token in their cache
        assert _call(api.url, token, "GET", "/v1/jobs?limit=1").status_code == 200
    revoked = _call(a.url, cluster.admin, "DELETE", f"/v1/tokens/{token_id}")
    assert revoked.status_code == 204, revoked.text
    started = time.monotonic()
    assert _call(a.url, token, "GET", "/v1/jobs?limit=1").status_code == 401
    while True:
        status = httpx.get(b.url + "/v1/jobs?limit=1", headers={"Authorization": f"Bearer {token}"}).status_code
        elapsed = time.monotonic() - started
        if status == 401 or elapsed > 5:
            break
        time.sleep(0.02)
    assert status == 401, "the other process still accepts a revoked token"
    assert elapsed < 1.0, f"revocation took {elapsed:.2f} s to reach the other process"


def test_rate_limits_are_one_bucket_per_token_across_processes(cluster: Cluster) -> None:
    a, b = cluster.processes
    _, flooder = _user_token(cluster, "flooder")
    _, other = _user_token(cluster, "bystander")
    statuses: collections.Counter[int] = collections.Counter()
    started = time.monotonic()
    for i in range(40):  # alternating processes: a per-process bucket would let 20 through in the first second
        api = a if i % 2 == 0 else b
        r = httpx.get(api.url + "/v1/jobs?limit=1", headers={"Authorization": f"Bearer {flooder}"})
        statuses[r.status_code] += 1
        if r.status_code == 429:
            assert int(r.headers["Retry-After"]) >= 1 and r.json()["type"].endswith("/rate-limited")
    elapsed = time.monotonic() - started
    allowed = 10 + 5 * elapsed  # the burst, and what refilled meanwhile
    assert statuses[429] > 0 and statuses[200] <= allowed + 1, (statuses, elapsed)
    for api in (a, b):  # another token of the same tenant is not slowed by the flood
        assert httpx.get(api.url + "/v1/jobs?limit=1", headers={"Authorization": f"Bearer {other}"}).status_code == 200


def test_a_herd_of_agents_is_admitted_with_429_and_retry_after(cluster: Cluster, tmp_path: Path) -> None:
    a, _ = cluster.processes
    node_token = _call(a.url, cluster.admin, "POST", "/v1/nodes/tokens", {"name": "herd"}).json()["token"]
    out = tmp_path / "agents.json"
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "agents_load.py"),
        "--url",
        a.url,
        "--token",
        node_token,
        "--nodes",
        "200",
        "-t",
        # All 200 were admitted in 12-14 s on a quiet tree and sometimes 199 within 15 s on a loaded machine: the
        # test is about the 429s and that everyone gets in, not how fast, so the herd gets room.
        "30",
        "--faults",
        "0",
        "--connections",
        "64",
        "--prefix",
        "herd",
        "--out",
        str(out),
    ]
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, timeout=120)
    result = json.loads(out.read_text())
    registrations = result["registrations"]
    assert registrations["admitted"] == 200, registrations
    assert registrations["throttled_429"] > 0, "4 in flight for 64 at once: some must have been told to retry"
    assert registrations["errors"] == {} and result["heartbeats"]["errors"] == {}, result
    assert result["late_renewals"] == 0 and result["heartbeats"]["ok"] > 0
    engine = make_engine(cluster.database_url)
    try:
        with engine.connect() as conn:
            now = time.time()
            rows = conn.execute(select(NODES.c.lease_expires_at).where(NODES.c.id.like("herd-%"))).all()
        assert len(rows) == 200 and all(r.lease_expires_at > now for r in rows)
    finally:
        engine.dispose()


def _node(node_id: str, model: str = "H100", lease_s: float = 3600.0) -> dict[str, Any]:
    now = time.time()
    return {
        "id": node_id,
        "hostname": node_id,
        "model": model,
        "vendor": "nvidia",
        "pool": f"dc1/{model}",
        "site": "dc1",
        "region": "r",
        "tier": "cloud",
        "island": node_id,
        "switch": node_id,
        "devices": 8,
        "cpu_milli": 128_000,
        "memory_mib": 1024 * 1024,
        "labels": {},
        "state": "ready",
        "source": "agent",
        "registered_at": now,
        "last_heartbeat": now,
        "lease_expires_at": now + lease_s,
    }


def test_the_change_feed_sees_a_transaction_that_commits_late(postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    migrate(engine)
    feed = ChangeFeed(engine)
    try:
        cursor = feed.read(None).cursor
        with engine.connect() as late, engine.connect() as early:
            late.execute(insert(NODES).values(_node("feed-late")))  # takes its change number, does not commit yet
            early.execute(insert(NODES).values(_node("feed-early")))
            early.commit()
            first = feed.read(cursor)
            assert first.nodes == {"feed-early"} and first.cursor.gaps, first
            late.commit()
        second = feed.read(first.cursor)
        assert second.nodes == {"feed-late"} and not second.cursor.gaps
        assert feed.read(second.cursor).empty
    finally:
        engine.dispose()


def test_an_idle_cycle_reads_the_feed_and_nothing_else(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'idle.db'}"
    engine = make_engine(url)
    migrate(engine)
    with engine.begin() as conn:
        conn.execute(insert(NODES), [_node(f"idle-{i:03d}", model=m) for i, m in enumerate(["H100", "A100"] * 100)])
        conn.execute(insert(POLICY_VERSIONS).values(document=load_yaml_mapping_text(POLICY), created_at=0, author=""))
    insert_jobs(url, 3000)
    service = SchedulerService(
        SqlServiceStore(engine), InstantExecutor(), ServiceConfig(holder="idle", step_every_s=3600, eta_every_s=3600)
    )
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    try:
        first = service.cycle()
        assert first.stepped and first.started and first.pending == 3000
        for _ in range(3):  # settle: the feed brings back the scheduler's own writes once
            service.cycle()
        statements.clear()
        report = service.cycle()
        assert not report.stepped and not report.started
        executed = [s for s in statements if not s.startswith("BEGIN")]
        reads = [s.split("FROM")[-1].split()[0] for s in executed if s.startswith("SELECT")]
        # The lease (read and renew), the feed, the lapsed leases: no node, job or device table scan.
        assert len(executed) <= 4, executed
        assert sorted(reads) == ["changes", "leader_lock", "nodes"], reads
    finally:
        engine.dispose()


def load_yaml_mapping_text(document: str) -> dict[str, Any]:
    import yaml

    loaded: dict[str, Any] = yaml.safe_load(document)
    return loaded


def test_a_database_outage_pauses_the_service_which_launches_nothing_twice(postgres_url: str) -> None:
    engine = make_engine(postgres_url, pool_size=4)
    migrate(engine)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM leader_lock"))
        conn.execute(insert(NODES), [_node(f"fo-{i}", model=m) for i, m in enumerate(["H100", "A100", "H20"] * 4)])
        conn.execute(insert(POLICY_VERSIONS).values(document=load_yaml_mapping_text(POLICY), created_at=0, author=""))
    insert_jobs(postgres_url, 300, seed=5)
    executor = InstantExecutor(runtime=lambda request: 1.5)
    config = ServiceConfig(holder="failover-test", interval_s=0.1, lease_s=2.0, eta_every_s=3600)
    service = SchedulerService(SqlServiceStore(engine), executor, config)
    terms: list[int] = []
    stop = threading.Event()
    original = service.cycle

    def cycle() -> Any:
        report = original()
        if service.term is not None and (not terms or terms[-1] != service.term):
            terms.append(service.term)
        return report

    service.cycle = cycle  # type: ignore[method-assign]
    thread = threading.Thread(target=service.run, args=(stop,), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while len(executor.launched) < 20 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert executor.launched, "nothing started before the outage"
        fail_over(postgres_url, 3.0)
        launched_before = len(executor.launched)
        # Its own minute after the outage (the first phase may have used most of the first on a loaded machine).
        deadline = time.monotonic() + 60
        while (len(terms) < 2 or len(executor.launched) <= launched_before) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(timeout=30)
    with engine.connect() as conn:
        lock = conn.execute(select(LEADER_LOCK)).all()
    assert len(terms) >= 2 and terms[-1] > terms[0], (
        f"the lease was not taken back with a new term: {terms}; service term {service.term}, lock {lock}, "
        f"launched {launched_before} before the outage and {len(executor.launched)} in all"
    )
    assert len(executor.launched) > launched_before, "nothing was launched after the outage"
    twice = [key for key, n in collections.Counter(executor.launched).items() if n > 1]
    assert not twice, f"launched twice: {twice}"
    with engine.connect() as conn:
        holding = conn.execute(
            select(JOBS.c.id, JOBS.c.attempt).where(JOBS.c.state.in_([s.value for s in HOLDING_STATES]))
        ).all()
    launched = set(executor.launched)
    assert all((job_id, attempt) in launched for job_id, attempt in holding), "a holding job was never launched"
    engine.dispose()


__all__ = ["load_yaml_mapping"]
