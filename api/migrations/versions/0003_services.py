"""Served inference (issue 16): services, their replicas, service keys, routers' load reports, usage per hour.

* ``services``: a deployed service (tenant + name unique), its spec and revision, the controller's desired count.
* ``service_replicas``: one row per replica, keyed by its job (``jobs.id``): URL, health, drain; kept with
  ``ended_at`` once its job ended (a service's bill adds up its replicas' ledger entries).
* ``service_keys``: keys scoped to one service (SHA-256 of the secret only), revocable.
* ``service_load``: the newest report of each router about each service.
* ``service_usage``: requests, errors and tokens per service and hour (no foreign key: kept for the bill after
  the service is deleted).

No table here is followed by the change feed: the controller reads them at its own period.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

JSON_VALUE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "services",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("user", sa.String(), nullable=False),
        sa.Column("queue", sa.String(), nullable=False),
        sa.Column("spec", JSON_VALUE, nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("desired", sa.Integer(), nullable=True),
        sa.Column("message", sa.String(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_services")),
        sa.UniqueConstraint("tenant", "name", name=op.f("uq_services_tenant_name")),
    )
    op.create_table(
        "service_replicas",
        sa.Column("job_id", sa.String(), nullable=False),
        sa.Column("service_id", sa.String(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("url", sa.String(), nullable=True),
        sa.Column("url_attempt", sa.Integer(), nullable=True),
        sa.Column("ready_at", sa.Float(), nullable=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("draining_since", sa.Float(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("ended_at", sa.Float(), nullable=True),
        sa.Column("message", sa.String(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_service_replicas_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_service_replicas")),
    )
    op.create_index(op.f("ix_service_replicas_service_id"), "service_replicas", ["service_id"])
    op.create_table(
        "service_keys",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("service_id", sa.String(), nullable=False),
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("secret_hash", sa.String(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("created_by", sa.String(), nullable=False),
        sa.Column("revoked_at", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["service_id"], ["services.id"], name=op.f("fk_service_keys_service_id_services"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_service_keys")),
    )
    op.create_index(op.f("ix_service_keys_service_id"), "service_keys", ["service_id"])
    op.create_table(
        "service_load",
        sa.Column("router", sa.String(), nullable=False),
        sa.Column("service_id", sa.String(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("window_s", sa.Float(), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("errors", sa.Integer(), nullable=False),
        sa.Column("rejected", sa.Integer(), nullable=False),
        sa.Column("ongoing", sa.Float(), nullable=False),
        sa.Column("queued", sa.Float(), nullable=False),
        sa.Column("p50_ms", sa.Float(), nullable=True),
        sa.Column("p99_ms", sa.Float(), nullable=True),
        sa.Column("tokens", sa.Integer(), nullable=False),
        sa.Column("replicas", JSON_VALUE, nullable=False),
        sa.ForeignKeyConstraint(
            ["service_id"], ["services.id"], name=op.f("fk_service_load_service_id_services"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("router", "service_id", name=op.f("pk_service_load")),
    )
    op.create_index(op.f("ix_service_load_at"), "service_load", ["at"])
    op.create_table(
        "service_usage",
        sa.Column("service_id", sa.String(), nullable=False),
        sa.Column("hour", sa.Float(), nullable=False),
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("errors", sa.Integer(), nullable=False),
        sa.Column("rejected", sa.Integer(), nullable=False),
        sa.Column("tokens", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("service_id", "hour", name=op.f("pk_service_usage")),
    )
    op.create_index("ix_service_usage_tenant_hour", "service_usage", ["tenant", "hour"])


def downgrade() -> None:
    op.drop_index("ix_service_usage_tenant_hour", table_name="service_usage")
    op.drop_table("service_usage")
    op.drop_index(op.f("ix_service_load_at"), table_name="service_load")
    op.drop_table("service_load")
    op.drop_index(op.f("ix_service_keys_service_id"), table_name="service_keys")
    op.drop_table("service_keys")
    op.drop_index(op.f("ix_service_replicas_service_id"), table_name="service_replicas")
    op.drop_table("service_replicas")
    op.drop_table("services")
