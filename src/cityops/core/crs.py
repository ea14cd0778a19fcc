"""Coordinate reference systems: parsing, GCJ-02 / BD-09 ⇄ WGS84, reprojection to WGS84.

Everything the platform stores is WGS84 longitude/latitude (EPSG:4326, DESIGN §3). Chinese
sources arrive in four families:

* **WGS84 / CGCS2000** (EPSG:4326 / EPSG:4490, 2000国家大地坐标系): the same to well under a
  metre for city work; pyproj handles them like any EPSG code.
* **Projected CRSs** (UTM, CGCS2000 Gauss–Krüger 3°/6° zones, city grids given as WKT/PROJ):
  pyproj, always in x=east / y=north order (``always_xy``).
* **GCJ-02** (国测局坐标, "Mars coordinates"): WGS84 passed through the obfuscating offset that
  GB 20263 requires for published maps (AMap/高德, Tencent, DataV). There is no EPSG code. The
  forward formula is the widely published reverse-engineered one (eviltransform, coordtransform,
  transbigdata); it is the one AMap's own data agrees with to centimetres. The inverse has no
  closed form: :func:`gcj02_to_wgs84` solves it by fixed-point iteration to < 1e-9° (≈ 0.1 mm),
  so the round trip WGS84 → GCJ-02 → WGS84 is exact for all practical purposes.
* **BD-09** (百度坐标): Baidu's second offset on top of GCJ-02; forward formula from Baidu's
  published JS SDK, inverse again by iteration.

GCJ-02 is by definition the identity outside China (:func:`in_china`); declaring GCJ-02 or
BD-09 for coordinates outside China is a wrong CRS, which the importers refuse.

All transforms are vectorised over NumPy arrays (no Python loop per point).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import numpy as np
import pyproj
import shapely
from numpy.typing import ArrayLike, NDArray
from pyproj.exceptions import CRSError

__all__ = [
    "WGS84",
    "CrsError",
    "CrsSpec",
    "bd09_to_gcj02",
    "bd09_to_wgs84",
    "gcj02_to_bd09",
    "gcj02_to_wgs84",
    "geometries_to_wgs84",
    "in_china",
    "parse_crs",
    "utm_crs_for",
    "wgs84_to_bd09",
    "wgs84_to_gcj02",
    "xy_to_wgs84",
]

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]

# Krasovsky 1940 ellipsoid, on which the GCJ-02 offset formula is defined.
_KRASOVSKY_A = 6378245.0
_KRASOVSKY_EE = 0.00669342162296594323
# Baidu's BD-09 constant: π·3000/180.
_X_PI = math.pi * 3000.0 / 180.0

# The rectangle every public GCJ-02 implementation (and AMap's SDK) uses as "China": the
# offset applies inside it and is the identity outside. It is deliberately coarse (it includes
# parts of Mongolia, Korea, Japan, South-East Asia); what matters is agreeing with the data's
# producer, not the political border.
CHINA_BBOX: tuple[float, float, float, float] = (72.004, 0.8293, 137.8347, 55.8271)

# The inverse transforms stop once the remaining error is below this (degrees): 1e-9° ≈ 0.1 mm,
# far below any survey accuracy and the "sub-centimetre round trip" the platform promises.
_INVERSE_TOLERANCE_DEG = 1e-9
# Upper bound of the fixed-point contraction factor (the offsets' derivative in °/°): ≤ 0.007
# for GCJ-02 anywhere in CHINA_BBOX (the sin(6πx) term dominates, divided by the Krasovsky
# radius at 55.8°N) and ≤ 0.002 for BD-09. A step of size e leaves an error ≤ e × this bound,
# which lets the loop stop one evaluation earlier than testing the residual itself.
_CONTRACTION_BOUND = 0.01
_INVERSE_MAX_ITERATIONS = 30


class CrsError(ValueError):
    """A CRS text that is unknown, invalid or unusable for 2D lon/lat work."""


# ---------------------------------------------------------------------------------------------
# GCJ-02 and BD-09 (pure NumPy)
# ---------------------------------------------------------------------------------------------


def _as_float(a: ArrayLike) -> FloatArray:
    return np.asarray(a, dtype=np.float64)


def in_china(lon: ArrayLike, lat: ArrayLike) -> BoolArray:
    """Mask of points inside the GCJ-02 "China" rectangle (:data:`CHINA_BBOX`).

    GCJ-02 (GB 20263 offset) is the identity outside this rectangle by definition, so it is
    also the test for "may these coordinates be GCJ-02 / BD-09 at all?".
    """
    x = _as_float(lon)
    y = _as_float(lat)
    west, south, east, north = CHINA_BBOX
    result: BoolArray = (x >= west) & (x <= east) & (y >= south) & (y <= north)
    return result


def _gcj_delta(lon: FloatArray, lat: FloatArray) -> tuple[FloatArray, FloatArray]:
    """The GCJ-02 offset (Δlon, Δlat) in degrees at WGS84 (lon, lat), ignoring the China test."""
    x = lon - 105.0
    y = lat - 35.0
    sqrt_abs_x = np.sqrt(np.abs(x))
    common = (20.0 * np.sin(6.0 * x * np.pi) + 20.0 * np.sin(2.0 * x * np.pi)) * 2.0 / 3.0
    d_lat = -100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * sqrt_abs_x + common
    d_lat += (20.0 * np.sin(y * np.pi) + 40.0 * np.sin(y / 3.0 * np.pi)) * 2.0 / 3.0
    d_lat += (160.0 * np.sin(y / 12.0 * np.pi) + 320.0 * np.sin(y * np.pi / 30.0)) * 2.0 / 3.0
    d_lon = 300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * sqrt_abs_x + common
    d_lon += (20.0 * np.sin(x * np.pi) + 40.0 * np.sin(x / 3.0 * np.pi)) * 2.0 / 3.0
    d_lon += (150.0 * np.sin(x / 12.0 * np.pi) + 300.0 * np.sin(x / 30.0 * np.pi)) * 2.0 / 3.0

    rad_lat = lat / 180.0 * np.pi
    magic = 1.0 - _KRASOVSKY_EE * np.sin(rad_lat) ** 2
    sqrt_magic = np.sqrt(magic)
    d_lat = (d_lat * 180.0) / (
        (_KRASOVSKY_A * (1.0 - _KRASOVSKY_EE)) / (magic * sqrt_magic) * np.pi
    )
    d_lon = (d_lon * 180.0) / (_KRASOVSKY_A / sqrt_magic * np.cos(rad_lat) * np.pi)
    return d_lon, d_lat


def wgs84_to_gcj02(lon: ArrayLike, lat: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """WGS84 → GCJ-02 (GB 20263 offset, public formula); the identity outside China."""
    x = _as_float(lon)
    y = _as_float(lat)
    d_lon, d_lat = _gcj_delta(x, y)
    inside = in_china(x, y)
    return np.where(inside, x + d_lon, x), np.where(inside, y + d_lat, y)


def _invert(
    forward: Callable[[FloatArray, FloatArray], tuple[FloatArray, FloatArray]],
    tx: FloatArray,
    ty: FloatArray,
    x0: FloatArray,
    y0: FloatArray,
) -> tuple[FloatArray, FloatArray]:
    """Solve forward(x, y) = (tx, ty) by fixed-point iteration from (x0, y0).

    The offsets are small and vary slowly (their Jacobian is within 0.01 of the identity), so
    ``x ← x + (target − forward(x))`` contracts by at least 100× per step: two to three steps
    reach the tolerance. Only unconverged points are re-evaluated.
    """
    shape = np.shape(tx)
    tx = np.ravel(tx)
    ty = np.ravel(ty)
    x = np.array(x0, dtype=np.float64).ravel()
    y = np.array(y0, dtype=np.float64).ravel()
    active = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
    for _ in range(_INVERSE_MAX_ITERATIONS):
        if active.size == 0:
            break
        fx, fy = forward(x[active], y[active])
        ex = tx[active] - fx
        ey = ty[active] - fy
        x[active] += ex
        y[active] += ey
        step = np.maximum(np.abs(ex), np.abs(ey))
        still = step * _CONTRACTION_BOUND > _INVERSE_TOLERANCE_DEG
        active = active[still]
    return x.reshape(shape), y.reshape(shape)


def gcj02_to_wgs84(lon: ArrayLike, lat: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """GCJ-02 → WGS84: exact inverse of :func:`wgs84_to_gcj02` by iteration (round trip < 1 mm).

    The one-step approximation used by many libraries (subtract the offset computed at the
    GCJ-02 point) is off by up to ~1 m; iterating removes that error.
    """
    gx = _as_float(lon)
    gy = _as_float(lat)
    d_lon, d_lat = _gcj_delta(gx, gy)
    inside = in_china(gx, gy)
    x0 = np.where(inside, gx - d_lon, gx)
    y0 = np.where(inside, gy - d_lat, gy)
    return _invert(wgs84_to_gcj02, gx, gy, x0, y0)


def gcj02_to_bd09(lon: ArrayLike, lat: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """GCJ-02 → BD-09 (Baidu's published offset on top of GCJ-02)."""
    x = _as_float(lon)
    y = _as_float(lat)
    z = np.sqrt(x * x + y * y) + 0.00002 * np.sin(y * _X_PI)
    theta = np.arctan2(y, x) + 0.000003 * np.cos(x * _X_PI)
    return z * np.cos(theta) + 0.0065, z * np.sin(theta) + 0.006


def bd09_to_gcj02(lon: ArrayLike, lat: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """BD-09 → GCJ-02: Baidu's approximate inverse refined by iteration (round trip < 1 mm)."""
    bx = _as_float(lon)
    by = _as_float(lat)
    x = bx - 0.0065
    y = by - 0.006
    z = np.sqrt(x * x + y * y) - 0.00002 * np.sin(y * _X_PI)
    theta = np.arctan2(y, x) - 0.000003 * np.cos(x * _X_PI)
    return _invert(gcj02_to_bd09, bx, by, z * np.cos(theta), z * np.sin(theta))


def wgs84_to_bd09(lon: ArrayLike, lat: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """WGS84 → GCJ-02 → BD-09."""
    return gcj02_to_bd09(*wgs84_to_gcj02(lon, lat))


def bd09_to_wgs84(lon: ArrayLike, lat: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """BD-09 → GCJ-02 → WGS84 (both steps iterated to the exact inverse)."""
    return gcj02_to_wgs84(*bd09_to_gcj02(lon, lat))


# ---------------------------------------------------------------------------------------------
# Parsing CRS texts
# ---------------------------------------------------------------------------------------------

CrsKind = Literal["proj", "gcj02", "bd09"]

WGS84: pyproj.CRS = pyproj.CRS.from_epsg(4326)


@dataclass(frozen=True)
class CrsSpec:
    """A parsed source CRS.

    ``kind`` is ``"proj"`` for anything pyproj knows, or ``"gcj02"`` / ``"bd09"`` for the two
    Chinese offset systems (whose ``crs`` is WGS84, the datum they are built on). ``name`` is the
    canonical text to record ("EPSG:4490", "GCJ-02", a WKT/PROJ string). ``crs`` is the
    *horizontal* CRS used to transform: for a compound CRS (e.g. EPSG:7415 = RD New + NAP
    height) its horizontal part, with heights passed through unchanged.
    """

    kind: CrsKind
    name: str
    crs: pyproj.CRS

    @property
    def is_wgs84(self) -> bool:
        """True when coordinates are already WGS84 lon/lat (no transform needed)."""
        return self.kind == "proj" and _is_wgs84(self.crs)

    @property
    def is_offset(self) -> bool:
        """True for GCJ-02 / BD-09, which are only defined inside China."""
        return self.kind != "proj"

    def __str__(self) -> str:
        return self.name


def _is_wgs84(crs: pyproj.CRS) -> bool:
    return bool(crs.equals(WGS84, ignore_axis_order=True))


_ALIASES: dict[str, tuple[CrsKind, str]] = {
    "wgs84": ("proj", "EPSG:4326"),
    "wgs-84": ("proj", "EPSG:4326"),
    "wgs 84": ("proj", "EPSG:4326"),
    "wgs_84": ("proj", "EPSG:4326"),
    "wgs1984": ("proj", "EPSG:4326"),
    "crs84": ("proj", "EPSG:4326"),
    "cgcs2000": ("proj", "EPSG:4490"),
    "cgcs 2000": ("proj", "EPSG:4490"),
    "cgcs-2000": ("proj", "EPSG:4490"),
    "gcj02": ("gcj02", "GCJ-02"),
    "gcj-02": ("gcj02", "GCJ-02"),
    "gcj_02": ("gcj02", "GCJ-02"),
    "gcj": ("gcj02", "GCJ-02"),
    "bd09": ("bd09", "BD-09"),
    "bd-09": ("bd09", "BD-09"),
    "bd_09": ("bd09", "BD-09"),
    "bd09ll": ("bd09", "BD-09"),
}

# OGC CRS URIs/URNs (CityJSON's referenceSystem, GML srsName): take the EPSG code.
_EPSG_URI = re.compile(
    r"^(?:https?://www\.opengis\.net/def/crs/epsg/\d+(?:\.\d+)*/|urn:ogc:def:crs:epsg:[\d.]*:)"
    r"(\d+)$",
    re.IGNORECASE,
)

_ACCEPTED = (
    "an EPSG code (EPSG:4490, 4490, epsg:32650), CGCS2000, WGS84, GCJ02, BD09, an OGC CRS URL, "
    "or a WKT/PROJ string"
)


def parse_crs(text: str) -> CrsSpec:
    """Parse a user- or file-given CRS text into a :class:`CrsSpec`.

    Accepts "EPSG:4490", "4490", "epsg:32650", "CGCS2000" (→ EPSG:4490, GB/T 2000 国家大地坐标系),
    "wgs84", "gcj02", "bd09", OGC URIs such as ``https://www.opengis.net/def/crs/EPSG/0/7415``
    or ``urn:ogc:def:crs:EPSG::4326`` (CityJSON ``referenceSystem``, GeoJSON 2008 ``crs``), and
    any WKT or PROJ string pyproj understands. Compound CRSs keep their horizontal part.

    Raises :class:`CrsError` with the accepted forms for anything else, and for CRSs that have
    no horizontal 2D part (vertical-only, geocentric, engineering).
    """
    if not isinstance(text, str) or not text.strip():
        raise CrsError(f"empty CRS; give {_ACCEPTED}")
    raw = text.strip()
    key = raw.lower()
    if key in _ALIASES:
        kind, name = _ALIASES[key]
        if kind != "proj":
            return CrsSpec(kind=kind, name=name, crs=WGS84)
        return _spec_from_proj(name, name)
    if key.isdigit():
        return _spec_from_proj(f"EPSG:{int(key)}", raw)
    match = _EPSG_URI.match(raw)
    if match:
        return _spec_from_proj(f"EPSG:{int(match.group(1))}", raw)
    if key.startswith("epsg:"):
        code = key[5:].strip()
        if code.isdigit():
            return _spec_from_proj(f"EPSG:{int(code)}", raw)
    return _spec_from_proj(raw, raw)


@lru_cache(maxsize=256)
def _spec_from_proj(user_input: str, original: str) -> CrsSpec:
    try:
        crs = pyproj.CRS.from_user_input(user_input)
    except CRSError as exc:
        raise CrsError(f"unknown CRS {original!r}; give {_ACCEPTED}") from exc
    horizontal = crs
    if crs.is_compound:
        subs = [c for c in crs.sub_crs_list if c.is_geographic or c.is_projected]
        if not subs:
            raise CrsError(f"CRS {original!r} has no horizontal part; give {_ACCEPTED}")
        horizontal = subs[0]
    if not (horizontal.is_geographic or horizontal.is_projected):
        raise CrsError(
            f"CRS {original!r} is a {crs.type_name}, not a horizontal (geographic or projected) "
            f"CRS; give {_ACCEPTED}"
        )
    epsg = crs.to_epsg(min_confidence=90)
    if epsg is not None:
        name = f"EPSG:{epsg}"
    elif _is_wgs84(crs):
        name = "EPSG:4326"
    else:
        name = user_input if len(user_input) <= 200 else crs.to_string()
    return CrsSpec(kind="proj", name=name, crs=horizontal)


# ---------------------------------------------------------------------------------------------
# Transforming coordinates and geometries to WGS84
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _transformer(crs: pyproj.CRS) -> pyproj.Transformer:
    return pyproj.Transformer.from_crs(crs, WGS84, always_xy=True)


def xy_to_wgs84(x: ArrayLike, y: ArrayLike, source: CrsSpec) -> tuple[FloatArray, FloatArray]:
    """Transform horizontal coordinates from ``source`` to WGS84 lon/lat (x=east, y=north).

    Points that cannot be transformed come back as ``inf``/``NaN``; callers check the range.
    """
    xs = _as_float(x)
    ys = _as_float(y)
    if source.kind == "gcj02":
        return gcj02_to_wgs84(xs, ys)
    if source.kind == "bd09":
        return bd09_to_wgs84(xs, ys)
    if _is_wgs84(source.crs):
        return xs.copy(), ys.copy()
    lon, lat = _transformer(source.crs).transform(xs, ys, errcheck=False)
    return _as_float(lon), _as_float(lat)


def geometries_to_wgs84(geometries: ArrayLike, source: CrsSpec) -> NDArray[np.object_]:
    """Transform an array of shapely geometries from ``source`` to WGS84 (EPSG:4326).

    Vectorised with :func:`shapely.transform` (one call over all coordinates of all
    geometries). x/y are transformed; z, where a geometry has it, is kept unchanged (heights
    are never reprojected: for compound CRSs the vertical part stays as given). Missing
    geometries (None) stay None.
    """
    geoms = np.asarray(geometries, dtype=object)
    if source.is_wgs84:
        return geoms.copy()

    def _apply(coords: Any) -> Any:
        out = np.array(coords, dtype=np.float64, copy=True)
        lon, lat = xy_to_wgs84(out[:, 0], out[:, 1], source)
        out[:, 0] = lon
        out[:, 1] = lat
        return out

    # include_z=None splits the array by dimension (two passes); skip that when all are 2D.
    include_z = None if bool(shapely.has_z(geoms).any()) else False
    result: NDArray[np.object_] = shapely.transform(geoms, _apply, include_z=include_z)
    return result


def utm_crs_for(lon: float, lat: float) -> pyproj.CRS:
    """The WGS84 UTM zone CRS (EPSG:326zz north / 327zz south) containing (lon, lat).

    Used for metric work (areas, lengths, buffers; DESIGN §3 "never in degrees") when no
    ``CITYOPS_CITY_CRS`` is set. The Norway/Svalbard zone exceptions are ignored on purpose:
    they concern no Chinese city, and a plain 6° zone is still a valid metric CRS there.
    """
    if not (math.isfinite(lon) and math.isfinite(lat)) or abs(lat) > 90.0:
        raise CrsError(f"({lon}, {lat}) is not a longitude/latitude pair")
    zone = math.floor(((lon + 180.0) % 360.0) / 6.0) + 1
    zone = min(max(zone, 1), 60)
    epsg = (32600 if lat >= 0.0 else 32700) + zone
    return pyproj.CRS.from_epsg(epsg)
