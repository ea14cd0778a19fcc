"""The sensor registry: rule resolution with overrides, loading the digital base's sensors layer
(the synthetic city's), the registry cache, and the learned detector as a fourth alarm kind."""

from __future__ import annotations

import json
import time

import pytest
from sqlalchemy import func, select

from cityops.core.errors import ValidationFailed
from cityops.lifeline import registry, rules
from cityops.lifeline.ingest.pipeline import Pipeline
from cityops.lifeline.models import Alarm, Sensor
from cityops.lifeline.schemas import SensorIn
from cityops.settings import Settings


def test_rule_resolution_and_overrides() -> None:
    r = rules.sensor_rule("drainage", "water_level", "underpass")
    assert r.profile == "underpass_water"
    assert [(b.level, b.above) for b in r.bands] == [
        ("red", 0.25),
        ("yellow", 0.15),
        ("blue", 0.05),
    ]
    # a storm manhole gets the manhole profile; the most specific match wins
    assert (
        rules.sensor_rule("drainage", "water_level", "drain_manhole").profile
        == "drain_manhole_level"
    )
    assert rules.sensor_rule(
        "utility_tunnel", "gas_concentration", "tunnel_compartment"
    ).profile == ("tunnel_gas_compartment")
    assert rules.sensor_rule("elevator", "vibration", "elevator").profile == "default"
    # overrides: a level set replaces the bands; null switches a rule off
    o = rules.sensor_rule(
        "gas",
        "gas_concentration",
        "adjacent_space",
        {"levels": {"red": {"above": 40}}, "rate": None},
    )
    assert [(b.level, b.above) for b in o.bands] == [("red", 40.0)] and o.rate is None
    assert o.hysteresis == 2.0  # the rest comes from the profile
    with pytest.raises(ValueError):
        rules.validate_overrides({"levels": {"red": {}}})
    with pytest.raises(ValueError):
        rules.validate_overrides({"unknown_field": 1})


def test_every_profile_names_its_source_and_every_domain_has_an_owner() -> None:
    thr = rules.threshold_rules()
    assert all(p.source for p in thr.profiles)
    dom = rules.domain_rules()
    assert len(dom.domains) == 8 and all(d.owner_unit and d.source for d in dom.domains)
    # the monitored objects are all there
    kinds = {o.name for o in dom.object_kinds}
    assert {
        "gas_main",
        "adjacent_space",
        "water_main",
        "drain",
        "underpass",
        "bridge_span",
        "tunnel_compartment",
        "heating_pipe",
    } <= kinds


def test_register_validates(db) -> None:
    with pytest.raises(ValidationFailed, match="domain"), db.write() as s:
        registry.register(s, SensorIn(id="X", domain="moon", kind="k", lon=0, lat=0), "t")
    with pytest.raises(ValidationFailed, match="object kind"), db.write() as s:
        registry.register(
            s, SensorIn(id="X", domain="gas", kind="k", object_kind="spaceship", lon=0, lat=0), "t"
        )
    with pytest.raises(ValidationFailed, match="profile"), db.write() as s:
        registry.register(
            s, SensorIn(id="X", domain="gas", kind="k", profile="nope", lon=0, lat=0), "t"
        )
    with pytest.raises(ValidationFailed, match="row 2"):
        registry.register_rows(
            db,
            [
                {"id": "A", "domain": "gas", "kind": "gas_concentration", "lon": 1, "lat": 1},
                {"id": "B", "domain": "gas", "kind": "gas_concentration", "lon": 999, "lat": 1},
            ],
            "t",
        )
    with db.read() as s:
        assert s.scalar(select(func.count()).select_from(Sensor)) == 0  # nothing half-loaded


def test_sensors_from_the_synthetic_city_layer(db) -> None:
    from cityops.base import service as base
    from cityops.synth.generator import generate_city

    layers = generate_city(1500, 2)
    for name in ("lifeline_networks", "sensors"):
        base.import_frame(
            db,
            layers[name],
            layer=name,
            file="gen",
            fmt="generated",
            source_crs="EPSG:4326",
            key=None,
            actor="t",
            reason="t",
        )
    n = registry.register_from_layer(db)
    assert n == len(layers["sensors"]) > 20
    with db.read() as s:
        sensors = s.scalars(select(Sensor)).all()
        kinds = {x.object_kind for x in sensors}
        assert {"adjacent_space", "bridge_span"} <= kinds
        assert all(x.feature_id is not None and x.unit for x in sensors)
        gas = next(x for x in sensors if x.kind == "gas_concentration")
        assert gas.owner_unit == "gas" and gas.network_id
    # loading again replaces, never duplicates
    assert registry.register_from_layer(db) == n


def test_cache_sees_changes_without_a_restart(db) -> None:
    cache = registry.SensorCache()
    with db.write() as s:
        registry.register(
            s, SensorIn(id="A", domain="gas", kind="gas_concentration", lon=1, lat=1), "t"
        )
    with db.read() as s:
        assert cache.refresh(s) == 1
        assert cache.refresh(s) == 0  # nothing changed: nothing read
    with db.write() as s:
        registry.set_maintenance(s, "A", True, None, "x", "t")
    with db.read() as s:
        assert cache.refresh(s) >= 1
    assert cache.get("A").maintenance is True


def test_learned_detector_raises_a_blue_anomaly(db) -> None:
    pytest.importorskip("cityops.lifeline.detect")
    with db.write() as s:
        registry.register(
            s,
            SensorIn(
                id="V1",
                domain="bridge",
                kind="vibration",
                network_id="BR-1",
                interval_s=60,
                lon=117.3,
                lat=31.8,
            ),
            "t",
        )
    settings = Settings(lifeline_anomaly=True, lifeline_anomaly_learning=50)
    p = Pipeline(db, settings)
    t0 = time.time() - 86400
    normal = [0.10 + 0.01 * ((k * 7) % 5) for k in range(120)]
    msgs = [
        (
            "cityops/t/lifeline/V1",
            json.dumps({"ts": int((t0 + 60 * k) * 1000), "value": v}).encode(),
        )
        for k, v in enumerate(normal)
    ]
    assert p.process_messages(msgs).changes == []
    # below every threshold (yellow is 0.5 m/s²), but never seen before: the detector's alarm
    spike = [
        (
            "cityops/t/lifeline/V1",
            json.dumps({"ts": int((t0 + 60 * 121) * 1000), "value": 0.4}).encode(),
        )
    ]
    r = p.process_messages(spike)
    assert [(c.change.kind, c.change.level) for c in r.changes] == [("anomaly", "blue")]
    # a second process warms its detector from the stored series and agrees on the next score
    p2 = Pipeline(db, settings)
    nxt = [
        (
            "cityops/t/lifeline/V1",
            json.dumps({"ts": int((t0 + 60 * 122) * 1000), "value": 0.11}).encode(),
        )
    ]
    p2.process_messages(nxt)
    with db.read() as s:
        a = s.scalars(select(Alarm)).one()
        assert (a.kind, a.level, a.incident_id) == ("anomaly", "blue", None)  # joins, never opens
