"""OSMnx GraphML road networks (GraphML 1.0 as written by ``osmnx.save_graphml``).

Each edge becomes one road LineString: its ``geometry`` attribute (WKT) where OSMnx kept one
(simplified edges), else the straight segment between its nodes' ``x``/``y``. NetworkX reads
every attribute as text, so types are restored the way ``osmnx.load_graphml`` does: ``length``
→ float metres, ``oneway``/``reversed`` → bool, and Python-repr lists (``"['steps',
'footway']"``, OSMnx's merge artefact) → lists. ``kind`` is the first ``highway`` value, with the
full list kept in the ``highway`` attribute; ``name`` the first name, all names in ``names``
when there are several; ``osmid`` is always a list of OSM way ids. ``u``/``v``/``key`` keep the
topology (OSM node ids).
"""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import networkx as nx
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
    resolve_crs,
)
from cityops.core.errors import ImportFailed

_BOOL_TEXT = {"True": True, "False": False, "true": True, "false": False}
_BOOL_ATTRIBUTES = ("oneway", "reversed")


def _literal(value: Any) -> Any:
    """OSMnx writes lists as their Python repr; parse those (safely), leave other text."""
    if isinstance(value, str) and value.startswith("[") and value.endswith("]"):
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
    return value


def _as_list(value: Any) -> list[Any] | None:
    if value is None:
        return None
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _to_bool(value: Any) -> Any:
    if isinstance(value, list):
        return [_to_bool(v) for v in value]
    if isinstance(value, str):
        return _BOOL_TEXT.get(value, value)
    return value


def _to_int(value: Any) -> Any:
    try:
        return int(value)
    except (TypeError, ValueError):
        return value


def read_graphml(
    path: Path,
    *,
    layer: str,
    crs: str | None = None,
    progress: ProgressCallback | None = None,
) -> SourceFrame:
    """Read the edges of an OSMnx GraphML graph as road LineStrings."""
    file = str(path)
    with path.open("rb") as fh:
        head = fh.read(4096)
    if b"<graphml" not in head and not head.lstrip().startswith(b"<?xml"):
        raise ImportFailed(file, "is not GraphML (an XML file with a <graphml> root)")
    if progress:
        progress("read", 0, 1)
    try:
        graph = nx.read_graphml(file, force_multigraph=True)
    except ET.ParseError as exc:
        line, col = getattr(exc, "position", (0, 0))
        what = re.sub(r":\s*line \d+, column \d+$", "", str(exc))
        raise ImportFailed(
            file,
            f"malformed XML ({what}); fix the file there and import again",
            location=f"line {line}, column {col}",
        ) from exc
    except (nx.NetworkXError, KeyError, ValueError) as exc:
        raise ImportFailed(file, f"is not a readable GraphML graph: {exc}") from exc
    resolved = resolve_crs(
        file,
        given=crs,
        declared=graph.graph.get("crs"),
        default_wgs84=False,
        hint=" (OSMnx writes it as the graph attribute 'crs'; this graph has none)",
        examples="--crs EPSG:4326 for an unprojected OSMnx graph",
    )

    node_xy: dict[Any, tuple[float, float]] = {}
    node_problems: list[str] = []
    for node, data in graph.nodes(data=True):
        try:
            node_xy[node] = (float(data["x"]), float(data["y"]))
        except (KeyError, TypeError, ValueError):
            node_problems.append(str(node))
    if node_problems:
        raise ImportFailed(
            file,
            f"{len(node_problems)} nodes have no numeric x/y (e.g. node "
            f"{', '.join(node_problems[:5])}); is it an OSMnx graph?",
            location=f"node {node_problems[0]}",
        )

    records: list[dict[str, Any]] = []
    ids: list[str] = []
    wkt: list[str | None] = []
    ends: list[tuple[tuple[float, float], tuple[float, float]]] = []
    for u, v, key, data in graph.edges(keys=True, data=True):
        attrs = {k: _literal(val) for k, val in data.items() if k != "geometry"}
        highway = _as_list(attrs.pop("highway", None))
        names = _as_list(attrs.pop("name", None))
        record: dict[str, Any] = {"u": _to_int(u), "v": _to_int(v), "key": _to_int(key)}
        record["kind"] = highway[0] if highway else None
        record["name"] = names[0] if names else None
        record["highway"] = highway
        record["names"] = names if names and len(names) > 1 else None
        osmid = _as_list(attrs.pop("osmid", None))
        record["osmid"] = [_to_int(x) for x in osmid] if osmid else None
        for name in _BOOL_ATTRIBUTES:
            if name in attrs:
                attrs[name] = _to_bool(attrs[name])
        record.update(attrs)
        records.append(record)
        ids.append(f"{u}→{v} key {key}")
        geometry = data.get("geometry")
        wkt.append(geometry if isinstance(geometry, str) and geometry.strip() else None)
        ends.append((node_xy[u], node_xy[v]))
    if progress:
        progress("read", 1, 1)

    raw = pd.DataFrame.from_records(records)
    n = len(raw)
    locator = Locator(noun="edge", ids=ids)
    geometry = np.full(n, None, dtype=object)
    unbuildable: dict[int, str] = {}
    if n:
        wkt_arr = np.array(wkt, dtype=object)
        has_wkt = wkt_arr != None  # noqa: E711
        parsed = shapely.from_wkt(wkt_arr, on_invalid="ignore")
        for k, i in enumerate(np.flatnonzero(has_wkt & shapely.is_missing(parsed)).tolist()):
            unbuildable[i] = "its geometry attribute is not WKT" if k < MAX_REPORTED_ERRORS else ""
        geometry[has_wkt] = parsed[has_wkt]
        straight = ~has_wkt
        if straight.any():
            coords = np.asarray(ends, dtype=np.float64)[straight]
            geometry[straight] = shapely.linestrings(coords)

    problems = Problems(file, locator)
    typed: dict[str, pd.Series] = {"kind": raw.pop("kind") if n else pd.Series([], dtype=object)}
    if "length" in raw.columns:
        length = pd.to_numeric(raw["length"], errors="coerce")
        bad = np.flatnonzero(raw["length"].notna().to_numpy() & ~np.isfinite(length.to_numpy()))
        problems.add_rows(
            bad, "length", lambda i: f"{raw['length'].iloc[i]!r} is not a length in metres"
        )
        raw["length"] = length
    problems.raise_if_any()
    return build_frame(
        file=file,
        fmt="graphml",
        layer=layer,
        raw=raw,
        geometry=geometry,
        crs=resolved,
        locator=locator,
        unbuildable=unbuildable,
        typed=typed,
        progress=progress,
    )
