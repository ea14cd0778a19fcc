"""The working calendar and deadlines across real holiday periods (REFERENCE Part A §8).

Working hours are the cityops default 09:00–12:00 and 13:30–17:30 (7 h a day). Every
expected value below was counted by hand on the State Council notices:

* 2025 National Day + Mid-Autumn: off 10-01 … 10-08; make-up working days Sun 09-28, Sat 10-11.
* 2026 Spring Festival: off 02-15 … 02-23; make-up working days Sat 02-14, Sat 02-28.
"""

from __future__ import annotations

import datetime as dt
import warnings

import pytest

from cityops.cases.deadlines import DeadlineRules, parse_limit, stage_due
from cityops.cases.machine import Stage
from cityops.core.calendar import CalendarWarning, Unit, WorkingCalendar, WorkingHours

CST = dt.timezone(dt.timedelta(hours=8))


def t(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> dt.datetime:
    return dt.datetime(y, mo, d, h, mi, tzinfo=CST)


@pytest.fixture
def cal() -> WorkingCalendar:
    return WorkingCalendar()


@pytest.mark.parametrize(
    ("day", "working"),
    [
        # REFERENCE §8's own test list
        (dt.date(2025, 9, 28), True),
        (dt.date(2025, 10, 8), False),
        (dt.date(2025, 10, 11), True),
        (dt.date(2026, 1, 4), True),
        (dt.date(2026, 2, 14), True),
        (dt.date(2026, 2, 23), False),
        (dt.date(2026, 2, 28), True),
        (dt.date(2026, 5, 9), True),
        (dt.date(2026, 9, 20), True),
        (dt.date(2026, 10, 10), True),
        # plain days
        (dt.date(2025, 10, 1), False),
        (dt.date(2025, 10, 12), False),  # Sunday after the make-up Saturday
        (dt.date(2026, 2, 16), False),
        (dt.date(2026, 3, 2), True),
    ],
)
def test_official_days(cal: WorkingCalendar, day: dt.date, working: bool) -> None:
    assert cal.day(day) == (working, False)


@pytest.mark.parametrize(
    ("start", "amount", "unit", "due"),
    [
        # National Day 2025
        (t(2025, 9, 30, 16), 4, "working_hours", t(2025, 10, 9, 11, 30)),  # 1.5 h + 2.5 h
        (t(2025, 9, 26, 10), 3, "working_days", t(2025, 9, 30, 17, 30)),  # Sun 9-28 counts
        (t(2025, 9, 27, 10), 1, "working_hours", t(2025, 9, 28, 10)),  # Sat off → Sun works
        (t(2025, 10, 10, 17), 1, "working_days", t(2025, 10, 11, 17, 30)),  # make-up Sat
        (t(2025, 10, 10, 17), 1, "working_hours", t(2025, 10, 11, 9, 30)),
        (t(2025, 9, 30, 10), 3, "working_days", t(2025, 10, 11, 17, 30)),  # 10-9, 10-10, 10-11
        (t(2025, 10, 3, 14), 2, "working_hours", t(2025, 10, 9, 11)),  # starts in the holiday
        (t(2025, 10, 9, 11), 2, "working_hours", t(2025, 10, 9, 14, 30)),  # over lunch
        (t(2025, 10, 9, 12, 30), 30, "working_minutes", t(2025, 10, 9, 14)),  # from lunch
        # Spring Festival 2026
        (t(2026, 2, 13, 15), 5, "working_hours", t(2026, 2, 14, 11, 30)),  # into make-up Sat
        (t(2026, 2, 14, 16), 2, "working_days", t(2026, 2, 25, 17, 30)),  # 2-24, 2-25
        (t(2026, 2, 27, 17), 1, "working_hours", t(2026, 2, 28, 9, 30)),  # make-up Sat 2-28
        (t(2026, 2, 14, 11), 7, "working_hours", t(2026, 2, 24, 11)),  # 5 h on 2-14, 2 h after
        (t(2026, 2, 12, 9), 3, "working_days", t(2026, 2, 24, 17, 30)),  # 2-13, 2-14, 2-24
        # natural units ignore the calendar
        (t(2026, 2, 16, 10), 2, "hours", t(2026, 2, 16, 12)),
        (t(2025, 10, 1, 23, 50), 15, "minutes", t(2025, 10, 2, 0, 5)),
        # zero working days: the close of the same working day
        (t(2025, 9, 30, 10), 0, "working_days", t(2025, 9, 30, 17, 30)),
        (t(2025, 9, 30, 18), 0, "working_days", t(2025, 10, 9, 17, 30)),
    ],
)
def test_deadlines_across_holidays(
    cal: WorkingCalendar, start: dt.datetime, amount: float, unit: str, due: dt.datetime
) -> None:
    got = cal.add(start, amount, unit)
    assert got.at == due
    assert got.at.tzinfo is not None
    assert got.provisional is False


def test_working_time_between_counts_only_working_periods(cal: WorkingCalendar) -> None:
    assert cal.working_time_between(t(2025, 9, 30, 16), t(2025, 10, 9, 11, 30)) == dt.timedelta(
        hours=4
    )
    # a whole make-up Saturday is a full 7-hour day
    assert cal.working_time_between(t(2026, 2, 14), t(2026, 2, 15)) == dt.timedelta(hours=7)
    assert cal.working_time_between(t(2026, 2, 15), t(2026, 2, 24)) == dt.timedelta(0)


def test_overrides_win_over_the_official_calendar() -> None:
    # a typhoon day off on Thu 2025-10-09 pushes the deadline to Fri 10-10
    cal = WorkingCalendar(overrides={dt.date(2025, 10, 9): False})
    assert cal.add(t(2025, 9, 30, 16), 4, "working_hours").at == t(2025, 10, 10, 11, 30)
    # and a local make-up working day on a holiday makes it count
    cal = WorkingCalendar(overrides={dt.date(2025, 10, 8): True})
    assert cal.add(t(2025, 9, 30, 16), 4, "working_hours").at == t(2025, 10, 8, 11, 30)


def test_uncovered_year_warns_falls_back_to_weekdays_and_is_provisional() -> None:
    cal = WorkingCalendar()
    with pytest.warns(CalendarWarning, match="2027"):
        import cityops.core.calendar as calmod

        calmod._warned.discard(2027)
        due = cal.add(t(2026, 12, 31, 17), 2, "working_hours")
    # 0.5 h on Thu 2026-12-31, then Fri 2027-01-01 counts as a weekday in the fallback
    assert due.at == t(2027, 1, 1, 10, 30)
    assert due.provisional is True
    # within a covered year nothing is provisional
    assert cal.add(t(2026, 12, 30, 9), 7, "working_hours").provisional is False
    # an admin enters 元旦 2027 as a day off: the override counts, still provisional …
    cal = WorkingCalendar(overrides={dt.date(2027, 1, 1): False})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalendarWarning)
        due = cal.add(t(2026, 12, 31, 17), 2, "working_hours")
    assert due.at == t(2027, 1, 4, 10, 30) and due.provisional is True
    # … until the admin confirms the whole year
    cal = WorkingCalendar(overrides={dt.date(2027, 1, 1): False}, confirmed_years=frozenset({2027}))
    due = cal.add(t(2026, 12, 31, 17), 2, "working_hours")
    assert due.at == t(2027, 1, 4, 10, 30) and due.provisional is False


def test_custom_working_hours_and_bad_input() -> None:
    cal = WorkingCalendar(hours=WorkingHours(((dt.time(8, 0), dt.time(12, 0)),)))
    assert cal.add(t(2025, 9, 30, 11), 2, "working_hours").at == t(2025, 10, 9, 9)
    with pytest.raises(ValueError, match="naive"):
        cal.add(dt.datetime(2025, 9, 30, 11), 1, "working_hours")
    with pytest.raises(ValueError, match="whole days"):
        cal.add(t(2025, 9, 30, 11), 1.5, "working_days")
    with pytest.raises(ValueError, match="unit"):
        parse_limit("3 fortnights")
    with pytest.raises(ValueError):
        Unit("weeks")


def test_stage_deadlines_come_from_the_rule_table() -> None:
    rules = DeadlineRules.model_validate(
        {
            "version": 1,
            "source": "test",
            "urgencies": ["normal", "urgent"],
            "default": {
                "normal": {
                    "registration": "1 working_hours",
                    "dispatch": "1 working_hours",
                    "handling": "3 working_days",
                    "verification": "2 working_hours",
                },
                "urgent": {
                    "registration": "10 minutes",
                    "dispatch": "10 minutes",
                    "handling": "2 hours",
                    "verification": "1 hours",
                },
            },
            "categories": {"event:0102": {"normal": {"handling": "1 working_days"}}},
        }
    )
    cal = WorkingCalendar()
    start = t(2025, 9, 30, 16)
    assert stage_due(cal, rules, "event:0102", "normal", Stage.HANDLING, start).at == t(
        2025, 10, 9, 17, 30
    )
    assert stage_due(cal, rules, "event:0101", "normal", Stage.HANDLING, start).at == t(
        2025, 10, 11, 17, 30
    )
    assert stage_due(cal, rules, "event:0102", "urgent", Stage.HANDLING, start).at == t(
        2025, 9, 30, 18
    )
    with pytest.raises(ValueError, match="lacks"):
        DeadlineRules.model_validate(
            {
                "version": 1,
                "source": "x",
                "urgencies": ["normal"],
                "default": {"normal": {"handling": "1 working_days"}},
            }
        )
