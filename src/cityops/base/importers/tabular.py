"""CSV and xlsx readers: tables with coordinate columns or a WKT column.

Geometry columns are found by name, case-insensitively: a WKT column (``wkt``, ``geometry``,
``geom``, ``the_geom``, ``几何``) wins; else a coordinate pair (``lon``/``lat``, ``lng``/``lat``,
``longitude``/``latitude``, ``经度``/``纬度``, ``x``/``y``) makes points.

CRS decision (DESIGN §8 leaves tables open): a table cannot declare a CRS, and lon/lat columns
are conventionally WGS84, so without ``--crs`` it is read as WGS84 with the same "may be
GCJ-02" warning as GeoJSON when it lies in China. Projected x/y values without ``--crs`` fail
the longitude/latitude range check, whose message asks for ``--crs``.

Rows are named as a spreadsheet shows them: the header is row 1, so the first data row is
"row 2". CSV text is UTF-8 (with or without BOM); GB18030 (what Excel writes for 中文 Windows)
is detected and read with a warning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import shapely

from cityops.base.importers._frame import (
    MAX_REPORTED_ERRORS,
    Locator,
    Problems,
    ProgressCallback,
    SourceFrame,
    build_frame,
    normalise_key,
    plan_columns,
    resolve_crs,
)
from cityops.core.errors import ImportFailed

WKT_COLUMNS = ("wkt", "geometry", "geom", "thegeom", "shape", "几何", "空间信息")
COORDINATE_PAIRS = (
    ("lon", "lat"),
    ("lng", "lat"),
    ("longitude", "latitude"),
    ("经度", "纬度"),
    ("x", "y"),
    ("pointx", "pointy"),
    ("x坐标", "y坐标"),
)
_ZIP_MAGIC = b"PK\x03\x04"
_OLE_MAGIC = b"\xd0\xcf\x11\xe0"


def _find_geometry(columns: list[str]) -> tuple[str, ...] | None:
    keys = {normalise_key(c): c for c in reversed(columns)}
    for name in WKT_COLUMNS:
        if name in keys:
            return (keys[name],)
    for x, y in COORDINATE_PAIRS:
        if x in keys and y in keys:
            return (keys[x], keys[y])
    return None


def _text_columns(columns: list[str], layer: str) -> list[str]:
    """Columns to read as text: codes (leading zeros, 12-digit GB/T codes) and WKT."""
    mapping, _ = plan_columns(columns, layer)
    keep = [mapping[k] for k in ("code", "parent_code") if k in mapping]
    keep += [c for c in columns if normalise_key(c) in WKT_COLUMNS]
    return keep


def read_csv(
    path: Path,
    *,
    layer: str,
    crs: str | None = None,
    progress: ProgressCallback | None = None,
) -> SourceFrame:
    """Read a CSV table with coordinate or WKT columns into a :class:`SourceFrame`."""
    file = str(path)
    with path.open("rb") as fh:
        head = fh.read(1 << 16)
    if head.startswith(_ZIP_MAGIC):
        raise ImportFailed(file, "is an Excel workbook (xlsx), not CSV; name it .xlsx")
    if head.startswith(_OLE_MAGIC):
        raise ImportFailed(file, "is an old Excel .xls workbook, not CSV; save it as .xlsx or CSV")
    if b"\x00" in head:
        raise ImportFailed(file, "is not a text file (it contains NUL bytes); a CSV is plain text")
    warnings: list[str] = []
    encoding = "utf-8-sig"
    try:
        head.decode(encoding)
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a character cut by the sample's end
            encoding = "gb18030"
            warnings.append(
                "the CSV is not UTF-8; read it as GB18030 (GBK). Save as UTF-8 if wrong"
            )
    if progress:
        progress("read", 0, 1)
    try:
        header = list(pd.read_csv(path, nrows=0, encoding=encoding).columns)
        text_cols = _text_columns(header, layer)
        df = pd.read_csv(
            path,
            encoding=encoding,
            dtype={c: str for c in text_cols},
            skip_blank_lines=False,
            keep_default_na=True,
        )
    except UnicodeDecodeError as exc:
        raise ImportFailed(file, f"is not UTF-8 or GB18030 text ({exc}); save it as UTF-8") from exc
    except pd.errors.EmptyDataError as exc:
        raise ImportFailed(file, "is empty; nothing to import") from exc
    except pd.errors.ParserError as exc:
        raise ImportFailed(file, f"is not a well-formed CSV: {exc}") from exc
    if progress:
        progress("read", 1, 1)
    return _table_frame(
        df,
        file=file,
        fmt="csv",
        layer=layer,
        crs=crs,
        noun="row",
        warnings=warnings,
        progress=progress,
    )


def read_xlsx(
    path: Path,
    *,
    layer: str,
    crs: str | None = None,
    source_layer: str | None = None,
    progress: ProgressCallback | None = None,
) -> SourceFrame:
    """Read one sheet of an xlsx workbook (Office Open XML, ISO/IEC 29500) into a SourceFrame.

    ``source_layer`` names the sheet; without it the workbook must have exactly one non-empty
    sheet (Excel's default empty Sheet2/Sheet3 do not count).
    """
    file = str(path)
    with path.open("rb") as fh:
        magic = fh.read(4)
    if magic == _OLE_MAGIC:
        raise ImportFailed(file, "is an old Excel .xls workbook; save it as .xlsx")
    if magic != _ZIP_MAGIC:
        raise ImportFailed(file, "is not an xlsx workbook (an xlsx file is a zip archive)")
    if progress:
        progress("read", 0, 1)
    try:
        sheets: dict[Any, pd.DataFrame] = pd.read_excel(path, sheet_name=None, engine="openpyxl")
    except Exception as exc:  # openpyxl raises many types for a broken workbook
        raise ImportFailed(file, f"is not a readable xlsx workbook: {exc}") from exc
    names = [str(n) for n in sheets]
    if source_layer is not None:
        if source_layer not in names:
            raise ImportFailed(
                file,
                f"has no sheet {source_layer!r}; its sheets are: {', '.join(names)}",
                location=f"sheet {source_layer}",
            )
        sheet = source_layer
    else:
        used = [str(n) for n, df in sheets.items() if not df.dropna(how="all").empty]
        if not used:
            raise ImportFailed(file, "has no data in any sheet; nothing to import")
        if len(used) > 1:
            raise ImportFailed(
                file,
                f"has {len(used)} sheets with data: {', '.join(used)}; choose one with "
                "--source-layer",
            )
        sheet = used[0]
    df = next(d for n, d in sheets.items() if str(n) == sheet)
    if progress:
        progress("read", 1, 1)
    return _table_frame(
        df,
        file=file,
        fmt="xlsx",
        layer=layer,
        crs=crs,
        noun=f"sheet {sheet}, row",
        warnings=[],
        progress=progress,
        source_layer=sheet,
    )


def _table_frame(
    df: pd.DataFrame,
    *,
    file: str,
    fmt: str,
    layer: str,
    crs: str | None,
    noun: str,
    warnings: list[str],
    progress: ProgressCallback | None,
    source_layer: str | None = None,
) -> SourceFrame:
    df = df.loc[:, [not str(c).startswith("Unnamed: ") or df[c].notna().any() for c in df.columns]]
    columns = [str(c) for c in df.columns]
    df.columns = columns
    geometry_columns = _find_geometry(columns)
    if geometry_columns is None:
        raise ImportFailed(
            file,
            "has no geometry columns: expected a WKT column (wkt, geometry) or coordinate columns "
            "(lon/lat, longitude/latitude, x/y, 经度/纬度); its columns are: " + ", ".join(columns),
        )
    blank = df.isna().all(axis=1).to_numpy()
    numbers = np.flatnonzero(~blank) + 2  # spreadsheet row numbers: header is row 1
    df = df.loc[~blank].reset_index(drop=True)
    locator = Locator(noun=noun, numbers=numbers.tolist())
    problems = Problems(file, locator)
    unbuildable: dict[int, str] = {}
    if len(geometry_columns) == 1:
        (col,) = geometry_columns
        text = df[col].astype("string").str.strip()
        present = text.notna() & (text != "")
        wkt = np.array(text.where(present, None).to_numpy(dtype=object), dtype=object)
        wkt[~present.to_numpy(dtype=bool)] = None
        geometry = shapely.from_wkt(wkt, on_invalid="ignore")
        broken = np.flatnonzero(shapely.is_missing(geometry) & present.to_numpy(dtype=bool))
        for k, i in enumerate(broken.tolist()):
            unbuildable[i] = _wkt_error(wkt[i]) if k < MAX_REPORTED_ERRORS else "not WKT"
    else:
        xcol, ycol = geometry_columns
        xs = _coordinate(df[xcol], xcol, problems)
        ys = _coordinate(df[ycol], ycol, problems)
        problems.raise_if_any()
        ok = np.isfinite(xs) & np.isfinite(ys)
        geometry = np.full(len(df), None, dtype=object)
        geometry[ok] = shapely.points(xs[ok], ys[ok])
    resolved = resolve_crs(file, given=crs, declared=None, default_wgs84=True)
    raw = df.drop(columns=list(geometry_columns))
    return build_frame(
        file=file,
        fmt=fmt,
        layer=layer,
        raw=raw,
        geometry=geometry,
        crs=resolved,
        locator=locator,
        warnings=warnings,
        unbuildable=unbuildable,
        source_layer=source_layer,
        progress=progress,
    )


def _coordinate(series: pd.Series, name: str, problems: Problems) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype):
        numbers: np.ndarray = series.to_numpy(dtype=np.float64, na_value=np.nan)
        return numbers
    text = series.astype("string").str.strip()
    present = (text.notna() & (text != "")).to_numpy(dtype=bool)
    values: np.ndarray = pd.to_numeric(text.where(pd.Series(present)), errors="coerce").to_numpy(
        dtype=np.float64, na_value=np.nan
    )
    bad = np.flatnonzero(present & ~np.isfinite(values))
    problems.add_rows(
        bad,
        name,
        lambda i: (
            f"{series.iloc[i]!r} is not a number; coordinates are decimal degrees "
            "(or metres with --crs)"
        ),
    )
    return values


def _wkt_error(text: Any) -> str:
    try:
        shapely.from_wkt(text, on_invalid="raise")
    except Exception as exc:
        return f"not WKT: {str(exc).splitlines()[0]}"
    return "not WKT"
