"""Transactional outbox (DESIGN §1.5, §4): side effects written in the same transaction as the
state change, delivered at least once, applied exactly once.

* :func:`publish` adds an :class:`OutboxEvent` row in the caller's transaction: if the state
  change commits, so does the event; if it rolls back, there is no event. An acknowledged
  transition's event cannot be lost.
* :func:`claim` leases a batch of due events to one worker. On PostgreSQL it selects them with
  ``FOR UPDATE SKIP LOCKED``, so any number of workers on any machines share the queue without
  waiting on each other; on SQLite writers are serialised anyway and the worker runs in the
  ``serve`` process (DESIGN §4).
* :func:`run_once` processes a claimed batch. A *database* handler runs in one transaction that
  first marks the event done with a conditional ``UPDATE … WHERE done_at IS NULL AND
  claimed_by = me``: its effects and the acknowledgement commit or vanish together, and a
  worker whose lease was taken over cannot apply the event a second time. An *external*
  handler (a webhook, an SMS) runs outside any transaction and is acknowledged afterwards: a
  crash in between sends it again, so each message carries the event's ``uid`` for the
  receiver to de-duplicate (at least once, idempotent receivers).
* A failing handler rolls back, the event is retried with exponential back-off and parked as
  failed after ``max_attempts`` (visible in ``cityops cases outbox``).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Index,
    Integer,
    String,
    Table,
    Text,
    and_,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from cityops.core.db import Base, Database, JSONType, UTCDateTime, utcnow
from cityops.core.models import BigId

log = logging.getLogger("cityops.events")

LEASE = dt.timedelta(seconds=60)
MAX_ATTEMPTS = 8


class OutboxEvent(Base):
    """One side effect to carry out. ``uid`` is the id receivers de-duplicate on."""

    __tablename__ = "outbox"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # a random uuid: unique without an index (nothing looks events up by it; receivers do)
    uid: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    available_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    claimed_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    done_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    failed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        # only pending rows are indexed, so the index stays small however long the log grows;
        # keyed in claiming order (oldest first), so a claim reads only pending entries
        # (migration 0005)
        Index(
            "ix_outbox_pending",
            "id",
            "available_at",
            postgresql_where=text("done_at IS NULL AND failed_at IS NULL"),
            sqlite_where=text("done_at IS NULL AND failed_at IS NULL"),
        ),
    )


#: the table for Core statements (bulk paths skip the ORM's unit of work)
OUTBOX = cast(Table, OutboxEvent.__table__)
INSERT_OUTBOX = insert(OUTBOX)


_writers_lock = threading.Lock()
_writers: dict[str, threading.Lock] = {}


def writer_lock(db: Database) -> threading.Lock:
    """The lock this process's writers of the SQLite database ``db`` queue on (see
    :func:`serial_write`); a writer on a raw connection takes it around its transaction."""
    key = str(db.engine.url)
    with _writers_lock:
        return _writers.setdefault(key, threading.Lock())


@contextmanager
def serial_write(db: Database) -> Iterator[Session]:
    """``db.write()``, with the writers of this process queued on a Python lock first when the
    database is SQLite.

    SQLite has one writer at a time; a second ``BEGIN IMMEDIATE`` waits in SQLite's busy
    handler, which *sleeps* with back-off (1, 2, 5 … 100 ms) and can lose the lock again and
    again to threads that arrive later: seconds-long stalls under load. Threads blocked on a
    Python lock are woken as soon as it is free. (Other processes still meet the busy
    handler; on SQLite there is one server process, DESIGN §4.) On PostgreSQL writers do not
    need to queue: the lock is skipped.
    """
    if not db.is_sqlite:
        with db.write() as session:
            yield session
        return
    with writer_lock(db), db.write() as session:
        yield session


def publish(
    session: Session,
    kind: str,
    payload: Mapping[str, Any],
    *,
    available_at: dt.datetime | None = None,
) -> OutboxEvent:
    """Write an event in the caller's transaction (never commits)."""
    now = utcnow()
    event = OutboxEvent(
        uid=uuid.uuid4().hex,
        kind=kind,
        payload=dict(payload),
        created_at=now,
        available_at=available_at or now,
        attempts=0,
    )
    session.add(event)
    return event


def publish_many(
    session: Session,
    items: Sequence[tuple[str, Mapping[str, Any]]],
    *,
    at: dt.datetime | None = None,
) -> list[str]:
    """Write several events in the caller's transaction with one statement; their uids."""
    rows = outbox_rows(items, at or utcnow())
    if rows:
        session.connection().execute(INSERT_OUTBOX, rows)
    return [str(r["uid"]) for r in rows]


def outbox_rows(
    items: Sequence[tuple[str, Mapping[str, Any]]], at: dt.datetime
) -> list[dict[str, Any]]:
    """The outbox rows of ``(kind, payload)`` events published at ``at``."""
    return [
        {
            "uid": uuid.uuid4().hex,
            "kind": kind,
            "payload": dict(payload),
            "created_at": at,
            "available_at": at,
            "attempts": 0,
        }
        for kind, payload in items
    ]


# ------------------------------------------------------------------------------ consuming
@dataclass(frozen=True)
class Handler:
    """A consumer of one event kind. ``external`` handlers talk to the outside world and must
    not hold a database transaction open meanwhile; the others get the claiming session."""

    run: Callable[..., None]
    external: bool = False


@dataclass(frozen=True)
class Claimed:
    id: int
    uid: str
    kind: str
    payload: dict[str, Any]
    attempts: int


HandlerFactory = Callable[[Database], Mapping[str, Handler]]
_factories: list[HandlerFactory] = []


def register_handlers(factory: HandlerFactory) -> None:
    """Let a domain add its consumers (``kind → Handler`` for one database) to the worker; the
    list is on one screen per domain (e.g. :func:`cityops.cases.worker.handlers_for`)."""
    if factory not in _factories:
        _factories.append(factory)


def all_handlers(db: Database) -> dict[str, Handler]:
    """Every registered consumer; a kind claimed by two domains is a programming error."""
    out: dict[str, Handler] = {}
    for factory in _factories:
        for kind, handler in factory(db).items():
            if kind in out:
                raise ValueError(f"two consumers for outbox event kind {kind!r}")
            out[kind] = handler
    return out


def purge(db: Database, older_than: dt.timedelta) -> int:
    """Delete events done longer ago than ``older_than`` (the outbox is a queue, not a log:
    the case history is the record)."""
    cutoff = utcnow() - older_than
    with serial_write(db) as session:
        result = session.execute(
            delete(OutboxEvent).where(
                OutboxEvent.done_at.is_not(None), OutboxEvent.done_at < cutoff
            )
        )
        return int(getattr(result, "rowcount", 0) or 0)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _pending(now: dt.datetime) -> ColumnElement[bool]:
    return and_(
        OutboxEvent.done_at.is_(None),
        OutboxEvent.failed_at.is_(None),
        OutboxEvent.available_at <= now,
        or_(OutboxEvent.claimed_until.is_(None), OutboxEvent.claimed_until < now),
    )


def claim(
    db: Database,
    worker: str,
    *,
    limit: int = 50,
    now: dt.datetime | None = None,
    kinds: tuple[str, ...] | None = None,
) -> list[Claimed]:
    """Lease up to ``limit`` due events to ``worker`` for :data:`LEASE`."""
    now = now or utcnow()
    with serial_write(db) as session:
        query = select(OutboxEvent.id).where(_pending(now)).order_by(OutboxEvent.id).limit(limit)
        if kinds:
            query = query.where(OutboxEvent.kind.in_(kinds))
        if db.is_postgres:
            query = query.with_for_update(skip_locked=True)
        ids = list(session.scalars(query))
        if not ids:
            return []
        session.execute(
            update(OutboxEvent)
            .where(OutboxEvent.id.in_(ids))
            .values(
                claimed_by=worker,
                claimed_until=now + LEASE,
                attempts=OutboxEvent.attempts + 1,
            )
        )
        rows = session.execute(
            select(
                OutboxEvent.id,
                OutboxEvent.uid,
                OutboxEvent.kind,
                OutboxEvent.payload,
                OutboxEvent.attempts,
            )
            .where(OutboxEvent.id.in_(ids))
            .order_by(OutboxEvent.id)
        ).all()
    return [Claimed(r[0], r[1], r[2], dict(r[3] or {}), r[4]) for r in rows]


def _ack(session: Session, event: Claimed, worker: str, now: dt.datetime) -> bool:
    result = session.execute(
        update(OutboxEvent)
        .where(
            OutboxEvent.id == event.id,
            OutboxEvent.done_at.is_(None),
            OutboxEvent.claimed_by == worker,
        )
        .values(done_at=now, claimed_until=None)
    )
    return bool(getattr(result, "rowcount", 0) == 1)


class _LostLease(Exception):
    """Another worker took the event over; our effects must roll back."""


def _fail(db: Database, event: Claimed, worker: str, error: BaseException) -> None:
    now = utcnow()
    give_up = event.attempts >= MAX_ATTEMPTS
    backoff = dt.timedelta(seconds=min(3600, 2 ** min(event.attempts, 12)))
    with serial_write(db) as session:
        session.execute(
            update(OutboxEvent)
            .where(OutboxEvent.id == event.id, OutboxEvent.claimed_by == worker)
            .values(
                claimed_by=None,
                claimed_until=None,
                available_at=now + backoff,
                failed_at=now if give_up else None,
                last_error=f"{type(error).__name__}: {error}"[:2000],
            )
        )
    level = logging.ERROR if give_up else logging.WARNING
    log.log(level, "outbox event %s (%s) failed: %s", event.id, event.kind, error)


def process(
    db: Database, event: Claimed, handler: Handler, worker: str, now: dt.datetime | None = None
) -> bool:
    """Run one claimed event; ``True`` when it was applied by this worker."""
    try:
        if handler.external:
            handler.run(event)
            with serial_write(db) as session:
                return _ack(session, event, worker, now or utcnow())
        with serial_write(db) as session:
            if not _ack(session, event, worker, now or utcnow()):
                raise _LostLease
            handler.run(session, event)
        return True
    except _LostLease:
        log.info("outbox event %s was taken over by another worker", event.id)
        return False
    except Exception as exc:  # the handler's error is recorded, never lost
        _fail(db, event, worker, exc)
        return False


def _ack_all(session: Session, ids: list[int], worker: str, now: dt.datetime) -> None:
    """Acknowledge applied events together; raise :class:`_LostLease` when any of them was
    taken over meanwhile (our lease expired), so that the whole transaction rolls back."""
    if not ids:
        return
    acked = session.connection().execute(
        update(OUTBOX)
        .where(OUTBOX.c.id.in_(ids), OUTBOX.c.done_at.is_(None), OUTBOX.c.claimed_by == worker)
        .values(done_at=now, claimed_until=None)
    )
    if acked.rowcount != len(ids):
        raise _LostLease


def _process_internal(
    db: Database,
    batch: list[Claimed],
    handlers: Mapping[str, Handler],
    worker: str,
    now: dt.datetime,
) -> int:
    """Database handlers of one batch in one transaction, acknowledged together at its end
    with one conditional ``UPDATE … WHERE claimed_by = me AND done_at IS NULL``: effects and
    acknowledgements commit or vanish together, and if any event was taken over meanwhile
    the whole batch rolls back and the other worker applies it.

    Optimistic first: the whole batch without savepoints (two round trips per event saved on
    PostgreSQL). If a handler fails, that transaction rolls back, the failed event is recorded
    for retry with back-off, and the rest of the batch runs again with each event in its own
    savepoint, so any further failing event rolls back only its own effects.
    """
    failures: list[tuple[Claimed, Exception]] = []
    current: Claimed | None = None
    try:
        with serial_write(db) as session:
            for current in batch:
                handlers[current.kind].run(session, current)
            current = None
            _ack_all(session, [e.id for e in batch], worker, now)
        return len(batch)
    except _LostLease:
        log.info("a batch of %d outbox events was taken over by another worker", len(batch))
        return 0
    except Exception as exc:  # that event failed (recorded below); the others run again
        if current is None:
            log.exception("outbox batch of %d events could not be committed", len(batch))
            return 0
        failures.append((current, exc))
    applied: list[int] = []
    rest = [e for e in batch if e is not failures[0][0]]
    try:
        with serial_write(db) as session:
            for event in rest:
                try:
                    with session.begin_nested():
                        handlers[event.kind].run(session, event)
                    applied.append(event.id)
                except Exception as exc:  # recorded below, never lost
                    failures.append((event, exc))
            _ack_all(session, applied, worker, now)
    except _LostLease:
        log.info("a batch of %d outbox events was taken over by another worker", len(batch))
        return 0
    except Exception:  # the commit failed: every lease expires and the batch is retried
        log.exception("outbox batch of %d events could not be committed", len(batch))
        return 0
    for failed, error in failures:
        _fail(db, failed, worker, error)
    return len(applied)


def run_once(
    db: Database,
    handlers: Mapping[str, Handler],
    worker: str | None = None,
    *,
    limit: int = 50,
    now: dt.datetime | None = None,
) -> int:
    """Claim and process one batch; returns how many events were applied."""
    worker = worker or worker_id()
    claimed = claim(db, worker, limit=limit, now=now, kinds=tuple(handlers))
    internal = [e for e in claimed if not handlers[e.kind].external]
    done = _process_internal(db, internal, handlers, worker, now or utcnow()) if internal else 0
    for event in claimed:
        handler = handlers[event.kind]
        if handler.external and process(db, event, handler, worker, now):
            done += 1
    return done


def run_for(
    db: Database,
    handlers: Mapping[str, Handler],
    worker: str | None = None,
    *,
    budget: float = 1.0,
    limit: int = 200,
) -> int:
    """Claim and process batches until nothing is due or ``budget`` seconds have passed: a
    worker keeps up with a burst instead of taking one batch per round."""
    worker = worker or worker_id()
    stop = time.monotonic() + budget
    total = 0
    while True:
        n = run_once(db, handlers, worker, limit=limit)
        total += n
        if n < limit or time.monotonic() >= stop:
            return total


def drain(
    db: Database,
    handlers: Mapping[str, Handler],
    *,
    rounds: int = 20,
    now: dt.datetime | None = None,
) -> int:
    """Run batches until nothing is due (tests, CLI)."""
    total = 0
    for _ in range(rounds):
        n = run_once(db, handlers, now=now)
        total += n
        if n == 0:
            break
    return total


def stats(session: Session) -> dict[str, int]:
    """Pending, done and failed counts."""
    rows = session.execute(
        select(
            func.count().filter(OutboxEvent.done_at.is_(None), OutboxEvent.failed_at.is_(None)),
            func.count().filter(OutboxEvent.done_at.is_not(None)),
            func.count().filter(OutboxEvent.failed_at.is_not(None)),
        )
    ).one()
    return {"pending": int(rows[0]), "done": int(rows[1]), "failed": int(rows[2])}
