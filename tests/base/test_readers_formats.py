"""Readers on small good files of every format, the normalisation contract, and speed."""

from __future__ import annotations

import json
import time
import warnings
import zipfile
from pathlib import Path

import geopandas as gpd
import networkx as nx
import numpy as np
import osmium
import pandas as pd
import pyogrio
import pytest
import shapely

from cityops.base.importers import TYPED_COLUMNS, detect_format, read_source
from cityops.core.crs import wgs84_to_gcj02
from cityops.core.errors import ImportFailed


def _buildings(crs: int = 4326) -> gpd.GeoDataFrame:
    gdf = gpd.GeoDataFrame(
        {
            "Floors": [3, 12],
            "名称": ["一号楼", "二号楼"],
            "建成年代": [1998, 2005],
            "结构": ["砖混", "框架"],
            "用途": ["住宅", "商业"],
            "户数": [24, 0],
            "addr": ["人民路 1 号", None],
            "when": pd.to_datetime(["2020-01-01", "2021-05-01"]),
            "score": [0.5, np.nan],
        },
        geometry=[
            shapely.box(120.60, 31.30, 120.601, 31.301),
            shapely.box(120.61, 31.30, 120.611, 31.301),
        ],
        crs=4326,
    )
    return gdf.to_crs(crs)


def _check_buildings(frame) -> None:
    gdf = frame.gdf
    assert gdf["floors"].tolist() == [3, 12]
    assert gdf["name"].tolist() == ["一号楼", "二号楼"]
    assert gdf["year_built"].tolist() == [1998, 2005]
    assert gdf["structure"].tolist() == ["砖混", "框架"]
    assert gdf["use"].tolist() == ["住宅", "商业"]
    assert gdf["households"].tolist() == [24, 0]
    assert gdf["address"].iloc[0] == "人民路 1 号" and pd.isna(gdf["address"].iloc[1])
    assert gdf["height"].isna().all()  # floors present, height not invented
    assert gdf.total_bounds == pytest.approx((120.60, 31.30, 120.611, 31.301), abs=1e-6)
    assert gdf["score"].tolist() == [0.5, None]  # NaN → None (JSON null)
    assert str(gdf["when"].iloc[0]).startswith("2020-01-01")
    json.dumps(gdf[frame.extra_columns].to_dict("records"), allow_nan=False)


def test_geopackage_in_a_projected_crs(tmp_path: Path) -> None:
    path = tmp_path / "b.gpkg"
    _buildings(4547).to_file(path, layer="buildings")  # CGCS2000 3° GK zone 40
    frame = read_source(path, layer="buildings")
    assert frame.format == "gpkg" and frame.source_crs == "EPSG:4547"
    assert frame.source_layer == "buildings"
    _check_buildings(frame)


def test_shapefile_and_zipped_shapefile(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GDAL truncates the long field names, and says so
        _buildings(32651).drop(columns=["when"]).to_file(tmp_path / "b.shp", encoding="UTF-8")
    frame = read_source(tmp_path / "b.shp", layer="buildings")
    assert frame.format == "shapefile" and frame.source_crs == "EPSG:32651"
    assert frame.gdf["name"].tolist() == ["一号楼", "二号楼"]
    # "建成年代" is 12 bytes in UTF-8: the DBF's 10-byte limit cut it inside a character.
    assert any("10-byte limit" in w for w in frame.warnings)
    assert frame.gdf["floors"].tolist() == [3, 12]
    with zipfile.ZipFile(tmp_path / "b.zip", "w") as archive:
        for part in tmp_path.glob("b.*"):
            if part.suffix != ".zip":
                archive.write(part, part.name)
    zipped = read_source(tmp_path / "b.zip", layer="buildings")
    assert zipped.gdf["name"].tolist() == ["一号楼", "二号楼"]


def test_shapefile_in_gbk_without_cpg(tmp_path: Path) -> None:
    gdf = _buildings().drop(columns=["when"])
    gdf.to_file(tmp_path / "g.shp", encoding="GB18030")
    for cpg in tmp_path.glob("g.cpg"):
        cpg.unlink()
    frame = read_source(tmp_path / "g.shp", layer="buildings")
    assert frame.gdf["name"].tolist() == ["一号楼", "二号楼"]
    assert any("GB18030" in w for w in frame.warnings)


def test_geojson_with_chinese_field_names_and_units(tmp_path: Path) -> None:
    features = [
        {
            "type": "Feature",
            "properties": {"层数": "6层", "高度": "18.5 m", "类型": "住宅", "编码": "0101"},
            "geometry": shapely.geometry.mapping(shapely.box(114.05, 22.54, 114.051, 22.541)),
        }
    ]
    path = tmp_path / "cn.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}), "utf-8")
    gdf = read_source(path, layer="buildings").gdf
    assert gdf["floors"].tolist() == [6]
    assert gdf["height"].tolist() == [18.5]
    assert gdf["kind"].tolist() == ["住宅"]
    assert gdf["code"].tolist() == ["0101"]  # text stays text: leading zero kept


def test_gcj02_points_are_moved_to_wgs84(tmp_path: Path) -> None:
    lon, lat = 114.0579, 22.5431
    glon, glat = wgs84_to_gcj02(lon, lat)
    path = tmp_path / "amap.csv"
    path.write_text(f"名称,经度,纬度\n市民中心,{float(glon)!r},{float(glat)!r}\n", "utf-8")
    frame = read_source(path, layer="pois", crs="gcj02")
    point = frame.gdf.geometry.iloc[0]
    assert (point.x, point.y) == pytest.approx((lon, lat), abs=1e-8)
    assert frame.source_crs == "GCJ-02"
    bd = read_source(path, layer="pois", crs="bd09").gdf.geometry.iloc[0]
    assert abs(bd.x - lon) > 0.005  # BD-09 is a different offset again


def test_csv_reading_rules(tmp_path: Path) -> None:
    path = tmp_path / "pois.csv"
    path.write_text(
        "code,name,amenity,lng,lat,note\n0101,甲,school,114.05,22.54,\n0102,乙,hospital,114.06,22.55,x\n",
        "utf-8-sig",
    )
    frame = read_source(path, layer="pois")
    gdf = frame.gdf
    assert frame.format == "csv"
    assert gdf["code"].tolist() == ["0101", "0102"]
    assert gdf["kind"].tolist() == ["school", "hospital"]  # amenity → kind for pois
    assert (gdf.geom_type == "Point").all()
    assert gdf["note"].tolist() == [None, "x"]
    assert "lng" not in gdf.columns and "lat" not in gdf.columns
    assert any("--crs gcj02" in w for w in frame.warnings)  # China, no CRS: may be GCJ-02
    assert frame.location(1) == "row 3"


def test_csv_in_gb18030_with_wkt(tmp_path: Path) -> None:
    path = tmp_path / "bld.csv"
    wkt = shapely.box(114.05, 22.54, 114.051, 22.541).wkt
    path.write_text(f'名称,层数,WKT\n甲楼,5,"{wkt}"\n', encoding="gb18030")
    frame = read_source(path, layer="buildings")
    assert frame.gdf["name"].tolist() == ["甲楼"]
    assert frame.gdf["floors"].tolist() == [5]
    assert frame.gdf.geom_type.tolist() == ["Polygon"]
    assert any("GB18030" in w for w in frame.warnings)


def test_csv_in_a_projected_crs(tmp_path: Path) -> None:
    path = tmp_path / "xy.csv"
    path.write_text("name,x,y\nA,500000,2500000\n", "utf-8")
    with pytest.raises(ImportFailed, match="not longitude/latitude"):
        read_source(path, layer="pois")
    frame = read_source(path, layer="pois", crs="EPSG:32650")
    assert frame.gdf.geometry.iloc[0].x == pytest.approx(117.0, abs=1e-9)


def test_xlsx_ignores_empty_sheets(tmp_path: Path) -> None:
    path = tmp_path / "b.xlsx"
    with pd.ExcelWriter(path) as writer:
        pd.DataFrame({"名称": ["甲"], "经度": [114.05], "纬度": [22.54], "户数": [36]}).to_excel(
            writer, sheet_name="楼栋", index=False
        )
        pd.DataFrame().to_excel(writer, sheet_name="Sheet2", index=False)
    frame = read_source(path, layer="pois")
    assert frame.format == "xlsx" and frame.source_layer == "楼栋"
    assert frame.gdf["households"].tolist() == [36]
    assert frame.location(0) == "sheet 楼栋, row 2"


def test_graphml_without_crs_and_projected(tmp_path: Path) -> None:
    graph = nx.MultiDiGraph()
    graph.add_node(1, x="500000", y="2500000")
    graph.add_node(2, x="500100", y="2500000")
    graph.add_edge(1, 2, key=0, highway="['primary', 'trunk']", length="100.0", oneway="False")
    path = tmp_path / "g.graphml"
    nx.write_graphml(graph, path)
    with pytest.raises(ImportFailed, match="graph attribute 'crs'"):
        read_source(path, layer="roads")
    graph.graph["crs"] = "epsg:32650"
    nx.write_graphml(graph, path)
    frame = read_source(path, layer="roads")
    gdf = frame.gdf
    assert frame.source_crs == "EPSG:32650"
    assert gdf["kind"].tolist() == ["primary"]
    assert gdf["highway"].tolist() == [["primary", "trunk"]]
    assert gdf["oneway"].tolist() == [False]
    assert gdf["length"].tolist() == [100.0]
    assert gdf.geometry.iloc[0].coords[0] == pytest.approx((117.0, 22.6), abs=0.01)


def test_osm_tags_are_read_leniently(tmp_path: Path) -> None:
    path = tmp_path / "tiny.osm.pbf"
    nodes = [(1, 24.940, 60.170), (2, 24.941, 60.170), (3, 24.941, 60.171), (4, 24.940, 60.171)]
    writer = osmium.SimpleWriter(str(path))
    try:
        for node_id, lon, lat in nodes:
            writer.add_node(osmium.osm.mutable.Node(id=node_id, location=(lon, lat), tags={}))
        writer.add_node(
            osmium.osm.mutable.Node(id=5, location=(24.9405, 60.1705), tags={"amenity": "cafe"})
        )
        tags = {"building": "yes", "building:levels": "2;3", "height": "12 m", "name": "Talo"}
        writer.add_way(osmium.osm.mutable.Way(id=10, nodes=[1, 2, 3, 4, 1], tags=tags))
        writer.add_way(osmium.osm.mutable.Way(id=11, nodes=[1, 2], tags={"highway": "footway"}))
    finally:
        writer.close()
    frame = read_source(path, layer="buildings")
    gdf = frame.gdf
    assert gdf["height"].tolist() == [12.0]
    assert gdf["floors"].isna().all()  # "2;3" is not a number: left empty, with a warning
    assert any("building:levels" in w for w in frame.warnings)
    assert gdf["name"].tolist() == ["Talo"]
    assert gdf["kind"].tolist() == ["yes"]
    assert gdf.geom_type.tolist() == ["Polygon"]
    assert frame.location(0) == "feature 1 (way 10)"
    assert read_source(path, layer="roads").gdf["kind"].tolist() == ["footway"]
    assert read_source(path, layer="pois").gdf["kind"].tolist() == ["cafe"]


def test_progress_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "b.gpkg"
    _buildings().to_file(path)
    steps: list[str] = []
    read_source(path, layer="buildings", progress=lambda step, done, total: steps.append(step))
    assert steps[0] == "read" and steps[-1] == "done" and "validate" in steps


def test_detect_format(tmp_path: Path) -> None:
    city = tmp_path / "x.json"
    city.write_text('{"CityObjects": {}, "type": "CityJSON"}', "utf-8")
    geo = tmp_path / "y.json"
    geo.write_text('{"type": "FeatureCollection", "features": []}', "utf-8")
    assert detect_format(city) == "cityjson"
    assert detect_format(geo) == "geojson"
    assert detect_format(tmp_path / "a.osm.pbf") == "osm_pbf"
    assert detect_format(tmp_path / "a.SHP") == "shapefile"


def test_typed_columns_exist_even_when_absent(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("lon,lat\n114,22\n", "utf-8")
    gdf = read_source(path, layer="pois").gdf
    assert list(gdf.columns) == [*TYPED_COLUMNS, "geometry"]
    assert gdf[list(TYPED_COLUMNS)].isna().all().all()


@pytest.mark.slow
def test_large_geopackage_is_read_at_the_speed_of_the_read_itself(tmp_path: Path) -> None:
    """100,000 polygons: validation and normalisation cost at most ~4× a bare pyogrio read
    (GEOS validity dominates), measured in the same run because machines are noisy."""
    n = 100_000
    rng = np.random.default_rng(1)
    x = rng.uniform(120.5, 120.7, n)
    y = rng.uniform(31.2, 31.4, n)
    gdf = gpd.GeoDataFrame(
        {
            "floors": rng.integers(1, 30, n),
            "name": np.char.add("b", np.arange(n).astype(str)).astype(object),
            "height": rng.uniform(3, 90, n),
        },
        geometry=shapely.box(x, y, x + 0.0002, y + 0.00015),
        crs=4326,
    )
    path = tmp_path / "big.gpkg"
    pyogrio.write_dataframe(gdf, path, layer="buildings")
    start = time.perf_counter()
    pyogrio.read_dataframe(path)
    reference = time.perf_counter() - start
    start = time.perf_counter()
    frame = read_source(path, layer="buildings")
    ours = time.perf_counter() - start
    assert len(frame.gdf) == n
    assert frame.gdf["floors"].between(1, 29).all()
    assert ours < 5 * reference + 1.0, (ours, reference)


def test_reads_the_same_without_pyarrow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pyarrow is optional: pyogrio's NumPy path gives the same frame."""
    from cityops.base.importers import _ogr

    gpkg = tmp_path / "b.gpkg"
    _buildings(4547).to_file(gpkg, layer="buildings")
    datav = tmp_path / "d.json"
    datav.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "properties": {
                            "adcode": 440304,
                            "name": "福田区",
                            "parent": {"adcode": 440300},
                        },
                        "geometry": shapely.geometry.mapping(shapely.box(114.0, 22.5, 114.1, 22.6)),
                    }
                ],
            }
        ),
        "utf-8",
    )
    with_arrow = [read_source(gpkg, layer="buildings"), read_source(datav, layer="districts")]
    monkeypatch.setattr(_ogr, "HAVE_ARROW", False)
    without = [read_source(gpkg, layer="buildings"), read_source(datav, layer="districts")]
    for a, b in zip(with_arrow, without, strict=True):
        assert (
            a.gdf.drop(columns="geometry")
            .astype(object)
            .where(a.gdf.notna(), None)
            .equals(b.gdf.drop(columns="geometry").astype(object).where(b.gdf.notna(), None))
        )
        assert a.gdf.geometry.geom_equals_exact(b.gdf.geometry, 1e-9).all()
    assert without[1].gdf["parent_code"].tolist() == ["440300"]
    assert without[1].gdf["code"].tolist() == ["440304"]
