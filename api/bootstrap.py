"""First start of a server: the center admin, the first policy version, and nodes from a cluster file.

Idempotent: each step happens only if it has not happened before, in one write transaction (serialised across
processes: SQLite's write lock, PostgreSQL's advisory lock), so two servers starting together do not both create
an admin. The admin token is returned once — ``zhisuan server``/``up`` prints it and stores it in the CLI config
— and written to ``ZHISUAN_ADMIN_TOKEN_FILE`` (mode 0600) when that is set.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, func, insert, select, text

from api.auth import issue_token
from api.db import ADVISORY_LOCK_MIGRATE, is_sqlite, make_engine, migrate, write_session
from api.enums import NodeSource, Role
from api.inventory_sink import publish
from api.settings import Settings
from api.tables import POLICY_VERSIONS, USERS
from scheduler.catalog import Catalog, load_catalog
from scheduler.live.inventory.file import FileInventory
from scheduler.tenancy import load_policy

ADMIN_USER = "center"
log = logging.getLogger("zhisuan.api")


@dataclass
class BootstrapResult:
    admin_token: str | None = field(default=None, repr=False)
    admin_user: str | None = None
    policy_version: int | None = None
    nodes_loaded: int = 0


def bootstrap(engine: Engine, settings: Settings, catalog: Catalog | None = None) -> BootstrapResult:
    """Create what an empty database lacks (see the module docstring); returns what it created."""
    catalog = catalog or load_catalog()
    result = BootstrapResult()
    # Validate the files before touching the database: a bad file fails the start with a one-line message.
    policy = load_policy(settings.policy_file, catalog) if settings.policy_file is not None else None
    cluster = FileInventory(settings.cluster_file, catalog).inventory() if settings.cluster_file is not None else None
    now = time.time()
    with write_session(engine) as session:
        if not is_sqlite(engine):
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_MIGRATE + 1})
        if session.execute(select(func.count()).select_from(USERS)).scalar_one() == 0:
            session.execute(
                insert(USERS).values(
                    id=ADMIN_USER, tenant=None, name=ADMIN_USER, role=Role.CENTER_ADMIN.value, created_at=now
                )
            )
            created = issue_token(
                session, role=Role.CENTER_ADMIN, tenant=None, user_id=ADMIN_USER, name="bootstrap", now=now
            )
            result.admin_token = created["token"]
            result.admin_user = ADMIN_USER
        if policy is not None and session.execute(select(func.count()).select_from(POLICY_VERSIONS)).scalar_one() == 0:
            result.policy_version = session.execute(
                insert(POLICY_VERSIONS)
                .values(document=policy.document.model_dump(mode="json"), created_at=now, author="bootstrap")
                .returning(POLICY_VERSIONS.c.id)
            ).scalar_one()
        if cluster is not None:
            # The file's nodes are placeholders until their agents register them (the agents then own the rows).
            result.nodes_loaded = publish(session.connection(), NodeSource.FILE.value, cluster, now)
    if result.admin_token is not None and settings.admin_token_file is not None:
        write_secret(settings.admin_token_file, result.admin_token)
    return result


def write_secret(path: Path, secret: str) -> None:
    """Write a secret readable by its owner only (created 0600, never world-readable in between)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    os.chmod(path, 0o600)


def prepare(settings: Settings | None = None) -> BootstrapResult:
    """Migrate the database and bootstrap it (what ``zhisuan server`` does before it serves)."""
    settings = settings or Settings.from_env()
    engine = make_engine(settings.database_url, busy_timeout_ms=settings.busy_timeout_ms)
    try:
        migrate(engine)
        return bootstrap(engine, settings)
    finally:
        engine.dispose()
