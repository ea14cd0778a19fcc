"""``cityops cases …`` and ``cityops worker``: argument translation only; the work is in
:mod:`cityops.cases.service` and :mod:`cityops.cases.worker`."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="The case loop (一网统管): cases, calendar, outbox, rules.", no_args_is_help=True
)
calendar_app = typer.Typer(
    help="The working calendar's overrides (工作日历).", no_args_is_help=True
)
outbox_app = typer.Typer(help="The transactional outbox.", no_args_is_help=True)
app.add_typer(calendar_app, name="calendar")
app.add_typer(outbox_app, name="outbox")
console = Console(stderr=True)
out = Console()

DbOpt = Annotated[
    str | None,
    typer.Option("--db", help="Database URL (default: CITYOPS_DATABASE_URL, then ./cityops.db)"),
]
UserOpt = Annotated[str, typer.Option("--user", help="act as this user (their roles and scope)")]


def _db(db: str | None) -> Any:
    from cityops.cli import open_db

    return open_db(db)


def _principal(database: Any, username: str) -> Any:
    from sqlalchemy import select

    from cityops.core.auth import principal_of
    from cityops.core.errors import NotFound
    from cityops.core.models import User

    with database.read() as session:
        user = session.scalar(select(User).where(User.username == username))
        if user is None:
            raise NotFound(f"No user {username!r}: create it with `cityops users create`.")
        return principal_of(user)


def _run(fn: Any) -> Any:
    from cityops.cli import _fail
    from cityops.core.errors import CityopsError

    try:
        return fn()
    except CityopsError as exc:
        _fail(exc)


@app.command("list")
def list_cmd(
    user: UserOpt,
    status: Annotated[str | None, typer.Option(help="comma-separated statuses")] = None,
    overdue: Annotated[bool, typer.Option("--overdue", help="only overdue cases")] = False,
    limit: Annotated[int, typer.Option(help="how many")] = 50,
    db: DbOpt = None,
) -> None:
    """List cases the user may see, newest first."""
    from cityops.cases import service

    database = _db(db)
    f = service.CaseFilter(
        status=status.split(",") if status else None,
        overdue=True if overdue else None,
        limit=limit,
    )
    page = _run(lambda: service.list_cases(database, _principal(database, user), f))
    table = Table("id", "status", "category", "department", "due", "title")
    for c in page["items"]:
        table.add_row(
            c["id"],
            c["status"],
            c["category"],
            c["department"] or "",
            (c["due_at"] or "")[:16],
            c["title"],
        )
    out.print(table)


@app.command("show")
def show_cmd(case_id: str, user: UserOpt, db: DbOpt = None) -> None:
    """A case with its history, as JSON."""
    from cityops.cases import service

    database = _db(db)
    case = _run(lambda: service.get_case(database, _principal(database, user), case_id))
    out.print_json(json.dumps(case, ensure_ascii=False))


@app.command("act")
def act_cmd(
    case_id: str,
    action: str,
    user: UserOpt,
    note: Annotated[str | None, typer.Option(help="reason or result")] = None,
    department: Annotated[str | None, typer.Option(help="dispatch override")] = None,
    into: Annotated[str | None, typer.Option(help="merge: the surviving case")] = None,
    db: DbOpt = None,
) -> None:
    """Take an action on a case as USER (the machine decides, as over HTTP)."""
    from cityops.cases import service
    from cityops.cases.schemas import TransitionIn

    database = _db(db)
    body = TransitionIn(action=action, note=note, department=department, into=into)
    case = _run(lambda: service.transition(database, _principal(database, user), case_id, body))
    console.print(f"[green]{case['id']}[/green] is now {case['status']}")


@app.command("categories")
def categories_cmd() -> None:
    """Case categories with their default department and deadlines."""
    from cityops.cases import service

    table = Table("id", "name", "kind", "standard", "department", "handling (normal)")
    for c in service.categories_out():
        table.add_row(
            c["id"],
            c["name"],
            c["kind_zh"],
            c["standard_ref"],
            c["default_department"],
            c["deadlines"]["normal"]["handling"],
        )
    out.print(table)


@app.command("metrics")
def metrics_cmd(
    user: UserOpt,
    group_by: Annotated[str, typer.Option(help="department, street, grid or worker")],
    start: Annotated[str, typer.Option("--from", help="YYYY-MM-DD (Asia/Shanghai)")],
    end: Annotated[str, typer.Option("--to", help="YYYY-MM-DD, exclusive")],
    xlsx: Annotated[Path | None, typer.Option(help="write an xlsx workbook here")] = None,
    db: DbOpt = None,
) -> None:
    """CJ/T 292 evaluation figures over a period."""
    from cityops.cases import service
    from cityops.core.calendar import SHANGHAI

    database = _db(db)

    def day(text: str) -> dt.datetime:
        return dt.datetime.combine(dt.date.fromisoformat(text), dt.time(), tzinfo=SHANGHAI)

    report = _run(
        lambda: service.case_metrics(
            database, _principal(database, user), group_by, day(start), day(end)
        )
    )
    if xlsx:
        xlsx.write_bytes(service.metrics_xlsx(report))
        console.print(f"[green]wrote[/green] {xlsx}")
        return
    out.print_json(json.dumps(report, ensure_ascii=False))


@app.command("docs")
def docs_cmd() -> None:
    """Print the action table (for docs/cases.md)."""
    from cityops.cases.machine import action_table_markdown

    out.print(action_table_markdown(), markup=False, highlight=False, soft_wrap=True)


@app.command("rules-validate")
def rules_validate() -> None:
    """Load and cross-check every rule file of the case loop."""
    from cityops.cases import service
    from cityops.core.rules import RuleFileError

    try:
        rules = service.case_rules()
    except RuleFileError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    console.print(
        f"[green]ok[/green]: {len(rules.categories)} categories, {len(rules.dispatch.rules)} "
        f"dispatch rules, {len(rules.escalation.levels)} escalation levels"
    )


@calendar_app.command("set")
def calendar_set(
    day: Annotated[str, typer.Argument(help="YYYY-MM-DD")],
    working: Annotated[bool, typer.Option("--working/--off", help="working day or day off")],
    note: Annotated[str, typer.Option(help="why (the notice)")],
    user: UserOpt = "admin",
    db: DbOpt = None,
) -> None:
    """Override one day of the official calendar."""
    from cityops.cases import service

    database = _db(db)
    _run(
        lambda: service.set_override(
            database, _principal(database, user), dt.date.fromisoformat(day), working, note
        )
    )
    console.print(f"{day}: {'working day' if working else 'day off'}")


@calendar_app.command("confirm")
def calendar_confirm(
    year: int,
    note: Annotated[str, typer.Option(help="the State Council notice entered")],
    user: UserOpt = "admin",
    db: DbOpt = None,
) -> None:
    """Mark a year's overrides complete: its deadlines stop being provisional."""
    from cityops.cases import service

    database = _db(db)
    _run(lambda: service.confirm_year(database, _principal(database, user), year, note))
    console.print(f"{year}: confirmed")


@calendar_app.command("due")
def calendar_due(
    start: Annotated[str, typer.Argument(help="ISO time with zone, e.g. 2025-09-30T16:00+08:00")],
    limit: Annotated[str, typer.Argument(help="e.g. '4 working_hours'")],
    db: DbOpt = None,
) -> None:
    """When a limit started at START runs out."""
    from cityops.cases import service
    from cityops.cases.deadlines import parse_limit
    from cityops.core.calendar import SHANGHAI

    parsed = parse_limit(limit)
    due = service.calendar_for(_db(db)).add(
        dt.datetime.fromisoformat(start), parsed.amount, parsed.unit
    )
    flag = " (provisional)" if due.provisional else ""
    out.print(f"{due.at.astimezone(SHANGHAI).isoformat()}{flag}")


@outbox_app.command("stats")
def outbox_stats(db: DbOpt = None) -> None:
    """Pending, done and failed outbox events."""
    from cityops.core import events

    with _db(db).read() as session:
        out.print(events.stats(session))


@outbox_app.command("retry")
def outbox_retry(db: DbOpt = None) -> None:
    """Put failed events back in the queue."""
    from sqlalchemy import update

    from cityops.core.db import utcnow
    from cityops.core.events import OutboxEvent

    with _db(db).write() as session:
        n = session.execute(
            update(OutboxEvent)
            .where(OutboxEvent.failed_at.is_not(None))
            .values(failed_at=None, attempts=0, available_at=utcnow())
        ).rowcount
    console.print(f"{n} event(s) queued again")


@outbox_app.command("purge")
def outbox_purge(
    days: Annotated[int, typer.Option(help="delete events done more than this many days ago")] = 7,
    db: DbOpt = None,
) -> None:
    """Delete old processed events (the case history keeps the record)."""
    from cityops.core import events

    n = events.purge(_db(db), dt.timedelta(days=days))
    console.print(f"{n} processed event(s) deleted")


def worker_cmd(
    db: DbOpt = None,
    interval: Annotated[float, typer.Option(help="seconds between rounds")] = 2.0,
    once: Annotated[bool, typer.Option("--once", help="one round, then exit")] = False,
) -> None:
    """Run the outbox consumer and the overdue scan (督办); any number on PostgreSQL."""
    from cityops.cases import worker

    database = _db(db)
    console.print(f"cityops worker on {database.url} (Ctrl-C stops)")
    while True:
        result = worker.run_round(database)
        if result["escalated"] or result["events"]:
            console.print(f"escalated {result['escalated']}, events {result['events']}")
        if once:
            return
        time.sleep(interval)
