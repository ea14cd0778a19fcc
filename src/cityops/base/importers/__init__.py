"""Digital-base (城市数字底座) importers: source files → validated WGS84 :class:`SourceFrame`.

:func:`read_source` picks the reader by extension and content; each format lives in its own
module (``geojson``, ``geopackage``, ``shapefile``, ``tabular`` for CSV/xlsx, ``osm_pbf``,
``graphml``, ``cityjson``) and all share the validation and normalisation of ``_frame``. The
readers never touch the database: the write path (atomic bulk insert, history) consumes the
frame. Every refusal is an :class:`~cityops.core.errors.ImportFailed` naming the file, the
feature/row/layer and what to do.
"""

from __future__ import annotations

from pathlib import Path

from cityops.base.importers._frame import (
    FIELD_ALIASES,
    TYPED_COLUMNS,
    Locator,
    ProgressCallback,
    SourceFrame,
)
from cityops.base.importers.cityjson import read_cityjson
from cityops.base.importers.geojson import looks_like_cityjson, read_geojson
from cityops.base.importers.geopackage import read_geopackage
from cityops.base.importers.graphml import read_graphml
from cityops.base.importers.osm_pbf import read_osm_pbf
from cityops.base.importers.shapefile import read_shapefile
from cityops.base.importers.tabular import read_csv, read_xlsx
from cityops.core.errors import ImportFailed

__all__ = [
    "FIELD_ALIASES",
    "FORMATS",
    "TYPED_COLUMNS",
    "Locator",
    "ProgressCallback",
    "SourceFrame",
    "detect_format",
    "read_source",
]

# Extension → format. ".json" is GeoJSON or CityJSON, decided by content.
FORMATS: dict[str, str] = {
    ".geojson": "geojson",
    ".json": "geojson",
    ".gpkg": "gpkg",
    ".shp": "shapefile",
    ".zip": "shapefile",
    ".csv": "csv",
    ".xlsx": "xlsx",
    ".pbf": "osm_pbf",
    ".graphml": "graphml",
}


def detect_format(path: Path) -> str:
    """The format name of ``path`` (by extension; CityJSON by content); ImportFailed if none."""
    file = str(path)
    name = path.name.lower()
    suffix = path.suffix.lower()
    if name.endswith(".city.json") or name.endswith(".cityjson"):
        return "cityjson"
    if suffix == ".xls":
        raise ImportFailed(file, "old Excel .xls workbooks are not read; save it as .xlsx or CSV")
    if suffix == ".osm":
        raise ImportFailed(
            file, "OSM XML is not read; convert it to PBF (osmium cat FILE.osm -o FILE.osm.pbf)"
        )
    fmt = FORMATS.get(suffix)
    if fmt is None:
        raise ImportFailed(
            file,
            f"unsupported file type {suffix or '(no extension)'!r}; supported: GeoJSON (.geojson, "
            ".json), CityJSON (.json, .city.json), GeoPackage (.gpkg), Shapefile (.shp, .zip), "
            "CSV (.csv), Excel (.xlsx), OSM (.osm.pbf), OSMnx GraphML (.graphml)",
        )
    if fmt == "geojson" and looks_like_cityjson(path):
        return "cityjson"
    return fmt


def read_source(
    path: str | Path,
    *,
    layer: str,
    crs: str | None = None,
    source_layer: str | None = None,
    progress: ProgressCallback | None = None,
    lod: str | None = None,
) -> SourceFrame:
    """Read any supported source file into a validated, normalised WGS84 :class:`SourceFrame`.

    ``layer`` is the target layer ("buildings", "roads", "pois", "districts", or a custom one):
    it selects what a multi-theme source yields (OSM PBF), what ``kind`` means and which
    geometry types are accepted. ``crs`` overrides the file's declared CRS (DESIGN §8 "CRS").
    ``source_layer`` picks a layer of a GeoPackage, a shapefile in a zip or a sheet of an xlsx.
    ``lod`` picks a CityJSON LoD ("1.2", "2.2"; default the highest per building).
    ``progress(step, done, total)`` is called as the read advances.

    Raises :class:`ImportFailed` for any refusal; nothing is half-read.
    """
    p = Path(path)
    file = str(path)
    if not p.exists():
        raise ImportFailed(file, "no such file; check the path")
    if p.is_dir():
        raise ImportFailed(file, "is a folder; give the file itself (for a shapefile the .shp)")
    if p.stat().st_size == 0:
        raise ImportFailed(file, "is empty (0 bytes); nothing to import")
    fmt = detect_format(p)
    if fmt == "cityjson":
        return read_cityjson(p, layer=layer, crs=crs, lod=lod, progress=progress)
    if fmt == "geojson":
        return read_geojson(p, layer=layer, crs=crs, progress=progress)
    if fmt == "gpkg":
        return read_geopackage(
            p, layer=layer, crs=crs, source_layer=source_layer, progress=progress
        )
    if fmt == "shapefile":
        return read_shapefile(p, layer=layer, crs=crs, source_layer=source_layer, progress=progress)
    if fmt == "csv":
        return read_csv(p, layer=layer, crs=crs, progress=progress)
    if fmt == "xlsx":
        return read_xlsx(p, layer=layer, crs=crs, source_layer=source_layer, progress=progress)
    if fmt == "osm_pbf":
        return read_osm_pbf(p, layer=layer, crs=crs, progress=progress)
    return read_graphml(p, layer=layer, crs=crs, progress=progress)
