"""The simulator: normal patterns stay quiet, each injected incident raises what it should."""

from __future__ import annotations

import itertools
import threading
import time

import numpy as np
import pytest
from sqlalchemy import func, select

from cityops.lifeline import registry, simulate
from cityops.lifeline.ingest.pipeline import Pipeline
from cityops.lifeline.models import Alarm, Incident, Sample

M = 1 / 111_320  # one metre of latitude in degrees


def city_sensors(db) -> None:
    rows = []
    # three adjacent-space methane sensors 60 m apart on one gas main, one far away
    for i, lat_m in enumerate((0, 60, 120, 2000)):
        rows.append(
            dict(
                id=f"GC{i}",
                domain="gas",
                kind="gas_concentration",
                network_id="GAS-1",
                interval_s=60,
                lon=117.25,
                lat=31.80 + lat_m * M,
            )
        )
    for i, lat_m in enumerate((0, 300)):
        rows.append(
            dict(
                id=f"WP{i}",
                domain="water_supply",
                kind="pipe_pressure",
                network_id="WS-1",
                interval_s=60,
                lon=117.26,
                lat=31.80 + lat_m * M,
            )
        )
    rows.append(
        dict(
            id="WF0",
            domain="water_supply",
            kind="flow",
            network_id="WS-1",
            object_kind="dma_meter",
            interval_s=60,
            lon=117.26,
            lat=31.80,
        )
    )
    rows.append(
        dict(
            id="UP0",
            domain="drainage",
            kind="water_level",
            object_kind="underpass",
            network_id="DR-1",
            interval_s=60,
            lon=117.27,
            lat=31.80,
        )
    )
    rows.append(
        dict(
            id="RF0",
            domain="drainage",
            kind="rainfall",
            object_kind="pump_station",
            network_id="DR-1",
            interval_s=300,
            lon=117.27,
            lat=31.80,
        )
    )
    for i in range(3):
        rows.append(
            dict(
                id=f"BS{i}",
                domain="bridge",
                kind="strain",
                network_id="BR-1",
                interval_s=60,
                lon=117.28 + i * 0.0002,
                lat=31.80,
            )
        )
    registry.register_rows(db, rows, "test")


def run_sim(db, *, hours: float, seed: int = 3) -> simulate.CitySimulator:
    start = time.time() - hours * 3600 - 60
    sim = simulate.CitySimulator(
        simulate.load_sensors(db), start=start, seed=seed, speed=1.0, cycle_s=24 * 3600
    )
    pipe = Pipeline(db, anomaly=False)
    t = start
    while t < start + hours * 3600:
        t += 300
        pipe.process_readings(sim.due(t), source="sim")
    return sim


def test_incidents_raise_the_expected_alarms(db) -> None:
    city_sensors(db)
    sim = run_sim(db, hours=2.5)
    assert {e.kind for e in sim.episodes} == set(simulate.INCIDENTS)
    with db.read() as s:
        alarms = s.execute(select(Alarm.sensor_id, Alarm.kind, Alarm.level)).all()
        incidents = s.scalars(select(Incident)).all()
    by_sensor: dict[str, set[tuple[str, str]]] = {}
    for sid, kind, level in alarms:
        by_sensor.setdefault(sid, set()).add((kind, level))
    gas = next(e for e in sim.episodes if e.kind == "gas_leak")
    centre = max(gas.weights, key=gas.weights.__getitem__)
    assert ("threshold", "red") in by_sensor[centre], by_sensor  # the leak itself
    burst = next(e for e in sim.episodes if e.kind == "main_burst")
    centre = max((k for k in burst.weights if k.startswith("WP")), key=burst.weights.__getitem__)
    assert ("threshold", "red") in by_sensor[centre]  # pressure below 0.10 MPa
    assert ("threshold", "red") in by_sensor["UP0"]  # underpass water above 25 cm
    assert any(
        k == "threshold" for k, _ in by_sensor.get("BS0", set()) | by_sensor.get("BS1", set())
    )
    # the leak's neighbours on the same main joined the leak's incident
    gas_incidents = [i for i in incidents if i.domain == "gas"]
    assert max(i.alarm_count for i in gas_incidents) >= 2
    # only the leak's sensors alarmed (the one 2 km away stayed quiet unless it was the centre)
    assert {sid for sid in by_sensor if sid.startswith("GC")} <= set(gas.weights)
    assert len(gas.weights) < 4


def test_normal_pattern_is_quiet(db) -> None:
    city_sensors(db)
    start = time.time() - 6 * 3600
    sim = simulate.CitySimulator(
        simulate.load_sensors(db), start=start, seed=1, speed=1.0, incidents=()
    )
    pipe = Pipeline(db, anomaly=False)
    for k in range(1, 72):
        pipe.process_readings(sim.due(start + 300 * k), source="sim")
    with db.read() as s:
        assert s.scalar(select(func.count()).select_from(Alarm)) == 0
        assert s.scalar(select(func.count()).select_from(Sample)) > 3000


def test_normal_pattern_is_quiet_at_demo_speed(db) -> None:
    """At 10× (the demo), sensors report ten times more often; the noise per minute must not
    grow with it, or rate-of-change rules (0.03 MPa/min on water mains) fire on noise."""
    city_sensors(db)
    start = time.time() - 1800
    sim = simulate.CitySimulator(
        simulate.load_sensors(db), start=start, seed=1, speed=10, incidents=()
    )
    pipe = Pipeline(db, anomaly=False)
    for k in range(1, 61):
        pipe.process_readings(sim.due(start + 30 * k), source="sim")
    with db.read() as s:
        assert s.scalar(select(func.count()).select_from(Alarm)) == 0
        assert s.scalar(select(func.count()).select_from(Sample)) > 2000


def test_noise_is_smooth_between_nominal_samples() -> None:
    sensor = simulate.SimSensor("P", "water_supply", "pipe_pressure", "", "WS", 0, 0, 60, 0, 0)
    sim = simulate.CitySimulator([sensor], start=1_780_000_000, seed=2)
    knots = [sim.noise(sensor, 1_780_000_020 + 60 * k) for k in range(200)]
    steps = [sim.noise(sensor, 1_780_000_020 + 6 * k) for k in range(2000)]
    # per minute, ten times as many readings move as much as the nominal ones, not more
    per_min_knots = max(abs(b - a) for a, b in itertools.pairwise(knots))
    per_min_steps = max(abs(b - a) * 10 for a, b in itertools.pairwise(steps))
    assert per_min_steps <= per_min_knots * 1.01
    assert 0.5 < float(np.std(knots)) < 1.2
    again = simulate.CitySimulator([sensor], start=1_780_000_000, seed=2)
    assert again.noise(sensor, 1_780_003_333) == sim.noise(sensor, 1_780_003_333)


def test_simulator_is_deterministic_for_a_seed(db) -> None:
    city_sensors(db)
    sensors = simulate.load_sensors(db)
    a = simulate.CitySimulator(sensors, start=1_780_000_000, seed=5, speed=10)
    b = simulate.CitySimulator(sensors, start=1_780_000_000, seed=5, speed=10)
    assert a.due(1_780_000_900) == b.due(1_780_000_900)
    assert [(e.kind, e.start, e.weights) for e in a.episodes] == [
        (e.kind, e.start, e.weights) for e in b.episodes
    ]


def mark_demo(db) -> None:
    """Mark ``db`` as one ``cityops demo`` created (the in-process simulator needs it)."""
    from cityops.core.models import AppState
    from cityops.demo import DEMO_MARKER

    with db.write() as s:
        s.add(AppState(key=DEMO_MARKER, value="test"))


def test_in_process_thread_for_the_demo(db) -> None:
    city_sensors(db)
    mark_demo(db)
    stop = threading.Event()
    thread = simulate.start_in_process(db, stop, speed=60, backfill_hours=0.5)
    try:
        deadline = time.time() + 20
        while time.time() < deadline:
            with db.read() as s:
                recent = s.scalar(select(func.count()).select_from(Sample))
                newest = s.scalar(select(func.max(Sample.ts)))
            assert newest is None or newest.timestamp() <= time.time() + 1  # never the future
            if recent and recent > 400:
                break
            time.sleep(0.5)
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    assert recent > 400  # half an hour of history plus live readings


def test_in_process_simulator_refuses_a_database_the_demo_did_not_make(db) -> None:
    city_sensors(db)
    stop = threading.Event()
    with pytest.raises(simulate.NotADemoDatabase, match="not created by `cityops demo`"):
        simulate.start_in_process(db, stop, speed=60)
    time.sleep(1.5)
    with db.read() as s:
        assert s.scalar(select(func.count()).select_from(Sample)) == 0
        assert s.scalar(select(func.count()).select_from(Alarm)) == 0


def test_first_incident_comes_a_simulated_minute_in(db) -> None:
    city_sensors(db)
    sim = simulate.CitySimulator(simulate.load_sensors(db), start=1_780_000_000, speed=10)
    sim.due(1_780_000_000 + 30)
    assert min(e.start for e in sim.episodes) == pytest.approx(1_780_000_000 + 6)
