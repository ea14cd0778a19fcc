"""What every reader shares: the :class:`SourceFrame` contract, CRS resolution, field
normalisation and whole-file validation.

A reader's only job is to turn its format into *raw* columns plus a shapely geometry array in
the source CRS; :func:`build_frame` then does the rest the same way for every format:

1. refuse a file with no features;
2. check every geometry (missing, empty, wrong type for the layer, invalid per OGC Simple
   Features as GEOS tests it) and every typed field (``floors`` must be an integer, ...);
3. refuse GCJ-02 / BD-09 coordinates outside China (the offsets are undefined there);
4. transform to WGS84 and refuse coordinates that are not longitude/latitude afterwards;
5. warn when undeclared coordinates in China were read as WGS84 (they may be GCJ-02).

All checks run on whole arrays (shapely 2 / NumPy / pandas); only the first
:data:`MAX_REPORTED_ERRORS` problems are turned into messages, so a million bad rows cost no
more than one. Any problem refuses the whole file (DESIGN §1.5: imports are atomic).
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import re
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from cityops.core.crs import CrsError, CrsSpec, geometries_to_wgs84, in_china, parse_crs
from cityops.core.errors import FieldError, ImportFailed

ProgressCallback = Callable[[str, int, int], None]
"""``progress(step, done, total)``: a step name ("read", "validate", "transform"), and how
far it is. Readers call it at step boundaries (and per chunk where they loop)."""

# The typed ("hot") columns every SourceFrame carries, in this order, with these pandas dtypes.
TYPED_COLUMNS: dict[str, str] = {
    "code": "string",
    "name": "string",
    "kind": "string",
    "parent_code": "string",
    "floors": "Int64",
    "height": "Float64",
    "year_built": "Int64",
    "structure": "string",
    "use": "string",
    "address": "string",
    "households": "Int64",
}
_INT_FIELDS = frozenset(k for k, v in TYPED_COLUMNS.items() if v == "Int64")
_FLOAT_FIELDS = frozenset(k for k, v in TYPED_COLUMNS.items() if v == "Float64")

MAX_REPORTED_ERRORS = 20

# Attribute names that usually hold coordinates (DataV's center/centroid, tables' x/y).
_COORDINATE_ATTRIBUTES = frozenset(
    {"center", "centroid", "x", "y", "lon", "lat", "lng", "longitude", "latitude", "经度", "纬度"}
)

# Source attribute names recognised for each typed field, compared after lower-casing and
# removing spaces, "_" and "-" (so "Year Built", "year_built" and "yearBuilt" all match).
# Order is priority: the first alias present wins, others stay as extra columns (with a
# warning). Chinese names are those of common 住建/自然资源 survey tables.
FIELD_ALIASES: dict[str, tuple[str, ...]] = {
    "code": ("code", "adcode", "编码", "代码", "行政区划代码", "区划代码"),
    "name": ("name", "名称", "名字", "地名", "建筑名称"),
    "kind": ("kind", "类型", "类别"),
    "parent_code": ("parentcode", "parentadcode", "parent.adcode", "上级代码", "上级编码"),
    "floors": (
        "floors",
        "floor",
        "building:levels",
        "storeys",
        "stories",
        "levels",
        "numfloors",
        "层数",
        "楼层数",
        "地上层数",
        "总层数",
        "楼层",
    ),
    "height": ("height", "measuredheight", "building:height", "高度", "建筑高度"),
    "year_built": (
        "yearbuilt",
        "builtyear",
        "constructionyear",
        "yearofconstruction",
        "oorspronkelijkbouwjaar",
        "建成年份",
        "建成年代",
        "建造年份",
        "建造年代",
        "竣工年份",
    ),
    "structure": ("structure", "structuretype", "结构", "结构类型", "建筑结构"),
    "use": ("use", "usage", "用途", "使用性质", "建筑用途", "房屋用途"),
    "address": ("address", "addr", "addr:full", "fulladdress", "地址", "门牌地址"),
    "households": ("households", "户数", "住户数", "总户数"),
}
# What "kind" means depends on the target layer (after the generic "kind" aliases).
LAYER_KIND_ALIASES: dict[str, tuple[str, ...]] = {
    "roads": ("highway", "fclass", "roadclass", "道路等级", "道路类型"),
    "pois": ("amenity", "fclass", "type", "poi类型"),
    "buildings": ("building", "建筑类型"),
    "districts": ("level",),
}

# Geometry families the fixed layers accept (shapely type ids); other layers accept any.
_POINTS = frozenset({0, 4})
_LINES = frozenset({1, 5})
_POLYGONS = frozenset({3, 6})
LAYER_GEOMETRY: dict[str, tuple[frozenset[int], str]] = {
    "buildings": (_POLYGONS, "Polygon or MultiPolygon"),
    "districts": (_POLYGONS, "Polygon or MultiPolygon"),
    "roads": (_LINES, "LineString or MultiLineString"),
    "pois": (_POINTS, "Point or MultiPoint"),
}

# Plausible ranges: values outside are data errors (a typo, a placeholder such as 0 or 9999),
# which would poison the JGJ 125 / 城市体检 indicators downstream.
_RANGES: dict[str, tuple[float, float, str]] = {
    "floors": (0, 200, "between 0 and 200"),
    "height": (0, 1000, "between 0 and 1000 m"),
    "year_built": (1000, dt.date.today().year + 10, "a year such as 1998"),
    "households": (0, 100_000, "between 0 and 100000"),
}
# Units people type into numeric cells; stripped before parsing (only metres / floors).
_UNIT_SUFFIX = {
    "height": re.compile(r"\s*(?:m|米|metres|meters)$", re.IGNORECASE),
    "floors": re.compile(r"\s*(?:层|f)$", re.IGNORECASE),
}


# ---------------------------------------------------------------------------------------------
# Contract
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Locator:
    """Names an item of the source the way its user sees it.

    ``noun`` is "feature", "row", "building", "edge"; ``first`` the number of the first item
    (1, or 2 for a spreadsheet whose row 1 is the header) or, where items were skipped (blank
    lines), ``numbers`` per item; ``ids`` optional per-item source ids ("way 123",
    "CityObject 'b1'") appended in brackets.
    """

    noun: str = "feature"
    first: int = 1
    ids: Sequence[str] | None = None
    numbers: Sequence[int] | None = None

    def __call__(self, index: int) -> str:
        number = self.numbers[index] if self.numbers is not None else index + self.first
        label = f"{self.noun} {number}"
        if self.ids is not None:
            label += f" ({self.ids[index]})"
        return label


@dataclass
class SourceFrame:
    """A validated, normalised source: what the importers hand to the write path.

    ``gdf`` is in EPSG:4326 with a RangeIndex; its columns are the typed columns of
    :data:`TYPED_COLUMNS` (always all present, pandas nullable dtypes ``string`` / ``Int64`` /
    ``Float64``), then the extra source attributes (object columns holding only JSON-native
    values: str, int, float, bool, None, list, dict), then ``geometry``. Row ``i`` is the
    source item :meth:`location` ``(i)`` names.
    """

    gdf: gpd.GeoDataFrame
    source_crs: str
    format: str
    warnings: list[str] = field(default_factory=list)
    path: str = ""
    layer: str = ""
    source_layer: str | None = None
    locator: Locator = field(default_factory=Locator)

    def location(self, index: int) -> str:
        """How an error message names row ``index`` of ``gdf`` ("feature 12", "row 7")."""
        return self.locator(index)

    @property
    def typed_columns(self) -> list[str]:
        return list(TYPED_COLUMNS)

    @property
    def extra_columns(self) -> list[str]:
        return [c for c in self.gdf.columns if c not in TYPED_COLUMNS and c != "geometry"]

    def __len__(self) -> int:
        return len(self.gdf)


# ---------------------------------------------------------------------------------------------
# Problems: gathered, then one ImportFailed
# ---------------------------------------------------------------------------------------------


class Problems:
    """Collects problems across checks and raises one :class:`ImportFailed` listing them."""

    def __init__(self, file: str, locator: Locator) -> None:
        self.file = file
        self.locator = locator
        self.total = 0
        self._items: list[tuple[int, str, str]] = []

    def __bool__(self) -> bool:
        return self.total > 0

    def add_rows(self, rows: Any, field_name: str, message: Callable[[int], str]) -> None:
        """Record one problem per row index in ``rows``; messages only for the first few."""
        idx = np.asarray(rows, dtype=np.int64).ravel()
        self.total += int(idx.size)
        for i in idx[:MAX_REPORTED_ERRORS]:
            self._items.append((int(i), field_name, message(int(i))))

    def extend(self, other: Problems) -> None:
        """Append ``other``'s problems after these (same row: these come first)."""
        self.total += other.total
        self._items.extend(other._items)

    def raise_if_any(self) -> None:
        if not self.total:
            return
        items = sorted(self._items, key=lambda t: t[0])[:MAX_REPORTED_ERRORS]
        errors = [
            FieldError(field=f"{self.locator(row)}/{name}", message=msg) for row, name, msg in items
        ]
        row, name, msg = items[0]
        reason = msg if name == "geometry" else f"field {name}: {msg}"
        more = self.total - 1
        if more:
            noun = "problem" if more == 1 else "problems"
            reason += (
                f" (and {more} more {noun}, listed in errors)"
                if self.total <= MAX_REPORTED_ERRORS
                else f" (and {more} more {noun}; the first {MAX_REPORTED_ERRORS} are listed in "
                "errors)"
            )
        raise ImportFailed(self.file, reason, location=self.locator(row), errors=errors)


# ---------------------------------------------------------------------------------------------
# CRS resolution (DESIGN §8 "CRS")
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedCrs:
    spec: CrsSpec
    assumed_wgs84: bool
    warnings: tuple[str, ...] = ()


def resolve_crs(
    file: str,
    *,
    given: str | None,
    declared: str | None,
    default_wgs84: bool,
    hint: str = "",
    examples: str = "--crs EPSG:4490 for CGCS2000 lon/lat, --crs gcj02 for AMap data",
) -> ResolvedCrs:
    """Pick the source CRS: ``--crs`` if given, else what the file declares, else WGS84 for the
    formats that conventionally are (GeoJSON per RFC 7946, lon/lat tables), else refuse.

    ``hint`` says where the declaration should have been; ``examples`` the usual CRSs of the
    format's producers.
    """
    warnings: list[str] = []
    declared_spec: CrsSpec | None = None
    if declared:
        try:
            declared_spec = parse_crs(declared)
        except CrsError as exc:
            if not given:
                raise ImportFailed(
                    file, f"the file declares a CRS that cannot be used ({exc}); pass --crs"
                ) from exc
    if given:
        try:
            spec = parse_crs(given)
        except CrsError as exc:
            raise ImportFailed(file, f"--crs {given!r}: {exc}") from exc
        if declared_spec is not None and not _same_crs(spec, declared_spec):
            warnings.append(
                f"the file declares {declared_spec.name} but --crs says {spec.name}; "
                f"read as {spec.name}"
            )
        return ResolvedCrs(spec, False, tuple(warnings))
    if declared_spec is not None:
        return ResolvedCrs(declared_spec, False, ())
    if default_wgs84:
        return ResolvedCrs(parse_crs("EPSG:4326"), True, ())
    raise ImportFailed(
        file,
        f"the file declares no coordinate reference system{hint}; pass --crs with the CRS of "
        f"its coordinates (e.g. {examples})",
    )


def _same_crs(a: CrsSpec, b: CrsSpec) -> bool:
    if a.kind != b.kind:
        return False
    return a.kind != "proj" or bool(a.crs.equals(b.crs, ignore_axis_order=True))


# ---------------------------------------------------------------------------------------------
# Column mapping and typing
# ---------------------------------------------------------------------------------------------


def normalise_key(name: str) -> str:
    """Case- and separator-insensitive key for matching attribute names to aliases."""
    return re.sub(r"[\s_\-]+", "", str(name).strip().lower())


def plan_columns(columns: Sequence[str], layer: str) -> tuple[dict[str, str], list[str]]:
    """Map typed field → source column by :data:`FIELD_ALIASES` (first alias present wins).

    Returns the mapping and warnings for further columns that also match a field.
    """
    by_key: dict[str, list[str]] = {}
    for col in columns:
        by_key.setdefault(normalise_key(col), []).append(str(col))
    mapping: dict[str, str] = {}
    used: set[str] = set()
    warnings: list[str] = []
    for target in TYPED_COLUMNS:
        aliases = FIELD_ALIASES[target]
        if target == "kind":
            aliases = aliases + LAYER_KIND_ALIASES.get(layer, ())
        candidates = [c for a in aliases for c in by_key.get(normalise_key(a), []) if c not in used]
        if not candidates:
            continue
        # An exact, case-sensitive match of the platform name beats any alias.
        chosen = target if target in candidates else candidates[0]
        mapping[target] = chosen
        used.add(chosen)
        others = [c for c in candidates if c != chosen]
        if others:
            warnings.append(
                f"columns {', '.join(repr(c) for c in others)} also look like {target!r}; "
                f"used {chosen!r}, kept the others as extra attributes"
            )
    return mapping, warnings


def _present_mask(series: pd.Series) -> np.ndarray:
    """Non-null and, for text, non-blank."""
    mask: np.ndarray = series.notna().to_numpy(dtype=bool, copy=True)
    if series.dtype == object or pd.api.types.is_string_dtype(series.dtype):
        text = series.astype("string").str.strip()
        mask = mask & (text != "").fillna(False).to_numpy(dtype=bool)
    return mask


def _show(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else json.dumps(to_json_value(value))
    return text if len(text) <= 60 else text[:57] + "..."


def _coerce_number(series: pd.Series, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse a column as float64: (values, present, bad). Vectorised; text such as "12 m"
    (height) or "3层" (floors) has its unit stripped first."""
    present = _present_mask(series)
    if pd.api.types.is_bool_dtype(series.dtype):
        return np.full(len(series), np.nan), present, present.copy()
    if pd.api.types.is_numeric_dtype(series.dtype):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        bad = present & ~np.isfinite(values)
        return values, present, bad
    text = series.astype("string").str.strip()
    unit = _UNIT_SUFFIX.get(name)
    if unit is not None:
        text = text.str.replace(unit, "", regex=True)
    # Booleans and containers in an object column are never numbers (str(True) is "True").
    kinds = series.map(type) if series.dtype == object else None
    numeric = pd.to_numeric(text.where(pd.Series(present, index=series.index)), errors="coerce")
    values = numeric.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = present & ~np.isfinite(values)
    if kinds is not None:
        bad |= present & kinds.isin([bool, np.bool_, dict, list, tuple]).to_numpy(dtype=bool)
    return values, present, bad


def _coerce_text(series: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """Column as pandas ``string``: (text, bad). Integral floats lose their ".0" (codes read
    from spreadsheets arrive as 440303.0); dicts/lists are not text."""
    n = len(series)
    if pd.api.types.is_float_dtype(series.dtype):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        out = np.full(n, None, dtype=object)
        finite = np.isfinite(values)
        integral = finite & (np.floor(values) == values) & (np.abs(values) < 2**53)
        out[integral] = values[integral].astype(np.int64).astype(str)
        rest = finite & ~integral
        out[rest] = values[rest].astype(str)
        return pd.Series(out, index=series.index, dtype="string"), np.zeros(n, dtype=bool)
    if pd.api.types.is_numeric_dtype(series.dtype) or pd.api.types.is_bool_dtype(series.dtype):
        return series.astype("string"), np.zeros(n, dtype=bool)
    bad = np.zeros(n, dtype=bool)
    if series.dtype == object and pd.api.types.infer_dtype(series, skipna=True) not in (
        "string",
        "empty",
    ):
        bad = series.map(lambda v: isinstance(v, (dict, list, tuple, np.ndarray))).to_numpy(
            dtype=bool
        )
        series = series.map(_scalar_text)
    text = series.astype("string").str.strip()
    text = text.mask(text == "")
    return text, bad


def _scalar_text(value: Any) -> Any:
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and value == int(value):
        return str(int(value))
    if isinstance(value, (dict, list, tuple, np.ndarray)):
        return None
    return value


def type_fields(
    raw: pd.DataFrame, mapping: dict[str, str], problems: Problems
) -> dict[str, pd.Series]:
    """Build the typed columns from the mapped source columns, recording type/range errors."""
    n = len(raw)
    index = pd.RangeIndex(n)
    out: dict[str, pd.Series] = {}
    for target, dtype in TYPED_COLUMNS.items():
        source = mapping.get(target)
        if source is None:
            out[target] = _all_null(dtype, n)
            continue
        col = raw[source].reset_index(drop=True)
        if target in _INT_FIELDS or target in _FLOAT_FIELDS:
            values, present, bad = _coerce_number(col, target)
            kind = "an integer" if target in _INT_FIELDS else "a number"
            if target in _INT_FIELDS:
                bad |= present & np.isfinite(values) & (np.floor(values) != values)
            _report(problems, bad, col, target, source, f"is not {kind}")
            lo, hi, wording = _RANGES[target]
            out_of_range = present & ~bad & ((values < lo) | (values > hi))
            _report(problems, out_of_range, col, target, source, f"is not {wording}")
            null = ~(present & ~bad & np.isfinite(values))
            # Masked arrays built directly: pd.array() from objects is ~100x slower at 1M rows.
            arr: Any
            if target in _INT_FIELDS:
                arr = pd.arrays.IntegerArray(np.where(null, 0, values).astype(np.int64), null)
            else:
                arr = pd.arrays.FloatingArray(np.where(null, 0.0, values), null)
            out[target] = pd.Series(arr, index=index)
        else:
            text, bad = _coerce_text(col)
            _report(problems, bad, col, target, source, "is not text")
            out[target] = text.astype("string").set_axis(index)
    return out


def _all_null(dtype: str, n: int) -> pd.Series:
    index = pd.RangeIndex(n)
    if dtype == "Int64":
        return pd.Series(
            pd.arrays.IntegerArray(np.zeros(n, dtype=np.int64), np.ones(n, dtype=bool)), index=index
        )
    if dtype == "Float64":
        return pd.Series(pd.arrays.FloatingArray(np.zeros(n), np.ones(n, dtype=bool)), index=index)
    return pd.Series(pd.NA, index=index, dtype=dtype)


def _report(
    problems: Problems,
    bad: np.ndarray,
    col: pd.Series,
    target: str,
    source: str,
    what: str,
) -> None:
    rows = np.flatnonzero(bad)
    if rows.size == 0:
        return
    via = "" if normalise_key(source) == normalise_key(target) else f" (from {source!r})"

    def message(i: int) -> str:
        return f"{_show(col.iloc[i])} {what}{via}; correct it or leave it empty"

    problems.add_rows(rows, target, message)


# ---------------------------------------------------------------------------------------------
# Extra attributes → JSON-native object columns
# ---------------------------------------------------------------------------------------------


def to_json_value(value: Any) -> Any:
    """One value as JSON-native Python (None for null/NaN, lists for arrays, ISO 8601 text)."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, (str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.generic):
        return to_json_value(value.item())
    if isinstance(value, np.ndarray):
        return [to_json_value(v) for v in value.tolist()]
    if isinstance(value, dict):
        return {str(k): to_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [to_json_value(v) for v in value]
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value) if value.is_finite() else None
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, shapely.Geometry):
        return value.wkt
    return str(value)


def json_column(series: pd.Series) -> np.ndarray:
    """A column as an object array of JSON-native values (vectorised for plain dtypes)."""
    n = len(series)
    dtype = series.dtype
    if isinstance(dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_any_dtype(dtype):
        out = np.array(
            [None if pd.isna(v) else v.isoformat() for v in series.tolist()], dtype=object
        )
        return out
    if series.dtype == object and pd.api.types.infer_dtype(series, skipna=True) not in (
        "string",
        "empty",
        "integer",
        "floating",
        "mixed-integer-float",
        "boolean",
    ):
        out = np.empty(n, dtype=object)
        out[:] = [to_json_value(v) for v in series.tolist()]
        return out
    missing = series.isna().to_numpy(dtype=bool, copy=True)
    out = np.empty(n, dtype=object)
    out[:] = series.tolist()
    if pd.api.types.is_float_dtype(dtype):
        # NaN and ±inf are not JSON: null.
        missing |= ~np.isfinite(series.to_numpy(dtype=np.float64, na_value=np.nan))
    elif series.dtype == object:
        values = out[~missing]
        floats = np.fromiter((isinstance(v, float) for v in values), dtype=bool, count=len(values))
        if floats.any():
            nonfinite = np.zeros(len(values), dtype=bool)
            nonfinite[floats] = ~np.isfinite(np.asarray(values[floats], dtype=np.float64))
            if nonfinite.any():
                idx = np.flatnonzero(~missing)[nonfinite]
                missing[idx] = True
    if series.dtype == object:
        kinds = set(map(type, out[~missing]))
        if kinds - {str, int, float, bool}:
            out[:] = [to_json_value(v) for v in out]
    out[missing] = None
    return out


# ---------------------------------------------------------------------------------------------
# Geometry checks
# ---------------------------------------------------------------------------------------------


@dataclass
class GeometryFacts:
    """What :func:`check_geometries` tests, computed in one go (GEOS, without the GIL)."""

    missing: np.ndarray
    empty: np.ndarray
    type_ids: np.ndarray
    valid: np.ndarray


def geometry_facts(geoms: np.ndarray) -> GeometryFacts:
    return GeometryFacts(
        missing=shapely.is_missing(geoms),
        empty=shapely.is_empty(geoms),
        type_ids=shapely.get_type_id(geoms),
        valid=shapely.is_valid(geoms),
    )


def check_geometries(
    geoms: np.ndarray,
    layer: str,
    problems: Problems,
    unbuildable: dict[int, str] | None = None,
    facts: GeometryFacts | None = None,
) -> None:
    """Missing, empty, wrong type for the layer, invalid (OGC SFA validity via GEOS)."""
    unbuildable = unbuildable or {}
    facts = facts or geometry_facts(geoms)
    missing = facts.missing.copy()
    if unbuildable:
        rows = np.fromiter(unbuildable, dtype=np.int64)
        missing[rows] = False
        problems.add_rows(
            rows,
            "geometry",
            lambda i: f"geometry cannot be built ({unbuildable[i]}); fix or remove the feature",
        )
    problems.add_rows(
        np.flatnonzero(missing), "geometry", lambda i: "has no geometry; add one or remove it"
    )
    present = ~facts.missing
    empty = present & facts.empty
    problems.add_rows(
        np.flatnonzero(empty), "geometry", lambda i: "has an empty geometry; add one or remove it"
    )
    ok = present & ~empty
    type_ids = facts.type_ids
    if layer in LAYER_GEOMETRY:
        allowed, wording = LAYER_GEOMETRY[layer]
        wrong = ok & ~np.isin(type_ids, list(allowed))
        problems.add_rows(
            np.flatnonzero(wrong),
            "geometry",
            lambda i: f"is a {geoms[i].geom_type}, but layer {layer!r} takes {wording}",
        )
        ok &= ~wrong
    invalid = np.flatnonzero(ok & ~facts.valid)
    problems.add_rows(
        invalid,
        "geometry",
        lambda i: (
            f"invalid geometry: {shapely.is_valid_reason(geoms[i])} "
            "(repair it, e.g. QGIS 'Fix geometries' or ST_MakeValid, and import again)"
        ),
    )


def check_offset_area(geoms: np.ndarray, spec: CrsSpec, problems: Problems) -> None:
    """GCJ-02/BD-09 declared for coordinates outside China: the CRS must be wrong."""
    bounds = shapely.bounds(geoms)
    inside = in_china(bounds[:, 0], bounds[:, 1]) & in_china(bounds[:, 2], bounds[:, 3])
    problems.add_rows(
        np.flatnonzero(~inside),
        "geometry",
        lambda i: (
            f"lies outside China ({_fmt_xy(bounds[i, 0], bounds[i, 1])}), where "
            f"{spec.name} is not defined; the data is not {spec.name}: pass the real CRS with --crs"
        ),
    )


def check_lonlat(wgs: np.ndarray, source: np.ndarray, spec: CrsSpec, problems: Problems) -> None:
    """After the transform every coordinate must be a longitude/latitude."""
    b = shapely.bounds(wgs)
    bad = (
        ~np.isfinite(b).all(axis=1)
        | (b[:, 0] < -180.0)
        | (b[:, 2] > 180.0)
        | (b[:, 1] < -90.0)
        | (b[:, 3] > 90.0)
    )
    if not bad.any():
        return
    sb = shapely.bounds(source)
    problems.add_rows(
        np.flatnonzero(bad),
        "geometry",
        lambda i: (
            f"coordinates such as {_fmt_xy(sb[i, 0], sb[i, 1])} are not longitude/latitude "
            f"when read as {spec.name}; pass the CRS they are in with --crs "
            "(e.g. EPSG:4547 for CGCS2000 3° Gauss-Krüger zone 38, EPSG:32650 for UTM 50N)"
        ),
    )


def _fmt_xy(x: float, y: float) -> str:
    return f"({x:.6g}, {y:.6g})"


# ---------------------------------------------------------------------------------------------
# Assembly
# ---------------------------------------------------------------------------------------------


def build_frame(
    *,
    file: str,
    fmt: str,
    layer: str,
    raw: pd.DataFrame,
    geometry: np.ndarray,
    crs: ResolvedCrs,
    locator: Locator | None = None,
    warnings: Sequence[str] = (),
    unbuildable: dict[int, str] | None = None,
    source_layer: str | None = None,
    typed: dict[str, pd.Series] | None = None,
    progress: ProgressCallback | None = None,
) -> SourceFrame:
    """Validate and normalise raw columns + source-CRS geometries into a :class:`SourceFrame`.

    ``typed`` lets a reader supply typed columns it computed itself (CityJSON heights, OSM
    levels); they take precedence over mapped source columns of the same name.
    """
    locator = locator or Locator()
    all_warnings = list(warnings) + list(crs.warnings)
    n = len(raw)
    if n == 0:
        raise ImportFailed(
            file, "contains no features; nothing to import (is it the right file or layer?)"
        )
    geoms = np.asarray(geometry, dtype=object)
    if geoms.shape != (n,):
        raise ValueError(f"{n} attribute rows but {geoms.shape} geometries")
    raw = raw.reset_index(drop=True)
    if progress:
        progress("validate", 0, n)

    # GEOS tests the geometries (without the GIL) while the attributes are typed and converted
    # below; the geometry problems are still listed first
    with ThreadPoolExecutor(1, thread_name_prefix="check-geometries") as pool:
        facts = pool.submit(geometry_facts, geoms)
        return _build_frame(
            file=file,
            fmt=fmt,
            layer=layer,
            raw=raw,
            geoms=geoms,
            facts=facts,
            crs=crs,
            locator=locator,
            all_warnings=all_warnings,
            unbuildable=unbuildable,
            source_layer=source_layer,
            typed=typed,
            progress=progress,
        )


def _build_frame(
    *,
    file: str,
    fmt: str,
    layer: str,
    raw: pd.DataFrame,
    geoms: np.ndarray,
    facts: Future[GeometryFacts],
    crs: ResolvedCrs,
    locator: Locator,
    all_warnings: list[str],
    unbuildable: dict[int, str] | None,
    source_layer: str | None,
    typed: dict[str, pd.Series] | None,
    progress: ProgressCallback | None,
) -> SourceFrame:
    n = len(raw)
    problems = Problems(file, locator)
    field_problems = Problems(file, locator)

    typed = dict(typed or {})
    mapping, map_warnings = plan_columns([c for c in raw.columns if c not in typed], layer)
    all_warnings += map_warnings
    mapping = {k: v for k, v in mapping.items() if k not in typed}
    if "parent_code" not in mapping and "parent_code" not in typed:
        parent = _datav_parent(raw)
        if parent is not None:
            raw = raw.assign(_parent_code=parent)
            mapping["parent_code"] = "_parent_code"
    typed_out = type_fields(raw, mapping, field_problems)
    for name, series in typed.items():
        values = series.reset_index(drop=True).astype(object)
        values = values.where(values.notna(), None)
        typed_out[name] = pd.Series(
            pd.array(values.tolist(), dtype=TYPED_COLUMNS[name]), index=pd.RangeIndex(n)
        )
    extra_columns: dict[str, pd.Series] = {}
    if not field_problems:
        used = {v for v in mapping.values()} | {"_parent_code"}
        if "parent_code" in mapping and mapping["parent_code"] == "_parent_code":
            used.add("parent")
        for col in raw.columns:
            if col in used or col in typed:
                continue
            name = str(col)
            if name in typed_out or name in extra_columns or name == "geometry":
                name = f"source_{name}"
            # dtype=object explicitly: pandas 3 would otherwise infer its own str dtype.
            extra_columns[name] = pd.Series(
                json_column(raw[col]), index=pd.RangeIndex(n), dtype=object
            )
    check_geometries(geoms, layer, problems, unbuildable, facts.result())
    problems.extend(field_problems)
    problems.raise_if_any()

    spec = crs.spec
    if spec.is_offset:
        check_offset_area(geoms, spec, problems)
        problems.raise_if_any()
    if progress:
        progress("transform", 0, n)
    wgs = geometries_to_wgs84(geoms, spec)
    check_lonlat(wgs, geoms, spec, problems)
    problems.raise_if_any()

    if crs.assumed_wgs84:
        xmin, ymin, xmax, ymax = shapely.total_bounds(wgs)
        if bool(in_china((xmin + xmax) / 2.0, (ymin + ymax) / 2.0)):
            all_warnings.append(
                "no CRS declared, read as WGS84; the data lies in China and may be GCJ-02 "
                "(AMap/高德, DataV, Tencent) or BD-09 (Baidu): if so pass --crs gcj02 or "
                "--crs bd09"
            )

    if not spec.is_wgs84:
        coordinate_like = [c for c in raw.columns if normalise_key(c) in _COORDINATE_ATTRIBUTES]
        if coordinate_like:
            all_warnings.append(
                f"attribute columns {', '.join(map(repr, coordinate_like))} look like coordinates;"
                f" they keep their {spec.name} values (only the geometry is transformed)"
            )

    columns: dict[str, Any] = {**typed_out, **extra_columns}
    # the columns are this function's own: no copies (a million rows: ~0.5 s of copying)
    frame = pd.DataFrame(columns, index=pd.RangeIndex(n), copy=False)
    gdf = gpd.GeoDataFrame(frame, geometry=gpd.array.from_shapely(wgs), crs="EPSG:4326", copy=False)
    if progress:
        progress("done", n, n)
    return SourceFrame(
        gdf=gdf,
        source_crs=spec.name,
        format=fmt,
        warnings=all_warnings,
        path=file,
        layer=layer,
        source_layer=source_layer,
        locator=locator,
    )


def _datav_parent(raw: pd.DataFrame) -> pd.Series | None:
    """DataV.GeoAtlas files carry the parent area as ``"parent": {"adcode": 440300}``."""
    col = next((c for c in raw.columns if normalise_key(c) == "parent"), None)
    if col is None:
        return None
    series = raw[col]

    def pick(value: Any) -> Any:
        if isinstance(value, str) and value.lstrip().startswith("{"):
            try:
                value = json.loads(value)
            except ValueError:
                return None
        if isinstance(value, dict):
            return value.get("adcode")
        return None

    picked = series.map(pick)
    if picked.notna().sum() == 0:
        return None
    return picked
