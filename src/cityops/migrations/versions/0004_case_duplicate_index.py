"""likely-duplicate search: the open-case index carries longitude too

The duplicate search of every new case (cases/duplicates.yaml: same category, 50 m, 72 h)
scans the open cases of its category in a latitude band. With ``(category, lat)`` each entry
of the band cost a table-row lookup to test the longitude (≈ 600 rows, 1.2 ms per new case at
1,000,000 cases); with ``(category, lat, lon)`` the longitude is tested in the index and only
cases inside the box are read.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

OPEN_SQL = "status IN ('reported', 'registered', 'dispatched', 'in_progress', 'resolved')"


def _recreate(columns: list[str]) -> None:
    op.drop_index("ix_cases_open_category_lat", table_name="cases")
    op.create_index(
        "ix_cases_open_category_lat",
        "cases",
        columns,
        postgresql_where=sa.text(OPEN_SQL),
        sqlite_where=sa.text(OPEN_SQL),
    )


def upgrade() -> None:
    _recreate(["category", "lat", "lon"])


def downgrade() -> None:
    _recreate(["category", "lat"])
