"""Import benchmark: a generated city's buildings into SQLite and into PostGIS with
``cityops import``, side by side with ``ogr2ogr`` (GDAL) loading the same GeoPackage layer into
the same PostgreSQL server (the reference). Target: ours ≥ 50 % of ogr2ogr's rate.

    python bench/bench_import.py [--buildings 1000000] [--skip-sqlite]
"""

from __future__ import annotations

import argparse
import datetime as dt
import sqlite3

from _common import CITYOPS, OUT, city_gpkg, fresh_pg_db, machine, need, psql, run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--buildings", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--skip-sqlite", action="store_true")
    args = ap.parse_args()
    need("ogr2ogr", "gdal-bin")
    need("psql", "postgresql-client")
    gpkg = city_gpkg(args.buildings, args.seed)
    n = args.buildings
    print(f"# import benchmark — {machine()} — {dt.datetime.now():%Y-%m-%d %H:%M}")
    print(f"file: {gpkg.name} (layer buildings, {n:,} polygons)")
    results: dict[str, float] = {}

    url = fresh_pg_db("cityops_bench_ogr")
    dsn = "PG:host=127.0.0.1 port=5432 user=postgres dbname=cityops_bench_ogr"
    results["ogr2ogr → PostGIS"] = run(
        [
            "ogr2ogr",
            "-f",
            "PostgreSQL",
            dsn,
            str(gpkg),
            "buildings",
            "-nln",
            "buildings_ogr",
            "-lco",
            "SPATIAL_INDEX=GIST",
            "-gt",
            "65536",
            "--config",
            "PG_USE_COPY",
            "YES",
        ]
    )
    got = int(psql("SELECT count(*) FROM buildings_ogr", url))
    assert got == n, f"ogr2ogr loaded {got}"

    url = fresh_pg_db("cityops_bench_import")
    run([*CITYOPS, "db", "upgrade", "--db", url])
    results["cityops import → PostGIS"] = run(
        [
            *CITYOPS,
            "import",
            str(gpkg),
            "--source-layer",
            "buildings",
            "--layer",
            "buildings",
            "--db",
            url,
        ]
    )
    got = int(psql("SELECT count(*) FROM features WHERE layer = 'buildings'", url))
    assert got == n, f"cityops loaded {got}"

    if not args.skip_sqlite:
        db = OUT / "bench_import.db"
        for suffix in ("", "-wal", "-shm"):
            db.with_name(db.name + suffix).unlink(missing_ok=True)
        sqlite_url = f"sqlite:///{db}"
        run([*CITYOPS, "db", "upgrade", "--db", sqlite_url])
        results["cityops import → SQLite"] = run(
            [
                *CITYOPS,
                "import",
                str(gpkg),
                "--source-layer",
                "buildings",
                "--layer",
                "buildings",
                "--db",
                sqlite_url,
            ]
        )
        # outside the timing: every row arrived and the R*Tree (packed by the big-load path)
        # is complete and consistent
        with sqlite3.connect(db) as con:
            got, in_tree = con.execute(
                "SELECT (SELECT count(*) FROM features WHERE layer = 'buildings'), "
                "(SELECT count(*) FROM features_rtree)"
            ).fetchone()
            check = con.execute("SELECT rtreecheck('features_rtree')").fetchone()[0]
        assert got == n == in_tree, f"cityops loaded {got}, R*Tree holds {in_tree}"
        assert check == "ok", f"R*Tree check: {check}"
    ref = n / results["ogr2ogr → PostGIS"]
    print(f"{'what':32} {'seconds':>9} {'features/s':>12} {'vs ogr2ogr':>11}")
    for what, secs in results.items():
        rate = n / secs
        print(f"{what:32} {secs:9.1f} {rate:12,.0f} {rate / ref:10.0%}")


if __name__ == "__main__":
    main()
