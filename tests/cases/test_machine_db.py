"""Property test through the service and the database: random actions by random people never
leave a case in an invalid state, refused actions change nothing, and the stored history
always replays to the stored status (DESIGN §6: hypothesis for state machines)."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from cityops.cases import machine, service
from cityops.cases.models import Case
from cityops.cases.schemas import CaseCreate, TransitionIn
from cityops.core.auth import Principal
from cityops.core.errors import CityopsError

PEOPLE = {
    "gw": Principal("gw", frozenset({"grid_worker"}), scope="110105001"),
    "sup": Principal("sup", frozenset({"supervisor"})),
    "disp": Principal("disp", frozenset({"dispatcher"})),
    "san": Principal("san", frozenset({"handler"}), department="sanitation"),
    "law": Principal("law", frozenset({"handler"}), department="law_enforcement"),
    "sup_east": Principal("sup_east", frozenset({"supervisor"}), scope="110105002"),
}
ACTIONS = sorted(a for a, row in machine.ACTIONS.items() if not row.system_only)
params = st.fixed_dictionaries(
    {},
    optional={
        "note": st.sampled_from(["", "reason"]),
        "department": st.sampled_from(["sanitation", "law_enforcement"]),
        "passed": st.booleans(),
        "feedback": st.just({"contacted": True, "solved": False, "satisfaction": "dissatisfied"}),
        "extension": st.just({"amount": 1, "unit": "working_days"}),
        "into": st.just("OTHER"),
    },
)


VALID: dict[str, Any] = {
    "note": "reason",
    "passed": True,
    "into": "OTHER",
    "feedback": {"contacted": True, "solved": True, "satisfaction": "satisfied"},
}


def _report(db: Any) -> str:
    body = CaseCreate.model_validate(
        {
            "source": "grid_patrol",
            "category": "event:0102",
            "title": "暴露垃圾",
            "location": {"lon": 116.405, "lat": 39.905},
        }
    )
    out, _ = service.create_case(db, PEOPLE["gw"], body)
    return str(out["id"])


def _caller(db: Any, who: str, cid: str) -> machine.Caller:
    with db.read() as s:
        row = s.scalar(select(Case).where(Case.id == cid))
        return service.caller_for(s, PEOPLE[who], row)


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_random_transitions_through_the_service(city: Any, data: st.DataObject) -> None:
    db = city
    cid, other = _report(db), _report(db)
    rules = service.case_rules()
    for _ in range(data.draw(st.integers(6, 30), label="steps")):
        with db.read() as s:
            before = s.scalar(select(Case).where(Case.id == cid))
        # mostly an action the machine offers someone now (to walk deep into the loop),
        # sometimes anyone trying anything (to hit the refusals)
        offered = [
            (who, a)
            for who in sorted(PEOPLE)
            for a in machine.available(service.state_of(before), _caller(db, who, cid))
        ]
        forward = [
            (w, a) for w, a in offered if a not in ("merge", "cancel", "decline", "escalate")
        ]
        mode = data.draw(st.integers(0, 9), label="mode")
        if forward and mode >= 2:
            who, action = data.draw(st.sampled_from(forward), label="forward")
        elif offered and mode == 1:
            who, action = data.draw(st.sampled_from(offered), label="offered")
        else:
            who = data.draw(st.sampled_from(sorted(PEOPLE)), label="who")
            action = data.draw(st.sampled_from(ACTIONS), label="action")
        p = data.draw(params, label="params")
        if (who, action) in offered:
            # a well-formed request: what the action needs, and maybe what it may take
            row = machine.ACTIONS[action]
            allowed = set(row.needs) | set(row.optional) | {"note"}
            p = {k: v for k, v in p.items() if k in allowed}
            p.update({k: VALID[k] for k in row.needs if not p.get(k)})
        if p.get("into") == "OTHER":
            p = {**p, "into": other}
        try:
            service.transition(db, PEOPLE[who], cid, TransitionIn(action=action, **p))
        except CityopsError as exc:
            assert 400 <= exc.status < 500 and exc.detail
            with db.read() as s:
                after = s.scalar(select(Case).where(Case.id == cid))
            assert (after.version, after.status) == (before.version, before.status)
            continue
        with db.read() as s:
            row = s.scalar(select(Case).where(Case.id == cid))
        history = service.history_of(db, cid)
        assert machine.replay(history).value == row.status
        assert row.version == len(history)
        assert machine.invariant_violations(service.state_of(row), rules.policy) == []
        event(f"reached {row.status}")
        stage = machine.STAGE_OF[machine.Status(row.status)]
        assert (row.stage is None) == (stage is None) and (row.due_at is None) == (stage is None)
