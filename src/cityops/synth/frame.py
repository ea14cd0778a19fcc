"""The generator's local frame: rotated metres around the centre, placed on the UTM zone.

The local ``(u, v)`` frame is a rigid rotation + translation of the UTM zone of the centre
(EPSG:326zz), the CRS the platform uses for metric work by default (DESIGN §8 "CRS"). So a
generated rectangle stays an exact rectangle, with exact areas, when reprojected to that zone;
output geometries are WGS84 lon/lat (EPSG:4326, DESIGN §3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pyproj
import shapely
from numpy.typing import NDArray

__all__ = ["Frame"]

F = NDArray[np.float64]


def _utm_epsg(lon: float, lat: float) -> int:
    zone = min(max(math.floor(((lon + 180.0) % 360.0) / 6.0) + 1, 1), 60)
    return (32600 if lat >= 0 else 32700) + zone


@dataclass
class Frame:
    lon0: float
    lat0: float
    theta: float  # rotation of the local frame, radians, counter-clockwise
    epsg: int = 0
    x0: float = 0.0
    y0: float = 0.0
    _to_ll: pyproj.Transformer | None = field(default=None, repr=False)

    @classmethod
    def at(cls, lon: float, lat: float, theta: float) -> Frame:
        if not (-180 <= lon <= 180 and -90 <= lat <= 90):
            raise ValueError(f"centre ({lon}, {lat}) is not a lon/lat pair")
        epsg = _utm_epsg(lon, lat)
        fwd = pyproj.Transformer.from_crs(4326, epsg, always_xy=True)
        x0, y0 = fwd.transform(lon, lat)
        inv = pyproj.Transformer.from_crs(epsg, 4326, always_xy=True)
        return cls(lon, lat, theta, epsg, float(x0), float(y0), inv)

    def to_xy(self, u: F, v: F) -> tuple[F, F]:
        """Local metres → UTM metres."""
        c, s = math.cos(self.theta), math.sin(self.theta)
        return self.x0 + c * u - s * v, self.y0 + s * u + c * v

    def to_lonlat(self, u: F, v: F) -> tuple[F, F]:
        x, y = self.to_xy(np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64))
        assert self._to_ll is not None
        lon, lat = self._to_ll.transform(x, y)
        return np.asarray(lon), np.asarray(lat)

    def geoms_to_lonlat(self, geoms: NDArray[np.object_]) -> NDArray[np.object_]:
        """Shapely geometries in the local frame → lon/lat (vectorised over all vertices)."""

        def fn(uv: F) -> F:
            lon, lat = self.to_lonlat(uv[:, 0], uv[:, 1])
            return np.column_stack([lon, lat])

        out: NDArray[np.object_] = shapely.transform(geoms, fn)
        return out

    @property
    def metric_crs(self) -> str:
        return f"EPSG:{self.epsg}"
