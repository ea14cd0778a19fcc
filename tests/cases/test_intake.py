"""The writers of ``POST /api/v1/cases`` (``cases/intake.py``) on every backend.

They write with statements compiled once on the DB-API connection, in batches on SQLite: the
rows must be exactly those of the service's Core path; a report that fails in a batch fails
alone; a database held by someone else makes reports wait — without blocking the event loop —
and not fail.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import threading
import time
from typing import Any

import pytest
from sqlalchemy import func, select, update

from cityops.cases import intake, service
from cityops.cases.models import Case, CaseEvent, CaseReporter
from cityops.cases.schemas import CaseCreate
from cityops.core.auth import Principal
from cityops.core.errors import ValidationFailed
from cityops.core.events import OutboxEvent, serial_write
from tests.cases.conftest import IN_GRID_1, IN_GRID_4

SEAT = Principal("seat", frozenset({"supervisor", "dispatcher"}), user_id=7)


def _body(**kw: Any) -> CaseCreate:
    lon, lat = kw.pop("at", IN_GRID_1)
    return CaseCreate.model_validate(
        {
            "source": "grid_patrol",
            "category": "event:0102",
            "title": "暴露垃圾",
            "description": "路边堆放生活垃圾",
            "location": {"lon": lon, "lat": lat, "address": "东四北大街"},
            "reporter": {"name": "王五", "phone": "13800000000", "notify": True},
            "dispatch": True,
            **kw,
        }
    )


def _columns(obj: Any, skip: set[str]) -> dict[str, Any]:
    return {c.key: getattr(obj, c.key) for c in obj.__table__.columns if c.key not in skip}


def _stored(db: Any, case_id: str) -> dict[str, Any]:
    cipher = service.cipher_for(db)
    with db.read() as s:
        case = s.scalar(select(Case).where(Case.id == case_id))
        assert case is not None
        history = s.scalars(
            select(CaseEvent).where(CaseEvent.case_pk == case.pk).order_by(CaseEvent.seq)
        ).all()
        reporter = s.scalar(select(CaseReporter).where(CaseReporter.case_pk == case.pk))
        outbox = s.scalars(select(OutboxEvent).order_by(OutboxEvent.id)).all()
        payloads = [
            {k: v for k, v in o.payload.items() if k != "case_id"}
            for o in outbox
            if o.payload.get("case_id") == case_id
        ]
        return {
            "case": _columns(case, {"pk", "id", "status", "version", "ended_at"}),
            "history": [_columns(e, {"id", "case_pk"}) for e in history],
            "reporter": {
                **_columns(reporter, {"pk", "case_pk", "name_enc", "phone_enc", "email_enc"}),
                "name": service._dec(cipher, reporter.name_enc),
                "phone": service._dec(cipher, reporter.phone_enc),
            },
            "outbox": payloads,
            "kinds": [o.kind for o in outbox if o.payload.get("case_id") == case_id],
        }


def _through_intake(db: Any, calls: list[tuple[CaseCreate, str | None]]) -> list[Any]:
    """Send the reports concurrently through one writer; each result or exception."""

    async def go() -> list[Any]:
        writer = await intake.open_writer(db)
        try:
            return await asyncio.gather(
                *(intake.create(writer, db, SEAT, body, key) for body, key in calls),
                return_exceptions=True,
            )
        finally:
            await writer.close()

    return asyncio.run(go())


def _count(db: Any) -> int:
    with db.read() as s:
        return int(s.scalar(select(func.count()).select_from(Case)) or 0)


def test_intake_writes_the_rows_of_the_service(city: Any, clock: Any) -> None:
    first, _ = service.create_case(city, SEAT, _body(), "key-1")
    # out of the duplicate search, so that both cases see the same (empty) set of open cases
    with city.write() as s:
        s.execute(update(Case).where(Case.id == first["id"]).values(status="cancelled"))
    [(report, created)] = _through_intake(city, [(_body(), "key-2")])
    assert created
    ours, theirs = _stored(city, report.new.case.id), _stored(city, first["id"])
    assert ours == theirs
    assert ours["case"]["department"] and ours["case"]["due_at"] is not None
    assert [e["action"] for e in ours["history"]] == ["report", "register", "dispatch"]
    assert ours["kinds"] == ["case.changed"] * 3
    assert ours["reporter"]["phone"] == "13800000000"
    # the answer stored with the key is the answer the service stores
    with city.read() as s:
        rows = s.execute(
            select(service.IDEMPOTENCY.c.key, service.IDEMPOTENCY.c.response).order_by(
                service.IDEMPOTENCY.c.key
            )
        ).all()
    a, b = (dict(r.response) for r in rows)
    for answer in (a, b):
        answer.pop("id"), answer.pop("status"), answer.pop("version")
    assert a == b


def test_a_failing_report_fails_alone(city: Any, clock: Any) -> None:
    """In one batch (SQLite: one transaction): a report that reuses a key with another body is
    refused, a repeated one gets the first answer, the others are written."""
    [(first, _)] = _through_intake(city, [(_body(), "shared-key")])
    results = _through_intake(
        city,
        [
            (_body(at=IN_GRID_4), None),
            (_body(category="event:0103"), "shared-key"),
            (_body(), "shared-key"),
            (_body(at=IN_GRID_4, title="又有垃圾"), None),
        ],
    )
    ok1, refused, replay, ok2 = results
    assert isinstance(refused, ValidationFailed) and "different" in refused.detail
    assert replay[1] is False and replay[0].replay["id"] == first.new.case.id
    assert ok1[1] and ok2[1] and ok1[0].new.case.id != ok2[0].new.case.id
    assert _count(city) == 3
    if city.is_sqlite:  # one transaction: the batch's later report sees the earlier one
        assert [d["id"] for d in ok2[0].new.case.likely_duplicates] == [ok1[0].new.case.id]


def test_the_loop_runs_while_another_writer_holds_sqlite(city: Any, clock: Any) -> None:
    """A transaction of another thread of the process (an import, the outbox worker) makes the
    report wait for it; meanwhile the event loop serves others."""
    if not city.is_sqlite:
        pytest.skip("PostgreSQL has no single writer lock to wait for")
    held = threading.Event()

    def hold() -> None:
        with serial_write(city) as s:
            s.execute(select(1))
            held.set()
            time.sleep(0.4)

    async def go() -> tuple[Any, int, float]:
        writer = await intake.open_writer(city)
        ticks = 0
        done = False

        async def tick() -> None:
            nonlocal ticks
            while not done:
                ticks += 1
                await asyncio.sleep(0.01)

        holder = threading.Thread(target=hold)
        holder.start()
        await asyncio.to_thread(held.wait, 5)
        ticker = asyncio.create_task(tick())
        t0 = time.monotonic()
        try:
            result = await intake.create(writer, city, SEAT, _body(), None)
        finally:
            done = True
            await ticker
            await writer.close()
            holder.join()
        return result, ticks, time.monotonic() - t0

    (_, created), ticks, waited = asyncio.run(go())
    assert created and waited >= 0.3
    assert ticks >= 5  # the loop kept running (a blocked loop would tick once or twice)
    assert _count(city) == 1


def test_another_process_holding_sqlite_delays_reports(city: Any, clock: Any) -> None:
    """Another process's write transaction: the writer retries without blocking the loop."""
    if not city.is_sqlite:
        pytest.skip("SQLite only")
    path = city.engine.url.database
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    threading.Timer(0.3, lambda: other.execute("COMMIT")).start()

    async def go() -> tuple[Any, int]:
        writer = await intake.open_writer(city)
        ticks = 0
        task = asyncio.create_task(intake.create(writer, city, SEAT, _body(), None))
        while not task.done():
            ticks += 1
            await asyncio.sleep(0.01)
        await writer.close()
        return task.result(), ticks

    (_, created), ticks = asyncio.run(go())
    other.close()
    assert created and ticks >= 5  # a blocked loop would tick once or twice
    assert _count(city) == 1


def test_the_clock_of_a_report_is_the_service_clock(city: Any, clock: Any) -> None:
    clock.set(dt.datetime(2026, 2, 13, 17, 0, tzinfo=dt.UTC))
    [(report, _)] = _through_intake(city, [(_body(), None)])
    with city.read() as s:
        at = s.scalar(select(Case.reported_at).where(Case.id == report.new.case.id))
    assert at == dt.datetime(2026, 2, 13, 17, 0, tzinfo=dt.UTC)


def test_creating_needs_the_permission(api: Any) -> None:
    """The route checks its caller itself (no FastAPI dependency): the same 401/403."""
    body = {"source": "grid_patrol", "category": "event:0102", "title": "x", "location": {}}
    r = api.client.post("/api/v1/cases", json=body)
    assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"
    r = api.client.post("/api/v1/cases", json=body, headers={"Authorization": "Bearer nonsense"})
    assert r.status_code == 401
    r = api.client.post("/api/v1/cases", json=body, headers=api.h("ana"))
    assert r.status_code == 403 and "cases:create" in r.json()["detail"]
    assert _count(api.db) == 0
    # a caller who may create gets the body's field errors (problem+json, field named)
    r = api.client.post("/api/v1/cases", json=body, headers=api.h("gw"))
    assert r.status_code == 422
    assert {e["field"] for e in r.json()["errors"]} >= {"location.lon", "location.lat"}


def test_a_failing_transaction_answers_every_waiting_report(
    city: Any, clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch whose transaction cannot even start (a disk error) answers its requests with
    the error instead of leaving them waiting; the next batch is written."""
    if not city.is_sqlite:
        pytest.skip("SQLite's group writer")
    real = intake.SqliteWriter._write_batch
    calls = []

    def broken_once(self: Any, con: Any, batch: Any) -> Any:
        calls.append(len(batch))
        if len(calls) == 2:
            raise sqlite3.OperationalError("disk I/O error")
        return real(self, con, batch)

    monkeypatch.setattr(intake.SqliteWriter, "_write_batch", broken_once)

    async def go() -> list[Any]:
        writer = await intake.open_writer(city)
        try:
            await intake.create(writer, city, SEAT, _body(), None)  # caches warm: one batch next
            first = await asyncio.gather(
                *(intake.create(writer, city, SEAT, _body(), None) for _ in range(3)),
                return_exceptions=True,
            )
            second = await intake.create(writer, city, SEAT, _body(), None)
        finally:
            await writer.close()
        return [*first, second]

    *failed, (_, created) = asyncio.run(go())
    assert calls == [1, 3, 1]
    assert all(isinstance(r, sqlite3.OperationalError) for r in failed)
    assert created and _count(city) == 2
