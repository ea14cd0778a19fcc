"""Level alarms with hysteresis and minimum duration, and rate-of-change checks (报警分级).

REFERENCE.md Part C §1.3: no national table of numeric lifeline thresholds exists; each sensor
type maps its own thresholds onto the four national warning levels (1 = highest, 红/橙/黄/蓝),
e.g. the cityops defaults for methane in adjacent spaces — notice ≥ 10 %LEL, level 2 ≥ 25 %LEL,
level 1 ≥ 50 %LEL (``source: "cityops default"``). The thresholds are configuration; this
module only implements the mechanics, as pure vectorised functions:

* an alarm is **raised** when the reading has been at or beyond the *on* threshold for
  ``min_duration`` consecutive readings (a single spike does not raise it);
* it is **cleared** only when the reading has been back below the *off* threshold (on the safe
  side of it, with ``off`` no further than ``on``) for ``min_duration`` readings — the hysteresis
  band between the two stops an alarm from chattering around one threshold;
* between the two it keeps its previous state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt

from cityops.lifeline.detect.health import run_length

BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
Direction = Literal["above", "below"]


def hysteresis_alarm(
    values: npt.ArrayLike,
    on: float,
    off: float,
    min_duration: int = 1,
    direction: Direction = "above",
    initial: bool = False,
) -> BoolArray:
    """Alarm state per reading (True = in alarm) for one threshold pair.

    ``direction="above"`` alarms on high readings (``off ≤ on``); ``"below"`` on low readings,
    such as a pressure drop (``off ≥ on``). Missing readings (NaN) neither raise nor clear.
    """
    if min_duration < 1:
        raise ValueError("min_duration must be at least 1 reading")
    x = np.asarray(values, dtype=np.float64)
    if direction == "below":
        x, on, off = -x, -on, -off
    elif direction != "above":
        raise ValueError("direction must be 'above' or 'below'")
    if off > on:
        raise ValueError("the clear threshold must lie on the safe side of the raise threshold")
    with np.errstate(invalid="ignore"):
        raise_now = run_length(x >= on) >= min_duration
        clear_now = run_length(x < off) >= min_duration
    idx = np.arange(1, x.size + 1, dtype=np.int64)
    # The state is the kind of the most recent event (raise or clear); before any, `initial`.
    last_raise = np.maximum.accumulate(np.where(raise_now, idx, 0))
    last_clear = np.maximum.accumulate(np.where(clear_now, idx, 0))
    state = last_raise > last_clear
    if initial:
        state |= (last_raise == 0) & (last_clear == 0)
    return np.asarray(state, dtype=np.bool_)


def graded_alarm(
    values: npt.ArrayLike,
    levels: Sequence[tuple[float, float]],
    min_duration: int = 1,
    direction: Direction = "above",
) -> IntArray:
    """Warning level per reading under the national convention (REFERENCE.md Part C §1.3/§6):
    ``levels`` lists ``(on, off)`` pairs from the *lowest* warning (蓝, 4) to the highest (红, 1);
    the result is 0 for no alarm, otherwise the highest level in alarm (1 = most severe).

    Example for methane (cityops default): ``[(10, 8), (25, 20), (50, 40)]`` gives 3 at
    ≥ 10 %LEL, 2 at ≥ 25 %LEL, 1 at ≥ 50 %LEL.
    """
    x = np.asarray(values, dtype=np.float64)
    n = len(levels)
    out = np.zeros(x.size, dtype=np.int64)
    for rank, (on, off) in enumerate(levels):
        state = hysteresis_alarm(x, on, off, min_duration, direction)
        # The k-th pair from the bottom is level n − k (the last pair is level 1).
        out = np.where(state, n - rank, out)
    return out


def rate_of_change(values: npt.ArrayLike, timestamps: npt.ArrayLike, window: int = 1) -> FloatArray:
    """Change per second over the last ``window`` readings: (x_t − x_{t−w}) / (t_t − t_{t−w}).

    NaN for the first ``window`` readings. ``timestamps`` are datetime64 values or seconds.
    """
    if window < 1:
        raise ValueError("window must be at least 1 reading")
    x = np.asarray(values, dtype=np.float64)
    ts = np.asarray(timestamps)
    t = (
        ts.astype("datetime64[ns]").astype(np.int64) / 1e9
        if np.issubdtype(ts.dtype, np.datetime64)
        else ts.astype(np.float64)
    )
    out = np.full(x.size, np.nan)
    if x.size > window:
        dt = t[window:] - t[:-window]
        with np.errstate(divide="ignore", invalid="ignore"):
            out[window:] = np.where(dt > 0, (x[window:] - x[:-window]) / dt, np.nan)
    return out


def rate_alarm(
    values: npt.ArrayLike,
    timestamps: npt.ArrayLike,
    max_rate: float,
    window: int = 1,
    min_duration: int = 1,
) -> BoolArray:
    """True where |rate of change| has exceeded ``max_rate`` (units per second) for
    ``min_duration`` consecutive readings — a fast rise of water in an underpass, a sudden
    pressure loss, even while the level itself is still below any threshold."""
    rate = rate_of_change(values, timestamps, window)
    with np.errstate(invalid="ignore"):
        fast = np.abs(rate) > max_rate
    return run_length(fast) >= min_duration
