"""OGC API – Features Part 1 Core: HTTP tests and a real third-party client (OWSLib) against a
running ``cityops serve``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import httpx
import pytest
from shapely.geometry import box

from cityops.base import service
from tests.conftest import make_user, token_for

GEOJSON = "application/geo+json"


def _grid_of_buildings(nx: int = 20, ny: int = 15) -> gpd.GeoDataFrame:
    geoms, floors = [], []
    for i in range(nx):
        for j in range(ny):
            x, y = 120.60 + i * 0.001, 31.30 + j * 0.001
            geoms.append(box(x, y, x + 0.0005, y + 0.0005))
            floors.append(1 + (i + j) % 9)
    return gpd.GeoDataFrame({"floors": floors}, geometry=geoms, crs="EPSG:4326")


@pytest.fixture
def city(db):
    service.import_frame(
        db, _grid_of_buildings(), layer="buildings", file="t", fmt="t", source_crs="EPSG:4326"
    )
    return db


def test_landing_conformance_collections(client, city):
    land = client.get("/ogcapi").json()
    rels = {link["rel"] for link in land["links"]}
    assert {"self", "service-desc", "conformance", "data"} <= rels
    conf = client.get("/ogcapi/conformance").json()["conformsTo"]
    assert "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core" in conf
    cols = client.get("/ogcapi/collections").json()["collections"]
    ids = [c["id"] for c in cols]
    assert {"areas", "grids", "buildings", "roads", "components", "pois", "shelters"} <= set(ids)
    b = next(c for c in cols if c["id"] == "buildings")
    minx, miny, maxx, maxy = b["extent"]["spatial"]["bbox"][0]
    assert (minx, miny) == (pytest.approx(120.60), pytest.approx(31.30))
    assert (maxx, maxy) == (pytest.approx(120.6195), pytest.approx(31.3145))


def test_items_paging_bbox_and_filters(client, city):
    r = client.get("/ogcapi/collections/buildings/items", params={"limit": 100})
    assert r.headers["content-type"].startswith(GEOJSON)
    fc = r.json()
    assert fc["numberMatched"] == 300 and fc["numberReturned"] == 100
    nxt = next(link for link in fc["links"] if link["rel"] == "next")["href"]
    fc2 = (
        httpx.Client(transport=client._transport, base_url="http://testserver")
        .get(nxt.replace("http://testserver", ""))
        .json()
    )
    assert fc2["features"][0]["id"] != fc["features"][0]["id"]
    bb = "120.6002,31.3002,120.6032,31.3022"
    fcb = client.get("/ogcapi/collections/buildings/items", params={"bbox": bb}).json()
    assert fcb["numberMatched"] == 4 * 3
    fcf = client.get("/ogcapi/collections/buildings/items", params={"floors": 9}).json()
    assert fcf["numberMatched"] > 0
    assert all(f["properties"]["floors"] == 9 for f in fcf["features"])
    one = fcb["features"][0]
    item = client.get(f"/ogcapi/collections/buildings/items/{one['id']}").json()
    assert item["geometry"]["type"] == "Polygon" and item["id"] == one["id"]


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"bbox": "1,2,3"}, 400),
        ({"bbox": "a,b,c,d"}, 400),
        ({"limit": 0}, 400),
        ({"bbox": "10,10,0,0"}, 400),
        ({"f": "xml"}, 400),
    ],
)
def test_items_bad_requests_use_ogc_exceptions(client, city, params, status):
    r = client.get("/ogcapi/collections/buildings/items", params=params)
    assert r.status_code == status
    body = r.json()
    assert set(body) == {"code", "description"} and body["description"]


def test_unknown_collection_and_item(client, city):
    r = client.get("/ogcapi/collections/nope/items")
    assert r.status_code == 404 and "buildings" in r.json()["description"]
    assert client.get("/ogcapi/collections/buildings/items/999999").status_code == 404


def test_private_collection_needs_sign_in(client, city):
    with city.write() as s:
        service.get_layer(s, "buildings").public = False
    assert client.get("/ogcapi/collections/buildings/items").status_code == 401
    make_user(city, "ana", ["analyst"])
    r = client.get("/ogcapi/collections/buildings/items", headers=token_for(client, "ana"))
    assert r.status_code == 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_owslib_client_against_running_server(city, tmp_path: Path):
    """A real third-party OGC API client (OWSLib) lists collections and pages with a bbox."""
    from owslib.ogcapi.features import Features

    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cityops.cli", "serve", "--db", city.url, "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90  # a loaded 2-core CI machine starts slowly
        while True:
            try:
                if httpx.get(f"{base}/api/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None:
                pytest.fail(f"server exited: {proc.stdout.read().decode()}")
            if time.monotonic() > deadline:
                pytest.fail("cityops serve did not answer /api/v1/health within 90 s")
            time.sleep(0.2)
        api = Features(f"{base}/ogcapi")
        assert "buildings" in api.feature_collections()
        bbox = [120.6002, 31.3002, 120.6098, 31.3098]  # 10 × 10 buildings
        seen, offset = [], 0
        while True:
            page = api.collection_items("buildings", bbox=bbox, limit=30, offset=offset)
            seen += [f["id"] for f in page["features"]]
            if not any(link["rel"] == "next" for link in page["links"]):
                break
            offset += 30
        assert len(seen) == len(set(seen)) == page["numberMatched"] == 100
    finally:
        proc.terminate()
        proc.wait(timeout=10)
