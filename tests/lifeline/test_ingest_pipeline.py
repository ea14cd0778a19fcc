"""The ingest pipeline on both backends: idempotency, late data, dead letters, alarms, incidents,
maintenance, concurrent writers, partitions and downsampled reads."""

from __future__ import annotations

import datetime as dt
import json
import math
import time

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError

from cityops.lifeline import registry, timeseries
from cityops.lifeline.ingest.pipeline import Pipeline
from cityops.lifeline.models import (
    Alarm,
    AlarmEvent,
    DeadLetter,
    Incident,
    Sample,
    SensorState,
)
from cityops.lifeline.schemas import SensorIn
from cityops.settings import Settings

NOW = float(int(time.time()))
T0 = NOW - 6 * 3600  # readings start six hours ago
SETTINGS = Settings(lifeline_anomaly=False, lifeline_max_future_s=300)

# ~1 m in latitude is 1/111_320 degree; longitude at 31.8°N: 1/94_600 degree.
DLAT = 1 / 111_320


def add_sensor(db, sid: str, *, lat_m: float = 0.0, network: str = "GAS-1", **kw) -> None:
    """A methane sensor (10 / 25 / 50 %LEL, hysteresis 2) without the rate rule, so that the
    tests below see the level rule alone (unless they ask for the profile's own rules)."""
    data = {
        "thresholds": {"rate": None},
        "id": sid,
        "domain": "gas",
        "kind": "gas_concentration",
        "network_id": network,
        "interval_s": 60,
        "lon": 117.25,
        "lat": 31.80 + lat_m * DLAT,
        **kw,
    }
    with db.write() as s:
        registry.register(s, SensorIn(**data), "test")


def m(sid: str, ts: float, value: object) -> tuple[str, bytes]:
    return (
        f"cityops/test/lifeline/{sid}",
        json.dumps({"ts": int(ts * 1000), "value": value}).encode(),
    )


def pipe(db) -> Pipeline:
    return Pipeline(db, SETTINGS, clock=lambda: NOW)


def count(db, model, *where) -> int:
    with db.read() as s:
        return int(s.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def test_duplicates_are_idempotent(db) -> None:
    add_sensor(db, "G1")
    p = pipe(db)
    stream = [m("G1", T0 + 60 * k, 30.0 if k >= 3 else 1.0) for k in range(6)]
    first = p.process_messages(stream + stream[:2])  # duplicates inside one batch
    assert first.stored == 6 and first.in_order == 6 and first.late == 2
    again = p.process_messages(stream)  # a redelivered batch
    assert again.in_order == 0 and again.late == 6 and again.changes == []
    # a fresh pipeline (another process) sees the same stored state
    assert pipe(db).process_messages(stream).in_order == 0
    assert count(db, Sample) == 6
    assert count(db, Alarm) == 1
    with db.read() as s:
        st = s.get(SensorState, "G1")
        assert st.readings == 6 and st.late == 2 + 6 + 6 and st.last_value == 30.0


def test_late_and_out_of_order_readings(db) -> None:
    add_sensor(db, "G1")
    p = pipe(db)
    # one batch, shuffled: evaluated in time order → raise at k=2, clear at k=4
    values = {0: 1.0, 1: 5.0, 2: 12.0, 3: 11.0, 4: 3.0}
    batch = [m("G1", T0 + 60 * k, values[k]) for k in (3, 0, 4, 2, 1)]
    r = p.process_messages(batch)
    assert [(c.change.action, c.change.ts) for c in r.changes] == [
        ("raise", T0 + 120),
        ("clear", T0 + 240),
    ]
    # a reading older than the last one: stored (upserted), not evaluated
    late = p.process_messages([m("G1", T0 + 90, 40.0)])
    assert (late.stored, late.in_order, late.late, late.changes) == (1, 0, 1, [])
    assert count(db, Sample) == 6
    with db.read() as s:
        assert (
            s.scalar(select(Sample.value).where(Sample.ts == timeseries.from_epoch(T0 + 90)))
            == 40.0
        )
    assert count(db, Alarm) == 1


def test_bad_inputs_go_to_dead_letters_and_the_stream_goes_on(db) -> None:
    add_sensor(db, "G1")
    p = pipe(db)
    good = [m("G1", T0 + 60 * k, 1.0) for k in range(3)]
    bad = [
        ("cityops/test/lifeline/G1", b'{"ts": 1, "value":'),  # malformed JSON
        m("NOPE", T0, 1.0),  # unknown sensor
        ("cityops/test/lifeline/G1", b'{"ts": %d, "value": NaN}' % int(T0 * 1000)),
        ("cityops/test/lifeline/G1", b'{"ts": %d, "value": Infinity}' % int(T0 * 1000)),
        m("G1", NOW + 86400, 1.0),  # far in the future
        m("G1", T0, "12"),  # wrong type
        ("cityops/test/other/G1", b'{"ts": 1, "value": 1}'),  # not our topic scheme
    ]
    r = p.process_messages(good[:1] + bad + good[1:])
    assert r.stored == 3 and r.dead_letters == len(bad)
    with db.read() as s:
        rows = s.execute(select(DeadLetter.reason, DeadLetter.sensor_id, DeadLetter.detail)).all()
    assert sorted(x.reason for x in rows) == sorted(
        [
            "malformed_json",
            "unknown_sensor",
            "non_finite",
            "non_finite",
            "future_timestamp",
            "bad_type",
            "bad_topic",
        ]
    )
    assert all(x.detail for x in rows)
    assert {x.sensor_id for x in rows if x.reason == "unknown_sensor"} == {"NOPE"}
    # the next batch is ingested normally
    assert p.process_messages([m("G1", T0 + 600, 2.0)]).stored == 1


def test_retired_sensor_is_refused(db) -> None:
    add_sensor(db, "G1", active=False)
    r = pipe(db).process_messages([m("G1", T0, 1.0)])
    assert r.stored == 0 and r.rejected[0][1].reason == "retired_sensor"


def test_alarm_is_updated_not_repeated(db) -> None:
    add_sensor(db, "G1")
    p = pipe(db)
    for k in range(10):  # ten readings above yellow, one per batch
        p.process_messages([m("G1", T0 + 60 * k, 12.0 + k * 0.1)])
    with db.read() as s:
        alarms = s.scalars(select(Alarm)).all()
        assert len(alarms) == 1
        a = alarms[0]
        assert (a.kind, a.level, a.updates, a.cleared_at) == ("threshold", "yellow", 9, None)
        assert a.raised_value == 12.0 and a.last_value == pytest.approx(12.9)
        assert a.status == "ACTIVE_UNACK"
    # back to normal and up again: a second alarm, the first one cleared
    p.process_messages([m("G1", T0 + 600, 1.0), m("G1", T0 + 660, 15.0)])
    with db.read() as s:
        alarms = s.scalars(select(Alarm).order_by(Alarm.id)).all()
        assert [a.cleared_at is None for a in alarms] == [False, True]
        assert alarms[0].status == "CLEARED_UNACK"


def test_one_open_alarm_per_sensor_and_kind_is_enforced_by_the_database(db) -> None:
    add_sensor(db, "G1")
    pipe(db).process_messages([m("G1", T0, 30.0)])
    with pytest.raises(IntegrityError), db.write() as s:
        a = s.scalars(select(Alarm)).one()
        s.add(
            Alarm(
                sensor_id="G1",
                kind=a.kind,
                level="red",
                message="",
                raised_at=a.raised_at,
                last_at=a.raised_at,
                updates=0,
            )
        )
    # a cleared one may coexist with an open one
    with db.write() as s:
        a = s.scalars(select(Alarm)).one()
        s.add(
            Alarm(
                sensor_id="G1",
                kind=a.kind,
                level="red",
                message="",
                raised_at=a.raised_at,
                last_at=a.raised_at,
                updates=0,
                cleared_at=a.raised_at,
            )
        )


def test_maintenance_suppresses_alarms(db) -> None:
    add_sensor(db, "G1")
    with db.write() as s:
        registry.set_maintenance(s, "G1", True, None, "replacing the detector", "test")
    p = pipe(db)
    r = p.process_messages([m("G1", T0 + 60 * k, 40.0) for k in range(5)])
    assert r.changes == [] and count(db, Alarm) == 0
    with db.read() as s:
        assert s.get(SensorState, "G1").state["suppressed"] == 5
    with db.write() as s:
        registry.set_maintenance(s, "G1", False, None, "", "test")
    r = p.process_messages([m("G1", T0 + 600, 40.0)])
    assert [(c.change.action, c.change.level) for c in r.changes] == [("raise", "orange")]
    # maintenance with an end time: suppressed before it, raised after it
    add_sensor(db, "G2")
    until = dt.datetime.fromtimestamp(T0 + 300, dt.UTC)
    with db.write() as s:
        registry.set_maintenance(s, "G2", True, until, "works until T0+300", "test")
    r = p.process_messages([m("G2", T0 + 240, 40.0), m("G2", T0 + 360, 40.0)])
    assert [(c.change.action, c.change.ts) for c in r.changes] == [("raise", T0 + 360)]


def test_incidents_merge_by_network_distance_and_time(db) -> None:
    add_sensor(db, "A", lat_m=0)
    add_sensor(db, "B", lat_m=80)  # 80 m from A: same incident
    add_sensor(db, "C", lat_m=180)  # 100 m from B, 180 m from A: single linkage → same
    add_sensor(db, "D", lat_m=700)  # far: its own incident
    add_sensor(db, "E", lat_m=10, network="GAS-2")  # near A but another network
    p = pipe(db)
    r = p.process_messages(
        [m(s, T0 + 60, 30.0) for s in "ABCDE"] + [m(s, T0, 1.0) for s in "ABCDE"]
    )
    inc = {c.sensor_id: c.incident_id for c in r.changes if c.change.kind == "threshold"}
    assert inc["A"] == inc["B"] == inc["C"]
    assert len({inc["A"], inc["D"], inc["E"]}) == 3
    with db.read() as s:
        big = s.get(Incident, inc["A"])
        assert (big.alarm_count, big.level, big.state, big.network_id) == (
            3,
            "orange",
            "raised",
            "GAS-1",
        )
    # escalation of a member raises the incident's level
    p.process_messages([m("B", T0 + 120, 60.0)])
    with db.read() as s:
        assert s.get(Incident, inc["A"]).level == "red"
    # A clears; an alarm next to A more than 30 min later opens a new incident
    p.process_messages([m(s, T0 + 180, 1.0) for s in "ABC"])
    add_sensor(db, "F", lat_m=20)
    r = p.process_messages([m("F", T0 + 180 + 1801, 30.0)])
    assert r.changes[0].incident_id not in (None, inc["A"])
    # within the window it would have joined
    add_sensor(db, "H", lat_m=-20)
    r = p.process_messages([m("H", T0 + 180 + 1790, 30.0)])
    assert r.changes[0].incident_id == inc["A"]


def test_health_alarms_do_not_make_incidents(db) -> None:
    add_sensor(db, "G1")
    r = pipe(db).process_messages([m("G1", T0, 150.0)])  # impossible: > 100 %LEL
    assert [(c.change.kind, c.incident_id) for c in r.changes] == [("impossible", None)]
    with db.read() as s:
        assert s.scalar(select(Sample.flag)) == 1
    assert count(db, Incident) == 0


def test_offline_tick(db) -> None:
    add_sensor(db, "G1")
    p = pipe(db)
    p.process_messages([m("G1", NOW - 600, 1.0)])
    changes = p.tick(NOW)  # 600 s silent > 3 × 60 s
    assert [(c.sensor_id, c.change.kind, c.change.action) for c in changes] == [
        ("G1", "offline", "raise")
    ]
    assert p.tick(NOW + 60) == []  # already open: not repeated
    r = p.process_messages([m("G1", NOW - 10, 1.0)])
    assert [(c.change.kind, c.change.action) for c in r.changes] == [("offline", "clear")]


def test_two_writers_never_lose_or_double_state(db) -> None:
    """Two processes (pipelines with their own in-memory states) on one sensor: every reading
    is evaluated exactly once, and the alarm is raised once."""
    add_sensor(db, "G1")
    p1, p2 = pipe(db), pipe(db)
    values = [1, 2, 12, 13, 14, 2, 1, 12, 1, 1]
    for k, v in enumerate(values):
        (p1 if k % 2 == 0 else p2).process_messages([m("G1", T0 + 60 * k, float(v))])
    with db.read() as s:
        st = s.get(SensorState, "G1")
        assert st.readings == len(values) and st.rev == len(values)
        alarms = s.scalars(select(Alarm).order_by(Alarm.id)).all()
    # raised at k=2, cleared at k=5 (2 < 8), raised at k=7, cleared at k=8
    assert [
        (a.raised_at.timestamp(), a.cleared_at.timestamp() if a.cleared_at else None)
        for a in alarms
    ] == [(T0 + 120, T0 + 300), (T0 + 420, T0 + 480)]


def test_http_and_simulator_paths_share_the_rules(db) -> None:
    from cityops.lifeline.ingest.payload import Reading

    add_sensor(db, "G1")
    r = pipe(db).process_readings(
        [Reading("G1", T0, 1.0), Reading("G1", T0 + 60, 55.0)], source="sim"
    )
    assert [(c.change.action, c.change.level) for c in r.changes] == [("raise", "red")]


def test_series_downsampling(db) -> None:
    add_sensor(db, "G1")
    p = pipe(db)
    base = math.floor(T0 / 600) * 600  # aligned on 10 minutes
    p.process_messages([m("G1", base + 60 * k, float(k % 10)) for k in range(60)])
    p.process_messages([m("G1", base + 60 * 60 + 30, 500.0)])  # impossible: left out
    start = timeseries.from_epoch(base)
    with db.read() as s:
        pts = timeseries.series(s, "G1", start, start + dt.timedelta(hours=2), 600)
        raw = timeseries.raw(s, "G1", start, start + dt.timedelta(hours=2), 1000)
    assert len(pts) == 6
    assert [(p.mean, p.min, p.max, p.count) for p in pts] == [(4.5, 0.0, 9.0, 10)] * 6
    assert pts[1].t == start + dt.timedelta(minutes=10)
    assert len(raw) == 61 and raw[-1][2] == 1
    assert timeseries.pick_bucket(start, start + dt.timedelta(days=1), 1000) == 120


@pytest.mark.pg
def test_month_partitions_and_default(db) -> None:
    if not db.is_postgres:
        pytest.skip("partitions are PostgreSQL-only; SQLite keeps one clustered table")
    add_sensor(db, "G1")
    p = pipe(db)
    p.process_messages([m("G1", T0, 1.0)])
    old = dt.datetime(2020, 3, 15, tzinfo=dt.UTC).timestamp()
    with db.write() as s:
        timeseries.upsert_samples(s, [("G1", old, 2.0, 0)])

    def where(ts: float) -> str:
        with db.read() as s:
            return s.execute(
                text("SELECT tableoid::regclass::text FROM lifeline_samples WHERE ts = :t"),
                {"t": timeseries.from_epoch(ts)},
            ).scalar_one()

    month = dt.datetime.fromtimestamp(T0, dt.UTC).strftime("%Y%m")
    assert where(T0) == f"lifeline_samples_{month}"
    assert where(old) == "lifeline_samples_default"
    # the worker creates March 2020: the straggler moves from DEFAULT into it
    assert timeseries.ensure_partitions(db, dt.datetime(2020, 3, 1, tzinfo=dt.UTC), 0) == 1
    assert where(old) == "lifeline_samples_202003"
    assert timeseries.ensure_partitions(db, dt.datetime(2020, 3, 1, tzinfo=dt.UTC), 0) == 0
    with db.read() as s:
        names = timeseries.partitions(s)
    assert "lifeline_samples_202003" in names and f"lifeline_samples_{month}" in names
    assert count(db, Sample) == 2


# ------------------------------------------------------------- raw MQTT packets (the consumer)


def publish(
    topic: str,
    payload: bytes,
    *,
    qos: int = 1,
    mid: int = 7,
    v5: bool = True,
    props: bytes = b"",
    dup: bool = False,
) -> bytes:
    """One MQTT PUBLISH packet as a broker sends it (``props``: MQTT 5 properties)."""
    t = topic.encode()
    body = len(t).to_bytes(2, "big") + t
    if qos:
        body += mid.to_bytes(2, "big")
    if v5:
        body += bytes([len(props)]) + props
    body += payload
    head, n = bytearray([0x30 | (qos << 1) | (8 if dup else 0)]), len(body)
    while True:
        b, n = n & 127, n >> 7
        head.append(b | 128 if n else b)
        if not n:
            return bytes(head) + body


def results(r) -> tuple:
    return (
        r.received,
        r.stored,
        r.in_order,
        r.late,
        r.dead_letters,
        sorted(x.reason for _, x in r.rejected),
        [(c.sensor_id, c.change.action, c.change.level, c.change.ts) for c in r.changes],
    )


@pytest.mark.parametrize("v5", [True, False])
def test_raw_packets_agree_with_messages(db, v5: bool) -> None:
    """The consumer's form (raw PUBLISH packets back to back) gives what (topic, payload)
    pairs give: the canonical fast path, every other shape, QoS 0, DUP, MQTT 5 properties,
    long packets (a two-byte remaining length), dead letters and arrival order."""
    for sid in ("G1", "G2"):
        add_sensor(db, sid)
    msgs = [m("G1", T0 + 60 * k, 30.0 if 3 <= k < 6 else 1.0) for k in range(9)]
    msgs += [
        m("G2", T0, 12.0),
        m("G2", T0, 14.0),  # the same instant again: the later one wins
        ("cityops/test/lifeline/G2", b' { "ts" : %d , "value" : 2.5e1 } ' % ((T0 + 60) * 1000)),
        (
            "cityops/test/lifeline/G2",
            json.dumps({"ts": "2026-01-01T00:00:00Z", "value": 1}).encode(),
        ),
        (
            "cityops/test/lifeline/G2",
            json.dumps([{"ts": int((T0 + 120) * 1000), "value": 3.0}] * 9).encode(),
        ),
        ("cityops/test/lifeline/G1", b'{"ts": 1, "value":'),  # malformed
        m("NOPE", T0, 1.0),  # unknown sensor
        m("G1", NOW + 86400, 1.0),  # future
        ("cityops/test/other/G1", b'{"ts": 1, "value": 1}'),  # bad topic
        m("G1", T0 + 60, 99.0),  # late: stored, not evaluated
    ]
    packets = b"".join(
        publish(
            topic,
            payload,
            qos=0 if k % 5 == 4 else 1,
            mid=k * 257 % 65535 + 1,
            v5=v5,
            props=b"\x01\x01" if v5 and k % 7 == 3 else b"",  # payload format indicator
            dup=k % 3 == 0,
        )
        for k, (topic, payload) in enumerate(msgs)
    )
    by_messages = results(pipe(db).process_messages(msgs))
    with db.write() as s:
        for model in (AlarmEvent, Alarm, Incident, DeadLetter, SensorState, Sample):
            s.query(model).delete()
    p = pipe(db)
    by_packets = results(p.process_packets(packets, v5=v5))
    assert by_packets == by_messages
    assert by_packets[1] == count(db, Sample)
    with db.read() as s:
        at_t0 = select(Sample.value).where(
            Sample.sensor_id == "G2", Sample.ts == timeseries.from_epoch(T0)
        )
        assert s.scalar(at_t0) == 14.0  # two readings at one instant: the later one wins


def test_quiet_runs_advance_like_reading_by_reading() -> None:
    """The batch shortcut for readings that leave every rule silent ends in the state that
    feeding them one by one ends in, and declines everything else."""
    from cityops.lifeline.alarms import (
        Band,
        RateRule,
        SensorRule,
        StreamState,
        StuckRule,
        advance_quiet,
        evaluate,
    )

    rule = SensorRule(bands=(Band("red", above=50.0), Band("yellow", above=10.0)), physical_min=0.0)
    quiet = [(T0 + k, 1.0 + k % 3) for k in range(10)]
    a, b = StreamState(), StreamState()
    assert advance_quiet(rule, a, quiet)
    for ts, v in quiet:
        assert evaluate(rule, b, ts, v, interval_s=1) == []
    assert a == b
    assert not advance_quiet(rule, StreamState(), [*quiet, (T0 + 11, 10.0)])  # in a band
    assert not advance_quiet(rule, StreamState(), [(T0, -1.0)])  # impossible
    assert not advance_quiet(rule, StreamState(open={"threshold": "red"}), quiet)
    assert not advance_quiet(rule, StreamState(since={"yellow": T0}), quiet)
    for other in (SensorRule(stuck=StuckRule(3)), SensorRule(rate=RateRule(rise_per_min=1))):
        assert not advance_quiet(other, StreamState(), quiet)


def test_state_text_round_trips() -> None:
    from cityops.lifeline.alarms import StreamState
    from cityops.lifeline.ingest.pipeline import state_text

    for st in (
        StreamState(),
        StreamState(last_ts=T0, last_value=0.1, last_good_ts=T0),
        StreamState(
            last_ts=T0,
            last_value=-2.5e-7,
            last_good_ts=T0 - 1,
            stuck_value=3.0,
            stuck_count=4,
            since={"red": T0},
            open={"threshold": "red"},
            clear_since=T0,
            rate_violation_at=T0,
            anomaly_at=T0,
            suppressed=2,
        ),
        StreamState(last_ts=T0, last_value=float("inf")),  # never stored, but still JSON-ish
    ):
        assert StreamState.from_json(json.loads(state_text(st))) == st
