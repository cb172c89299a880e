"""A real Zhisuan API server for the CLI and SDK tests, and the scheduler service's writes done by hand.

The server is ``api.app.create_app`` served by uvicorn on 127.0.0.1 (a free port, in a background thread) on a
SQLite file; the example policy and cluster are loaded by the server's own bootstrap, which also writes the
first center-admin token to a file (``ZHISUAN_ADMIN_TOKEN_FILE``) — the tests log in with that, as an operator
would. Nothing schedules jobs here: tests move a job (start it, write its log, end it) in the database the way
``scheduler/live/service.py`` does, through ``api.db.transition`` and the ``job_logs`` table.

(A module of its own, not ``conftest``: several test folders have a conftest.py, so ``from conftest import``
would pick whichever was imported first.)
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from sqlalchemy import Engine, insert, select

from api.app import create_app
from api.client import ZhisuanClient
from api.db import append_event, make_engine, transition, write_session
from api.settings import Settings
from api.tables import JOB_LOGS, JOBS

ROOT = Path(__file__).resolve().parents[2]
SEEDS = ROOT / "seeds"


@dataclass
class Server:
    url: str
    port: int
    engine: Engine
    admin_token: str
    tenant_token: str  # alice@acme, tenant-admin of acme
    user_token: str  # bob@acme, tenant-user of acme

    def client(self, token: str | None = None, url: str | None = None, **kwargs: Any) -> ZhisuanClient:
        """An SDK client of this server (or of ``url``, a proxy in front of it), as alice unless told."""
        return ZhisuanClient(url or self.url, self.tenant_token if token is None else token, **kwargs)


@contextmanager
def running_server(root: Path) -> Iterator[Server]:
    """Serve a fresh database under ``root`` until the block ends; alice and bob of acme have tokens."""
    database_url = f"sqlite:///{root / 'zhisuan.db'}"
    settings = Settings(
        database_url=database_url,
        rate_per_s=0.0,
        rate_burst=0.0,
        policy_file=SEEDS / "policy.yaml",
        cluster_file=SEEDS / "clusters" / "example.yaml",
        admin_token_file=root / "admin.token",
        token_cache_s=0.5,
        cache_refresh_s=0.2,
    )
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(settings), log_level="warning", access_log=False, lifespan="on")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
    thread.start()
    engine = make_engine(database_url)
    try:
        deadline = time.monotonic() + 60
        while not uv.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the API server did not start")
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}"
        admin_token = (root / "admin.token").read_text().strip()
        with ZhisuanClient(url, admin_token) as admin:
            admin.create_user("alice", tenant="acme", role="tenant-admin")
            admin.create_user("bob", tenant="acme", role="tenant-user")
            alice = admin.create_token("alice@acme", name="tests").token
            bob = admin.create_token("bob@acme", name="tests").token
        assert alice is not None and bob is not None
        yield Server(url, port, engine, admin_token, alice, bob)
    finally:
        uv.should_exit = True
        thread.join(timeout=10)
        engine.dispose()
        sock.close()


# ------------------------------------------------------------------------------ what the service would do


def _move(engine: Engine, job_id: str, event: str, note: str = "", **changes: Any) -> None:
    with write_session(engine) as session:
        row = session.execute(select(JOBS.c.version).where(JOBS.c.id == job_id)).one()
        assert transition(session, job_id, row.version, **changes), f"job {job_id} moved under us"
        append_event(session, job_id, event, note)


def set_forecast(engine: Engine, job_id: str, reasons: list[dict[str, Any]], start: float, finish: float) -> None:
    _move(engine, job_id, "waiting", reasons=reasons, estimated_start=start, estimated_finish=finish)


def start_job(engine: Engine, job_id: str, node: str = "bj1-h100-0", devices: tuple[int, ...] = (0,)) -> None:
    now = time.time()
    placement = {
        "model": "H100",
        "pool": "bj1/H100",
        "topology": "node",
        "workers": [{"rank": 0, "node": node, "devices": list(devices), "milli": 1000}],
    }
    _move(
        engine,
        job_id,
        "started",
        f"started on {node}",
        state="running",
        started_at=now,
        placement=placement,
        reasons=[],
        estimated_finish=now + 600,
    )


def finish_job(engine: Engine, job_id: str, state: str = "succeeded", exit_code: int = 0, message: str = "") -> None:
    _move(
        engine,
        job_id,
        state,
        message or state,
        state=state,
        finished_at=time.time(),
        exit_code=exit_code,
        message=message,
    )


def write_log(engine: Engine, job_id: str, text: str, rank: int = 0, attempt: int = 0) -> None:
    """Append ``text`` to a worker's log, at the byte offset where its log ends now."""
    with write_session(engine) as session:
        rows = session.execute(
            select(JOB_LOGS.c.offset, JOB_LOGS.c.text).where(
                JOB_LOGS.c.job_id == job_id, JOB_LOGS.c.rank == rank, JOB_LOGS.c.attempt == attempt
            )
        ).all()
        offset = max((o + len(t.encode()) for o, t in rows), default=0)
        session.execute(insert(JOB_LOGS).values(job_id=job_id, attempt=attempt, rank=rank, offset=offset, text=text))
