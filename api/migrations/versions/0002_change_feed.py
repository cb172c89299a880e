"""The change feed, node leases and the device health history (issue 18).

* ``changes``: an outbox that database triggers fill, so that every writer — the API's group commit, a cancel, the
  scheduler, a node agent's registration, an operator's cordon, a token revocation — feeds it without knowing it:
  a job inserted or moved (state or version), a node inserted, deleted, described anew, one of its devices' health
  flipped, or its lease back after lapsing; a policy version; a token or user changed. Lease renewals, reasons and
  estimated starts write none, so an idle center writes none. On PostgreSQL each change also ``NOTIFY``s
  ``zhisuan_changes`` (payload: the entity), which wakes the scheduler and the API's caches in other processes.
* ``nodes.lease_expires_at`` (indexed): when an agent's node stops being up unless it heartbeats again.
* ``device_health_events``: each change of a device's health as reported (``devices`` keeps the latest).

A later migration that rebuilds ``jobs``, ``nodes``, ``devices``, ``api_tokens``, ``users`` or ``policy_versions``
(SQLite's batch mode copies a table and drops its triggers) must call :func:`create_triggers` again.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The columns of a node that the scheduler and the inventory snapshot read (a change of one is a change).
NODE_COLUMNS = (
    "hostname",
    "model",
    "vendor",
    "pool",
    "site",
    "region",
    "tier",
    "island",
    "switch",
    "devices",
    "cpu_milli",
    "memory_mib",
    "labels",
    "state",
    "source",
)
#: (trigger suffix, table, event, entity, key column, condition on OLD/NEW or None)
TRIGGERS: tuple[tuple[str, str, str, str, str, str | None], ...] = (
    ("jobs_insert", "jobs", "INSERT", "job", "id", None),
    ("jobs_update", "jobs", "UPDATE", "job", "id", "{distinct}(version, state)"),
    ("nodes_insert", "nodes", "INSERT", "node", "id", None),
    ("nodes_delete", "nodes", "DELETE", "node", "id", None),
    (
        "nodes_update",
        "nodes",
        "UPDATE",
        "node",
        "id",
        "{distinct}(" + ", ".join(NODE_COLUMNS) + ") OR (OLD.lease_expires_at < NEW.last_heartbeat)",
    ),
    ("devices_insert", "devices", "INSERT", "node", "node_id", None),
    ("devices_delete", "devices", "DELETE", "node", "node_id", None),
    ("devices_update", "devices", "UPDATE", "node", "node_id", "{distinct}(healthy)"),
    ("policy_insert", "policy_versions", "INSERT", "policy", "id", None),
    ("tokens_update", "api_tokens", "UPDATE", "token", "id", "{distinct}(revoked_at, expires_at, role, tenant)"),
    ("tokens_delete", "api_tokens", "DELETE", "token", "id", None),
    ("users_update", "users", "UPDATE", "user", "id", "{distinct}(disabled, role, tenant)"),
    ("users_delete", "users", "DELETE", "user", "id", None),
)


def _condition(template: str, dialect: str) -> str:
    """``{distinct}(a, b)`` → OLD.a/NEW.a compared null-safely, in the dialect's words."""
    head, _, rest = template.partition("{distinct}(")
    columns, _, tail = rest.partition(")")
    names = [c.strip() for c in columns.split(",")]
    if dialect == "postgresql":
        quoted = [f'"{c}"' for c in names]
        olds = ", ".join(f"OLD.{c}" for c in quoted)
        news = ", ".join(f"NEW.{c}" for c in quoted)
        compare = f"(ROW({olds}) IS DISTINCT FROM ROW({news}))"
    else:
        compare = "(" + " OR ".join(f'OLD."{c}" IS NOT NEW."{c}"' for c in names) + ")"
    return head + compare + tail


def create_triggers() -> None:
    bind = op.get_bind()
    dialect = bind.dialect.name
    if dialect == "postgresql":
        # One function per key type; NEW.<key> is resolved per table at run time. clock_timestamp, not now():
        # the row's time is when it was written, not when a long transaction began.
        op.execute(
            """
            CREATE OR REPLACE FUNCTION zhisuan_record_change() RETURNS trigger LANGUAGE plpgsql AS $$
            DECLARE
                changed text;
            BEGIN
                -- Separate branches: a record field is looked up when its statement runs, and jobs have no node_id.
                IF TG_ARGV[1] = 'node_id' THEN
                    IF TG_OP = 'DELETE' THEN changed := OLD.node_id::text; ELSE changed := NEW.node_id::text; END IF;
                ELSE
                    IF TG_OP = 'DELETE' THEN changed := OLD.id::text; ELSE changed := NEW.id::text; END IF;
                END IF;
                INSERT INTO changes (entity, key, at)
                    VALUES (TG_ARGV[0], changed, extract(epoch FROM clock_timestamp()));
                PERFORM pg_notify('zhisuan_changes', TG_ARGV[0]);
                RETURN NULL;
            END
            $$
            """
        )
        for suffix, table, event, entity, key, condition in TRIGGERS:
            when = f"WHEN ({_condition(condition, dialect)})" if condition else ""
            op.execute(
                f"CREATE TRIGGER zhisuan_change_{suffix} AFTER {event} ON {table} FOR EACH ROW {when} "
                f"EXECUTE FUNCTION zhisuan_record_change('{entity}', '{key}')"
            )
        return
    for suffix, table, event, entity, key, condition in TRIGGERS:
        row = "OLD" if event == "DELETE" else "NEW"
        when = f"WHEN {_condition(condition, dialect)}" if condition else ""
        op.execute(
            f"CREATE TRIGGER zhisuan_change_{suffix} AFTER {event} ON {table} FOR EACH ROW {when} BEGIN "
            f"INSERT INTO changes (entity, key, at) VALUES ('{entity}', CAST({row}.\"{key}\" AS TEXT), "
            "(julianday('now') - 2440587.5) * 86400.0); END"
        )


def drop_triggers() -> None:
    dialect = op.get_bind().dialect.name
    for suffix, table, *_ in TRIGGERS:
        if dialect == "postgresql":
            op.execute(f"DROP TRIGGER IF EXISTS zhisuan_change_{suffix} ON {table}")
        else:
            op.execute(f"DROP TRIGGER IF EXISTS zhisuan_change_{suffix}")
    if dialect == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS zhisuan_record_change()")


def upgrade() -> None:
    op.create_table(
        "changes",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False, autoincrement=True),
        sa.Column("entity", sa.String(), nullable=False),
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_changes")),
    )
    op.create_index("ix_changes_at", "changes", ["at"])
    op.add_column("nodes", sa.Column("lease_expires_at", sa.Float(), nullable=True))
    op.create_index("ix_nodes_lease_expires_at", "nodes", ["lease_expires_at"])
    op.create_table(
        "device_health_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.String(), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("uuid", sa.String(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("healthy", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.ForeignKeyConstraint(
            ["node_id"], ["nodes.id"], name=op.f("fk_device_health_events_node_id_nodes"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_device_health_events")),
    )
    op.create_index("ix_device_health_events_node_id_at", "device_health_events", ["node_id", "at"])
    create_triggers()


def downgrade() -> None:
    drop_triggers()
    op.drop_index("ix_device_health_events_node_id_at", table_name="device_health_events")
    op.drop_table("device_health_events")
    op.drop_index("ix_nodes_lease_expires_at", table_name="nodes")
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("lease_expires_at")
    op.drop_index("ix_changes_at", table_name="changes")
    op.drop_table("changes")
