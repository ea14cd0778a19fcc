"""Sensor-health checks (传感器 健康 检查) for lifeline monitoring (城市生命线), vectorised.

A reading that comes from a faulty device must not be treated as a departure of the pipe,
bridge or well it measures. REFERENCE.md Part C §1.4 puts "device health" in the verification
step (研判: "cross-check neighbours and device health ... analyst decides real / false / device
fault"); these are the three device checks used there:

* **offline** — no reading for ``k`` expected intervals (a gap in the time stamps);
* **stuck** — the same reading (within a tolerance) for at least ``min_run`` samples;
* **impossible** — a reading outside the physical range of the quantity or the instrument, or
  not a number at all.

All functions are pure and work on whole arrays; the limits themselves are configuration
(per sensor type), never constants here.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


def run_length(mask: npt.ArrayLike) -> IntArray:
    """Length of the run of True values ending at each position (0 where ``mask`` is False).

    >>> run_length([True, True, False, True]).tolist()
    [1, 2, 0, 1]
    """
    m = np.asarray(mask, dtype=np.bool_)
    idx = np.arange(1, m.size + 1, dtype=np.int64)
    # Position of the last False at or before each index (0 before the start).
    last_false = np.maximum.accumulate(np.where(m, 0, idx))
    return np.where(m, idx - last_false, 0)


def _seconds(timestamps: npt.ArrayLike) -> FloatArray:
    ts = np.asarray(timestamps)
    if np.issubdtype(ts.dtype, np.datetime64):
        return ts.astype("datetime64[ns]").astype(np.int64) / 1e9
    return ts.astype(np.float64)


def offline_gaps(timestamps: npt.ArrayLike, interval: float, k: int) -> BoolArray:
    """True at each reading that ends an outage: the gap since the previous reading spans at
    least ``k`` missed intervals, i.e. ``Δt ≥ (k + 1) × interval``.

    ``timestamps`` are datetime64 values or seconds; ``interval`` is the expected reporting
    interval in seconds. The first reading never ends an outage.
    """
    if interval <= 0 or k < 1:
        raise ValueError("interval must be positive and k at least 1")
    t = _seconds(timestamps)
    out = np.zeros(t.size, dtype=np.bool_)
    out[1:] = np.diff(t) >= (k + 1) * interval
    return out


def is_offline(last_reading: float, now: float, interval: float, k: int) -> bool:
    """True when ``k`` expected readings are overdue at ``now`` (all times in seconds)."""
    if interval <= 0 or k < 1:
        raise ValueError("interval must be positive and k at least 1")
    return now - last_reading >= (k + 1) * interval


def stuck(values: npt.ArrayLike, min_run: int, tolerance: float = 0.0) -> BoolArray:
    """True where the reading has stayed within ``tolerance`` of the previous one for at least
    ``min_run`` consecutive readings (the run includes its first reading).

    A stuck (冻结) sensor repeats its last value; a live one shows at least instrument noise.
    Missing values (NaN) break a run.
    """
    if min_run < 2:
        raise ValueError("min_run must be at least 2 (one reading is never 'stuck')")
    x = np.asarray(values, dtype=np.float64)
    same = np.zeros(x.size, dtype=np.bool_)
    same[1:] = np.abs(np.diff(x)) <= tolerance
    # run_length counts repeats; the run of readings is one longer than the run of repeats.
    return (run_length(same) + 1) >= min_run


def impossible(values: npt.ArrayLike, low: float, high: float) -> BoolArray:
    """True where the reading is not a finite number or lies outside ``[low, high]``, the
    physical range of the quantity (e.g. 0–100 %LEL for a methane detector)."""
    if not low <= high:
        raise ValueError("low must not exceed high")
    x = np.asarray(values, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return ~np.isfinite(x) | (x < low) | (x > high)
