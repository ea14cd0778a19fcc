"""Edges of the case loop: another domain creating cases in its own transaction, escalation
notices by e-mail/SMS, the worker inside the server, and the command line."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from cityops.cases import service, worker
from cityops.cases.models import Case
from cityops.cases.schemas import CaseCreate, Location, Source
from cityops.core import events, notify
from cityops.core.auth import Principal
from tests.cases.conftest import IN_GRID_1, Api, Clock, cst_dt

LIFELINE = Principal("lifeline", frozenset({"monitor", "supervisor", "dispatcher"}))


def test_a_case_created_inside_another_domains_transaction(city: Any, clock: Clock) -> None:
    body = CaseCreate(
        source=Source.SENSOR_ALARM,
        category="city:water_alarm",
        urgency="urgent",
        title="城市生命线报警 · water",
        description="pressure drop",
        location=Location(lon=IN_GRID_1[0], lat=IN_GRID_1[1]),
        register=True,
        dispatch=True,
        note="lifeline incident #1",
    )
    with pytest.raises(RuntimeError), city.write() as session:
        service.create_case_in_session(session, body, LIFELINE)
        raise RuntimeError("the consumer failed after creating the case")
    with city.read() as s:
        assert s.scalar(select(Case.id)) is None  # rolled back with the consumer
    with city.write() as session:
        case = service.create_case_in_session(session, body, LIFELINE, now=clock())
    assert (case.status, case.department) == ("dispatched", "water")
    # urgent handling: 2 natural hours from dispatch
    assert case.due_at == clock() + (cst_dt(2025, 9, 29, 12) - cst_dt(2025, 9, 29, 10))
    with city.read() as s:
        assert s.scalar(select(Case.source).where(Case.id == case.id)) == "sensor_alarm"


def test_escalation_notifies_contacts_by_sms_and_email(
    api: Api, clock: Clock, city: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cityops.core.rules import DEFAULT_RULES
    from cityops.settings import get_settings

    rules = tmp_path / "rules" / "cases"
    rules.mkdir(parents=True)
    text = (DEFAULT_RULES / "cases" / "escalation.yaml").read_text(encoding="utf-8")
    text = text.replace(
        "contacts: {}",
        'contacts:\n  "department:sanitation": {sms: "13800000001", email: duty@san.example}\n'
        "  dispatcher: {email: centre@example}\n",
    )
    (rules / "escalation.yaml").write_text(text, encoding="utf-8")
    monkeypatch.setenv("CITYOPS_RULES_DIR", str(tmp_path / "rules"))
    get_settings.cache_clear()
    service.clear_caches()
    sms, mail = notify.MemorySender("sms"), notify.MemorySender("email")
    notify.set_sender("sms", sms)
    notify.set_sender("email", mail)
    try:
        c = api.report("seat", dispatch=True)  # handling due Tue 09-30 17:30
        worker.scan_overdue(city, cst_dt(2025, 9, 30, 17, 31))  # level 1: department
        events.drain(city, worker.handlers_for(city))
        assert [m.to for m in sms.sent] == ["13800000001"] and [m.to for m in mail.sent] == [
            "duty@san.example"
        ]
        assert c["id"] in sms.sent[0].body and "催办" in sms.sent[0].subject
        worker.scan_overdue(city, cst_dt(2025, 10, 14, 17, 31))  # level 2: + dispatcher
        events.drain(city, worker.handlers_for(city))
        assert sorted(m.to for m in mail.sent) == [
            "centre@example",
            "duty@san.example",
            "duty@san.example",
        ]
    finally:
        notify.set_sender("sms", None)
        notify.set_sender("email", None)
        monkeypatch.delenv("CITYOPS_RULES_DIR")
        get_settings.cache_clear()
        service.clear_caches()


def test_worker_runs_inside_the_server_on_request(
    city: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    from cityops.app import create_app
    from cityops.settings import Settings, get_settings
    from tests.cases.conftest import ensure_user
    from tests.conftest import token_for

    monkeypatch.setenv("CITYOPS_WORKER_IN_PROCESS", "on")
    monkeypatch.setenv("CITYOPS_WORKER_INTERVAL", "0.1")
    get_settings.cache_clear()
    ensure_user(city, "gw")
    app = create_app(Settings(database_url=city.url), city)
    with TestClient(app) as client:
        r = client.post(
            "/api/v1/cases",
            headers=token_for(client, "gw"),
            json={
                "source": "grid_patrol",
                "category": "event:0102",
                "title": "x",
                "location": {"lon": IN_GRID_1[0], "lat": IN_GRID_1[1]},
            },
        )
        assert r.status_code == 201
        deadline = time.monotonic() + 20
        while True:
            with city.read() as s:
                if events.stats(s)["done"] >= 1:
                    break
            assert time.monotonic() < deadline, "the in-process worker did not run"
            time.sleep(0.1)


def test_command_line(city: Any) -> None:
    from cityops.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["cases", "categories"])
    assert r.exit_code == 0 and "上水井盖" in r.output
    r = runner.invoke(
        app,
        ["cases", "calendar", "due", "2025-09-30T16:00+08:00", "4 working_hours", "--db", city.url],
    )
    assert r.exit_code == 0 and "2025-10-09T11:30:00+08:00" in r.output
    r = runner.invoke(app, ["worker", "--once", "--db", city.url])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["cases", "outbox", "stats", "--db", city.url])
    assert r.exit_code == 0 and "pending" in r.output
