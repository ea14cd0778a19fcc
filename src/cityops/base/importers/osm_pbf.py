"""OpenStreetMap PBF reader (via pyosmium), one target layer at a time.

* ``buildings``: areas (closed ways and multipolygon relations, assembled by osmium) tagged
  ``building`` (not ``building=no``). ``kind`` = the building value, ``floors`` =
  ``building:levels``, ``height`` = the ``height`` tag in metres ("12", "12 m"), ``year_built``
  = a four-digit ``start_date``. A height is never invented from levels here (the write path
  decides how floors become heights, the same for every format).
* ``roads``: ways tagged ``highway``, as LineStrings; ``kind`` = the highway value.
* ``pois``: nodes tagged ``amenity`` as points, and ``amenity`` areas as a point inside them
  (``osm_type`` says which); ``kind`` = the amenity value.

Every row keeps ``osm_type``, ``osm_id`` and all its tags (``tags``, a dict). OSM is WGS84 by
definition. Unlike the other formats, OSM is community data and extracts are clipped at a
bounding box, so ways with missing nodes, relations that cannot be assembled and invalid
polygons are **skipped with a warning** naming how many and which, instead of refusing the
file; tag values that are not numbers (``building:levels=2;3``) become null with a warning.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import osmium
import pandas as pd
import shapely

from cityops.base.importers._frame import (
    Locator,
    ProgressCallback,
    SourceFrame,
    build_frame,
    resolve_crs,
)
from cityops.core.errors import ImportFailed

OSM_LAYERS = {"buildings": "building", "roads": "highway", "pois": "amenity"}
_NUMBER = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(?:m|metres|meters)?\s*$", re.IGNORECASE)
_YEAR = re.compile(r"^\s*(\d{4})\s*$")


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    match = _NUMBER.match(text)
    return float(match.group(1)) if match else None


def _address(tags: dict[str, str]) -> str | None:
    if "addr:full" in tags:
        return tags["addr:full"]
    street = tags.get("addr:street")
    number = tags.get("addr:housenumber")
    if street and number:
        return f"{street} {number}"
    return street or None


def read_osm_pbf(
    path: Path,
    *,
    layer: str,
    crs: str | None = None,
    progress: ProgressCallback | None = None,
) -> SourceFrame:
    """Read buildings, roads or POIs (by ``layer``) from an OSM PBF file."""
    file = str(path)
    if layer not in OSM_LAYERS:
        raise ImportFailed(
            file,
            f"an OSM PBF file can be read into layers {', '.join(OSM_LAYERS)}, not {layer!r}",
        )
    with path.open("rb") as fh:
        head = fh.read(64)
    if b"OSMHeader" not in head:
        raise ImportFailed(
            file, "is not an OSM PBF file (no OSMHeader block); download a .osm.pbf extract"
        )
    resolved = resolve_crs(file, given=crs, declared="EPSG:4326", default_wgs84=False)
    key = OSM_LAYERS[layer]
    factory = osmium.geom.WKBFactory()
    processor = osmium.FileProcessor(file).with_locations()
    if layer != "roads":
        processor = processor.with_areas()
    processor = processor.with_filter(osmium.filter.KeyFilter(key))

    rows: list[dict[str, Any]] = []
    wkbs: list[str] = []
    candidates: set[tuple[str, int]] = set()
    produced: set[tuple[str, int]] = set()
    skipped: list[str] = []
    if progress:
        progress("read", 0, 1)  # the object count is unknown until the end
    try:
        for obj in processor:
            tags = {t.k: t.v for t in obj.tags}
            if key not in tags or (layer == "buildings" and tags[key] == "no"):
                continue
            if isinstance(obj, osmium.osm.Area):
                osm_type = "way" if obj.from_way() else "relation"
                ident = int(obj.orig_id())
                try:
                    wkb = factory.create_multipolygon(obj)
                except RuntimeError:
                    skipped.append(f"{osm_type} {ident}")
                    continue
            elif isinstance(obj, osmium.osm.Way):
                if layer != "roads":
                    # Areas come back as Area objects; remember the way to report it if not.
                    if obj.is_closed() or layer == "buildings":
                        candidates.add(("way", obj.id))
                    continue
                osm_type, ident = "way", int(obj.id)
                try:
                    wkb = factory.create_linestring(obj)
                except (osmium.InvalidLocationError, RuntimeError):
                    skipped.append(f"way {ident}")
                    continue
            elif isinstance(obj, osmium.osm.Node):
                if layer != "pois":
                    continue
                osm_type, ident = "node", int(obj.id)
                try:
                    wkb = factory.create_point(obj)
                except (osmium.InvalidLocationError, RuntimeError):
                    skipped.append(f"node {ident}")
                    continue
            elif isinstance(obj, osmium.osm.Relation):
                if tags.get("type") in ("multipolygon", "boundary") and layer != "roads":
                    candidates.add(("relation", obj.id))
                continue
            else:
                continue
            produced.add((osm_type, ident))
            rows.append({"osm_type": osm_type, "osm_id": ident, "tags": tags})
            wkbs.append(wkb)
    except RuntimeError as exc:
        raise ImportFailed(file, f"is not a readable OSM PBF file: {exc}") from exc

    if progress:
        progress("read", 1, 1)
    warnings: list[str] = []
    missing = sorted(f"{t} {i}" for t, i in candidates - produced) + skipped
    if missing:
        warnings.append(
            f"{len(missing)} OSM objects tagged {key!r} could not be built (unclosed or "
            f"incomplete in this clipped extract) and were skipped, e.g. {', '.join(missing[:5])}"
        )
    geometry = shapely.from_wkb(np.array(wkbs, dtype=object), on_invalid="ignore")
    if layer == "pois" and len(rows):
        areas = np.array([r["osm_type"] != "node" for r in rows], dtype=bool)
        geometry[areas] = shapely.point_on_surface(geometry[areas])
    if len(rows):
        keep = ~shapely.is_missing(geometry) & ~shapely.is_empty(geometry)
        keep &= shapely.is_valid(geometry)
        if not keep.all():
            dropped = [f"{rows[i]['osm_type']} {rows[i]['osm_id']}" for i in np.flatnonzero(~keep)]
            warnings.append(
                f"{len(dropped)} invalid or empty OSM geometries were skipped, e.g. "
                + ", ".join(dropped[:5])
            )
            rows = [r for r, k in zip(rows, keep, strict=True) if k]
            geometry = geometry[keep]
    if layer == "buildings" and len(rows):
        # osmium builds every area as a MultiPolygon; most buildings are one polygon.
        single = shapely.get_num_geometries(geometry) == 1
        geometry[single] = shapely.get_geometry(geometry[single], 0)
    raw, typed, tag_warnings = _columns(rows, layer, key)
    warnings += tag_warnings
    return build_frame(
        file=file,
        fmt="osm_pbf",
        layer=layer,
        raw=raw,
        geometry=geometry,
        crs=resolved,
        locator=Locator(ids=[f"{r['osm_type']} {r['osm_id']}" for r in rows]),
        warnings=warnings,
        typed=typed,
        progress=progress,
    )


def _columns(
    rows: list[dict[str, Any]], layer: str, key: str
) -> tuple[pd.DataFrame, dict[str, pd.Series], list[str]]:
    """Typed columns from tags, leniently: OSM tag values are free text."""
    n = len(rows)
    kind = [r["tags"].get(key) for r in rows]
    names = [r["tags"].get("name") for r in rows]
    raw = pd.DataFrame(
        {
            "osm_type": [r["osm_type"] for r in rows],
            "osm_id": [r["osm_id"] for r in rows],
            "tags": [r["tags"] for r in rows],
        }
    )
    typed: dict[str, pd.Series] = {
        "kind": pd.Series(kind, dtype=object),
        "name": pd.Series(names, dtype=object),
        "address": pd.Series([_address(r["tags"]) for r in rows], dtype=object),
    }
    warnings: list[str] = []
    if layer == "buildings" and n:
        levels_text = [r["tags"].get("building:levels") for r in rows]
        height_text = [r["tags"].get("height") for r in rows]
        levels = [_number(t) for t in levels_text]
        heights = [_number(t) for t in height_text]
        floors: list[int | None] = [
            int(v) if v is not None and v == int(v) and 0 <= v <= 200 else None for v in levels
        ]
        bad_levels = sum(1 for t, f in zip(levels_text, floors, strict=True) if t and f is None)
        bad_heights = sum(
            1 for t, h in zip(height_text, heights, strict=True) if t and (h is None or h < 0)
        )
        if bad_levels:
            warnings.append(
                f"{bad_levels} building:levels values are not whole numbers; left empty"
            )
        if bad_heights:
            warnings.append(f"{bad_heights} height values are not metres; left empty")
        typed["floors"] = pd.Series(floors, dtype=object)
        typed["height"] = pd.Series(
            [h if h is not None and h >= 0 else None for h in heights], dtype=object
        )
        years = []
        for r in rows:
            match = _YEAR.match(r["tags"].get("start_date", ""))
            years.append(int(match.group(1)) if match else None)
        typed["year_built"] = pd.Series(years, dtype=object)
    return raw, typed, warnings
