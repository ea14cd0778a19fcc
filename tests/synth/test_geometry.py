"""Synthetic city geometry: partitions, buildings clear of roads and of each other."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from cityops.synth import generate_city


def _metric(city, name):
    return city[name].to_crs(city.summary["metric_crs"])


def _check_partition(city) -> None:
    areas = _metric(city, "areas")
    district = areas.query("kind == 'district'").geometry.iloc[0]
    streets = areas.query("kind == 'street'")
    comms = areas.query("kind == 'community'")
    assert (areas.geom_type == "Polygon").all()  # every area is one piece
    assert areas.is_valid.all()
    # Streets partition the district: areas add up, union matches, overlaps are only edges.
    assert streets.area.sum() == pytest.approx(district.area, rel=1e-9)
    assert shapely.union_all(streets.geometry.array).symmetric_difference(district).area < 1.0
    tree = shapely.STRtree(streets.geometry.array)
    a, b = tree.query(streets.geometry.array, predicate="intersects")
    pair = a < b
    overlap = shapely.area(
        shapely.intersection(streets.geometry.array[a[pair]], streets.geometry.array[b[pair]])
    )
    assert overlap.max(initial=0.0) < 1.0  # m²: shared edges only
    # Communities partition their street.
    for code, street in zip(streets["code"], streets.geometry, strict=True):
        mine = comms[comms["parent_code"] == code]
        assert mine.area.sum() == pytest.approx(street.area, rel=1e-9)
        inter = shapely.intersection(mine.geometry.array, street)
        np.testing.assert_allclose(shapely.area(inter), mine.area, rtol=1e-9)
    # District area in the summary is measured in metres.
    assert district.area / 1e6 == pytest.approx(city.summary["area_km2"], rel=1e-3)


def _check_buildings(city) -> None:
    b = _metric(city, "buildings")
    roads = _metric(city, "roads")
    geoms = b.geometry.array
    assert (b.geom_type == "Polygon").all() and b.is_valid.all()
    assert set(shapely.get_num_coordinates(geoms)) <= {5, 7}  # rectangles and L-shapes
    # No building touches a road (centre line buffered by half its width).
    buf = shapely.buffer(roads.geometry.array, roads["width_m"].to_numpy() / 2)
    hit = shapely.STRtree(geoms).query(buf, predicate="intersects")
    assert hit.size == 0
    # No two buildings overlap or touch.
    a, c = shapely.STRtree(geoms).query(geoms, predicate="intersects")
    assert (a == c).all()
    # Buildings lie in the district, and in the community their code names.
    areas = _metric(city, "areas")
    district = areas.query("kind == 'district'").geometry.iloc[0]
    assert shapely.contains(district, geoms).all()
    comm = areas.query("kind == 'community'").set_index("code").geometry
    pts = shapely.point_on_surface(geoms)
    assert shapely.contains(comm.loc[b["community_code"]].array, pts).all()
    # Footprint areas agree with the metric geometry (the local frame is UTM, rotated).
    np.testing.assert_allclose(shapely.area(geoms), b["footprint_m2"], atol=0.06)


def test_areas_partition(city10k):
    _check_partition(city10k)


def test_buildings_clear_of_roads_and_each_other(city10k):
    _check_buildings(city10k)


def test_small_city_geometry():
    city = generate_city(150, 9)
    _check_partition(city)
    _check_buildings(city)


def test_lifelines_stay_under_roads(city10k):
    life = _metric(city10k, "lifeline_networks")
    b = _metric(city10k, "buildings")
    pipes = life[life["kind"].isin(["gas_main", "water_main", "drain"])]
    assert (pipes.geom_type == "LineString").all()
    assert (
        shapely.STRtree(b.geometry.array).query(pipes.geometry.array, predicate="intersects").size
        == 0
    )
    # Each pipe network is connected at the junctions: every end point is shared or a dead end
    # on the district edge — check that most ends are shared.
    for kind in ("gas_main", "water_main"):
        ends = shapely.get_coordinates(
            shapely.boundary(pipes[pipes["kind"] == kind].geometry.array)
        )
        _, counts = np.unique(np.round(ends, 3), axis=0, return_counts=True)
        assert (counts >= 2).mean() > 0.8
    # Bridges cross water; underpasses lie on roads.
    water = _metric(city10k, "water")
    bridges = life[life["kind"] == "bridge"]
    assert len(bridges) > 0
    assert shapely.intersects(bridges.geometry.array, shapely.union_all(water.geometry.array)).all()


@pytest.mark.slow
def test_hundred_thousand_buildings():
    city = generate_city(100_000, 5)
    assert len(city["buildings"]) == 100_000
    _check_partition(city)
    _check_buildings(city)
    assert city.summary["timings_s"]["total"] < 60
