"""The case loop end to end over HTTP, on every backend (GB/T 30428's seven steps).

Times are Asia/Shanghai; working hours the cityops default (09:00–12:00, 13:30–17:30).
Limits from rules/cases/deadlines.yaml: registration and dispatch 30 working minutes each,
暴露垃圾 (event:0102) handling 1 working day, 道路不洁 (event:0104) 5 working hours,
verification 1 working hour; escalation 催办 at the deadline, 督办 5 working days later.
"""

from __future__ import annotations

import datetime as dt
import http.server
import io
import json
import threading
from typing import Any, ClassVar

import pytest
from sqlalchemy import func, select

from cityops.base import grid_workers
from cityops.cases import machine, service, worker
from cityops.cases.models import Case, CaseEvent
from cityops.core import events, notify
from cityops.core.models import AuditEntry
from tests.cases.conftest import (
    IN_COMMUNITY_2,
    IN_GRID_1,
    IN_STREET_2,
    OUTSIDE,
    SHANGHAI,
    Api,
    Clock,
)

PROBLEM = "application/problem+json"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


def cst(y: int, mo: int, d: int, h: int, mi: int = 0) -> dt.datetime:
    return dt.datetime(y, mo, d, h, mi, tzinfo=SHANGHAI)


def utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def count_cases(db: Any) -> int:
    with db.read() as s:
        return int(s.scalar(select(func.count()).select_from(Case)) or 0)


def replays(db: Any, case_id: str) -> str:
    return machine.replay(service.history_of(db, case_id)).value


def dispatched(api: Api, clock: Clock, **kw: Any) -> dict[str, Any]:
    c = api.report(**kw)
    api.act("sup", c["id"], "register")
    return api.act("disp", c["id"], "dispatch")


# ------------------------------------------------------------------------------ the loop
def test_full_loop_with_clocks_history_and_feedback(api: Api, clock: Clock, city: Any) -> None:
    c = api.report("gw")
    assert c["status"] == "reported" and c["grid_code"] == "110105001001001"
    assert c["suggested_department"] == "sanitation" and c["department"] is None
    assert c["stage"] == "registration"
    assert utc(c["due_at"]) == cst(2025, 9, 29, 10, 30)  # 30 working minutes
    cid = c["id"]
    assert len(cid) == 10 and cid.isalnum()

    clock.set(cst(2025, 9, 29, 10, 10))
    c = api.act("gw", cid, "verify", note="on site: yes, 3 bags", found=True)
    c = api.act("sup", cid, "register", note="立案")
    assert (c["status"], c["stage"]) == ("registered", "dispatch")
    assert utc(c["due_at"]) == cst(2025, 9, 29, 10, 40)

    clock.set(cst(2025, 9, 29, 10, 20))
    c = api.act("disp", cid, "dispatch")
    assert (c["status"], c["department"], c["stage"]) == ("dispatched", "sanitation", "handling")
    # 1 working day from Mon 09-29: the close of Tue 09-30
    assert utc(c["due_at"]) == utc(c["handling_due_at"]) == cst(2025, 9, 30, 17, 30)
    assert "accept" in api.get("san", cid)["actions"]

    c = api.act("san", cid, "accept")
    c = api.act("san", cid, "progress", note="truck on the way")
    clock.set(cst(2025, 9, 30, 15, 0))
    c = api.act("san", cid, "resolve", note="cleared and swept")
    assert (c["status"], c["stage"]) == ("resolved", "verification")
    assert utc(c["due_at"]) == cst(2025, 9, 30, 16, 0)

    clock.set(cst(2025, 9, 30, 15, 30))
    api.act("gw", cid, "check", note="clean", passed=True)
    c = api.act(
        "sup",
        cid,
        "close",
        feedback={"contacted": True, "solved": True, "satisfaction": "satisfied"},
    )
    assert c["status"] == "closed" and c["due_at"] is None and c["actions"] == ["feedback"]

    full = api.get("sup", cid)
    assert [e["action"] for e in full["history"]] == [
        "report",
        "verify",
        "register",
        "dispatch",
        "accept",
        "progress",
        "resolve",
        "check",
        "close",
    ]
    assert [e["seq"] for e in full["history"]] == list(range(1, 10))
    assert full["version"] == 9
    assert all(e["actor"] and e["at"] for e in full["history"])
    assert full["history"][5]["note"] == "truck on the way"
    assert replays(city, cid) == "closed"
    with city.read() as s:
        row = s.scalar(select(Case).where(Case.id == cid))
        assert row.on_time is True and row.handling_minutes is not None
        # 10:20–12:00 and 13:30–17:30 on 09-29, 09:00–12:00 and 13:30–15:00 on 09-30
        assert row.handling_minutes == 100 + 240 + 180 + 90


def test_create_and_dispatch_in_one_request_across_national_day(api: Api, clock: Clock) -> None:
    clock.set(cst(2025, 9, 30, 16, 0))
    c = api.report("seat", category="event:0104", title="道路不洁", dispatch=True)
    assert (c["status"], c["department"], c["grid_code"]) == (
        "dispatched",
        "sanitation",
        "110105001001001",
    )
    # 5 working hours: 1.5 h on 09-30, then 10-01 … 10-08 off, 3.5 h on Thu 10-09
    assert utc(c["due_at"]) == cst(2025, 10, 9, 14, 0)
    assert c["due_provisional"] is False
    hist = api.get("seat", c["id"])["history"]
    assert [e["action"] for e in hist] == ["report", "register", "dispatch"]
    # a grid worker may not dispatch
    r = api.client.post(
        "/api/v1/cases",
        headers=api.h("gw"),
        json={
            "source": "grid_patrol",
            "category": "event:0104",
            "title": "x",
            "location": {"lon": IN_GRID_1[0], "lat": IN_GRID_1[1]},
            "dispatch": True,
        },
    )
    assert r.status_code == 403 and "supervisor" in r.json()["detail"]


def test_spring_festival_extension_and_make_up_saturday(api: Api, clock: Clock) -> None:
    clock.set(cst(2026, 2, 13, 15, 0))
    c = api.report("seat", category="event:0104", title="道路不洁", dispatch=True)
    # 2.5 h on Fri 02-13, 2.5 h on the make-up Saturday 02-14
    assert utc(c["due_at"]) == cst(2026, 2, 14, 11, 30)
    api.act("san", c["id"], "accept")
    api.act(
        "san",
        c["id"],
        "request_extension",
        note="frozen ground",
        extension={"amount": 1, "unit": "working_days"},
    )
    c = api.act("disp", c["id"], "grant_extension")
    # one working day after the old deadline: 02-15 … 02-23 off, so Tue 02-24 at 17:30
    assert utc(c["due_at"]) == cst(2026, 2, 24, 17, 30)


def test_decline_needs_a_reason(api: Api, clock: Clock, city: Any) -> None:
    c = api.report("cit", source="online", reporter={"name": "张三", "phone": "13812345678"})
    r = api.client.post(
        f"/api/v1/cases/{c['id']}/transitions", json={"action": "decline"}, headers=api.h("sup")
    )
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM
    assert "note" in r.json()["detail"] and r.json()["errors"][0]["field"] == "note"
    assert api.get("sup", c["id"])["version"] == 1
    c = api.act("sup", c["id"], "decline", note="private property, not a city matter")
    assert c["status"] == "declined" and c["actions"] == []
    mine = api.get("cit", c["id"])
    assert mine["status"] == "declined" and mine["reporters"] is None
    assert mine["history"][-1]["actor"] == "supervisor"  # citizens see the centre, not staff
    assert replays(city, c["id"]) == "declined"


def test_send_back_and_reassignment(api: Api, clock: Clock, city: Any) -> None:
    c = dispatched(api, clock)
    cid = c["id"]
    api.act("law", cid, "accept", expect=404)  # another department cannot even see it
    r = api.client.post(
        f"/api/v1/cases/{cid}/transitions", json={"action": "send_back"}, headers=api.h("san")
    )
    assert r.status_code == 422 and "reason" in r.json()["detail"]
    c = api.act("san", cid, "send_back", note="private wall: law enforcement's duty")
    assert (c["status"], c["department"], c["stage"]) == ("registered", None, "dispatch")
    api.get("san", cid, expect=404)
    r = api.client.post(
        f"/api/v1/cases/{cid}/transitions",
        json={"action": "dispatch", "department": "law_enforcement"},
        headers=api.h("disp"),
    )
    assert r.status_code == 422 and "needs a reason" in r.json()["detail"]
    r = api.client.post(
        f"/api/v1/cases/{cid}/transitions",
        json={"action": "dispatch", "department": "nobody", "note": "x"},
        headers=api.h("disp"),
    )
    assert r.status_code == 422 and "Unknown department" in r.json()["detail"]
    c = api.act("disp", cid, "dispatch", department="law_enforcement", note="改派: 违建")
    assert (c["status"], c["department"]) == ("dispatched", "law_enforcement")
    api.act("law", cid, "accept")
    hist = api.get("sup", cid)["history"]
    assert hist[-2]["data"]["overrides_rule"] == "sanitation"
    assert replays(city, cid) == "in_progress"


def test_extension_granted_then_denied(api: Api, clock: Clock) -> None:
    c = dispatched(api, clock)
    cid = c["id"]
    assert utc(c["due_at"]) == cst(2025, 9, 30, 17, 30)
    api.act("san", cid, "accept")
    c = api.act(
        "san",
        cid,
        "request_extension",
        note="needs a crane",
        extension={"amount": 2, "unit": "working_days"},
    )
    assert c["extension_request"]["amount"] == 2 and "grant_extension" not in c["actions"]
    api.act("san", cid, "request_extension", note="again", expect=409)
    api.act("san", cid, "grant_extension", expect=403)
    c = api.act("disp", cid, "grant_extension", note="ok")
    # two working days after Tue 09-30 17:30: Thu 10-09, Fri 10-10
    assert utc(c["due_at"]) == cst(2025, 10, 10, 17, 30)
    assert c["extension_request"] is None
    api.act("san", cid, "request_extension", note="still no crane")
    r = api.client.post(
        f"/api/v1/cases/{cid}/transitions", json={"action": "deny_extension"}, headers=api.h("disp")
    )
    assert r.status_code == 422
    c = api.act("disp", cid, "deny_extension", note="borrow one from the district")
    assert c["extension_request"] is None and utc(c["due_at"]) == cst(2025, 10, 10, 17, 30)


def test_rework_then_close(api: Api, clock: Clock, city: Any) -> None:
    cid = dispatched(api, clock)["id"]
    api.act("san", cid, "accept")
    api.act("san", cid, "resolve", note="done")
    api.act("gw", cid, "check", note="still dirty", passed=False)
    clock.set(cst(2025, 9, 29, 14, 0))
    c = api.act("sup", cid, "return_for_rework", note="still dirty behind the kiosk")
    assert (c["status"], c["department"], c["rework_count"]) == ("dispatched", "sanitation", 1)
    assert utc(c["due_at"]) == cst(2025, 9, 30, 17, 30)  # a new handling clock from 14:00
    api.act("san", cid, "accept")
    api.act("san", cid, "resolve", note="done properly")
    c = api.act("sup", cid, "close")
    assert c["status"] == "closed"
    assert replays(city, cid) == "closed"


class _Receiver(http.server.BaseHTTPRequestHandler):
    got: ClassVar[list[tuple[str, dict[str, Any]]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).got.append((self.headers["X-Cityops-Event-Id"], body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Any:
    from cityops.settings import get_settings

    _Receiver.got = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("CITYOPS_WEBHOOK_URLS", f"http://127.0.0.1:{server.server_port}/hook")
    monkeypatch.setenv("CITYOPS_WEBHOOK_SECRET", "s3cret")
    get_settings.cache_clear()
    yield _Receiver
    server.shutdown()


def test_overdue_escalation_by_the_worker_notifies_webhooks(
    api: Api, clock: Clock, city: Any, receiver: Any
) -> None:
    cid = dispatched(api, clock)["id"]  # handling due Tue 09-30 17:30
    assert worker.scan_overdue(city, cst(2025, 9, 30, 17, 0)) == 0
    assert worker.scan_overdue(city, cst(2025, 9, 30, 17, 31)) == 1
    assert worker.scan_overdue(city, cst(2025, 9, 30, 17, 32)) == 0  # not twice
    clock.set(cst(2025, 9, 30, 17, 32))
    c = api.get("disp", cid)
    assert c["escalation_level"] == 1 and c["overdue"] is True
    last = c["history"][-1]
    assert (last["action"], last["actor"], last["role"]) == ("escalate", "system", "system")
    assert "催办" in last["note"]
    # 督办 five working days after the deadline: 10-09, 10-10, 10-11 (Sat), 10-13, 10-14
    assert worker.scan_overdue(city, cst(2025, 10, 14, 17, 0)) == 0
    assert worker.scan_overdue(city, cst(2025, 10, 14, 17, 31)) == 1
    assert api.get("disp", cid)["escalation_level"] == 2
    # a person may escalate too, with a reason
    c = api.act("sup", cid, "escalate", note="挂牌督办 by the mayor's office")
    assert c["escalation_level"] == 3
    api.act("sup", cid, "escalate", note="more", expect=409)  # highest level reached
    events.drain(city, worker.handlers_for(city))
    kinds = [b["kind"] for _, b in receiver.got]
    assert kinds.count("case.escalate") == 3 and "case.dispatch" in kinds
    ids = [i for i, _ in receiver.got]
    assert len(ids) == len(set(ids))  # one delivery per event, each with its own id
    # the list filter finds overdue cases
    r = api.client.get("/api/v1/cases?overdue=true", headers=api.h("disp"))
    assert cid in [x["id"] for x in r.json()["items"]]


def test_merge_keeps_every_reporter_and_notifies_them_on_close(
    api: Api, clock: Clock, city: Any
) -> None:
    sms = notify.MemorySender("sms")
    notify.set_sender("sms", sms)
    try:
        first = api.report(
            "cit",
            source="online",
            title="垃圾堆在路边",
            description="很臭",
            reporter={"name": "张三", "phone": "13812345678"},
        )
        clock.advance(minutes=20)
        second = api.report(
            "cit2",
            source="online",
            title="路边垃圾堆",
            description="很臭",
            at=(IN_GRID_1[0] + 0.0002, IN_GRID_1[1]),
            reporter={"name": "李四", "phone": "13987654321"},
        )
        assert [d["id"] for d in second["likely_duplicates"]] == [first["id"]]
        assert second["likely_duplicates"][0]["distance_m"] < 50
        r = api.client.get("/api/v1/cases?duplicates=true", headers=api.h("sup"))
        assert [x["id"] for x in r.json()["items"]] == [second["id"]]

        api.act("sup", second["id"], "merge", into=second["id"], expect=422)
        api.act("sup", second["id"], "merge", into="NOSUCHCASE", expect=422)
        m = api.act("sup", second["id"], "merge", into=first["id"], note="并单")
        assert (m["status"], m["merged_into"]) == ("merged", first["id"])
        survivor = api.get("sup", first["id"])
        assert survivor["merged_cases"] == [second["id"]]
        assert survivor["history"][-1]["action"] == "absorb"
        phones = sorted(r["phone"] for r in survivor["reporters"])
        assert phones == ["138****5678", "139****4321"]  # masked
        # cit2 now follows the surviving case
        assert api.get("cit2", first["id"])["id"] == first["id"]

        api.act("sup", first["id"], "register")
        api.act("disp", first["id"], "dispatch")
        api.act("san", first["id"], "accept")
        api.act("san", first["id"], "resolve", note="cleared")
        api.act("sup", first["id"], "close")
        events.drain(city, worker.handlers_for(city))
        assert sorted(m.to for m in sms.sent) == ["13812345678", "13987654321"]
        assert all(first["id"] in m.body for m in sms.sent)
        events.drain(city, worker.handlers_for(city))
        assert len(sms.sent) == 2  # applied once
    finally:
        notify.set_sender("sms", None)


def test_cancel_by_supervisor_and_by_the_reporting_citizen(
    api: Api, clock: Clock, city: Any
) -> None:
    cid = dispatched(api, clock)["id"]
    api.act("sup", cid, "cancel", expect=422)
    c = api.act("sup", cid, "cancel", note="duplicate of a 12345 order handled elsewhere")
    assert c["status"] == "cancelled" and c["due_at"] is None
    own = api.report("cit", source="online")
    api.act("cit2", own["id"], "cancel", note="x", expect=404)  # not theirs: invisible
    assert api.act("cit", own["id"], "cancel", note="cleared by the shop")["status"] == "cancelled"
    other = api.report("cit", source="online")
    api.act("sup", other["id"], "register")
    api.act("cit", other["id"], "cancel", note="too late", expect=409)
    assert replays(city, cid) == "cancelled"


# ------------------------------------------------------------------------------ bad input
def test_bad_input_is_a_problem_and_changes_nothing(api: Api, clock: Clock, city: Any) -> None:
    base = {
        "source": "grid_patrol",
        "title": "x",
        "location": {"lon": IN_GRID_1[0], "lat": IN_GRID_1[1]},
    }
    cases = [
        ({**base, "category": "event:9999"}, 422, "GET /api/v1/categories"),
        (
            {**base, "category": "event:0102", "location": {"lon": OUTSIDE[0], "lat": OUTSIDE[1]}},
            422,
            "outside every area",
        ),
        ({**base, "category": "event:0102", "urgency": "asap"}, 422, "normal, urgent"),
        ({**base, "category": "event:0102", "colour": "red"}, 422, "colour"),
        ({"source": "grid_patrol", "category": "event:0102"}, 422, "title"),
        ({**base, "category": "event:0102", "location": {"lon": 200, "lat": 39}}, 422, "lon"),
    ]
    for body, status, hint in cases:
        r = api.client.post("/api/v1/cases", json=body, headers=api.h("gw"))
        assert r.status_code == status, (body, r.text)
        assert r.headers["content-type"] == PROBLEM
        assert hint in r.text, (hint, r.text)
    r = api.client.post(
        "/api/v1/cases", json={**base, "category": "event:0102"}, headers=api.h("cit")
    )
    assert r.status_code == 422 and "online" in r.json()["detail"]
    assert count_cases(city) == 0

    cid = api.report()["id"]
    before = api.get("sup", cid)
    bad = [
        ("sup", {"action": "accept"}, 403, "handler"),  # wrong role
        ("san", {"action": "accept"}, 409, "Allowed now"),  # wrong status (and not visible?)
        ("disp", {"action": "dispatch"}, 409, "registered"),
        ("sup", {"action": "decline"}, 422, "note"),
        ("sup", {"action": "fly"}, 422, "Unknown action"),
        ("sup", {"action": "register", "department": "x"}, 422, "does not take department"),
        ("sup", {"action": "register", "category": "event:9999"}, 422, "Unknown category"),
        ("sup", {"action": "register", "version": 7}, 409, "reload"),
        ("cit", {"action": "register"}, 404, "No case"),
        ("ana", {"action": "register"}, 403, "cases:act"),
    ]
    for user, body, status, hint in bad:
        r = api.client.post(f"/api/v1/cases/{cid}/transitions", json=body, headers=api.h(user))
        if user == "san" and r.status_code == 404:
            continue  # a handler does not see a case no department holds yet
        assert r.status_code == status, (user, body, r.text)
        assert r.headers["content-type"] == PROBLEM
        assert hint in r.json()["detail"], (hint, r.text)
    r = api.client.post(
        "/api/v1/cases/NOPE000000/transitions", json={"action": "register"}, headers=api.h("sup")
    )
    assert r.status_code == 404 and r.headers["content-type"] == PROBLEM
    after = api.get("sup", cid)
    assert after["version"] == before["version"] and after["history"] == before["history"]
    assert count_cases(city) == 1


def test_idempotency_key(api: Api, clock: Clock, city: Any) -> None:
    h = {"Idempotency-Key": "7f1c2b70-report-1"}
    first = api.report("gw", headers=h)
    r = api.client.post(
        "/api/v1/cases",
        headers={**api.h("gw"), **h},
        json={
            "source": "grid_patrol",
            "category": "event:0102",
            "title": "暴露垃圾",
            "description": "路边堆放生活垃圾",
            "location": {"lon": IN_GRID_1[0], "lat": IN_GRID_1[1]},
        },
    )
    assert r.status_code == 201 and r.json()["id"] == first["id"]
    assert r.headers["Idempotent-Replayed"] == "true"
    r = api.client.post(
        "/api/v1/cases",
        headers={**api.h("gw"), **h},
        json={
            "source": "grid_patrol",
            "category": "event:0103",
            "title": "other",
            "location": {"lon": IN_GRID_1[0], "lat": IN_GRID_1[1]},
        },
    )
    assert r.status_code == 422 and "different" in r.json()["detail"]
    assert count_cases(city) == 1
    # the key is per user: another user's same key is another report
    api.report("seat", headers=h)
    assert count_cases(city) == 2


# ------------------------------------------------------------------------------ scopes
def test_data_scope_is_enforced_in_queries(api: Api, clock: Clock) -> None:
    west = api.report("gw")  # street 110105001
    east = api.report("gw2", at=IN_STREET_2)  # street 110105002
    api.report("gw", at=IN_STREET_2, expect=403)  # outside the worker's own scope

    def ids(user: str, q: str = "") -> list[str]:
        r = api.client.get(f"/api/v1/cases{q}", headers=api.h(user))
        return [x["id"] for x in r.json()["items"]]

    assert ids("gw") == [west["id"]]
    assert ids("gw2") == [east["id"]]
    assert set(ids("sup")) == {west["id"], east["id"]}
    assert ids("sup2") == [east["id"]]
    assert ids("san") == []  # nothing dispatched to sanitation yet
    assert ids("cit") == []
    api.get("gw2", west["id"], expect=404)
    api.act("sup2", west["id"], "register", expect=404)
    api.act("sup2", east["id"], "register")
    assert ids("sup", "?area=110105002") == [east["id"]]
    assert ids("sup", "?status=registered") == [east["id"]]
    assert ids("sup", "?grid=110105001001001") == [west["id"]]
    r = api.client.get("/api/v1/cases?status=lost", headers=api.h("sup"))
    assert r.status_code == 422
    # keyset pagination
    page = api.client.get("/api/v1/cases?limit=1", headers=api.h("sup")).json()
    assert len(page["items"]) == 1 and page["next_cursor"]
    rest = api.client.get(
        f"/api/v1/cases?limit=1&cursor={page['next_cursor']}", headers=api.h("sup")
    ).json()
    assert {page["items"][0]["id"], rest["items"][0]["id"]} == {west["id"], east["id"]}
    assert rest["next_cursor"] is None


# ------------------------------------------------------------------------------ data
def test_attachments_are_checked_and_stored_outside_the_database(
    api: Api, clock: Clock, city: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    cid = api.report("cit", source="online")["id"]
    up = lambda user, data, ctype: api.client.post(  # noqa: E731
        f"/api/v1/cases/{cid}/attachments",
        headers=api.h(user),
        files={"file": ("p.png", io.BytesIO(data), ctype)},
    )
    r = up("cit", PNG, "image/png")
    assert r.status_code == 201, r.text
    att = r.json()
    stored = tmp_path / "files" / att["sha256"][:2] / att["sha256"]
    assert stored.read_bytes() == PNG
    r = up("cit", b"#!/bin/sh\necho hi", "image/png")
    assert r.status_code == 415 and r.headers["content-type"] == PROBLEM
    r = up("cit", PNG, "image/jpeg")
    assert r.status_code == 415 and "image/png" in r.json()["detail"]
    from cityops.settings import get_settings

    monkeypatch.setenv("CITYOPS_ATTACHMENT_MAX_BYTES", "32")
    get_settings.cache_clear()
    r = up("cit", PNG, "image/png")
    assert r.status_code == 413 and "at most 32" in r.json()["detail"]
    got = api.client.get(att["href"], headers=api.h("sup"))
    assert got.status_code == 200 and got.content == PNG
    assert got.headers["content-type"] == "image/png"
    assert api.client.get(att["href"], headers=api.h("cit2")).status_code == 404
    assert len(api.get("sup", cid)["attachments"]) == 1


def test_reporter_contact_is_encrypted_masked_and_audited(
    api: Api, clock: Clock, city: Any
) -> None:
    cid = api.report(
        "cit",
        source="online",
        reporter={"name": "王小明", "phone": "13812345678", "email": "xiaoming@example.cn"},
    )["id"]
    with city.read() as s:
        raw = s.execute(select(func.count()).select_from(Case)).scalar()
        row = s.execute(select(service.CaseReporter.name_enc, service.CaseReporter.phone_enc)).one()
    assert raw == 1 and "1381234" not in row[1] and "王" not in row[0]
    rep = api.get("sup", cid)["reporters"][0]
    assert (rep["name"], rep["phone"], rep["email"]) == ("王**", "138****5678", "x***@example.cn")
    r = api.client.get(f"/api/v1/cases/{cid}/contacts", headers=api.h("disp"))
    assert r.status_code == 403
    r = api.client.get(f"/api/v1/cases/{cid}/contacts", headers=api.h("sup"))
    assert r.json()[0]["phone"] == "13812345678"
    with city.read() as s:
        assert s.scalar(select(AuditEntry.action).where(AuditEntry.entity_id == cid)) == (
            "case.contacts.read"
        )


def test_metrics_per_department_worker_and_xlsx(api: Api, clock: Clock, city: Any) -> None:
    import openpyxl

    a = dispatched(api, clock)["id"]  # handling due 09-30 17:30
    b = dispatched(api, clock, at=IN_COMMUNITY_2)["id"]
    public = api.report("cit", source="online")  # reported, never registered
    api.act("gw", public["id"], "verify", note="seen on site", found=True)  # 核实, on time
    api.act("san", a, "accept")
    clock.set(cst(2025, 9, 30, 10))
    api.act("san", a, "resolve", note="ok")
    api.act("gw", a, "check", note="ok", passed=True)
    api.act(
        "sup",
        a,
        "close",
        feedback={"contacted": True, "solved": True, "satisfaction": "basically_satisfied"},
    )
    api.act("san", b, "accept")
    api.act("san", b, "resolve", note="ok")
    api.act("sup", b, "return_for_rework", note="not done")
    q = "from=2025-09-29T00:00:00%2B08:00&to=2025-10-20T00:00:00%2B08:00"
    r = api.client.get(f"/api/v1/metrics/cases?group_by=department&{q}", headers=api.h("ana"))
    assert r.status_code == 200, r.text
    rows = {row["group"]: row for row in r.json()["rows"]}
    san = rows["sanitation"]
    assert (san["registered"], san["closed"], san["due_to_close"]) == (2, 1, 2)
    assert san["closure_rate"] == 50.0 and san["rework_rate"] == 50.0
    assert san["on_time_closure_rate"] == 50.0
    assert san["satisfaction_rate"] == 90.0 and san["response_rate"] == 100.0
    assert rows["(unassigned)"]["reported"] == 1
    assert rows["(unassigned)"]["closure_rate"] is None  # nothing to judge: null, not 0
    # 综合指标值 and grade of the department formula (evaluation.yaml)
    expected = round(
        100 * 0.1 + 50 * 0.3 + san["on_time_handling_rate"] * 0.3 + (100 - 50) * 0.3, 2
    )
    assert san["score"] == expected and san["grade"] in "ABCDE"
    assert rows["(unassigned)"]["score"] is None and rows["(unassigned)"]["grade"] is None
    assert {"score", "grade"} <= {c["key"] for c in r.json()["columns"]}
    r = api.client.get(f"/api/v1/metrics/cases?group_by=worker&{q}", headers=api.h("sup"))
    gw = {row["group"]: row for row in r.json()["rows"]}["gw"]
    assert (gw["reports"], gw["reports_registered"], gw["valid_report_rate"]) == (2, 2, 100.0)
    # no grids assigned: no tasks, so no 按时核实/核查率 (nothing to judge) and no score
    assert (gw["checks"], gw["due_checks"], gw["on_time_check_rate"]) == (1, 0, None)
    assert gw["score"] is None
    # the grids of both cases assigned to gw: 2 resolutions to check (b's rework included),
    # 1 checked on time; 1 public report to verify, verified on time; nothing missed
    grid_workers.assign(city, "gw", ["110105001001001", "110105001002001"])
    r = api.client.get(f"/api/v1/metrics/cases?group_by=worker&{q}", headers=api.h("sup"))
    gw = {row["group"]: row for row in r.json()["rows"]}["gw"]
    assert (gw["due_checks"], gw["on_time_check_rate"]) == (2, 50.0)
    assert (gw["due_verifications"], gw["on_time_verification_rate"]) == (1, 100.0)
    assert (gw["missed"], gw["missed_rate"]) == (0, 0.0)
    # 100 × 40 % + (100 − 0) × 20 % + 100 × 20 % + 50 × 20 %
    assert (gw["score"], gw["grade"]) == (90.0, "A")
    r = api.client.get(
        f"/api/v1/metrics/cases?group_by=street&{q}&format=xlsx", headers=api.h("ana")
    )
    assert r.status_code == 200 and r.content[:2] == b"PK"
    sheet = openpyxl.load_workbook(io.BytesIO(r.content)).active
    assert sheet.cell(2, 3).value == "受理数" and sheet.cell(4, 1).value == "110105001"
    r = api.client.get(f"/api/v1/metrics/cases?group_by=planet&{q}", headers=api.h("ana"))
    assert r.status_code == 422
    assert (
        api.client.get(f"/api/v1/metrics/cases?group_by=grid&{q}", headers=api.h("cit")).status_code
        == 403
    )


def test_live_feed_streams_case_events(api: Api, clock: Clock) -> None:
    c = api.report()
    api.act("sup", c["id"], "register")
    with api.client.stream("GET", "/api/v1/stream?since=0&timeout=0.5", headers=api.h("disp")) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        text = "".join(r.iter_text())
    items = [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")]
    assert [(i["case_id"], i["action"]) for i in items] == [
        (c["id"], "report"),
        (c["id"], "register"),
    ]
    assert "event: case" in text and "id: " in text
    # a worker of another street sees nothing of this case
    with api.client.stream("GET", "/api/v1/stream?since=0&timeout=0.3", headers=api.h("gw2")) as r:
        assert "data:" not in "".join(r.iter_text())
    assert api.client.get("/api/v1/stream?timeout=0.1", headers=api.h("cit")).status_code == 403


def test_categories_and_calendar_overrides(api: Api, clock: Clock, city: Any) -> None:
    cats = {c["id"]: c for c in api.client.get("/api/v1/categories").json()}
    assert cats["component:0101"]["standard_ref"] == "GB/T 30428.2-2013"
    assert cats["component:0101"]["kind_zh"] == "部件" and cats["event:0102"]["kind_zh"] == "事件"
    assert cats["event:0102"]["default_department"] == "sanitation"
    assert cats["event:0102"]["deadlines"]["normal"]["handling"] == "1 working_days"
    assert cats["city:other"]["default_department"].startswith("district:")
    me = api.client.get("/api/v1/auth/me", headers=api.h("san")).json()
    assert me["department"] == "sanitation" and me["roles"] == ["handler"]

    body = {"working": False, "note": "typhoon: offices closed"}
    assert (
        api.client.put(
            "/api/v1/calendar/overrides/2025-10-09", json=body, headers=api.h("sup")
        ).status_code
        == 403
    )
    r = api.client.put("/api/v1/calendar/overrides/2025-10-09", json=body, headers=api.h("root"))
    assert r.status_code == 200
    clock.set(cst(2025, 9, 30, 16, 0))
    c = api.report("seat", category="event:0104", title="道路不洁", dispatch=True)
    assert utc(c["due_at"]) == cst(2025, 10, 10, 14, 0)  # 10-09 is now a day off
    r = api.client.get(
        "/api/v1/calendar/due?start=2025-09-30T16:00%2B08:00&limit=4%20working_hours",
        headers=api.h("cit"),
    )
    assert r.json()["due_at"] == "2025-10-10T11:30:00+08:00"
    assert (
        api.client.delete(
            "/api/v1/calendar/overrides/2025-10-09", headers=api.h("root")
        ).status_code
        == 204
    )
    r = api.client.get(
        "/api/v1/calendar/due?start=2025-09-30T16:00%2B08:00&limit=4%20working_hours",
        headers=api.h("cit"),
    )
    assert r.json()["due_at"] == "2025-10-09T11:30:00+08:00"


def test_history_and_outbox_written_together(api: Api, clock: Clock, city: Any) -> None:
    cid = dispatched(api, clock)["id"]
    with city.read() as s:
        n_events = s.scalar(select(func.count()).select_from(CaseEvent))
        kinds = list(s.scalars(select(events.OutboxEvent.kind)))
    assert n_events == 3 and kinds == ["case.changed"] * 3
    assert replays(city, cid) == "dispatched"
