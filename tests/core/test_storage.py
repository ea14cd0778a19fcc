"""Contract tests of the storage layer on every backend (SQLite, PostgreSQL + PostGIS)."""

from __future__ import annotations

import datetime as dt

import geopandas as gpd
import pytest
import shapely
from shapely.geometry import Point, Polygon, box
from sqlalchemy import func, select, text

from cityops.base import service
from cityops.base.models import Feature, FeatureHistory
from cityops.core.errors import Conflict, ImportFailed, NotFound, ValidationFailed


def _buildings(n: int = 5, *, floors: list[object] | None = None) -> gpd.GeoDataFrame:
    geoms = [box(120.60 + i * 0.001, 31.30, 120.6005 + i * 0.001, 31.3005) for i in range(n)]
    data = {
        "bid": [f"B{i}" for i in range(n)],
        "floors": floors if floors is not None else [i + 1 for i in range(n)],
        "height": [3.0 * (i + 1) for i in range(n)],
        "owner": ["city"] * n,
    }
    return gpd.GeoDataFrame(data, geometry=geoms, crs="EPSG:4326")


def _count(db, layer: str = "buildings") -> int:
    with db.read() as s:
        return s.scalar(select(func.count()).select_from(Feature).where(Feature.layer == layer))


def _import(db, gdf, **kw):
    return service.import_frame(
        db,
        gdf,
        layer=kw.pop("layer", "buildings"),
        file="test.geojson",
        fmt="geojson",
        source_crs="EPSG:4326",
        **kw,
    )


def test_fixed_layers_exist(db):
    with db.read() as s:
        names = {layer.name for layer in s.scalars(select(service.Layer))}
    assert {"areas", "grids", "buildings", "roads", "components", "pois", "shelters"} <= names


def test_import_roundtrip_geometry_and_attributes(db):
    run = _import(db, _buildings(5))
    assert (run.inserted, run.updated) == (5, 0)
    with db.read() as s:
        rows = list(s.scalars(select(Feature).order_by(Feature.id)))
    assert [r.floors for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0].props == {"bid": "B0", "owner": "city"}
    assert rows[0].geom.equals(box(120.60, 31.30, 120.6005, 31.3005))
    assert rows[0].minx == pytest.approx(120.60)


def test_reimport_with_key_updates_and_keeps_history(db):
    _import(db, _buildings(3), key="bid")
    changed = _buildings(4)
    changed.loc[0, "floors"] = 9
    run = _import(db, changed, key="bid")
    assert (run.inserted, run.updated) == (1, 3)
    assert _count(db) == 4
    with db.read() as s:
        f = s.scalar(select(Feature).where(Feature.key == "B0"))
        assert f.floors == 9 and f.version == 2
        hist = service.feature_history(s, "buildings", f.id)
    assert [(h.version, h.op, h.floors) for h in hist] == [(1, "insert", 1), (2, "update", 9)]
    assert hist[0].valid_to is not None and hist[1].valid_to is None


def test_duplicate_keys_in_file_refused(db):
    gdf = _buildings(3)
    gdf.loc[2, "bid"] = "B0"
    with pytest.raises(ImportFailed, match="duplicate key 'B0'"):
        _import(db, gdf, key="bid")
    assert _count(db) == 0


def test_wrong_type_refused_and_nothing_written(db):
    _import(db, _buildings(2))
    with pytest.raises(ImportFailed) as err:
        _import(db, _buildings(3, floors=[1, "abc", 3]))
    assert err.value.errors[0].field == "feature 2.floors"
    assert _count(db) == 2


def test_invalid_and_empty_geometry_refused(db):
    bowtie = Polygon([(120.6, 31.3), (120.61, 31.31), (120.61, 31.3), (120.6, 31.31)])
    gdf = _buildings(2)
    gdf.loc[1, "geometry"] = bowtie
    with pytest.raises(ImportFailed, match=r"feature 2.*invalid geometry"):
        _import(db, gdf)
    gdf.loc[1, "geometry"] = Polygon()
    with pytest.raises(ImportFailed, match=r"feature 2.*missing or empty"):
        _import(db, gdf)
    assert _count(db) == 0


def test_bbox_query_is_exact(db):
    # an L-shaped building whose bounding box overlaps the query box but whose shape does not
    ell = Polygon([(0, 0), (10, 0), (10, 1), (1, 1), (1, 10), (0, 10)])
    ell = shapely.affinity.scale(ell, 0.001, 0.001, origin=(0, 0))
    ell = shapely.affinity.translate(ell, 120.6, 31.3)
    gdf = gpd.GeoDataFrame(
        {"name": ["ell", "inside"]},
        geometry=[ell, Point(120.6081, 31.3081).buffer(0.0001)],
        crs="EPSG:4326",
    )
    _import(db, gdf)
    q = (120.605, 31.305, 120.6095, 31.3095)
    with db.read() as s:
        page = service.query_items(s, "buildings", bbox=q, limit=10)
    assert [f.name for f in page.features] == ["inside"]
    assert page.number_matched == 1


def test_filters_and_paging(db):
    _import(db, _buildings(25))
    with db.read() as s:
        p1 = service.query_items(s, "buildings", limit=10, offset=0)
        p3 = service.query_items(s, "buildings", limit=10, offset=20)
        f = service.query_items(s, "buildings", filters={"floors": "7"})
        o = service.query_items(s, "buildings", filters={"bid": "B3"})
    assert p1.number_matched == 25 and len(p1.features) == 10 and len(p3.features) == 5
    assert [x.floors for x in f.features] == [7]
    assert [x.props["bid"] for x in o.features] == ["B3"]
    with db.read() as s, pytest.raises(ValidationFailed):
        service.query_items(s, "buildings", filters={"floors": "seven"})


def test_edit_history_and_as_of(db):
    _import(db, _buildings(1))
    with db.read() as s:
        fid = s.scalar(select(Feature.id))
    t0 = dt.datetime.now(dt.UTC)
    with db.write() as s:
        service.change_feature(
            s,
            "buildings",
            fid,
            {"properties": {"floors": 6, "note": "x"}},
            actor="alice",
            reason="survey 2026",
        )
    t1 = dt.datetime.now(dt.UTC)
    with db.write() as s:
        service.delete_feature(s, "buildings", fid, actor="bob", reason="demolished")
    with db.read() as s:
        hist = service.feature_history(s, "buildings", fid)
        assert [h.op for h in hist] == ["insert", "update", "delete"]
        assert hist[1].actor == "alice" and hist[1].reason == "survey 2026"
        assert service.as_of(s, "buildings", fid, t0).floors == 1
        assert service.as_of(s, "buildings", fid, t1).floors == 6
        with pytest.raises(NotFound):
            service.as_of(s, "buildings", fid, dt.datetime.now(dt.UTC) + dt.timedelta(1))
        with pytest.raises(NotFound):
            service.get_feature(s, "buildings", fid)


def test_stale_version_conflicts(db):
    _import(db, _buildings(1))
    with db.read() as s:
        fid = s.scalar(select(Feature.id))
    with db.write() as s:
        service.change_feature(
            s, "buildings", fid, {"properties": {"floors": 2}}, actor="a", reason="r"
        )
    with pytest.raises(Conflict), db.write() as s:
        service.change_feature(
            s,
            "buildings",
            fid,
            {"properties": {"floors": 3}},
            actor="b",
            reason="r",
            expected_version=1,
        )


def test_custom_layer_schema_validation(db):
    with db.write() as s:
        service.create_layer(
            s,
            "trees",
            "Street trees",
            actor="t",
            properties_schema={
                "type": "object",
                "properties": {"species": {"type": "string"}},
                "required": ["species"],
            },
        )
    good = gpd.GeoDataFrame({"species": ["ginkgo"]}, geometry=[Point(120.6, 31.3)], crs="EPSG:4326")
    _import(db, good, layer="trees")
    bad = gpd.GeoDataFrame({"age": [3]}, geometry=[Point(120.6, 31.3)], crs="EPSG:4326")
    with pytest.raises(ImportFailed, match="species"):
        _import(db, bad, layer="trees")
    assert _count(db, "trees") == 1


def test_ids_never_reused(db):
    _import(db, _buildings(2))
    with db.read() as s:
        last = s.scalar(select(func.max(Feature.id)))
    with db.write() as s:
        service.delete_feature(s, "buildings", last, actor="a", reason="r")
    _import(db, _buildings(1))
    with db.read() as s:
        assert s.scalar(select(func.max(Feature.id))) > last


def test_spatial_index_in_step(db):
    _import(db, _buildings(3))
    with db.read() as s:
        if db.is_sqlite:
            n = s.scalar(text("SELECT count(*) FROM features_rtree"))
            assert n == 3
        else:
            idx = s.scalar(
                text("SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_features_geom'")
            )
            assert "gist" in idx.lower()
    with db.read() as s:
        assert s.scalar(select(func.count()).select_from(FeatureHistory)) == 3


def test_bulk_import_rebuilds_spatial_index(db, monkeypatch):
    """A large import into a smaller table (PostgreSQL: GiST dropped and rebuilt in the same
    transaction) leaves a working index; a failing one leaves the index in place."""
    monkeypatch.setattr(service, "BULK_MIN_ROWS", 3)
    _import(db, _buildings(5))
    with db.read() as s:
        page = service.query_items(s, "buildings", bbox=(120.6, 31.3, 120.6012, 31.3005))
        assert page.number_matched == 2
        if db.is_postgres:
            assert (
                s.scalar(
                    text("SELECT count(*) FROM pg_indexes WHERE indexname = 'ix_features_geom'")
                )
                == 1
            )
    with pytest.raises(ImportFailed):
        _import(db, _buildings(8, floors=[1, 2, 3, 4, 5, 6, 7, "x"]))
    if db.is_postgres:
        with db.read() as s:
            assert (
                s.scalar(
                    text("SELECT count(*) FROM pg_indexes WHERE indexname = 'ix_features_geom'")
                )
                == 1
            )


def test_kept_value_is_one_value_when_processes_start_together(db) -> None:
    """Several server processes starting on a new database at once (``uvicorn --workers N``)
    each ask for the signing key: one key is generated, every caller gets it, none fails."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    from cityops.core.auth import signing_key
    from cityops.core.models import AppState

    barrier = Barrier(6)

    def start() -> str:
        barrier.wait()
        return signing_key(db, None)

    with ThreadPoolExecutor(6) as pool:
        keys = list(pool.map(lambda _: start(), range(6)))
    assert len(set(keys)) == 1
    with db.read() as s:
        assert s.get(AppState, "secret_key").value == keys[0]


def test_utc_datetime_text_on_sqlite_is_sqlalchemys() -> None:
    """UTCDateTime writes SQLite text in one step; it must be exactly the text SQLAlchemy's
    SQLite DATETIME writes (stored values are compared as text), and refuse naive values."""
    from sqlalchemy import DateTime
    from sqlalchemy.dialects import sqlite

    from cityops.core.db import UTCDateTime

    dialect = sqlite.dialect()
    ours = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
    theirs = DateTime().dialect_impl(dialect).bind_processor(dialect)
    cst = dt.timezone(dt.timedelta(hours=8))
    for value in (
        dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        dt.datetime(2025, 10, 1, 8, 0, 0, 5, tzinfo=cst),
        dt.datetime(999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC),
    ):
        assert ours(value) == theirs(value.astimezone(dt.UTC).replace(tzinfo=None))
    assert ours(None) is None
    with pytest.raises(ValueError, match="naive"):
        ours(dt.datetime(2026, 1, 1))
    # and read back: the text SQLAlchemy's SQLite DATETIME writes, with or without fractions
    read = UTCDateTime().dialect_impl(dialect).result_processor(dialect, None)
    parse = DateTime().dialect_impl(dialect).result_processor(dialect, None)
    for stored in (
        "2026-01-01 00:00:00.000000",
        "2025-10-01 00:00:00.000005",
        "2026-02-13 17:00:00",
    ):
        assert read(stored) == parse(stored).replace(tzinfo=dt.UTC)
        assert read(stored).tzinfo is dt.UTC
    assert read(None) is None
