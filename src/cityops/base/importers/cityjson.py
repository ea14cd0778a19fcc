"""CityJSON reader (CityJSON 1.0, 1.1 and 2.0; https://www.cityjson.org/specs/).

Only ``Building`` city objects are read, each with its ``BuildingPart`` children (recursively)
folded in, one row per building:

* **LoD**: per building the highest LoD its geometries (own and parts') offer, or ``lod`` if
  given (a building without it is an error that lists the LoDs it has).
* **Footprint** (2D): where the chosen geometries carry semantics with ``GroundSurface``, the
  union of the ground surfaces; otherwise the union of the 2D projections of all their
  surfaces (walls project to nothing, roofs and floors to the footprint). Computed in the
  source CRS and snapped to the vertex grid (``transform.scale``), then reprojected.
* **Height** (m): ``measuredHeight`` if the building has it; else, where 3DBAG's
  ``h_maaiveld`` (ground level) exists, highest z − ``h_maaiveld``; else max z − min z of the
  chosen geometries. ``height_source`` says which.
* **CRS**: ``metadata.referenceSystem`` (an OGC URL such as
  ``https://www.opengis.net/def/crs/EPSG/0/7415``; for a compound CRS its horizontal part).
  Without one and without ``--crs`` the file is refused, naming the fix.

Vertices are integers scaled by ``transform`` (``v × scale + translate``), applied first.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import shapely
from shapely.geometry import Polygon

from cityops.base.importers._frame import (
    Locator,
    Problems,
    ProgressCallback,
    SourceFrame,
    build_frame,
    resolve_crs,
)
from cityops.base.importers.geojson import load_json
from cityops.core.errors import ImportFailed

_SURFACE_DEPTH = {
    "MultiSurface": 1,
    "CompositeSurface": 1,
    "Solid": 2,
    "MultiSolid": 3,
    "CompositeSolid": 3,
}


def _lod_key(lod: str) -> tuple[float, ...]:
    try:
        return tuple(float(p) for p in str(lod).split("."))
    except ValueError:
        return (-1.0,)


def _surfaces(geometry: dict[str, Any]) -> Iterator[tuple[list[list[int]], str | None]]:
    """Yield (rings, semantic type) for every surface of a CityJSON geometry."""
    depth = _SURFACE_DEPTH.get(str(geometry.get("type")))
    if depth is None:
        return
    boundaries = geometry.get("boundaries") or []
    semantics = geometry.get("semantics") or {}
    surface_types = [s.get("type") for s in semantics.get("surfaces", [])]
    values = semantics.get("values")

    def walk(b: Any, v: Any, level: int) -> Iterator[tuple[list[list[int]], str | None]]:
        if level == 0:
            kind = surface_types[v] if isinstance(v, int) and v < len(surface_types) else None
            yield b, kind
            return
        for i, child in enumerate(b):
            child_v = v[i] if isinstance(v, list) and i < len(v) else None
            yield from walk(child, child_v, level - 1)

    yield from walk(boundaries, values, depth)


def _vertex_indices(boundaries: Any) -> Iterator[int]:
    if isinstance(boundaries, list):
        for b in boundaries:
            yield from _vertex_indices(b)
    elif isinstance(boundaries, int):
        yield boundaries


def _footprint(
    geometries: list[dict[str, Any]], vertices: np.ndarray, grid: float | None
) -> tuple[Any, str]:
    ground: list[Polygon] = []
    every: list[Polygon] = []
    for g in geometries:
        for rings, kind in _surfaces(g):
            if not rings or len(rings[0]) < 3:
                continue
            shell = vertices[rings[0], :2]
            holes = [vertices[r, :2] for r in rings[1:] if len(r) >= 3]
            poly = Polygon(shell, holes)
            if poly.area <= 0.0:  # a wall: projects to a line
                continue
            every.append(poly)
            if kind == "GroundSurface":
                ground.append(poly)
    chosen, how = (ground, "GroundSurface") if ground else (every, "projection")
    if not chosen:
        return None, how
    merged = shapely.union_all(shapely.make_valid(np.array(chosen, dtype=object)))
    if grid:
        merged = shapely.set_precision(merged, grid)
    polygons = [p for p in shapely.get_parts(merged) if p.geom_type in ("Polygon", "MultiPolygon")]
    if not polygons:
        return None, how
    result = shapely.union_all(polygons) if len(polygons) > 1 else polygons[0]
    return result, how


def read_cityjson(
    path: Path,
    *,
    layer: str,
    crs: str | None = None,
    lod: str | None = None,
    progress: ProgressCallback | None = None,
) -> SourceFrame:
    """Read the buildings of a CityJSON file into a :class:`SourceFrame` (see module doc)."""
    file = str(path)
    doc = load_json(path, file, "a CityJSON file")
    if not isinstance(doc, dict) or doc.get("type") != "CityJSON":
        kind = doc.get("type") if isinstance(doc, dict) else type(doc).__name__
        raise ImportFailed(
            file, f'is JSON but not CityJSON ("type" is {kind!r}, expected "CityJSON")'
        )
    version = str(doc.get("version", ""))
    if not (version.startswith("1.") or version.startswith("2.")):
        raise ImportFailed(
            file,
            f"CityJSON version {version!r} is not supported (1.0, 1.1, 2.0); upgrade it with "
            "`cjio FILE upgrade save OUT`",
        )
    if layer != "buildings":
        raise ImportFailed(file, f"CityJSON is read into the buildings layer only, not {layer!r}")
    metadata = doc.get("metadata") or {}
    declared = metadata.get("referenceSystem") if isinstance(metadata, dict) else None
    resolved = resolve_crs(
        file,
        given=crs,
        declared=declared,
        default_wgs84=False,
        hint=" (metadata.referenceSystem is missing)",
        examples="--crs EPSG:7415 for 3DBAG and other Dutch data, --crs EPSG:2056 for Swiss "
        "data, --crs EPSG:4547 for CGCS2000 3° Gauss-Krüger zone 38",
    )
    try:
        vertices = np.asarray(doc.get("vertices", []), dtype=np.float64).reshape(-1, 3)
    except (TypeError, ValueError) as exc:
        raise ImportFailed(file, f"its vertices are not [x, y, z] numbers ({exc})") from exc
    transform = doc.get("transform")
    grid: float | None = None
    if isinstance(transform, dict):
        scale = np.asarray(transform.get("scale", [1, 1, 1]), dtype=np.float64)
        translate = np.asarray(transform.get("translate", [0, 0, 0]), dtype=np.float64)
        vertices = vertices * scale + translate
        grid = float(min(scale[0], scale[1]))

    objects: dict[str, Any] = doc.get("CityObjects") or {}
    buildings = [(oid, o) for oid, o in objects.items() if o.get("type") == "Building"]
    if not buildings:
        kinds = sorted({str(o.get("type")) for o in objects.values()})
        raise ImportFailed(
            file,
            "contains no Building objects; nothing to import"
            + (f" (it has {', '.join(kinds)})" if kinds else ""),
        )

    warnings: list[str] = []
    records: list[dict[str, Any]] = []
    footprints: list[Any] = []
    heights: list[float | None] = []
    ids: list[str] = []
    missing_lod: list[tuple[int, str]] = []
    bad_index: list[int] = []
    templates = 0
    for n, (oid, obj) in enumerate(buildings):
        if progress and n % 1000 == 0:
            progress("read", n, len(buildings))
        parts = _parts(objects, obj)
        geometries = list(obj.get("geometry") or [])
        for part in parts:
            geometries.extend(objects[part].get("geometry") or [])
        templates += sum(1 for g in geometries if g.get("type") == "GeometryInstance")
        lods = sorted({str(g.get("lod")) for g in geometries if "lod" in g}, key=_lod_key)
        chosen = lod if lod is not None else (lods[-1] if lods else None)
        ids.append(f"CityObject {oid!r}")
        attributes = dict(obj.get("attributes") or {})
        record: dict[str, Any] = {"cityjson_id": oid, "lod": chosen}
        if lod is not None and lod not in lods:
            missing_lod.append((n, ", ".join(lods) or "none"))
            selected: list[dict[str, Any]] = []
        else:
            selected = [g for g in geometries if str(g.get("lod")) == chosen]
        try:
            footprint, how = _footprint(selected, vertices, grid) if selected else (None, "")
            height, source = _height(attributes, selected, vertices)
        except IndexError:
            bad_index.append(n)
            footprint, how, height, source = None, "", None, None
        footprints.append(footprint)
        heights.append(height)
        record["height_source"] = source
        record["footprint_source"] = how or None
        record["parts"] = parts or None
        if "address" in obj:
            record["cityjson_address"] = obj["address"]
        for key, value in attributes.items():
            record.setdefault(key, value)
        records.append(record)
    if templates:
        warnings.append(
            f"{templates} GeometryInstance (template) geometries were ignored; footprints come "
            "from the explicit geometries"
        )

    locator = Locator(noun="building", ids=ids)
    problems = Problems(file, locator)
    problems.add_rows(
        [i for i, _ in missing_lod],
        "lod",
        lambda i: f"has no LoD {lod} (it has: {dict(missing_lod)[i]}); choose another --lod",
    )
    problems.add_rows(
        bad_index,
        "geometry",
        lambda i: (
            f"refers to a vertex index beyond the {len(vertices)} vertices; the file is "
            "corrupt (validate it with cjval)"
        ),
    )
    problems.raise_if_any()
    raw = pd.DataFrame.from_records(records)
    typed = {"height": pd.Series(heights, dtype=object)}
    if progress:
        progress("read", len(buildings), len(buildings))
    return build_frame(
        file=file,
        fmt="cityjson",
        layer=layer,
        raw=raw,
        geometry=_object_array(footprints),
        crs=resolved,
        locator=locator,
        warnings=warnings,
        typed=typed,
        progress=progress,
    )


def _parts(objects: dict[str, Any], obj: dict[str, Any]) -> list[str]:
    """BuildingPart descendants of a building (a part may have parts)."""
    found: list[str] = []
    stack = list(obj.get("children") or [])
    while stack:
        child = stack.pop(0)
        child_obj = objects.get(child)
        if child_obj is None or child_obj.get("type") != "BuildingPart" or child in found:
            continue
        found.append(child)
        stack.extend(child_obj.get("children") or [])
    return found


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _height(
    attributes: dict[str, Any], geometries: list[dict[str, Any]], vertices: np.ndarray
) -> tuple[float | None, str | None]:
    measured = _number(attributes.get("measuredHeight"))
    if measured is not None:
        return measured, "measuredHeight"
    indices = [i for g in geometries for i in _vertex_indices(g.get("boundaries"))]
    if not indices:
        return None, None
    z = vertices[np.asarray(indices, dtype=np.int64), 2]
    ground = _number(attributes.get("h_maaiveld"))
    if ground is not None:
        return round(float(z.max()) - ground, 3), "max z - h_maaiveld"
    return round(float(z.max() - z.min()), 3), "max z - min z"


def _object_array(items: list[Any]) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out
