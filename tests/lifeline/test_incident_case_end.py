"""A verified incident ends with its case: closed → closed, cancelled → closed with the case's
reason, merged → the incident follows the surviving case and closes when that one closes."""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import select

from cityops.core import events
from cityops.core.auth import Principal
from cityops.core.errors import ValidationFailed
from cityops.lifeline import incidents as machine
from cityops.lifeline import registry, service
from cityops.lifeline.ingest.payload import Reading
from cityops.lifeline.ingest.pipeline import Pipeline
from cityops.lifeline.models import Incident, IncidentTransition
from cityops.lifeline.schemas import SensorIn
from tests.lifeline.places import seed_area

MONITOR = Principal(username="mon", roles=frozenset({"monitor"}))
SUP = Principal(username="sup1", roles=frozenset({"supervisor"}))
GAS = Principal(username="gas1", roles=frozenset({"handler"}), department="gas")


def leak(db: Any, sid: str, network: str, lat_m: float) -> int:
    """A gas sensor on its own network goes red: one new incident; its id."""
    with db.write() as s:
        registry.register(
            s,
            SensorIn(
                id=sid,
                domain="gas",
                kind="gas_concentration",
                network_id=network,
                interval_s=60,
                lon=117.25,
                lat=31.80 + lat_m / 111_320,
                thresholds={"rate": None},
            ),
            "test",
        )
    t0 = time.time() - 600
    Pipeline(db, anomaly=False).process_readings(
        [Reading(sid, t0, 1.0), Reading(sid, t0 + 60, 60.0)], source="test"
    )
    with db.read() as s:
        return int(
            s.scalars(
                select(Incident.id).where(Incident.network_id == network).order_by(Incident.id)
            ).one()
        )


def verify(db: Any, iid: int) -> None:
    with db.write() as s:
        service.transition_incident(s, iid, "verify", MONITOR, note="confirmed on site")


def incident(db: Any, iid: int) -> tuple[Incident, list[tuple[str, str, str]]]:
    with db.read() as s:
        inc = s.get(Incident, iid)
        s.expunge(inc)
        trs = [
            (t.action, t.to_state, t.note)
            for t in s.scalars(
                select(IncidentTransition)
                .where(IncidentTransition.incident_id == iid)
                .order_by(IncidentTransition.id)
            )
        ]
    return inc, trs


def drain(db: Any) -> int:
    return events.drain(db, events.all_handlers(db))


# ------------------------------------------------------------------------------ the machine


def test_the_case_loop_outcomes_are_system_actions() -> None:
    system = frozenset({machine.SYSTEM})
    assert {"close", "cancel", "follow"} == machine.SYSTEM_ACTIONS
    assert machine.apply("pushed", "cancel", system, note="withdrawn").target == "closed"
    assert machine.apply("pushed", "follow", system, note="merged").target == "pushed"
    with pytest.raises(machine.TransitionError, match="needs a reason"):
        machine.apply("pushed", "cancel", system)
    with pytest.raises(machine.TransitionError, match="role"):
        machine.apply("pushed", "cancel", MONITOR.roles, note="x")
    with pytest.raises(machine.TransitionError, match="allowed now"):
        machine.apply("raised", "follow", system, note="x")


def test_people_cannot_take_the_case_loops_actions(db) -> None:
    iid = leak(db, "G1", "GAS-1", 0)
    for action in ("close", "cancel", "follow"):
        with db.write() as s, pytest.raises(ValidationFailed, match="when its case closes"):
            service.transition_incident(s, iid, action, MONITOR, note="x")
    with db.read() as s:
        out = service.incident_out(s, s.get(Incident, iid), MONITOR)
    assert out.allowed_actions == ["acknowledge", "verify", "dismiss"]


# ------------------------------------------------------------- the case loop's events, faked


def test_cancelled_and_merged_case_events(db, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the edge to the case loop is faked: case ids come from a counter."""
    ids = iter(["C-A", "C-B", "C-C"])
    monkeypatch.setattr(service, "open_case_for_incident", lambda *a: next(ids))
    a, b, c = (leak(db, f"G{k}", f"GAS-{k}", 1000 * k) for k in range(3))
    for iid in (a, b, c):
        verify(db, iid)
    assert events.drain(db, service.EVENT_HANDLERS) == 3
    assert [incident(db, i)[0].case_id for i in (a, b, c)] == ["C-A", "C-B", "C-C"]

    with db.write() as s:
        events.publish(s, service.EVENT_CASE_CANCELLED, {"case_id": "C-A", "note": "duplicate"})
        events.publish(s, service.EVENT_CASE_MERGED, {"case_id": "C-B", "into": "C-C"})
        events.publish(s, service.EVENT_CASE_CANCELLED, {"case_id": "C-X", "note": "not ours"})
    assert events.drain(db, service.EVENT_HANDLERS) == 3
    inc, trs = incident(db, a)
    assert (inc.state, inc.verdict, inc.case_id) == ("closed", "real", "C-A")
    assert inc.closed_at is not None
    assert trs[-1] == ("cancel", "closed", "case C-A cancelled: duplicate")
    assert inc.note == "confirmed on site\ncase C-A cancelled: duplicate"
    inc, trs = incident(db, b)
    assert (inc.state, inc.case_id, inc.closed_at) == ("pushed", "C-C", None)
    assert trs[-1] == ("follow", "pushed", "case C-B merged into C-C")

    # the surviving case closes: both its incidents close
    with db.write() as s:
        events.publish(s, service.EVENT_CASE_CLOSED, {"case_id": "C-C"})
        events.publish(s, service.EVENT_CASE_MERGED, {"case_id": "C-B", "into": "C-C"})  # again
    assert events.drain(db, service.EVENT_HANDLERS) == 2
    for iid in (b, c):
        inc, trs = incident(db, iid)
        assert inc.state == "closed" and inc.case_id == "C-C"
        assert trs[-1] == ("close", "closed", "case C-C closed")
    assert [t[0] for t in incident(db, b)[1]] == ["verify", "follow", "close"]


# --------------------------------------------------------------------- with the case loop


@pytest.fixture
def case_loop(db: Any) -> Any:
    pytest.importorskip("cityops.cases.service", reason="the case loop is not installed")
    from cityops.cases import service as case_service
    from cityops.cases import worker  # noqa: F401 - registers the outbox consumers

    case_service.clear_caches()
    seed_area(db)
    return case_service


def act(case_service: Any, db: Any, who: Principal, case_id: str, action: str, **kw: Any) -> None:
    from cityops.cases.schemas import TransitionIn

    case_service.transition(db, who, case_id, TransitionIn(action=action, **kw))


def test_a_cancelled_case_closes_its_incident_with_the_reason(db, case_loop: Any) -> None:
    iid = leak(db, "G1", "GAS-1", 0)
    verify(db, iid)
    drain(db)
    case_id = incident(db, iid)[0].case_id
    assert case_id
    act(case_loop, db, SUP, case_id, "cancel", note="valve closed by the utility before dispatch")
    drain(db)
    inc, trs = incident(db, iid)
    assert inc.state == "closed" and inc.closed_at is not None
    reason = f"case {case_id} cancelled: valve closed by the utility before dispatch"
    assert trs[-1] == ("cancel", "closed", reason)
    assert reason in inc.note


def _two_leaks_merged(db: Any, case_loop: Any) -> tuple[Any, Any, str, str]:
    """Two verified gas-leak incidents, each with its case; the first case merged into the
    second. Returns both incidents and the merged and surviving case ids."""
    first = leak(db, "G1", "GAS-1", 0)
    second = leak(db, "G2", "GAS-2", 800)
    for iid in (first, second):
        verify(db, iid)
    drain(db)
    dup, survivor = incident(db, first)[0].case_id, incident(db, second)[0].case_id
    assert dup and survivor and dup != survivor
    act(case_loop, db, SUP, dup, "merge", into=survivor, note="same leak")
    return first, second, dup, survivor


def test_a_merged_case_hands_its_incident_to_the_surviving_case(db, case_loop: Any) -> None:
    from cityops.cases.models import Case

    first, second, dup, survivor = _two_leaks_merged(db, case_loop)
    drain(db)
    inc, trs = incident(db, first)
    assert (inc.state, inc.case_id) == ("pushed", survivor)
    assert trs[-1] == ("follow", "pushed", f"case {dup} merged into {survivor}")
    for action in ("accept", "resolve"):
        act(case_loop, db, GAS, survivor, action, note=f"{action} done")
    act(case_loop, db, SUP, survivor, "close", note="checked")
    drain(db)
    for iid in (first, second):
        inc, trs = incident(db, iid)
        assert (inc.state, inc.case_id) == ("closed", survivor), trs
        assert trs[-1][0] == "close"
    with db.read() as s:
        assert s.scalar(select(Case.status).where(Case.id == dup)) == "merged"


def test_a_merge_seen_after_the_survivor_ended_still_ends_the_incident(db, case_loop: Any) -> None:
    """Outbox events of different cases may be applied out of order (retries): following a
    merge looks at where the surviving case is now."""
    first, _, dup, survivor = _two_leaks_merged(db, case_loop)
    act(case_loop, db, SUP, survivor, "cancel", note="utility handles it itself")
    # the survivor's end is applied first, the merge afterwards
    with db.write() as s:
        service.cancel_incident_for_case(s, survivor, "utility handles it itself")
        service.follow_merged_case(s, dup, survivor)
    inc, trs = incident(db, first)
    assert inc.state == "closed"
    assert [t[0] for t in trs] == ["verify", "follow", "cancel"]
    assert trs[-1][2] == f"case {survivor} cancelled: utility handles it itself"
    drain(db)  # the real events change nothing more
    assert [t[0] for t in incident(db, first)[1]] == ["verify", "follow", "cancel"]
