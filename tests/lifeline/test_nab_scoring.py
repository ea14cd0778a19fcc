"""NAB scoring rules (SOURCE.md "How NAB scoring works", points 1–8) on hand-computed cases,
and the vectorised sweep against a naive row-by-row transcription of the rules."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cityops.lifeline.nab.scoring import (
    MAX_TP,
    NAB_PROFILES,
    CostMatrix,
    detection_counts,
    file_events,
    file_layout,
    normalised_score,
    perfect_raw,
    probationary_length,
    raw_score_at,
    scaled_sigmoid,
    sweep,
)

STANDARD = NAB_PROFILES["standard"]
LOW_FN = NAB_PROFILES["reward_low_FN_rate"]


def sigma(y: float) -> float:
    """Point 3, written out by hand: 2/(1 + e^(5y)) − 1, and −1 from y = 3 on."""
    return -1.0 if y >= 3 else 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


def raw(n: int, windows: list[tuple[int, int]], detections: list[int], cost: CostMatrix) -> float:
    scores = np.zeros(n)
    scores[detections] = 1.0
    return raw_score_at(file_events(file_layout(n, windows), scores, cost), 0.5)


# -- point 3: the scaled sigmoid -------------------------------------------------------------


def test_scaled_sigmoid_published_values() -> None:
    # SOURCE.md point 3: σ(−1) = 0.98661, σ(−0.5) = 0.84828, σ(0) = 0, σ(1) = −0.98661.
    got = scaled_sigmoid([-1.0, -0.5, 0.0, 1.0])
    assert got == pytest.approx([0.98661, 0.84828, 0.0, -0.98661], abs=5e-6)


def test_scaled_sigmoid_is_minus_one_from_three_on() -> None:
    assert scaled_sigmoid([3.0, 3.5, 1e6]).tolist() == [-1.0, -1.0, -1.0]
    assert float(scaled_sigmoid(2.9)) == pytest.approx(sigma(2.9))
    assert float(scaled_sigmoid(2.9)) > -1.0


# -- point 2: the probationary period -------------------------------------------------------


@pytest.mark.parametrize(
    ("rows", "expected"),
    [(4032, 604), (1127, 169), (4999, 749), (5000, 750), (10320, 750), (22695, 750)],
)
def test_probationary_length(rows: int, expected: int) -> None:
    assert probationary_length(rows) == expected


def test_detections_in_the_probationary_period_are_ignored() -> None:
    # 200 rows → 30 probationary rows. A detection at row 10 is neither TP nor FP.
    assert probationary_length(200) == 30
    assert raw(200, [], [10], STANDARD) == 0.0
    # The window (100, 119) is still missed: −fnWeight.
    assert raw(200, [(100, 119)], [10], STANDARD) == -1.0


def test_window_inside_the_probationary_period_is_not_scored() -> None:
    assert raw(200, [(5, 20)], [], STANDARD) == 0.0


def test_window_straddling_the_probationary_period_keeps_its_width() -> None:
    # Window (20, 40), width 21; rows 30..40 are scorable. A detection at 30 has
    # y = −(40 − 30 + 1)/21 (point 4), not a position measured from row 30.
    expected = sigma(-11 / 21) / sigma(-1)
    assert raw(200, [(20, 40)], [30], STANDARD) == pytest.approx(expected, abs=1e-12)


# -- point 4: true positives and missed windows ---------------------------------------------


def test_detection_on_first_row_of_window_earns_exactly_tp_weight() -> None:
    assert raw(200, [(100, 119)], [100], STANDARD) == pytest.approx(1.0, abs=1e-15)


def test_detection_inside_window_uses_its_position() -> None:
    # Row 109 of window (100, 119): y = −(119 − 109 + 1)/20 = −0.55.
    expected = sigma(-0.55) / sigma(-1.0)
    assert expected == pytest.approx(0.891764, abs=1e-6)
    assert raw(200, [(100, 119)], [109], STANDARD) == pytest.approx(expected, abs=1e-12)
    # The last row: y = −1/20.
    assert raw(200, [(100, 119)], [119], STANDARD) == pytest.approx(sigma(-0.05) / MAX_TP)


def test_only_the_earliest_detection_in_a_window_counts() -> None:
    assert raw(200, [(100, 119)], [101, 105, 118], STANDARD) == pytest.approx(
        sigma(-19 / 20) / sigma(-1)
    )


def test_missed_window_costs_fn_weight() -> None:
    assert raw(200, [(100, 119)], [], STANDARD) == -1.0
    assert raw(200, [(100, 119)], [], LOW_FN) == -2.0
    assert raw(200, [(60, 79), (100, 119)], [60], LOW_FN) == pytest.approx(1.0 - 2.0)


# -- point 5: false positives ---------------------------------------------------------------


def test_false_positive_without_earlier_window_costs_fp_weight() -> None:
    assert raw(200, [(100, 119)], [50, 100], STANDARD) == pytest.approx(1.0 - 0.11)
    assert raw(200, [], [50, 60, 70], STANDARD) == pytest.approx(-0.33)


def test_false_positive_after_a_window_is_discounted_by_its_distance() -> None:
    # Window (100, 119), w = 20; FP at 130: y = |119 − 130|/(20 − 1) = 11/19.
    fp = 0.11 * sigma(11 / 19)
    assert fp == pytest.approx(-0.098469, abs=1e-6)
    assert raw(200, [(100, 119)], [100, 130], STANDARD) == pytest.approx(1.0 + fp, abs=1e-12)
    # Right after the window it costs almost nothing; 3+ widths later the full fpWeight.
    assert raw(200, [(100, 119)], [100, 120], STANDARD) == pytest.approx(1.0 + 0.11 * sigma(1 / 19))
    assert raw(200, [(100, 119)], [100, 180], STANDARD) == pytest.approx(1.0 - 0.11)


def test_false_positive_refers_to_the_most_recent_earlier_window() -> None:
    windows = [(40, 49), (100, 119)]
    # FP at 150 is measured from window (100, 119): y = 31/19.
    got = raw(200, windows, [40, 100, 150], STANDARD)
    assert got == pytest.approx(2.0 + 0.11 * sigma(31 / 19), abs=1e-12)
    # FP at 60 is measured from window (40, 49): y = 11/9.
    got = raw(200, windows, [40, 60, 100], STANDARD)
    assert got == pytest.approx(2.0 + 0.11 * sigma(11 / 9), abs=1e-12)


def test_counts_follow_nab() -> None:
    scores = np.zeros(200)
    scores[[50, 100, 101, 130]] = 1.0
    events = file_events(file_layout(200, [(100, 119)]), scores, STANDARD)
    tp, tn, fp, fn = detection_counts(events, 0.5)
    assert (tp, fp) == (2, 2)
    assert tp + tn + fp + fn == 200 - 30


# -- point 7: the threshold sweep -----------------------------------------------------------


def naive_file_score(
    scores: np.ndarray, windows: list[tuple[int, int]], threshold: float, cost: CostMatrix
) -> float:
    """The rules of points 2–5 transcribed row by row, independently of the module."""
    n = scores.size
    prob = min(math.floor(0.15 * n), 0.15 * 5000)
    total = 0.0
    best: dict[int, float] = {}
    for k, (left, right) in enumerate(windows):
        if any(i >= prob for i in range(left, right + 1)):
            best[k] = -cost.fn_weight
    for i in range(n):
        if i < prob or scores[i] < threshold:
            continue
        inside = [k for k, (a, b) in enumerate(windows) if a <= i <= b]
        if inside:
            k = inside[0]
            a, b = windows[k]
            w = b - a + 1
            best[k] = max(best[k], cost.tp_weight * sigma(-(b - i + 1) / w) / sigma(-1))
        else:
            before = [(a, b) for a, b in windows if b < i]
            if not before:
                total += cost.fp_weight * sigma(3.0)
            else:
                a, b = before[-1]
                total += cost.fp_weight * sigma(abs(b - i) / (b - a + 1 - 1))
    return total + sum(best.values())


@pytest.mark.parametrize("cost", list(NAB_PROFILES.values()))
def test_sweep_matches_naive_scoring_at_every_threshold(cost: CostMatrix) -> None:
    rng = np.random.default_rng(7)
    files = []
    for n, windows in [(300, [(80, 99), (200, 229)]), (250, []), (400, [(30, 69), (300, 339)])]:
        # Rounded scores make ties, which the sweep must group into one threshold.
        files.append((n, windows, np.round(rng.random(n), 2)))
    events = [file_events(file_layout(n, w), s, cost) for n, w, s in files]
    sw = sweep(events)
    assert sw.threshold[0] == 1.1
    assert np.all(np.diff(sw.threshold) < 0)
    distinct = np.unique(np.concatenate([s[probationary_length(n) :] for n, _, s in files]))
    assert sw.threshold.size == distinct.size + 1
    for thr, got in zip(sw.threshold, sw.raw, strict=True):
        expected = sum(naive_file_score(s, w, thr, cost) for _, w, s in files)
        assert got == pytest.approx(expected, abs=1e-9)
        assert sum(raw_score_at(e, thr) for e in events) == pytest.approx(expected, abs=1e-9)
    best = sw.best()
    assert sw.raw[best] == pytest.approx(max(sw.raw))
    # Ties go to the highest threshold, as NAB's max() over the sweep list does.
    assert best == int(np.flatnonzero(sw.raw == sw.raw.max())[0])


def test_sweep_with_no_detections_is_minus_fn_per_window() -> None:
    events = [file_events(file_layout(300, [(80, 99)]), np.zeros(300), STANDARD)]
    sw = sweep(events)
    assert sw.raw[0] == -1.0


# -- point 8: normalisation -----------------------------------------------------------------


def test_normalisation_between_null_and_perfect() -> None:
    assert perfect_raw(116, STANDARD) == 116.0
    assert normalised_score(-116.0, -116.0, 116.0) == 0.0
    assert normalised_score(116.0, -116.0, 116.0) == 100.0
    assert normalised_score(0.0, -232.0, 116.0) == pytest.approx(100 * 232 / 348)


def test_bad_windows_are_rejected() -> None:
    with pytest.raises(ValueError, match="overlaps"):
        file_layout(100, [(40, 60), (50, 70)])
    with pytest.raises(ValueError, match="inside"):
        file_layout(100, [(90, 120)])
