"""NAB scoring rules as pure functions over arrays (城市生命线 anomaly-detector evaluation).

This module implements the Numenta Anomaly Benchmark (NAB) scorer exactly as
``/work/shared/data/nab/SOURCE.md`` ("How NAB scoring works", points 1–8) states it, which in turn
transcribes NAB's ``nab/sweeper.py`` at commit ``ea702d7``:

* point 2 — probationary period: ``min(floor(0.15 × N), 0.15 × 5000)`` rows are not scored;
* point 3 — scaled sigmoid ``σ(y) = 2/(1 + e^(5y)) − 1``, ``−1`` from ``y = 3`` on;
* point 4 — a detection at row ``i`` of window ``[l, r]`` (width ``w = r − l + 1``) has position
  ``y = −(r − i + 1)/w`` and scores ``tpWeight × σ(y)/σ(−1)``; only the best (earliest) detection
  in a window counts; a window without a detection scores ``−fnWeight``;
* point 5 — a detection outside every window scores ``fpWeight × σ(y)`` with
  ``y = |i − r_prev|/(w_prev − 1)`` measured from the most recent earlier window, or exactly
  ``−fpWeight`` when no window precedes it; all false positives add up;
* point 6 — the three application profiles (cost matrices);
* point 7 — one threshold per detector and profile for the whole corpus, a row being a detection
  when ``anomaly_score ≥ threshold``; the threshold is found by an exhaustive sweep over the
  distinct scores of all scorable rows, starting from 1.1 (no detection);
* point 8 — normalisation ``100 × (raw − raw_null)/(raw_perfect − raw_null)``.

The sweep is vectorised: every scorable row becomes an *event* ``(score, delta)`` — the change
of the corpus raw score when the threshold falls to ``score`` — so that the raw score at every
candidate threshold is one cumulative sum over the events sorted by descending score. A false
positive's delta is its own weighted score. Inside a window only the rows whose score beats all
earlier rows of that window ("records") can become the earliest detection, so each record's
delta is the difference between its true-positive score and that of the next record (or
``+fnWeight`` for the window's maximum). No Python loop runs per threshold or per row.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

#: NAB's ``probationPercent`` (SOURCE.md point 2).
PROBATION_PERCENT = 0.15
#: NAB caps the probationary period at ``probationPercent × 5000`` rows (SOURCE.md point 2).
PROBATION_CAP_ROWS = 5000
#: NAB's sweep starts from this threshold, which no detector output reaches (SOURCE.md point 7).
NO_DETECTION_THRESHOLD = 1.1


@dataclass(frozen=True)
class CostMatrix:
    """One NAB application profile (SOURCE.md point 6; NAB ``config/profiles.json``).

    ``tnWeight`` is listed by NAB but never used by its scorer, so it is not kept here.
    """

    tp_weight: float
    fp_weight: float
    fn_weight: float


#: The three profiles of NAB's ``config/profiles.json`` (SOURCE.md point 6), in NAB's order.
NAB_PROFILES: Mapping[str, CostMatrix] = {
    "standard": CostMatrix(tp_weight=1.0, fp_weight=0.11, fn_weight=1.0),
    "reward_low_FP_rate": CostMatrix(tp_weight=1.0, fp_weight=0.22, fn_weight=1.0),
    "reward_low_FN_rate": CostMatrix(tp_weight=1.0, fp_weight=0.11, fn_weight=2.0),
}


def scaled_sigmoid(y: npt.ArrayLike) -> FloatArray:
    """NAB's scaled sigmoid σ(y) = 2/(1 + e^(5y)) − 1, with σ(y) = −1 for y ≥ 3 (point 3).

    SOURCE.md writes the cut-off as "y > 3"; NAB's ``scaledSigmoid`` tests ``>= 3.0``. The two
    differ only at y = 3 exactly (by 3e-7); the code's ``>=`` is used, so that an FP with no
    earlier window (NAB passes y = 3.0) costs exactly −fpWeight, as point 5 says.
    """
    arr = np.asarray(y, dtype=np.float64)
    with np.errstate(over="ignore"):  # e^(5y) overflows to inf for huge y: σ → −1, as intended
        out = 2.0 / (1.0 + np.exp(5.0 * arr)) - 1.0
    return np.where(arr >= 3.0, -1.0, out)


#: σ(−1), the score of a detection on the first row of a window before normalisation (point 4).
MAX_TP = float(scaled_sigmoid(-1.0))


def probationary_length(n_rows: int, percent: float = PROBATION_PERCENT) -> int:
    """Rows at the start of a file that the scorer ignores: min(floor(0.15 N), 750) (point 2).

    NAB compares ``i >= min(floor(p N), p × 5000)``; the result is returned as the first scored
    row index, i.e. rounded up, so that ``i >= probationary_length(N)`` is the same test.
    """
    return math.ceil(min(math.floor(percent * n_rows), percent * PROBATION_CAP_ROWS))


@dataclass(frozen=True)
class FileLayout:
    """Everything the scorer needs about one file except the detector's scores.

    Attributes are over the *scorable* rows only (index ``probation`` onwards):
    ``window`` is the window number of a row (−1 outside all windows), ``tp_unit`` is
    ``σ(y)/σ(−1)`` inside a window (point 4), ``fp_unit`` is ``σ(y)`` outside (point 5).
    ``n_windows`` counts windows with at least one scorable row: only those can be missed.
    """

    n_rows: int
    probation: int
    window: IntArray
    tp_unit: FloatArray
    fp_unit: FloatArray
    window_ids: IntArray

    @property
    def n_windows(self) -> int:
        return int(self.window_ids.size)


def file_layout(
    n_rows: int,
    windows: Sequence[tuple[int, int]],
    probation: int | None = None,
) -> FileLayout:
    """Row positions and unit scores of one file (SOURCE.md points 1, 2, 4 and 5).

    ``windows`` are inclusive row-index pairs ``(l, r)`` in time order, as read from
    ``combined_windows.json`` (point 1: "a window includes both of its end rows"). They must not
    overlap: NAB's labeller has already merged overlapping windows.
    """
    if probation is None:
        probation = probationary_length(n_rows)
    idx = np.arange(n_rows, dtype=np.int64)
    window = np.full(n_rows, -1, dtype=np.int64)
    tp_unit = np.zeros(n_rows, dtype=np.float64)
    # Right edge and width of the most recent window that ended before each row (point 5).
    prev_right = np.full(n_rows, -1, dtype=np.int64)
    prev_width = np.zeros(n_rows, dtype=np.float64)
    last_right = -1
    for k, (left, right) in enumerate(windows):
        if not 0 <= left <= right < n_rows:
            raise ValueError(f"window {k} ({left}, {right}) does not lie inside {n_rows} rows")
        if left <= last_right:
            raise ValueError(f"window {k} ({left}, {right}) overlaps or precedes the one before")
        width = float(right - left + 1)
        rows = idx[left : right + 1]
        window[left : right + 1] = k
        # Point 4: y = −(r − i + 1)/w, −1 at the window's first row, −1/w at its last.
        tp_unit[left : right + 1] = scaled_sigmoid(-(right - rows + 1) / width) / MAX_TP
        prev_right[right + 1 :] = right
        prev_width[right + 1 :] = width
        last_right = right
    outside = window < 0
    # Point 5: with no earlier window NAB uses y = 3.0, so the FP costs exactly −fpWeight.
    # A one-row earlier window would make NAB divide by zero; it is treated as "far" (y = ∞).
    with np.errstate(divide="ignore", invalid="ignore"):
        y_fp = np.where(
            prev_right < 0,
            3.0,
            np.abs(prev_right - idx) / (prev_width - 1.0),
        )
    y_fp = np.where(np.isnan(y_fp), np.inf, y_fp)
    fp_unit = np.where(outside, scaled_sigmoid(y_fp), 0.0)
    sl = slice(probation, None)
    scorable_window = window[sl]
    return FileLayout(
        n_rows=n_rows,
        probation=probation,
        window=scorable_window,
        tp_unit=tp_unit[sl],
        fp_unit=fp_unit[sl],
        window_ids=np.unique(scorable_window[scorable_window >= 0]),
    )


@dataclass(frozen=True)
class FileEvents:
    """A file's scorable rows as sweep events for one profile (see the module docstring).

    ``score`` holds every scorable row's anomaly score; ``delta`` the change of the raw score
    when the threshold falls to that row's score (0 for rows that can never change it);
    ``in_window`` marks rows inside a window (for TP/FP counts); ``base`` is the raw score with
    no detection at all, −fnWeight per scorable window (point 4).
    """

    score: FloatArray
    delta: FloatArray
    in_window: BoolArray
    base: float


def file_events(layout: FileLayout, scores: npt.ArrayLike, cost: CostMatrix) -> FileEvents:
    """Turn one file's anomaly scores into sweep events under one profile (points 4, 5, 7)."""
    s_all = np.asarray(scores, dtype=np.float64)
    if s_all.shape != (layout.n_rows,):
        raise ValueError(f"expected {layout.n_rows} scores, got shape {s_all.shape}")
    s = s_all[layout.probation :]
    in_window = layout.window >= 0
    # NAB: weightedScore = σ(y) × tpWeight / maxTP inside, σ(y) × fpWeight outside.
    delta = np.where(in_window, 0.0, layout.fp_unit * cost.fp_weight)
    for k in layout.window_ids:
        rows = np.flatnonzero(layout.window == k)
        seg = s[rows]
        # A row becomes the earliest detection only if it beats every earlier row in the
        # window (ties go to the earlier row, which is detected at the same threshold).
        prefix_max = np.maximum.accumulate(seg)
        is_record = np.empty(seg.size, dtype=np.bool_)
        is_record[0] = True
        is_record[1:] = seg[1:] > prefix_max[:-1]
        rec = rows[is_record]
        tp = layout.tp_unit[rec] * cost.tp_weight
        # Falling thresholds reach the records from the last (highest score) to the first;
        # each one replaces the next record's TP score; the last replaces −fnWeight.
        nxt = np.append(tp[1:], -cost.fn_weight)
        delta[rec] = tp - nxt
    return FileEvents(
        score=s,
        delta=delta,
        in_window=in_window,
        base=-cost.fn_weight * layout.n_windows,
    )


@dataclass(frozen=True)
class Sweep:
    """Raw corpus score at every candidate threshold, highest threshold first (point 7).

    ``threshold[0]`` is 1.1 (no detection); the others are the distinct anomaly scores of all
    scorable rows in descending order. ``tp``/``fp`` count detected rows inside/outside windows.
    """

    threshold: FloatArray
    raw: FloatArray
    tp: IntArray
    fp: IntArray

    def best(self) -> int:
        """Index of the best threshold; ties go to the highest threshold, as NAB's max() does."""
        return int(np.argmax(self.raw))


def sweep(events: Sequence[FileEvents]) -> Sweep:
    """Exhaustive threshold sweep over the whole corpus (SOURCE.md point 7), vectorised.

    The raw corpus score is the sum of the per-file scores, so the files' events are pooled and
    sorted once by descending score; the raw score at each distinct score is the base plus the
    cumulative sum of deltas up to the last row holding that score.
    """
    if not events or not sum(e.score.size for e in events):
        base0 = float(sum(e.base for e in events))
        zero = np.zeros(1, dtype=np.int64)
        return Sweep(np.array([NO_DETECTION_THRESHOLD]), np.array([base0]), zero, zero)
    score = np.concatenate([e.score for e in events])
    delta = np.concatenate([e.delta for e in events])
    in_win = np.concatenate([e.in_window for e in events])
    base = float(sum(e.base for e in events))
    order = np.argsort(-score, kind="stable")
    s_sorted = score[order]
    cum = base + np.cumsum(delta[order])
    tp_cum = np.cumsum(in_win[order])
    fp_cum = np.arange(1, score.size + 1) - tp_cum
    # The last row of each group of equal scores closes that threshold.
    last: IntArray = np.flatnonzero(np.append(s_sorted[1:] != s_sorted[:-1], True))
    top = NO_DETECTION_THRESHOLD
    if s_sorted[0] >= top:
        top = float(np.nextafter(s_sorted[0], np.inf))
    return Sweep(
        threshold=np.concatenate([[top], s_sorted[last]]),
        raw=np.concatenate([[base], cum[last]]),
        tp=np.concatenate([[0], tp_cum[last]]).astype(np.int64),
        fp=np.concatenate([[0], fp_cum[last]]).astype(np.int64),
    )


def raw_score_at(events: FileEvents, threshold: float) -> float:
    """Raw score of one file when rows with ``anomaly_score ≥ threshold`` are detections."""
    detected = events.score >= threshold
    return float(events.base + events.delta[detected].sum())


def detection_counts(events: FileEvents, threshold: float) -> tuple[int, int, int, int]:
    """NAB's per-file row counts at a threshold: (TP, TN, FP, FN) over scorable rows."""
    detected = events.score >= threshold
    tp = int(np.count_nonzero(detected & events.in_window))
    fp = int(np.count_nonzero(detected & ~events.in_window))
    n_in = int(np.count_nonzero(events.in_window))
    n_out = int(events.score.size - n_in)
    return tp, n_out - fp, fp, n_in - tp


def perfect_raw(n_windows: int, cost: CostMatrix) -> float:
    """Raw score of the perfect detector: tpWeight × number of windows (point 8)."""
    return cost.tp_weight * n_windows


def normalised_score(raw: float, raw_null: float, raw_perfect: float) -> float:
    """NAB's final score 100 × (raw − raw_null)/(raw_perfect − raw_null) (point 8)."""
    return 100.0 * (raw - raw_null) / (raw_perfect - raw_null)
