"""Background work of the case loop: outbox consumers and the overdue scan (督办).

* :data:`handlers_for` — the outbox consumers on one screen (cosmicpython's ``EVENT_HANDLERS``,
  EXAMPLES §3): ``case.changed`` fans out to one ``notify.webhook`` per receiver and, when a
  case closes, one ``notify.reporter`` per reporter — including those of merged cases; the
  two ``notify.*`` kinds talk to the outside world and run outside any transaction.
* :func:`scan_overdue` — cases whose stage deadline has been passed long enough for the next
  escalation level (``escalation.yaml``) get an ``escalate`` action by the system, recorded in
  their history and published like any other transition, so webhooks carry it.

``cityops worker`` runs :func:`run_round` in a loop (any number of them on PostgreSQL); on
SQLite :class:`Worker` runs the same loop in a thread of ``cityops serve`` (DESIGN §4).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from cityops.cases import machine, service
from cityops.cases.machine import OPEN, SYSTEM
from cityops.cases.models import Case, CaseReporter
from cityops.core import events, notify
from cityops.core.calendar import SHANGHAI
from cityops.core.db import Database
from cityops.core.errors import CityopsError
from cityops.core.events import serial_write
from cityops.settings import get_settings

log = logging.getLogger("cityops.cases.worker")


# ------------------------------------------------------------------------------ consumers
def on_case_changed(session: Session, event: events.Claimed) -> None:
    """Fan a case event out to its notices (in the claiming transaction: exactly once)."""
    p = event.payload
    settings = get_settings()
    subject = f"case {p['case_id']}: {p['action']} → {p['to_status']}"
    for url in settings.webhooks():
        events.publish(
            session,
            "notify.webhook",
            {
                "url": url,
                "source_uid": event.uid,
                "kind": f"case.{p['action']}",
                "subject": subject,
                "data": p,
            },
        )
    if p["action"] == "escalate":
        rules = service.case_rules()
        level = int(p.get("escalation_level") or 0)
        name = getattr(rules.escalation.level(level), "name", "")
        for channel, address in rules.escalation.addresses(level, p.get("department")):
            events.publish(
                session,
                "notify.person",
                {
                    "channel": channel,
                    "to": address,
                    "subject": f"{name} case {p['case_id']} (level {level})",
                    "text": f"{name}: case {p['case_id']} is overdue — {p.get('note', '')}",
                    "case_id": p["case_id"],
                },
            )
    if p["action"] == "cancel":
        # domain events for other domains' consumers, like case.closed below: a lifeline
        # incident closes with its cancelled case (with the reason) and follows a merged case
        # to the surviving one
        events.publish(session, "case.cancelled", {"case_id": p["case_id"], "note": p["note"]})
    if p["action"] == "merge":
        into = session.scalar(select(Case.merged_into).where(Case.id == p["case_id"]))
        events.publish(session, "case.merged", {"case_id": p["case_id"], "into": into})
    if p["action"] == "close":
        # a domain event for other domains' consumers (a lifeline incident closes with its
        # case, 闭环); published here, in the claiming transaction, exactly once
        events.publish(session, "case.closed", {"case_id": p["case_id"]})
        pk = session.scalar(select(Case.pk).where(Case.id == p["case_id"]))
        for r in session.scalars(
            select(CaseReporter).where(CaseReporter.case_pk == pk, CaseReporter.notify.is_(True))
        ):
            if r.phone_enc or r.email_enc:
                events.publish(
                    session,
                    "notify.reporter",
                    {
                        "reporter_pk": r.pk,
                        "case_id": p["case_id"],
                        "text": f"您反映的问题（案件 {p['case_id']}）已处理完毕并结案。"
                        f"Your report (case {p['case_id']}) has been resolved and closed.",
                    },
                )


def send_webhook(event: events.Claimed) -> None:
    p = event.payload
    notify.WebhookSender(p["url"], get_settings().webhook_secret).send(
        notify.Message(
            event_id=p["source_uid"],
            kind=p["kind"],
            subject=p["subject"],
            body=p["subject"],
            data=p["data"],
        )
    )


def notify_reporter(db: Database, event: events.Claimed) -> None:
    p = event.payload
    with db.read() as session:
        r = session.get(CaseReporter, p["reporter_pk"])
    if r is None:
        return
    cipher = service.cipher_for(db)
    phone = service._dec(cipher, r.phone_enc)
    email = service._dec(cipher, r.email_enc)
    channel, to = ("sms", phone) if phone else ("email", email)
    if not to:
        return
    notify.sender_for(channel).send(
        notify.Message(
            event_id=event.uid,
            kind="case.closed",
            subject=f"案件 {p['case_id']} 已结案 / case closed",
            body=p["text"],
            data={"case_id": p["case_id"]},
            to=to,
        )
    )


def notify_person(event: events.Claimed) -> None:
    p = event.payload
    notify.sender_for(p["channel"]).send(
        notify.Message(
            event_id=event.uid,
            kind="case.escalate",
            subject=p["subject"],
            body=p["text"],
            data={"case_id": p["case_id"]},
            to=p["to"],
        )
    )


def handlers_for(db: Database) -> dict[str, events.Handler]:
    return {
        "case.changed": events.Handler(on_case_changed),
        "notify.webhook": events.Handler(send_webhook, external=True),
        "notify.person": events.Handler(notify_person, external=True),
        "notify.reporter": events.Handler(lambda event: notify_reporter(db, event), external=True),
    }


events.register_handlers(handlers_for)

#: other domains' outbox consumer tables the worker runs too ("module:ATTRIBUTE"), until each
#: domain registers its own with events.register_handlers (a composition list like ROUTERS)
DOMAIN_HANDLERS = ("cityops.lifeline.service:EVENT_HANDLERS",)


def _constant(table: Any) -> events.HandlerFactory:
    def factory(_db: Database) -> Any:
        return table

    return factory


def _register_domain_handlers() -> None:
    import importlib

    for spec in DOMAIN_HANDLERS:
        module, _, attr = spec.partition(":")
        try:
            table = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:  # a domain not installed yet
            log.warning("outbox consumers %s not available: %s", spec, exc)
            continue
        events.register_handlers(_constant(table))


_register_domain_handlers()


# ------------------------------------------------------------------------------ overdue
def scan_overdue(db: Database, at: dt.datetime | None = None, limit: int = 200) -> int:
    """Raise every case whose next escalation time has come by one level (督办)."""
    at = at or service.now()
    rules = service.case_rules()
    cal = service.calendar_for(db)
    open_ = [s.value for s in OPEN]
    with db.read() as session:
        pks = list(
            session.scalars(
                select(Case.pk)
                .where(Case.next_escalation_at <= at, Case.status.in_(open_))
                .order_by(Case.next_escalation_at)
                .limit(limit)
            )
        )
    done = 0
    for pk in pks:
        try:
            with serial_write(db) as session:
                query = select(Case).where(
                    Case.pk == pk, Case.next_escalation_at <= at, Case.status.in_(open_)
                )
                if db.is_postgres:
                    # another worker holding it is escalating it right now: leave it
                    query = query.with_for_update(skip_locked=True)
                c = session.scalar(query)
                if c is None:
                    continue
                level = rules.escalation.level(c.escalation_level + 1)
                due_local = (
                    c.due_at.astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M") if c.due_at else "?"
                )
                note = (
                    f"Overdue: the {c.stage} deadline {due_local} has passed — "
                    f"{level.name if level else ''} (level {c.escalation_level + 1})"
                )
                tr = machine.decide(
                    service.state_of(c), "escalate", SYSTEM, {"note": note}, rules.policy
                )
                ev = service._apply(
                    c,
                    tr,
                    actor="system",
                    note=note,
                    params={},
                    at=at,
                    rules=rules,
                    cal=cal,
                    data={"overdue": True},
                )
                ev.case_pk = c.pk
                session.add(ev)
                service._publish(session, c, ev)
            done += 1
        except (CityopsError, StaleDataError) as exc:
            log.info("case %s not escalated: %s", pk, exc)
    return done


def run_round(db: Database, at: dt.datetime | None = None) -> dict[str, int]:
    """One worker round: escalate overdue cases, then drain due outbox events."""
    escalated = scan_overdue(db, at)
    applied = events.run_for(db, events.all_handlers(db))
    return {"escalated": escalated, "events": applied}


def run_worker_in_process(db: Database) -> bool:
    """Whether ``cityops serve`` runs the worker in a thread (``CITYOPS_WORKER_IN_PROCESS``:
    ``auto`` is on for SQLite, off for PostgreSQL where ``cityops worker`` processes run)."""
    mode = get_settings().worker_in_process.lower()
    if mode == "auto":
        return db.is_sqlite
    return mode in ("on", "1", "true", "yes")


def _no_autocheckpoint(dbapi_conn: Any, _record: Any, _proxy: Any = None) -> None:
    dbapi_conn.execute("PRAGMA wal_autocheckpoint=0")


def checkpoint(db: Database) -> None:
    """Copy the SQLite write-ahead log into the database file (PASSIVE: never blocks a
    writer)."""
    with db.engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")


class Worker:
    """The worker loop in a daemon thread (``cityops serve`` on SQLite).

    On SQLite it also takes the WAL checkpoints off the request path: by default the commit
    that pushes the log past 1000 pages copies it back and fsyncs, inside someone's request
    (stalls of 0.1–1 s measured on a busy disk). While the worker runs, connections skip
    automatic checkpoints and the worker checkpoints every round instead.
    """

    def __init__(self, db: Database, interval: float | None = None) -> None:
        self.db = db
        self.interval = interval or get_settings().worker_interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.db.is_sqlite:
            from sqlalchemy import event

            event.listen(self.db.engine, "checkout", _no_autocheckpoint)
        self._thread = threading.Thread(target=self._run, name="cityops-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self.db.is_sqlite:
            from sqlalchemy import event

            if event.contains(self.db.engine, "checkout", _no_autocheckpoint):
                event.remove(self.db.engine, "checkout", _no_autocheckpoint)

    def _run(self) -> None:
        # checkpoints run more often than rounds: the log should stay small
        tick = min(self.interval, 0.5) if self.db.is_sqlite else self.interval
        elapsed = 0.0
        while not self._stop.wait(tick):
            elapsed += tick
            try:
                if self.db.is_sqlite:
                    checkpoint(self.db)
                if elapsed >= self.interval:
                    elapsed = 0.0
                    run_round(self.db)
            except Exception:  # the loop must survive one bad round; the log has it
                log.exception("worker round failed")

    def __enter__(self) -> Worker:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
