"""The machine table: the public vocabulary, guards, and property tests (hypothesis)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cityops.cases import machine
from cityops.cases.machine import (
    ACTIONS,
    OPEN,
    SYSTEM,
    TERMINAL,
    Caller,
    CaseState,
    Policy,
    Status,
    decide,
    invariant_violations,
    replay,
)
from cityops.core.errors import CityopsError, Conflict, Forbidden, ValidationFailed

DOCS = Path(__file__).resolve().parents[2] / "docs" / "cases.md"

PUBLIC_STATUSES = {
    "reported",
    "registered",
    "declined",
    "dispatched",
    "in_progress",
    "resolved",
    "closed",
    "cancelled",
    "merged",
}
PUBLIC_ACTIONS = {
    "register",
    "decline",
    "dispatch",
    "accept",
    "progress",
    "request_extension",
    "grant_extension",
    "deny_extension",
    "send_back",
    "resolve",
    "close",
    "return_for_rework",
    "escalate",
    "cancel",
    "merge",
}

SUP = Caller(frozenset({"supervisor"}), in_area=True)
DISP = Caller(frozenset({"dispatcher"}), in_area=True)
HANDLER = Caller(frozenset({"handler"}), same_department=True)
OTHER_HANDLER = Caller(frozenset({"handler"}), same_department=False)
CITIZEN = Caller(frozenset({"citizen"}), is_reporter=True)


def test_public_vocabulary_is_in_the_table() -> None:
    assert {s.value for s in Status} == PUBLIC_STATUSES
    assert set(ACTIONS) >= PUBLIC_ACTIONS
    for a in ACTIONS.values():
        assert a.sources, a.name
        assert a.target is None or a.target in Status
        assert not (a.sources & TERMINAL) or a.name == "feedback", a.name


def test_the_happy_path_and_clocks() -> None:
    s = CaseState(Status.REPORTED, suggested_department="sanitation")
    steps = [
        ("register", SUP, {}, Status.REGISTERED, machine.Clock.START),
        ("dispatch", DISP, {}, Status.DISPATCHED, machine.Clock.START),
        ("accept", HANDLER, {}, Status.IN_PROGRESS, machine.Clock.KEEP),
        ("resolve", HANDLER, {"note": "cleaned"}, Status.RESOLVED, machine.Clock.START),
        ("close", SUP, {}, Status.CLOSED, machine.Clock.STOP),
    ]
    for name, caller, params, status, clock in steps:
        tr = decide(s, name, caller, params)
        assert (tr.to_status, tr.clock) == (status, clock)
        s = tr.state
    assert s.department == "sanitation"


def test_rejections_say_what_to_do() -> None:
    s = CaseState(Status.DISPATCHED, department="sanitation", suggested_department="sanitation")
    with pytest.raises(Forbidden, match="handler"):
        decide(s, "accept", SUP)
    with pytest.raises(Forbidden, match="department sanitation"):
        decide(s, "accept", OTHER_HANDLER)
    with pytest.raises(Conflict, match=r"Allowed now: .*accept"):
        decide(s, "resolve", HANDLER, {"note": "x"})
    with pytest.raises(ValidationFailed, match="note") as exc:
        decide(s, "send_back", HANDLER)
    assert exc.value.errors[0].field == "note"
    with pytest.raises(ValidationFailed, match="Unknown action"):
        decide(s, "teleport", HANDLER)
    with pytest.raises(Forbidden, match="system"):
        decide(s, "absorb", SUP, {"note": "x"})
    # a dispatcher override of the rules needs a reason
    r = CaseState(Status.REGISTERED, suggested_department="sanitation")
    with pytest.raises(ValidationFailed, match="instead of sanitation"):
        decide(r, "dispatch", DISP, {"department": "law_enforcement"})
    assert (
        decide(
            r, "dispatch", DISP, {"department": "law_enforcement", "note": "wall"}
        ).state.department
        == "law_enforcement"
    )
    # no rule and no department: say so
    with pytest.raises(ValidationFailed, match="department"):
        decide(CaseState(Status.REGISTERED), "dispatch", DISP)


def test_extension_guards_and_limits() -> None:
    s = CaseState(Status.IN_PROGRESS, department="d", suggested_department="d")
    with pytest.raises(Conflict, match="No extension request"):
        decide(s, "grant_extension", DISP)
    s = decide(s, "request_extension", HANDLER, {"note": "rain"}).state
    with pytest.raises(Conflict, match="already waiting"):
        decide(s, "request_extension", HANDLER, {"note": "again"})
    s = decide(s, "grant_extension", DISP).state
    assert (s.extension_pending, s.extensions_granted) == (False, 1)
    policy = Policy(max_extensions=1)
    with pytest.raises(Conflict, match="most the deadline rules allow"):
        decide(s, "request_extension", HANDLER, {"note": "more"}, policy)


def test_citizen_may_cancel_only_own_report_before_registration() -> None:
    s = CaseState(Status.REPORTED)
    assert decide(s, "cancel", CITIZEN, {"note": "fixed itself"}).to_status == Status.CANCELLED
    with pytest.raises(Forbidden, match="reported"):
        decide(s, "cancel", Caller(frozenset({"citizen"})), {"note": "x"})
    with pytest.raises(Conflict):
        decide(CaseState(Status.REGISTERED), "cancel", CITIZEN, {"note": "x"})


def test_escalation_resets_with_a_new_clock() -> None:
    s = CaseState(Status.REPORTED)
    s = decide(s, "escalate", SYSTEM, {"note": "late"}).state
    assert s.escalation_level == 1
    s = decide(s, "register", SUP).state
    assert s.escalation_level == 0


# ------------------------------------------------------------------------------ properties
CALLERS = [
    SUP,
    DISP,
    HANDLER,
    OTHER_HANDLER,
    CITIZEN,
    SYSTEM,
    Caller(frozenset({"grid_worker"}), in_area=True),
    Caller(frozenset({"supervisor", "dispatcher"}), in_area=True),
    Caller(frozenset({"supervisor"}), in_area=False),
    Caller(frozenset({"analyst"}), in_area=True),
]

params_strategy = st.fixed_dictionaries(
    {},
    optional={
        "note": st.sampled_from(["", "  ", "reason"]),
        "department": st.sampled_from(["sanitation", "law_enforcement"]),
        "into": st.just("OTHER"),
        "passed": st.booleans(),
        "feedback": st.just({"contacted": True, "solved": True, "satisfaction": "satisfied"}),
        "extension": st.just({"amount": 1, "unit": "working_days"}),
    },
)
step = st.tuples(
    st.sampled_from(sorted(ACTIONS)), st.sampled_from(range(len(CALLERS))), params_strategy
)


@settings(max_examples=400, deadline=None)
@given(
    suggested=st.sampled_from([None, "sanitation"]),
    steps=st.lists(step, max_size=40),
)
def test_random_sequences_never_reach_an_invalid_state(
    suggested: str | None, steps: list[tuple[str, int, dict[str, Any]]]
) -> None:
    policy = Policy(max_extensions=2, max_escalation=3)
    state = CaseState(Status.REPORTED, suggested_department=suggested)
    history: list[tuple[str, str | None, str]] = [(machine.REPORT, None, "reported")]
    for name, who, params in steps:
        before = state
        try:
            tr = decide(state, name, CALLERS[who], params, policy)
        except CityopsError as exc:
            assert exc.status in (403, 409, 422)
            assert exc.detail  # every refusal says why
            assert state == before
            continue
        assert tr.from_status == state.status
        assert tr.state.status == (ACTIONS[name].target or state.status)
        state = tr.state
        history.append((name, tr.from_status.value, tr.to_status.value))
        assert invariant_violations(state, policy) == []
        if state.status in TERMINAL and name != "feedback":
            assert tr.clock in (machine.Clock.STOP, machine.Clock.KEEP)
    assert replay(history) == state.status
    # a terminal case offers nothing but the follow-up record
    if state.status in TERMINAL:
        for caller in CALLERS:
            assert set(machine.available(state, caller)) <= {"feedback"}


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(sorted(ACTIONS)), st.sampled_from(list(Status))),
        min_size=1,
        max_size=10,
    )
)
def test_replay_refuses_histories_the_table_does_not_allow(
    events: list[tuple[str, Status]],
) -> None:
    history: list[tuple[str, str | None, str]] = [(machine.REPORT, None, "reported")]
    status = Status.REPORTED
    legal = True
    for name, target in events:
        action = ACTIONS[name]
        if status not in action.sources or (action.target or status) != target:
            legal = False
        history.append((name, status.value, target.value))
        status = target
    if legal:
        assert replay(history) == status
    else:
        with pytest.raises(ValueError):
            replay(history)


def test_every_open_status_can_reach_an_end() -> None:
    """No dead ends: from every open status some sequence of actions closes the case."""
    reach = {s: {s} for s in Status}
    changed = True
    while changed:
        changed = False
        for a in ACTIONS.values():
            for s in a.sources:
                t = a.target or s
                if not reach[t] <= reach[s]:
                    reach[s] |= reach[t]
                    changed = True
    for s in OPEN:
        assert reach[s] & TERMINAL, s


def test_docs_table_matches_the_machine() -> None:
    text = DOCS.read_text(encoding="utf-8")
    start = text.index("<!-- actions:begin -->") + len("<!-- actions:begin -->")
    end = text.index("<!-- actions:end -->")
    assert text[start:end].strip() == machine.action_table_markdown(), (
        "docs/cases.md is out of date: paste machine.action_table_markdown() between the "
        "actions markers (python -m cityops.cases.cli docs prints it)"
    )
