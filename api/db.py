"""Database adapter: engines for SQLite and PostgreSQL, sessions, migrations, and the job write helpers.

* SQLite (the embedded default) runs in WAL mode with ``synchronous=NORMAL``, a busy timeout and foreign keys
  on. The driver's implicit transactions are turned off and SQLAlchemy emits ``BEGIN`` itself, so a read in a
  transaction sees one snapshot, and a *write* transaction (:func:`write_engine`, :func:`write_session`) starts
  with ``BEGIN IMMEDIATE``: it takes the write lock first (waiting up to the busy timeout) instead of failing
  with ``SQLITE_BUSY`` when it upgrades from a stale read snapshot. Everything that reads then writes (counting
  active jobs before inserting, optimistic updates) must run in a write transaction.
* PostgreSQL goes through psycopg 3: ``postgresql://`` and ``postgres://`` URLs are normalised to
  ``postgresql+psycopg://``.
* :func:`migrate` upgrades a database to the newest Alembic revision (run at server start; safe to run from
  several processes at once on PostgreSQL, which serialises it with an advisory lock).
* :func:`transition` is the only way a job row changes state: ``UPDATE ... WHERE id = ? AND version = ?``,
  bumping ``version``. It returns False when another writer got there first; re-read and decide again.

    >>> normalise_url("postgresql://postgres@127.0.0.1:5432/test")
    'postgresql+psycopg://postgres@127.0.0.1:5432/test'
    >>> normalise_url("postgres://u@h/db")
    'postgresql+psycopg://u@h/db'
    >>> normalise_url("sqlite:///./.zhisuan/zhisuan.db")
    'sqlite:///./.zhisuan/zhisuan.db'
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import orjson
from sqlalchemy import Connection, CursorResult, Engine, create_engine, event, insert, text, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.pool import ConnectionPoolEntry, StaticPool
from sqlmodel import Session

from api.tables import JOB_EVENTS, JOBS, METADATA

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: Arbitrary constant for ``pg_advisory_lock`` around migrations and bootstrap ("zhisuan" in ASCII, truncated).
ADVISORY_LOCK_MIGRATE = 0x7A68697375616E
#: Execution option that makes a SQLite transaction begin with ``BEGIN IMMEDIATE``.
_WRITE = "zhisuan_write"

__all__ = [
    "METADATA",
    "DatabaseUnavailable",
    "append_event",
    "current_revision",
    "head_revision",
    "is_sqlite",
    "is_unavailable",
    "make_engine",
    "migrate",
    "normalise_url",
    "transition",
    "write_engine",
    "write_session",
]


class DatabaseUnavailable(RuntimeError):
    """The database did not answer (connection refused, locked beyond the busy timeout, pool exhausted)."""


def normalise_url(url: str) -> str:
    """Use psycopg 3 for PostgreSQL whatever driver the URL names (or none)."""
    for prefix in ("postgresql+psycopg2://", "postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def is_sqlite(target: Engine | Connection | str) -> bool:
    if isinstance(target, str):
        return make_url(normalise_url(target)).get_backend_name() == "sqlite"
    dialect = target.dialect
    return dialect.name == "sqlite"


def make_engine(
    url: str,
    *,
    busy_timeout_ms: int = 5000,
    connect_timeout_s: int = 5,
    pool_size: int = 8,
    echo: bool = False,
) -> Engine:
    """An engine for ``url`` with the pragmas and transaction handling described in the module docstring."""
    url = normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        in_memory = database in ("", ":memory:")
        if not in_memory and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        # An in-memory database lives in one connection: every session must share it (StaticPool).
        pooling: dict[str, Any] = (
            {"poolclass": StaticPool} if in_memory else {"pool_size": pool_size, "max_overflow": pool_size * 2}
        )
        engine = create_engine(
            url,
            echo=echo,
            json_serializer=_json_dumps,
            json_deserializer=orjson.loads,
            connect_args={"check_same_thread": False, "timeout": busy_timeout_ms / 1000},
            **pooling,
        )
        _sqlite_events(engine, busy_timeout_ms)
        return engine
    return create_engine(
        url,
        echo=echo,
        json_serializer=_json_dumps,
        json_deserializer=orjson.loads,
        pool_size=pool_size,
        max_overflow=pool_size * 2,
        pool_pre_ping=True,
        pool_recycle=1800,
        pool_timeout=connect_timeout_s,
        connect_args={"connect_timeout": max(1, connect_timeout_s)},
    )


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def _sqlite_events(engine: Engine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Let SQLAlchemy emit BEGIN (see _on_begin) instead of pysqlite's implicit transactions, which start
        # only at the first INSERT/UPDATE and so leave earlier SELECTs outside the transaction.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            cursor.execute("PRAGMA foreign_keys=ON")
            # 32 MiB of page cache per connection (the default is 2 MiB): the job indexes stay in memory.
            cursor.execute("PRAGMA cache_size=-32768")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")


def write_engine(engine: Engine) -> Engine:
    """The same engine (same pool) whose transactions are write transactions (``BEGIN IMMEDIATE`` on SQLite)."""
    return engine.execution_options(**{_WRITE: True})


@contextmanager
def write_session(engine: Engine) -> Iterator[Session]:
    """A session in a write transaction, committed when the block ends normally, rolled back otherwise."""
    with Session(write_engine(engine), expire_on_commit=False) as session, session.begin():
        yield session


@contextmanager
def read_session(engine: Engine) -> Iterator[Session]:
    with Session(engine, expire_on_commit=False) as session:
        yield session


def is_unavailable(err: BaseException) -> bool:
    """Whether an exception means "the database cannot be reached or is busy now" (retrying may help)."""
    if isinstance(err, DatabaseUnavailable | sa_exc.TimeoutError):
        return True
    if isinstance(err, sa_exc.OperationalError | sa_exc.InterfaceError):
        return True
    return isinstance(err, sa_exc.DBAPIError) and bool(err.connection_invalidated)


# ------------------------------------------------------------------------------------------------- jobs


def transition(session: Session | Connection, job_id: str, expected_version: int, /, **changes: Any) -> bool:
    """Apply ``changes`` to job ``job_id`` if its version is still ``expected_version``; bump the version.

    ``updated_at`` defaults to now. Returns False (and changes nothing) when the row moved or does not exist.
    Call it inside a write transaction; on SQLite that is :func:`write_session`.
    """
    values: dict[str, Any] = {"updated_at": time.time(), **changes, "version": expected_version + 1}
    for key in values:
        if key not in JOBS.c or key == "id":
            raise ValueError(f"jobs has no column {key!r} to change")
    statement = update(JOBS).where(JOBS.c.id == job_id, JOBS.c.version == expected_version).values(values)
    result = cast(CursorResult[Any], session.execute(statement))
    return result.rowcount == 1


def append_event(
    session: Session | Connection,
    job_id: str,
    kind: str,
    message: str = "",
    data: Mapping[str, Any] | None = None,
    at: float | None = None,
) -> None:
    """Append one event to a job's history (in the caller's transaction)."""
    session.execute(
        insert(JOB_EVENTS).values(
            job_id=job_id, at=time.time() if at is None else at, kind=kind, message=message, data=dict(data or {})
        )
    )


# ------------------------------------------------------------------------------------------- migrations


def alembic_config(url: str) -> Any:
    """An Alembic ``Config`` for the packaged migrations, with no ini file needed."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolates %; a password may contain one.
    config.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return config


def migrate(target: str | Engine) -> None:
    """Upgrade the database to the newest migration (creates everything on an empty database)."""
    from alembic import command

    engine = make_engine(target) if isinstance(target, str) else target
    try:
        with engine.connect() as connection:
            postgres = not is_sqlite(connection)
            if postgres:
                connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": ADVISORY_LOCK_MIGRATE})
                connection.commit()
            try:
                config = alembic_config(engine.url.render_as_string(hide_password=False))
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
                connection.commit()
            finally:
                if postgres:
                    connection.rollback()
                    connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_LOCK_MIGRATE})
                    connection.commit()
    finally:
        if isinstance(target, str):
            engine.dispose()


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def current_revision(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()
