"""The writers of ``POST /api/v1/cases``: many concurrent reports, few round trips, few commits.

Case creation is the platform's busiest write (a city's patrols, hotline seats and sensors all
report through it). The route is ``async``: validation, the location, the dispatch rules and
the deadlines are decided on the event loop (:func:`cityops.cases.service.prepare_new`, no
thread hop), and the write goes to the backend's writer, which runs the statements compiled
once (:mod:`cityops.core.fastsql`) on the DB-API connection — the same rows the service's
Core path writes (a test compares them), without SQLAlchemy's per-statement execution cost.

* **SQLite** — :class:`SqliteWriter`: reports that arrive together are written in **one**
  transaction on the event loop, each inside its own ``SAVEPOINT`` (group commit). A report
  that breaks a constraint rolls back alone; the others commit; every answer is sent only
  after the ``COMMIT``, so an acknowledged report is never lost. SQLite has one writer at a
  time anyway: the writer queues on the process's writer lock like every other
  (:func:`cityops.core.events.writer_lock`), and a batch writes each shared B-tree page (the
  tables' and indexes' right-most leaves) to the WAL once instead of once per report.
* **PostgreSQL** — :class:`PostgresWriter`: an asyncpg connection pool; a report is the
  duplicate search and then **one** statement (data-modifying CTEs, :func:`create_statement`)
  that writes every row — one statement is one transaction.

A report writes what :func:`cityops.cases.service.create_case` writes: the case, its history
events, the reporter, its outbox events and the Idempotency-Key's first answer, after the
likely-duplicate search.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, insert, select, union_all
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
    """The create path's reads compiled for one dialect: the duplicate search and the stored
    answer of a repeated key (each writer adds its inserts)."""

    def __init__(self, dialect: Dialect) -> None:
        self.duplicates = Compiled(service._DUPLICATE_QUERY, dialect)
        self.replay = Compiled(service._SELECT_IDEMPOTENCY, dialect)

    def candidates(self, rows: list[Any]) -> list[Any]:
        return [service.candidate(self.duplicates.row(r)) for r in rows]


class SqliteStatements(Statements):
    """… and one insert per table (SQLite: the rows go in one by one, inside a savepoint)."""

    def __init__(self, dialect: Dialect) -> None:
        super().__init__(dialect)
        self.case = compiled_insert(service.CASES, dialect, skip=["pk"], returning="pk")
        self.event = compiled_insert(service.CASE_EVENTS, dialect, skip=["id"])
        self.reporter = compiled_insert(service.CASE_REPORTERS, dialect, skip=["pk"])
        self.outbox = compiled_insert(events.OUTBOX, dialect, skip=["id"])
        self.idempotency = compiled_insert(service.IDEMPOTENCY, dialect)


# the tables' columns a new case writes (keys and the case's key in the others are generated)
_CASE_COLUMNS = [c for c in service.CASES.columns if c.key != "pk"]
_EVENT_COLUMNS = [c for c in service.CASE_EVENTS.columns if c.key not in ("id", "case_pk")]
_REPORTER_COLUMNS = [c for c in service.CASE_REPORTERS.columns if c.key not in ("pk", "case_pk")]
_OUTBOX_COLUMNS = [c for c in events.OUTBOX.columns if c.key != "id"]
_KEY_COLUMNS = [c for c in service.IDEMPOTENCY.columns if c.key != "case_pk"]


def _binds(prefix: str, columns: list[Any]) -> list[Any]:
    return [bindparam(f"{prefix}{c.key}", type_=c.type).label(c.key) for c in columns]


def create_statement(events_n: int, outbox_n: int, with_key: bool) -> Any:
    """A new case, its history, reporter, outbox events and Idempotency-Key row in **one**
    PostgreSQL statement (data-modifying CTEs; one statement is one transaction, and its
    foreign keys are checked at its end): one round trip instead of eight. Returns the case's
    key. Bound names: ``c_<column>`` for the case, ``e<i>_``, ``r_``, ``o<i>_``, ``k_``."""
    case = (
        insert(service.CASES)
        .values({c.key: bindparam(f"c_{c.key}", type_=c.type) for c in _CASE_COLUMNS})
        .returning(service.CASES.c.pk)
        .cte("new_case")
    )

    def child(table: Any, columns: list[Any], prefixes: list[str], name: str) -> Any:
        rows = [select(case.c.pk, *_binds(p, columns)) for p in prefixes]
        source = rows[0] if len(rows) == 1 else union_all(*rows)
        return insert(table).from_select(["case_pk", *(c.key for c in columns)], source).cte(name)

    parts = [
        child(service.CASE_EVENTS, _EVENT_COLUMNS, [f"e{i}_" for i in range(events_n)], "h"),
        child(service.CASE_REPORTERS, _REPORTER_COLUMNS, ["r_"], "r"),
        insert(events.OUTBOX)
        .values(
            [
                {c.key: bindparam(f"o{i}_{c.key}", type_=c.type) for c in _OUTBOX_COLUMNS}
                for i in range(outbox_n)
            ]
        )
        .cte("o"),
    ]
    if with_key:
        parts.append(child(service.IDEMPOTENCY, _KEY_COLUMNS, ["k_"], "k"))
    return select(case.c.pk).add_cte(*parts)


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
    tries: int = 0

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
        self.st = SqliteStatements(db.engine.dialect)
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
            await asyncio.gather(self._drain, return_exceptions=True)
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
                except Exception as exc:  # never leave a request waiting (disk I/O error …)
                    log.exception("case writer: a batch of %d reports failed", len(batch))
                    results = [exc] * len(batch)
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
                service.settle_duplicates(new, st.candidates(rows))
                pk = con.execute(st.case.sql, st.case.params(service.case_row(new))).fetchone()[0]
                new.case.pk = pk
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
    """An asyncpg pool of one PostgreSQL database; one transaction per report.

    asyncpg rather than psycopg here: its protocol is compiled (Cython) and its statements are
    prepared once per connection, and the create path's handful of statements cost ≈ 20 µs of
    Python each instead of ≈ 110 µs with psycopg's pipeline (``bench/bench_cases.py``). The
    statements are SQLAlchemy's, compiled for its asyncpg dialect (``$n`` parameters, the
    same casts and type processors).
    """

    def __init__(self, db: Database, size: int = 8) -> None:
        from sqlalchemy.dialects.postgresql.asyncpg import dialect

        self.dialect = dialect()
        self.st = Statements(self.dialect)
        self._create: dict[tuple[int, int, bool], Compiled] = {}
        self.dsn = make_url(db.url).set(drivername="postgresql").render_as_string(False)
        self.size = size
        self.pool: Any = None

    async def open(self) -> None:
        import asyncpg

        self.pool = await asyncpg.create_pool(
            self.dsn, min_size=2, max_size=self.size, init=_json_codecs, reset=_keep
        )

    async def close(self) -> None:
        await self.pool.close()

    async def write(self, report: Report) -> Report:
        import asyncpg

        while True:
            try:
                async with self.pool.acquire() as conn:
                    return await self._write_one(conn, report)
            except asyncpg.UniqueViolationError as exc:
                report.out = None
                if _lost_race(report, exc):
                    continue
                if report.key is None or not service.violates(exc, "case_idempotency"):
                    raise
                return await self._replay(report, exc)

    async def _write_one(self, conn: Any, report: Report) -> Report:
        st, new = self.st, report.new
        # the duplicate search needs no transaction of its own: under READ COMMITTED a
        # transaction's statement sees what is committed when it starts, as this one does
        rows = await conn.fetch(
            st.duplicates.sql, *st.duplicates.params(service.duplicate_params(new))
        )
        service.settle_duplicates(new, st.candidates(rows))
        # the statement takes the case's key from its own INSERT (pk None here)
        history = service.history_rows(new, None)
        outbox = events.outbox_rows(service.outbox_items(new), report.at)
        shape = (len(history), len(outbox), report.key is not None)
        create = self._create.get(shape)
        if create is None:
            create = self._create[shape] = Compiled(create_statement(*shape), self.dialect)
        values = {f"c_{k}": v for k, v in service.case_row(new).items()}
        for i, row in enumerate(history):
            values.update({f"e{i}_{k}": v for k, v in row.items()})
        values.update({f"r_{k}": v for k, v in service.reporter_row(new, None).items()})
        for i, row in enumerate(outbox):
            values.update({f"o{i}_{k}": v for k, v in row.items()})
        if report.key is not None:
            answer = report.answer()
            row = service.idempotency_row(new, report.principal, report.key, answer, report.at)
            values.update({f"k_{k}": v for k, v in row.items()})
        new.case.pk = await conn.fetchval(create.sql, *create.params(values))
        return report

    async def _replay(self, report: Report, exc: Exception) -> Report:
        st = self.st
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(
                st.replay.sql,
                *st.replay.params({"username": report.principal.username, "key": report.key}),
            )
        report.replay = service.replayed(
            st.replay.row(row) if row else None, report.new.request_hash
        )
        if report.replay is None:
            raise exc
        return report


async def _json_codecs(conn: Any) -> None:
    """JSON in as the text SQLAlchemy's processors made, out as Python values."""
    for name in ("json", "jsonb"):
        await conn.set_type_codec(
            name, schema="pg_catalog", encoder=str, decoder=json.loads, format="text"
        )


async def _keep(conn: Any) -> None:
    """No reset query when a connection goes back to the pool (asyncpg's default is a round
    trip per report): the writer leaves no session state behind — its transactions always
    end, and it sets nothing else."""


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
