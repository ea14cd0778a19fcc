"""Two people acting on the same case at the same moment: exactly one succeeds, the other gets
409 and nothing of their request is written. Real concurrent HTTP requests against uvicorn,
on every backend (on PostgreSQL both transactions really overlap; the conditional
``UPDATE … WHERE version = …`` decides)."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import httpx
from sqlalchemy import func, select

from cityops.cases.models import Case, CaseEvent
from tests.cases.conftest import IN_GRID_1, ensure_user

PROBLEM = "application/problem+json"


def _tokens(base: str, db: Any, *users: str) -> dict[str, dict[str, str]]:
    out = {}
    for u in users:
        ensure_user(db, u)
        r = httpx.post(
            f"{base}/api/v1/auth/token", data={"username": u, "password": "password-123"}
        )
        out[u] = {"Authorization": f"Bearer {r.json()['access_token']}"}
    return out


def _race(base: str, calls: list[tuple[dict[str, str], str, dict[str, Any]]]) -> list[Any]:
    """Fire the calls from threads released by one barrier."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(i: int, headers: dict[str, str], path: str, body: dict[str, Any]) -> None:
        with httpx.Client(base_url=base, timeout=30) as client:
            barrier.wait()
            results[i] = client.post(path, json=body, headers=headers)

    threads = [threading.Thread(target=run, args=(i, *c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def _new_dispatched_case(base: str, h: dict[str, dict[str, str]]) -> str:
    r = httpx.post(
        f"{base}/api/v1/cases",
        headers=h["seat"],
        json={
            "source": "grid_patrol",
            "category": "event:0102",
            "title": "暴露垃圾",
            "location": {"lon": IN_GRID_1[0], "lat": IN_GRID_1[1]},
            "dispatch": True,
        },
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def test_two_handlers_accept_the_same_case(live_server: str, city: Any) -> None:
    h = _tokens(live_server, city, "seat", "san", "san2")
    for _ in range(5):
        cid = _new_dispatched_case(live_server, h)
        path = f"/api/v1/cases/{cid}/transitions"
        results = _race(
            live_server,
            [(h["san"], path, {"action": "accept"}), (h["san2"], path, {"action": "accept"})],
        )
        codes = Counter(r.status_code for r in results)
        assert codes == Counter({200: 1, 409: 1}), [r.text for r in results]
        loser = next(r for r in results if r.status_code == 409)
        assert loser.headers["content-type"] == PROBLEM
        assert "reload" in loser.json()["detail"].lower()
        with city.read() as s:
            pk = s.scalar(select(Case.pk).where(Case.id == cid))
            accepts = s.scalar(
                select(func.count())
                .select_from(CaseEvent)
                .where(CaseEvent.case_pk == pk, CaseEvent.action == "accept")
            )
        assert accepts == 1


def test_accept_races_send_back(live_server: str, city: Any) -> None:
    """Both saw the case dispatched (version 3) and send that version, as the UI does: on
    SQLite the second writer would otherwise read the first one's result and, send_back being
    legal from in_progress too, simply follow it."""
    h = _tokens(live_server, city, "seat", "san", "san2")
    outcomes = Counter()
    for _ in range(4):
        cid = _new_dispatched_case(live_server, h)
        path = f"/api/v1/cases/{cid}/transitions"
        results = _race(
            live_server,
            [
                (h["san"], path, {"action": "accept", "version": 3}),
                (h["san2"], path, {"action": "send_back", "note": "not ours", "version": 3}),
            ],
        )
        assert sorted(r.status_code for r in results) == [200, 409], [r.text for r in results]
        winner = next(r for r in results if r.status_code == 200).json()
        outcomes[winner["status"]] += 1
        r = httpx.get(f"{live_server}/api/v1/cases/{cid}", headers=h["seat"])
        assert r.json()["version"] == 4  # report, register, dispatch + exactly one more
    assert sum(outcomes.values()) == 4


def test_same_version_progress_notes(live_server: str, city: Any) -> None:
    """Actions that stay legal after each other still race when both name the version they
    read (optimistic concurrency, If-Match style)."""
    h = _tokens(live_server, city, "seat", "san", "san2")
    cid = _new_dispatched_case(live_server, h)
    path = f"/api/v1/cases/{cid}/transitions"
    r = httpx.post(f"{live_server}{path}", json={"action": "accept"}, headers=h["san"])
    version = r.json()["version"]
    results = _race(
        live_server,
        [
            (h["san"], path, {"action": "progress", "note": "a", "version": version}),
            (h["san2"], path, {"action": "progress", "note": "b", "version": version}),
        ],
    )
    assert sorted(r.status_code for r in results) == [200, 409]
    r = httpx.get(f"{live_server}/api/v1/cases/{cid}", headers=h["seat"])
    assert r.json()["version"] == version + 1
    assert [e["action"] for e in r.json()["history"]].count("progress") == 1


def test_idempotent_create_under_a_race(live_server: str, city: Any) -> None:
    h = _tokens(live_server, city, "gw")
    body = {
        "source": "grid_patrol",
        "category": "event:0102",
        "title": "暴露垃圾",
        "location": {"lon": IN_GRID_1[0], "lat": IN_GRID_1[1]},
    }
    headers = {**h["gw"], "Idempotency-Key": "race-1"}
    results = _race(live_server, [(headers, "/api/v1/cases", body)] * 3)
    assert [r.status_code for r in results] == [201, 201, 201], [r.text for r in results]
    assert len({r.json()["id"] for r in results}) == 1
    with city.read() as s:
        assert s.scalar(select(func.count()).select_from(Case)) == 1
