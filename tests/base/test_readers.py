"""Readers on the real shared data (../shared/data; each figure is from its SOURCE.md)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyproj
import pytest
import shapely

from cityops.base.importers import TYPED_COLUMNS, SourceFrame, read_source
from cityops.core.errors import ImportFailed

pytestmark = pytest.mark.shared_data

GEOD = pyproj.Geod(ellps="WGS84")


def _assert_contract(frame: SourceFrame) -> None:
    """What the write path relies on, for every format."""
    gdf = frame.gdf
    assert gdf.crs.to_epsg() == 4326
    assert list(gdf.columns[: len(TYPED_COLUMNS)]) == list(TYPED_COLUMNS)
    assert gdf.columns[-1] == "geometry"
    for name, dtype in TYPED_COLUMNS.items():
        assert str(gdf[name].dtype) == dtype, name
    assert gdf.index.equals(gdf.index.__class__(range(len(gdf))))
    assert shapely.is_valid(gdf.geometry.values).all()
    xmin, ymin, xmax, ymax = gdf.total_bounds
    assert -180 <= xmin <= xmax <= 180 and -90 <= ymin <= ymax <= 90
    extras = frame.extra_columns
    for col in extras:
        assert gdf[col].dtype == object, col
    # Extra attributes are JSON-native: the write path can json.dumps them as they are.
    json.dumps(gdf[extras].iloc[:200].to_dict("records"), allow_nan=False)


# --- GeoJSON ------------------------------------------------------------------------------------


def test_suzhou_buildings(shared_data: Path) -> None:
    frame = read_source(shared_data / "geo/suzhou_buildings/bd_demo_2.json", layer="buildings")
    _assert_contract(frame)
    gdf = frame.gdf
    assert len(gdf) == 3076
    assert frame.format == "geojson"
    assert frame.source_crs == "EPSG:4326"  # declared CRS84
    assert frame.warnings == []  # declared, so no "may be GCJ-02" warning
    assert gdf["floors"].min() == 1 and gdf["floors"].max() == 28
    assert gdf["floors"].isna().sum() == 0
    assert (gdf["height"] == gdf["floors"] * 3.0).all()
    assert (gdf.geom_type == "MultiPolygon").sum() == 1
    assert (gdf.geom_type == "Polygon").sum() == 3075
    assert set(gdf["Id"]) == {0}  # kept as an extra attribute, useless as a key
    assert {"Id", "x", "y"} <= set(frame.extra_columns)
    assert "Floor" not in gdf.columns  # mapped to floors
    xmin, ymin, xmax, ymax = gdf.total_bounds
    assert (xmin, ymin) == pytest.approx((120.59687422, 31.29011245), abs=1e-7)
    assert (xmax, ymax) == pytest.approx((120.61746514, 31.31040911), abs=1e-7)
    # The octagonal 瑞光塔 (Ruiguang Pagoda), 12 floors.
    pagoda = gdf[gdf.geometry.contains(shapely.Point(120.61438, 31.29131))]
    assert pagoda["floors"].tolist() == [12]
    assert frame.location(6) == "feature 7"


def test_suzhou_buildings_lie_in_gusu_district_after_gcj02_conversion(shared_data: Path) -> None:
    districts = read_source(
        shared_data / "geo/suzhou_buildings/320500_full.json", layer="districts", crs="gcj02"
    ).gdf
    assert len(districts) == 10
    assert "320571" in set(districts["code"])  # 苏州工业园区: a DataV code, kept as text
    buildings = read_source(
        shared_data / "geo/suzhou_buildings/bd_demo_2.json", layer="buildings"
    ).gdf
    gusu = districts.loc[districts["code"] == "320508", "geometry"].iloc[0]
    assert districts.loc[districts["code"] == "320508", "name"].iloc[0] == "姑苏区"
    assert shapely.contains(gusu, buildings.geometry.representative_point().values).all()


def test_shenzhen_districts_gcj02(shared_data: Path) -> None:
    frame = read_source(
        shared_data / "geo/shenzhen/440300_full.json", layer="districts", crs="gcj02"
    )
    _assert_contract(frame)
    gdf = frame.gdf
    assert frame.source_crs == "GCJ-02"
    assert sorted(gdf["code"]) == [f"4403{i:02d}" for i in range(3, 12)]
    assert gdf.loc[gdf["name"] == "福田区", "code"].item() == "440304"
    assert set(gdf["parent_code"]) == {"440300"}  # DataV parent.adcode
    assert set(gdf["kind"]) == {"district"}  # DataV level, for the districts layer
    assert gdf["center"].iloc[0] == [114.123885, 22.555341]  # list, not a numpy array
    assert any("center" in w and "GCJ-02" in w for w in frame.warnings)


def test_undeclared_geojson_in_china_warns_it_may_be_gcj02(shared_data: Path) -> None:
    frame = read_source(shared_data / "geo/shenzhen/440300_full.json", layer="districts")
    assert frame.source_crs == "EPSG:4326"
    assert any("--crs gcj02" in w for w in frame.warnings)


def _boundary_vertex_distances(a, b) -> np.ndarray:
    """Distances (m, UTM 50N) from the vertices of a's outer boundary to b's."""
    to_utm = pyproj.Transformer.from_crs(4326, 32650, always_xy=True)

    def utm(geom):
        return shapely.transform(
            geom, lambda c: np.column_stack(to_utm.transform(c[:, 0], c[:, 1]))
        )

    outline_a = utm(shapely.boundary(shapely.union_all(a.geometry.values)))
    outline_b = utm(shapely.boundary(shapely.union_all(b.geometry.values)))
    return shapely.distance(shapely.points(shapely.get_coordinates(outline_a)), outline_b)


def test_gcj02_conversion_matches_the_wgs84_boundaries(shared_data: Path) -> None:
    """440300_full.json (GCJ-02) converted to WGS84 coincides with sz.json (WGS84).

    sz.json was itself made with the one-step approximate inverse (its own error up to ~1 m),
    so our exact inverse lands within about a metre of it, not on it: DESIGN §8's "under 1 m"
    is the round-trip error, tested in test_crs.py.
    """
    folder = shared_data / "geo/shenzhen"
    converted = read_source(folder / "440300_full.json", layer="districts", crs="gcj02").gdf
    raw = read_source(folder / "440300_full.json", layer="districts").gdf
    wgs = read_source(folder / "sz.json", layer="districts").gdf
    assert len(wgs) == 10
    after = _boundary_vertex_distances(converted, wgs)
    before = _boundary_vertex_distances(raw, wgs)
    assert np.median(before) > 300  # raw DataV is ~340 m off
    assert np.median(after) < 1.0
    assert np.percentile(after, 90) < 3.0


# --- GraphML ------------------------------------------------------------------------------------


def test_shenzhen_osmnx_graphml(shared_data: Path) -> None:
    frame = read_source(shared_data / "geo/shenzhen/G.graphml", layer="roads")
    _assert_contract(frame)
    gdf = frame.gdf
    assert frame.format == "graphml"
    assert frame.source_crs == "EPSG:4326"
    assert len(gdf) == 4009
    assert (gdf.geom_type == "LineString").all()
    assert sum(gdf["length"]) == pytest.approx(337_342.6, abs=0.1)
    assert all(isinstance(v, float) for v in gdf["length"])
    assert all(isinstance(v, bool) for v in gdf["oneway"])
    assert sum(gdf["oneway"]) == 1181
    multi = gdf[gdf["highway"].map(len) > 1]
    assert len(multi) == 50
    assert (multi["kind"] == multi["highway"].map(lambda h: h[0])).all()
    assert gdf.loc[gdf["highway"].map(len) == 1, "kind"].value_counts()["residential"] == 890
    assert gdf["name"].notna().sum() == 1714
    assert all(isinstance(o, list) and all(isinstance(i, int) for i in o) for o in gdf["osmid"])
    # Geometry and the OSMnx length attribute agree (explicit WKT and node-to-node alike);
    # OSMnx measures great circles on a sphere, hence a 0.5 % tolerance.
    geodesic = np.array([GEOD.geometry_length(g) for g in gdf.geometry])
    length = gdf["length"].astype(float).to_numpy()
    assert (np.abs(geodesic - length) <= 0.005 * length + 0.1).all()
    xmin, ymin, xmax, ymax = gdf.total_bounds
    # The node bbox of SOURCE.md; curved edge geometries may bulge a few metres beyond it.
    expected = (113.997019, 22.5166623, 114.0398832, 22.5505225)
    assert (xmin, ymin, xmax, ymax) == pytest.approx(expected, abs=1e-4)
    assert frame.location(0).startswith("edge 1 (")


# --- CityJSON -----------------------------------------------------------------------------------


def test_delft_cityjson_2(shared_data: Path) -> None:
    frame = read_source(shared_data / "cityjson/delft.json", layer="buildings")
    _assert_contract(frame)
    gdf = frame.gdf
    assert frame.format == "cityjson"
    assert frame.source_crs == "EPSG:7415"
    assert len(gdf) == 160  # of 570 city objects
    assert gdf["height"].min() == pytest.approx(0.75)
    assert gdf["height"].max() == pytest.approx(8.57)
    assert set(gdf["height_source"]) == {"measuredHeight"}
    assert set(gdf["lod"]) == {"1"}
    lon, lat = gdf.union_all().centroid.coords[0]
    assert lon == pytest.approx(4.366, abs=0.01) and lat == pytest.approx(52.012, abs=0.01)
    assert (gdf.geom_type.isin(["Polygon", "MultiPolygon"])).all()
    assert frame.location(0).startswith("building 1 (CityObject '")


def test_zurich_cityjson_1_1_parts_aggregated(shared_data: Path) -> None:
    frame = read_source(shared_data / "cityjson/zurich_subset_lod2.json", layer="buildings")
    _assert_contract(frame)
    gdf = frame.gdf
    assert frame.source_crs == "EPSG:2056"
    assert len(gdf) == 49
    assert sum(len(p) for p in gdf["parts"]) == 161
    assert round(gdf["height"].min(), 2) == 4.00
    assert round(gdf["height"].max(), 2) == 31.36
    assert gdf["height"].median() == pytest.approx(16.03, abs=0.01)
    assert set(gdf["height_source"]) == {"max z - min z"}
    xmin, ymin, xmax, ymax = gdf.total_bounds
    assert 8.4 < xmin < xmax < 8.7 and 47.3 < ymin < ymax < 47.5
    assert (gdf["class"] == "BB01").sum() == 38


def test_multi_lod_without_crs_names_the_fix(shared_data: Path) -> None:
    with pytest.raises(ImportFailed) as info:
        read_source(shared_data / "cityjson/multi_lod.json", layer="buildings")
    assert "referenceSystem" in info.value.detail
    assert "--crs EPSG:7415" in info.value.detail


def test_multi_lod_with_crs(shared_data: Path) -> None:
    path = shared_data / "cityjson/multi_lod.json"
    frame = read_source(path, layer="buildings", crs="EPSG:7415")
    _assert_contract(frame)
    gdf = frame.gdf
    assert len(gdf) == 10
    assert set(gdf["lod"]) == {"2.2"}  # highest by default
    assert set(gdf["footprint_source"]) == {"GroundSurface"}  # only 2.2 has semantics
    assert set(gdf["height_source"]) == {"max z - h_maaiveld"}
    assert 2.0 < gdf["height"].min() < gdf["height"].max() < 9.3
    first = gdf[gdf["cityjson_id"] == "6751773"].iloc[0]
    assert first["year_built"] == 1965  # oorspronkelijk_bouwjaar
    lon, lat = gdf.union_all().centroid.coords[0]
    assert lon == pytest.approx(5.37, abs=0.05) and lat == pytest.approx(51.72, abs=0.05)

    lod12 = read_source(path, layer="buildings", crs="EPSG:7415", lod="1.2").gdf
    assert set(lod12["lod"]) == {"1.2"}
    assert set(lod12["footprint_source"]) == {"projection"}
    # The same buildings: footprints of both LoDs overlap almost completely.
    overlap = shapely.area(shapely.intersection(lod12.geometry.values, gdf.geometry.values))
    assert (overlap / shapely.area(gdf.geometry.values) > 0.9).all()

    with pytest.raises(ImportFailed) as info:
        read_source(path, layer="buildings", crs="EPSG:7415", lod="3.0")
    assert "has no LoD 3.0 (it has: 1.2, 1.3, 2.2)" in info.value.detail
    assert len(info.value.errors) == 10


# --- OSM PBF ------------------------------------------------------------------------------------


def test_helsinki_pbf_buildings(shared_data: Path) -> None:
    frame = read_source(shared_data / "osm/Helsinki.osm.pbf", layer="buildings")
    _assert_contract(frame)
    gdf = frame.gdf
    assert frame.format == "osm_pbf"
    assert 400 < len(gdf) <= 494  # GDAL counts 494 building areas, some of them incomplete
    assert gdf.geom_type.isin(["Polygon", "MultiPolygon"]).all()
    heights = gdf["height"].dropna()
    assert 10 <= len(heights) <= 17  # 17 ways carry height=*; "some" buildings have heights
    assert heights.min() > 0
    assert gdf["floors"].notna().sum() > 100  # building:levels
    assert gdf["height"].isna().sum() > gdf["floors"].isna().sum()  # levels never become heights
    assert set(gdf["osm_type"]) == {"way", "relation"}
    assert all(isinstance(t, dict) and "building" in t for t in gdf["tags"])
    assert any("skipped" in w for w in frame.warnings)  # the extract is clipped
    xmin, ymin, xmax, ymax = gdf.total_bounds
    assert 24.9 < xmin < xmax < 24.97 and 60.15 < ymin < ymax < 60.19


def test_helsinki_pbf_roads_and_pois(shared_data: Path) -> None:
    roads = read_source(shared_data / "osm/Helsinki.osm.pbf", layer="roads")
    _assert_contract(roads)
    assert 2400 < len(roads.gdf) <= 2650  # 2,650 highway ways, some cut by the clip
    assert (roads.gdf.geom_type == "LineString").all()
    kinds = roads.gdf["kind"].value_counts()
    assert kinds["footway"] > 1000 and kinds["primary"] > 100
    pois = read_source(shared_data / "osm/Helsinki.osm.pbf", layer="pois")
    _assert_contract(pois)
    assert (pois.gdf.geom_type == "Point").all()
    assert len(pois.gdf) > 500
    assert pois.gdf["kind"].notna().all()
    assert {"node", "way"} <= set(pois.gdf["osm_type"])  # amenity areas become points


def test_pbf_refuses_other_layers(shared_data: Path) -> None:
    with pytest.raises(ImportFailed, match="buildings, roads, pois"):
        read_source(shared_data / "osm/Helsinki.osm.pbf", layer="districts")
