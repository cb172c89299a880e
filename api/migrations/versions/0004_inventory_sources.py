"""Inventory sources (issue 15): the last publish of each source of nodes, and whether it is current.

* ``inventory_sources``: one row per source (``file``, ``kubernetes``): stale or not and why (the API server is
  down, RBAC denied...), when it last published and last changed a node, how often its publisher writes, how
  many nodes it has and may schedule, the nodes it left out and per node why it takes no work. ``GET
  /v1/inventory`` and ``zhisuan nodes`` read it. Not followed by the change feed: nodes themselves are.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

JSON_VALUE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "inventory_sources",
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("stale", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("changed_at", sa.Float(), nullable=False),
        sa.Column("every_s", sa.Float(), nullable=True),
        sa.Column("nodes", sa.Integer(), nullable=False),
        sa.Column("schedulable", sa.Integer(), nullable=False),
        sa.Column("left_out", JSON_VALUE, nullable=False),
        sa.Column("reasons", JSON_VALUE, nullable=False),
        sa.PrimaryKeyConstraint("source", name=op.f("pk_inventory_sources")),
    )


def downgrade() -> None:
    op.drop_table("inventory_sources")
