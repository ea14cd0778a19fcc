"""The Geometry column type and spatial helpers for both backends (DESIGN §3 "Geometry").

* PostgreSQL: a PostGIS ``geometry(Geometry, 4326)`` column with a GiST index. Values travel
  as hex EWKB text, which PostGIS casts implicitly, so no PostGIS function wraps the binds.
* SQLite: ISO WKB in a BLOB; a bounding box (``minx``…``maxy`` columns of the owning table)
  feeds an R*Tree virtual table that SQL triggers keep in step (see the migrations), so bulk
  paths, raw SQL and migrations cannot desynchronise it. Exact predicates run in Shapely 2
  after the index filter.

Everything is stored in WGS84 (EPSG:4326).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry
from sqlalchemy.engine import Dialect
from sqlalchemy.types import LargeBinary, TypeDecorator, UserDefinedType

SRID = 4326


class _PostGISGeometry(UserDefinedType[Any]):
    cache_ok = True

    def get_col_spec(self, **_kw: Any) -> str:
        return f"geometry(Geometry,{SRID})"


class Geometry(TypeDecorator[BaseGeometry]):
    """A Shapely geometry in WGS84; PostGIS geometry on PostgreSQL, WKB BLOB on SQLite."""

    impl = LargeBinary
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(_PostGISGeometry())
        return dialect.type_descriptor(LargeBinary())

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if isinstance(value, bytes | str):
            return value
        return to_db(value, dialect.name)

    def process_result_value(self, value: Any, dialect: Dialect) -> BaseGeometry | None:
        if value is None:
            return None
        geom: BaseGeometry = shapely.from_wkb(value)
        return geom


def to_db(geom: BaseGeometry, dialect: str) -> bytes | str:
    """One geometry as the backend wants it: hex WKB text for PostGIS (a geometry without SRID
    takes the column's 4326), ISO WKB bytes for SQLite."""
    if dialect == "postgresql":
        text: str = shapely.to_wkb(geom, hex=True, flavor="iso")
        return text
    raw: bytes = shapely.to_wkb(geom, flavor="iso")
    return raw


def to_db_array(geoms: np.ndarray[Any, Any], dialect: str) -> np.ndarray[Any, Any]:
    """Vectorised :func:`to_db` for bulk paths."""
    if dialect == "postgresql":
        out: np.ndarray[Any, Any] = shapely.to_wkb(geoms, hex=True, flavor="iso")
        return out
    raw: np.ndarray[Any, Any] = shapely.to_wkb(geoms, flavor="iso")
    return raw


def bounds_array(geoms: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """(n, 4) array of minx, miny, maxx, maxy."""
    b: np.ndarray[Any, Any] = shapely.bounds(geoms)
    return b


def parse_bbox(text: str) -> tuple[float, float, float, float]:
    """``minx,miny,maxx,maxy`` → floats; raises ``ValueError`` with a reason."""
    parts = [p for p in text.split(",") if p.strip() != ""]
    if len(parts) not in (4, 6):
        raise ValueError("bbox needs 4 numbers: minLon,minLat,maxLon,maxLat")
    try:
        nums = [float(p) for p in parts]
    except ValueError as exc:
        raise ValueError("bbox values must be numbers: minLon,minLat,maxLon,maxLat") from exc
    if len(nums) == 6:
        nums = [nums[0], nums[1], nums[3], nums[4]]
    minx, miny, maxx, maxy = nums
    if minx > maxx or miny > maxy:
        raise ValueError("bbox minimum is larger than its maximum: minLon,minLat,maxLon,maxLat")
    if not (
        -180 <= minx <= 180 and -180 <= maxx <= 180 and -90 <= miny <= 90 and -90 <= maxy <= 90
    ):
        raise ValueError("bbox is outside lon -180..180 / lat -90..90 (WGS84 lon,lat order)")
    return minx, miny, maxx, maxy


# ------------------------------------------------------------------ SQLite R*Tree bulk load
# SQLite's R*Tree module inserts one entry at a time (ChooseSubtree, splits, forced
# reinserts): about 10 µs an entry, 10 s for a million. For a big load the import drops the
# insert trigger and writes the whole tree here instead, packed Sort-Tile-Recursive (STR) in
# NumPy, straight into the module's shadow tables — the storage format the SQLite R*Tree
# documentation describes (``%_node``: node number → blob; ``%_rowid``: entry id → leaf node;
# ``%_parent``: node → parent node; node 1 is the root and its first two bytes hold the depth
# of the tree; a node is a 2-byte depth, a 2-byte cell count and cells of an 8-byte id and
# min/max per dimension as 4-byte floats, all big-endian). ``rtreecheck()`` verifies the
# result in the tests. Coordinates are rounded outward to float32 exactly as the module does
# (``rtreeValueDown`` / ``rtreeValueUp``), so a packed tree holds the same boxes as one filled
# by the triggers.

_RND_TOWARDS = 1.0 - 1.0 / 8388608.0
_RND_AWAY = 1.0 + 1.0 / 8388608.0
_RTREE_CELL = np.dtype([("id", ">i8"), ("x0", ">f4"), ("x1", ">f4"), ("y0", ">f4"), ("y1", ">f4")])


def _f32_down(d: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    f = d.astype(np.float32)
    over = f.astype(np.float64) > d
    if over.any():
        v = d[over]
        f[over] = (v * np.where(v < 0, _RND_AWAY, _RND_TOWARDS)).astype(np.float32)
    return f


def _f32_up(d: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    f = d.astype(np.float32)
    under = f.astype(np.float64) < d
    if under.any():
        v = d[under]
        f[under] = (v * np.where(v < 0, _RND_TOWARDS, _RND_AWAY)).astype(np.float32)
    return f


@dataclass
class PackedRtree:
    """An R*Tree packed by :func:`pack_rtree`, ready for the shadow tables."""

    node_numbers: list[np.ndarray[Any, Any]]  # per level, leaves first
    node_blobs: list[np.ndarray[Any, Any]]  # per level: (nodes, node_size) uint8
    parents: list[tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]]  # (node, parent) pairs
    leaf_of: np.ndarray[Any, Any]  # leaf node number of each entry, in input order

    @property
    def depth(self) -> int:
        return len(self.node_numbers) - 1


def pack_rtree(
    ids: np.ndarray[Any, Any],
    bounds: np.ndarray[Any, Any],
    node_size: int,
) -> PackedRtree:
    """Pack entries (``ids``; ``bounds`` as an (n, 4) array of minx, miny, maxx, maxy) into a
    2-D R*Tree of nodes of ``node_size`` bytes, Sort-Tile-Recursive: every level sorted into
    vertical slices by x, each slice by y, then cut into full nodes."""
    cap = (node_size - 4) // _RTREE_CELL.itemsize
    child = np.asarray(ids, dtype=np.int64)
    b = np.asarray(bounds, dtype=np.float64)
    x0, y0, x1, y1 = _f32_down(b[:, 0]), _f32_down(b[:, 1]), _f32_up(b[:, 2]), _f32_up(b[:, 3])
    out = PackedRtree([], [], [], np.empty(0, dtype=np.int64))
    next_no = 2
    level = 0
    while True:
        n = len(child)
        if n <= cap:  # the root, node 1
            order = np.arange(n)
            nos = np.array([1], dtype=np.int64)
        else:
            nnodes = -(-n // cap)
            per_slice = math.ceil(math.sqrt(nnodes)) * cap
            cx = x0.astype(np.float64) + x1
            cy = y0.astype(np.float64) + y1
            slice_of = np.empty(n, dtype=np.int64)
            slice_of[np.argsort(cx, kind="stable")] = np.arange(n) // per_slice
            order = np.lexsort((cy, slice_of))
            nos = np.arange(next_no, next_no + nnodes, dtype=np.int64)
            next_no += nnodes
        nnodes = len(nos)
        group = np.arange(n) // cap
        cells = np.zeros(nnodes * cap, dtype=_RTREE_CELL)
        cells["id"][:n] = child[order]
        cells["x0"][:n], cells["x1"][:n] = x0[order], x1[order]
        cells["y0"][:n], cells["y1"][:n] = y0[order], y1[order]
        blobs = np.zeros((nnodes, node_size), dtype=np.uint8)
        blobs[:, 4 : 4 + cap * _RTREE_CELL.itemsize] = cells.view(np.uint8).reshape(nnodes, -1)
        counts = np.bincount(group, minlength=nnodes).astype(">u2")
        blobs[:, 2:4] = counts.view(np.uint8).reshape(nnodes, 2)
        node_of = np.empty(n, dtype=np.int64)
        node_of[order] = nos[group]
        if level == 0:
            out.leaf_of = node_of
        else:
            out.parents.append((child, node_of))
        out.node_numbers.append(nos)
        out.node_blobs.append(blobs)
        if nos[0] == 1:
            blobs[0, 0:2] = np.array([level], dtype=">u2").view(np.uint8)
            return out
        starts = np.arange(0, n, cap)
        x0 = np.minimum.reduceat(x0[order], starts)
        y0 = np.minimum.reduceat(y0[order], starts)
        x1 = np.maximum.reduceat(x1[order], starts)
        y1 = np.maximum.reduceat(y1[order], starts)
        child = nos
        level += 1


def _check_name(rtree: str) -> None:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", rtree):
        raise ValueError(f"not a table name: {rtree!r}")


def sqlite_rtree_node_size(cursor: Any, rtree: str) -> int:
    """The node size (bytes) of the R*Tree virtual table ``rtree``: its root node's."""
    _check_name(rtree)
    row = cursor.execute(f'SELECT length(data) FROM "{rtree}_node" WHERE nodeno = 1').fetchone()
    return int(row[0])


def sqlite_rtree_write(
    cursor: Any, rtree: str, ids: np.ndarray[Any, Any], packed: PackedRtree
) -> None:
    """Replace the whole content of the 2-D R*Tree virtual table ``rtree`` by ``packed``
    (:func:`pack_rtree` of ``ids`` and their boxes, with :func:`sqlite_rtree_node_size`).

    ``cursor`` is a DB-API cursor inside the caller's write transaction: like any other write
    it commits or rolls back with it. Entry ids must be unique.
    """
    _check_name(rtree)
    for shadow in ("node", "rowid", "parent"):
        cursor.execute(f'DELETE FROM "{rtree}_{shadow}"')
    for nos, blobs in zip(packed.node_numbers, packed.node_blobs, strict=True):
        cursor.executemany(
            f'INSERT INTO "{rtree}_node" (nodeno, data) VALUES (?, ?)',
            zip(nos.tolist(), map(bytes, blobs), strict=True),
        )
    for nodes, parent in packed.parents:
        cursor.executemany(
            f'INSERT INTO "{rtree}_parent" (nodeno, parentnode) VALUES (?, ?)',
            zip(nodes.tolist(), parent.tolist(), strict=True),
        )
    cursor.executemany(
        f'INSERT INTO "{rtree}_rowid" (rowid, nodeno) VALUES (?, ?)',
        zip(np.asarray(ids, dtype=np.int64).tolist(), packed.leaf_of.tolist(), strict=True),
    )


def sqlite_rtree_load(
    cursor: Any, rtree: str, ids: np.ndarray[Any, Any], bounds: np.ndarray[Any, Any]
) -> None:
    """Replace the whole content of the 2-D R*Tree virtual table ``rtree`` by the entries
    ``ids`` / ``bounds`` (minx, miny, maxx, maxy), packed by :func:`pack_rtree`."""
    packed = pack_rtree(ids, bounds, sqlite_rtree_node_size(cursor, rtree))
    sqlite_rtree_write(cursor, rtree, ids, packed)
