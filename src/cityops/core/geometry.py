"""The Geometry column type and spatial helpers for both backends (DESIGN §3 "Geometry").

* PostgreSQL: a PostGIS ``geometry(Geometry, 4326)`` column with a GiST index. Values travel
  as hex EWKB text, which PostGIS casts implicitly, so no PostGIS function wraps the binds.
* SQLite: ISO WKB in a BLOB; a bounding box (``minx``…``maxy`` columns of the owning table)
  feeds an R*Tree virtual table that SQL triggers keep in step (see the migrations), so bulk
  paths, raw SQL and migrations cannot desynchronise it. Exact predicates run in Shapely 2
  after the index filter.

Everything is stored in WGS84 (EPSG:4326).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry
from sqlalchemy.engine import Dialect
from sqlalchemy.types import LargeBinary, TypeDecorator, UserDefinedType

SRID = 4326


class _PostGISGeometry(UserDefinedType[Any]):
    cache_ok = True

    def get_col_spec(self, **_kw: Any) -> str:
        return f"geometry(Geometry,{SRID})"


class Geometry(TypeDecorator[BaseGeometry]):
    """A Shapely geometry in WGS84; PostGIS geometry on PostgreSQL, WKB BLOB on SQLite."""

    impl = LargeBinary
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(_PostGISGeometry())
        return dialect.type_descriptor(LargeBinary())

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if isinstance(value, bytes | str):
            return value
        return to_db(value, dialect.name)

    def process_result_value(self, value: Any, dialect: Dialect) -> BaseGeometry | None:
        if value is None:
            return None
        geom: BaseGeometry = shapely.from_wkb(value)
        return geom


def to_db(geom: BaseGeometry, dialect: str) -> bytes | str:
    """One geometry as the backend wants it: hex WKB text for PostGIS (a geometry without SRID
    takes the column's 4326), ISO WKB bytes for SQLite."""
    if dialect == "postgresql":
        text: str = shapely.to_wkb(geom, hex=True, flavor="iso")
        return text
    raw: bytes = shapely.to_wkb(geom, flavor="iso")
    return raw


def to_db_array(geoms: np.ndarray[Any, Any], dialect: str) -> np.ndarray[Any, Any]:
    """Vectorised :func:`to_db` for bulk paths."""
    if dialect == "postgresql":
        out: np.ndarray[Any, Any] = shapely.to_wkb(geoms, hex=True, flavor="iso")
        return out
    raw: np.ndarray[Any, Any] = shapely.to_wkb(geoms, flavor="iso")
    return raw


def bounds_array(geoms: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """(n, 4) array of minx, miny, maxx, maxy."""
    b: np.ndarray[Any, Any] = shapely.bounds(geoms)
    return b


def parse_bbox(text: str) -> tuple[float, float, float, float]:
    """``minx,miny,maxx,maxy`` → floats; raises ``ValueError`` with a reason."""
    parts = [p for p in text.split(",") if p.strip() != ""]
    if len(parts) not in (4, 6):
        raise ValueError("bbox needs 4 numbers: minLon,minLat,maxLon,maxLat")
    try:
        nums = [float(p) for p in parts]
    except ValueError as exc:
        raise ValueError("bbox values must be numbers: minLon,minLat,maxLon,maxLat") from exc
    if len(nums) == 6:
        nums = [nums[0], nums[1], nums[3], nums[4]]
    minx, miny, maxx, maxy = nums
    if minx > maxx or miny > maxy:
        raise ValueError("bbox minimum is larger than its maximum: minLon,minLat,maxLon,maxLat")
    if not (
        -180 <= minx <= 180 and -180 <= maxx <= 180 and -90 <= miny <= 90 and -90 <= maxy <= 90
    ):
        raise ValueError("bbox is outside lon -180..180 / lat -90..90 (WGS84 lon,lat order)")
    return minx, miny, maxx, maxy
