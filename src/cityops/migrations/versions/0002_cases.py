"""the case loop: cases, history, reporters, attachments, idempotency keys, outbox, calendar

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import cityops.core.db

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
OPEN_SQL = "status IN ('reported', 'registered', 'dispatched', 'in_progress', 'resolved')"
Json = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def _time(name: str, nullable: bool = True) -> sa.Column[object]:
    return sa.Column(name, cityops.core.db.UTCDateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "calendar_overrides",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("working", sa.Boolean(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("updated_by", sa.String(length=64), nullable=False),
        _time("updated_at", nullable=False),
        sa.PrimaryKeyConstraint("day", name=op.f("pk_calendar_overrides")),
    )
    op.create_table(
        "calendar_years",
        sa.Column("year", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("confirmed_by", sa.String(length=64), nullable=False),
        _time("confirmed_at", nullable=False),
        sa.PrimaryKeyConstraint("year", name=op.f("pk_calendar_years")),
    )
    op.create_table(
        "outbox",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("uid", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("payload", Json, nullable=False),
        _time("created_at", nullable=False),
        _time("available_at", nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("claimed_by", sa.String(length=128), nullable=True),
        _time("claimed_until"),
        _time("done_at"),
        _time("failed_at"),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
    )
    op.create_index(
        "ix_outbox_pending",
        "outbox",
        ["available_at", "id"],
        postgresql_where=sa.text("done_at IS NULL AND failed_at IS NULL"),
        sqlite_where=sa.text("done_at IS NULL AND failed_at IS NULL"),
    )
    op.create_table(
        "cases",
        sa.Column("pk", BigId, autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("category", sa.String(length=40), nullable=False),
        sa.Column("urgency", sa.String(length=16), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("lon", sa.Float(), nullable=False),
        sa.Column("lat", sa.Float(), nullable=False),
        sa.Column("address", sa.String(length=256), nullable=False),
        sa.Column("district", sa.String(length=6), nullable=False),
        sa.Column("street", sa.String(length=9), nullable=False),
        sa.Column("community", sa.String(length=12), nullable=False),
        sa.Column("grid_code", sa.String(length=15), nullable=False),
        sa.Column("component_id", sa.String(length=32), nullable=True),
        sa.Column("suggested_department", sa.String(length=64), nullable=True),
        sa.Column("dispatch_rule", sa.String(length=64), nullable=False),
        sa.Column("department", sa.String(length=64), nullable=True),
        sa.Column("assisting", Json, nullable=False),
        sa.Column("reported_by", sa.String(length=64), nullable=False),
        _time("reported_at", nullable=False),
        _time("registered_at"),
        _time("dispatched_at"),
        _time("accepted_at"),
        _time("resolved_at"),
        _time("closed_at"),
        _time("ended_at"),
        sa.Column("stage", sa.String(length=16), nullable=True),
        _time("stage_started_at"),
        _time("due_at"),
        sa.Column("due_provisional", sa.Boolean(), nullable=False),
        _time("handling_due_at"),
        sa.Column("extension_request", Json, nullable=True),
        sa.Column("extensions_granted", sa.Integer(), nullable=False),
        sa.Column("escalation_level", sa.Integer(), nullable=False),
        _time("next_escalation_at"),
        sa.Column("dispatch_count", sa.Integer(), nullable=False),
        sa.Column("send_back_count", sa.Integer(), nullable=False),
        sa.Column("rework_count", sa.Integer(), nullable=False),
        sa.Column("handling_minutes", sa.Integer(), nullable=True),
        sa.Column("on_time", sa.Boolean(), nullable=True),
        sa.Column("merged_into", sa.String(length=16), nullable=True),
        sa.Column("likely_duplicates", Json, nullable=False),
        sa.Column("has_duplicates", sa.Boolean(), nullable=False),
        sa.Column("feedback_contacted", sa.Boolean(), nullable=True),
        sa.Column("feedback_solved", sa.Boolean(), nullable=True),
        sa.Column("satisfaction", sa.String(length=24), nullable=True),
        _time("updated_at", nullable=False),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_cases")),
        sa.UniqueConstraint("id", name=op.f("uq_cases_id")),
    )
    op.create_index("ix_cases_area", "cases", ["district", "street", "community", "grid_code"])
    op.create_index("ix_cases_status_due", "cases", ["status", "due_at"])
    op.create_index("ix_cases_department_status", "cases", ["department", "status"])
    op.create_index(
        "ix_cases_open_category_lat",
        "cases",
        ["category", "lat"],
        postgresql_where=sa.text(OPEN_SQL),
        sqlite_where=sa.text(OPEN_SQL),
    )
    op.create_index("ix_cases_reported_at", "cases", ["reported_at"])
    op.create_index(
        "ix_cases_next_escalation",
        "cases",
        ["next_escalation_at"],
        postgresql_where=sa.text("next_escalation_at IS NOT NULL"),
        sqlite_where=sa.text("next_escalation_at IS NOT NULL"),
    )
    op.create_table(
        "case_events",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("case_pk", BigId, nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(length=24), nullable=False),
        sa.Column("from_status", sa.String(length=16), nullable=True),
        sa.Column("to_status", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=24), nullable=False),
        _time("at", nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("department", sa.String(length=64), nullable=True),
        _time("stage_due_at"),
        sa.Column("data", Json, nullable=False),
        sa.ForeignKeyConstraint(
            ["case_pk"], ["cases.pk"], name=op.f("fk_case_events_case_pk_cases")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_case_events")),
    )
    op.create_index("uq_case_events_case_seq", "case_events", ["case_pk", "seq"], unique=True)
    op.create_index(
        "ix_case_events_checks",
        "case_events",
        ["actor", "at"],
        postgresql_where=sa.text("action IN ('verify', 'check')"),
        sqlite_where=sa.text("action IN ('verify', 'check')"),
    )
    op.create_table(
        "case_reporters",
        sa.Column("pk", BigId, autoincrement=True, nullable=False),
        sa.Column("case_pk", BigId, nullable=False),
        sa.Column("user_id", BigId, nullable=True),
        sa.Column("username", sa.String(length=64), nullable=True),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("name_enc", sa.Text(), nullable=True),
        sa.Column("phone_enc", sa.Text(), nullable=True),
        sa.Column("email_enc", sa.Text(), nullable=True),
        sa.Column("notify", sa.Boolean(), nullable=False),
        sa.Column("merged_from", sa.String(length=16), nullable=True),
        _time("created_at", nullable=False),
        sa.ForeignKeyConstraint(
            ["case_pk"], ["cases.pk"], name=op.f("fk_case_reporters_case_pk_cases")
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_case_reporters")),
    )
    op.create_index("ix_case_reporters_case", "case_reporters", ["case_pk"])
    op.create_index("ix_case_reporters_user", "case_reporters", ["user_id"])
    op.create_table(
        "case_attachments",
        sa.Column("pk", BigId, autoincrement=True, nullable=False),
        sa.Column("case_pk", BigId, nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("content_type", sa.String(length=64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("filename", sa.String(length=256), nullable=False),
        sa.Column("uploaded_by", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        _time("at", nullable=False),
        sa.ForeignKeyConstraint(
            ["case_pk"], ["cases.pk"], name=op.f("fk_case_attachments_case_pk_cases")
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_case_attachments")),
    )
    op.create_index("ix_case_attachments_case", "case_attachments", ["case_pk"])
    op.create_table(
        "case_idempotency",
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("case_pk", BigId, nullable=False),
        sa.Column("response", Json, nullable=False),
        _time("created_at", nullable=False),
        sa.PrimaryKeyConstraint("username", "key", name=op.f("pk_case_idempotency")),
    )


def downgrade() -> None:
    op.drop_table("case_idempotency")
    op.drop_index("ix_case_attachments_case", table_name="case_attachments")
    op.drop_table("case_attachments")
    op.drop_index("ix_case_reporters_user", table_name="case_reporters")
    op.drop_index("ix_case_reporters_case", table_name="case_reporters")
    op.drop_table("case_reporters")
    op.drop_index("ix_case_events_checks", table_name="case_events")
    op.drop_index("uq_case_events_case_seq", table_name="case_events")
    op.drop_table("case_events")
    for name in (
        "ix_cases_next_escalation",
        "ix_cases_reported_at",
        "ix_cases_open_category_lat",
        "ix_cases_department_status",
        "ix_cases_status_due",
        "ix_cases_area",
    ):
        op.drop_index(name, table_name="cases")
    op.drop_table("cases")
    op.drop_index("ix_outbox_pending", table_name="outbox")
    op.drop_table("outbox")
    op.drop_table("calendar_years")
    op.drop_table("calendar_overrides")
