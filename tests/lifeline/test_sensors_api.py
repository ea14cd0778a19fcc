"""HTTP: sensor registry, batch ingest, series, alarms, the incident chain (研判) to a case."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from cityops.core import events
from cityops.lifeline import service
from cityops.lifeline.models import DeadLetter, Incident
from tests.conftest import make_user, token_for

NOW_MS = int(time.time() * 1000)
T0 = NOW_MS - 3 * 3600 * 1000


@pytest.fixture
def staff(client, db) -> dict[str, dict[str, str]]:
    make_user(db, "admin1", ["admin"])
    make_user(db, "mon1", ["monitor"])
    make_user(db, "ana1", ["analyst"])
    make_user(db, "cit1", ["citizen"])
    return {u: token_for(client, u) for u in ("admin1", "mon1", "ana1", "cit1")}


def sensor(sid: str, lat: float = 31.8, **kw: object) -> dict[str, object]:
    return {
        "id": sid,
        "domain": "gas",
        "kind": "gas_concentration",
        "network_id": "GAS-1",
        "interval_s": 60,
        "lon": 117.25,
        "lat": lat,
        "thresholds": {"rate": None},
        **kw,
    }


def test_register_and_read_sensors(client, staff) -> None:
    r = client.post("/api/v1/lifeline/sensors", json=sensor("G1"), headers=staff["admin1"])
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["object_kind"] == "adjacent_space" and body["unit"] == "%LEL"
    assert body["owner_unit"] == "gas"
    assert body["rule"]["profile"] == "gas_adjacent_space"
    assert body["rule"]["levels"]["red"] == {"above": 50.0, "below": None}
    assert body["rule"]["rate"] is None  # turned off by the sensor's override
    # replacing is 200, and only admins may
    assert (
        client.post(
            "/api/v1/lifeline/sensors", json=sensor("G1"), headers=staff["admin1"]
        ).status_code
        == 200
    )
    assert (
        client.post(
            "/api/v1/lifeline/sensors", json=sensor("G2"), headers=staff["mon1"]
        ).status_code
        == 403
    )
    assert client.get("/api/v1/lifeline/sensors", headers=staff["cit1"]).status_code == 403
    r = client.get("/api/v1/lifeline/sensors?domain=gas&bbox=117,31,118,32", headers=staff["ana1"])
    assert r.json()["total"] == 1
    # a per-sensor threshold override, validated
    r = client.patch(
        "/api/v1/lifeline/sensors/G1",
        json={"thresholds": {"levels": {"red": {"above": 40}}, "hysteresis": 1}},
        headers=staff["admin1"],
    )
    assert r.status_code == 200 and r.json()["rule"]["levels"] == {
        "red": {"above": 40.0, "below": None}
    }
    r = client.patch(
        "/api/v1/lifeline/sensors/G1",
        json={"thresholds": {"levels": {"purple": {"above": 1}}}},
        headers=staff["admin1"],
    )
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")
    r = client.post(
        "/api/v1/lifeline/sensors", json=sensor("X", domain="moon"), headers=staff["admin1"]
    )
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "domain"
    assert client.get("/api/v1/lifeline/sensors/NOPE", headers=staff["ana1"]).status_code == 404
    d = client.get("/api/v1/lifeline/domains", headers=staff["ana1"]).json()
    assert len(d["domains"]) == 8 and all(p["source"] for p in d["profiles"])


def test_http_batch_ingest_dead_letters_and_series(client, staff, db) -> None:
    client.post("/api/v1/lifeline/sensors", json=sensor("G1"), headers=staff["admin1"])
    batch = [{"sensor_id": "G1", "ts": T0 + 60_000 * k, "value": float(k % 5)} for k in range(30)]
    batch += [
        {"sensor_id": "G1", "ts": T0, "value": "oops"},
        {"sensor_id": "NOPE", "ts": T0, "value": 1},
        {"sensor_id": "G1", "ts": NOW_MS + 86_400_000, "value": 1},
    ]
    h = staff["mon1"]
    r = client.post("/api/v1/lifeline/samples", json={"samples": batch}, headers=h)
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["stored"], out["in_order"], out["dead_letters"]) == (30, 30, 3)
    assert sorted(x["reason"] for x in out["rejected"]) == [
        "bad_type",
        "future_timestamp",
        "unknown_sensor",
    ]
    assert {x["index"] for x in out["rejected"] if x["reason"] != "unknown_sensor"} == {30, 32}
    # the same batch again: nothing new
    again = client.post("/api/v1/lifeline/samples", json=batch[:30], headers=h).json()
    assert (again["stored"], again["in_order"], again["late_or_duplicate"]) == (30, 0, 30)
    # a body that is not JSON: 400 problem, and a dead letter
    r = client.post(
        "/api/v1/lifeline/samples",
        content=b"{not json",
        headers={**h, "content-type": "application/json"},
    )
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/problem+json")
    with db.read() as s:
        assert "malformed_json" in s.scalars(select(DeadLetter.reason)).all()
    r = client.get("/api/v1/lifeline/dead-letters?reason=malformed_json", headers=h)
    assert r.json()["total"] == 1 and r.json()["items"][0]["payload"] == "{not json"
    assert client.get("/api/v1/lifeline/dead-letters", headers=staff["ana1"]).status_code == 403
    assert (
        client.post("/api/v1/lifeline/samples", json=batch, headers=staff["ana1"]).status_code
        == 403
    )
    # series for a chart: 30 one-minute readings in 10-minute buckets
    frm = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime((T0 - 600_000) / 1000))
    to = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime((T0 + 3_600_000) / 1000))
    r = client.get(
        f"/api/v1/lifeline/sensors/G1/series?from={frm}&to={to}&bucket=10m", headers=staff["ana1"]
    )
    assert r.status_code == 200, r.text
    pts = r.json()["points"]
    assert r.json()["bucket_s"] == 600 and sum(p["count"] for p in pts) == 30
    r = client.get("/api/v1/lifeline/sensors/G1/series?bucket=7x", headers=staff["ana1"])
    assert r.status_code == 422
    r = client.get(f"/api/v1/lifeline/sensors/G1/series?from={to}&to={frm}", headers=staff["ana1"])
    assert r.status_code == 422


def _stream_leak(client, headers) -> None:
    """Two manholes 60 m apart on one gas network rise above 25 %LEL: one incident."""
    rows = []
    for sid in ("G1", "G2"):
        rows += [
            {"sensor_id": sid, "ts": T0 + 60_000 * k, "value": v}
            for k, v in enumerate([1, 2, 30, 35])
        ]
    r = client.post("/api/v1/lifeline/samples", json=rows, headers=headers)
    assert r.json()["alarms_raised"] == 2


def test_alarm_acknowledge_and_incident_chain_to_a_case(client, staff, db, monkeypatch) -> None:
    client.post("/api/v1/lifeline/sensors", json=sensor("G1"), headers=staff["admin1"])
    client.post(
        "/api/v1/lifeline/sensors",
        json=sensor("G2", lat=31.8 + 60 / 111_320),
        headers=staff["admin1"],
    )
    _stream_leak(client, staff["mon1"])
    alarms = client.get("/api/v1/lifeline/alarms?status=active", headers=staff["ana1"]).json()
    assert alarms["total"] == 2 and {a["level"] for a in alarms["items"]} == {"orange"}
    assert len({a["incident_id"] for a in alarms["items"]}) == 1
    a1 = alarms["items"][0]["id"]
    assert (
        client.post(f"/api/v1/lifeline/alarms/{a1}/acknowledge", headers=staff["ana1"]).status_code
        == 403
    )
    r = client.post(f"/api/v1/lifeline/alarms/{a1}/acknowledge", headers=staff["mon1"])
    assert r.status_code == 200 and r.json()["status"] == "ACTIVE_ACK"
    assert (
        client.post(f"/api/v1/lifeline/alarms/{a1}/acknowledge", headers=staff["mon1"]).status_code
        == 409
    )

    incs = client.get("/api/v1/lifeline/incidents?open=true", headers=staff["mon1"]).json()
    assert incs["total"] == 1
    inc = incs["items"][0]
    assert (inc["state"], inc["alarm_count"], inc["level"]) == ("raised", 2, "orange")
    assert inc["allowed_actions"] == ["acknowledge", "verify", "dismiss"]
    iid = inc["id"]
    url = f"/api/v1/lifeline/incidents/{iid}/transitions"
    assert (
        client.post(url, json={"action": "acknowledge"}, headers=staff["ana1"]).status_code == 403
    )
    r = client.post(url, json={"action": "acknowledge"}, headers=staff["mon1"])
    assert r.status_code == 200 and r.json()["state"] == "verifying"
    assert all(a["acknowledged_by"] == "mon1" for a in r.json()["alarms"])
    r = client.post(url + "?version=1", json={"action": "verify"}, headers=staff["mon1"])
    assert r.status_code == 409  # stale version
    r = client.post(
        url, json={"action": "verify", "note": "crew confirms smell of gas"}, headers=staff["mon1"]
    )
    assert r.status_code == 200, r.text
    assert (r.json()["state"], r.json()["verdict"]) == ("pushed", "real")
    assert [t["action"] for t in r.json()["transitions"]] == ["acknowledge", "verify"]
    assert (
        client.post(
            url,
            json={"action": "dismiss", "verdict": "false_alarm", "note": "x"},
            headers=staff["mon1"],
        ).status_code
        == 409
    )

    # the case is opened by the outbox worker: fake only the edge to the case loop
    seen: list[tuple[int, str]] = []

    def fake_open_case(session, incident, actor, now):
        seen.append((incident.id, incident.owner_unit))
        return "C-TEST-1"

    monkeypatch.setattr(service, "open_case_for_incident", fake_open_case)
    assert events.drain(db, service.EVENT_HANDLERS) == 1
    assert seen == [(iid, "gas")]
    assert events.drain(db, service.EVENT_HANDLERS) == 0  # exactly once
    got = client.get(f"/api/v1/lifeline/incidents/{iid}", headers=staff["mon1"]).json()
    assert got["case_id"] == "C-TEST-1" and got["state"] == "pushed"

    # closing the case closes the incident (the case loop's event)
    with db.write() as s:
        events.publish(s, service.EVENT_CASE_CLOSED, {"case_id": "C-TEST-1"})
        events.publish(s, service.EVENT_CASE_CLOSED, {"case_id": "C-OTHER"})  # not ours
    assert events.drain(db, service.EVENT_HANDLERS) == 2
    got = client.get(f"/api/v1/lifeline/incidents/{iid}", headers=staff["mon1"]).json()
    assert got["state"] == "closed" and got["closed_at"] is not None
    assert got["transitions"][-1]["action"] == "close"


def test_dismiss_as_device_fault(client, staff, db) -> None:
    client.post("/api/v1/lifeline/sensors", json=sensor("G1"), headers=staff["admin1"])
    client.post(
        "/api/v1/lifeline/sensors",
        json=sensor("G2", lat=31.8 + 60 / 111_320),
        headers=staff["admin1"],
    )
    _stream_leak(client, staff["mon1"])
    with db.read() as s:
        iid = s.scalars(select(Incident.id)).one()
    url = f"/api/v1/lifeline/incidents/{iid}/transitions"
    r = client.post(
        url, json={"action": "dismiss", "verdict": "false_alarm"}, headers=staff["mon1"]
    )
    assert r.status_code == 409 and "reason" in r.json()["detail"]
    r = client.post(
        url,
        json={"action": "dismiss", "verdict": "device_fault", "note": "detector flooded"},
        headers=staff["mon1"],
    )
    assert r.status_code == 200 and (r.json()["state"], r.json()["verdict"]) == (
        "closed",
        "device_fault",
    )
    with db.read() as s:
        assert s.scalars(select(events.OutboxEvent)).all() == []  # no case for a false alarm


def test_maintenance_endpoint_and_live_map(client, staff) -> None:
    client.post("/api/v1/lifeline/sensors", json=sensor("G1"), headers=staff["admin1"])
    client.post("/api/v1/lifeline/sensors", json=sensor("G2", lat=31.81), headers=staff["admin1"])
    r = client.post(
        "/api/v1/lifeline/sensors/G2/maintenance",
        json={"on": True, "until": "2999-01-01T00:00:00+08:00", "reason": "calibration"},
        headers=staff["mon1"],
    )
    assert r.status_code == 200 and r.json()["maintenance"] is True
    bad = client.post(
        "/api/v1/lifeline/sensors/G2/maintenance",
        json={"on": True, "until": "2999-01-01T00:00:00"},
        headers=staff["mon1"],
    )
    assert bad.status_code == 422
    rows = [
        {"sensor_id": s, "ts": T0 + 60_000 * k, "value": 60} for s in ("G1", "G2") for k in range(2)
    ]
    out = client.post("/api/v1/lifeline/samples", json=rows, headers=staff["mon1"]).json()
    assert out["alarms_raised"] == 1  # G2 is in maintenance
    r = client.get("/api/v1/lifeline/map", headers=staff["ana1"])
    assert r.headers["content-type"].startswith("application/geo+json")
    props = {f["id"]: f["properties"] for f in r.json()["features"]}
    assert props["G1"]["level"] == "red" and props["G1"]["alarms"] == ["threshold"]
    assert props["G2"]["level"] is None and props["G2"]["maintenance"] is True
    assert props["G1"]["last_value"] == 60.0
