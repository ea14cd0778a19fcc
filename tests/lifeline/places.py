"""A coded place for lifeline tests that reach the case loop."""

from __future__ import annotations

from typing import Any


def seed_area(db: Any) -> None:
    """A coded district → street → community → grid around the test sensors (蜀山区-like
    codes), so that the case loop can place the cases (it refuses points outside every area)."""
    import geopandas as gpd
    from shapely.geometry import box

    from cityops.base import service as base

    cell = box(117.24, 31.79, 117.26, 31.81)
    areas = gpd.GeoDataFrame(
        {
            "code": ["340104", "340104001", "340104001001"],
            "name": ["测试区", "测试街道", "测试社区"],
            "kind": ["district", "street", "community"],
        },
        geometry=[cell, cell, cell],
        crs="EPSG:4326",
    )
    grids = gpd.GeoDataFrame(
        {"code": ["340104001001001"], "kind": ["unit_grid"]}, geometry=[cell], crs="EPSG:4326"
    )
    for layer, frame in (("areas", areas), ("grids", grids)):
        base.import_frame(
            db, frame, layer=layer, file="test", fmt="test", source_crs="EPSG:4326", key="code"
        )
