"""One ingest batch = one transaction: readings → samples → streaming rules → alarms → incidents.

Every path in (MQTT consumer, HTTP batch endpoint, in-process simulator) ends here, so they all
behave alike:

1. payloads are parsed (:mod:`.payload`); what cannot be used is *rejected*, never raised;
2. readings are matched to registered sensors (unknown or retired: rejected);
3. all readings are upserted on (sensor, ts) — a duplicate rewrites its row, never adds one;
4. per sensor, readings newer than the last one processed go, in time order, through the
   streaming rules (:func:`cityops.lifeline.alarms.evaluate`); older ones (late or duplicate)
   are stored only, because a replay must not rewrite alarm history;
5. alarm facts become rows: one open alarm per (sensor, kind), updated rather than repeated;
   newly raised alarms merge into incidents (:func:`cityops.lifeline.alarms.choose_incident`);
6. rejected payloads become dead letters; the sensors' streaming state is written back;
7. everything commits at once. Only then does the MQTT consumer acknowledge its messages
   (DESIGN §8 "MQTT"), so a crash anywhere redelivers, and step 3 makes redelivery harmless.

The rules run *before* the write transaction, on copies of states the pipeline keeps in memory,
so the database's write lock (one writer at a time on SQLite) is held only for the writes.
Several processes may ingest at once (MQTT workers, the HTTP endpoint): every state row carries
a revision, a state is written back only if its revision is still the one it was read at, and
a batch that meets a newer state evaluates again from the stored one (optimistic concurrency;
on conflict nothing of the attempt is kept).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from cityops.core.db import Database
from cityops.lifeline import timeseries
from cityops.lifeline.alarms import (
    HEALTH_KINDS,
    RANK,
    AlarmSite,
    Change,
    IncidentView,
    StreamState,
    advance_quiet,
    check_offline,
    choose_incident,
    evaluate,
    max_level,
)
from cityops.lifeline.ingest.payload import (
    EARLIEST,
    FAST_READING,
    Reading,
    Rejected,
    parse_message,
    parse_topic,
)
from cityops.lifeline.models import Alarm, AlarmEvent, DeadLetter, Incident, SensorState
from cityops.lifeline.registry import SensorCache, SensorInfo
from cityops.lifeline.rules import incident_rules
from cityops.settings import Settings, get_settings

log = logging.getLogger("cityops.lifeline")

#: Parameters per statement when a batch's sensors are looked up with IN (...).
_IN_CHUNK = 500
#: Arrays in binary (``%b``), as in :data:`cityops.lifeline.timeseries._PG_UPSERT`.
_PG_STATE_UPDATE = (
    "UPDATE lifeline_sensor_state AS s SET state = v.state::jsonb, readings = v.readings, "
    "late = v.late, last_ts = v.last_ts, last_value = v.last_value, updated_at = v.updated_at, "
    "rev = s.rev + 1 "
    "FROM unnest(%b::text[], %b::bigint[], %b::bigint[], %b::timestamptz[], %b::float8[], "
    "%b::timestamptz[], %b::text[], %b::bigint[]) AS v(state, readings, late, last_ts, "
    "last_value, updated_at, sensor_id, rev) WHERE s.sensor_id = v.sensor_id AND s.rev = v.rev "
    "RETURNING s.sensor_id"
)
_PG_STATE_INSERT = (
    "INSERT INTO lifeline_sensor_state (state, readings, late, last_ts, last_value, updated_at, "
    "sensor_id, rev) SELECT state::jsonb, readings, late, last_ts, last_value, updated_at, "
    "sensor_id, 1 FROM unnest(%b::text[], %b::bigint[], %b::bigint[], %b::timestamptz[], "
    "%b::float8[], %b::timestamptz[], %b::text[]) AS v(state, readings, late, last_ts, "
    "last_value, updated_at, sensor_id) ON CONFLICT (sensor_id) DO NOTHING RETURNING sensor_id"
)
#: Temporary keys of incidents created in the current batch (before the flush gives ids).
_TEMP_ID = 10**15
#: A whole short QoS 1 PUBLISH packet (remaining length < 128, no MQTT 5 properties) carrying
#: the canonical single reading: remaining length, topic length, topic, ts, value. A match is
#: used only if the lengths it implies agree with the header's; else the packet is decoded
#: field by field.
_READING = FAST_READING.pattern[: -len(rb"\Z")]
_PACKET_V5 = re.compile(
    rb"[\x32\x33\x3a\x3b]([\x00-\x7f])\x00([\x00-\x7f])(.*?)..\x00" + _READING, re.DOTALL
)
_PACKET_V4 = re.compile(
    rb"[\x32\x33\x3a\x3b]([\x00-\x7f])\x00([\x00-\x7f])(.*?).." + _READING, re.DOTALL
)
#: A topic's destination in one batch: sensor id, its readings, physical min and max.
_Target = tuple[str, list[tuple[float, float]], float | None, float | None]
_UNSEEN: Any = object()


@dataclass(frozen=True)
class AppliedChange:
    """An alarm fact as written: which sensor, which alarm row, which incident."""

    sensor_id: str
    change: Change
    alarm_id: int
    incident_id: int | None


@dataclass
class BatchResult:
    """What one batch did (counts, the alarm facts, the rejections) and when it committed."""

    received: int = 0
    stored: int = 0
    in_order: int = 0
    late: int = 0
    dead_letters: int = 0
    rejected: list[tuple[int | None, Rejected]] = field(default_factory=list)
    changes: list[AppliedChange] = field(default_factory=list)
    committed_at: float = 0.0
    #: epoch seconds of each in-order reading's sample time (latency measurement)
    reading_ts: list[float] = field(default_factory=list)

    @property
    def raised(self) -> int:
        return sum(1 for c in self.changes if c.change.action == "raise")

    @property
    def cleared(self) -> int:
        return sum(1 for c in self.changes if c.change.action == "clear")


@dataclass
class _StateRow:
    """A sensor's stored state as this process last saw it, and the next one being staged."""

    sensor_id: str
    state: StreamState
    readings: int
    late: int
    #: as the driver stores it (text on SQLite, a datetime on PostgreSQL)
    last_ts: Any
    last_value: float | None
    #: revision read (None: no row yet)
    rev: int | None
    next_state: StreamState = field(default_factory=StreamState)
    next_readings: int = 0
    next_late: int = 0
    next_last_ts: Any = None
    next_last_value: float | None = None

    def stage(
        self, state: StreamState, readings: int, late: int, last_ts: Any, last_value: float | None
    ) -> None:
        self.next_state = state
        self.next_readings, self.next_late = readings, late
        self.next_last_ts, self.next_last_value = last_ts, last_value

    def commit(self) -> None:
        """The staged state was written: it is now the one stored, at the next revision."""
        self.state = self.next_state
        self.readings, self.late = self.next_readings, self.next_late
        self.last_ts, self.last_value = self.next_last_ts, self.next_last_value
        self.rev = 1 if self.rev is None else self.rev + 1


@dataclass
class _Dead:
    source: str
    topic: str | None
    rejected: Rejected
    index: int | None = None


def state_text(state: StreamState) -> str:
    """The JSON text of a sensor's state, as :meth:`StreamState.from_json` reads it, with the
    fields at their defaults left out (written for every sensor of every batch, so it is short
    and made without a general encoder)."""
    if not (
        state.since
        or state.open
        or state.stuck_count
        or state.suppressed
        or state.clear_since is not None
        or state.rate_violation_at is not None
        or state.anomaly_at is not None
        or state.stuck_value is not None
    ):
        a, b, c = state.last_ts, state.last_value, state.last_good_ts
        if a is not None and b is not None and c is not None and math.isfinite(b):
            return f'{{"last_ts":{a!r},"last_value":{b!r},"last_good_ts":{c!r}}}'
    parts = []
    for name in _STATE_FLOATS:
        x = getattr(state, name)
        if x is not None:
            if not math.isfinite(x):
                return json.dumps(state.to_json(), separators=(",", ":"))
            parts.append(f'"{name}":{float(x)!r}')
    if state.since:
        parts.append('"since":' + json.dumps(state.since, separators=(",", ":")))
    if state.open:
        parts.append('"open":' + json.dumps(state.open, separators=(",", ":")))
    if state.stuck_count:
        parts.append(f'"stuck_count":{int(state.stuck_count)}')
    if state.suppressed:
        parts.append(f'"suppressed":{int(state.suppressed)}')
    return "{" + ",".join(parts) + "}"


_STATE_FLOATS = (
    "last_ts",
    "last_value",
    "last_good_ts",
    "clear_since",
    "rate_violation_at",
    "anomaly_at",
    "stuck_value",
)


def _chunks(items: Sequence[str], n: int = _IN_CHUNK) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


class _Projector:
    """WGS84 → the city's metric CRS (``CITYOPS_CITY_CRS``, else the UTM zone of the first
    sensor seen): incident distances are metres, never degrees (DESIGN §3)."""

    def __init__(self, crs: str | None) -> None:
        self._crs = crs
        self._tf: Any = None

    def __call__(self, lon: float, lat: float) -> tuple[float, float]:
        if self._tf is None:
            import pyproj

            from cityops.core.crs import parse_crs, utm_crs_for

            target = parse_crs(self._crs).crs if self._crs else utm_crs_for(lon, lat)
            self._tf = pyproj.Transformer.from_crs("EPSG:4326", target, always_xy=True)
        x, y = self._tf.transform(lon, lat)
        return float(x), float(y)


class _Conflict(Exception):
    """Another process wrote some of this batch's sensor states first."""

    def __init__(self, sensor_ids: set[str]) -> None:
        super().__init__(f"{len(sensor_ids)} sensor state(s) changed meanwhile")
        self.sensor_ids = sensor_ids


class Pipeline:
    """The ingest pipeline over one database. Not thread-safe: one per consumer thread or
    process (the HTTP endpoint serialises its calls with a lock)."""

    #: attempts of a batch that keeps meeting states written by another process
    MAX_ATTEMPTS = 5

    def __init__(
        self,
        db: Database,
        settings: Settings | None = None,
        *,
        clock: Callable[[], float] = time.time,
        anomaly: bool | None = None,
    ) -> None:
        self.db = db
        self.settings = settings or get_settings()
        self.clock = clock
        self.cache = SensorCache()
        self.bank: Any = None
        use_anomaly = self.settings.lifeline_anomaly if anomaly is None else anomaly
        if use_anomaly:
            from cityops.lifeline.anomaly import AnomalyBank, detector_available

            if detector_available():
                self.bank = AnomalyBank(self.settings.lifeline_anomaly_learning)

        self._project = _Projector(self.settings.city_crs)
        self._states: dict[str, _StateRow] = {}
        self._postgres = db.is_postgres
        self._db_ts: Callable[[float], Any] = (
            timeseries.from_epoch if self._postgres else timeseries.sqlite_epoch
        )

    def warm_up(self) -> int:
        """Load the registry and every sensor's stored state now rather than on the first
        batch (a consumer process calls this before it subscribes). Returns the sensor count."""
        with self.db.read() as session:
            self.cache.refresh(session)
        ids = [info.id for info in self.cache.all()]
        self._ensure_states(ids)
        return len(ids)

    # ----------------------------------------------------------------------------- inputs

    def process_messages(
        self, messages: Sequence[tuple[str, bytes]], *, source: str = "mqtt"
    ) -> BatchResult:
        """One batch of (topic, payload) messages, committed in one transaction."""
        readings, dead = self.parse(messages, source=source)
        return self._process(readings, dead, source)

    def process_packets(
        self, data: bytes | bytearray, *, v5: bool, source: str = "mqtt"
    ) -> BatchResult:
        """One batch of raw MQTT PUBLISH packets (QoS 0/1, as the broker sent them, back to
        back; ``v5``: MQTT 5 packets, which carry properties), committed in one transaction.

        The MQTT consumer hands its batches on in this form: no per-message objects are made
        on the way. The canonical single reading ``{"ts": <ms>, "value": x}`` of a registered
        sensor goes straight to the rows; anything else takes :meth:`parse`'s general path, in
        arrival order."""
        with self.db.read() as session:
            self.cache.refresh(session)
        now = self.clock()
        limit = now + self.settings.lifeline_max_future_s
        rows: list[tuple[str, float, float, int]] = []
        per_sensor: dict[str, list[tuple[float, float]]] = defaultdict(list)
        dead: list[_Dead] = []
        targets: dict[bytes, _Target | None] = {}
        fast = FAST_READING.match
        whole = (_PACKET_V5 if v5 else _PACKET_V4).match
        isfinite = math.isfinite
        pos, end = 0, len(data)
        while pos < end:
            # The usual packet at once: a short QoS 1 PUBLISH of one canonical reading.
            m = whole(data, pos)
            if m is not None:
                rlen, tlen, topic, ts_text, v_text = m.groups()
                stop = pos + 2 + rlen[0]
                if m.end() == stop and len(topic) == tlen[0]:
                    target = targets.get(topic, _UNSEEN)
                    if target is _UNSEEN:
                        target = targets[topic] = self._target(topic, per_sensor)
                    if target is not None:
                        ts = int(ts_text) / 1000.0
                        v = float(v_text)
                        if EARLIEST <= ts <= limit and isfinite(v):
                            sid, series, lo, hi = target
                            series.append((ts, v))
                            bad = (lo is not None and v < lo) or (hi is not None and v > hi)
                            rows.append((sid, ts, v, 1 if bad else 0))
                            pos = stop
                            continue
            h = data[pos]
            # fixed header: type 3 (PUBLISH), remaining length (variable byte integer)
            t, rl, mult = pos + 1, 0, 1
            while True:
                b = data[t]
                rl += (b & 127) * mult
                mult <<= 7
                t += 1
                if b < 128:
                    break
            stop = t + rl
            q = t + 2 + ((data[t] << 8) | data[t + 1])
            topic = bytes(data[t + 2 : q])
            if h & 6:
                q += 2  # packet identifier
            if v5:  # properties: skipped (a topic alias is never granted: we announce none)
                plen, mult = 0, 1
                while q < stop:
                    b = data[q]
                    plen += (b & 127) * mult
                    mult <<= 7
                    q += 1
                    if b < 128:
                        break
                q += plen
            if q > stop:
                q = stop  # a malformed packet: its payload is empty (a dead letter)
            pos = stop
            target = targets.get(topic, _UNSEEN)
            if target is _UNSEEN:
                target = targets[topic] = self._target(topic, per_sensor)
            if target is not None:
                m = fast(data, q, stop)
                if m is not None:
                    ts = int(m.group(1)) / 1000.0
                    v = float(m.group(2))
                    if EARLIEST <= ts <= limit and isfinite(v):
                        sid, series, lo, hi = target
                        series.append((ts, v))
                        bad = (lo is not None and v < lo) or (hi is not None and v > hi)
                        rows.append((sid, ts, v, 1 if bad else 0))
                        continue
            text = topic.decode("utf-8", "replace")
            readings, rejected = self._parse_one(text, bytes(data[q:stop]), now, source)
            dead.extend(rejected)
            self._resolve_into(readings, dead, source, rows, per_sensor)
        return self._run(rows, per_sensor, dead, len(rows) + len(dead))

    def _target(
        self, topic: bytes, per_sensor: dict[str, list[tuple[float, float]]]
    ) -> _Target | None:
        """Where the single readings of a topic go in this batch (None: the general path)."""
        try:
            ref = parse_topic(topic.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return None
        info = self.cache.get(ref)
        if info is None or not info.active:
            return None
        rule = info.rule
        return (info.id, per_sensor[info.id], rule.physical_min, rule.physical_max)

    def parse(
        self, messages: Sequence[tuple[str, bytes]], *, source: str = "mqtt"
    ) -> tuple[list[Reading], list[_Dead]]:
        now = self.clock()
        readings: list[Reading] = []
        dead: list[_Dead] = []
        for topic, payload in messages:
            ok, bad = self._parse_one(topic, payload, now, source)
            readings.extend(ok)
            dead.extend(bad)
        return readings, dead

    def _parse_one(
        self, topic: str, payload: bytes, now: float, source: str
    ) -> tuple[list[Reading], list[_Dead]]:
        try:
            topic_id = parse_topic(topic)
        except ValueError as exc:
            text = payload[:4096].decode("utf-8", "replace")
            return [], [_Dead(source, topic, Rejected("bad_topic", str(exc), text))]
        ok, bad = parse_message(topic_id, payload, now, self.settings.lifeline_max_future_s)
        return ok, [_Dead(source, topic, r) for r in bad] if bad else []

    def process_readings(
        self,
        readings: Sequence[Reading],
        rejected: Sequence[tuple[int | None, Rejected]] = (),
        *,
        source: str = "http",
    ) -> BatchResult:
        """Readings already parsed (HTTP batch, in-process simulator)."""
        dead = [_Dead(source, None, r, i) for i, r in rejected]
        return self._process(list(readings), dead, source)

    # ------------------------------------------------------------------------------- core

    def _resolve(
        self, readings: list[Reading], dead: list[_Dead], source: str
    ) -> tuple[list[tuple[str, float, float, int]], dict[str, list[tuple[float, float]]]]:
        per_sensor: dict[str, list[tuple[float, float]]] = defaultdict(list)
        rows: list[tuple[str, float, float, int]] = []
        self._resolve_into(readings, dead, source, rows, per_sensor)
        return rows, per_sensor

    def _resolve_into(
        self,
        readings: Iterable[Reading],
        dead: list[_Dead],
        source: str,
        rows: list[tuple[str, float, float, int]],
        per_sensor: dict[str, list[tuple[float, float]]],
    ) -> None:
        for r in readings:
            info = self.cache.resolve(r)
            if info is None or not info.active:
                reason = "unknown_sensor" if info is None else "retired_sensor"
                where = f" (device {r.device})" if r.device else ""
                detail = (
                    f"no registered sensor {r.ref!r}{where}: register it first "
                    "(POST /api/v1/lifeline/sensors)"
                    if info is None
                    else f"sensor {r.ref!r} is retired: reactivate it to ingest"
                )
                payload = json.dumps({"sensor": r.ref, "ts": round(r.ts * 1000), "value": r.value})
                dead.append(_Dead(source, None, Rejected(reason, detail, payload, r.ref)))
                continue
            rule = info.rule
            impossible = (rule.physical_min is not None and r.value < rule.physical_min) or (
                rule.physical_max is not None and r.value > rule.physical_max
            )
            rows.append((info.id, r.ts, r.value, 1 if impossible else 0))
            per_sensor[info.id].append((r.ts, r.value))

    def _process(self, readings: list[Reading], dead: list[_Dead], source: str) -> BatchResult:
        with self.db.read() as session:
            self.cache.refresh(session)
        received = len(readings) + len(dead)
        rows, per_sensor = self._resolve(readings, dead, source)
        return self._run(rows, per_sensor, dead, received)

    def _run(
        self,
        rows: list[tuple[str, float, float, int]],
        per_sensor: dict[str, list[tuple[float, float]]],
        dead: list[_Dead],
        received: int,
    ) -> BatchResult:
        for attempt in range(self.MAX_ATTEMPTS):
            result = BatchResult(received=received)
            ids = sorted(per_sensor)
            self._ensure_states(ids)
            touched: list[_StateRow] = []
            try:
                changes = self._detect(ids, per_sensor, result, touched)
                with self.db.write() as session:
                    result.stored = timeseries.upsert_samples(session, rows)
                    self._save_states(session, touched)
                    if changes:
                        self._apply(session, changes, result)
                    self._dead_letters(session, dead, result)
            except _Conflict as exc:
                # Someone else moved these sensors on: forget our copies and start again from
                # what is stored. Nothing of this attempt was committed.
                self._forget(exc.sensor_ids)
                log.info("ingest batch met newer states (%s); attempt %d", exc, attempt + 2)
                continue
            except BaseException:
                self._forget(per_sensor)
                raise
            for row in touched:
                row.commit()
                self._states[row.sensor_id] = row
            result.committed_at = self.clock()
            return result
        raise RuntimeError(f"ingest batch kept conflicting after {self.MAX_ATTEMPTS} attempts")

    def _forget(self, sensor_ids: Iterable[str]) -> None:
        for sid in sensor_ids:
            self._states.pop(sid, None)
            if self.bank is not None:
                self.bank.forget(sid)

    def _ensure_states(self, ids: Sequence[str]) -> None:
        """Load the stored state of sensors not held in memory (outside any write lock)."""
        missing = [sid for sid in ids if sid not in self._states]
        if not missing:
            return
        with self.db.read() as session:
            conn = session.connection()
            cols = "sensor_id, state, readings, late, last_ts, last_value, rev"
            for chunk in _chunks(missing):
                if self._postgres:
                    found = conn.exec_driver_sql(
                        f"SELECT {cols} FROM lifeline_sensor_state WHERE sensor_id = ANY(%s)",
                        (list(chunk),),
                    )
                else:
                    marks = ",".join("?" * len(chunk))
                    found = conn.exec_driver_sql(
                        f"SELECT {cols} FROM lifeline_sensor_state WHERE sensor_id IN ({marks})",
                        tuple(chunk),
                    )
                for sid, state, readings, late, last_ts, last_value, rev in found:
                    data = json.loads(state) if isinstance(state, str | bytes) else state
                    self._states[sid] = _StateRow(
                        sid,
                        StreamState.from_json(data),
                        readings or 0,
                        late or 0,
                        last_ts,
                        last_value,
                        rev,
                    )
        for sid in missing:
            if sid not in self._states:
                self._states[sid] = _StateRow(sid, StreamState(), 0, 0, None, None, None)

    def _save_states(self, session: Session, rows: list[_StateRow]) -> None:
        """Write states back where nobody else wrote meanwhile; raise :class:`_Conflict`
        otherwise (the caller's transaction then rolls back)."""
        conn = session.connection()
        now = dt.datetime.now(dt.UTC)
        stamp: Any = now if self._postgres else timeseries.sqlite_ts(now)
        old: list[tuple[Any, ...]] = []
        new: list[tuple[Any, ...]] = []
        for r in rows:
            values = (
                state_text(r.next_state),
                r.next_readings,
                r.next_late,
                r.next_last_ts,
                r.next_last_value,
                stamp,
                r.sensor_id,
            )
            if r.rev is None:
                new.append(values)
            else:
                old.append((*values, r.rev))
        conflicts: set[str] = set()
        if self._postgres:
            if old:
                cols = tuple(list(c) for c in zip(*old, strict=True))
                updated = {sid for (sid,) in conn.exec_driver_sql(_PG_STATE_UPDATE, cols).all()}
                conflicts |= {r[6] for r in old} - updated
            if new:
                cols = tuple(list(c) for c in zip(*new, strict=True))
                inserted = {sid for (sid,) in conn.exec_driver_sql(_PG_STATE_INSERT, cols).all()}
                conflicts |= {r[6] for r in new} - inserted
        else:
            if old:
                cur = conn.exec_driver_sql(
                    "UPDATE lifeline_sensor_state SET state = ?, readings = ?, late = ?, "
                    "last_ts = ?, last_value = ?, updated_at = ?, rev = rev + 1 "
                    "WHERE sensor_id = ? AND rev = ?",
                    old,
                )
                if cur.rowcount != len(old):
                    # Which ones does not matter much: conflicts are rare, and every sensor of
                    # the batch is simply read again.
                    conflicts |= {r[6] for r in old}
            if new:
                cur = conn.exec_driver_sql(
                    "INSERT INTO lifeline_sensor_state (state, readings, late, last_ts, "
                    "last_value, updated_at, sensor_id, rev) VALUES (?, ?, ?, ?, ?, ?, ?, 1) "
                    "ON CONFLICT (sensor_id) DO NOTHING",
                    new,
                )
                if cur.rowcount != len(new):
                    conflicts |= {r[6] for r in new}
        if conflicts:
            raise _Conflict(conflicts)

    def _detect(
        self,
        ids: Sequence[str],
        per_sensor: dict[str, list[tuple[float, float]]],
        result: BatchResult,
        touched: list[_StateRow],
    ) -> dict[str, list[Change]]:
        """Feed each sensor's new readings, in time order, to its rules (on a copy of its
        state); readings not newer than the last one are stored only."""
        changes: dict[str, list[Change]] = {}
        to_db_ts = self._db_ts
        for sid in ids:
            info = self.cache.get(sid)
            assert info is not None
            row = self._states[sid]
            state = row.state.copy()
            series = per_sensor[sid]
            if len(series) > 1:
                series = sorted(series)
            last = state.last_ts
            fresh: list[tuple[float, float]]
            if (last is None or series[0][0] > last) and (
                len(series) == 1 or len({ts for ts, _ in series}) == len(series)
            ):
                fresh = series  # the usual case: all new, no two at one instant
            else:
                fresh = []
                for ts, v in series:
                    if last is not None and ts <= last:
                        continue
                    if fresh and ts == fresh[-1][0]:
                        fresh[-1] = (ts, v)  # two readings at one instant: the later one wins
                        continue
                    fresh.append((ts, v))
            late = len(series) - len(fresh)
            scores = self._scores(info, row, fresh)
            sensor_changes: list[Change] = []
            rule = info.rule
            interval = info.interval_s
            maintenance = info.maintenance
            if scores is None and advance_quiet(rule, state, fresh):
                fresh_run: list[tuple[float, float]] = []  # nothing to feed one by one
            else:
                fresh_run = fresh
            for i, (ts, v) in enumerate(fresh_run):
                found = evaluate(
                    rule,
                    state,
                    ts,
                    v,
                    interval_s=interval,
                    suppressed=maintenance and info.suppressed(ts),
                    anomaly_score=None if scores is None else float(scores[i]),
                )
                if found:
                    sensor_changes.extend(found)
            result.reading_ts.extend(ts for ts, _ in fresh)
            if sensor_changes:
                changes[sid] = sensor_changes
            result.in_order += len(fresh)
            result.late += late
            row.stage(
                state,
                row.readings + len(fresh),
                row.late + late,
                to_db_ts(fresh[-1][0]) if fresh else row.last_ts,
                fresh[-1][1] if fresh else row.last_value,
            )
            touched.append(row)
        return changes

    def _scores(
        self, info: SensorInfo, row: _StateRow, fresh: list[tuple[float, float]]
    ) -> np.ndarray[Any, Any] | None:
        if self.bank is None or info.rule.anomaly is None or not fresh:
            return None
        if not self.bank.knows(info.id):
            with self.db.read() as session:
                last = row.state.last_ts
                self.bank.warm(session, info.id, timeseries.from_epoch(last) if last else None)
        values = np.fromiter((v for _, v in fresh), dtype=np.float64, count=len(fresh))
        ok = np.ones(values.size, dtype=bool)
        rule = info.rule
        if rule.physical_min is not None:
            ok &= values >= rule.physical_min
        if rule.physical_max is not None:
            ok &= values <= rule.physical_max
        # Impossible readings are faults, not process behaviour: the detector never sees them.
        scores: np.ndarray[Any, Any] = np.full(values.size, np.nan)
        if ok.any():
            scores[ok] = self.bank.score(info.id, values[ok])
        return scores

    # ----------------------------------------------------------------------------- alarms

    def _apply(
        self, session: Session, changes: dict[str, list[Change]], result: BatchResult
    ) -> None:
        """Write alarm facts: raise → new row (+ incident), escalate/update → the open row,
        clear → ``cleared_at``; repeat triggers are folded into ``updates``."""
        with session.no_autoflush:
            self._apply_changes(session, changes, result)

    def _apply_changes(
        self, session: Session, changes: dict[str, list[Change]], result: BatchResult
    ) -> None:
        need_open = [sid for sid, cs in changes.items() if any(c.action != "raise" for c in cs)]
        open_rows: dict[tuple[str, str], Alarm] = {}
        for chunk in _chunks(need_open):
            for a in session.scalars(
                select(Alarm).where(Alarm.sensor_id.in_(chunk), Alarm.cleared_at.is_(None))
            ):
                open_rows[(a.sensor_id, a.kind)] = a
        merger = _IncidentMerger(session, self._project, self.cache)
        now_dt = dt.datetime.now(dt.UTC)
        # (sensor, change, alarm, writes an event): ids exist only after the one flush below.
        applied: list[tuple[str, Change, Alarm, bool]] = []
        for sid, cs in changes.items():
            info = self.cache.get(sid)
            assert info is not None
            for c in cs:
                key = (sid, c.kind)
                at = timeseries.from_epoch(c.ts)
                alarm = open_rows.get(key)
                if c.action == "raise":
                    if alarm is not None:
                        # The state and the table disagree (state lost, or the alarm was left
                        # open by an older process): fold into the open row, never a second one.
                        alarm.updates += 1
                        alarm.last_at, alarm.last_value = at, c.value
                        if RANK[c.level] > RANK[alarm.level]:
                            alarm.level = c.level
                        continue
                    alarm = Alarm(
                        sensor_id=sid,
                        kind=c.kind,
                        level=c.level,
                        message=c.message,
                        threshold=c.threshold,
                        raised_at=at,
                        raised_value=c.value,
                        last_at=at,
                        last_value=c.value,
                        updates=0,
                        created_at=now_dt,
                        updated_at=now_dt,
                    )
                    session.add(alarm)
                    open_rows[key] = alarm
                    if c.kind not in HEALTH_KINDS:
                        merger.place(alarm, info)
                    applied.append((sid, c, alarm, True))
                elif alarm is None:
                    # An update or clear for an alarm that is no longer open (cleared by hand
                    # or by an older process): nothing to change.
                    continue
                elif c.action == "escalate":
                    alarm.level = c.level
                    alarm.threshold = c.threshold
                    alarm.message = c.message
                    alarm.last_at, alarm.last_value = at, c.value
                    alarm.updates += 1
                    alarm.updated_at = now_dt
                    merger.escalate(alarm)
                    applied.append((sid, c, alarm, True))
                elif c.action == "update":
                    alarm.last_at, alarm.last_value = at, c.value
                    alarm.updates += 1
                    alarm.updated_at = now_dt
                else:  # clear
                    alarm.cleared_at = at
                    alarm.cleared_value = c.value
                    alarm.updated_at = now_dt
                    del open_rows[key]
                    applied.append((sid, c, alarm, True))
        # One flush for the whole batch. Within a table SQLAlchemy emits UPDATEs before INSERTs,
        # so an alarm cleared here leaves the unique index of open alarms before a new alarm of
        # the same sensor and kind, raised later in the batch, enters it.
        session.flush()
        events = []
        for sid, c, alarm, _ in applied:
            events.append(self._event(alarm.id, c, timeseries.from_epoch(c.ts), now_dt))
            result.changes.append(AppliedChange(sid, c, alarm.id, alarm.incident_id))
        if events:
            session.execute(insert(AlarmEvent), events)

    @staticmethod
    def _event(alarm_id: int, c: Change, at: dt.datetime, now: dt.datetime) -> dict[str, Any]:
        return {
            "alarm_id": alarm_id,
            "action": c.action,
            "level": c.level,
            "at": at,
            "value": c.value,
            "actor": "system",
            "recorded_at": now,
        }

    # ------------------------------------------------------------------------ dead letters

    def _dead_letters(self, session: Session, dead: list[_Dead], result: BatchResult) -> None:
        if not dead:
            return
        now_dt = dt.datetime.now(dt.UTC)
        session.execute(
            insert(DeadLetter),
            [
                {
                    "received_at": now_dt,
                    "source": d.source,
                    "topic": d.topic,
                    "sensor_id": (d.rejected.sensor_ref or "")[:64] or None,
                    "reason": d.rejected.reason,
                    "detail": d.rejected.detail,
                    "payload": d.rejected.payload,
                }
                for d in dead
            ],
        )
        result.dead_letters = len(dead)
        result.rejected = [(d.index, d.rejected) for d in dead]
        if dead:
            log.info("lifeline ingest: %d dead letter(s), first: %s", len(dead), dead[0].rejected)

    # ------------------------------------------------------------------------------- tick

    def tick(self, now: float | None = None) -> list[AppliedChange]:
        """The clock's own rule: raise ``offline`` for sensors silent for k intervals.

        Run every few seconds by the consumer (and the worker); one transaction.
        """
        now = self.clock() if now is None else now
        with self.db.read() as session:
            self.cache.refresh(session)
            stored = {
                sid: (st, ts)
                for sid, st, ts in session.execute(
                    select(SensorState.sensor_id, SensorState.state, SensorState.last_ts)
                )
            }
        due: list[str] = []
        for known in self.cache.all():
            if not known.active:
                continue
            st, ts = stored.get(known.id, (None, None))
            if st and "offline" in (st.get("open") or {}):
                continue
            ref = ts.timestamp() if ts is not None else known.created_at
            if now - ref > known.rule.offline_intervals * known.interval_s:
                due.append(known.id)
        if not due:
            return []
        for _attempt in range(self.MAX_ATTEMPTS):
            self._ensure_states(due)
            out = BatchResult()
            changes: dict[str, list[Change]] = {}
            touched: list[_StateRow] = []
            for sid in due:
                info = self.cache.get(sid)
                assert info is not None
                row = self._states[sid]
                state = row.state.copy()
                c = check_offline(
                    info.rule,
                    state,
                    now,
                    interval_s=info.interval_s,
                    reference_ts=info.created_at,
                    suppressed=info.suppressed(now),
                )
                if c is None:
                    continue
                row.stage(state, row.readings, row.late, row.last_ts, row.last_value)
                touched.append(row)
                changes[sid] = [c]
            if not touched:
                return []
            try:
                with self.db.write() as session:
                    self._save_states(session, touched)
                    self._apply(session, changes, out)
            except _Conflict as exc:
                self._forget(exc.sensor_ids)
                continue
            except BaseException:
                self._forget(due)
                raise
            for row in touched:
                row.commit()
            return out.changes
        return []


class _IncidentMerger:
    """Places newly raised alarms into incidents within one batch's transaction."""

    def __init__(
        self,
        session: Session,
        project: Callable[[float, float], tuple[float, float]],
        cache: SensorCache,
    ) -> None:
        self.session = session
        self.project = project
        self.cache = cache
        self.rules = incident_rules()
        self._views: dict[str, list[IncidentView]] = {}
        self._incidents: dict[int, Incident] = {}
        self._xy_cache: dict[str, tuple[float, float]] = {}
        self._new = 0

    def _xy(self, info: SensorInfo) -> tuple[float, float]:
        found = self._xy_cache.get(info.id)
        if found is None:
            found = self._xy_cache[info.id] = self.project(info.lon, info.lat)
        return found

    def _site(
        self, info: SensorInfo, raised_at: dt.datetime, cleared_at: dt.datetime | None
    ) -> AlarmSite:
        x, y = self._xy(info)
        return AlarmSite(
            network=info.network,
            x=x,
            y=y,
            active_from=raised_at.timestamp(),
            active_to=cleared_at.timestamp() if cleared_at else None,
        )

    def _load(
        self, network: str, domain: str, network_id: str | None, since: dt.datetime
    ) -> list[IncidentView]:
        """Open incidents of one network with their alarms that can still match (open, or
        cleared within the merge window) — plain rows, not ORM objects: a long incident may
        hold thousands of alarms, and the batch must not drag them through its flush."""
        if network in self._views:
            return self._views[network]
        it = Incident.__table__
        at = Alarm.__table__
        q = select(it.c.id, it.c.opened_at).where(it.c.state != "closed")
        q = (
            q.where(it.c.network_id == network_id)
            if network_id
            else q.where(it.c.network_id.is_(None), it.c.domain == domain)
        )
        incidents = self.session.execute(q).all()
        views: list[IncidentView] = []
        if incidents:
            ids = [r.id for r in incidents]
            sites: dict[int, list[AlarmSite]] = defaultdict(list)
            horizon = since - dt.timedelta(seconds=self.rules.window_s)
            rows = self.session.execute(
                select(at.c.incident_id, at.c.sensor_id, at.c.raised_at, at.c.cleared_at).where(
                    at.c.incident_id.in_(ids),
                    (at.c.cleared_at.is_(None)) | (at.c.cleared_at >= horizon),
                )
            )
            for inc_id, sid, raised_at, cleared_at in rows:
                info = self.cache.get(sid)
                if info is not None:
                    sites[inc_id].append(self._site(info, raised_at, cleared_at))
            for r in incidents:
                views.append(IncidentView(r.id, r.opened_at.timestamp(), tuple(sites[r.id])))
        self._views[network] = views
        return views

    def _incident(self, key: int) -> Incident:
        inc = self._incidents.get(key)
        if inc is None:
            inc = self.session.get(Incident, key)
            assert inc is not None
            self._incidents[key] = inc
        return inc

    def place(self, alarm: Alarm, info: SensorInfo) -> None:
        if alarm.kind not in self.rules.kinds and alarm.kind not in self.rules.join_kinds:
            return
        views = self._load(info.network, info.domain, info.network_id, alarm.raised_at)
        site = self._site(info, alarm.raised_at, alarm.cleared_at)
        chosen = choose_incident(
            site, views, distance_m=self.rules.distance_m, window_s=self.rules.window_s
        )
        if chosen is None:
            if alarm.kind not in self.rules.kinds:
                return  # join-only kinds (the learned detector) never open an incident alone
            inc = Incident(
                state="raised",
                level=alarm.level,
                domain=info.domain,
                network_id=info.network_id,
                owner_unit=info.owner_unit,
                lon=info.lon,
                lat=info.lat,
                opened_at=alarm.raised_at,
                last_alarm_at=alarm.raised_at,
                alarm_count=1,
                note="",
                version=1,
                created_at=alarm.created_at,
                updated_at=alarm.created_at,
            )
            self.session.add(inc)
            # New incidents get their id at the batch's one flush; until then a temporary key
            # that sorts after every real id (the oldest incident wins a tie).
            self._new += 1
            key = _TEMP_ID + self._new
            self._incidents[key] = inc
            views.append(IncidentView(key, inc.opened_at.timestamp(), (site,)))
            alarm.incident = inc
            return
        inc = self._incident(chosen)
        alarm.incident = inc
        inc.alarm_count += 1
        inc.level = max_level([inc.level, alarm.level]) or inc.level
        inc.last_alarm_at = max(inc.last_alarm_at, alarm.raised_at)
        inc.updated_at = alarm.created_at
        inc.version += 1
        for i, v in enumerate(views):
            if v.id == chosen:
                views[i] = IncidentView(v.id, v.opened_at, (*v.sites, site))

    def escalate(self, alarm: Alarm) -> None:
        inc = alarm.incident
        if inc is not None and inc.state != "closed" and RANK[alarm.level] > RANK[inc.level]:
            inc.level = alarm.level
            inc.version += 1
