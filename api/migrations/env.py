"""Alembic environment: migrates the database of ``api.db.migrate`` (a connection it passes) or, from the
``alembic`` command line, of ``ZHISUAN_DATABASE_URL`` / ``sqlalchemy.url``."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Connection

from api.db import make_engine, normalise_url
from api.tables import METADATA


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=METADATA,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations() -> None:
    config = context.config
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = os.environ.get("ZHISUAN_DATABASE_URL") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("set ZHISUAN_DATABASE_URL (or sqlalchemy.url) to the database to migrate")
    if context.is_offline_mode():
        context.configure(url=normalise_url(url), target_metadata=METADATA, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            _run(conn)
            conn.commit()
    finally:
        engine.dispose()


# Alembic installs ``context.config`` only while it runs this file; importing it elsewhere (doctest
# collection, tooling) must do nothing.
if hasattr(context, "config"):
    run_migrations()
