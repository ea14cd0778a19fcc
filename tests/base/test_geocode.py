"""Geocoding (地理编码, GB/T 30428.3-2016): point → district / street / community / grid."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import LineString, box

from cityops.base.geocode import Geocoder
from cityops.base.grids import build_grids
from cityops.core.errors import ValidationFailed

M = "EPSG:32650"
X0, Y0 = 440_000.0, 4_420_000.0

# Two communities of street 110105001 side by side (400 × 200 m each, 8 grids of 100 × 100 m),
# and one of street 110105002 north of them, cut by a slanting road.
WEST = box(X0, Y0, X0 + 400, Y0 + 200)
EAST = box(X0 + 400, Y0, X0 + 800, Y0 + 200)
NORTH = box(X0, Y0 + 200, X0 + 800, Y0 + 500)
DISTRICT = box(X0 - 500, Y0 - 500, X0 + 1300, Y0 + 1000)


def to4326(geoms: list, **cols: list) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(cols, geometry=geoms, crs=M).to_crs(4326)


@pytest.fixture(scope="module")
def grids() -> gpd.GeoDataFrame:
    comm = to4326([WEST, EAST, NORTH], code=["110105001001", "110105001002", "110105002001"])
    road = to4326([LineString([(X0 + 330, Y0 + 150), (X0 + 470, Y0 + 550)])])
    return build_grids(comm, road, crs_metric=M)


@pytest.fixture(scope="module")
def areas() -> gpd.GeoDataFrame:
    street1 = shapely.union(WEST, EAST)
    return to4326(
        [DISTRICT, street1, NORTH, WEST, EAST, NORTH],
        code=["110105", "110105001", "110105002", "110105001001", "110105001002", "110105002001"],
        kind=["district", "street", "street", "community", "community", "community"],
        name=["朝阳区", "甲街道", "乙街道", "一社区", "二社区", "三社区"],
    )


@pytest.fixture(scope="module")
def geocoder(grids: gpd.GeoDataFrame, areas: gpd.GeoDataFrame) -> Geocoder:
    return Geocoder(grids, areas)


def lonlat(x: float, y: float) -> tuple[float, float]:
    """Metres (UTM 50N) → lon/lat."""
    p = gpd.GeoSeries([shapely.Point(x, y)], crs=M).to_crs(4326).iloc[0]
    return p.x, p.y


def test_known_point_gets_its_grid_and_names(geocoder: Geocoder, grids: gpd.GeoDataFrame) -> None:
    lon, lat = lonlat(X0 + 50, Y0 + 150)  # north-west grid of the west community
    got = geocoder.locate_one(lon, lat)
    assert got == {
        "district": "110105",
        "street": "110105001",
        "community": "110105001001",
        "grid_code": "110105001001001",
        "district_name": "朝阳区",
        "street_name": "甲街道",
        "community_name": "一社区",
    }
    row = grids.set_index("code").loc["110105001001001"]
    assert row.geometry.covers(shapely.Point(lon, lat))


def test_point_on_a_shared_edge_gets_the_lowest_code(
    geocoder: Geocoder, grids: gpd.GeoDataFrame
) -> None:
    g = grids.set_index("code").geometry
    # An exact shared vertex: the corner where grids 001, 002, 005, 006 of the west community
    # meet (taken from the geometries, so it lies on all four boundaries bit for bit).
    shared = set(map(tuple, shapely.get_coordinates(g["110105001001001"])))
    for code in ("110105001001002", "110105001001005", "110105001001006"):
        shared &= set(map(tuple, shapely.get_coordinates(g[code])))
    (corner,) = shared
    hits = grids[grids.geometry.intersects(shapely.Point(corner))]["code"].tolist()
    assert len(hits) == 4
    assert geocoder.locate_one(*corner)["grid_code"] == min(hits) == "110105001001001"
    # A vertex on the boundary between two communities: lowest code again, deterministically.
    west4 = set(map(tuple, shapely.get_coordinates(g["110105001001004"])))
    east1 = set(map(tuple, shapely.get_coordinates(g["110105001002001"])))
    for pt in west4 & east1:
        assert geocoder.locate_one(*pt)["grid_code"] == "110105001001004"


def test_point_in_an_area_but_no_grid(geocoder: Geocoder) -> None:
    got = geocoder.locate_one(*lonlat(X0 + 1000, Y0 + 800))  # in the district only
    assert got["district"] == "110105" and got["district_name"] == "朝阳区"
    assert got["street"] == got["community"] == got["grid_code"] == ""
    assert got["street_name"] is None and got["community_name"] is None


def test_point_in_a_community_area_without_grids() -> None:
    comm = to4326([WEST], code=["110105001001"])
    areas = to4326([EAST], code=["110105001002"], kind=["community"])
    gc = Geocoder(build_grids(comm, crs_metric=M), areas)
    got = gc.locate_one(*lonlat(X0 + 600, Y0 + 100))
    assert got["community"] == "110105001002"
    assert got["street"] == "110105001" and got["district"] == "110105"
    assert got["grid_code"] == ""
    assert "community_name" not in got  # areas without names: no name columns


def test_outside_everything(geocoder: Geocoder) -> None:
    got = geocoder.locate_one(*lonlat(X0 + 5000, Y0 + 5000))
    assert {k: v for k, v in got.items() if not k.endswith("_name")} == {
        "district": "",
        "street": "",
        "community": "",
        "grid_code": "",
    }
    assert got["district_name"] is None
    assert geocoder.locate_one(float("nan"), float("nan"))["grid_code"] == ""


def random_points(n: int, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pts = gpd.GeoSeries(
        shapely.points(rng.uniform(X0 - 200, X0 + 1000, n), rng.uniform(Y0 - 200, Y0 + 700, n)),
        crs=M,
    ).to_crs(4326)
    return pts.x.to_numpy(), pts.y.to_numpy()


def test_bulk_equals_single_and_chunking_does_not_matter(
    geocoder: Geocoder, grids: gpd.GeoDataFrame, areas: gpd.GeoDataFrame
) -> None:
    lon, lat = random_points(300)
    bulk = geocoder.locate(lon, lat, categorical=False).to_dict("records")
    singles = [geocoder.locate_one(a, b) for a, b in zip(lon, lat, strict=True)]
    # locate_one says None for "no name" where locate says "" (never NaN: all strings).
    assert all(isinstance(v, str) for rec in bulk for v in rec.values())
    assert bulk == [{k: v if v is not None else "" for k, v in r.items()} for r in singles]
    assert {"", "110105001001001"} <= {r["grid_code"] for r in bulk}
    # 300 points > 4 × grids: the bulk path indexes the points; chunks of one point walk the
    # grid tree instead. Both, and both output kinds, must agree.
    tiny = Geocoder(grids, areas, chunk_size=1)
    categorical = geocoder.locate(lon, lat)
    pd.testing.assert_frame_equal(tiny.locate(lon, lat), categorical)
    assert categorical.astype(str).to_dict("records") == bulk


def test_code_prefixes_are_consistent(geocoder: Geocoder) -> None:
    lon, lat = random_points(2000, seed=5)
    df = geocoder.locate(lon, lat, categorical=False)
    for grid, comm, street, district in df[
        ["grid_code", "community", "street", "district"]
    ].itertuples(index=False):
        if grid:
            assert grid.startswith(comm) and len(grid) == 15
        if comm:
            assert comm.startswith(street) and len(comm) == 12
        if street:
            assert street.startswith(district) and len(street) == 9
    assert (df["grid_code"] != "").sum() > 500  # grids cover ~37 % of the sampled box


def test_input_validation(grids: gpd.GeoDataFrame, areas: gpd.GeoDataFrame) -> None:
    with pytest.raises(ValidationFailed, match="15-digit"):
        Geocoder(grids.assign(code=grids["code"].str[:14]))
    with pytest.raises(ValidationFailed, match="15-digit"):
        Geocoder(pd.concat([grids, grids.iloc[:1]]))
    with pytest.raises(ValidationFailed):
        Geocoder(grids, areas.assign(kind="county"))
    with pytest.raises(ValidationFailed):
        Geocoder(grids, areas.assign(code="1101"))
    with pytest.raises(ValidationFailed, match="CRS"):
        Geocoder(grids.set_crs(None, allow_override=True))
    with pytest.raises(ValidationFailed, match="length"):
        Geocoder(grids).locate(np.zeros(3), np.zeros(2))


def test_empty_input(geocoder: Geocoder) -> None:
    df = geocoder.locate(np.array([]), np.array([]))
    assert len(df) == 0
    assert list(df.columns[:4]) == ["district", "street", "community", "grid_code"]


@pytest.fixture(scope="module")
def bbox(grids: gpd.GeoDataFrame) -> tuple[float, float, float, float]:
    minx, miny, maxx, maxy = grids.total_bounds
    return minx - 0.001, miny - 0.001, maxx + 0.001, maxy + 0.001


@settings(max_examples=200, deadline=None)
@given(u=st.floats(0, 1), v=st.floats(0, 1))
def test_property_located_grid_contains_the_point(
    geocoder: Geocoder,
    grids: gpd.GeoDataFrame,
    bbox: tuple[float, float, float, float],
    u: float,
    v: float,
) -> None:
    lon = bbox[0] + u * (bbox[2] - bbox[0])
    lat = bbox[1] + v * (bbox[3] - bbox[1])
    code = geocoder.locate_one(lon, lat)["grid_code"]
    p = shapely.Point(lon, lat)
    covering = grids[grids.geometry.covers(p)]["code"]
    if code:
        assert grids.set_index("code").geometry[code].covers(p)
        assert code == covering.min()
    else:
        assert covering.empty


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_property_vertices_get_the_lowest_covering_code(
    geocoder: Geocoder, grids: gpd.GeoDataFrame, data: st.DataObject
) -> None:
    # Grid vertices lie on the boundary of every grid that shares them: the hardest points.
    vertices = shapely.get_coordinates(grids.geometry.to_numpy())
    lon, lat = data.draw(st.sampled_from(vertices.tolist()))
    p = shapely.Point(lon, lat)
    covering = grids[grids.geometry.covers(p)]["code"]
    assert not covering.empty
    assert geocoder.locate_one(lon, lat)["grid_code"] == covering.min()
