"""The incident state machine (事件: 报警 → 研判 → 处置 → 闭环), pure.

REFERENCE Part C §1.4 describes the Hefei chain ``RAISED → VERIFYING → PUSHED → DISPOSING →
FEEDBACK → CLOSED``. In cityops the last three steps are the case loop's: once the monitoring
centre (监测中心, role ``monitor``) verifies an incident as real, it becomes a case with
``source=sensor_alarm`` dispatched to the owning unit (权属单位), and the case's end ends the
incident. So the lifeline machine keeps four states:

============  ==============================================================================
``raised``    alarms merged into an incident, nobody has looked yet (报警)
``verifying`` acknowledged by the monitoring centre; the analyst cross-checks neighbours and
              device health (研判)
``pushed``    verified as real and handed to the case loop (推送; 处置/反馈 happen in the case)
``closed``    closed: the case was closed (闭环) or cancelled (撤销, with the case's reason), or
              the incident was dismissed as a false alarm or a device fault, with a reason
              (误报 / 设备故障)
============  ==============================================================================

The case loop's outcomes reach a ``pushed`` incident as actions of the platform (``system``):
the case closed → ``close``; cancelled → ``cancel`` (closed, the case's reason as the note);
merged into another case (并单) → ``follow``: the incident stays ``pushed`` and now belongs to
the surviving case, whose own end ends it.

Each action names its sources, target and who may take it; the table is the whole machine.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ACTIONS",
    "STATES",
    "SYSTEM_ACTIONS",
    "VERDICTS",
    "Outcome",
    "Transition",
    "TransitionError",
    "apply",
]

STATES: tuple[str, ...] = ("raised", "verifying", "pushed", "closed")
#: Analyst verdicts (研判结论).
VERDICTS: tuple[str, ...] = ("real", "false_alarm", "device_fault")
#: The pseudo-role of the platform itself (the case loop's closure, the worker).
SYSTEM = "system"


@dataclass(frozen=True)
class Transition:
    sources: frozenset[str]
    target: str
    roles: frozenset[str]
    #: verdicts the action accepts (empty: it takes none)
    verdicts: frozenset[str] = frozenset()
    #: True when the action needs a written reason (a note)
    needs_note: bool = False


ACTIONS: dict[str, Transition] = {
    # 研判 starts: the incident is on an analyst's desk.
    "acknowledge": Transition(frozenset({"raised"}), "verifying", frozenset({"monitor"})),
    # Real: hand over to the case loop (推送).
    "verify": Transition(
        frozenset({"raised", "verifying"}),
        "pushed",
        frozenset({"monitor"}),
        verdicts=frozenset({"real"}),
    ),
    # Not real: close with the reason (误报 / 设备故障).
    "dismiss": Transition(
        frozenset({"raised", "verifying"}),
        "closed",
        frozenset({"monitor"}),
        verdicts=frozenset({"false_alarm", "device_fault"}),
        needs_note=True,
    ),
    # The case was closed (闭环): only the platform takes this action.
    "close": Transition(frozenset({"pushed"}), "closed", frozenset({SYSTEM})),
    # The case was cancelled (撤销): the incident closes with the case's reason.
    "cancel": Transition(frozenset({"pushed"}), "closed", frozenset({SYSTEM}), needs_note=True),
    # The case was merged into another (并单): the incident follows the surviving case.
    "follow": Transition(frozenset({"pushed"}), "pushed", frozenset({SYSTEM}), needs_note=True),
}
#: Actions only the platform takes (the case loop's outcomes), never a person.
SYSTEM_ACTIONS: frozenset[str] = frozenset(
    name for name, t in ACTIONS.items() if t.roles == frozenset({SYSTEM})
)


class TransitionError(ValueError):
    """An action that the incident's state or the caller's roles do not allow; the message
    says what is allowed instead."""


@dataclass(frozen=True)
class Outcome:
    target: str
    verdict: str | None


def allowed_actions(state: str, roles: frozenset[str]) -> list[str]:
    """Actions ``roles`` may take on an incident in ``state``."""
    return [name for name, t in ACTIONS.items() if state in t.sources and roles & t.roles]


def apply(
    state: str,
    action: str,
    roles: frozenset[str],
    *,
    verdict: str | None = None,
    note: str = "",
) -> Outcome:
    """Check one action against the table and return the new state and verdict."""
    t = ACTIONS.get(action)
    if t is None:
        raise TransitionError(f"unknown action {action!r}: use one of {', '.join(ACTIONS)}")
    if state not in t.sources:
        allowed = allowed_actions(state, roles) or ["none"]
        raise TransitionError(
            f"cannot {action} an incident that is {state}; allowed now: {', '.join(allowed)}"
        )
    if not roles & t.roles:
        raise TransitionError(f"{action} needs the role {', '.join(sorted(t.roles))}")
    if t.verdicts:
        if verdict is None and len(t.verdicts) == 1:
            verdict = next(iter(t.verdicts))
        if verdict not in t.verdicts:
            raise TransitionError(
                f"{action} needs a verdict: one of {', '.join(sorted(t.verdicts))}"
            )
    elif verdict is not None:
        raise TransitionError(f"{action} takes no verdict")
    if t.needs_note and not note.strip():
        raise TransitionError(f"{action} needs a reason: say why in `note`")
    return Outcome(t.target, verdict)
