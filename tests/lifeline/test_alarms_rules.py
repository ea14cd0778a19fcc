"""Pure alarm rules (REFERENCE Part C §1.3; EXAMPLES §5): hand-computed streams."""

from __future__ import annotations

import pytest

from cityops.lifeline import incidents as machine
from cityops.lifeline.alarms import (
    AlarmSite,
    AnomalyRule,
    Band,
    IncidentView,
    RateRule,
    SensorRule,
    StreamState,
    StuckRule,
    check_offline,
    choose_incident,
    evaluate,
    max_level,
)

# A methane profile as in rules/lifeline/thresholds.yaml: 10 / 25 / 50 %LEL, hysteresis 2.
GAS = SensorRule(
    profile="gas",
    bands=(Band("yellow", above=10), Band("orange", above=25), Band("red", above=50)),
    hysteresis=2.0,
    physical_min=0.0,
    physical_max=100.0,
)


def run(rule: SensorRule, stream: list[tuple[float, float]], **kw: object) -> list[tuple]:
    st = StreamState()
    out = []
    for ts, v in stream:
        for c in evaluate(rule, st, ts, v, interval_s=60, **kw):  # type: ignore[arg-type]
            if c.action != "update":
                out.append((ts, c.kind, c.action, c.level))
    return out


def test_bands_are_ordered_most_severe_first_and_quiet_interval_derived() -> None:
    assert [b.level for b in GAS.bands] == ["red", "orange", "yellow"]
    assert (GAS.quiet_low, GAS.quiet_high) == (float("-inf"), 10.0)


def test_hysteresis_holds_the_alarm_until_below_threshold_minus_margin() -> None:
    # yellow at 10; clears only below 10 - 2 = 8 (9 is inside the margin: still open).
    stream = [(0, 5), (60, 11), (120, 9), (180, 8.5), (240, 7.9), (300, 9.5), (360, 10)]
    assert run(GAS, stream) == [
        (60, "threshold", "raise", "yellow"),
        (240, "threshold", "clear", "yellow"),
        (360, "threshold", "raise", "yellow"),
    ]


def test_escalates_but_never_lowers_an_open_alarm() -> None:
    stream = [(0, 12), (60, 30), (120, 55), (180, 30), (240, 12), (300, 7)]
    assert run(GAS, stream) == [
        (0, "threshold", "raise", "yellow"),
        (60, "threshold", "escalate", "orange"),
        (120, "threshold", "escalate", "red"),
        # 30 and 12 are lower bands: the alarm stays red until the clear rule holds
        (300, "threshold", "clear", "red"),
    ]


def test_minimum_duration_counts_an_unbroken_run() -> None:
    rule = SensorRule(profile="p", bands=(Band("yellow", above=10),), min_duration_s=120)
    # run starts at 60; 120 s later (t=180) the level has held long enough.
    assert run(rule, [(0, 5), (60, 11), (120, 12), (180, 11), (240, 12)]) == [
        (180, "threshold", "raise", "yellow")
    ]
    # a dip breaks the run: starts again at 180, raises at 300
    assert run(rule, [(60, 11), (120, 9), (180, 11), (240, 11), (300, 11)]) == [
        (300, "threshold", "raise", "yellow")
    ]


def test_minimum_duration_per_level_when_escalating() -> None:
    rule = SensorRule(
        profile="p",
        bands=(Band("yellow", above=10), Band("red", above=50)),
        min_duration_s=60,
    )
    # yellow run from 0, red run from 60: yellow at 60, red at 120
    assert run(rule, [(0, 20), (60, 60), (120, 60)]) == [
        (60, "threshold", "raise", "yellow"),
        (120, "threshold", "escalate", "red"),
    ]


def test_clear_duration_and_low_bands() -> None:
    rule = SensorRule(
        profile="water",
        bands=(Band("red", below=0.10), Band("yellow", below=0.20)),
        hysteresis=0.01,
        clear_duration_s=120,
    )
    # clears once > 0.21 for 120 s (from t=180 to t=300)
    stream = [(0, 0.3), (60, 0.08), (120, 0.15), (180, 0.25), (240, 0.22), (300, 0.3)]
    assert run(rule, stream) == [
        (60, "threshold", "raise", "red"),
        (300, "threshold", "clear", "red"),
    ]


def test_late_and_duplicate_readings_change_nothing() -> None:
    st = StreamState()
    assert evaluate(GAS, st, 100, 30, interval_s=60)[0].action == "raise"
    assert evaluate(GAS, st, 100, 0, interval_s=60) == []  # duplicate time
    assert evaluate(GAS, st, 40, 0, interval_s=60) == []  # late
    assert st.open == {"threshold": "orange"}


def test_rate_of_change_and_its_clear_delay() -> None:
    rule = SensorRule(
        profile="p", rate=RateRule(level="yellow", drop_per_min=0.03, clear_after_s=120)
    )
    # 0.30 → 0.20 in 60 s is -0.10/min: raise; calm afterwards, clears 120 s after last violation
    stream = [(0, 0.30), (60, 0.20), (120, 0.20), (180, 0.199), (240, 0.2)]
    assert run(rule, stream) == [
        (60, "rate_of_change", "raise", "yellow"),
        (180, "rate_of_change", "clear", "yellow"),
    ]


def test_rate_not_computed_across_an_outage() -> None:
    rule = SensorRule(profile="p", rate=RateRule(rise_per_min=1.0))
    # 10 minutes of silence (> 3 intervals of 60 s): a jump is not a rate
    assert run(rule, [(0, 0.0), (600, 50.0)]) == []


def test_stuck_value_with_ignored_rest_value() -> None:
    rule = SensorRule(profile="p", stuck=StuckRule(samples=3, ignore=frozenset({0.0})))
    stream = [
        (0, 0.0),
        (60, 0.0),
        (120, 0.0),
        (180, 0.0),
        (240, 5.0),
        (300, 5.0),
        (360, 5.0),
        (420, 5.1),
    ]
    assert run(rule, stream) == [
        (360, "stuck", "raise", "blue"),
        (420, "stuck", "clear", "blue"),
    ]


def test_impossible_value_is_a_fault_not_a_level_alarm() -> None:
    out = run(GAS, [(0, 5), (60, 150), (120, 160), (180, 5)])
    assert out == [
        (60, "impossible", "raise", "blue"),
        (180, "impossible", "clear", "blue"),
    ]


def test_offline_after_k_intervals_and_cleared_by_next_reading() -> None:
    st = StreamState()
    evaluate(GAS, st, 1000, 1.0, interval_s=60)
    # three readings missed = four intervals after the last one (detect.health.is_offline)
    assert check_offline(GAS, st, 1000 + 239, interval_s=60) is None
    c = check_offline(GAS, st, 1000 + 240, interval_s=60)
    assert c is not None and (c.kind, c.action) == ("offline", "raise")
    assert check_offline(GAS, st, 2000, interval_s=60) is None  # already open
    changes = evaluate(GAS, st, 2100, 1.0, interval_s=60)
    assert [(c.kind, c.action) for c in changes] == [("offline", "clear")]
    # a sensor that never reported: counted from its registration
    assert check_offline(GAS, StreamState(), 500, interval_s=60, reference_ts=0) is not None


def test_maintenance_suppresses_raising_but_not_clearing() -> None:
    st = StreamState()
    assert evaluate(GAS, st, 0, 30, interval_s=60, suppressed=True) == []
    assert st.open == {} and st.suppressed == 1
    # maintenance ends while the level still holds: raised at once
    assert [c.action for c in evaluate(GAS, st, 60, 30, interval_s=60)] == ["raise"]
    # in maintenance again: no escalation, but the clear still happens
    assert [c.action for c in evaluate(GAS, st, 120, 60, interval_s=60, suppressed=True)] == [
        "update"
    ]
    assert st.open == {"threshold": "orange"}
    assert [c.action for c in evaluate(GAS, st, 180, 1, interval_s=60, suppressed=True)] == [
        "clear"
    ]


def test_anomaly_score_raises_blue_and_clears_after_quiet() -> None:
    rule = SensorRule(profile="p", anomaly=AnomalyRule(score=0.8, clear_after_s=100))
    st = StreamState()
    out = []
    for ts, score in [(0, 0.1), (10, 0.9), (20, 0.95), (60, 0.1), (110, 0.1), (120, 0.2)]:
        out += [
            (ts, c.action, c.level)
            for c in evaluate(rule, st, ts, 1.0, interval_s=10, anomaly_score=score)
        ]
    assert out == [(10, "raise", "blue"), (20, "update", "blue"), (120, "clear", "blue")]


def test_state_round_trips_through_json() -> None:
    st = StreamState()
    for ts, v in [(0, 12), (60, 30), (120, 9)]:
        evaluate(GAS, st, ts, v, interval_s=60)
    again = StreamState.from_json(st.to_json())
    assert again == st
    assert again.copy() == st and again.copy() is not again


def test_rule_validation() -> None:
    with pytest.raises(ValueError):
        Band("purple", above=1)
    with pytest.raises(ValueError):
        Band("red")
    with pytest.raises(ValueError):
        SensorRule(bands=(Band("red", above=1), Band("red", above=2)))
    assert max_level(["blue", None, "orange", "yellow"]) == "orange"
    assert max_level([]) is None


# ---------------------------------------------------------------------------- incident merge


def test_merge_by_network_distance_and_time() -> None:
    a = AlarmSite("GAS-1", 0.0, 0.0, active_from=1000.0)  # still active
    inc = IncidentView(7, 1000.0, (a,))
    window = 1800.0
    # 100 m away, same network: joins (120 m rule)
    assert (
        choose_incident(AlarmSite("GAS-1", 60, 80, 1500), [inc], distance_m=120, window_s=window)
        == 7
    )
    # 150 m away: new incident
    assert (
        choose_incident(AlarmSite("GAS-1", 90, 120, 1500), [inc], distance_m=120, window_s=window)
        is None
    )
    # other network at 10 m: new incident
    assert (
        choose_incident(AlarmSite("GAS-2", 10, 0, 1500), [inc], distance_m=120, window_s=window)
        is None
    )
    # member cleared at 2000: joins within 1800 s of that, not after
    cleared = IncidentView(7, 1000.0, (AlarmSite("GAS-1", 0, 0, 1000, 2000),))
    assert (
        choose_incident(AlarmSite("GAS-1", 10, 0, 3800), [cleared], distance_m=120, window_s=window)
        == 7
    )
    assert (
        choose_incident(AlarmSite("GAS-1", 10, 0, 3801), [cleared], distance_m=120, window_s=window)
        is None
    )


def test_merge_is_single_linkage_and_prefers_the_oldest_incident() -> None:
    chain = IncidentView(1, 500.0, (AlarmSite("N", 0, 0, 500), AlarmSite("N", 100, 0, 600)))
    other = IncidentView(2, 400.0, (AlarmSite("N", 300, 0, 700),))
    # 200 m from the first site but 100 m from the second: joins the chain (single linkage)
    assert choose_incident(AlarmSite("N", 200, 0, 800), [chain], distance_m=120, window_s=1800) == 1
    # within reach of both: the older incident (opened at 400) wins
    assert (
        choose_incident(AlarmSite("N", 200, 0, 800), [chain, other], distance_m=120, window_s=1800)
        == 2
    )


# ---------------------------------------------------------------------------- incident machine


def test_incident_machine_table() -> None:
    monitor = frozenset({"monitor"})
    assert machine.apply("raised", "acknowledge", monitor).target == "verifying"
    out = machine.apply("verifying", "verify", monitor)
    assert (out.target, out.verdict) == ("pushed", "real")
    out = machine.apply("raised", "dismiss", monitor, verdict="device_fault", note="sensor wet")
    assert (out.target, out.verdict) == ("closed", "device_fault")
    assert machine.apply("pushed", "close", frozenset({machine.SYSTEM})).target == "closed"
    with pytest.raises(machine.TransitionError, match="needs a reason"):
        machine.apply("raised", "dismiss", monitor, verdict="false_alarm")
    with pytest.raises(machine.TransitionError, match="needs a verdict"):
        machine.apply("raised", "dismiss", monitor, note="x")
    with pytest.raises(machine.TransitionError, match="allowed now"):
        machine.apply("closed", "verify", monitor)
    with pytest.raises(machine.TransitionError, match="role"):
        machine.apply("raised", "verify", frozenset({"admin"}))
    with pytest.raises(machine.TransitionError, match="role"):
        machine.apply("pushed", "close", monitor)
    assert machine.allowed_actions("raised", monitor) == ["acknowledge", "verify", "dismiss"]
