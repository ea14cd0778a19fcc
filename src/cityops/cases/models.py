"""Tables of the case loop.

* ``cases`` — one row per case; ``status`` is a cached pointer to the end of its history
  (Signalen's ``Signal.status``, EXAMPLES §2), ``version`` guards concurrent writers
  (optimistic: every UPDATE says ``WHERE version = <read>``; SQLAlchemy's ``version_id_col``).
  The fact columns (``registered_at``, ``on_time``, ``rework_count`` …) are what the CJ/T 292
  evaluation counts, kept on the row so that one grouped query answers it.
* ``case_events`` — the history, append-only: who did what, when, why (DESIGN §3 "History").
* ``case_reporters`` — the people who reported the case, contact details encrypted (Fernet)
  and kept apart from the case (DESIGN §3 "Personal data"); merging copies them over.
* ``case_attachments`` — photo metadata; the bytes live in a directory, by SHA-256.
* ``case_idempotency`` — ``Idempotency-Key`` of creates, with the response to replay.

The outbox and calendar tables live in :mod:`cityops.core.events` / :mod:`cityops.core.calendar`
and are imported here so that one import registers every table of this migration.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from cityops.core.calendar import CalendarOverride, CalendarYear
from cityops.core.db import Base, JSONType, UTCDateTime, utcnow
from cityops.core.events import OutboxEvent
from cityops.core.models import BigId

__all__ = [
    "CalendarOverride",
    "CalendarYear",
    "Case",
    "CaseAttachment",
    "CaseEvent",
    "CaseReporter",
    "IdempotencyKey",
    "OutboxEvent",
]


#: the open statuses as SQL, written identically in the partial index and in the queries that
#: must use it (SQLite only uses a partial index when the query repeats its condition)
OPEN_SQL = "status IN ('reported', 'registered', 'dispatched', 'in_progress', 'resolved')"


class Case(Base):
    """A case (案件). ``id`` is the public id: short, random, never reused (DESIGN §3)."""

    __tablename__ = "cases"
    pk: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(16), unique=True)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    status: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(16))
    category: Mapped[str] = mapped_column(String(40))
    urgency: Mapped[str] = mapped_column(String(16))
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    lon: Mapped[float] = mapped_column(Float)
    lat: Mapped[float] = mapped_column(Float)
    address: Mapped[str] = mapped_column(String(256), default="")
    district: Mapped[str] = mapped_column(String(6))
    street: Mapped[str] = mapped_column(String(9), default="")
    community: Mapped[str] = mapped_column(String(12), default="")
    grid_code: Mapped[str] = mapped_column(String(15), default="")
    component_id: Mapped[str | None] = mapped_column(String(32))
    suggested_department: Mapped[str | None] = mapped_column(String(64))
    dispatch_rule: Mapped[str] = mapped_column(String(64), default="")
    department: Mapped[str | None] = mapped_column(String(64))
    assisting: Mapped[list[str]] = mapped_column(JSONType, default=list)
    reported_by: Mapped[str] = mapped_column(String(64))
    reported_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    registered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    dispatched_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    accepted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    resolved_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    closed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    ended_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    # the running clock (DESIGN §8 "Clocks"): its stage, start and deadline
    stage: Mapped[str | None] = mapped_column(String(16))
    stage_started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    due_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    due_provisional: Mapped[bool] = mapped_column(Boolean, default=False)
    handling_due_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    extension_request: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    extensions_granted: Mapped[int] = mapped_column(Integer, default=0)
    escalation_level: Mapped[int] = mapped_column(Integer, default=0)
    next_escalation_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    dispatch_count: Mapped[int] = mapped_column(Integer, default=0)
    send_back_count: Mapped[int] = mapped_column(Integer, default=0)
    rework_count: Mapped[int] = mapped_column(Integer, default=0)
    handling_minutes: Mapped[int | None] = mapped_column(Integer)
    on_time: Mapped[bool | None] = mapped_column(Boolean)
    merged_into: Mapped[str | None] = mapped_column(String(16))
    likely_duplicates: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    has_duplicates: Mapped[bool] = mapped_column(Boolean, default=False)
    feedback_contacted: Mapped[bool | None] = mapped_column(Boolean)
    feedback_solved: Mapped[bool | None] = mapped_column(Boolean)
    satisfaction: Mapped[str | None] = mapped_column(String(24))
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    # the service sets each new version itself (= the history event's seq); SQLAlchemy adds
    # "WHERE version = <version read>" to every UPDATE and raises StaleDataError on 0 rows
    __mapper_args__ = {"version_id_col": version, "version_id_generator": False}  # noqa: RUF012
    __table_args__ = (
        # data scopes are division-code prefixes: district, street, community, grid in one
        # index answers each level by equality (a street scope also fixes the district)
        Index("ix_cases_area", "district", "street", "community", "grid_code"),
        Index("ix_cases_status_due", "status", "due_at"),
        Index("ix_cases_department_status", "department", "status"),
        # likely-duplicate search: open cases of one category in a latitude band (partial:
        # closed cases, the vast majority, are not in it)
        Index(
            "ix_cases_open_category_lat",
            "category",
            "lat",
            "lon",  # tested in the index: only cases inside the search box are read (0004)
            postgresql_where=text(OPEN_SQL),
            sqlite_where=text(OPEN_SQL),
        ),
        Index("ix_cases_reported_at", "reported_at"),
        Index(
            "ix_cases_next_escalation",
            "next_escalation_at",
            postgresql_where=text("next_escalation_at IS NOT NULL"),
            sqlite_where=text("next_escalation_at IS NOT NULL"),
        ),
    )


class CaseEvent(Base):
    """One entry of a case's history. ``seq`` is the case's version after the event;
    ``stage_due_at`` the deadline of the clock that was running when it happened (so an
    on-site check can be judged on time later)."""

    __tablename__ = "case_events"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    case_pk: Mapped[int] = mapped_column(ForeignKey("cases.pk"))
    seq: Mapped[int] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(24))
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(24))
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    note: Mapped[str] = mapped_column(Text, default="")
    department: Mapped[str | None] = mapped_column(String(64))
    stage_due_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    data: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)

    __table_args__ = (
        Index("uq_case_events_case_seq", "case_pk", "seq", unique=True),
        # the grid workers' on-site checks, for their evaluation; partial, so the other
        # actions (most of the history) do not pay for it on every insert
        Index(
            "ix_case_events_checks",
            "actor",
            "at",
            postgresql_where=text("action IN ('verify', 'check')"),
            sqlite_where=text("action IN ('verify', 'check')"),
        ),
    )


class CaseReporter(Base):
    """Who reported a case; contact fields are Fernet tokens, never plain text."""

    __tablename__ = "case_reporters"
    pk: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    case_pk: Mapped[int] = mapped_column(ForeignKey("cases.pk"))
    user_id: Mapped[int | None] = mapped_column(BigId)
    username: Mapped[str | None] = mapped_column(String(64))
    channel: Mapped[str] = mapped_column(String(16))
    name_enc: Mapped[str | None] = mapped_column(Text)
    phone_enc: Mapped[str | None] = mapped_column(Text)
    email_enc: Mapped[str | None] = mapped_column(Text)
    notify: Mapped[bool] = mapped_column(Boolean, default=True)
    merged_from: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (
        Index("ix_case_reporters_case", "case_pk"),
        Index("ix_case_reporters_user", "user_id"),
    )


class CaseAttachment(Base):
    """A photo of a case; the file is ``<attachments_dir>/<sha[:2]>/<sha>``."""

    __tablename__ = "case_attachments"
    pk: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    case_pk: Mapped[int] = mapped_column(ForeignKey("cases.pk"))
    sha256: Mapped[str] = mapped_column(String(64))
    content_type: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    filename: Mapped[str] = mapped_column(String(256), default="")
    uploaded_by: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (Index("ix_case_attachments_case", "case_pk"),)


class IdempotencyKey(Base):
    """A create already done under ``(username, key)``, with its response to replay."""

    __tablename__ = "case_idempotency"
    username: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    case_pk: Mapped[int] = mapped_column(BigId)
    response: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
