"""The writers of ``POST /api/v1/cases``: many concurrent reports, few round trips, few commits.

Case creation is the platform's busiest write (a city's patrols, hotline seats and sensors all
report through it). The route is ``async``: validation, the location, the dispatch rules and
the deadlines are decided on the event loop (:func:`cityops.cases.service.prepare_new`, no
thread hop), and the write goes to the backend's writer, which runs the statements compiled
once (:mod:`cityops.core.fastsql`) on the DB-API connection — the same rows the service's
Core path writes (a test compares them), without SQLAlchemy's per-statement execution cost.

* **SQLite** — :class:`SqliteWriter`: one thread per database and process takes every report
  waiting and writes them in **one** transaction, each inside its own ``SAVEPOINT`` (group
  commit). A report that breaks a constraint rolls back alone; the others commit; every
  answer is sent only after the ``COMMIT``, so an acknowledged report is never lost. SQLite
  has one writer at a time anyway: this writer queues on the process's writer lock like every
  other (:func:`cityops.core.events.writer_lock`), and a batch writes each shared B-tree page
  (the tables' and indexes' right-most leaves) to the WAL once instead of once per report.
* **PostgreSQL** — :class:`PostgresWriter`: an asyncio psycopg connection pool, one
  transaction per report in pipeline mode — ``BEGIN`` and the duplicate search in one round
  trip, the case row in a second (its key), every other row and the ``COMMIT`` in a third.
  Statements are prepared by the server after their fifth use on a connection (psycopg).

Each report's transaction holds what :func:`cityops.cases.service.create_case` holds: the
likely-duplicate search, the case, its three history events, the reporter, three outbox
events and the Idempotency-Key's first answer.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Dialect, make_url

from cityops.cases import service
from cityops.core import events
from cityops.core.auth import Principal
from cityops.core.db import SQLITE_BUSY_TIMEOUT_MS, Database
from cityops.core.fastsql import Compiled, compiled_insert

log = logging.getLogger("cityops.cases.intake")

#: the most reports one SQLite transaction takes (a batch is whatever is waiting, up to this)
MAX_BATCH = 64


class _Busy(Exception):
    """Another connection holds SQLite's write lock."""


class Statements:
    """The create path's statements compiled for one dialect."""

    def __init__(self, dialect: Dialect) -> None:
        self.duplicates = Compiled(service._DUPLICATE_QUERY, dialect)
        self.case = compiled_insert(service.CASES, dialect, skip=["pk"], returning="pk")
        self.event = compiled_insert(service.CASE_EVENTS, dialect, skip=["id"])
        self.reporter = compiled_insert(service.CASE_REPORTERS, dialect, skip=["pk"])
        self.outbox = compiled_insert(events.OUTBOX, dialect, skip=["id"])
        self.idempotency = compiled_insert(service.IDEMPOTENCY, dialect)
        self.replay = Compiled(service._SELECT_IDEMPOTENCY, dialect)

    def candidates(self, rows: list[Any]) -> list[Any]:
        return [service.candidate(self.duplicates.row(r)) for r in rows]


@dataclass
class Report:
    """One report on its way to the database."""

    new: Any  # service._NewCase
    principal: Principal
    at: dt.datetime
    key: str | None
    #: filled by the writer: the stored answer of a repeated Idempotency-Key
    replay: dict[str, Any] | None = None
    #: filled by the writer when a key is given: the answer as stored with the key
    out: dict[str, Any] | None = None
    tries: int = field(default=0)

    def answer(self) -> dict[str, Any]:
        """The answer as stored with the key (computed once, inside the transaction)."""
        if self.out is None:
            self.out = service.case_out(
                self.new.case, service.case_rules(), self.principal, at=self.at
            ).model_dump(mode="json")
        return self.out


def _lost_race(report: Report, exc: Exception) -> bool:
    """Whether a unique-key violation is one a report survives: its random public id drawn
    twice (drawn again, up to 3 times) — else it is re-raised by the caller."""
    if service.violates(exc, "cases") and report.tries < 3:
        report.tries += 1
        report.new.case.id = service.new_case_id()
        return True
    return False


# ------------------------------------------------------------------------------ SQLite
class SqliteWriter:
    """The writer of one SQLite database in one server process: group commit on the event
    loop.

    A report is appended to the pending batch and one drain task writes whatever is pending,
    batch after batch, until nothing is: while one batch is written, the next one gathers.
    The batches are written on the loop thread itself. SQLite's C code is fast, and a writer
    thread would have to win the GIL back from the busy loop after every statement (CPython
    hands it over every 5 ms): a thread spent most of its time waiting — about 300 reports/s
    against 450–610 on the loop (``bench/bench_cases.py``). Waiting is done without blocking
    the loop: for the process's other writers (the outbox worker, a transition, an import)
    in a thread that takes the process's writer lock (:func:`cityops.core.events.writer_lock`)
    on the loop's behalf; for another process's transaction by retrying ``BEGIN IMMEDIATE``
    (this connection's busy timeout is 0) with short sleeps, up to the usual busy timeout.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self.st = Statements(db.engine.dialect)
        self._lock = events.writer_lock(db)
        self._pending: list[tuple[Report, asyncio.Future[Report]]] = []
        self._drain: asyncio.Task[None] | None = None
        self._raw = db.engine.raw_connection()
        self._con: sqlite3.Connection = self._raw.driver_connection  # type: ignore[assignment]
        self._con.execute("PRAGMA busy_timeout=0")

    async def write(self, report: Report) -> Report:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Report] = loop.create_future()
        self._pending.append((report, future))
        if self._drain is None:
            self._drain = loop.create_task(self._write_pending())
        return await future

    async def close(self) -> None:
        if self._drain is not None:
            await self._drain
        self._con.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        self._raw.close()

    async def _write_pending(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await asyncio.sleep(0)  # let the requests of this loop turn add their reports
            while self._pending:
                if not self._lock.acquire(blocking=False):
                    # another writer of this process is in a transaction: wait in a thread
                    await loop.run_in_executor(None, self._lock.acquire)
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                try:
                    results = await self._write_locked(batch)
                finally:
                    self._lock.release()
                _settle(list(zip((f for _, f in batch), results, strict=True)))
        finally:
            self._drain = None

    async def _write_locked(
        self, batch: list[tuple[Report, asyncio.Future[Report]]]
    ) -> list[Report | BaseException]:
        deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
        pause = 0.001
        while True:
            try:
                return self._write_batch(self._con, batch)
            except _Busy as exc:  # another process is writing: SQLite's busy handler, async
                if time.monotonic() > deadline:
                    return [exc.__cause__ or exc] * len(batch)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.02)

    def _write_batch(
        self, con: sqlite3.Connection, batch: list[tuple[Report, asyncio.Future[Report]]]
    ) -> list[Report | BaseException]:
        """One transaction for the batch, one savepoint per report; raises :class:`_Busy`
        when the database is locked by another connection."""
        try:
            con.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise _Busy() from exc
            raise
        try:
            results = [self._write_one(con, report) for report, _ in batch]
            con.execute("COMMIT")
        except Exception as exc:  # the transaction failed as a whole (disk full …)
            con.execute("ROLLBACK")
            log.exception("case writer: a batch of %d reports failed", len(batch))
            return [exc] * len(batch)
        return results

    def _write_one(self, con: sqlite3.Connection, report: Report) -> Report | Exception:
        st, new = self.st, report.new
        while True:
            con.execute("SAVEPOINT report")
            try:
                rows = con.execute(
                    st.duplicates.sql, st.duplicates.params(service.duplicate_params(new))
                ).fetchall()
                service.settle_duplicates(
                    new, [service.candidate(st.duplicates.row(r)) for r in rows]
                )
                pk = con.execute(st.case.sql, st.case.params(service.case_row(new))).fetchone()[0]
                con.executemany(st.event.sql, st.event.many(service.history_rows(new, pk)))
                con.execute(st.reporter.sql, st.reporter.params(service.reporter_row(new, pk)))
                con.executemany(
                    st.outbox.sql,
                    st.outbox.many(events.outbox_rows(service.outbox_items(new), report.at)),
                )
                if report.key is not None:
                    con.execute(
                        st.idempotency.sql,
                        st.idempotency.params(
                            service.idempotency_row(
                                new, report.principal, report.key, report.answer(), report.at
                            )
                        ),
                    )
                con.execute("RELEASE report")
                return report
            except sqlite3.IntegrityError as exc:
                con.execute("ROLLBACK TO report")
                con.execute("RELEASE report")
                report.out = None
                if _lost_race(report, exc):
                    continue
                if report.key is None or not service.violates(exc, "case_idempotency"):
                    return exc
                row = con.execute(
                    st.replay.sql,
                    st.replay.params({"username": report.principal.username, "key": report.key}),
                ).fetchone()
                try:
                    report.replay = service.replayed(
                        st.replay.row(row) if row else None, new.request_hash
                    )
                except Exception as refused:  # the key came with another report
                    return refused
                return report if report.replay is not None else exc
            except Exception as exc:
                con.execute("ROLLBACK TO report")
                con.execute("RELEASE report")
                return exc


def _settle(items: list[tuple[asyncio.Future[Report], Report | BaseException]]) -> None:
    for future, result in items:
        if future.done():  # the request was cancelled (client gone): its report is written
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)


# ------------------------------------------------------------------------------ PostgreSQL
class PostgresWriter:
    """An asyncio psycopg pool of one PostgreSQL database; one transaction per report."""

    def __init__(self, db: Database, size: int = 8) -> None:
        from psycopg_pool import AsyncConnectionPool

        self.st = Statements(db.engine.dialect)
        conninfo = make_url(db.url).set(drivername="postgresql").render_as_string(False)
        self.pool = AsyncConnectionPool(
            conninfo, min_size=2, max_size=size, open=False, kwargs={"autocommit": True}
        )

    async def open(self) -> None:
        await self.pool.open()

    async def close(self) -> None:
        await self.pool.close()

    async def write(self, report: Report) -> Report:
        import psycopg

        while True:
            try:
                async with self.pool.connection() as conn:
                    return await self._write_one(conn, report)
            except psycopg.errors.UniqueViolation as exc:
                report.out = None
                if _lost_race(report, exc):
                    continue
                if report.key is None or not service.violates(exc, "case_idempotency"):
                    raise
                return await self._replay(report, exc)

    async def _write_one(self, conn: Any, report: Report) -> Report:
        st, new = self.st, report.new
        async with conn.pipeline(), conn.transaction():
            cur = await conn.execute(
                st.duplicates.sql, st.duplicates.params(service.duplicate_params(new))
            )
            rows = await cur.fetchall()
            service.settle_duplicates(new, st.candidates(rows))
            cur = await conn.execute(st.case.sql, st.case.params(service.case_row(new)))
            pk = (await cur.fetchone())[0]
            cur = conn.cursor()
            await cur.executemany(st.event.sql, st.event.many(service.history_rows(new, pk)))
            await conn.execute(st.reporter.sql, st.reporter.params(service.reporter_row(new, pk)))
            await cur.executemany(
                st.outbox.sql,
                st.outbox.many(events.outbox_rows(service.outbox_items(new), report.at)),
            )
            if report.key is not None:
                await conn.execute(
                    st.idempotency.sql,
                    st.idempotency.params(
                        service.idempotency_row(
                            new, report.principal, report.key, report.answer(), report.at
                        )
                    ),
                )
        return report

    async def _replay(self, report: Report, exc: Exception) -> Report:
        st = self.st
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                st.replay.sql,
                st.replay.params({"username": report.principal.username, "key": report.key}),
            )
            row = await cur.fetchone()
        report.replay = service.replayed(
            st.replay.row(row) if row else None, report.new.request_hash
        )
        if report.replay is None:
            raise exc
        return report


Writer = SqliteWriter | PostgresWriter


async def open_writer(db: Database) -> Writer:
    """The writer of ``db`` for this server process (started in the app's lifespan)."""
    if db.is_sqlite:
        return SqliteWriter(db)
    writer = PostgresWriter(db)
    await writer.open()
    return writer


async def create(
    writer: Writer,
    db: Database,
    principal: Principal,
    body: Any,
    key: str | None,
) -> tuple[Report, bool]:
    """信息收集 (+ 立案, 派遣) of one report through ``writer``; ``(report, created)``."""
    service.check_idempotency_key(key)
    at = service.now()
    if service.prepared_from_memory(db, cipher=body.reporter is not None):
        new = service.prepare_new(db, principal, body, at)
    else:  # a cache to fill (the first report, or every 30 s): database reads, off the loop
        new = await asyncio.to_thread(service.prepare_new, db, principal, body, at)
    report = await writer.write(Report(new, principal, at, key))
    return report, report.replay is None
