"""The Chinese working calendar (工作日历): public holidays, 调休 make-up working days and
working hours, for deadlines counted in 工作时 / 工作日 (REFERENCE Part A §4 "Time units", §8).

A day is a working day when it is Monday–Friday and not a day off, or a listed make-up day
(REFERENCE §8: "Working day = (Monday–Friday and not a day off) or a listed make-up day").
The official arrangement comes from the ``chinesecalendar`` package (≥ 1.11 covers 2026); an
override table that admins edit (:class:`CalendarOverride`) wins over it, for local holidays,
typhoon days or a year the package does not know yet. A year the package lacks is counted
Monday–Friday with a loud warning, and every deadline that touches it is *provisional*
(DESIGN §8 "Clocks") until the package is upgraded or an admin confirms the year's overrides
(:class:`CalendarYear`).

Working hours default to 09:00–12:00 and 13:30–17:30 Asia/Shanghai. That default is a cityops
choice, not a standard (REFERENCE §4: per-city working hours, values [U]); it lives in the rule
file ``cases/working_hours.yaml`` so a city sets its own.

The counting functions are pure: they take aware datetimes and return aware datetimes.
"""

from __future__ import annotations

import datetime as dt
import logging
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from zoneinfo import ZoneInfo

from pydantic import BaseModel, Field, field_validator
from sqlalchemy import Boolean, Date, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from cityops.core.db import Base, UTCDateTime, utcnow

log = logging.getLogger("cityops.calendar")

SHANGHAI = ZoneInfo("Asia/Shanghai")
#: a calendar with no working day for this long is misconfigured, not a slow week
_MAX_SEARCH_DAYS = 800


class CalendarWarning(UserWarning):
    """The official calendar does not cover a year: counting Monday–Friday."""


# ------------------------------------------------------------------------------ tables
class CalendarOverride(Base):
    """An admin's correction of one day (a local holiday, a typhoon day, next year's notice
    entered before ``chinesecalendar`` has it). ``working`` True makes it a working day."""

    __tablename__ = "calendar_overrides"
    day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    working: Mapped[bool] = mapped_column(Boolean)
    note: Mapped[str] = mapped_column(Text, default="")
    updated_by: Mapped[str] = mapped_column(String(64), default="")
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class CalendarYear(Base):
    """A year whose arrangement an admin has entered completely as overrides (from the State
    Council notice), so deadlines in it are no longer provisional although the package lacks
    it."""

    __tablename__ = "calendar_years"
    year: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    note: Mapped[str] = mapped_column(Text, default="")
    confirmed_by: Mapped[str] = mapped_column(String(64), default="")
    confirmed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


# ------------------------------------------------------------------------------ rules
class WorkingHoursRules(BaseModel):
    """``cases/working_hours.yaml``: the daily working periods of the city's offices."""

    version: int
    source: str
    cityops_default: bool = Field(
        False, description="true while the file holds cityops' own default, not a city rule"
    )
    timezone: str = "Asia/Shanghai"
    periods: list[tuple[dt.time, dt.time]] = Field(min_length=1)

    @field_validator("periods")
    @classmethod
    def _ordered(cls, value: list[tuple[dt.time, dt.time]]) -> list[tuple[dt.time, dt.time]]:
        last = dt.time(0, 0)
        for start, end in value:
            if not start < end:
                raise ValueError(f"period {start}–{end}: the start must come before the end")
            if start < last:
                raise ValueError(f"period {start}–{end} overlaps or precedes the one before it")
            last = end
        return value

    def working_hours(self) -> WorkingHours:
        return WorkingHours(tuple(self.periods), ZoneInfo(self.timezone))


@dataclass(frozen=True)
class WorkingHours:
    """Daily working periods (local wall-clock times) in one time zone."""

    periods: tuple[tuple[dt.time, dt.time], ...] = (
        (dt.time(9, 0), dt.time(12, 0)),
        (dt.time(13, 30), dt.time(17, 30)),
    )
    tz: ZoneInfo = SHANGHAI

    @property
    def minutes_per_day(self) -> int:
        return sum((e.hour * 60 + e.minute) - (s.hour * 60 + s.minute) for s, e in self.periods)


# ------------------------------------------------------------------------------ official days
@lru_cache(maxsize=64)
def _official_covers(year: int) -> bool:
    import chinese_calendar

    try:
        chinese_calendar.is_workday(dt.date(year, 6, 1))
    except NotImplementedError:
        return False
    return True


_warned: set[int] = set()


def _warn_uncovered(year: int) -> None:
    if year in _warned:
        return
    _warned.add(year)
    message = (
        f"The official holiday calendar (chinesecalendar) has no data for {year}: counting "
        f"Monday–Friday as working days, and deadlines that fall in {year} are marked "
        f"provisional. Upgrade chinesecalendar, or enter {year}'s holidays and make-up days "
        f"as calendar overrides and confirm the year (cityops cases calendar confirm {year})."
    )
    log.warning(message)
    warnings.warn(message, CalendarWarning, stacklevel=3)


@lru_cache(maxsize=8192)
def official_working_day(day: dt.date) -> bool | None:
    """The State Council arrangement from ``chinesecalendar``; ``None`` for an uncovered year.

    Cached: the package scans its whole table to validate each date it is asked about, and a
    deadline asks about the same few days again and again."""
    if not _official_covers(day.year):
        return None
    import chinese_calendar

    return bool(chinese_calendar.is_workday(day))


# ------------------------------------------------------------------------------ units
class Unit(StrEnum):
    """Time-limit units (REFERENCE §4: city rules mix minutes, 工作时 and 工作日)."""

    MINUTES = "minutes"
    HOURS = "hours"
    DAYS = "days"
    WORKING_MINUTES = "working_minutes"
    WORKING_HOURS = "working_hours"
    WORKING_DAYS = "working_days"


@dataclass(frozen=True)
class Deadline:
    """A computed due time; ``provisional`` when a day it counted lies in a year the official
    calendar does not cover (DESIGN §8 "Clocks")."""

    at: dt.datetime
    provisional: bool = False


@dataclass
class WorkingCalendar:
    """Working days and hours: official arrangement + admin overrides + working periods."""

    hours: WorkingHours = field(default_factory=WorkingHours)
    overrides: Mapping[dt.date, bool] = field(default_factory=dict)
    confirmed_years: frozenset[int] = frozenset()
    official: Callable[[dt.date], bool | None] = official_working_day

    def day(self, day: dt.date) -> tuple[bool, bool]:
        """``(is_working_day, provisional)`` for one date."""
        if day in self.overrides:
            return self.overrides[day], False
        official = self.official(day)
        if official is not None:
            return official, False
        if day.year not in self.confirmed_years:
            _warn_uncovered(day.year)
            return day.weekday() < 5, True
        return day.weekday() < 5, False

    def is_working_day(self, day: dt.date) -> bool:
        return self.day(day)[0]

    def _periods(self, day: dt.date) -> list[tuple[dt.datetime, dt.datetime]]:
        tz = self.hours.tz
        return [
            (dt.datetime.combine(day, s, tzinfo=tz), dt.datetime.combine(day, e, tzinfo=tz))
            for s, e in self.hours.periods
        ]

    def add(self, start: dt.datetime, amount: float, unit: Unit | str) -> Deadline:
        """``start`` plus a time limit in any :class:`Unit`."""
        _aware(start)
        unit = Unit(unit)
        if amount < 0:
            raise ValueError("a time limit cannot be negative")
        if unit is Unit.MINUTES:
            return Deadline(start + dt.timedelta(minutes=amount))
        if unit is Unit.HOURS:
            return Deadline(start + dt.timedelta(hours=amount))
        if unit is Unit.DAYS:
            return Deadline(start + dt.timedelta(days=amount))
        if unit is Unit.WORKING_MINUTES:
            return self.add_working_time(start, dt.timedelta(minutes=amount))
        if unit is Unit.WORKING_HOURS:
            return self.add_working_time(start, dt.timedelta(hours=amount))
        if amount != int(amount):
            raise ValueError("working days are whole days: give an integer or use working_hours")
        return self.add_working_days(start, int(amount))

    def add_working_time(self, start: dt.datetime, amount: dt.timedelta) -> Deadline:
        """Count ``amount`` of working time from ``start``: the clock stops outside the working
        periods, on days off and holidays, and runs on make-up days (REFERENCE §4, §8)."""
        _aware(start)
        if amount <= dt.timedelta(0):
            return Deadline(start)
        t = start.astimezone(self.hours.tz)
        remaining = amount
        provisional = False
        day = t.date()
        for _ in range(_MAX_SEARCH_DAYS):
            working, prov = self.day(day)
            provisional |= prov
            if working:
                for begin, end in self._periods(day):
                    if t >= end:
                        continue
                    s = max(t, begin)
                    available = end - s
                    if remaining <= available:
                        return Deadline((s + remaining).astimezone(dt.UTC), provisional)
                    remaining -= available
                    t = end
            day += dt.timedelta(days=1)
            t = dt.datetime.combine(day, dt.time(0, 0), tzinfo=self.hours.tz)
        raise ValueError(f"no working time within {_MAX_SEARCH_DAYS} days: check the calendar")

    def add_working_days(self, start: dt.datetime, days: int) -> Deadline:
        """``days`` working days after ``start``: counting begins the next working day (the
        12345 rules count "from the day after receipt", REFERENCE §6) and the deadline is the
        close of working hours on the last counted day. Zero days: the close of the same
        working day (当日办结), or of the next working day when ``start`` is after hours."""
        _aware(start)
        if days < 0:
            raise ValueError("a time limit cannot be negative")
        t = start.astimezone(self.hours.tz)
        day = t.date()
        provisional = False
        if days == 0:
            for _ in range(_MAX_SEARCH_DAYS):
                working, prov = self.day(day)
                provisional |= prov
                close = self._periods(day)[-1][1]
                if working and t < close:
                    return Deadline(close.astimezone(dt.UTC), provisional)
                day += dt.timedelta(days=1)
            raise ValueError(f"no working day within {_MAX_SEARCH_DAYS} days: check the calendar")
        counted = 0
        for _ in range(_MAX_SEARCH_DAYS):
            day += dt.timedelta(days=1)
            working, prov = self.day(day)
            provisional |= prov
            if working:
                counted += 1
                if counted == days:
                    close = self._periods(day)[-1][1]
                    return Deadline(close.astimezone(dt.UTC), provisional)
        raise ValueError(f"no working day within {_MAX_SEARCH_DAYS} days: check the calendar")

    def working_time_between(self, a: dt.datetime, b: dt.datetime) -> dt.timedelta:
        """Working time elapsed from ``a`` to ``b`` (zero when ``b`` ≤ ``a``): the measure of
        handling time for evaluation (CJ/T 292 "average handling time", REFERENCE §5)."""
        _aware(a)
        _aware(b)
        if b <= a:
            return dt.timedelta(0)
        tz = self.hours.tz
        la, lb = a.astimezone(tz), b.astimezone(tz)
        total = dt.timedelta(0)
        day = la.date()
        while day <= lb.date():
            if self.is_working_day(day):
                for begin, end in self._periods(day):
                    s, e = max(begin, la), min(end, lb)
                    if e > s:
                        total += e - s
            day += dt.timedelta(days=1)
        return total


def _aware(t: dt.datetime) -> None:
    if t.tzinfo is None:
        raise ValueError("naive datetime: pass a timezone-aware value")


def load_working_hours() -> WorkingHours:
    """The working periods from ``cases/working_hours.yaml`` (or the city's override)."""
    from cityops.core.rules import load_rules

    rules = load_rules("cases/working_hours.yaml", WorkingHoursRules)
    if rules.cityops_default:
        log.info("working hours: cityops default %s (set the city's own)", rules.periods)
    return rules.working_hours()
