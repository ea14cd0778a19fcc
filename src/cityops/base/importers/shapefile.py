"""ESRI Shapefile reader (.shp with its .shx/.dbf/.prj/.cpg, or all of them in a .zip).

The CRS comes from the ``.prj``; a shapefile without one is refused unless ``--crs`` is given
(DESIGN §8). Text encoding: the ``.cpg`` file, else the DBF's language-driver byte; Chinese
shapefiles often have neither and are GBK/GB18030, which is detected from the bytes (valid
UTF-8 is taken as UTF-8, otherwise GB18030 is used with a warning).
"""

from __future__ import annotations

import codecs
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import pandas as pd
from pyogrio.errors import DataLayerError, DataSourceError

from cityops.base.importers._frame import (
    ProgressCallback,
    SourceFrame,
    build_frame,
    resolve_crs,
)
from cityops.base.importers._ogr import read_ogr
from cityops.core.errors import ImportFailed

# File code 9994, big-endian (ESRI Shapefile Technical Description, 1998).
_SHP_MAGIC = b"\x00\x00\x27\x0a"
_ZIP_MAGIC = b"PK\x03\x04"
_DBF_SAMPLE = 1 << 20


def _sibling(path: Path, suffix: str) -> Path | None:
    for candidate in path.parent.glob(path.stem + ".*"):
        if candidate.suffix.lower() == suffix:
            return candidate
    return None


def guess_dbf_encoding(read: Callable[[int], bytes]) -> str | None:
    """Encoding of a DBF without .cpg: None when GDAL can decide (LDID set, or ASCII only)."""
    head = read(_DBF_SAMPLE)
    if len(head) < 32:
        return None
    ldid = head[29]
    if ldid != 0:
        return None  # GDAL maps the language driver id (e.g. 0x4D = CP936) itself
    header_len = int.from_bytes(head[8:10], "little")
    body = head[header_len:]
    if body.isascii():
        return None
    # The sample may end inside a multi-byte character: ignore a short tail.
    try:
        body[:-4].decode("utf-8")
        return "UTF-8"
    except UnicodeDecodeError:
        pass
    try:
        body[:-4].decode("gb18030")
        return "GB18030"
    except UnicodeDecodeError:
        return None


def read_shapefile(
    path: Path,
    *,
    layer: str,
    crs: str | None = None,
    source_layer: str | None = None,
    progress: ProgressCallback | None = None,
) -> SourceFrame:
    """Read a shapefile (``.shp`` or ``.zip``) into a :class:`SourceFrame`."""
    file = str(path)
    warnings: list[str] = []
    if path.suffix.lower() == ".zip":
        gdal_path, prj_present, encoding, cpg = _open_zip(path, file, source_layer)
    else:
        gdal_path, prj_present, encoding, cpg = _open_shp(path, file)
    if encoding == "GB18030":
        warnings.append(
            "the .dbf has no .cpg and is not UTF-8; read its text as GB18030 (GBK). "
            "Add a .cpg file if that is wrong"
        )
    if progress:
        progress("read", 0, 1)
    try:
        try:
            data = read_ogr(gdal_path, encoding=encoding)
        except UnicodeDecodeError:
            intended = encoding or _codec(cpg) or "utf-8"
            data = read_ogr(gdal_path, encoding="latin1")
            data.attrs = _transcode(data.attrs, intended)
            warnings.append(
                f"some field names or values are not valid {intended} text (typically a Chinese "
                "field name cut at the DBF's 10-byte limit); damaged characters show as �"
            )
    except (DataSourceError, DataLayerError) as exc:
        raise ImportFailed(file, f"is not a readable shapefile: {exc}") from exc
    resolved = resolve_crs(
        file,
        given=crs,
        declared=data.crs,
        default_wgs84=False,
        hint="" if prj_present else " (its .prj file is missing)",
    )
    if progress:
        progress("read", 1, 1)
    return build_frame(
        file=file,
        fmt="shapefile",
        layer=layer,
        raw=data.attrs,
        geometry=data.geometry,
        crs=resolved,
        warnings=warnings,
        unbuildable=data.unbuildable,
        source_layer=source_layer,
        progress=progress,
    )


def _codec(name: str | None) -> str | None:
    """A Python codec for a .cpg text ("UTF-8", "GBK", "936"), or None."""
    if not name:
        return None
    name = name.strip()
    name = {"936": "gbk", "65001": "utf-8"}.get(name, name)
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


def _transcode(attrs: pd.DataFrame, encoding: str) -> pd.DataFrame:
    """Undo a latin-1 read: re-decode names and text as ``encoding``, replacing bad bytes.

    latin-1 maps every byte to one character, so the read cannot fail and the bytes come back
    intact. A per-value loop, but only on this rare fallback path."""

    def fix(text: str) -> str:
        return text.encode("latin1").decode(encoding, errors="replace")

    out = attrs.rename(columns={c: fix(str(c)) for c in attrs.columns})
    for col in out.columns:
        if out[col].dtype == object or pd.api.types.is_string_dtype(out[col].dtype):
            values = out[col].astype(object)
            text = values.map(lambda v: fix(v) if isinstance(v, str) else v)
            out[col] = text
    return out


def _open_shp(path: Path, file: str) -> tuple[str, bool, str | None, str | None]:
    with path.open("rb") as fh:
        magic = fh.read(4)
    if magic != _SHP_MAGIC:
        raise ImportFailed(file, f"is not a shapefile (no .shp header; it starts with {magic!r})")
    missing = [s for s in (".shx", ".dbf") if _sibling(path, s) is None]
    if missing:
        raise ImportFailed(
            file,
            f"the {' and '.join(missing)} file{'s' if len(missing) > 1 else ''} beside it "
            f"{'are' if len(missing) > 1 else 'is'} missing; a shapefile is .shp + .shx + .dbf "
            "(+ .prj, .cpg) with the same name: copy all of them, or zip them together",
        )
    encoding = None
    cpg_path = _sibling(path, ".cpg")
    cpg = cpg_path.read_text("ascii", errors="replace") if cpg_path else None
    if cpg_path is None:
        dbf = _sibling(path, ".dbf")
        assert dbf is not None
        with dbf.open("rb") as fh:
            encoding = guess_dbf_encoding(fh.read)
    return str(path), _sibling(path, ".prj") is not None, encoding, cpg


def _open_zip(
    path: Path, file: str, source_layer: str | None
) -> tuple[str, bool, str | None, str | None]:
    with path.open("rb") as fh:
        if fh.read(4) != _ZIP_MAGIC:
            raise ImportFailed(file, "is not a zip archive; give the .shp or a zipped shapefile")
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise ImportFailed(file, f"is a damaged zip archive ({exc})") from exc
    with archive:
        names = [n for n in archive.namelist() if not n.startswith("__MACOSX/")]
        shps = [n for n in names if n.lower().endswith(".shp")]
        if not shps:
            raise ImportFailed(file, "contains no .shp file; zip the shapefile's files together")
        stems = {PurePosixPath(n).stem: n for n in shps}
        if source_layer is not None:
            if source_layer not in stems:
                raise ImportFailed(
                    file,
                    f"has no shapefile {source_layer!r}; it contains: {', '.join(sorted(stems))}",
                    location=f"layer {source_layer}",
                )
            shp = stems[source_layer]
        elif len(shps) > 1:
            raise ImportFailed(
                file,
                f"contains {len(shps)} shapefiles: {', '.join(sorted(stems))}; choose one with "
                "--source-layer",
            )
        else:
            shp = shps[0]
        base = shp[:-4].lower()
        members = {n.lower(): n for n in names}
        missing = [s for s in (".shx", ".dbf") if base + s not in members]
        if missing:
            raise ImportFailed(
                file,
                f"{shp} has no {' or '.join(missing)} beside it in the archive; zip all of the "
                "shapefile's files (.shp, .shx, .dbf, .prj, .cpg)",
            )
        encoding = None
        cpg = None
        if base + ".cpg" in members:
            cpg = archive.read(members[base + ".cpg"]).decode("ascii", errors="replace")
        else:
            with archive.open(members[base + ".dbf"]) as fh:
                encoding = guess_dbf_encoding(fh.read)
        prj = base + ".prj" in members
    return f"/vsizip/{path.resolve()}/{shp}", prj, encoding, cpg
