"""The streaming rules agree with the vectorised ones of ``cityops.lifeline.detect`` wherever
their definitions overlap (random series, many seeds): one meaning of hysteresis, stuck,
impossible and rate of change, whether a series is replayed in batch or streamed."""

from __future__ import annotations

import numpy as np
import pytest

from cityops.lifeline.alarms import Band, RateRule, SensorRule, StreamState, StuckRule, evaluate
from cityops.lifeline.detect import health, levels

SEEDS = range(12)


def walk(seed: int, n: int = 600) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.cumsum(rng.normal(0, 3, n)) + 15, -5, 120)


def stream(
    rule: SensorRule, values: np.ndarray, ts: np.ndarray | None = None
) -> list[dict[str, str]]:
    """The open alarms (kind → level) after each reading."""
    st = StreamState()
    ts = np.arange(values.size) * 60.0 if ts is None else ts
    out = []
    for t, v in zip(ts, values, strict=True):
        evaluate(rule, st, float(t), float(v), interval_s=60)
        out.append(dict(st.open))
    return out


@pytest.mark.parametrize("seed", SEEDS)
def test_hysteresis_matches_detect_levels(seed: int) -> None:
    x = walk(seed)
    rule = SensorRule(
        bands=(Band("yellow", above=10), Band("orange", above=25), Band("red", above=50)),
        hysteresis=2.0,
    )
    ours = stream(rule, x)
    in_alarm = np.array(["threshold" in o for o in ours])
    # "an alarm is open" is the lowest band's hysteresis state (raise ≥ 10, clear < 8)
    assert (in_alarm == levels.hysteresis_alarm(x, on=10, off=8)).all()
    # our level never drops during an episode: it is the episode's peak of the graded level
    graded = levels.graded_alarm(x, [(10, 8), (25, 23), (50, 48)])  # 3 yellow … 1 red
    rank = {"yellow": 3, "orange": 2, "red": 1}
    peak = 0
    for i, o in enumerate(ours):
        if "threshold" not in o:
            peak = 0
            continue
        peak = graded[i] if peak == 0 else min(peak, graded[i] or peak)
        assert rank[o["threshold"]] == peak


@pytest.mark.parametrize("seed", SEEDS)
def test_low_side_bands_match(seed: int) -> None:
    x = 0.3 + walk(seed) / 200  # a pressure around 0.2–0.5 MPa
    rule = SensorRule(bands=(Band("yellow", below=0.30),), hysteresis=0.01)
    ours = np.array(["threshold" in o for o in stream(rule, x)])
    assert (ours == levels.hysteresis_alarm(x, on=0.30, off=0.31, direction="below")).all()


@pytest.mark.parametrize("seed", SEEDS)
def test_stuck_and_impossible_match_detect_health(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # runs of repeated values of random lengths, some outside the physical range
    x = np.repeat(np.round(rng.uniform(-10, 110, 200), 1), rng.integers(1, 9, 200))
    stuck_rule = SensorRule(stuck=StuckRule(samples=5))
    ours = np.array(["stuck" in o for o in stream(stuck_rule, x)])
    assert (ours == health.stuck(x, min_run=5)).all()
    phys = SensorRule(physical_min=0.0, physical_max=100.0)
    ours = np.array(["impossible" in o for o in stream(phys, x)])
    assert (ours == health.impossible(x, 0.0, 100.0)).all()


@pytest.mark.parametrize("seed", SEEDS)
def test_rate_violations_match_detect_rate_of_change(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = walk(seed, 400)
    ts = np.cumsum(rng.uniform(30, 90, x.size))  # irregular sampling, all within 3 intervals
    rule = SensorRule(rate=RateRule(rise_per_min=4.0, drop_per_min=5.0, clear_after_s=0))
    st = StreamState()
    fired = []
    for t, v in zip(ts, x, strict=True):
        changes = evaluate(rule, st, float(t), float(v), interval_s=60)
        fired.append(any(c.kind == "rate_of_change" and c.action != "clear" for c in changes))
    per_min = levels.rate_of_change(x, ts) * 60
    with np.errstate(invalid="ignore"):
        expected = (per_min >= 4.0) | (-per_min >= 5.0)
    assert (np.array(fired) == expected).all()


def test_offline_is_one_definition() -> None:
    from cityops.lifeline.alarms import check_offline

    rule = SensorRule(offline_intervals=3)
    for silent in (100, 179, 180, 239, 240, 241, 1000):
        st = StreamState(last_ts=0.0)
        ours = check_offline(rule, st, float(silent), interval_s=60) is not None
        assert ours == health.is_offline(0.0, float(silent), 60, 3)
