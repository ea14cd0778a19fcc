"""End-to-end imports of the real shared data through ``cityops import`` / ``export``, on both
backends (skipped with a reason when ../shared/data is absent)."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import pandas as pd
import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from cityops.base.models import Feature, ImportRun
from cityops.cli import app

runner = CliRunner()


def cli(*args: str) -> tuple[int, str]:
    res = runner.invoke(app, list(args))
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.output


def count(db, layer: str) -> int:
    with db.read() as s:
        return s.scalar(select(func.count()).select_from(Feature).where(Feature.layer == layer))


def test_suzhou_buildings_with_floors_and_heights(db, shared_data: Path):
    path = shared_data / "geo/suzhou_buildings/bd_demo_2.json"
    code, out = cli("import", str(path), "--layer", "buildings", "--db", db.url)
    assert code == 0, out
    assert count(db, "buildings") == 3076
    with db.read() as s:
        rows = s.execute(
            select(Feature.floors, Feature.height).where(Feature.layer == "buildings")
        ).all()
    assert all(1 <= f <= 28 and h == pytest.approx(f * 3.0) for f, h in rows)
    assert sum(f for f, _ in rows) == pytest.approx(3076 * 2.975, abs=2)


def test_shenzhen_roads_and_districts(db, shared_data: Path):
    code, out = cli(
        "import", str(shared_data / "geo/shenzhen/G.graphml"), "--layer", "roads", "--db", db.url
    )
    assert code == 0, out
    assert count(db, "roads") == 4009
    areas = shared_data / "geo/shenzhen/440300_full.json"
    code, out = cli(
        "import", str(areas), "--layer", "areas", "--crs", "gcj02", "--key", "code", "--db", db.url
    )
    assert code == 0, out
    with db.read() as s:
        codes = sorted(s.scalars(select(Feature.code).where(Feature.layer == "areas")))
        futian = s.scalar(select(Feature).where(Feature.code == "440304"))
    assert codes == [str(c) for c in range(440303, 440312)]
    assert futian.name == "福田区"
    # every OSM node of the graph (WGS84) lies in 福田区 after GCJ-02 → WGS84
    with db.read() as s:
        roads = s.scalars(select(Feature.geom).where(Feature.layer == "roads")).all()
    inside = sum(futian.geom.buffer(1e-4).covers(g.centroid) for g in roads)
    assert inside >= 0.99 * len(roads)
    # re-import with the same key updates instead of duplicating
    code, out = cli(
        "import", str(areas), "--layer", "areas", "--crs", "gcj02", "--key", "code", "--db", db.url
    )
    assert code == 0, out
    assert count(db, "areas") == 9
    with db.read() as s:
        last = s.scalar(select(ImportRun).order_by(ImportRun.id.desc()).limit(1))
    assert (last.inserted, last.updated) == (0, 9)


def test_cityjson_with_heights(db, shared_data: Path):
    code, out = cli(
        "import", str(shared_data / "cityjson/delft.json"), "--layer", "buildings", "--db", db.url
    )
    assert code == 0, out
    assert count(db, "buildings") == 160
    with db.read() as s:
        heights = s.scalars(select(Feature.height).where(Feature.layer == "buildings")).all()
        b = s.scalar(select(Feature).limit(1))
    assert min(heights) == pytest.approx(0.75, abs=0.01)
    assert max(heights) == pytest.approx(8.57, abs=0.01)
    assert 4.3 < b.geom.centroid.x < 4.4 and 51.9 < b.geom.centroid.y < 52.1


def test_osm_pbf_buildings_roads(db, shared_data: Path):
    pbf = shared_data / "osm/Helsinki.osm.pbf"
    code, out = cli("import", str(pbf), "--layer", "buildings", "--db", db.url)
    assert code == 0, out
    code, out = cli("import", str(pbf), "--layer", "roads", "--db", db.url)
    assert code == 0, out
    assert count(db, "buildings") > 400
    assert count(db, "roads") > 2000
    with db.read() as s:
        with_height = s.scalar(
            select(func.count())
            .select_from(Feature)
            .where(Feature.layer == "buildings", Feature.height.is_not(None))
        )
        with_floors = s.scalar(
            select(func.count())
            .select_from(Feature)
            .where(Feature.layer == "buildings", Feature.floors.is_not(None))
        )
    # SOURCE.md: 17 ways carry `height`, 144 carry `building:levels`
    assert with_height >= 16 and with_floors >= 140


def test_bad_file_changes_nothing(db, tmp_path: Path):
    good = tmp_path / "ok.geojson"
    good.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "properties": {"floors": 3},
                        "geometry": {"type": "Point", "coordinates": [120.6, 31.3]},
                    }
                ],
            }
        )
    )
    assert cli("import", str(good), "--layer", "pois", "--db", db.url)[0] == 0
    bad = tmp_path / "bad.geojson"
    bad.write_text('{"type": "FeatureCollection", "features": [')
    code, out = cli("import", str(bad), "--layer", "pois", "--db", db.url)
    assert code == 2 and "bad.geojson" in out
    wrong = tmp_path / "wrong.geojson"
    wrong.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "properties": {"floors": 2},
                        "geometry": {"type": "Point", "coordinates": [120.61, 31.3]},
                    },
                    {
                        "type": "Feature",
                        "properties": {"floors": "many"},
                        "geometry": {"type": "Point", "coordinates": [120.62, 31.3]},
                    },
                ],
            }
        )
    )
    code, out = cli("import", str(wrong), "--layer", "pois", "--db", db.url)
    assert code == 2 and "floors" in out
    assert count(db, "pois") == 1


def test_gcj02_outside_china_refused(db, tmp_path: Path):
    f = tmp_path / "paris.geojson"
    f.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "properties": {},
                        "geometry": {"type": "Point", "coordinates": [2.35, 48.85]},
                    }
                ],
            }
        )
    )
    code, out = cli("import", str(f), "--layer", "pois", "--crs", "gcj02", "--db", db.url)
    assert code == 2 and "China" in out
    assert count(db, "pois") == 0


def test_export_roundtrip(db, tmp_path: Path, shared_data: Path):
    path = shared_data / "geo/suzhou_buildings/bd_demo_2.json"
    assert cli("import", str(path), "--layer", "buildings", "--db", db.url)[0] == 0
    for ext in ("geojson", "gpkg"):
        out = tmp_path / f"b.{ext}"
        code, msg = cli("export", "--layer", "buildings", "--out", str(out), "--db", db.url)
        assert code == 0, msg
        back = gpd.read_file(out)
        assert len(back) == 3076 and back["floors"].max() == 28
    xl = tmp_path / "b.xlsx"
    assert cli("export", "--layer", "buildings", "--out", str(xl), "--db", db.url)[0] == 0
    df = pd.read_excel(xl)
    assert len(df) == 3076 and {"lon", "lat", "wkt", "floors"} <= set(df.columns)
    code, msg = cli(
        "export", "--layer", "buildings", "--out", str(tmp_path / "b.kml"), "--db", db.url
    )
    assert code == 2 and "geojson" in msg
