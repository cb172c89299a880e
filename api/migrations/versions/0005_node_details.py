"""What the agents report about their vendors and devices (issues 14 and 17).

* ``nodes.shims``: each vendor the agent tried at registration (state, reason, tool and driver versions, command).
* ``devices.health``: ``healthy`` / ``unhealthy`` / ``unknown`` as last reported (``healthy`` alone cannot say
  ``unknown``); ``health_reason`` now explains ``unknown`` too. Existing rows get ``unhealthy`` where they are not
  healthy and ``healthy`` otherwise, which is what they showed.
* ``devices.vendor``, ``name``, ``other_names``, ``model_known``, ``notes``: what discovery reported, so the names
  the catalog does not know are visible without the node; ``parent_uuid``, ``fraction``, ``profile``: MIG devices.

Columns only, added and dropped in place on both databases (``ALTER TABLE ... ADD/DROP COLUMN``; SQLite 3.35 or
newer for the downgrade): no table is rebuilt, so the change-feed triggers of 0002 and the device rows stay.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

JSON_VALUE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DEVICE_COLUMNS = (
    "health",
    "vendor",
    "name",
    "other_names",
    "model_known",
    "notes",
    "parent_uuid",
    "fraction",
    "profile",
)


def _empty_list() -> sa.TextClause:
    return sa.text("'[]'")


def upgrade() -> None:
    op.add_column("nodes", sa.Column("shims", JSON_VALUE, nullable=False, server_default=_empty_list()))
    op.add_column("devices", sa.Column("health", sa.String(), nullable=False, server_default="unknown"))
    op.add_column("devices", sa.Column("vendor", sa.String(), nullable=False, server_default=""))
    op.add_column("devices", sa.Column("name", sa.String(), nullable=False, server_default=""))
    op.add_column("devices", sa.Column("other_names", JSON_VALUE, nullable=False, server_default=_empty_list()))
    op.add_column("devices", sa.Column("model_known", sa.Boolean(), nullable=True))
    op.add_column("devices", sa.Column("notes", JSON_VALUE, nullable=False, server_default=_empty_list()))
    op.add_column("devices", sa.Column("parent_uuid", sa.String(), nullable=True))
    op.add_column("devices", sa.Column("fraction", sa.Float(), nullable=True))
    op.add_column("devices", sa.Column("profile", sa.String(), nullable=True))
    devices = sa.table("devices", sa.column("healthy", sa.Boolean()), sa.column("health", sa.String()))
    op.execute(devices.update().values(health=sa.case((devices.c.healthy, "healthy"), else_="unhealthy")))


def downgrade() -> None:
    # DROP COLUMN in place (SQLite >= 3.35 has it): batch mode would rebuild ``nodes`` by dropping it, which with
    # foreign keys on deletes every device row (ON DELETE CASCADE) and drops the change-feed triggers.
    for column in _DEVICE_COLUMNS:
        op.drop_column("devices", column)
    op.drop_column("nodes", "shims")
