"""Synthetic city: facilities, shelters, lifeline objects, sensors and component links."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely


def test_poi_kinds_and_counts_per_population(city10k):
    p = city10k["pois"]
    pop = city10k.summary["population"]
    kinds = p["kind"].value_counts()
    for kind in (
        "school",
        "kindergarten",
        "clinic",
        "hospital",
        "park",
        "elderly_care",
        "bus_stop",
        "fire_station",
        "market",
        "community_service_center",
    ):
        assert kinds.get(kind, 0) > 0, kind
    n_comm = city10k.summary["communities"]
    n_street = city10k.summary["streets"]
    # 5-minute circle: one health station, day-care centre and service station per community;
    # 15-minute circle: a health centre per street (GB 50180-2018, REFERENCE Part D §4).
    sub = p.groupby(["kind", "subtype"]).size()
    assert sub[("clinic", "社区卫生服务站")] == n_comm
    assert sub[("clinic", "社区卫生服务中心")] == n_street
    assert sub[("community_service_center", "社区综合服务站")] == n_comm
    assert kinds["street_office"] == n_street
    assert pop / kinds["kindergarten"] == pytest.approx(7000, rel=0.35)
    schools = p[p["kind"] == "school"]
    assert (schools["subtype"] == "小学").sum() >= round(pop / 20000)
    assert pop / kinds["hospital"] < 200_000
    # 建标152-2017 cl. 14: one station per ≤ 7 km².
    assert kinds["fire_station"] == math.ceil(city10k.summary["area_km2"] / 7.0)
    # Parks are polygons, facilities points in buildings.
    assert (p.loc[p["kind"].isin(["park", "plaza", "green_space"])].geom_type == "Polygon").all()
    pts = p[~p["kind"].isin(["park", "plaza", "green_space"])]
    assert (pts.geom_type == "Point").all()
    assert p["name"].notna().all() and (p["name"].str.len() > 1).all()
    b = city10k["buildings"].set_index("building_id")
    hosted = pts[pts["building_id"].notna()]
    assert shapely.contains(
        b.geometry.loc[hosted["building_id"]].array, hosted.geometry.array
    ).all()
    assert set(b.loc[hosted["building_id"], "facility"]) <= set(pts["kind"])


def test_park_green_per_person(city10k):
    parks = city10k["pois"].query("kind == 'park'")
    per_person = parks["area_m2"].sum() / city10k.summary["population"]
    assert 3 <= per_person <= 40  # GB 55014-2021 cl. 2.1.3 asks > 8 m²/person


def test_shelters(city10k):
    s = city10k["shelters"]
    assert set(s["kind"]) <= {"central", "long_term", "medium_term", "short_term", "emergency"}
    assert {"emergency", "medium_term"} <= set(s["kind"])
    assert (s["capacity"] > 0).all()
    np.testing.assert_array_equal(
        s["capacity"], np.floor(s["effective_area_m2"] / s["m2_per_person"]).astype(int)
    )
    assert (s["effective_area_m2"] <= s["area_m2"]).all()
    metric = s.to_crs(city10k.summary["metric_crs"])
    np.testing.assert_allclose(metric.area, s["area_m2"], rtol=1e-3)
    # No building stands in a shelter.
    b = city10k["buildings"].to_crs(city10k.summary["metric_crs"])
    assert (
        shapely.STRtree(b.geometry.array).query(metric.geometry.array, predicate="intersects").size
        == 0
    )


def test_lifeline_objects(city10k):
    life = city10k["lifeline_networks"]
    assert life["object_id"].is_unique
    kinds = set(life["kind"])
    assert {"gas_main", "water_main", "drain", "manhole", "bridge", "underpass"} <= kinds
    pipes = life[life["kind"].isin(["gas_main", "water_main", "drain"])]
    assert pipes["network_id"].notna().all() and pipes["diameter_mm"].notna().all()
    assert set(pipes.loc[pipes["kind"] == "gas_main", "pressure_class"]) == {"中压", "低压"}
    assert set(pipes.loc[pipes["kind"] == "drain", "system"]) >= {"storm", "sewer"}
    # Each manhole's cover is a component pointing back at it.
    mh = life[life["kind"] == "manhole"]
    comp = city10k["components"].set_index("code")
    assert mh["component_code"].notna().all()
    assert (
        comp.loc[mh["component_code"], "object_id"].to_numpy() == mh["object_id"].to_numpy()
    ).all()
    cover = {
        "storm": "0103",
        "sewer": "0102",
        "combined": "0102",
        "water_supply": "0101",
        "gas": "0111",
        "power": "0105",
        "telecom": "0107",
    }
    assert (mh["component_code"].str[6:10] == mh["utility"].map(cover)).all()
    mh_pts = mh.geometry.array
    cover_pts = city10k["components"].set_index("code").geometry.loc[mh["component_code"]].array
    assert shapely.equals(mh_pts, cover_pts).all()


def test_sensors_on_objects(city10k):
    s = city10k["sensors"]
    life = city10k["lifeline_networks"]
    assert s["sensor_id"].is_unique
    assert set(s["object_id"]) <= set(life["object_id"])
    assert set(s["network_id"]) <= set(life["network_id"].dropna())
    assert {"gas", "water_supply", "drainage", "bridge"} == set(s["domain"])
    assert {
        "gas_concentration",
        "pipe_pressure",
        "flow",
        "water_level",
        "strain",
        "tilt",
        "vibration",
    } <= set(s["kind"])
    units = s.groupby("kind")["unit"].agg(set).to_dict()
    assert units["gas_concentration"] == {"%LEL"}
    assert units["water_level"] == {"m"}
    assert (s["interval_s"] > 0).all()
    # Methane sensors sit in manholes of other utilities (adjacent underground spaces).
    gas = s[s["kind"] == "gas_concentration"]
    util = life.set_index("object_id").loc[gas["object_id"], "utility"]
    assert not (util == "gas").any()
    assert gas["network_id"].str.startswith("GAS-").all()


@pytest.mark.parametrize("size", [(1_500, 1), (3_000, 11), (10_000, 1)])
def test_sensors_and_pipes_lie_inside_the_district(make_city, size):
    """The case loop places every incident in an area (``areas``), so every sensor lies within
    the union of the district's areas and in the community it names (perhaps on its edge, e.g.
    on a road between two); pipes on a boundary road are clipped to the district (to 1 cm:
    their clipped ends lie on its edge)."""
    city = make_city(*size)
    areas = city["areas"]
    union = shapely.union_all(areas.geometry.array)
    s = city["sensors"]
    assert len(s) > 50
    outside = s[~shapely.within(s.geometry.array, union)]
    assert outside.empty, outside[["sensor_id", "kind", "object_id"]].to_string()
    comm = areas[areas["kind"] == "community"].reset_index(drop=True)
    own = comm.set_index("code").geometry.loc[s["community_code"]].array
    assert shapely.covers(shapely.buffer(own, 1e-7), s.geometry.array).all()
    life = city["lifeline_networks"]
    pipes = life[life["kind"].isin(["gas_main", "water_main", "drain"])]
    assert shapely.covered_by(pipes.geometry.array, shapely.buffer(union, 1e-7)).all()
    assert (pipes["length_m"] > 0).all()
