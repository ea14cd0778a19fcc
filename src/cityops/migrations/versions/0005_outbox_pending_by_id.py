"""outbox: the pending-events index in claiming order

Workers claim the oldest due events (``ORDER BY id LIMIT n``). With the pending index keyed on
``(available_at, id)`` SQLite walked the whole table in id order instead — done events
included — to avoid a sort: 88 ms per claim once the log held 400,000 done events, so a
worker fell further behind the longer it ran. Keyed on ``(id, available_at)`` the claim walks
only the pending entries, in order (0.15 ms).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

PENDING_SQL = "done_at IS NULL AND failed_at IS NULL"


def _recreate(columns: list[str]) -> None:
    op.drop_index("ix_outbox_pending", table_name="outbox")
    op.create_index(
        "ix_outbox_pending",
        "outbox",
        columns,
        postgresql_where=sa.text(PENDING_SQL),
        sqlite_where=sa.text(PENDING_SQL),
    )


def upgrade() -> None:
    _recreate(["id", "available_at"])


def downgrade() -> None:
    _recreate(["available_at", "id"])
