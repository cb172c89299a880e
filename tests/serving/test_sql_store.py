"""The serving records in SQL (SQLite and PostgreSQL): what the controller and the routers read and write."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from serving_stack import service_spec
from sqlalchemy import Engine, select

from api.db import make_engine, migrate
from api.service_store import SqlServiceStore
from api.serving_store import ServiceConflict, SqlServing
from api.tables import JOBS, SERVICE_REPLICAS
from scheduler.live.serving.store import LoadReport, ReplicaLoad, split_key
from scheduler.live.store import Fence, NotLeader
from scheduler.spec import JobState

POSTGRES_URL = os.environ.get("ZHISUAN_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _postgres() -> Iterator[str]:
    try:
        import psycopg

        with psycopg.connect(POSTGRES_URL, connect_timeout=3, autocommit=True) as conn:
            name = f"zs_serving_{os.getpid()}_{secrets.token_hex(3)}"
            conn.execute(f'CREATE DATABASE "{name}"')
    except Exception as err:  # no server here: say so loudly, run SQLite only
        pytest.skip(f"PostgreSQL NOT TESTED: {type(err).__name__}: {err}")
    parts = urlsplit(POSTGRES_URL)
    url = urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))
    try:
        yield url
    finally:
        import psycopg

        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'serving.db'}"
        made = make_engine(url)
        migrate(made)
        yield made
        made.dispose()
        return
    for url in _postgres():
        made = make_engine(url)
        migrate(made)
        try:
            yield made
        finally:
            made.dispose()


def test_replicas_are_jobs_fenced_by_the_lease_and_reports_add_up(engine: Engine) -> None:
    serving = SqlServing(engine)
    jobs = SqlServiceStore(engine)
    now = time.time()
    term = jobs.hold_lease("ctl", now, 10.0, None)
    assert term is not None
    fence = Fence("ctl", term)
    deployed = serving.deploy("acme", "chat", service_spec(), user="ann", queue="acme", now=now)
    assert deployed.outcome == "created" and deployed.record.revision == 1
    assert serving.deploy("acme", "chat", service_spec(), user="ann", queue="acme").outcome == "unchanged"
    rolled = serving.deploy("acme", "chat", service_spec(replicas=2), user="ann", queue="acme")
    assert rolled.outcome == "updated" and rolled.record.revision == 2
    record = rolled.record
    job_id = serving.add_replica(fence, record, now)
    (replica,) = serving.replicas()
    assert (replica.job_id, replica.revision, replica.job_state) == (job_id, 2, JobState.PENDING)
    # The replica is a pending job the scheduler will see like any submission, labelled with its service.
    (job,) = jobs.jobs([job_id])
    assert job.state is JobState.PENDING and job.spec.workers == 1 and job.spec.serving is None
    assert job.spec.labels["zhisuan.io/service"] == record.id and job.tenant == "acme"
    # Another holder's fence writes nothing.
    with pytest.raises(NotLeader):
        serving.add_replica(Fence("someone-else", term), record, now)
    serving.set_endpoint(job_id, "http://127.0.0.1:9", 0)
    serving.set_health(job_id, now, 0)
    assert serving.routes()[("acme", "chat")].endpoints == ()  # pending: not routable yet
    assert serving.routes()[("acme", "chat")].starting == 1
    report = LoadReport(
        "r1", record.id, now, 1.0, requests=10, errors=1, tokens=50, ongoing=2.5, replicas={job_id: ReplicaLoad(2, 0)}
    )
    serving.report([report])
    serving.report([LoadReport("r1", record.id, now + 1, 1.0, requests=5, tokens=20)])
    (latest,) = serving.loads(now - 10)
    assert latest.requests == 5 and latest.at == now + 1  # one row per router: the newest
    (hour,) = serving.usage("acme", record.id, now - 3600, now + 3600)
    assert (hour.requests, hour.errors, hour.tokens) == (15, 1, 70)  # usage adds up
    key, plain = serving.create_key(record, "mobile", "ann")
    key_id, _ = split_key(plain)
    assert serving.key(key_id) == key and key.secret_hash not in plain
    assert serving.revoke_key(record, key_id) and serving.key(key_id).revoked_at is not None  # type: ignore[union-attr]
    # Stopping a pending replica cancels its job at once; its row stays (ended) for the bill.
    serving.stop_replica(fence, job_id, now, "scaled in")
    assert jobs.job_states([job_id])[job_id][0] is JobState.CANCELLED
    serving.drop_replica(job_id)
    assert serving.replicas() == []
    with engine.connect() as conn:
        assert conn.execute(select(SERVICE_REPLICAS.c.ended_at)).scalar() is not None
        assert conn.execute(select(JOBS.c.state).where(JOBS.c.id == job_id)).scalar() == "cancelled"
    serving.delete(record.id)
    with pytest.raises(ServiceConflict, match="being deleted"):
        serving.deploy("acme", "chat", service_spec(), user="ann", queue="acme")
    serving.drop_service(fence, record.id)
    assert serving.find("acme", "chat") == [] and serving.key(key_id) is None
