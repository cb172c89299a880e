"""The database side: migrations match the tables, quotas hold under concurrency, an unavailable database is a 503
with Retry-After and no partial rows; bootstrap is idempotent; health, metrics and OpenAPI answer."""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import stat
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from api_stack import (
    JOB,
    SSL,
    Server,
    Stack,
    assert_problem,
    free_port,
    make_settings,
)
from sqlalchemy import inspect, text

from api.app import create_app
from api.bootstrap import bootstrap
from api.db import current_revision, head_revision, make_engine, migrate
from api.settings import Settings
from api.tables import JOBS, METADATA, TABLE_NAMES


def test_migration_creates_exactly_the_tables(fresh_url: str) -> None:
    engine = make_engine(fresh_url)
    try:
        migrate(engine)
        migrate(engine)  # idempotent
        with engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) == TABLE_NAMES | {"alembic_version"}
            assert current_revision(conn) == head_revision()
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), METADATA)
        assert diff == [], f"api/tables.py and the migrations differ: {diff}"
    finally:
        engine.dispose()


def test_bootstrap_is_idempotent(fresh_url: str, tmp_path: Path) -> None:
    settings = make_settings(fresh_url, tmp_path)
    engine = make_engine(fresh_url)
    try:
        migrate(engine)
        first = bootstrap(engine, settings)
        assert first.admin_token and first.policy_version == 1 and first.nodes_loaded == 5
        token_file = settings.admin_token_file
        assert token_file is not None and token_file.read_text().strip() == first.admin_token
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        again = bootstrap(engine, settings)
        assert (again.admin_token, again.policy_version, again.nodes_loaded) == (None, None, 0)
    finally:
        engine.dispose()


# ----------------------------------------------------------------------------------------- concurrency


def test_hundred_clients_never_over_admit(fresh_url: str, tmp_path: Path) -> None:
    """100 clients, two API servers (separate engines and writers) on one database, one tenant capped at 30."""
    settings = make_settings(fresh_url, tmp_path)
    first_app = create_app(settings)
    with Server(first_app) as one:
        admin = first_app.state.ctx.bootstrap_token
        with httpx.Client(base_url=one.url, headers={"Authorization": f"Bearer {admin}"}) as c:
            assert c.patch("/v1/tenants/sme-vision", json={"max_active_jobs": 30}).status_code == 200
            c.post("/v1/users", json={"name": "load", "tenant": "sme-vision"})
            token = c.post("/v1/tokens", json={"user": "load@sme-vision"}).json()["token"]
        with Server(create_app(settings)) as two:
            urls = [one.url, two.url]

            def client(i: int) -> list[tuple[int, str | None]]:
                key = f"race-{i}"
                out = []
                headers = {"Authorization": f"Bearer {token}"}
                with httpx.Client(base_url=urls[i % 2], headers=headers, timeout=60, verify=SSL) as c:
                    for attempt in range(2):  # every client retries its submission once, same key
                        r = c.post("/v1/jobs", json={**JOB, "name": f"race-{i}"}, headers={"Idempotency-Key": key})
                        out.append((r.status_code, r.json().get("id")))
                        assert attempt == 0 or r.status_code in (200, 409), r.text
                return out

            with ThreadPoolExecutor(100) as pool:
                answers = [a for chunk in pool.map(client, range(100)) for a in chunk]
    created = [job_id for status, job_id in answers if status == 201]
    refused = [status for status, _ in answers if status == 409]
    assert len(created) == 30 and len(set(created)) == 30
    assert len(refused) + len(created) + sum(1 for s, _ in answers if s == 200) == 200
    replays = [job_id for status, job_id in answers if status == 200]
    assert set(replays) <= set(created)
    engine = make_engine(fresh_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(JOBS.select().where(JOBS.c.tenant == "sme-vision")).mappings().all()
    finally:
        engine.dispose()
    assert sorted(r["id"] for r in rows) == sorted(created)  # nothing lost, nothing duplicated


# -------------------------------------------------------------------------------------- unavailability


class Proxy:
    """A TCP proxy in front of PostgreSQL that can be cut (every connection dropped, new ones refused)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.open = True
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open:
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.open = False
        with self.lock:
            for s in self.sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()
                except OSError:
                    pass
            self.sockets.clear()

    def restore(self) -> None:
        self.open = True

    def close(self) -> None:
        self.cut()
        self.listener.close()


def _assert_unavailable(r: httpx.Response) -> None:
    assert_problem(r, 503, "database-unavailable", "retry")
    assert int(r.headers["retry-after"]) >= 1


def test_database_down_mid_run(fresh_url: str, tmp_path: Path) -> None:
    """The database goes away under a running server: 503 + Retry-After, nothing half-written, then recovery."""
    proxy: Proxy | None = None
    url = fresh_url
    if fresh_url.startswith("postgresql"):
        parts = httpx.URL(fresh_url.replace("postgresql://", "http://"))
        proxy = Proxy((parts.host, parts.port or 5432))
        url = fresh_url.replace(f"{parts.host}:{parts.port}", f"127.0.0.1:{proxy.port}")
    app = create_app(make_settings(url, tmp_path, busy_timeout_ms=300, token_cache_s=60.0))
    try:
        with Server(app) as server:
            admin = app.state.ctx.bootstrap_token
            with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {admin}"}, timeout=30) as c:
                assert c.post("/v1/jobs", json={**JOB, "queue": "acme"}).status_code == 201
                counts = _count(fresh_url)
                if proxy is not None:
                    proxy.cut()
                else:  # SQLite: another process holds the write lock past the busy timeout
                    holder = sqlite3.connect(fresh_url.removeprefix("sqlite:///"), isolation_level=None)
                    holder.execute("BEGIN EXCLUSIVE")
                for _ in range(3):
                    _assert_unavailable(c.post("/v1/jobs", json={**JOB, "queue": "acme"}))
                if proxy is not None:
                    _assert_unavailable(c.get("/v1/jobs"))
                    _assert_unavailable(c.get("/readyz"))
                _assert_unavailable(c.put("/v1/queues/acme-research", json={"parent": "acme"}))
                assert c.get("/healthz").status_code == 200
                if proxy is not None:
                    proxy.restore()
                else:
                    holder.execute("ROLLBACK")
                    holder.close()
                assert _count(fresh_url) == counts  # no partial rows
                ok = None
                for _ in range(20):  # the pool reconnects
                    ok = c.post("/v1/jobs", json={**JOB, "queue": "acme"})
                    if ok.status_code == 201:
                        break
                assert ok is not None and ok.status_code == 201, ok.text
                assert c.get("/readyz").status_code == 200
    finally:
        if proxy is not None:
            proxy.close()


def _count(url: str) -> dict[str, int]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in ("jobs", "job_events")}
    finally:
        engine.dispose()


def test_database_down_at_start(tmp_path: Path) -> None:
    """A server whose database never answers still starts: 503 with Retry-After everywhere it needs the DB."""
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"  # a closed port
    app = create_app(Settings(database_url=url, policy_file=None, cache_refresh_s=0.2))
    with Server(app) as server, httpx.Client(base_url=server.url, timeout=30) as c:
        assert c.get("/healthz").status_code == 200
        _assert_unavailable(c.get("/readyz"))
        token = "zs_0123456789abcdef_" + "y" * 43
        headers = {"Authorization": f"Bearer {token}"}
        _assert_unavailable(c.post("/v1/jobs", json=JOB, headers=headers))
        _assert_unavailable(c.get("/v1/jobs", headers=headers))
        assert_problem(c.get("/v1/jobs"), 401, "unauthenticated")  # no token: still 401 first
        assert "zhisuan_database_up 0.0" in c.get("/metrics").text


# ------------------------------------------------------------------------------------ health, docs, metrics


def test_health_metrics_and_openapi(stack: Stack) -> None:
    with stack.client("alice") as c:
        c.post("/v1/jobs", json={**JOB, "name": "metered-request"})
        c.get("/v1/jobs/j0000000000000000000")
        assert c.get("/healthz").json() == {"status": "ok"}
        ready = c.get("/readyz").json()
        assert ready["status"] == "ready" and ready["revision"] == ready["head"]
        metrics = c.get("/metrics").text
        assert 'zhisuan_http_requests_total{method="POST",route="/v1/jobs",status="201"}' in metrics
        assert 'route="/v1/jobs/{job_id}",status="404"' in metrics  # templates, never ids
        assert "j0000000000000000000" not in metrics
        assert 'zhisuan_jobs{state="pending"}' in metrics and "zhisuan_job_submissions_total" in metrics
        assert "zhisuan_http_request_duration_seconds_bucket" in metrics
        schema = c.get("/openapi.json").json()
        assert schema["openapi"].startswith("3.")
        body = schema["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": "#/components/schemas/JobSpec"} and "JobSpec" in schema["components"]["schemas"]
        assert schema["paths"]["/v1/jobs"]["post"]["security"] == [{"bearer": []}]
        assert "swagger" in c.get("/docs").text.lower()
        assert_problem(c.get("/v1/nothing-here"), 404, "not-found", "/docs")
        assert_problem(c.delete("/v1/whoami"), 405, "method-not-allowed")


def test_fastapi_route_matches_the_fast_path(tmp_path: Path) -> None:
    """With the fast path off, FastAPI serves POST /v1/jobs with the same answers."""
    app = create_app(make_settings(f"sqlite:///{tmp_path / 'slow.db'}", tmp_path, fast_submit=False))
    with Server(app) as server:
        admin = app.state.ctx.bootstrap_token
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {admin}"}) as c:
            key = {"Idempotency-Key": uuid.uuid4().hex}
            first = c.post("/v1/jobs", json={**JOB, "queue": "acme"}, headers=key)
            assert first.status_code == 201 and first.headers["location"].endswith(first.json()["id"])
            again = c.post("/v1/jobs", json={**JOB, "queue": "acme"}, headers=key)
            assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
            assert_problem(
                c.post("/v1/jobs", content=b"{nope", headers={"Content-Type": "application/json"}),
                400,
                "malformed-request",
            )
            assert_problem(c.post("/v1/jobs", json={**JOB, "gpus": 1}), 422, "validation-error", "gpus")
            big = {**JOB, "labels": {"x": "y" * (2 << 20)}}
            assert_problem(c.post("/v1/jobs", json=big), 413, "payload-too-large")
        with httpx.Client(base_url=server.url) as c:
            assert_problem(c.post("/v1/jobs", json=JOB), 401, "unauthenticated")


def test_an_in_memory_sqlite_database_is_one_database_for_every_session() -> None:
    engine = make_engine("sqlite:///:memory:")
    migrate(engine)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO leader_lock (name, holder, expires_at, term) VALUES ('x', 'me', 1.0, 1)"))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT holder FROM leader_lock")).scalar_one() == "me"
    engine.dispose()
