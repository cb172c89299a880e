"""Helpers and fixtures of the API tests: a real uvicorn server on 127.0.0.1 (in a thread) over a real database,

* SQLite: a file in a temporary directory;
* PostgreSQL: a fresh database per test module (dropped afterwards) on the server at ``ZHISUAN_TEST_POSTGRES_URL``
  (default ``postgresql://postgres@127.0.0.1:5432/test``). When no PostgreSQL server answers, those runs are
  skipped with a loud reason (and a warning in the summary).

Each stack is bootstrapped from ``seeds/policy.yaml`` (tenants acme, sme-vision, ...) and the nodes of
``seeds/clusters/local.yaml`` (2 × 8 H100, 2 × 8 Ascend910B, 1 × 4 MLU590), and gets users and tokens:
``alice@acme`` (tenant-user), ``boss@acme`` (tenant-admin), ``bob@sme-vision`` (tenant-user), a node token.
"""

from __future__ import annotations

import os
import secrets
import socket
import ssl
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import Engine, Table, func, select

from api.app import create_app
from api.db import make_engine
from api.deps import AppContext
from api.settings import Settings
from api.tables import TABLES
from scheduler.catalog import SEEDS_DIR

POSTGRES_URL = os.environ.get("ZHISUAN_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
POLICY = SEEDS_DIR / "policy.yaml"
CLUSTER = SEEDS_DIR / "clusters" / "local.yaml"
_postgres: dict[str, str | None] = {}
#: One TLS context for every client (building one per client costs ~50 ms; the tests speak plain HTTP anyway).
SSL = ssl.create_default_context()


def postgres_available() -> str | None:
    """None if PostgreSQL answers, else why not (checked once per session)."""
    if "error" not in _postgres:
        try:
            import psycopg

            with psycopg.connect(POSTGRES_URL, connect_timeout=3, autocommit=True) as conn:
                conn.execute("SELECT 1")
            _postgres["error"] = None
        except Exception as err:
            reason = f"{err.__class__.__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            _postgres["error"] = reason
            warnings.warn(
                f"PostgreSQL at {POSTGRES_URL} does not answer ({reason}): the PostgreSQL API tests are SKIPPED",
                stacklevel=1,
            )
    return _postgres["error"]


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


def create_postgres_database() -> str:
    import psycopg

    name = f"zs_test_{os.getpid()}_{secrets.token_hex(4)}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return _with_database(POSTGRES_URL, name)


def drop_postgres_database(url: str) -> None:
    import psycopg

    name = urlsplit(url).path.lstrip("/")
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'zhisuan.db'}"
        return
    error = postgres_available()
    if error is not None:
        pytest.skip(
            f"PostgreSQL NOT TESTED: no server at {POSTGRES_URL} ({error}); start one or set ZHISUAN_TEST_POSTGRES_URL"
        )
    url = create_postgres_database()
    try:
        yield url
    finally:
        drop_postgres_database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database for one test (migrations start from nothing), on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    error = postgres_available()
    if error is not None:
        pytest.skip(f"PostgreSQL NOT TESTED: {error}")
    url = create_postgres_database()
    try:
        yield url
    finally:
        drop_postgres_database(url)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """uvicorn serving ``app`` in a thread."""

    def __init__(self, app: FastAPI) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the API server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


@dataclass
class Stack:
    url: str
    database_url: str
    app: FastAPI
    engine: Engine
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def ctx(self) -> AppContext:
        ctx: AppContext = self.app.state.ctx
        return ctx

    def client(self, who: str | None = None, token: str | None = None) -> httpx.Client:
        headers = {}
        secret = token if token is not None else (self.tokens[who] if who else None)
        if secret is not None:
            headers["Authorization"] = f"Bearer {secret}"
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, verify=SSL)

    def counts(self) -> dict[str, int]:
        """Rows per table (to assert that a refused request wrote nothing)."""
        with self.engine.connect() as conn:
            return {t.name: conn.execute(select(func.count()).select_from(t)).scalar_one() for t in TABLES}

    def rows(self, table: Table, *where: Any) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(table).where(*where)).mappings()]


def make_settings(database_url: str, tmp: Path, **changes: Any) -> Settings:
    base = Settings(
        database_url=database_url,
        policy_file=POLICY,
        cluster_file=CLUSTER,
        rate_per_s=0.0,
        rate_burst=0.0,
        heartbeat_interval_s=1.0,
        cache_refresh_s=0.2,
        busy_timeout_ms=5000,
        admin_token_file=tmp / "admin-token",
    )
    return base.with_(**changes)


def provision(stack: Stack) -> None:
    """Users and tokens every test module uses."""
    admin = stack.ctx.bootstrap_token
    assert admin is not None, "bootstrap created no admin token"
    stack.tokens["admin"] = admin
    with stack.client("admin") as c:
        for name, tenant, role in (
            ("alice", "acme", "tenant-user"),
            ("boss", "acme", "tenant-admin"),
            ("bob", "sme-vision", "tenant-user"),
        ):
            r = c.post("/v1/users", json={"name": name, "tenant": tenant, "role": role})
            assert r.status_code == 201, r.text
            r = c.post("/v1/tokens", json={"user": f"{name}@{tenant}", "name": "tests"})
            assert r.status_code == 201, r.text
            stack.tokens[name] = r.json()["token"]
        r = c.post("/v1/nodes/tokens", json={"node_id": None})
        assert r.status_code == 201, r.text
        stack.tokens["node"] = r.json()["token"]


@pytest.fixture(scope="module")
def stack(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("stack")
    app = create_app(make_settings(database_url, tmp))
    engine = make_engine(database_url)
    with Server(app) as server:
        s = Stack(server.url, database_url, app, engine)
        provision(s)
        yield s
    engine.dispose()


def assert_problem(response: httpx.Response, status: int, slug: str, *words: str) -> dict[str, Any]:
    """A problem+json with this status and type whose detail mentions ``words``."""
    assert response.status_code == status, f"{response.status_code} {response.text}"
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body: dict[str, Any] = response.json()
    assert body["type"] == f"https://zhisuan.dev/problems/{slug}", body
    assert body["status"] == status and body["title"] and body["detail"], body
    for word in words:
        assert word.lower() in body["detail"].lower(), (word, body["detail"])
    return body


JOB = {"name": "train-1", "devices_per_worker": 1, "entrypoint": "python train.py"}
