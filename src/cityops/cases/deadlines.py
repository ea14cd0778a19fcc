"""Time limits per stage, category and urgency, and escalation levels (督办).

Limits are data (``rules/cases/deadlines.yaml``) keyed by category, urgency and stage, each
with its unit — minutes, hours, days, or 工作时 / 工作日 on the official calendar — because
city standards mix them and no national default is verified (REFERENCE Part A §4 "Time units",
"Typical limits"; §9 item 4). Escalation levels (``escalation.yaml``) are reached when a
stage's deadline has been passed by a further limit (REFERENCE §6: 催办, then "5 more working
days overdue → written notice"). Pure: the calendar is passed in.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from dataclasses import dataclass

from pydantic import BaseModel, Field, field_validator, model_validator

from cityops.cases.machine import Stage
from cityops.core.calendar import Deadline, Unit, WorkingCalendar

_LIMIT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s+([a-z_]+)\s*$")


@dataclass(frozen=True)
class Limit:
    """A time limit: an amount in a :class:`~cityops.core.calendar.Unit`."""

    amount: float
    unit: Unit

    def __str__(self) -> str:
        amount = int(self.amount) if self.amount == int(self.amount) else self.amount
        return f"{amount} {self.unit.value}"


@functools.lru_cache(maxsize=256)
def parse_limit(text: str) -> Limit:
    """``"4 working_hours"`` → :class:`Limit`; raises ``ValueError`` that says the format.
    (Cached: a rule file has a few dozen distinct limits, and every new case reads six.)"""
    m = _LIMIT.match(text)
    units = ", ".join(u.value for u in Unit)
    if not m:
        raise ValueError(f"{text!r}: write a limit as '<number> <unit>', unit one of {units}")
    try:
        unit = Unit(m.group(2))
    except ValueError as exc:
        raise ValueError(f"{text!r}: unknown unit {m.group(2)!r}; use one of {units}") from exc
    amount = float(m.group(1))
    if unit is Unit.WORKING_DAYS and amount != int(amount):
        raise ValueError(f"{text!r}: working days are whole days; use working_hours")
    return Limit(amount, unit)


class StageLimits(BaseModel):
    registration: str | None = None
    dispatch: str | None = None
    handling: str | None = None
    verification: str | None = None

    @field_validator("registration", "dispatch", "handling", "verification")
    @classmethod
    def _parses(cls, value: str | None) -> str | None:
        if value is not None:
            parse_limit(value)
        return value


class ExtensionRules(BaseModel):
    default: str = "3 working_days"
    max_per_case: int = Field(2, ge=0)

    @field_validator("default")
    @classmethod
    def _parses(cls, value: str) -> str:
        parse_limit(value)
        return value


class DeadlineRules(BaseModel):
    """``cases/deadlines.yaml``."""

    version: int
    source: str
    urgencies: list[str] = Field(min_length=1)
    default: dict[str, StageLimits]
    extension: ExtensionRules = ExtensionRules()
    categories: dict[str, dict[str, StageLimits]] = {}

    @model_validator(mode="after")
    def _complete(self) -> DeadlineRules:
        for urgency in self.urgencies:
            limits = self.default.get(urgency)
            if limits is None:
                raise ValueError(f"default has no limits for urgency {urgency!r}")
            missing = [s.value for s in Stage if getattr(limits, s.value) is None]
            if missing:
                raise ValueError(f"default.{urgency} lacks {', '.join(missing)}")
        for category, per_urgency in self.categories.items():
            unknown = set(per_urgency) - set(self.urgencies)
            if unknown:
                raise ValueError(
                    f"categories.{category}: unknown urgency {sorted(unknown)}; "
                    f"use {self.urgencies}"
                )
        return self

    def limit(self, category: str, urgency: str, stage: Stage) -> Limit:
        """The limit of one stage: the category's own line, else the default."""
        own = self.categories.get(category, {}).get(urgency)
        text = getattr(own, stage.value) if own is not None else None
        if text is None:
            text = getattr(self.default[urgency], stage.value)
        assert isinstance(text, str)
        return parse_limit(text)

    def extension_limit(self) -> Limit:
        return parse_limit(self.extension.default)


def stage_due(
    calendar: WorkingCalendar,
    rules: DeadlineRules,
    category: str,
    urgency: str,
    stage: Stage,
    start: dt.datetime,
) -> Deadline:
    """When the clock of ``stage`` started at ``start`` runs out (DESIGN §8 "Clocks")."""
    limit = rules.limit(category, urgency, stage)
    return calendar.add(start, limit.amount, limit.unit)


def extend(calendar: WorkingCalendar, due: dt.datetime, limit: Limit) -> Deadline:
    """A granted extension (延期) moves the deadline, counted from the old deadline, so that
    asking early is not punished and asking late gains nothing extra."""
    return calendar.add(due, limit.amount, limit.unit)


# ------------------------------------------------------------------------------ escalation
class EscalationLevel(BaseModel):
    level: int = Field(ge=1)
    name: str
    overdue_by: str
    notify: list[str] = []

    @field_validator("overdue_by")
    @classmethod
    def _parses(cls, value: str) -> str:
        parse_limit(value)
        return value


class Contact(BaseModel):
    """Where a notice to one party goes (any of the channels)."""

    email: str | None = None
    sms: str | None = None


class EscalationRules(BaseModel):
    """``cases/escalation.yaml``: levels 1, 2, … in order, and the contacts of the parties
    a level notifies (``department`` resolves to ``department:<code>``)."""

    version: int
    source: str
    levels: list[EscalationLevel] = Field(min_length=1)
    contacts: dict[str, Contact] = {}

    def addresses(self, level: int, department: str | None) -> list[tuple[str, str]]:
        """``(channel, address)`` pairs to notify when a case reaches ``level``."""
        found = self.level(level)
        if found is None:
            return []
        out: list[tuple[str, str]] = []
        for party in found.notify:
            key = f"department:{department}" if party == "department" else party
            contact = self.contacts.get(key)
            if contact is None:
                continue
            for channel in ("sms", "email"):
                address = getattr(contact, channel)
                if address and (channel, address) not in out:
                    out.append((channel, address))
        return out

    @field_validator("levels")
    @classmethod
    def _numbered(cls, value: list[EscalationLevel]) -> list[EscalationLevel]:
        if [lv.level for lv in value] != list(range(1, len(value) + 1)):
            raise ValueError("levels must be numbered 1, 2, 3, … in order")
        return value

    @property
    def max_level(self) -> int:
        return len(self.levels)

    def level(self, n: int) -> EscalationLevel | None:
        return self.levels[n - 1] if 1 <= n <= len(self.levels) else None


def next_escalation(
    calendar: WorkingCalendar,
    rules: EscalationRules,
    due: dt.datetime | None,
    current_level: int,
) -> dt.datetime | None:
    """When the worker should raise the case to the next level (``None``: no further level or
    no clock)."""
    nxt = rules.level(current_level + 1)
    if nxt is None or due is None:
        return None
    limit = parse_limit(nxt.overdue_by)
    return calendar.add(due, limit.amount, limit.unit).at
