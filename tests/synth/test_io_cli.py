"""GeoPackage round trip and the ``cityops generate-city`` command."""

from __future__ import annotations

import json

import numpy as np
import pyogrio
import shapely
from typer.testing import CliRunner

from cityops.synth import generate_city, write_city
from cityops.synth.cli import app


def test_gpkg_round_trip(tmp_path, city3k):
    path = write_city(city3k, tmp_path / "city.gpkg")
    layers = dict(pyogrio.list_layers(path).tolist())
    assert set(city3k) | {"synth_metadata"} == set(layers)
    assert layers["buildings"] == "Polygon" and layers["components"] == "Point"
    for name, gdf in city3k.items():
        back = pyogrio.read_dataframe(path, layer=name)
        assert len(back) == len(gdf), name
        assert back.crs.to_epsg() == 4326
        assert list(back.columns) == list(gdf.columns), name
        assert np.array_equal(
            shapely.to_wkb(back.geometry.array), shapely.to_wkb(gdf.geometry.array)
        ), name
    b = pyogrio.read_dataframe(path, layer="buildings")
    src = city3k["buildings"]
    for col in (
        "building_id",
        "floors",
        "year_built",
        "structure",
        "use",
        "address",
        "households",
        "precast_slab",
        "community_code",
    ):
        assert (b[col].to_numpy() == src[col].to_numpy()).all(), col
    meta = pyogrio.read_dataframe(path, layer="synth_metadata")
    summary = {k: json.loads(v) for k, v in zip(meta["key"], meta["value"], strict=True)}
    assert summary["population"] == city3k.summary["population"]
    assert summary["seed"] == 11
    assert not list(tmp_path.glob(".city.gpkg.*"))  # no temporary file left behind


def test_write_replaces_existing_file(tmp_path):
    path = tmp_path / "c.gpkg"
    write_city(generate_city(300, 1), path)
    write_city(generate_city(200, 2), path)
    assert len(pyogrio.read_dataframe(path, layer="buildings")) == 200


def test_cli_generate_city(tmp_path):
    out = tmp_path / "cli.gpkg"
    res = CliRunner().invoke(
        app, ["generate-city", "--buildings", "400", "--seed", "7", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert out.exists()
    assert len(pyogrio.read_dataframe(out, layer="buildings")) == 400
    assert "buildings" in res.output


def test_cli_rejects_bad_code(tmp_path):
    res = CliRunner().invoke(
        app,
        [
            "generate-city",
            "--buildings",
            "10",
            "--district-code",
            "12",
            "--out",
            str(tmp_path / "x.gpkg"),
        ],
    )
    assert res.exit_code == 2
    assert not (tmp_path / "x.gpkg").exists()
