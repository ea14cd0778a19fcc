"""Code validation (DESIGN §8 "Codes")."""

from __future__ import annotations

import geopandas as gpd
import pandas as pd
import pytest
from shapely.geometry import box

from cityops.base import service
from cityops.base.codes import check_codes, significant_prefix
from cityops.core.errors import ImportFailed


def test_significant_prefix():
    assert significant_prefix("440300") == "4403"
    assert significant_prefix("440000") == "44"
    assert significant_prefix("440304") == "440304"
    assert significant_prefix("440304001") == "440304001"


def _check(layer, codes, parents, kinds):
    return check_codes(
        layer,
        pd.Series(codes, dtype=object),
        pd.Series(parents, dtype=object),
        pd.Series(kinds, dtype=object),
    )


def test_area_codes():
    ok = _check(
        "areas",
        ["440304", "440304001", "440304001002"],
        ["440300", "440304", "440304001"],
        ["district", "street", "community"],
    )
    assert ok == []
    errs = _check(
        "areas",
        ["44030", "440305001", "440304001002", "4403040010AB"],
        [None, "440304", "440304002", None],
        ["district", "street", "community", "community"],
    )
    fields = [e.field for e in errs]
    assert "feature 1.code" in fields and "feature 4.code" in fields
    assert "feature 2.parent_code" in fields and "feature 3.parent_code" in fields


def test_grid_and_component_codes():
    assert _check("grids", ["440304001002003"], ["440304001002"], [None]) == []
    assert _check("grids", ["44030400100200"], [None], [None])[0].field == "feature 1.code"
    assert (
        _check("components", ["3205080101000001", "32050801001000001"], [None, None], [None, None])
        == []
    )
    assert len(_check("components", ["320508010100001"], [None], [None])) == 1


def test_import_refuses_wrong_parent(db):
    gdf = gpd.GeoDataFrame(
        {"code": ["320508001"], "kind": ["street"], "parent_code": ["320506"]},
        geometry=[box(120.6, 31.3, 120.61, 31.31)],
        crs="EPSG:4326",
    )
    with pytest.raises(ImportFailed, match="parent"):
        service.import_frame(
            db, gdf, layer="areas", file="a.geojson", fmt="geojson", source_crs="EPSG:4326"
        )
