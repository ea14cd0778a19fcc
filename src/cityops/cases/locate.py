"""One point → district / street / community / grid codes, fast (GB/T 30428.3 地理编码).

:class:`cityops.base.geocode.Geocoder` is the reference and is built for arrays: for one point
it still assembles a pandas frame (about 2 ms, a fifth of a case creation). This locator
answers one point from the same polygons with one STRtree query and no pandas, with the same
rules — the lowest grid code wins on a shared edge; a point in no grid takes the codes of the
smallest area holding it (community, street, then district); codes come from the prefixes of
the grid code (REFERENCE Part A §2, §7). ``tests/cases/test_locate.py`` checks it against the
Geocoder point by point. It can go once the Geocoder has a single-point fast path.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import shapely
from shapely import STRtree

_LEVELS = (("district", 6), ("street", 9), ("community", 12))


class _Polygons:
    def __init__(self, codes: list[str], geoms: Any) -> None:
        order = np.argsort(np.asarray(codes, dtype=str), kind="stable")
        self.codes = [codes[i] for i in order]
        self.geoms = np.asarray(geoms, dtype=object)[order]
        shapely.prepare(self.geoms)
        self.tree = STRtree(self.geoms)

    def first(self, point: Any) -> str | None:
        hits = self.tree.query(point, predicate="intersects")
        return self.codes[int(hits.min())] if len(hits) else None


class PointLocator:
    """Built from the ``grids`` and ``areas`` layers (GeoDataFrames in WGS84)."""

    def __init__(self, grids: Any, areas: Any) -> None:
        self.grids = (
            _Polygons([str(c) for c in grids["code"]], grids.geometry.to_numpy())
            if len(grids)
            else None
        )
        self.areas: dict[str, _Polygons] = {}
        if len(areas) and "kind" in areas.columns:
            for kind, _width in _LEVELS:
                part = areas[areas["kind"].astype(str).str.lower() == kind]
                if len(part):
                    self.areas[kind] = _Polygons(
                        [str(c) for c in part["code"]], part.geometry.to_numpy()
                    )

    def locate_one(self, lon: float, lat: float) -> dict[str, str | None]:
        point = shapely.points(lon, lat)
        grid = self.grids.first(point) if self.grids is not None else None
        code = grid or ""
        if not grid:
            for kind in ("community", "street", "district"):
                layer = self.areas.get(kind)
                found = layer.first(point) if layer is not None else None
                if found:
                    code = found
                    break
        out: dict[str, str | None] = {
            level: code[:width] if len(code) >= width else "" for level, width in _LEVELS
        }
        out["grid_code"] = grid or ""
        return out
