"""Every refusal of the readers: small bad files written to tmp_path.

Each test checks that the whole file is refused with ImportFailed, that the message names the
place (feature/row/layer/line) and says what to do.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path
from typing import Any

import geopandas as gpd
import pandas as pd
import pyogrio
import pytest
import shapely

from cityops.base.importers import read_source
from cityops.core.errors import ImportFailed


def square(x: float = 114.05, y: float = 22.54, d: float = 0.001) -> dict[str, Any]:
    ring = [[x, y], [x + d, y], [x + d, y + d], [x, y + d], [x, y]]
    return {"type": "Polygon", "coordinates": [ring]}


def feature(geometry: dict[str, Any] | None, **properties: Any) -> dict[str, Any]:
    return {"type": "Feature", "properties": properties, "geometry": geometry}


def write_geojson(path: Path, features: list[dict[str, Any]], **members: Any) -> Path:
    path.write_text(
        json.dumps({"type": "FeatureCollection", **members, "features": features}),
        encoding="utf-8",
    )
    return path


def refused(path: Path, **kwargs: Any) -> ImportFailed:
    kwargs.setdefault("layer", "buildings")
    with pytest.raises(ImportFailed) as info:
        read_source(path, **kwargs)
    error = info.value
    assert str(path) in error.detail  # the message names the file
    assert error.status == 422
    return error


# --- the file itself ------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    assert "no such file" in refused(tmp_path / "nope.geojson").detail


def test_folder_and_empty_file(tmp_path: Path) -> None:
    (tmp_path / "d.shp").mkdir()
    assert "folder" in refused(tmp_path / "d.shp").detail
    (tmp_path / "e.geojson").write_bytes(b"")
    assert "empty" in refused(tmp_path / "e.geojson").detail


def test_unsupported_extension(tmp_path: Path) -> None:
    path = tmp_path / "plan.dwg"
    path.write_bytes(b"AC1032")
    error = refused(path)
    assert "unsupported file type '.dwg'" in error.detail
    assert "GeoPackage (.gpkg)" in error.detail


def test_old_xls_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "old.xls"
    path.write_bytes(b"\xd0\xcf\x11\xe0" + b"\x00" * 100)
    assert "save it as .xlsx" in refused(path).detail


def test_malformed_json_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.geojson"
    text = json.dumps({"type": "FeatureCollection", "features": [feature(square())]}, indent=1)
    path.write_text(text[:-30], encoding="utf-8")
    error = refused(path)
    assert error.location is not None and error.location.startswith("line ")
    assert "malformed JSON" in error.detail and "column" in error.detail


def test_json_that_is_not_geojson(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"name": "not a map"}', encoding="utf-8")
    assert "is JSON but not GeoJSON" in refused(path).detail


def test_text_that_is_not_json(tmp_path: Path) -> None:
    path = tmp_path / "notes.geojson"
    path.write_text("id,lon,lat\n1,114,22\n", encoding="utf-8")
    assert "is not JSON" in refused(path).detail


def test_topojson_is_not_geojson(tmp_path: Path) -> None:
    path = tmp_path / "topo.json"
    path.write_text('{"type": "Topology", "objects": {}, "arcs": []}', encoding="utf-8")
    assert "TopoJSON" in refused(path).detail


def test_gpkg_that_is_text(tmp_path: Path) -> None:
    path = tmp_path / "fake.gpkg"
    path.write_text("this is not a database", encoding="utf-8")
    error = refused(path)
    assert "is not a GeoPackage" in error.detail and "SQLite" in error.detail


def test_shp_that_is_not_a_shapefile(tmp_path: Path) -> None:
    path = tmp_path / "fake.shp"
    path.write_text("nope", encoding="utf-8")
    assert "is not a shapefile" in refused(path).detail


def test_zip_without_shapefile(tmp_path: Path) -> None:
    path = tmp_path / "docs.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    assert "contains no .shp" in refused(path).detail
    bad = tmp_path / "bad.zip"
    bad.write_text("not a zip", encoding="utf-8")
    assert "is not a zip archive" in refused(bad).detail


def test_xlsx_that_is_not_a_workbook(tmp_path: Path) -> None:
    path = tmp_path / "fake.xlsx"
    path.write_text("a,b\n1,2\n", encoding="utf-8")
    assert "is not an xlsx workbook" in refused(path).detail


def test_csv_that_is_a_workbook(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    pd.DataFrame({"lon": [114.0], "lat": [22.5]}).to_excel(tmp_path / "w.xlsx", index=False)
    path.write_bytes((tmp_path / "w.xlsx").read_bytes())
    assert "is an Excel workbook" in refused(path).detail


def test_pbf_that_is_not_osm(tmp_path: Path) -> None:
    path = tmp_path / "fake.osm.pbf"
    path.write_bytes(b"\x00\x01garbage" * 10)
    assert "is not an OSM PBF file" in refused(path).detail


def test_graphml_malformed_xml(tmp_path: Path) -> None:
    path = tmp_path / "g.graphml"
    path.write_text('<?xml version="1.0"?>\n<graphml><graph>\n<node id="1"></graph>', "utf-8")
    error = refused(path, layer="roads")
    assert "malformed XML" in error.detail
    assert error.location == "line 3, column 15"


def test_graphml_that_is_not_xml(tmp_path: Path) -> None:
    path = tmp_path / "g.graphml"
    path.write_text('{"nodes": []}', "utf-8")
    assert "is not GraphML" in refused(path, layer="roads").detail


def test_cityjson_unsupported_version_and_no_buildings(tmp_path: Path) -> None:
    path = tmp_path / "old.city.json"
    path.write_text(
        json.dumps({"type": "CityJSON", "version": "0.9", "CityObjects": {}, "vertices": []}),
        "utf-8",
    )
    assert "version '0.9' is not supported" in refused(path, crs="EPSG:7415").detail
    path.write_text(
        json.dumps(
            {
                "type": "CityJSON",
                "version": "2.0",
                "CityObjects": {"r1": {"type": "Road", "geometry": []}},
                "vertices": [],
            }
        ),
        "utf-8",
    )
    assert "no Building objects" in refused(path, crs="EPSG:7415").detail


def test_cityjson_with_bad_vertex_index(tmp_path: Path) -> None:
    doc = {
        "type": "CityJSON",
        "version": "2.0",
        "metadata": {"referenceSystem": "https://www.opengis.net/def/crs/EPSG/0/28992"},
        "CityObjects": {
            "b1": {
                "type": "Building",
                "geometry": [{"type": "MultiSurface", "lod": "1", "boundaries": [[[0, 1, 9]]]}],
            }
        },
        "vertices": [[85000, 447000, 0], [85010, 447000, 0], [85010, 447010, 0]],
    }
    path = tmp_path / "b.json"
    path.write_text(json.dumps(doc), "utf-8")
    error = refused(path)
    assert error.location == "building 1 (CityObject 'b1')"
    assert "vertex index" in error.detail


def test_cityjson_detected_by_content_in_a_json(tmp_path: Path) -> None:
    doc = {
        "CityObjects": {},
        "type": "CityJSON",
        "version": "2.0",
        "vertices": [],
    }
    path = tmp_path / "model.json"
    path.write_text(json.dumps(doc), "utf-8")
    # Read as CityJSON (not GeoJSON): the refusal is CityJSON's own.
    assert "no Building objects" in refused(path, crs="EPSG:7415").detail


# --- geometry ---------------------------------------------------------------------------------


def test_invalid_geometry_names_feature_and_reason(tmp_path: Path) -> None:
    bowtie = {
        "type": "Polygon",
        "coordinates": [[[114, 22], [114.001, 22.001], [114.001, 22], [114, 22.001], [114, 22]]],
    }
    path = write_geojson(tmp_path / "b.geojson", [feature(square())] * 11 + [feature(bowtie)])
    error = refused(path)
    assert error.location == "feature 12"
    assert "Self-intersection" in error.detail
    assert "repair it" in error.detail
    assert error.errors[0].field == "feature 12/geometry"


def test_missing_and_empty_geometry(tmp_path: Path) -> None:
    empty = {"type": "Polygon", "coordinates": []}
    path = write_geojson(tmp_path / "m.geojson", [feature(square()), feature(None), feature(empty)])
    error = refused(path)
    assert error.location == "feature 2"
    messages = {e.field: e.message for e in error.errors}
    assert "has no geometry" in messages["feature 2/geometry"]
    assert "empty geometry" in messages["feature 3/geometry"]


def test_unbuildable_geometry(tmp_path: Path) -> None:
    open_ring = {"type": "Polygon", "coordinates": [[[114, 22], [114.001, 22]]]}
    path = write_geojson(tmp_path / "r.geojson", [feature(square()), feature(open_ring)])
    error = refused(path)
    assert error.location == "feature 2"
    assert "cannot be built" in error.detail


def test_wrong_geometry_type_for_layer(tmp_path: Path) -> None:
    point = {"type": "Point", "coordinates": [114.05, 22.54]}
    path = write_geojson(tmp_path / "p.geojson", [feature(point)])
    error = refused(path, layer="buildings")
    assert "is a Point, but layer 'buildings' takes Polygon or MultiPolygon" in error.detail
    # A custom layer takes any geometry.
    assert len(read_source(path, layer="hydrants").gdf) == 1


def test_no_features(tmp_path: Path) -> None:
    path = write_geojson(tmp_path / "none.geojson", [])
    assert "contains no features" in refused(path).detail


# --- CRS --------------------------------------------------------------------------------------


def test_unknown_crs_given(tmp_path: Path) -> None:
    path = write_geojson(tmp_path / "a.geojson", [feature(square())])
    error = refused(path, crs="EPSG:999999")
    assert "--crs 'EPSG:999999'" in error.detail and "unknown CRS" in error.detail
    assert "GCJ02" in error.detail  # lists what is accepted


def test_unusable_declared_crs(tmp_path: Path) -> None:
    # A vertical CRS declared by the file cannot place anything on a map.
    path = tmp_path / "v.geojson"
    write_geojson(
        path,
        [feature(square())],
        crs={"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::5709"}},
    )
    error = refused(path)
    assert "declares a CRS that cannot be used" in error.detail
    assert "Vertical CRS" in error.detail and "--crs" in error.detail


def test_gcj02_declared_outside_china(tmp_path: Path) -> None:
    path = write_geojson(tmp_path / "delft.geojson", [feature(square(4.36, 52.01))])
    error = refused(path, crs="gcj02")
    assert error.location == "feature 1"
    assert "outside China" in error.detail and "GCJ-02" in error.detail
    error = refused(path, crs="bd09")
    assert "BD-09" in error.detail


def test_projected_coordinates_read_as_wgs84(tmp_path: Path) -> None:
    path = write_geojson(tmp_path / "utm.geojson", [feature(square(500000, 2500000, 10))])
    error = refused(path)
    assert "not longitude/latitude" in error.detail and "--crs" in error.detail
    # With the right CRS the same file reads.
    frame = read_source(path, layer="buildings", crs="EPSG:32650")
    assert frame.gdf.total_bounds[0] == pytest.approx(117.0, abs=1e-6)


def test_geojson_crs_member_is_honoured(tmp_path: Path) -> None:
    path = write_geojson(
        tmp_path / "m.geojson",
        [feature(square(12_696_000, 2_577_000, 100))],
        crs={"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::3857"}},
    )
    frame = read_source(path, layer="buildings")
    assert frame.source_crs == "EPSG:3857"
    assert 114.0 < frame.gdf.total_bounds[0] < 114.1
    # --crs overrides the declaration, with a warning.
    override = read_source(path, layer="buildings", crs="EPSG:32650")
    assert any("declares EPSG:3857 but --crs says EPSG:32650" in w for w in override.warnings)


def test_formats_without_a_crs_are_refused(tmp_path: Path) -> None:
    gdf = gpd.GeoDataFrame(
        {"floors": [3]}, geometry=[shapely.box(500000, 2500000, 500010, 2500010)]
    )
    gpkg = tmp_path / "nocrs.gpkg"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pyogrio warns that the file will have no CRS
        pyogrio.write_dataframe(gdf, gpkg)
    assert "declares no coordinate reference system" in refused(gpkg).detail
    assert len(read_source(gpkg, layer="buildings", crs="EPSG:32650").gdf) == 1


# --- attributes -------------------------------------------------------------------------------


def test_wrong_type_in_typed_field(tmp_path: Path) -> None:
    features = [feature(square(), floors=3) for _ in range(6)] + [feature(square(), floors="abc")]
    error = refused(write_geojson(tmp_path / "f.geojson", features))
    assert error.location == "feature 7"
    assert error.detail.endswith(
        "feature 7: field floors: 'abc' is not an integer; correct it or leave it empty"
    )
    assert error.errors[0].field == "feature 7/floors"


def test_all_field_errors_gathered_up_to_twenty(tmp_path: Path) -> None:
    features = [feature(square(), floors="x", height="tall") for _ in range(15)]
    error = refused(write_geojson(tmp_path / "many.geojson", features))
    assert len(error.errors) == 20
    assert "and 29 more problems; the first 20 are listed" in error.detail
    fields = {e.field.split("/")[1] for e in error.errors}
    assert fields == {"floors", "height"}


def test_several_kinds_of_problem_reported_together(tmp_path: Path) -> None:
    bowtie = {
        "type": "Polygon",
        "coordinates": [[[114, 22], [114.001, 22.001], [114.001, 22], [114, 22.001], [114, 22]]],
    }
    features = [
        feature(square(), floors=2.5),
        feature(bowtie, floors=3),
        feature(square(), year_built=0),
        feature(square(), height=-3),
    ]
    error = refused(write_geojson(tmp_path / "mix.geojson", features))
    messages = {e.field: e.message for e in error.errors}
    assert "2.5 is not an integer" in messages["feature 1/floors"]
    assert "Self-intersection" in messages["feature 2/geometry"]
    assert "0 is not a year such as 1998" in messages["feature 3/year_built"]
    assert "-3 is not between 0 and 1000 m" in messages["feature 4/height"]


def test_mapped_chinese_field_names_the_source_column(tmp_path: Path) -> None:
    features = [feature(square(), 层数="三")]
    error = refused(write_geojson(tmp_path / "cn.geojson", features))
    assert "field floors: '三' is not an integer (from '层数')" in error.detail


def test_text_field_with_an_object(tmp_path: Path) -> None:
    features = [feature(square(), name={"zh": "甲"})]
    error = refused(write_geojson(tmp_path / "obj.geojson", features))
    assert "field name" in error.detail and "is not text" in error.detail


# --- layers, sheets, shapefile parts ------------------------------------------------------------


def _two_layer_gpkg(path: Path) -> Path:
    gdf = gpd.GeoDataFrame(
        {"floors": [3]}, geometry=[shapely.box(120.6, 31.3, 120.601, 31.301)], crs=4326
    )
    gdf.to_file(path, layer="buildings_2020")
    gdf.to_file(path, layer="buildings_2024")
    return path


def test_gpkg_with_several_layers_needs_source_layer(tmp_path: Path) -> None:
    path = _two_layer_gpkg(tmp_path / "two.gpkg")
    error = refused(path)
    assert "has 2 layers with geometries: buildings_2020 (Polygon), buildings_2024" in error.detail
    assert "--source-layer" in error.detail
    error = refused(path, source_layer="roads")
    assert error.location == "layer roads"
    assert "buildings_2024" in error.detail
    frame = read_source(path, layer="buildings", source_layer="buildings_2024")
    assert frame.source_layer == "buildings_2024"
    assert frame.location(0) == "layer buildings_2024, feature 1"


def test_shapefile_without_prj_and_without_shx(tmp_path: Path) -> None:
    gdf = gpd.GeoDataFrame(
        {"floors": [3]}, geometry=[shapely.box(500000, 3460000, 500010, 3460010)], crs=32651
    )
    shp = tmp_path / "b.shp"
    gdf.to_file(shp)
    assert read_source(shp, layer="buildings").source_crs == "EPSG:32651"
    (tmp_path / "b.prj").unlink()
    error = refused(shp)
    assert "its .prj file is missing" in error.detail and "--crs" in error.detail
    assert read_source(shp, layer="buildings", crs="EPSG:32651").source_crs == "EPSG:32651"
    (tmp_path / "b.shx").unlink()
    assert "the .shx file beside it is missing" in refused(shp, crs="EPSG:32651").detail


def test_zip_with_several_shapefiles(tmp_path: Path) -> None:
    gdf = gpd.GeoDataFrame(
        {"floors": [3]}, geometry=[shapely.box(120.6, 31.3, 120.601, 31.301)], crs=4326
    )
    gdf.to_file(tmp_path / "a.shp")
    gdf.to_file(tmp_path / "b.shp")
    archive = tmp_path / "both.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for part in tmp_path.glob("[ab].*"):
            z.write(part, f"data/{part.name}")
    assert "contains 2 shapefiles: a, b" in refused(archive).detail
    assert len(read_source(archive, layer="buildings", source_layer="b").gdf) == 1


def test_xlsx_with_several_sheets(tmp_path: Path) -> None:
    path = tmp_path / "pois.xlsx"
    with pd.ExcelWriter(path) as writer:
        pd.DataFrame({"name": ["a"], "lng": [114.0], "lat": [22.5]}).to_excel(
            writer, sheet_name="一月", index=False
        )
        pd.DataFrame({"name": ["b"], "lng": [114.1], "lat": [22.6]}).to_excel(
            writer, sheet_name="二月", index=False
        )
    error = refused(path, layer="pois")
    assert "has 2 sheets with data: 一月, 二月" in error.detail
    assert refused(path, layer="pois", source_layer="三月").location == "sheet 三月"
    frame = read_source(path, layer="pois", source_layer="二月")
    assert frame.gdf["name"].tolist() == ["b"]


# --- tables ---------------------------------------------------------------------------------


def test_csv_bad_coordinate_names_the_spreadsheet_row(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("name,lon,lat\nA,114.05,22.54\nB,114.06,22.55\n\nC,abc,22.5\n", "utf-8")
    error = refused(path, layer="pois")
    # Header is row 1; the blank line is row 4; C is row 5 as a spreadsheet shows it.
    assert error.location == "row 5"
    assert "field lon: 'abc' is not a number" in error.detail


def test_csv_without_geometry_columns(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("a,b\n1,2\n", "utf-8")
    error = refused(path)
    assert "has no geometry columns" in error.detail and "its columns are: a, b" in error.detail


def test_csv_with_bad_wkt(tmp_path: Path) -> None:
    path = tmp_path / "w.csv"
    path.write_text(
        'id,wkt\n1,"POLYGON((114 22,114.001 22,114.001 22.001,114 22))"\n2,"POLYGON((114 22"\n',
        "utf-8",
    )
    error = refused(path)
    assert error.location == "row 3"
    assert "not WKT" in error.detail


def test_csv_missing_coordinates_is_missing_geometry(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("name,lon,lat\nA,114.05,\n", "utf-8")
    error = refused(path, layer="pois")
    assert error.location == "row 2" and "has no geometry" in error.detail
