"""``cityops demo``: the city is built with its lifeline sensors registered, and the simulator
makes the map alive — on a demo database only."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from sqlalchemy import func, select

from cityops import demo
from cityops.core.errors import ValidationFailed
from cityops.lifeline import simulate
from cityops.lifeline.models import Alarm, Incident, Sample, Sensor
from cityops.settings import Settings

QUIET = Console(quiet=True)


def count(db: Any, table: Any) -> int:
    with db.read() as s:
        return int(s.scalar(select(func.count()).select_from(table)) or 0)


def wait_for(check: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.5)
    return bool(check())


def small_demo(db: Any) -> None:
    demo.populate(db, buildings=1500, seed=1, console=QUIET)


def test_demo_city_has_its_sensors_and_the_simulator_raises_alarms(db) -> None:
    small_demo(db)
    assert demo.demo_marker(db) == "buildings=1500 seed=1"
    with db.read() as s:
        kinds = set(s.scalars(select(Sensor.kind).distinct()))
        layer = s.scalar(select(func.count()).select_from(Sensor))
    assert layer and layer > 50
    assert {"gas_concentration", "pipe_pressure", "strain"} <= kinds
    # every sensor lies in the district, so every verified incident can become a case
    from cityops.base import geo_service

    with db.read() as s:
        points = s.execute(select(Sensor.lon, Sensor.lat)).all()
    coded = geo_service.geocoder_for(db).locate([p[0] for p in points], [p[1] for p in points])
    assert (coded["district"].astype(str) != "").all()
    stop = threading.Event()
    # 600× real time: the first injected incidents (a gas leak first) peak within seconds
    thread = demo.start_simulator(db, stop, Settings(database_url=db.url, simulate_speed=600))
    assert thread is not None
    try:
        assert wait_for(lambda: count(db, Alarm) > 0, 90), "no alarm from the injected incidents"
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive(), "the stop event ends the simulator"
    assert count(db, Sample) > 1000  # an hour of normal history plus the live stream
    assert count(db, Incident) > 0
    with db.read() as s:
        newest = s.scalar(select(func.max(Sample.ts)))
    assert newest is not None and newest.timestamp() <= time.time() + 1  # never the future


def test_simulator_never_starts_on_a_database_the_demo_did_not_make(db) -> None:
    from tests.lifeline.test_simulate import city_sensors

    city_sensors(db)
    assert demo.demo_marker(db) is None
    stop = threading.Event()
    settings = Settings(database_url=db.url, simulate=True)
    assert demo.start_simulator(db, stop, settings) is None
    with pytest.raises(simulate.NotADemoDatabase):
        simulate.start_in_process(db, stop, speed=600, backfill_hours=1)
    app = demo.app_for(db, settings)
    from fastapi.testclient import TestClient

    with TestClient(app):
        assert app.state.simulator is None
        time.sleep(1.5)
    assert count(db, Sample) == 0 and count(db, Alarm) == 0


def test_simulate_setting_turns_the_demo_simulator_off(db) -> None:
    from tests.lifeline.test_simulate import city_sensors, mark_demo

    city_sensors(db)
    mark_demo(db)
    stop = threading.Event()
    assert demo.start_simulator(db, stop, Settings(database_url=db.url, simulate=False)) is None
    assert count(db, Sample) == 0


def test_demo_server_runs_the_simulator_with_its_lifespan(db) -> None:
    """What `make demo` serves: sign in as the demo's monitor and watch the map come alive;
    the simulator stops with the server."""
    from fastapi.testclient import TestClient

    from tests.lifeline.test_simulate import city_sensors, mark_demo

    city_sensors(db)
    mark_demo(db)
    demo._create_users(db)
    app = demo.app_for(db, Settings(database_url=db.url, simulate_speed=600))
    with TestClient(app) as client:
        thread = app.state.simulator
        assert thread is not None and thread.is_alive()
        r = client.post(
            "/api/v1/auth/token", data={"username": "monitor", "password": demo.DEMO_PASSWORD}
        )
        assert r.status_code == 200, r.text
        h = {"Authorization": f"Bearer {r.json()['access_token']}"}

        def alarms() -> bool:
            r = client.get("/api/v1/lifeline/alarms", headers=h)
            return r.status_code == 200 and r.json()["total"] > 0

        assert wait_for(alarms, 90), "no alarm reached the API"
        live = client.get("/api/v1/lifeline/map", headers=h).json()
        assert sum(1 for f in live["features"] if f["properties"]["last_ts"]) == len(
            live["features"]
        )
        assert any(f["properties"]["level"] for f in live["features"])
    assert not thread.is_alive(), "the simulator stops with the server"


def test_prepare_builds_reuses_and_refuses(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    db = demo.prepare(url, buildings=500, seed=2, fresh=False, explicit=True, console=QUIET)
    n = count(db, Sensor)
    assert n > 0 and demo.demo_marker(db) == "buildings=500 seed=2"
    # a demo made before the demo registered sensors gets them when it is reused
    with db.write() as s:
        s.query(Sensor).delete()
    db.dispose()
    again = demo.prepare(url, buildings=500, seed=2, fresh=False, explicit=True, console=QUIET)
    assert count(again, Sensor) == n
    again.dispose()
    other = f"sqlite:///{tmp_path / 'city.db'}"
    from cityops.cli import open_db

    open_db(other).dispose()
    with pytest.raises(ValidationFailed, match="not created by `cityops demo`"):
        demo.prepare(other, buildings=500, seed=2, fresh=False, explicit=True, console=QUIET)
