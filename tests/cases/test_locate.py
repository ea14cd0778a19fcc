"""The fast point locator of the case loop answers exactly as the base's Geocoder."""

from __future__ import annotations

from typing import Any

import numpy as np

from cityops.base import geo_service
from cityops.cases import service
from tests.cases.conftest import OUTSIDE


def test_point_locator_agrees_with_the_geocoder(city: Any) -> None:
    reference = geo_service.geocoder_for(city)
    fast = service._geocoder(city)
    rng = np.random.default_rng(3)
    points = [
        (float(x), float(y))
        for x, y in zip(
            rng.uniform(116.38, 116.52, 400), rng.uniform(39.89, 39.97, 400), strict=True
        )
    ]
    # shared edges and corners: the lowest code must win in both
    points += [(116.4125, 39.93), (116.425, 39.92), (116.45, 39.95), (116.40, 39.90), OUTSIDE]
    keys = ("district", "street", "community", "grid_code")
    for lon, lat in points:
        want = reference.locate_one(lon, lat)
        got = fast.locate_one(lon, lat)
        assert {k: got[k] or "" for k in keys} == {k: want[k] or "" for k in keys}, (lon, lat)


def test_area_fallback_matches_the_geocoder() -> None:
    import geopandas as gpd
    from shapely.geometry import box

    from cityops.base.geocode import Geocoder
    from cityops.cases.locate import PointLocator

    grids = gpd.GeoDataFrame(
        {"code": ["110105001001001", "110105001001002"]},
        geometry=[box(0.0, 0.0, 1.0, 1.0), box(1.0, 0.0, 2.0, 1.0)],
        crs="EPSG:4326",
    )
    areas = gpd.GeoDataFrame(
        {
            "code": ["110105", "110105001", "110105001001", "110105002"],
            "kind": ["district", "street", "community", "street"],
        },
        geometry=[box(-1, -1, 5, 5), box(0, 0, 3, 2), box(0, 0, 2.5, 1.5), box(3, 0, 5, 2)],
        crs="EPSG:4326",
    )
    reference, fast = Geocoder(grids, areas), PointLocator(grids, areas)
    rng = np.random.default_rng(5)
    keys = ("district", "street", "community", "grid_code")
    for lon, lat in zip(rng.uniform(-2, 6, 500), rng.uniform(-2, 6, 500), strict=True):
        want = reference.locate_one(float(lon), float(lat))
        got = fast.locate_one(float(lon), float(lat))
        assert {k: got[k] or "" for k in keys} == {k: want[k] or "" for k in keys}, (lon, lat)
