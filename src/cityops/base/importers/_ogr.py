"""Reading one OGR layer (GeoJSON, GeoPackage, Shapefile) through pyogrio, fast.

With pyarrow installed the layer comes across as one Arrow table (GDAL's columnar API): a
million polygons read in about a second. Without it pyogrio's NumPy path is used. Either way
geometries arrive as WKB and are parsed with one vectorised :func:`shapely.from_wkb` call;
WKB that GEOS cannot build (e.g. a ring of two points from a clipped extract) is reported per
feature instead of failing the whole read with a bare GEOS exception.
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyogrio
import shapely

from cityops.base.importers._frame import MAX_REPORTED_ERRORS

HAVE_ARROW = importlib.util.find_spec("pyarrow") is not None


@dataclass
class OgrLayer:
    attrs: pd.DataFrame
    geometry: np.ndarray
    crs: str | None
    unbuildable: dict[int, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


def read_ogr(path: str, *, layer: str | int | None = None, encoding: str | None = None) -> OgrLayer:
    """Read attributes + geometries of one layer; pyogrio errors propagate to the caller."""
    with warnings.catch_warnings():
        # GDAL warns about e.g. unclosed rings, which the geometry checks report per feature.
        warnings.simplefilter("ignore", RuntimeWarning)
        return _read_ogr(path, layer=layer, encoding=encoding)


def _parse_wkb(wkb: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    wkb = np.full(n, None, dtype=object) if wkb is None else np.asarray(wkb, dtype=object)
    return wkb, shapely.from_wkb(wkb, on_invalid="ignore")


def _read_ogr(path: str, *, layer: str | int | None, encoding: str | None) -> OgrLayer:
    if HAVE_ARROW:
        meta, table = pyogrio.read_arrow(
            path, layer=layer, encoding=encoding, datetime_as_string=True
        )
        geom_col = _arrow_geometry_column(table, meta)
        wkb = None
        if geom_col is not None:
            wkb = table.column(geom_col).to_numpy(zero_copy_only=False)
            table = table.drop_columns([geom_col])
        # GEOS parses the geometries (without the GIL) while Arrow's columns become pandas'
        with ThreadPoolExecutor(1, thread_name_prefix="from-wkb") as pool:
            parsed = pool.submit(_parse_wkb, wkb, table.num_rows)
            table = _storage_types(table)
            attrs = table.to_pandas(integer_object_nulls=True, split_blocks=True)
            wkb, geometry = parsed.result()
    else:
        meta, _fids, wkb, values = pyogrio.raw.read(
            path, layer=layer, encoding=encoding, datetime_as_string=True
        )
        attrs = pd.DataFrame({name: col for name, col in zip(meta["fields"], values, strict=True)})
        wkb, geometry = _parse_wkb(wkb, len(attrs))
    broken = np.flatnonzero(shapely.is_missing(geometry) & (wkb != None))  # noqa: E711
    unbuildable: dict[int, str] = {}
    for k, i in enumerate(broken.tolist()):
        unbuildable[i] = _wkb_error(wkb[i]) if k < MAX_REPORTED_ERRORS else "unreadable WKB"
    _parse_json_fields(attrs, meta)
    return OgrLayer(
        attrs=attrs, geometry=geometry, crs=meta.get("crs"), unbuildable=unbuildable, meta=meta
    )


def _storage_types(table: Any) -> Any:
    """Replace Arrow extension columns (GDAL's ``arrow.json``) by their storage (text), which
    pandas converts; :func:`_parse_json_fields` then decodes the JSON."""
    import pyarrow as pa

    for i, f in enumerate(table.schema):
        if isinstance(f.type, pa.BaseExtensionType):
            col = table.column(i)
            storage = pa.chunked_array(
                [chunk.storage for chunk in col.chunks], type=f.type.storage_type
            )
            table = table.set_column(i, f.name, storage)
    return table


def _arrow_geometry_column(table: Any, meta: dict[str, Any]) -> str | None:
    for f in table.schema:
        md = f.metadata or {}
        if md.get(b"ARROW:extension:name") in (b"geoarrow.wkb", b"ogc.wkb"):
            return str(f.name)
    for name in (meta.get("geometry_name") or "", "wkb_geometry", "geometry", "geom"):
        if name and name in table.column_names:
            return name
    return None


def _wkb_error(wkb: Any) -> str:
    try:
        shapely.from_wkb(wkb, on_invalid="raise")
    except Exception as exc:  # GEOSException, or a ShapelyError subclass
        return str(exc).split("\n")[0]
    return "unreadable WKB"


def _parse_json_fields(attrs: pd.DataFrame, meta: dict[str, Any]) -> None:
    """GDAL types nested JSON members (DataV's ``parent``) as text with subtype JSON."""
    fields = list(meta.get("fields", []))
    subtypes = list(meta.get("ogr_subtypes") or [])
    for name, subtype in zip(fields, subtypes, strict=False):
        if subtype == "OFSTJSON" and name in attrs.columns:
            attrs[name] = attrs[name].map(_loads_or_keep).astype(object)


def _loads_or_keep(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def list_layers(path: str) -> list[str]:
    """Names of the layers GDAL sees in ``path``."""
    return [str(row[0]) for row in pyogrio.list_layers(path)]
