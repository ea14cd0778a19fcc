"""Append-only audit log with a hash chain sealed per UTC day (DESIGN §3 "Audit").

A write records an entry in the same transaction as the change (:func:`record`). Each entry
carries the SHA-256 of its own canonical content; :func:`seal` chains a day's digests in id
order into one value, and :func:`verify` recomputes both, so an edited, deleted or inserted
entry shows. Sealing runs in the background, so no write ever waits on a global hot row.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cityops.core.db import Database, utcnow
from cityops.core.models import AuditEntry, AuditSeal


def _digest(
    at: dt.datetime, actor: str, action: str, entity: str, entity_id: str, detail: dict[str, Any]
) -> str:
    canonical = json.dumps(
        [at.astimezone(dt.UTC).isoformat(), actor, action, entity, entity_id, detail],
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def record(
    session: Session,
    actor: str,
    action: str,
    entity: str,
    entity_id: str | int = "",
    detail: dict[str, Any] | None = None,
) -> AuditEntry:
    """Append one entry in the caller's transaction."""
    at = utcnow().replace(microsecond=0)
    detail = json.loads(json.dumps(detail or {}, default=str))
    entry = AuditEntry(
        at=at,
        actor=actor,
        action=action,
        entity=entity,
        entity_id=str(entity_id),
        detail=detail,
        digest=_digest(at, actor, action, entity, str(entity_id), detail),
    )
    session.add(entry)
    return entry


def _day_bounds(day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    return start, start + dt.timedelta(days=1)


def _chain(entries: list[AuditEntry]) -> str:
    chain = hashlib.sha256(b"cityops-audit").hexdigest()
    for e in entries:
        chain = hashlib.sha256((chain + e.digest).encode()).hexdigest()
    return chain


def seal(db: Database, day: dt.date) -> AuditSeal | None:
    """Seal (or re-seal) ``day``; ``None`` when it has no entries."""
    start, end = _day_bounds(day)
    with db.write() as session:
        entries = list(
            session.scalars(
                select(AuditEntry)
                .where(AuditEntry.at >= start, AuditEntry.at < end)
                .order_by(AuditEntry.id)
            )
        )
        if not entries:
            return None
        row = session.get(AuditSeal, day.isoformat()) or AuditSeal(day=day.isoformat())
        row.first_id, row.last_id = entries[0].id, entries[-1].id
        row.entries = len(entries)
        row.chain = _chain(entries)
        row.sealed_at = utcnow()
        session.add(row)
        return row


def verify(db: Database, day: dt.date) -> list[str]:
    """Problems found for ``day`` (empty list: intact)."""
    start, end = _day_bounds(day)
    problems: list[str] = []
    with db.read() as session:
        entries = list(
            session.scalars(
                select(AuditEntry)
                .where(AuditEntry.at >= start, AuditEntry.at < end)
                .order_by(AuditEntry.id)
            )
        )
        for e in entries:
            if e.digest != _digest(e.at, e.actor, e.action, e.entity, e.entity_id, e.detail):
                problems.append(f"entry {e.id} was changed after it was written")
        sealed = session.get(AuditSeal, day.isoformat())
        if sealed is not None and (
            sealed.entries != len(entries) or sealed.chain != _chain(entries)
        ):
            problems.append(
                f"{day}: the sealed chain ({sealed.entries} entries) does not match the "
                f"{len(entries)} entries now present"
            )
    return problems


def count(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(AuditEntry)) or 0)
