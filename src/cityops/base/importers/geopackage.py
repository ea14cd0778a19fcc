"""GeoPackage reader (OGC 12-128r18 GeoPackage Encoding Standard).

The CRS is what the layer's ``gpkg_spatial_ref_sys`` entry declares. A GeoPackage with more than
one spatial layer needs ``source_layer`` (DESIGN §8 "Imports"); the refusal lists the layers.
This is the million-row path: one Arrow read, then the vectorised checks of :mod:`._frame`.
"""

from __future__ import annotations

from pathlib import Path

import pyogrio
from pyogrio.errors import DataLayerError, DataSourceError

from cityops.base.importers._frame import (
    Locator,
    ProgressCallback,
    SourceFrame,
    build_frame,
    resolve_crs,
)
from cityops.base.importers._ogr import read_ogr
from cityops.core.errors import ImportFailed

_SQLITE_MAGIC = b"SQLite format 3\x00"


def _layers(path: Path, file: str) -> list[tuple[str, str | None]]:
    try:
        rows = pyogrio.list_layers(str(path))
    except (DataSourceError, DataLayerError) as exc:
        raise ImportFailed(file, f"is not a readable GeoPackage: {exc}") from exc
    return [(str(name), None if gtype is None else str(gtype)) for name, gtype in rows]


def choose_layer(
    file: str, layers: list[tuple[str, str | None]], source_layer: str | None, what: str
) -> str:
    """The layer to read: ``source_layer``, or the only spatial layer; else a refusal that
    lists the choices."""
    spatial = [(n, g) for n, g in layers if g is not None]
    listing = ", ".join(f"{n} ({g or 'no geometry'})" for n, g in layers) or "none"
    if source_layer is not None:
        if source_layer not in {n for n, _ in layers}:
            raise ImportFailed(
                file,
                f"has no layer {source_layer!r}; its layers are: {listing}",
                location=f"layer {source_layer}",
            )
        return source_layer
    if not spatial:
        raise ImportFailed(file, f"has no layer with geometries ({what} layers: {listing})")
    if len(spatial) > 1:
        raise ImportFailed(
            file,
            f"has {len(spatial)} layers with geometries: {listing}; choose one with --source-layer",
        )
    return spatial[0][0]


def read_geopackage(
    path: Path,
    *,
    layer: str,
    crs: str | None = None,
    source_layer: str | None = None,
    progress: ProgressCallback | None = None,
) -> SourceFrame:
    """Read one layer of a GeoPackage into a :class:`SourceFrame`."""
    file = str(path)
    with path.open("rb") as fh:
        magic = fh.read(len(_SQLITE_MAGIC))
    if magic != _SQLITE_MAGIC:
        raise ImportFailed(
            file,
            "is not a GeoPackage: a GeoPackage is an SQLite database, but this file does not "
            f"start with the SQLite header (it starts with {magic[:16]!r}); export it again "
            "as GeoPackage",
        )
    name = choose_layer(file, _layers(path, file), source_layer, "its")
    if progress:
        progress("read", 0, 1)
    try:
        data = read_ogr(file, layer=name)
    except (DataSourceError, DataLayerError) as exc:
        raise ImportFailed(file, f"cannot read layer: {exc}", location=f"layer {name}") from exc
    resolved = resolve_crs(file, given=crs, declared=data.crs, default_wgs84=False)
    if progress:
        progress("read", 1, 1)
    return build_frame(
        file=file,
        fmt="gpkg",
        layer=layer,
        raw=data.attrs,
        geometry=data.geometry,
        crs=resolved,
        locator=Locator(noun=f"layer {name}, feature"),
        unbuildable=data.unbuildable,
        source_layer=name,
        progress=progress,
    )
