"""Tables of the shared kernel: users and roles, audit log, application state."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, String, Text, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Mapped, Session, mapped_column, relationship

from cityops.core.db import Base, JSONType, UTCDateTime, utcnow

# SQLite only auto-increments an INTEGER PRIMARY KEY; BigInteger elsewhere.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class AppState(Base):
    """Small key/value facts about this database (generated signing key, demo marker)."""

    __tablename__ = "app_state"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


def kept_value(session: Session, key: str, make: Callable[[], str]) -> str:
    """The value kept in ``app_state`` under ``key``, made by ``make()`` on first use.

    Safe when several processes start on a new database at once (``uvicorn --workers N``):
    ``INSERT … ON CONFLICT DO NOTHING`` lets the first writer win, and every process then
    reads the winner's value (on PostgreSQL the insert waits for a concurrent one to commit).
    """
    row = session.get(AppState, key)
    if row is not None:
        return row.value
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    session.execute(
        insert(AppState)
        .values(key=key, value=make())
        .on_conflict_do_nothing(index_elements=["key"])
    )
    value = session.scalar(select(AppState.value).where(AppState.key == key))
    assert value is not None
    return value


class User(Base):
    """A person who signs in. ``scope`` is a division-code prefix limiting the data they see
    (empty = the whole city); ``department`` is the handling unit (承办部门) of a handler."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(128), default="")
    password_hash: Mapped[str] = mapped_column(String(256))
    department: Mapped[str | None] = mapped_column(String(64))
    scope: Mapped[str] = mapped_column(String(15), default="")
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    roles: Mapped[list[UserRole]] = relationship(
        back_populates="user", cascade="all, delete-orphan", lazy="selectin"
    )

    @property
    def role_names(self) -> list[str]:
        return sorted(r.role for r in self.roles)


class UserRole(Base):
    __tablename__ = "user_roles"
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    role: Mapped[str] = mapped_column(String(32), primary_key=True)
    user: Mapped[User] = relationship(back_populates="roles")


class AuditEntry(Base):
    """One write, append-only. ``digest`` hashes the entry's own content; the chain over a
    day's digests is sealed in :class:`AuditSeal` by the worker or ``cityops audit seal``, so
    tamper evidence costs no lock on a global hot row at write time (DESIGN §3 "Audit")."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    entity: Mapped[str] = mapped_column(String(64))
    entity_id: Mapped[str] = mapped_column(String(128), default="")
    detail: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    digest: Mapped[str] = mapped_column(String(64))

    __table_args__ = (Index("ix_audit_log_at", "at"),)


class AuditSeal(Base):
    """The hash chain over one UTC day's audit entries, in id order."""

    __tablename__ = "audit_seals"
    day: Mapped[str] = mapped_column(String(10), primary_key=True)
    first_id: Mapped[int] = mapped_column(BigId)
    last_id: Mapped[int] = mapped_column(BigId)
    entries: Mapped[int] = mapped_column(Integer)
    chain: Mapped[str] = mapped_column(String(64))
    sealed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
