"""The big-load path of imports (``bulk_min_rows``): on SQLite the R*Tree triggers are suspended,
the tree is packed once at the end (Sort-Tile-Recursive, straight into the R*Tree's shadow
tables) and the triggers come back in the same transaction; on PostgreSQL the GiST index is
rebuilt. Also the vectorised ``props`` JSON writer that feeds both."""

from __future__ import annotations

import json
import math
import sqlite3

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from sqlalchemy import func, select, text

from cityops.base import service
from cityops.base.models import Feature, FeatureHistory
from cityops.core.errors import ImportFailed
from cityops.core.geometry import pack_rtree, sqlite_rtree_load

TRIGGERS = ("features_rtree_ins", "features_rtree_upd", "features_rtree_del")


def _city(n: int, seed: int = 0, *, x0: float = 120.5, y0: float = 31.2) -> gpd.GeoDataFrame:
    rng = np.random.default_rng(seed)
    x = x0 + rng.uniform(0, 0.05, n)
    y = y0 + rng.uniform(0, 0.05, n)
    w = rng.uniform(1e-5, 5e-4, n)
    geoms = shapely.box(x, y, x + w, y + w)
    data = {
        "bid": [f"B{seed}-{i}" for i in range(n)],
        "floors": rng.integers(1, 30, n),
        "note": ['say "hi"\\n' if i % 7 == 0 else "普通" for i in range(n)],
    }
    return gpd.GeoDataFrame(data, geometry=geoms, crs="EPSG:4326")


def _import(db, gdf, **kw):
    return service.import_frame(
        db,
        gdf,
        layer=kw.pop("layer", "buildings"),
        file="city.gpkg",
        fmt="gpkg",
        source_crs="EPSG:4326",
        **kw,
    )


def _triggers(s) -> dict[str, str]:
    return dict(
        s.execute(
            text("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'f%'")
        ).all()
    )


def _assert_index_complete(db) -> None:
    """Every feature is in the spatial index and bbox queries find exactly what Shapely does."""
    with db.read() as s:
        rows = s.execute(select(Feature.id, Feature.layer, Feature.geom)).all()
        if db.is_sqlite:
            assert s.scalar(text("SELECT rtreecheck('features_rtree')")) == "ok"
            in_tree = {r[0] for r in s.execute(text("SELECT id FROM features_rtree"))}
            assert in_tree == {r[0] for r in rows}
            assert set(_triggers(s)) >= set(TRIGGERS)
        ids = np.array([r[0] for r in rows])
        layers = np.array([r[1] for r in rows])
        geoms = np.array([r[2] for r in rows], dtype=object)
        rng = np.random.default_rng(7)
        for _ in range(12):
            minx, miny = 120.5 + rng.uniform(0, 0.05, 2)
            size = rng.uniform(0.001, 0.03)
            q = (minx, miny, minx + size, miny + size)
            for layer in set(layers.tolist()):
                want = ids[(layers == layer) & shapely.intersects(geoms, shapely.box(*q))]
                page = service.query_items(s, layer, bbox=q, limit=100_000)
                assert sorted(f.id for f in page.features) == sorted(want.tolist())
                assert page.number_matched == len(want)


def test_big_load_builds_a_complete_index(db):
    run = _import(db, _city(3000), bulk_min_rows=1000)
    assert run.inserted == 3000
    _assert_index_complete(db)
    with db.read() as s:
        assert s.scalar(select(func.count()).select_from(FeatureHistory)) == 3000
        if db.is_sqlite:
            # a packed tree: full leaves, so about 3000 / 51 of them, not twice that
            assert s.scalar(text("SELECT count(*) FROM features_rtree_node")) < 3000 / 51 * 1.2
            assert s.scalar(text("PRAGMA cache_size")) == -65536  # given back
            props = s.scalar(select(Feature.props).where(Feature.id == 1))
            assert props == {"bid": "B0-0", "note": 'say "hi"\\n'}


def test_big_load_keeps_existing_features_and_triggers_work_after(db):
    _import(db, _city(400, seed=1), layer="pois", bulk_min_rows=10**9)  # row by row
    _import(db, _city(1000, seed=2), bulk_min_rows=500)  # table smaller: packed rebuild
    _assert_index_complete(db)
    # the triggers are back: edits after a big load keep the index in step
    with db.write() as s:
        f = service.create_feature(
            s,
            "buildings",
            {
                "type": "Polygon",
                "coordinates": [
                    [[120.51, 31.21], [120.52, 31.21], [120.52, 31.22], [120.51, 31.21]]
                ],
            },
            {"name": "new"},
            actor="t",
            reason="test",
        )
        new_id = f.id
    with db.write() as s:
        service.change_feature(
            s,
            "buildings",
            403,
            {"geometry": {"type": "Point", "coordinates": [120.549, 31.249]}},
            actor="t",
            reason="move",
        )
        service.delete_feature(s, "buildings", 405, actor="t", reason="gone")
    _assert_index_complete(db)
    with db.read() as s:
        got = service.query_items(s, "buildings", bbox=(120.5485, 31.2485, 120.5495, 31.2495))
        assert 403 in {f.id for f in got.features}
        got = service.query_items(s, "buildings", bbox=(120.515, 31.215, 120.516, 31.216))
        assert new_id in {f.id for f in got.features}


def test_small_load_into_a_bigger_table_uses_the_triggers(db):
    _import(db, _city(800, seed=3), bulk_min_rows=100)
    if db.is_sqlite:
        with db.read() as s:
            nodes = s.scalar(text("SELECT count(*) FROM features_rtree_node"))
    _import(db, _city(300, seed=4), bulk_min_rows=100)  # 300 < 800 rows: row by row
    _assert_index_complete(db)
    if db.is_sqlite:
        with db.read() as s:
            assert s.scalar(text("SELECT count(*) FROM features_rtree_node")) > nodes


def test_big_upsert_by_key_moves_the_boxes(db):
    gdf = _city(1200, seed=5)
    _import(db, gdf, key="bid", bulk_min_rows=500)
    moved = gdf.copy()
    moved["geometry"] = moved.geometry.translate(0.01, 0.0)
    run = _import(db, moved, key="bid", bulk_min_rows=500)
    assert (run.inserted, run.updated) == (0, 1200)
    _assert_index_complete(db)


def test_a_big_load_failing_midway_changes_nothing(db, monkeypatch):
    _import(db, _city(600, seed=6), bulk_min_rows=100)
    with db.read() as s:
        before = s.execute(select(Feature.id, Feature.minx).order_by(Feature.id)).all()
        if db.is_sqlite:
            triggers = _triggers(s)
            tree = s.execute(text("SELECT * FROM features_rtree ORDER BY id")).all()

    def boom(*_a, **_k):
        raise RuntimeError("disk on fire")

    # after every row is written and (SQLite) while the triggers are suspended
    monkeypatch.setattr(service, "_history_from_features", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        _import(db, _city(900, seed=7), bulk_min_rows=100)
    monkeypatch.undo()
    with db.read() as s:
        assert s.execute(select(Feature.id, Feature.minx).order_by(Feature.id)).all() == before
        if db.is_sqlite:
            assert _triggers(s) == triggers
            assert s.execute(text("SELECT * FROM features_rtree ORDER BY id")).all() == tree
            assert s.scalar(text("SELECT rtreecheck('features_rtree')")) == "ok"
            assert s.scalar(text("PRAGMA cache_size")) == -65536
    # a bad row refuses the file before anything is written
    bad = _city(900, seed=8)
    bad["floors"] = bad["floors"].astype(object)
    bad.loc[10, "floors"] = 2.5
    with pytest.raises(ImportFailed):
        _import(db, bad, bulk_min_rows=100)
    _assert_index_complete(db)
    # and the next big load still works
    _import(db, _city(700, seed=9), bulk_min_rows=100)
    _assert_index_complete(db)


def test_an_error_while_rows_stream_changes_nothing(db, monkeypatch):
    """The chunk producer thread fails halfway through the rows: the import fails with its
    error, nothing is written, the triggers are back, and no thread is left behind."""
    import threading

    _import(db, _city(300, seed=12), bulk_min_rows=100)
    monkeypatch.setattr(service, "CHUNK", 50)
    monkeypatch.setattr(service, "CSV_CHUNK", 50)
    real = service.PreparedRows.chunk

    def chunk(self, name, start, stop):
        if start >= 200:
            raise RuntimeError("cannot encode")
        return real(self, name, start, stop)

    monkeypatch.setattr(service.PreparedRows, "chunk", chunk)
    with pytest.raises(RuntimeError, match="cannot encode"):
        _import(db, _city(400, seed=13), bulk_min_rows=100)
    monkeypatch.undo()
    assert not [t for t in threading.enumerate() if t.name.startswith("import-chunks")]
    with db.read() as s:
        assert s.scalar(select(func.count()).select_from(Feature)) == 300
    _assert_index_complete(db)


def test_a_reader_sees_the_old_state_until_a_big_load_commits(db, monkeypatch):
    if not db.is_sqlite:
        pytest.skip("SQLite WAL readers")
    _import(db, _city(200, seed=10), bulk_min_rows=100)
    seen: list[int] = []
    real = service._sqlite_bulk_finish

    def finish(session, *a, **k):
        real(session, *a, **k)
        # inside the import's transaction: another connection still reads the last commit
        with db.read() as s:
            seen.append(service.query_items(s, "buildings", bbox=(120, 31, 121, 32)).number_matched)

    monkeypatch.setattr(service, "_sqlite_bulk_finish", finish)
    _import(db, _city(500, seed=11), bulk_min_rows=100)
    assert seen == [200]
    _assert_index_complete(db)


# ------------------------------------------------------------------------- the R*Tree packer
@pytest.mark.parametrize("n", [1, 50, 51, 52, 2601, 2602, 9000])
def test_packed_rtree_is_valid_and_finds_what_the_module_finds(n):
    rng = np.random.default_rng(n)
    x = rng.uniform(-180, 179, n)
    y = rng.uniform(-90, 89, n)
    bounds = np.column_stack([x, y, x + rng.uniform(0, 1, n), y + rng.uniform(0, 1, n)])
    ids = rng.permutation(np.arange(1, 3 * n + 1))[:n]
    con = sqlite3.connect(":memory:")
    con.execute("CREATE VIRTUAL TABLE packed USING rtree(id, minx, maxx, miny, maxy)")
    con.execute("CREATE VIRTUAL TABLE plain USING rtree(id, minx, maxx, miny, maxy)")
    sqlite_rtree_load(con.cursor(), "packed", ids, bounds)
    con.executemany(
        "INSERT INTO plain VALUES (?, ?, ?, ?, ?)",
        zip(
            ids.tolist(),
            x.tolist(),
            bounds[:, 2].tolist(),
            y.tolist(),
            bounds[:, 3].tolist(),
            strict=True,
        ),
    )
    assert con.execute("SELECT rtreecheck('packed')").fetchone()[0] == "ok"
    # the same float32 boxes as the module's own rounding (outward)
    assert (
        con.execute("SELECT * FROM packed ORDER BY id").fetchall()
        == con.execute("SELECT * FROM plain ORDER BY id").fetchall()
    )
    for _ in range(20):
        qx, qy = rng.uniform(-180, 170), rng.uniform(-90, 80)
        q = (qx + 10, qx, qy + 10, qy)
        sql = "SELECT id FROM {} WHERE minx <= ? AND maxx >= ? AND miny <= ? AND maxy >= ?"
        got = sorted(r[0] for r in con.execute(sql.format("packed"), q))
        assert got == sorted(r[0] for r in con.execute(sql.format("plain"), q))
    # and the module keeps working on a packed tree
    con.execute("DELETE FROM packed WHERE id % 3 = 0")
    con.executemany(
        "INSERT INTO packed VALUES (?, ?, ?, ?, ?)",
        [(10**9 + i, 1.0 * i, 1.0 * i + 1, 0.0, 1.0) for i in range(100)],
    )
    assert con.execute("SELECT rtreecheck('packed')").fetchone()[0] == "ok"


def test_packed_boxes_contain_the_exact_boxes():
    vals = np.array([120.123456789, -33.9999999999, 0.1, -0.1, 1e-7, 179.99999999])
    bounds = np.column_stack([vals, vals, vals, vals])
    packed = pack_rtree(np.arange(len(vals)), bounds, 1228)
    cells = packed.node_blobs[0][0, 4 : 4 + 24 * len(vals)].view(
        np.dtype([("id", ">i8"), ("x0", ">f4"), ("x1", ">f4"), ("y0", ">f4"), ("y1", ">f4")])
    )
    by_id = {int(c["id"]): c for c in cells}
    for i, v in enumerate(vals):
        c = by_id[i]
        assert float(c["x0"]) <= v <= float(c["x1"])
        assert float(c["y0"]) <= v <= float(c["y1"])
    assert packed.depth == 0


# ---------------------------------------------------------------------------- props as JSON
def test_props_json_matches_pandas():
    n = 9
    frame = pd.DataFrame(
        {
            "s": ['a"b', "back\\slash", "ctl\x01\n", "中文", "", None, "{x}", "/", "é"],
            "i": [0, -1, 2**40, None, 5, 6, 7, 8, 9],
            "f": [1.0, 0.1, float("nan"), float("inf"), None, -2.5, 1e20, 3, 1e-7],
            "b": [True, False, None, True, True, False, True, False, True],
            "o": [{"k": [1, 2]}, [1, "x"], None, {"n": float("nan")}, 1, "s", 2.5, True, []],
            "{brace}": list(range(n)),
        }
    )
    frame["i"] = frame["i"].astype(object).where(frame["i"].notna(), None)
    frame["f"] = frame["f"].astype(object)
    frame.loc[4, "f"] = None
    lines = service._json_lines(frame)
    expected = frame.to_json(orient="records", lines=True, force_ascii=False).splitlines()
    assert len(lines) == n
    for got, want in zip(lines, expected, strict=True):
        g, w = json.loads(got), json.loads(want)
        assert g.keys() == w.keys()
        for k in g:
            if isinstance(w[k], float):
                assert math.isclose(g[k], w[k], rel_tol=1e-9)
            else:
                assert g[k] == w[k], k
    assert json.loads(lines[0])["f"] == 1.0 and isinstance(json.loads(lines[0])["f"], float)
    assert json.loads(lines[3])["o"] == {"n": None}


def test_props_json_fast_paths():
    """Columns that need no per-value work (plain strings, numbers without nulls)."""
    frame = pd.DataFrame(
        {
            "s": ["a", "中文", "{x}", "", "it's"],
            "i": [1, -2, 3, 2**53, 0],
            "f": [1.0, 0.1, 1e20, -2.5e-7, 3],
            "b": [True, False, True, True, False],
            'k"ey': ["x"] * 5,
        },
        dtype=object,
    )
    lines = service._json_lines(frame)
    assert [json.loads(x) for x in lines] == frame.to_dict(orient="records")
    assert lines[0] == '{"s":"a","i":1,"f":1.0,"b":true,"k\\"ey":"x"}'


def test_import_keeps_an_awkward_actor(db):
    """SQLite writes values every row shares as SQL literals; one that cannot be (NUL, which
    PostgreSQL refuses anyway) is bound."""
    awkward = ["o'neil", "nul\x00byte"] if db.is_sqlite else ["o'neil", "semi;colon--"]
    _import(db, _city(3), actor=awkward[0])
    _import(db, _city(3, seed=1), actor=awkward[1], bulk_min_rows=2)
    with db.read() as s:
        got = s.scalars(select(Feature.updated_by).order_by(Feature.id)).all()
    assert got == [awkward[0]] * 3 + [awkward[1]] * 3


def test_props_json_falls_back_to_pandas_for_other_types():
    frame = pd.DataFrame(
        {"when": pd.to_datetime(["2024-01-02", None]), "n": [1, 2], "arr": [np.arange(2), None]}
    )
    lines = service._json_lines(frame)
    assert [json.loads(x)["n"] for x in lines] == [1, 2]
    assert json.loads(lines[0])["when"].startswith("2024-01-02")
