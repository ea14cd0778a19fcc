"""The sample time series: idempotent bulk upsert, month partitions, downsampled reads.

DESIGN §3 "Time series": on PostgreSQL ``lifeline_samples`` is partitioned by month (migration
0003); :func:`ensure_partitions` calls the SQL function that creates months ahead (the one
run-time DDL the platform allows), and a DEFAULT partition catches whatever arrives for a month
that does not exist yet. On SQLite it is a ``WITHOUT ROWID`` table clustered on (sensor, time),
so one sensor's range is one contiguous B-tree scan.

Both backends upsert on (sensor_id, ts): a redelivered QoS 1 message or a re-sent HTTP batch
writes the same row again and never adds one (DESIGN §8 "MQTT").
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from cityops.core.db import Database

#: Upper bound on points a chart read returns.
MAX_POINTS = 10_000
#: "Nice" bucket widths (seconds) a chart read picks from when none is given.
_NICE_BUCKETS = (
    1,
    5,
    10,
    15,
    30,
    60,
    120,
    300,
    600,
    900,
    1800,
    3600,
    7200,
    10800,
    21600,
    43200,
    86400,
    172800,
    604800,
)

_SQLITE_UPSERT = (
    "INSERT INTO lifeline_samples (sensor_id, ts, value, flag) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (sensor_id, ts) DO UPDATE SET value = excluded.value, flag = excluded.flag"
)
#: Arrays go in binary (``%b``): psycopg's text format quotes every element with a regular
#: expression, five times the CPU of the rest of a batch's statement.
_PG_UPSERT = (
    "INSERT INTO lifeline_samples (sensor_id, ts, value, flag) "
    "SELECT * FROM unnest(%b::varchar[], %b::timestamptz[], %b::float8[], %b::int2[]) "
    "ON CONFLICT (sensor_id, ts) DO UPDATE SET value = EXCLUDED.value, flag = EXCLUDED.flag"
)


def sqlite_ts(t: dt.datetime) -> str:
    """The text form SQLAlchemy's SQLite DateTime stores (naive UTC, microseconds)."""
    return t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def from_epoch(t: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, dt.UTC)


_EPOCH = dt.datetime(1970, 1, 1)
_SECONDS: dict[int, str] = {}


def sqlite_epoch(t: float) -> str:
    """:func:`sqlite_ts` of epoch seconds (hot path: the seconds' text is cached, since a batch's
    readings share a few seconds)."""
    # The same rounding as datetime.fromtimestamp (half-even on the fraction), so that a reading
    # always maps to the same key whichever path formats it.
    frac, whole = math.modf(t)
    micro = round(frac * 1e6)
    sec = int(whole)
    if micro >= 1_000_000:
        sec, micro = sec + 1, micro - 1_000_000
    elif micro < 0:
        sec, micro = sec - 1, micro + 1_000_000
    head = _SECONDS.get(sec)
    if head is None:
        if len(_SECONDS) > 100_000:
            _SECONDS.clear()
        head = _SECONDS[sec] = (_EPOCH + dt.timedelta(seconds=sec)).isoformat(" ")
    return f"{head}.{micro:06d}"


def upsert_samples(session: Session, rows: Iterable[tuple[str, float, float, int]]) -> int:
    """Write ``(sensor_id, epoch_seconds, value, flag)`` rows; the last of two rows with the
    same key wins. Returns the number of distinct keys written."""
    conn = session.connection()
    if conn.dialect.name == "sqlite":
        # SQLite applies the rows in order, so the last of two with one key wins as it is; the
        # instants a batch's readings share (a gateway stamps its channels alike, a device
        # reports on its tick) are formatted once each.
        rows = rows if isinstance(rows, list) else list(rows)
        if not rows:
            return 0
        text: dict[float, str] = {}
        params = []
        for sensor_id, ts, value, flag in rows:
            stamp = text.get(ts)
            if stamp is None:
                stamp = text[ts] = sqlite_epoch(ts)
            params.append((sensor_id, stamp, value, flag))
        conn.exec_driver_sql(_SQLITE_UPSERT, params)
        return len({(p[0], p[1]) for p in params})
    unique: dict[tuple[str, float], tuple[float, int]] = {}
    for sensor_id, ts, value, flag in rows:
        unique[(sensor_id, ts)] = (value, flag)
    if not unique:
        return 0
    if conn.dialect.name == "postgresql":
        ids, stamps, values, flags = [], [], [], []
        for (sensor_id, ts), (value, flag) in unique.items():
            ids.append(sensor_id)
            stamps.append(from_epoch(ts))
            values.append(value)
            flags.append(flag)
        conn.exec_driver_sql(_PG_UPSERT, (ids, stamps, values, flags))
    else:
        conn.exec_driver_sql(
            _SQLITE_UPSERT,
            [
                (sensor_id, sqlite_epoch(ts), value, flag)
                for (sensor_id, ts), (value, flag) in unique.items()
            ],
        )
    return len(unique)


def ensure_partitions(db: Database, now: dt.datetime | None = None, months_ahead: int = 3) -> int:
    """Create the month partitions from ``now``'s month to ``months_ahead`` months later
    (PostgreSQL; a no-op on SQLite). Returns how many were created. The ingest consumer calls
    it on start and daily; rows already in the DEFAULT partition move into their new month."""
    if not db.is_postgres:
        return 0
    now = now or dt.datetime.now(dt.UTC)
    with db.write() as session:
        created = session.execute(
            text("SELECT lifeline_ensure_partitions(:t, :n)"), {"t": now, "n": months_ahead}
        ).scalar_one()
    return int(created)


def partitions(session: Session) -> list[str]:
    """Names of the month partitions that exist (PostgreSQL), oldest first."""
    if session.connection().dialect.name != "postgresql":
        return []
    rows = session.execute(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'lifeline_samples' "
            "ORDER BY c.relname"
        )
    ).scalars()
    return list(rows)


# ------------------------------------------------------------------------------ reads


@dataclass(frozen=True)
class Bucket:
    """One chart point: a time bucket's start and its mean, min, max and count."""

    t: dt.datetime
    mean: float
    min: float
    max: float
    count: int


def pick_bucket(start: dt.datetime, end: dt.datetime, max_points: int) -> int:
    """The smallest "nice" bucket (seconds) that keeps ``[start, end)`` under ``max_points``."""
    span = max((end - start).total_seconds(), 1.0)
    need = span / max(max_points, 1)
    for b in _NICE_BUCKETS:
        if b >= need:
            return b
    return math.ceil(need)


def series(
    session: Session,
    sensor_id: str,
    start: dt.datetime,
    end: dt.datetime,
    bucket_s: int,
) -> list[Bucket]:
    """Downsampled readings of one sensor in ``[start, end)``: one row per ``bucket_s`` seconds
    that has data, aligned on the Unix epoch. Physically impossible readings (flag 1) are left
    out: a chart of a fault is a chart of the fault, not of the pipe."""
    dialect = session.connection().dialect.name
    if dialect == "postgresql":
        sql = (
            "SELECT floor(extract(epoch FROM ts) / :b)::bigint AS k, avg(value), min(value), "
            "max(value), count(*) FROM lifeline_samples WHERE sensor_id = :s AND ts >= :a "
            "AND ts < :z AND flag = 0 GROUP BY k ORDER BY k"
        )
        params: dict[str, Any] = {"b": bucket_s, "s": sensor_id, "a": start, "z": end}
    else:
        sql = (
            "SELECT CAST(strftime('%s', ts) AS INTEGER) / :b AS k, avg(value), min(value), "
            "max(value), count(*) FROM lifeline_samples WHERE sensor_id = :s AND ts >= :a "
            "AND ts < :z AND flag = 0 GROUP BY k ORDER BY k"
        )
        params = {"b": bucket_s, "s": sensor_id, "a": sqlite_ts(start), "z": sqlite_ts(end)}
    rows = session.execute(text(sql), params).all()
    return [
        Bucket(
            t=from_epoch(float(k) * bucket_s),
            mean=float(mean),
            min=float(lo),
            max=float(hi),
            count=int(n),
        )
        for k, mean, lo, hi, n in rows
    ]


def raw(
    session: Session, sensor_id: str, start: dt.datetime, end: dt.datetime, limit: int
) -> Sequence[tuple[dt.datetime, float, int]]:
    """Readings of one sensor in ``[start, end)`` as stored (time, value, flag), oldest first."""
    from sqlalchemy import select

    from cityops.lifeline.models import Sample

    rows = session.execute(
        select(Sample.ts, Sample.value, Sample.flag)
        .where(Sample.sensor_id == sensor_id, Sample.ts >= start, Sample.ts < end)
        .order_by(Sample.ts)
        .limit(limit)
    ).all()
    return [(r[0], float(r[1]), int(r[2])) for r in rows]
