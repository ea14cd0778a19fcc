"""GeoJSON reader (RFC 7946; the 2008 draft's ``crs`` member honoured).

RFC 7946 says coordinates are WGS84 lon/lat. Files from Chinese portals often are not: DataV /
AMap boundaries are GCJ-02 although nothing in them says so. Hence (DESIGN §8 "CRS"): a ``crs``
member (2008 GeoJSON, written by GDAL/QGIS for non-WGS84 data) is honoured; a file without one
is read as WGS84 with a warning when it lies in China; ``--crs gcj02`` overrides.

Fast path: GDAL's GeoJSON driver through pyogrio (Arrow). Only when GDAL refuses the file is it
parsed with :mod:`json` to tell the user *where* it is broken (line and column).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pyogrio.errors import DataLayerError, DataSourceError

from cityops.base.importers._frame import (
    ProgressCallback,
    SourceFrame,
    build_frame,
    resolve_crs,
)
from cityops.base.importers._ogr import read_ogr
from cityops.core.errors import ImportFailed

_SNIFF_BYTES = 1 << 16
_CRS_MEMBER = re.compile(rb'"crs"\s*:\s*\{')
_CITYJSON = re.compile(rb'"type"\s*:\s*"CityJSON"|"CityObjects"\s*:')
_OTHER_JSON = (
    (re.compile(rb'"type"\s*:\s*"Topology"'), "TopoJSON"),
    (re.compile(rb'"geometryType"\s*:\s*"esriGeometry'), "Esri JSON"),
)
GEOJSON_TYPES = frozenset(
    {
        "FeatureCollection",
        "Feature",
        "Point",
        "MultiPoint",
        "LineString",
        "MultiLineString",
        "Polygon",
        "MultiPolygon",
        "GeometryCollection",
    }
)


def head_and_tail(path: Path, size: int = _SNIFF_BYTES) -> tuple[bytes, bytes]:
    with path.open("rb") as fh:
        head = fh.read(size)
        fh.seek(0, 2)
        end = fh.tell()
        fh.seek(max(0, end - size))
        tail = fh.read(size)
    return head, tail


def looks_like_cityjson(path: Path) -> bool:
    """CityJSON by content: its ``"type": "CityJSON"`` or ``"CityObjects"`` member near an end
    (writers that sort keys put ``CityObjects`` first and ``type`` after the objects)."""
    head, tail = head_and_tail(path)
    return bool(_CITYJSON.search(head) or _CITYJSON.search(tail))


def load_json(path: Path, file: str, what: str) -> Any:
    """Parse a JSON file, refusing malformed JSON with the line and column of the error."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ImportFailed(
            file,
            f"is not UTF-8 text (byte {exc.start}); {what} must be UTF-8 JSON "
            "(re-save it as UTF-8)",
        ) from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ImportFailed(
            file,
            f"malformed JSON: {exc.msg}; fix the file there (a JSON validator shows the spot) "
            "and import again",
            location=f"line {exc.lineno}, column {exc.colno}",
        ) from exc


def _diagnose(path: Path, file: str, gdal_message: str) -> ImportFailed:
    """GDAL could not read it: say precisely why."""
    doc = load_json(path, file, "a GeoJSON file")
    kind = doc.get("type") if isinstance(doc, dict) else None
    if kind not in GEOJSON_TYPES:
        found = f'"type": {json.dumps(kind)}' if kind is not None else 'no GeoJSON "type" member'
        return ImportFailed(
            file,
            f"is JSON but not GeoJSON ({found}); expected a FeatureCollection "
            '(or CityJSON, "type": "CityJSON")',
        )
    return ImportFailed(file, f"is not readable GeoJSON: {gdal_message}")


def read_geojson(
    path: Path,
    *,
    layer: str,
    crs: str | None = None,
    progress: ProgressCallback | None = None,
) -> SourceFrame:
    """Read a GeoJSON FeatureCollection into a :class:`SourceFrame` (see module doc)."""
    file = str(path)
    head, tail = head_and_tail(path)
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not stripped.startswith((b"{", b"[")):
        raise ImportFailed(
            file,
            f"is not JSON (it starts with {stripped[:20]!r}); a GeoJSON file starts with '{{'",
        )
    # GDAL would silently open these with other drivers.
    for pattern, name in _OTHER_JSON:
        if pattern.search(head):
            raise ImportFailed(file, f"is {name}, not GeoJSON; convert it to GeoJSON first")
    if progress:
        progress("read", 0, 1)
    try:
        data = read_ogr(file)
    except (DataSourceError, DataLayerError) as exc:
        raise _diagnose(path, file, str(exc)) from exc
    declares_crs = bool(_CRS_MEMBER.search(head) or _CRS_MEMBER.search(tail))
    resolved = resolve_crs(
        file,
        given=crs,
        declared=data.crs if declares_crs else None,
        default_wgs84=True,
    )
    if progress:
        progress("read", 1, 1)
    return build_frame(
        file=file,
        fmt="geojson",
        layer=layer,
        raw=data.attrs,
        geometry=data.geometry,
        crs=resolved,
        unbuildable=data.unbuildable,
        progress=progress,
    )
