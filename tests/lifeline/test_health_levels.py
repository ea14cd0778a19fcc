"""Sensor-health checks and level alarms (hysteresis, minimum duration, rate of change) on
hand-computed sequences."""

from __future__ import annotations

import numpy as np
import pytest

from cityops.lifeline.detect.health import (
    impossible,
    is_offline,
    offline_gaps,
    run_length,
    stuck,
)
from cityops.lifeline.detect.levels import (
    graded_alarm,
    hysteresis_alarm,
    rate_alarm,
    rate_of_change,
)

NAN = float("nan")


def test_run_length() -> None:
    assert run_length([True, True, False, True, True, True]).tolist() == [1, 2, 0, 1, 2, 3]
    assert run_length([]).tolist() == []


def test_offline_gaps_with_datetimes_and_seconds() -> None:
    # 5-minute sensor; readings at 0, 5, 10, 30 (3 missed), 35, 50 (2 missed) minutes.
    minutes = np.array([0, 5, 10, 30, 35, 50])
    ts = np.datetime64("2026-01-01T00:00") + minutes.astype("timedelta64[m]")
    assert offline_gaps(ts, 300, k=3).tolist() == [False, False, False, True, False, False]
    assert offline_gaps(ts, 300, k=2).tolist() == [False, False, False, True, False, True]
    assert offline_gaps(minutes * 60.0, 300, k=2).tolist() == offline_gaps(ts, 300, 2).tolist()


def test_is_offline() -> None:
    assert not is_offline(last_reading=0.0, now=899.0, interval=300, k=2)
    assert is_offline(last_reading=0.0, now=900.0, interval=300, k=2)
    with pytest.raises(ValueError):
        is_offline(0.0, 1.0, interval=0, k=1)


def test_stuck_values() -> None:
    x = [1.0, 2.0, 2.0, 2.0, 2.0, 3.0, 3.0, NAN, 3.0]
    assert stuck(x, min_run=4).tolist() == [False] * 4 + [True] + [False] * 4
    assert stuck(x, min_run=2).tolist() == [
        False,
        False,
        True,
        True,
        True,
        False,
        True,
        False,
        False,
    ]
    # Within an instrument tolerance, jitter is still "stuck".
    assert stuck([5.0, 5.01, 4.99, 5.0], min_run=4, tolerance=0.05).tolist()[-1]
    with pytest.raises(ValueError):
        stuck(x, min_run=1)


def test_impossible_values() -> None:
    # A methane detector reads 0–100 %LEL.
    got = impossible([0.0, 50.0, 100.0, 100.5, -1.0, NAN, float("inf")], 0.0, 100.0)
    assert got.tolist() == [False, False, False, True, True, True, True]


def test_hysteresis_with_minimum_duration() -> None:
    # Raise at ≥ 25 for 2 readings; clear below 20 for 2 readings.
    x = [10, 26, 10, 26, 27, 24, 21, 19, 22, 19, 18, 30]
    got = hysteresis_alarm(x, on=25, off=20, min_duration=2)
    assert got.astype(int).tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0]


def test_hysteresis_stops_chattering() -> None:
    # Around a single threshold the reading would toggle every sample; the band holds it.
    x = [24.9, 25.1, 24.9, 25.1, 24.9, 25.1, 19.0]
    assert hysteresis_alarm(x, on=25, off=20).astype(int).tolist() == [0, 1, 1, 1, 1, 1, 0]
    assert hysteresis_alarm(x, on=25, off=25).astype(int).tolist() == [0, 1, 0, 1, 0, 1, 0]


def test_hysteresis_below_for_pressure_drop() -> None:
    # Water-main pressure (MPa): alarm at ≤ 0.20, clear at ≥ 0.25.
    x = [0.30, 0.19, 0.22, 0.24, 0.26, 0.18]
    got = hysteresis_alarm(x, on=0.20, off=0.25, direction="below")
    assert got.astype(int).tolist() == [0, 1, 1, 1, 0, 1]
    with pytest.raises(ValueError):
        hysteresis_alarm(x, on=0.20, off=0.10, direction="below")


def test_graded_alarm_for_methane_defaults() -> None:
    # cityops defaults (REFERENCE Part C §1.3): notice ≥ 10, level 2 ≥ 25, level 1 ≥ 50 %LEL.
    levels = [(10, 8), (25, 20), (50, 40)]
    x = [0, 12, 9, 26, 55, 45, 30, 19, 7]
    assert graded_alarm(x, levels).tolist() == [0, 3, 3, 2, 1, 1, 2, 3, 0]


def test_rate_of_change_and_rate_alarm() -> None:
    # Underpass water level (cm) every 60 s: a fast rise while still below any level threshold.
    t = np.arange(6) * 60.0
    x = [0.0, 0.0, 1.0, 4.0, 10.0, 11.0]
    rate = rate_of_change(x, t)
    assert np.isnan(rate[0])
    assert rate[1:].tolist() == pytest.approx([0.0, 1 / 60, 3 / 60, 6 / 60, 1 / 60])
    assert rate_of_change(x, t, window=2)[4] == pytest.approx(9 / 120)
    alarm = rate_alarm(x, t, max_rate=2 / 60, min_duration=2)
    assert alarm.tolist() == [False, False, False, False, True, False]
