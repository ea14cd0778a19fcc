"""Streaming novelty detector for one lifeline sensor series (城市生命线 监测 异常检测).

A learned, unsupervised detector of departures from a sensor's normal pattern. During a learning
period of P samples (NAB's probationary period, SOURCE.md point 2: "detectors are told the same
length") it learns the range of three features of the signal; afterwards each sample gets an
``anomaly_score`` in [0, 1]:

1. **Features** — the value, its short moving average (the level) and the short moving average
   of its absolute change (the variability), over ``3 × ⌊P/100⌋`` samples.
2. **Novelty of each feature** — the feature is cut into levels ``range/16`` wide, where
   ``range`` is the feature's learning-period range. A level *beyond* every level seen so far (by
   d levels) scores ``0.5 + 0.5(1 − e^(−d/4.5))``; a level inside the seen range that never occurred
   scores 0.6; a level seen c times scores ``0.3/(1 + c)``. This is the discretised "surprise"
   of contextOSE/ARTime-like detectors, with the resolution learned from the learning period
   only — never from the future of the series (NAB also hands detectors the whole file's
   min/max; this detector does not use them).
3. **Ensemble** — the largest feature novelty, plus 0.1 for each further feature novel at once.
4. **Refractory post-processing** — the output is the novelty *in excess of* the largest novelty
   of the previous ``0.1 P`` samples, so an event raises one alarm and not a burst (NAB rewards the
   earliest detection in a window and charges every false positive). A reading a whole learning
   range beyond everything seen is exempt: it is reported at its full novelty whatever came
   just before (a leak after a mild drift is not "old news").
5. **Warm-up** — right after learning, scores are scaled down (×0.5 rising to ×1 over ``0.5 P``),
   because with little history nearly everything is "new".

Stuck values, offline sensors and impossible readings are *not* scored here: they are sensor
faults, reported by :mod:`cityops.lifeline.detect.health`, not departures of the process.

One state object (:class:`NoveltyDetector`) serves both modes. :meth:`NoveltyDetector.update`
takes a chunk of any length and is vectorised; :meth:`NoveltyDetector.update_one` is a scalar
fast path for one sample. Every step is defined so that it is exactly reproducible in both
(sums added left to right in one order, integer level counts, exact maxima, a lookup table
instead of ``exp``), so streaming a series sample by sample, in chunks, or in one call gives
bit-for-bit the same scores. :func:`detect` is the one-call batch form.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.ndimage import maximum_filter1d

from cityops.lifeline.detect.config import DEFAULT_CONFIG, DetectorConfig

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: Shortest learning period accepted: fewer samples cannot give a range to learn from.
MIN_LEARNING_PERIOD = 10
#: Levels are clipped to ±2^52, so that absurd readings cannot overflow the integer level.
_LEVEL_LIMIT = float(2**52)
#: Excess levels beyond the seen range are capped here for the score table (e^(−64/3) ≈ 5e-10).
_EXCESS_CAP = 64
#: Features: value, level (short mean), variability (short mean of |change|).
_N_FEATURES = 3
#: Version of :meth:`NoveltyDetector.to_state`; bump it when the state's meaning changes.
STATE_VERSION = 1


def _extreme_table(cfg: DetectorConfig) -> tuple[float, ...]:
    """Score of a level d steps beyond the seen range, d = 0 … 64 (point 2), computed once with
    ``math.exp`` so that the vector and scalar paths share the very same numbers."""
    return tuple(
        0.5 + 0.5 * (1.0 - math.exp(-d / cfg.extreme_scale)) for d in range(_EXCESS_CAP + 1)
    )


def _shifted_sum(ext: FloatArray, width: int, m: int) -> FloatArray:
    """Sum of ``width`` consecutive values ending at each of the last ``m`` positions of ``ext``,
    added strictly left to right (the scalar path adds in the same order)."""
    acc = ext[0:m].copy()
    for j in range(1, width):
        acc += ext[j : j + m]
    return acc


def _prev_max(tail: FloatArray, new: FloatArray) -> FloatArray:
    """For each element of ``new``: the maximum of the ``len(tail)`` values before it."""
    r = tail.size
    ext = np.concatenate([tail, new])
    if r == 1:
        return ext[:-1]
    win = maximum_filter1d(ext, size=r, origin=-(r // 2), mode="nearest")
    return np.asarray(win[: new.size], dtype=np.float64)


def _count_before(b: IntArray, counts: dict[int, int]) -> IntArray:
    """How many times each ``b[t]`` occurred before t (``counts`` holds earlier chunks);
    ``counts`` is updated in place."""
    m = b.size
    lo = int(b.min())
    # A narrow range sorts as uint16, which numpy sorts by radix in O(n).
    keys = (b - lo).astype(np.uint16) if int(b.max()) - lo < 65535 else b
    order = np.argsort(keys, kind="stable")
    bs = b[order]
    is_start = np.empty(m, dtype=np.bool_)
    is_start[0] = True
    is_start[1:] = bs[1:] != bs[:-1]
    starts = np.flatnonzero(is_start)
    gid = np.cumsum(is_start) - 1
    sizes = np.diff(np.append(starts, m))
    uniq = bs[starts].tolist()
    before = np.array([counts.get(u, 0) for u in uniq], dtype=np.int64)
    for u, k in zip(uniq, sizes.tolist(), strict=True):
        counts[u] = counts.get(u, 0) + k
    out = np.empty(m, dtype=np.int64)
    out[order] = before[gid] + (np.arange(m) - starts[gid])
    return out


@dataclass
class _FeatureLevels:
    """Learned levels of one feature and what has been seen of them (point 2)."""

    low: float
    width: float
    max_level: int = 0
    min_level: int = 0
    counts: dict[int, int] = field(default_factory=dict)

    @classmethod
    def fit(cls, learn: FloatArray, bins: int) -> _FeatureLevels:
        low, high = float(learn.min()), float(learn.max())
        width = (high - low) / bins
        if not width > 0 or not math.isfinite(width):
            # A flat learning period: a departure of 1 % of the level is a new level.
            width = max(abs(low), 1.0) * 0.01
        obj = cls(low=low, width=width)
        levels = obj.levels(learn)
        obj.max_level, obj.min_level = int(levels.max()), int(levels.min())
        _count_before(levels, obj.counts)
        return obj

    def levels(self, f: FloatArray) -> IntArray:
        u = np.clip((f - self.low) / self.width, -_LEVEL_LIMIT, _LEVEL_LIMIT)
        return np.floor(u).astype(np.int64)

    def level(self, f: float) -> int:
        u = min(max((f - self.low) / self.width, -_LEVEL_LIMIT), _LEVEL_LIMIT)
        return math.floor(u)

    def novelty(
        self, f: FloatArray, cfg: DetectorConfig, table: FloatArray
    ) -> tuple[FloatArray, IntArray]:
        """Point 2 for a chunk: (novelty, levels beyond the seen range); updates the seen
        levels."""
        b = self.levels(f)
        prev_max = np.maximum.accumulate(np.concatenate([[self.max_level], b[:-1]]))
        prev_min = np.minimum.accumulate(np.concatenate([[self.min_level], b[:-1]]))
        beyond = np.minimum(np.maximum(0, np.maximum(b - prev_max, prev_min - b)), _EXCESS_CAP)
        seen = _count_before(b, self.counts)
        self.max_level = max(self.max_level, int(b.max()))
        self.min_level = min(self.min_level, int(b.min()))
        inside = np.where(seen == 0, cfg.new_level_score, cfg.seen_level_score / (1.0 + seen))
        return np.where(beyond > 0, table[beyond], inside), beyond

    def novelty_one(
        self, f: float, cfg: DetectorConfig, table: tuple[float, ...]
    ) -> tuple[float, int]:
        """Point 2 for one sample (same arithmetic as :meth:`novelty`)."""
        b = self.level(f)
        beyond = min(max(0, b - self.max_level, self.min_level - b), _EXCESS_CAP)
        seen = self.counts.get(b, 0)
        self.counts[b] = seen + 1
        self.max_level = max(self.max_level, b)
        self.min_level = min(self.min_level, b)
        if beyond > 0:
            return table[beyond], beyond
        inside = cfg.new_level_score if seen == 0 else cfg.seen_level_score / (1.0 + seen)
        return inside, 0


class NoveltyDetector:
    """Per-series detector state, updated one sample (:meth:`update_one`) or one chunk
    (:meth:`update`) at a time; both give identical scores.

    ``learning_period`` is P, the number of leading samples used only to learn (they score 0).
    For NAB it is the probationary period; in production, the commissioning period of a sensor
    (for example two weeks of samples).
    """

    def __init__(self, learning_period: int, config: DetectorConfig = DEFAULT_CONFIG) -> None:
        if learning_period < MIN_LEARNING_PERIOD:
            raise ValueError(
                f"learning_period must be at least {MIN_LEARNING_PERIOD} samples, "
                f"got {learning_period}"
            )
        p = int(learning_period)
        self.learning_period = p
        self.config = config
        self.short_window = config.short_window_units * max(1, p // 100)
        self.refractory = max(1, int(p * config.refractory))
        self.n_seen = 0
        self._table = _extreme_table(config)
        self._table_array = np.array(self._table)
        self._warm_span = config.warmup_length * p
        self._bypass = min(round(config.bypass_ranges * config.bins), _EXCESS_CAP)
        w = self.short_window
        self._last_x: float | None = None
        # Zeros stand for "no sample yet": 0.0 + v == v, so they never change a sum.
        self._tail_x: deque[float] = deque([0.0] * (w - 1), maxlen=max(w - 1, 1))
        self._tail_change: deque[float] = deque([0.0] * (w - 1), maxlen=max(w - 1, 1))
        self._learn: list[list[float]] = [[] for _ in range(_N_FEATURES)]
        self._levels: list[_FeatureLevels] | None = None
        self._raw_tail: deque[float] = deque([0.0] * self.refractory, maxlen=self.refractory)

    @property
    def learning(self) -> bool:
        """True until P valid samples have been seen."""
        return self._levels is None

    # -- public API -------------------------------------------------------------------------

    def update(self, values: npt.ArrayLike) -> FloatArray:
        """Consume a chunk of samples, return their anomaly scores in [0, 1].

        Non-finite samples (missing readings) get a NaN score and leave the state untouched, so
        gaps neither teach nor trigger the detector; sensor-health checks report them instead.
        """
        x = np.asarray(values, dtype=np.float64).reshape(-1)
        out = np.full(x.size, np.nan)
        valid = np.isfinite(x)
        if valid.all():
            return self._update_chunk(x) if x.size else out
        if valid.any():
            out[valid] = self._update_chunk(x[valid])
        return out

    def update_one(self, value: float) -> float:
        """Consume one sample: the streaming fast path, bit-identical to :meth:`update`."""
        x = float(value)
        if not math.isfinite(x):
            return math.nan
        cfg = self.config
        p = self.learning_period
        t = self.n_seen
        change = 0.0 if self._last_x is None else abs(x - self._last_x)
        self._last_x = x
        level = self._rolling_one(self._tail_x, x, t)
        variability = self._rolling_one(self._tail_change, change, t)
        feats = (x, level, variability)
        self.n_seen += 1
        if t < p:
            for i in range(_N_FEATURES):
                self._learn[i].append(feats[i])
            if t + 1 == p:
                self._fit()
            self._raw_tail.append(0.0)
            return 0.0
        levels = self._levels
        assert levels is not None  # fitted when the P-th sample arrived
        res = [levels[i].novelty_one(feats[i], cfg, self._table) for i in range(_N_FEATURES)]
        nov = [r[0] for r in res]
        best = max(max(nov[0], nov[1]), nov[2])
        n_novel = (nov[0] >= 0.5) + (nov[1] >= 0.5) + (nov[2] >= 0.5)
        raw = min(1.0, best + cfg.agreement_bonus * max(n_novel - 1, 0))
        # Refractory (point 4), unless the reading is a whole learning range beyond the seen.
        huge = res[0][1] >= self._bypass
        excess = raw if huge else max(0.0, raw - max(self._raw_tail))
        self._raw_tail.append(raw)
        age = min(max((t - p) / self._warm_span, 0.0), 1.0)
        return excess * (cfg.warmup_floor + (1.0 - cfg.warmup_floor) * age)

    def update_many(self, values: Iterable[float]) -> list[float]:
        """Stream several samples through :meth:`update_one`."""
        return [self.update_one(v) for v in values]

    def to_state(self) -> dict[str, Any]:
        """The whole state as JSON-ready plain values, so that an ingest process can persist it
        and resume exactly (the scores after :meth:`from_state` equal uninterrupted streaming).

        The state depends on every sample since the first (levels seen, extremes), so replaying
        only recent history does *not* recreate it.
        """
        levels = None
        if self._levels is not None:
            levels = [
                {
                    "low": lv.low,
                    "width": lv.width,
                    "max_level": lv.max_level,
                    "min_level": lv.min_level,
                    "counts": [[k, c] for k, c in sorted(lv.counts.items())],
                }
                for lv in self._levels
            ]
        return {
            "version": STATE_VERSION,
            "learning_period": self.learning_period,
            "config": self.config.as_dict(),
            "n_seen": self.n_seen,
            "last_x": self._last_x,
            "tail_x": list(self._tail_x),
            "tail_change": list(self._tail_change),
            "learn": [list(v) for v in self._learn],
            "levels": levels,
            "raw_tail": list(self._raw_tail),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> NoveltyDetector:
        """Rebuild a detector saved by :meth:`to_state` (same configuration included)."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(
                f"detector state version {state.get('version')!r} is not {STATE_VERSION}; "
                "start a new detector (it relearns over its learning period)"
            )
        det = cls(int(state["learning_period"]), DetectorConfig(**state["config"]))
        det.n_seen = int(state["n_seen"])
        det._last_x = None if state["last_x"] is None else float(state["last_x"])
        det._tail_x.extend(float(v) for v in state["tail_x"])
        det._tail_change.extend(float(v) for v in state["tail_change"])
        det._learn = [[float(v) for v in vals] for vals in state["learn"]]
        if state["levels"] is not None:
            det._levels = [
                _FeatureLevels(
                    low=float(lv["low"]),
                    width=float(lv["width"]),
                    max_level=int(lv["max_level"]),
                    min_level=int(lv["min_level"]),
                    counts={int(k): int(c) for k, c in lv["counts"]},
                )
                for lv in state["levels"]
            ]
        det._raw_tail.extend(float(v) for v in state["raw_tail"])
        return det

    # -- internals --------------------------------------------------------------------------

    def _rolling_one(self, tail: deque[float], v: float, t: int) -> float:
        """Short moving average of one sample, summed in the order of :func:`_shifted_sum`."""
        w = self.short_window
        if w == 1:
            return v / 1.0
        it = iter(tail)
        acc = next(it)
        for u in it:
            acc += u
        acc += v
        tail.append(v)
        return acc / float(min(t + 1, w))

    def _rolling(self, tail: deque[float], new: FloatArray, start: int) -> FloatArray:
        w = self.short_window
        m = new.size
        if w == 1:
            return new / 1.0
        ext = np.concatenate([np.array(tail, dtype=np.float64), new])
        count = np.minimum(np.arange(start + 1, start + m + 1, dtype=np.float64), float(w))
        out = _shifted_sum(ext, w, m) / count
        tail.extend(ext[-(w - 1) :].tolist())
        return out

    def _fit(self) -> None:
        self._levels = [
            _FeatureLevels.fit(np.asarray(self._learn[i], dtype=np.float64), self.config.bins)
            for i in range(_N_FEATURES)
        ]
        self._learn = [[] for _ in range(_N_FEATURES)]

    def _update_chunk(self, x: FloatArray) -> FloatArray:
        cfg = self.config
        p = self.learning_period
        start = self.n_seen
        m = x.size
        prev = np.empty(m)
        prev[0] = x[0] if self._last_x is None else self._last_x
        prev[1:] = x[:-1]
        self._last_x = float(x[-1])
        change = np.abs(x - prev)
        feats = (
            x,
            self._rolling(self._tail_x, x, start),
            self._rolling(self._tail_change, change, start),
        )
        n_learn = max(0, min(m, p - start))
        if n_learn:
            for i in range(_N_FEATURES):
                self._learn[i].extend(feats[i][:n_learn].tolist())
            if start + n_learn == p:
                self._fit()
        raw = np.zeros(m)
        huge = np.zeros(m, dtype=np.bool_)
        if n_learn < m:
            levels = self._levels
            assert levels is not None  # fitted above as soon as P samples were seen
            part = slice(n_learn, m)
            res = [levels[i].novelty(feats[i][part], cfg, self._table_array) for i in range(3)]
            nov = [r[0] for r in res]
            # Only the reading itself can bypass the refractory (not the derived features).
            huge[part] = res[0][1] >= self._bypass
            best = np.maximum(np.maximum(nov[0], nov[1]), nov[2])
            n_novel = (
                (nov[0] >= 0.5).astype(np.int64)
                + (nov[1] >= 0.5).astype(np.int64)
                + (nov[2] >= 0.5).astype(np.int64)
            )
            raw[part] = np.minimum(1.0, best + cfg.agreement_bonus * np.maximum(n_novel - 1, 0))
        # Refractory: only novelty above the recent maximum is news (point 4).
        excess = np.maximum(0.0, raw - _prev_max(np.array(self._raw_tail), raw))
        excess = np.where(huge, raw, excess)
        self._raw_tail.extend(raw[-self.refractory :].tolist())
        idx = start + np.arange(m)
        age = np.clip((idx - p) / self._warm_span, 0.0, 1.0)
        warm = cfg.warmup_floor + (1.0 - cfg.warmup_floor) * age
        self.n_seen += m
        return np.where(idx >= p, excess * warm, 0.0)


def detect(
    values: npt.ArrayLike,
    learning_period: int,
    config: DetectorConfig = DEFAULT_CONFIG,
) -> FloatArray:
    """Batch detection over a whole series: the same scores as streaming it sample by sample."""
    return NoveltyDetector(learning_period, config).update(values)
