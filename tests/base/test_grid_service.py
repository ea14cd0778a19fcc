"""Grids and geocoding wired to the database: build, store, geocode over HTTP and CLI, assign
grid workers."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import pandas as pd
import pytest
from shapely.geometry import LineString, box
from sqlalchemy import func, select
from typer.testing import CliRunner

from cityops.base import geo_service, grid_workers, service
from cityops.base.models import Feature
from cityops.cli import app
from cityops.core.errors import ValidationFailed
from tests.conftest import make_user, token_for

# a 1.2 km × 0.9 km district near Suzhou: one street, two communities, one road between them
X0, Y0 = 120.60, 31.30
DX, DY = 0.0126, 0.0081  # ≈ 1.2 km × 0.9 km at this latitude


def _areas() -> gpd.GeoDataFrame:
    mid = X0 + DX / 2
    rows = [
        ("320508", "姑苏区", "district", None, box(X0, Y0, X0 + DX, Y0 + DY)),
        ("320508001", "平江街道", "street", "320508", box(X0, Y0, X0 + DX, Y0 + DY)),
        ("320508001001", "东社区", "community", "320508001", box(mid, Y0, X0 + DX, Y0 + DY)),
        ("320508001002", "西社区", "community", "320508001", box(X0, Y0, mid, Y0 + DY)),
    ]
    return gpd.GeoDataFrame(
        {
            "code": [r[0] for r in rows],
            "name": [r[1] for r in rows],
            "kind": [r[2] for r in rows],
            "parent_code": [r[3] for r in rows],
        },
        geometry=[r[4] for r in rows],
        crs="EPSG:4326",
    )


def _roads() -> gpd.GeoDataFrame:
    ym = Y0 + DY / 2
    return gpd.GeoDataFrame(
        {"name": ["干将路"], "kind": ["primary"]},
        geometry=[LineString([(X0, ym), (X0 + DX, ym)])],
        crs="EPSG:4326",
    )


@pytest.fixture
def gridded(db):
    service.import_frame(
        db, _areas(), layer="areas", file="a", fmt="t", source_crs="EPSG:4326", key="code"
    )
    service.import_frame(db, _roads(), layer="roads", file="r", fmt="t", source_crs="EPSG:4326")
    n = geo_service.build_and_store_grids(db)
    assert 80 <= n <= 140  # ≈ 1.08 km² / 10,000 m²
    return db


def test_grids_stored_and_coded(gridded):
    with gridded.read() as s:
        codes = list(s.scalars(select(Feature.code).where(Feature.layer == "grids")))
    assert all(len(c) == 15 and c.startswith("320508001") for c in codes)
    assert len(set(codes)) == len(codes)
    # rebuilding keeps the same codes and retires nothing
    n_before = len(codes)
    assert geo_service.build_and_store_grids(gridded) == n_before
    with gridded.read() as s:
        assert (
            s.scalar(select(func.count()).select_from(Feature).where(Feature.layer == "grids"))
            == n_before
        )


def test_geocode_api(gridded, client):
    make_user(gridded, "w", ["grid_worker"])
    h = token_for(client, "w")
    r = client.get(
        "/api/v1/geocode", params={"lon": X0 + DX * 0.75, "lat": Y0 + DY * 0.25}, headers=h
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["community"] == "320508001001" and body["grid_code"].startswith("320508001001")
    assert body["district"] == "320508" and body["community_name"] == "东社区"
    r = client.post(
        "/api/v1/geocode",
        json=[{"lon": X0 + DX * 0.25, "lat": Y0 + DY * 0.75}, {"lon": 100.0, "lat": 20.0}],
        headers=h,
    )
    a, b = r.json()
    assert a["community"] == "320508001002" and b["grid_code"] is None
    assert client.get("/api/v1/geocode", params={"lon": 1, "lat": 2}).status_code == 401


def test_geocode_cli(gridded, tmp_path: Path):
    src = tmp_path / "in.csv"
    pd.DataFrame(
        {"id": [1, 2], "lon": [X0 + DX * 0.75, 0.0], "lat": [Y0 + DY * 0.5 + 0.001, 0.0]}
    ).to_csv(src, index=False)
    out = tmp_path / "out.csv"
    res = CliRunner().invoke(
        app, ["geocode", "--in", str(src), "--out", str(out), "--db", gridded.url]
    )
    assert res.exit_code == 0, res.output
    df = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert df.loc[0, "community"] == "320508001001" and len(df.loc[0, "grid_code"]) == 15
    assert df.loc[1, "grid_code"] == ""
    bad = tmp_path / "bad.csv"
    bad.write_text("x,y\n1,2\n")
    res = CliRunner().invoke(
        app, ["geocode", "--in", str(bad), "--out", str(out), "--db", gridded.url]
    )
    assert res.exit_code == 2 and "lon" in res.output


def test_grid_workers(gridded):
    make_user(gridded, "wang", ["grid_worker"])
    make_user(gridded, "li", ["handler"])
    with gridded.read() as s:
        codes = list(s.scalars(select(Feature.code).where(Feature.layer == "grids").limit(3)))
    assert grid_workers.assign(gridded, "wang", codes) == 3
    assert grid_workers.grids_of(gridded, "wang") == sorted(codes)
    with pytest.raises(ValidationFailed, match="not a grid_worker"):
        grid_workers.assign(gridded, "li", codes)
    with pytest.raises(ValidationFailed, match="not in the grids layer"):
        grid_workers.assign(gridded, "wang", ["320508001001999"])


def test_grid_build_without_communities(db):
    with pytest.raises(ValidationFailed, match="community"):
        geo_service.build_and_store_grids(db)
