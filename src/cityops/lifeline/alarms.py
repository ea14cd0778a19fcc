"""Streaming alarm rules for one lifeline sensor, and the merge of alarms into incidents.

Pure logic: plain values in, plain values out; no database, no clock (``ts`` is passed in so a
recorded series replays exactly). The shell (:mod:`cityops.lifeline.ingest.pipeline`) keeps one
:class:`StreamState` per sensor and stores it with the samples, in the same transaction.

Levels (报警等级) are the national four, 1 = highest: red 红 (Ⅰ), orange 橙 (Ⅱ), yellow 黄 (Ⅲ),
blue 蓝 (Ⅳ) (REFERENCE Part C §1.3, §6); each sensor profile maps its own thresholds onto them
(``rules/lifeline/thresholds.yaml``). Alarm kinds (one open alarm per sensor and kind):

* ``threshold`` — level bands with a minimum duration before raising and hysteresis before
  clearing; an open alarm escalates but is never lowered (ThingsBoard's
  ``AlarmCalculatedFieldState``, EXAMPLES §5): it keeps its peak level until it clears;
* ``rate_of_change`` — rise or drop per minute between consecutive readings (a main burst drops
  pressure fast);
* ``anomaly`` — the learned detector's score (:mod:`cityops.lifeline.detect`), blue by default;
* sensor health (设备故障): ``offline`` (no reading for k intervals), ``stuck`` (the same value
  n times), ``impossible`` (outside the physical range: a fault, never a level alarm).

Maintenance (维护) suppresses raising and escalating; clearing still happens, so an alarm never
stays open because its sensor went into maintenance after the fact. A suppressed level is not
remembered as open, so it is raised as soon as maintenance ends if the condition still holds.

:func:`choose_incident` implements the merge rule of ``rules/lifeline/incidents.yaml``: alarms
on the same network within a distance (metres, projected CRS) and a time window form one
incident (REFERENCE Part C §1.4, 研判: de-duplicate and cross-check neighbours).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from cityops.lifeline.detect.health import is_offline

__all__ = [
    "ALARM_KINDS",
    "HEALTH_KINDS",
    "LEVELS",
    "RANK",
    "AlarmSite",
    "AnomalyRule",
    "Band",
    "Change",
    "IncidentView",
    "RateRule",
    "SensorRule",
    "StreamState",
    "StuckRule",
    "advance_quiet",
    "check_offline",
    "choose_incident",
    "evaluate",
    "max_level",
]

#: The four levels, most severe first (红 橙 黄 蓝).
LEVELS: tuple[str, ...] = ("red", "orange", "yellow", "blue")
#: Severity rank of a level: red 4 … blue 1.
RANK: dict[str, int] = {"red": 4, "orange": 3, "yellow": 2, "blue": 1}
ALARM_KINDS: tuple[str, ...] = (
    "threshold",
    "rate_of_change",
    "anomaly",
    "offline",
    "stuck",
    "impossible",
)
#: Device faults (设备故障): they go to maintenance, not to incidents.
HEALTH_KINDS: frozenset[str] = frozenset({"offline", "stuck", "impossible"})

Action = Literal["raise", "escalate", "update", "clear"]


def max_level(levels: Iterable[str | None]) -> str | None:
    """The most severe of ``levels`` (``None`` for none)."""
    best: str | None = None
    for lv in levels:
        if lv is not None and (best is None or RANK[lv] > RANK[best]):
            best = lv
    return best


# ------------------------------------------------------------------------------------ rules


@dataclass(frozen=True)
class Band:
    """One level's create rule: ``value >= above`` or ``value <= below`` (either may be unset)."""

    level: str
    above: float | None = None
    below: float | None = None

    def __post_init__(self) -> None:
        if self.level not in RANK:
            raise ValueError(f"unknown level {self.level!r}: use one of {', '.join(LEVELS)}")
        if self.above is None and self.below is None:
            raise ValueError(f"level {self.level}: give `above` and/or `below`")

    def crossed(self, value: float) -> float | None:
        """The threshold ``value`` meets, or ``None``."""
        if self.above is not None and value >= self.above:
            return self.above
        if self.below is not None and value <= self.below:
            return self.below
        return None

    def within(self, value: float, margin: float) -> bool:
        """True while ``value`` is not yet ``margin`` past the safe side of this band (clear
        rule with hysteresis)."""
        if self.above is not None and value > self.above - margin:
            return True
        return self.below is not None and value < self.below + margin


@dataclass(frozen=True)
class RateRule:
    """Rate of change per minute: a rise of at least ``rise_per_min`` or a drop of at least
    ``drop_per_min`` (both positive) between consecutive readings."""

    level: str = "yellow"
    rise_per_min: float | None = None
    drop_per_min: float | None = None
    clear_after_s: float = 900.0


@dataclass(frozen=True)
class StuckRule:
    """The same value (within ``tolerance``) ``samples`` times in a row — values in ``ignore``,
    e.g. a dry 0, excepted (the streaming form of ``detect.health.stuck``)."""

    samples: int
    ignore: frozenset[float] = frozenset()
    tolerance: float = 0.0


@dataclass(frozen=True)
class AnomalyRule:
    """The learned detector's score at or above ``score`` raises; quiet for ``clear_after_s``
    clears (its scores are one-off pulses: one event raises one alarm)."""

    score: float = 0.8
    level: str = "blue"
    clear_after_s: float = 3600.0


@dataclass(frozen=True)
class SensorRule:
    """Everything the streaming rules need to know about one sensor (its profile plus its
    overrides, resolved by :mod:`cityops.lifeline.registry`)."""

    profile: str = "default"
    bands: tuple[Band, ...] = ()
    hysteresis: float = 0.0
    min_duration_s: float = 0.0
    clear_duration_s: float = 0.0
    physical_min: float | None = None
    physical_max: float | None = None
    rate: RateRule | None = None
    stuck: StuckRule | None = None
    anomaly: AnomalyRule | None = None
    offline_intervals: int = 3
    health_level: str = "blue"
    #: A rate is not computed across a gap longer than this many sampling intervals: a step
    #: over an outage is not a rate of change.
    max_gap_intervals: float = 3.0
    #: The open interval in which no band is crossed (derived; the streaming fast path).
    quiet_low: float = field(default=-math.inf, init=False, compare=False, repr=False)
    quiet_high: float = field(default=math.inf, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Most severe first, so the first band that holds long enough is the level to raise.
        ordered = tuple(sorted(self.bands, key=lambda b: -RANK[b.level]))
        if len({b.level for b in ordered}) != len(ordered):
            raise ValueError(f"profile {self.profile}: a level is given twice")
        object.__setattr__(self, "bands", ordered)
        lows = [b.below for b in ordered if b.below is not None]
        highs = [b.above for b in ordered if b.above is not None]
        object.__setattr__(self, "quiet_low", max(lows, default=-math.inf))
        object.__setattr__(self, "quiet_high", min(highs, default=math.inf))
        if self.health_level not in RANK:
            raise ValueError(f"unknown health level {self.health_level!r}")
        if self.offline_intervals < 1:
            raise ValueError("offline_intervals must be at least 1")


# ------------------------------------------------------------------------------------ state


@dataclass
class StreamState:
    """Per-sensor streaming state; JSON-serialisable through :meth:`to_json`."""

    #: Time (epoch s) of the last in-order reading, possible or not.
    last_ts: float | None = None
    #: Last physically possible value and its time (for rates).
    last_value: float | None = None
    last_good_ts: float | None = None
    #: level → start of the current unbroken run meeting that level's band.
    since: dict[str, float] = field(default_factory=dict)
    #: Start of the current run on the safe side of every band (clear rule).
    clear_since: float | None = None
    #: kind → level of the open alarm of that kind.
    open: dict[str, str] = field(default_factory=dict)
    rate_violation_at: float | None = None
    anomaly_at: float | None = None
    stuck_value: float | None = None
    stuck_count: int = 0
    #: How many raises maintenance has suppressed (shown to the operator).
    suppressed: int = 0

    def copy(self) -> StreamState:
        """An independent copy (the shell evaluates on copies and keeps them on commit)."""
        return StreamState(
            last_ts=self.last_ts,
            last_value=self.last_value,
            last_good_ts=self.last_good_ts,
            since=dict(self.since),
            clear_since=self.clear_since,
            open=dict(self.open),
            rate_violation_at=self.rate_violation_at,
            anomaly_at=self.anomaly_at,
            stuck_value=self.stuck_value,
            stuck_count=self.stuck_count,
            suppressed=self.suppressed,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "last_ts": self.last_ts,
            "last_value": self.last_value,
            "last_good_ts": self.last_good_ts,
            "since": dict(self.since),
            "clear_since": self.clear_since,
            "open": dict(self.open),
            "rate_violation_at": self.rate_violation_at,
            "anomaly_at": self.anomaly_at,
            "stuck_value": self.stuck_value,
            "stuck_count": self.stuck_count,
            "suppressed": self.suppressed,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> StreamState:
        if not data:
            return cls()
        return cls(
            last_ts=data.get("last_ts"),
            last_value=data.get("last_value"),
            last_good_ts=data.get("last_good_ts"),
            since={str(k): float(v) for k, v in (data.get("since") or {}).items()},
            clear_since=data.get("clear_since"),
            open={str(k): str(v) for k, v in (data.get("open") or {}).items()},
            rate_violation_at=data.get("rate_violation_at"),
            anomaly_at=data.get("anomaly_at"),
            stuck_value=data.get("stuck_value"),
            stuck_count=int(data.get("stuck_count") or 0),
            suppressed=int(data.get("suppressed") or 0),
        )


@dataclass(frozen=True)
class Change:
    """One alarm fact produced by a reading (ThingsBoard's created / modified / cleared)."""

    kind: str
    action: Action
    level: str
    ts: float
    value: float | None
    threshold: float | None = None
    message: str = ""


# ------------------------------------------------------------------------------ evaluation


class _Emitter:
    """Collects changes and applies the open/suppress bookkeeping to the state."""

    def __init__(self, state: StreamState, suppressed: bool) -> None:
        self.state = state
        self.suppressed = suppressed
        self.changes: list[Change] = []

    def fire(
        self,
        kind: str,
        level: str,
        ts: float,
        value: float | None,
        threshold: float | None,
        message: str,
    ) -> None:
        """Raise, escalate or update the alarm of ``kind`` at (at least) ``level``."""
        current = self.state.open.get(kind)
        if current is None:
            if self.suppressed:
                self.state.suppressed += 1
                return
            self.state.open[kind] = level
            self.changes.append(Change(kind, "raise", level, ts, value, threshold, message))
        elif RANK[level] > RANK[current] and not self.suppressed:
            self.state.open[kind] = level
            self.changes.append(Change(kind, "escalate", level, ts, value, threshold, message))
        else:
            self.changes.append(Change(kind, "update", current, ts, value, None, message))

    def clear(self, kind: str, ts: float, value: float | None, message: str) -> None:
        level = self.state.open.pop(kind, None)
        if level is not None:
            self.changes.append(Change(kind, "clear", level, ts, value, None, message))


def _threshold(rule: SensorRule, st: StreamState, em: _Emitter, ts: float, v: float) -> None:
    """Level bands: minimum duration to raise, hysteresis (and clear duration) to clear."""
    if not rule.bands:
        return
    if rule.quiet_low < v < rule.quiet_high and not st.since and "threshold" not in st.open:
        return  # the usual case: nowhere near a band, nothing running, nothing open
    candidate: tuple[Band, float] | None = None
    for band in rule.bands:
        crossed = band.crossed(v)
        if crossed is None:
            st.since.pop(band.level, None)
            continue
        start = st.since.setdefault(band.level, ts)
        if candidate is None and ts - start >= rule.min_duration_s:
            candidate = (band, crossed)
    is_open = "threshold" in st.open
    if candidate is not None:
        band, crossed = candidate
        st.clear_since = None
        em.fire(
            "threshold",
            band.level,
            ts,
            v,
            crossed,
            f"{v:g} {'≥' if band.above is not None and v >= band.above else '≤'} {crossed:g}",
        )
        return
    if not is_open:
        return
    if any(b.within(v, rule.hysteresis) for b in rule.bands):
        # Inside a band or its hysteresis margin: neither raised further nor cleared.
        st.clear_since = None
        em.changes.append(Change("threshold", "update", st.open["threshold"], ts, v))
        return
    if st.clear_since is None:
        st.clear_since = ts
    if ts - st.clear_since >= rule.clear_duration_s:
        st.clear_since = None
        em.clear("threshold", ts, v, "back within limits")
    else:
        em.changes.append(Change("threshold", "update", st.open["threshold"], ts, v))


def _rate(
    rule: SensorRule, st: StreamState, em: _Emitter, ts: float, v: float, interval_s: float
) -> None:
    rr = rule.rate
    if rr is None:
        return
    violated = False
    if st.last_value is not None and st.last_good_ts is not None:
        dt_s = ts - st.last_good_ts
        if 0 < dt_s <= rule.max_gap_intervals * interval_s:
            per_min = (v - st.last_value) / dt_s * 60.0
            if rr.rise_per_min is not None and per_min >= rr.rise_per_min:
                violated = True
                em.fire("rate_of_change", rr.level, ts, v, rr.rise_per_min, f"+{per_min:g}/min")
            elif rr.drop_per_min is not None and -per_min >= rr.drop_per_min:
                violated = True
                em.fire("rate_of_change", rr.level, ts, v, rr.drop_per_min, f"{per_min:g}/min")
    if violated:
        st.rate_violation_at = ts
    elif "rate_of_change" in st.open:
        since = st.rate_violation_at if st.rate_violation_at is not None else ts
        if ts - since >= rr.clear_after_s:
            em.clear("rate_of_change", ts, v, "rate back within limits")


def _stuck(rule: SensorRule, st: StreamState, em: _Emitter, ts: float, v: float) -> None:
    sr = rule.stuck
    if sr is None:
        return
    if v in sr.ignore:
        st.stuck_value, st.stuck_count = None, 0
    elif st.stuck_value is not None and abs(v - st.stuck_value) <= sr.tolerance:
        st.stuck_count += 1
        st.stuck_value = v
    else:
        st.stuck_value, st.stuck_count = v, 1
    if st.stuck_count >= sr.samples:
        em.fire("stuck", rule.health_level, ts, v, None, f"the same value {st.stuck_count} times")
    elif "stuck" in st.open:
        em.clear("stuck", ts, v, "the value changes again")


def _anomaly(
    rule: SensorRule, st: StreamState, em: _Emitter, ts: float, v: float, score: float | None
) -> None:
    ar = rule.anomaly
    if ar is None or score is None or math.isnan(score):
        return
    if score >= ar.score:
        st.anomaly_at = ts
        em.fire("anomaly", ar.level, ts, v, ar.score, f"anomaly score {score:.2f}")
    elif "anomaly" in st.open:
        since = st.anomaly_at if st.anomaly_at is not None else ts
        if ts - since >= ar.clear_after_s:
            em.clear("anomaly", ts, v, "back to the normal pattern")


def evaluate(
    rule: SensorRule,
    state: StreamState,
    ts: float,
    value: float,
    *,
    interval_s: float,
    suppressed: bool = False,
    anomaly_score: float | None = None,
) -> list[Change]:
    """Feed one in-order reading (epoch seconds, finite value) to every rule of the sensor.

    Updates ``state`` in place and returns the alarm facts it produces. A reading not newer than
    the last one (a duplicate or a late arrival) changes nothing: the caller stores it and keeps
    the stream going (late data never rewrites alarm history). ``suppressed`` is true while the
    sensor is in maintenance.
    """
    if state.last_ts is not None and ts <= state.last_ts:
        return []
    em = _Emitter(state, suppressed)
    if "offline" in state.open:
        em.clear("offline", ts, value, "reporting again")
    impossible = (rule.physical_min is not None and value < rule.physical_min) or (
        rule.physical_max is not None and value > rule.physical_max
    )
    state.last_ts = ts
    if impossible:
        lo = "-∞" if rule.physical_min is None else f"{rule.physical_min:g}"
        hi = "∞" if rule.physical_max is None else f"{rule.physical_max:g}"
        em.fire(
            "impossible",
            rule.health_level,
            ts,
            value,
            None,
            f"{value:g} is outside the physical range [{lo}, {hi}]",
        )
        return em.changes
    if "impossible" in state.open:
        em.clear("impossible", ts, value, "a possible value again")
    _stuck(rule, state, em, ts, value)
    _threshold(rule, state, em, ts, value)
    _rate(rule, state, em, ts, value, interval_s)
    _anomaly(rule, state, em, ts, value, anomaly_score)
    state.last_value = value
    state.last_good_ts = ts
    return em.changes


def advance_quiet(
    rule: SensorRule, state: StreamState, series: Sequence[tuple[float, float]]
) -> bool:
    """The batch form of :func:`evaluate` for the usual case: when every reading of ``series``
    (in time order, each newer than the last one seen) would leave every rule silent — no alarm
    open and no band's run going, every value inside the quiet interval between the bands and
    inside the physical range, and no stuck or rate rule to feed — advance ``state`` exactly as
    feeding them one by one without anomaly scores would, and return True. Otherwise change
    nothing and return False: the caller feeds them to :func:`evaluate` one by one (and always
    does when it has anomaly scores)."""
    if not series or state.open or state.since or rule.stuck is not None or rule.rate is not None:
        return False
    values = [v for _, v in series]
    lo, hi = min(values), max(values)
    if not (rule.quiet_low < lo and hi < rule.quiet_high):
        return False
    if (rule.physical_min is not None and lo < rule.physical_min) or (
        rule.physical_max is not None and hi > rule.physical_max
    ):
        return False
    ts, v = series[-1]
    state.last_ts = ts
    state.last_value = v
    state.last_good_ts = ts
    return True


def check_offline(
    rule: SensorRule,
    state: StreamState,
    now: float,
    *,
    interval_s: float,
    reference_ts: float | None = None,
    suppressed: bool = False,
) -> Change | None:
    """The offline rule, run on a clock tick: ``offline_intervals`` expected readings missed
    since the last reading (or since ``reference_ts``, e.g. registration, for a sensor that never
    reported) — the one definition of :func:`cityops.lifeline.detect.health.is_offline`.
    Cleared by the next reading in :func:`evaluate`."""
    last = state.last_ts if state.last_ts is not None else reference_ts
    if last is None or "offline" in state.open:
        return None
    silent = now - last
    if not is_offline(last, now, interval_s, rule.offline_intervals):
        return None
    em = _Emitter(state, suppressed)
    em.fire(
        "offline",
        rule.health_level,
        now,
        None,
        None,
        f"no reading for {silent:.0f} s ({rule.offline_intervals} readings of every "
        f"{interval_s:g} s missed)",
    )
    return em.changes[0] if em.changes else None


# ---------------------------------------------------------------------------------- incidents


@dataclass(frozen=True)
class AlarmSite:
    """An alarm as the merge rule sees it: where (metres, projected CRS), on which network,
    active from when to when (``active_to`` ``None``: still active)."""

    network: str
    x: float
    y: float
    active_from: float
    active_to: float | None = None


@dataclass(frozen=True)
class IncidentView:
    """An open incident and the alarms already in it."""

    id: int
    opened_at: float
    sites: tuple[AlarmSite, ...]


def choose_incident(
    new: AlarmSite,
    incidents: Sequence[IncidentView],
    *,
    distance_m: float,
    window_s: float,
) -> int | None:
    """The incident a new alarm joins, or ``None`` for a new incident.

    It joins when one alarm of the incident is on the same network, within ``distance_m``
    metres and active within ``window_s`` of the new alarm's start (single linkage, so a leak
    spreading from manhole to manhole stays one incident). Of several, the oldest incident wins.
    """
    best: IncidentView | None = None
    for inc in incidents:
        for s in inc.sites:
            if s.network != new.network:
                continue
            if math.hypot(s.x - new.x, s.y - new.y) > distance_m:
                continue
            if new.active_from < s.active_from - window_s:
                continue
            if s.active_to is not None and new.active_from > s.active_to + window_s:
                continue
            if best is None or (inc.opened_at, inc.id) < (best.opened_at, best.id):
                best = inc
            break
    return None if best is None else best.id
