"""The case loop as one table: statuses, named actions, who may take them, guards, clocks.

The loop is GB/T 30428's seven steps (REFERENCE Part A §4): 信息收集 (``reported``) → 案卷建立
(the supervision centre ``register``s or ``decline``s) → 任务派遣 (the command centre
``dispatch``es; the handling clock starts) → 任务处理 (the department ``accept``s, reports
``progress``, ``resolve``s, asks for an extension or ``send_back``s a wrong dispatch — 退单) →
处理反馈 → 核查结案 (the supervision centre ``close``s or ``return_for_rework`` — 返工) →
综合评价. The two centres are kept apart on purpose: the body that judges the result is not the
body that directs the work (REFERENCE §4 "two axes"). Roles follow DESIGN §8 "Roles":
``supervisor`` = 监督中心 staff, ``dispatcher`` = 指挥中心, ``handler`` = 专业部门,
``grid_worker`` = 监督员/网格员 (reports, 核实, 核查), ``system`` = the worker.

Every action is a row of :data:`ACTIONS`: the statuses it may start from, where it leads, which
roles may take it and with which relation to the case (in the caller's data scope, assigned to
the caller's department, or reported by the caller), what it needs, its guards and what it
does to the stage clock (DESIGN §8 "Clocks": one clock per stage). :func:`decide` is the only
judge; it is pure, so the API, the CLI, the worker and the property tests share it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from cityops.core.errors import Conflict, FieldError, Forbidden, ValidationFailed


class Status(StrEnum):
    """Case statuses (public vocabulary)."""

    REPORTED = "reported"  # 已上报 (信息收集)
    REGISTERED = "registered"  # 已立案 (案卷建立)
    DECLINED = "declined"  # 不予立案 / 作废
    DISPATCHED = "dispatched"  # 已派遣 (任务派遣)
    IN_PROGRESS = "in_progress"  # 处置中 (任务处理)
    RESOLVED = "resolved"  # 已处置, 待核查 (处理反馈)
    CLOSED = "closed"  # 已结案 (核查结案)
    CANCELLED = "cancelled"  # 已撤销
    MERGED = "merged"  # 已并单


STATUS_ZH: dict[Status, str] = {
    Status.REPORTED: "已上报",
    Status.REGISTERED: "已立案",
    Status.DECLINED: "不予立案",
    Status.DISPATCHED: "已派遣",
    Status.IN_PROGRESS: "处置中",
    Status.RESOLVED: "待核查",
    Status.CLOSED: "已结案",
    Status.CANCELLED: "已撤销",
    Status.MERGED: "已并单",
}

TERMINAL: frozenset[Status] = frozenset(
    {Status.DECLINED, Status.CLOSED, Status.CANCELLED, Status.MERGED}
)
OPEN: frozenset[Status] = frozenset(Status) - TERMINAL
HANDLING: frozenset[Status] = frozenset({Status.DISPATCHED, Status.IN_PROGRESS})
#: statuses in which a department holds the case
ASSIGNED: frozenset[Status] = HANDLING | {Status.RESOLVED}


class Stage(StrEnum):
    """The four clocks (DESIGN §8 "Clocks")."""

    REGISTRATION = "registration"  # 立案: from the report
    DISPATCH = "dispatch"  # 派遣: from registration
    HANDLING = "handling"  # 处置: from dispatch — the due_at a department sees
    VERIFICATION = "verification"  # 核查: from resolution


#: which clock runs in each status (none in a terminal status)
STAGE_OF: dict[Status, Stage | None] = {
    Status.REPORTED: Stage.REGISTRATION,
    Status.REGISTERED: Stage.DISPATCH,
    Status.DISPATCHED: Stage.HANDLING,
    Status.IN_PROGRESS: Stage.HANDLING,
    Status.RESOLVED: Stage.VERIFICATION,
    Status.DECLINED: None,
    Status.CLOSED: None,
    Status.CANCELLED: None,
    Status.MERGED: None,
}


class Relation(StrEnum):
    """What a role must have to do with the case to act on it (data scope, 数据权限)."""

    AREA = "area"  # the case lies inside the caller's division-code scope
    DEPARTMENT = "department"  # the case is assigned to the caller's department
    REPORTER = "reporter"  # the caller reported it (or a case it was merged into)


class Clock(StrEnum):
    """What an action does to the stage clock."""

    KEEP = "keep"  # the running clock goes on
    START = "start"  # the clock of the target status's stage starts now
    EXTEND = "extend"  # the handling deadline moves by the granted extension
    STOP = "stop"  # no clock runs any more


@dataclass(frozen=True)
class Action:
    """One row of the machine table."""

    name: str
    zh: str
    sources: frozenset[Status]
    target: Status | None  # None: the status does not change
    by: Mapping[str, Relation]  # role → relation the role needs
    needs: tuple[str, ...] = ()  # request fields that must be given
    optional: tuple[str, ...] = ()  # request fields that may be given
    guards: tuple[str, ...] = ()
    clock: Clock = Clock.KEEP
    summary: str = ""
    #: roles whose permitted sources are narrower than ``sources``
    role_sources: Mapping[str, frozenset[Status]] | None = None

    @property
    def system_only(self) -> bool:
        return set(self.by) == {"system"}

    def sources_for(self, role: str) -> frozenset[Status]:
        if self.role_sources and role in self.role_sources:
            return self.role_sources[role]
        return self.sources


_A, _D, _R = Relation.AREA, Relation.DEPARTMENT, Relation.REPORTER
_S = Status

#: The machine table (Signalen's one-module workflow, keyed by named actions; EXAMPLES §2).
ACTIONS: dict[str, Action] = {
    a.name: a
    for a in (
        Action(
            "register",
            "立案",
            frozenset({_S.REPORTED}),
            _S.REGISTERED,
            {"supervisor": _A},
            optional=("note", "category", "urgency"),
            clock=Clock.START,
            summary="The supervision centre accepts the report as a case; it may correct the "
            "category and urgency. The dispatch clock starts.",
        ),
        Action(
            "decline",
            "不予立案",
            frozenset({_S.REPORTED}),
            _S.DECLINED,
            {"supervisor": _A},
            needs=("note",),
            clock=Clock.STOP,
            summary="The supervision centre refuses the report (not a city-management "
            "matter, not found on site); the note is the reason given to the reporter.",
        ),
        Action(
            "verify",
            "核实",
            frozenset({_S.REPORTED}),
            None,
            {"grid_worker": _A},
            needs=("note",),
            optional=("found",),
            summary="A grid worker checks a public report on site and records what they found.",
        ),
        Action(
            "dispatch",
            "派遣",
            frozenset({_S.REGISTERED, _S.DISPATCHED}),
            _S.DISPATCHED,
            {"dispatcher": _A, "system": _A},
            optional=("department", "note"),
            guards=("department_known", "override_has_reason"),
            clock=Clock.START,
            summary="The command centre sends the case to the department the dispatch rules "
            "name, or to another one with a reason (note). Re-dispatching a case not yet "
            "accepted (改派) also needs a reason. The handling clock starts.",
        ),
        Action(
            "accept",
            "签收",
            frozenset({_S.DISPATCHED}),
            _S.IN_PROGRESS,
            {"handler": _D},
            optional=("note",),
            summary="The department takes the case on.",
        ),
        Action(
            "progress",
            "处置进展",
            frozenset({_S.IN_PROGRESS}),
            None,
            {"handler": _D},
            needs=("note",),
            summary="The department reports what it has done so far.",
        ),
        Action(
            "request_extension",
            "申请延期",
            frozenset({_S.DISPATCHED, _S.IN_PROGRESS}),
            None,
            {"handler": _D},
            needs=("note",),
            optional=("extension",),
            guards=("extension_not_pending", "extensions_left"),
            summary="The department asks for more time (default length from the deadline "
            "rules); the note is the reason. The clock keeps running until a decision.",
        ),
        Action(
            "grant_extension",
            "批准延期",
            frozenset({_S.DISPATCHED, _S.IN_PROGRESS}),
            None,
            {"dispatcher": _A},
            optional=("note", "extension"),
            guards=("extension_pending",),
            clock=Clock.EXTEND,
            summary="The command centre grants the request (it may shorten it); the handling "
            "deadline moves by the extension, counted from the old deadline.",
        ),
        Action(
            "deny_extension",
            "驳回延期",
            frozenset({_S.DISPATCHED, _S.IN_PROGRESS}),
            None,
            {"dispatcher": _A},
            needs=("note",),
            guards=("extension_pending",),
            summary="The command centre refuses the request; the deadline stays.",
        ),
        Action(
            "send_back",
            "退单",
            frozenset({_S.DISPATCHED, _S.IN_PROGRESS}),
            _S.REGISTERED,
            {"handler": _D},
            needs=("note",),
            clock=Clock.START,
            summary="The department returns a case it believes is not its duty, with the "
            "reason; it goes back to the command centre for re-dispatch (改派), and the "
            "dispatch clock starts again.",
        ),
        Action(
            "resolve",
            "处置完毕",
            frozenset({_S.IN_PROGRESS}),
            _S.RESOLVED,
            {"handler": _D},
            needs=("note",),
            clock=Clock.START,
            summary="The department reports the problem solved (处理反馈), with what it did; "
            "the verification clock starts.",
        ),
        Action(
            "check",
            "核查",
            frozenset({_S.RESOLVED}),
            None,
            {"grid_worker": _A},
            needs=("note", "passed"),
            summary="A grid worker checks the result on site and records whether it passed.",
        ),
        Action(
            "close",
            "结案",
            frozenset({_S.RESOLVED}),
            _S.CLOSED,
            {"supervisor": _A},
            optional=("note", "feedback"),
            clock=Clock.STOP,
            summary="The supervision centre accepts the result and closes the case; every "
            "reporter (merged cases' too) is notified. Citizen feedback (回访) may be given.",
        ),
        Action(
            "return_for_rework",
            "返工",
            frozenset({_S.RESOLVED}),
            _S.DISPATCHED,
            {"supervisor": _A},
            needs=("note",),
            clock=Clock.START,
            summary="The check failed: the same department must handle it again; a new "
            "handling clock starts.",
        ),
        Action(
            "escalate",
            "督办",
            OPEN,
            None,
            {"dispatcher": _A, "supervisor": _A, "system": _A},
            needs=("note",),
            guards=("below_max_escalation",),
            summary="Raise the supervision level (催办 → 督办 → 挂牌督办); the worker does it "
            "when a stage is overdue, staff may do it by hand. Notifies by webhook.",
        ),
        Action(
            "cancel",
            "撤销",
            frozenset({_S.REPORTED, _S.REGISTERED, _S.DISPATCHED, _S.IN_PROGRESS}),
            _S.CANCELLED,
            {"supervisor": _A, "citizen": _R},
            needs=("note",),
            clock=Clock.STOP,
            role_sources={"citizen": frozenset({_S.REPORTED})},
            summary="Withdraw the case with a reason: the supervision centre at any time "
            "before resolution, the reporting citizen only before registration.",
        ),
        Action(
            "merge",
            "并单",
            frozenset({_S.REPORTED, _S.REGISTERED, _S.DISPATCHED, _S.IN_PROGRESS}),
            _S.MERGED,
            {"supervisor": _A},
            needs=("into",),
            optional=("note",),
            clock=Clock.STOP,
            summary="Merge a duplicate into an open case (`into`): the surviving case takes "
            "over every reporter and notifies them all when it closes.",
        ),
        Action(
            "absorb",
            "并入",
            OPEN,
            None,
            {"system": _A},
            needs=("note",),
            summary="Recorded on the surviving case when another is merged into it.",
        ),
        Action(
            "feedback",
            "回访",
            frozenset({_S.CLOSED}),
            None,
            {"supervisor": _A},
            needs=("feedback",),
            optional=("note",),
            summary="Record the citizen's follow-up (回访: contacted, solved, satisfaction) "
            "after closing, for the 12345 三率.",
        ),
    )
}

#: the first event of every case's history (POST /api/v1/cases), not an action
REPORT = "report"


# ------------------------------------------------------------------------------ state
@dataclass(frozen=True)
class Policy:
    """Limits from the rule files that guards need."""

    max_extensions: int = 2
    max_escalation: int = 3


@dataclass(frozen=True)
class CaseState:
    """What the machine needs to know of a case."""

    status: Status
    department: str | None = None
    suggested_department: str | None = None
    extension_pending: bool = False
    extensions_granted: int = 0
    escalation_level: int = 0
    rework_count: int = 0


@dataclass(frozen=True)
class Caller:
    """The actor: roles plus the relations they hold to this case (computed by the service
    from the caller's scope, department and reporter rows)."""

    roles: frozenset[str]
    in_area: bool = False
    same_department: bool = False
    is_reporter: bool = False

    def holds(self, relation: Relation) -> bool:
        if relation is Relation.AREA:
            return self.in_area
        if relation is Relation.DEPARTMENT:
            return self.same_department
        return self.is_reporter


SYSTEM = Caller(roles=frozenset({"system"}), in_area=True, same_department=True)


@dataclass(frozen=True)
class Transition:
    """The machine's verdict: the action may be taken, with this outcome."""

    action: str
    role: str
    from_status: Status
    to_status: Status
    clock: Clock
    state: CaseState


# ------------------------------------------------------------------------------ decide
def available(state: CaseState, caller: Caller) -> list[str]:
    """Actions ``caller`` could take now (guards on request fields aside)."""
    out = []
    for action in ACTIONS.values():
        for role, relation in action.by.items():
            if (
                role in caller.roles
                and state.status in action.sources_for(role)
                and caller.holds(relation)
                and _guard_failure(action, state, {}, Policy(), structural_only=True) is None
            ):
                out.append(action.name)
                break
    return out


def _given(params: Mapping[str, Any], name: str) -> bool:
    value = params.get(name)
    if value is None:
        return False
    return not (isinstance(value, str) and not value.strip())


_NEEDS_HINT = {
    "note": "give the reason or result in `note`",
    "into": "give the id of the surviving case in `into`",
    "passed": "say whether the on-site check passed: `passed: true|false`",
    "feedback": "give `feedback: {contacted, solved, satisfaction}`",
}


def _guard_failure(
    action: Action,
    state: CaseState,
    params: Mapping[str, Any],
    policy: Policy,
    *,
    structural_only: bool = False,
) -> Exception | None:
    for guard in action.guards:
        if guard == "extension_pending" and not state.extension_pending:
            return Conflict(
                f"No extension request is waiting on this case: nothing to {action.name}."
            )
        if guard == "extension_not_pending" and state.extension_pending:
            return Conflict(
                "An extension request is already waiting for the command centre's decision; "
                "wait for grant_extension or deny_extension."
            )
        if guard == "extensions_left" and state.extensions_granted >= policy.max_extensions:
            return Conflict(
                f"This case has had {state.extensions_granted} extension(s), the most the "
                "deadline rules allow; finish it or send it back (send_back)."
            )
        if guard == "below_max_escalation" and state.escalation_level >= policy.max_escalation:
            return Conflict(
                f"The case is at the highest escalation level ({state.escalation_level}) already."
            )
        if structural_only:
            continue
        if guard == "department_known":
            department = params.get("department") or state.suggested_department
            if not department:
                return ValidationFailed(
                    "No dispatch rule names a department for this case: give one in "
                    "`department`, with the reason in `note`.",
                    [FieldError("department", "required: no rule matched")],
                )
        if guard == "override_has_reason" and not _given(params, "note"):
            department = params.get("department")
            if department and department != state.suggested_department:
                return ValidationFailed(
                    f"Dispatching to {department} instead of {state.suggested_department} "
                    "(the dispatch rules' choice) needs a reason: give it in `note`.",
                    [FieldError("note", "required when overriding the dispatch rules")],
                )
            if state.status is Status.DISPATCHED:
                return ValidationFailed(
                    "Re-dispatching a case (改派) needs a reason: give it in `note`.",
                    [FieldError("note", "required when re-dispatching")],
                )
    return None


def decide(
    state: CaseState,
    action_name: str,
    caller: Caller,
    params: Mapping[str, Any] | None = None,
    policy: Policy | None = None,
) -> Transition:
    """Judge one action: return the outcome, or raise the problem the caller must fix.

    Raises:
        ValidationFailed: unknown action, a required field missing (422).
        Forbidden: the caller's roles or relation to the case do not allow it (403).
        Conflict: not allowed from the current status, or a guard on the state fails (409).
    """
    params = params or {}
    policy = policy or Policy()
    action = ACTIONS.get(action_name)
    if action is None:
        people = [a for a, row in ACTIONS.items() if not row.system_only]
        raise ValidationFailed(
            f"Unknown action {action_name!r}: use one of {', '.join(people)}.",
            [FieldError("action", f"{action_name!r} is not an action")],
        )
    roles = [r for r in action.by if r in caller.roles]
    if not roles:
        if action.system_only:
            raise Forbidden(f"{action.name} is recorded by the system only.")
        raise Forbidden(
            f"{action.name} ({action.zh}) is taken by {', '.join(action.by)}; your roles are "
            f"{', '.join(sorted(caller.roles)) or 'none'}."
        )
    from_here = [r for r in roles if state.status in action.sources_for(r)]
    if not from_here:
        now = available(state, caller)
        allowed = ", ".join(now) if now else "none for your roles"
        sources = sorted({s.value for r in roles for s in action.sources_for(r)})
        raise Conflict(
            f"{action.name} is not allowed while the case is {state.status.value} "
            f"({STATUS_ZH[state.status]}); it needs status {' or '.join(sources)}. "
            f"Allowed now: {allowed}. Reload the case if it changed."
        )
    acting = [r for r in from_here if caller.holds(action.by[r])]
    if not acting:
        relation = action.by[from_here[0]]
        if relation is Relation.DEPARTMENT:
            raise Forbidden(
                f"This case is assigned to department {state.department or '(none)'}; only "
                f"its handlers may {action.name} it."
            )
        if relation is Relation.REPORTER:
            raise Forbidden(f"Only the person who reported this case may {action.name} it.")
        raise Forbidden(f"This case lies outside your data scope; you may not {action.name} it.")
    missing = [n for n in action.needs if not _given(params, n)]
    if missing:
        raise ValidationFailed(
            f"{action.name} needs {', '.join(missing)}: "
            + "; ".join(_NEEDS_HINT.get(n, f"give `{n}`") for n in missing)
            + ".",
            [FieldError(n, _NEEDS_HINT.get(n, "required")) for n in missing],
        )
    failure = _guard_failure(action, state, params, policy)
    if failure is not None:
        raise failure
    new = _effect(action, state, params)
    if action.clock is Clock.START:
        # escalation (督办) presses the owner of the running clock; a new clock, a new owner
        new = replace(new, escalation_level=0)
    return Transition(
        action=action.name,
        role=acting[0],
        from_status=state.status,
        to_status=new.status,
        clock=action.clock,
        state=new,
    )


def _effect(action: Action, state: CaseState, params: Mapping[str, Any]) -> CaseState:
    target = action.target or state.status
    name = action.name
    if name == "dispatch":
        department = params.get("department") or state.suggested_department
        return replace(state, status=target, department=department, extension_pending=False)
    if name == "request_extension":
        return replace(state, extension_pending=True)
    if name == "grant_extension":
        return replace(
            state, extension_pending=False, extensions_granted=state.extensions_granted + 1
        )
    if name == "deny_extension":
        return replace(state, extension_pending=False)
    if name == "send_back":
        return replace(state, status=target, department=None, extension_pending=False)
    if name == "return_for_rework":
        return replace(state, status=target, rework_count=state.rework_count + 1)
    if name == "escalate":
        return replace(state, escalation_level=state.escalation_level + 1)
    return replace(state, status=target, extension_pending=False)


# ------------------------------------------------------------------------------ checks
def invariant_violations(state: CaseState, policy: Policy | None = None) -> list[str]:
    """What is wrong with a state (empty: valid). The property tests call this after every
    step; the service could too."""
    policy = policy or Policy()
    problems = []
    if state.extension_pending and state.status not in HANDLING:
        problems.append(f"an extension is pending while {state.status.value}")
    if state.status in ASSIGNED and not state.department:
        problems.append(f"{state.status.value} without a department")
    if state.status is Status.REGISTERED and state.department:
        problems.append("registered but still assigned to a department")
    if not 0 <= state.escalation_level <= policy.max_escalation:
        problems.append(f"escalation level {state.escalation_level} out of range")
    if not 0 <= state.extensions_granted <= policy.max_extensions:
        problems.append(f"{state.extensions_granted} extensions granted")
    return problems


def replay(events: Iterable[tuple[str, str | None, str]]) -> Status:
    """Fold a history of ``(action, from_status, to_status)`` into the current status,
    checking every step against the table (a history that does not replay is corrupt)."""
    status: Status | None = None
    for i, (name, from_status, to_status) in enumerate(events):
        if i == 0:
            if name != REPORT or to_status != Status.REPORTED:
                raise ValueError(f"history must start with {REPORT} → reported, not {name}")
            status = Status.REPORTED
            continue
        action = ACTIONS.get(name)
        if action is None:
            raise ValueError(f"event {i}: unknown action {name}")
        assert status is not None
        if from_status != status:
            raise ValueError(f"event {i} ({name}) starts from {from_status}, case was {status}")
        if status not in action.sources:
            raise ValueError(f"event {i}: {name} is not allowed from {status}")
        expected = action.target or status
        if to_status != expected:
            raise ValueError(f"event {i}: {name} leads to {expected}, history says {to_status}")
        status = Status(to_status)
    if status is None:
        raise ValueError("empty history")
    return status


# ------------------------------------------------------------------------------ docs
_RELATION_TEXT = {
    Relation.AREA: "in their data scope",
    Relation.DEPARTMENT: "of the assigned department",
    Relation.REPORTER: "who reported it",
}


def action_table_markdown() -> str:
    """The table of actions as Markdown; ``docs/cases.md`` embeds it and a test checks that
    the two agree."""
    lines = [
        "| action | 中文 | who | from | to | needs | may give | clock |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for a in ACTIONS.values():
        who = "; ".join(
            f"{role} {_RELATION_TEXT[rel]}"
            + (
                f" (only from {', '.join(sorted(s.value for s in a.sources_for(role)))})"
                if a.role_sources and role in a.role_sources
                else ""
            )
            for role, rel in a.by.items()
        )
        sources = ", ".join(s.value for s in Status if s in a.sources)
        target = a.target.value if a.target else "(same)"
        needs = ", ".join(a.needs) or "—"
        optional = ", ".join(a.optional) or "—"
        lines.append(
            f"| `{a.name}` | {a.zh} | {who} | {sources} | {target} | {needs} | {optional} "
            f"| {a.clock.value} |"
        )
    return "\n".join(lines)
