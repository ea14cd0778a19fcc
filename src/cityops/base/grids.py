"""Unit grids (单元网格): dividing communities into ~10,000 m² grids and coding them.

Implements the division and coding rules summarised in REFERENCE.md Part A §2:

- GB/T 30428.1 / CJ/T 213-2005 division principles: 属地管理 (every grid lies in exactly one
  community), 地理布局 (edges follow roads), 面积适当 / 负载均衡 (about the target area,
  "万米单元网格"), 无缝拼接 (the grids of a community tile it: no gaps, no overlaps).
- DB11/T 2157-2023 15-digit code: 6-digit district (GB/T 2260) + 3-digit street (GB/T 10114)
  + 3-digit community + 3-digit grid sequence (单元网格顺序码), numbered inside the community
  west→east, then north→south (从西向东、由北至南).

Everything here is pure: GeoDataFrames / Shapely 2 arrays in, GeoDataFrame out. Geometry is
EPSG:4326 at the edges; areas and splitting are computed in a metric CRS (the UTM zone of the
data's centre unless one is given), never in degrees (DESIGN.md §3, §8 "CRS").
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyproj
import shapely
import yaml
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from shapely import STRtree

from cityops.core.crs import utm_crs_for
from cityops.core.errors import FieldError, ValidationFailed
from cityops.core.rules import RuleFileError, load_rules, rule_path

if TYPE_CHECKING:
    from geopandas import GeoDataFrame

__all__ = [
    "COMMUNITY_CODE_RE",
    "GRID_CODE_RE",
    "GridRules",
    "build_grids",
    "grid_code_parts",
    "load_grid_rules",
    "metric_crs_for",
    "validate_grid_code",
]

log = logging.getLogger(__name__)

COMMUNITY_CODE_RE = re.compile(r"^\d{12}$")
"""12-digit community code (社区/村): district 6 + street 3 + community 3 (REFERENCE Part A §7)."""
GRID_CODE_RE = re.compile(r"^\d{15}$")
"""15-digit unit-grid code (单元网格代码), DB11/T 2157-2023."""

RULES_FILE = "base/grids.yaml"
"""Rule file, relative to the rules directory (``CITYOPS_RULES_DIR`` or the packaged one)."""

# GEOS type ids (shapely.GeometryType) used to keep the parts we want out of overlay results.
_LINESTRING, _LINEARRING, _POLYGON, _MULTIPOLYGON = 1, 2, 3, 6

# Snap-rounding grid of the merge unions: a T-junction vertex computed on a neighbour's edge is
# off it by ~1e-10 m, which plain floating overlay reads as a gap; 1 µm fuses it while moving
# nothing that a survey could see.
SNAP_GRID_M = 1e-6

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]
GeomArray = NDArray[np.object_]


# --------------------------------------------------------------------------------------------
# Rules (parameters with their source live in rules/base/grids.yaml)
# --------------------------------------------------------------------------------------------


class GridRules(BaseModel):
    """Parameters of the grid division; defaults and sources in ``rules/base/grids.yaml``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    standard_ref: str = "GB/T 30428.1; DB11/T 2157-2023"
    target_area_m2: float = Field(10_000.0, gt=0)
    split_factor: float = Field(1.5, gt=1)
    sliver_factor: float = Field(0.3, gt=0, lt=1)
    max_sequence: int = Field(999, ge=1, le=999)
    row_band_m: float | None = Field(None, gt=0)
    overlap_tolerance_m2: float = Field(1.0, ge=0)
    min_island_m2: float = Field(1.0, ge=0)
    edge_tolerance_m: float = Field(0.01, gt=0)
    min_shared_edge_m: float = Field(1.0, gt=0)
    merge_small_blocks_across_roads: bool = True


class _Parameter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: bool | float | int | None
    label: Literal["V", "C", "1", "U", "cityops"]
    source: str = Field(min_length=1)


class _RulesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int
    standard_ref: str
    parameters: dict[str, _Parameter]


def load_grid_rules(path: str | Path | None = None) -> GridRules:
    """Load and validate the grid-division rule file.

    Default: ``base/grids.yaml`` from the city's ``CITYOPS_RULES_DIR`` if it has one, else the
    packaged file (DESIGN.md §1.4: rules are data). Every parameter must carry a ``source`` and
    an evidence ``label``. A bad file raises :class:`~cityops.core.rules.RuleFileError`.
    """
    if path is None:
        file = rule_path(RULES_FILE)
        spec = load_rules(RULES_FILE, _RulesFile)
    else:
        file = Path(path)
        try:
            spec = _RulesFile.model_validate(yaml.safe_load(file.read_text(encoding="utf-8")))
        except (OSError, yaml.YAMLError, ValidationError) as exc:
            raise RuleFileError(f"{file}: {exc}") from exc
    values = {name: p.value for name, p in spec.parameters.items()}
    try:
        return GridRules.model_validate({"standard_ref": spec.standard_ref, **values})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise RuleFileError(f"{file}: parameter {where}: {first['msg']}") from exc


# --------------------------------------------------------------------------------------------
# Codes
# --------------------------------------------------------------------------------------------


def grid_code_parts(code: str) -> tuple[str, str, str, str]:
    """Split a 15-digit grid code into (district 6, street 9, community 12, grid 15) codes."""
    validate_grid_code(code)
    return code[:6], code[:9], code[:12], code


def validate_grid_code(code: str, community_code: str | None = None) -> None:
    """Check a grid code (DB11/T 2157-2023: ``^\\d{15}$``) and, if given, its community prefix.

    A malformed code or a wrong parent prefix is an error (DESIGN.md §8 "Codes").
    """
    if not isinstance(code, str) or not GRID_CODE_RE.match(code):
        raise ValidationFailed(
            f"grid code {code!r} is not 15 digits (单元网格代码 = 12-digit community code + "
            "3-digit sequence): correct the code",
            [FieldError("code", "must match ^\\d{15}$")],
        )
    if community_code is not None and code[:12] != community_code:
        raise ValidationFailed(
            f"grid code {code} does not start with its community code {community_code}: "
            "a grid belongs to exactly one community (属地管理); fix the code or the community",
            [FieldError("code", f"must start with {community_code}")],
        )


# --------------------------------------------------------------------------------------------
# CRS helpers
# --------------------------------------------------------------------------------------------


def metric_crs_for(bounds: tuple[float, float, float, float]) -> pyproj.CRS:
    """The WGS 84 UTM zone holding the centre of lon/lat ``bounds`` (DESIGN.md §8 "CRS")."""
    if not all(math.isfinite(v) for v in bounds):
        raise ValidationFailed("cannot choose a metric CRS for empty or non-finite bounds")
    minx, miny, maxx, maxy = bounds
    return utm_crs_for((minx + maxx) / 2.0, (miny + maxy) / 2.0)


def _transform(geoms: GeomArray, src: pyproj.CRS, dst: pyproj.CRS) -> GeomArray:
    if src == dst:
        return geoms
    tr = pyproj.Transformer.from_crs(src, dst, always_xy=True)

    def fn(xy: FloatArray) -> FloatArray:
        x, y = tr.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    out: GeomArray = shapely.transform(geoms, fn)
    return out


def _resolve_metric_crs(crs_metric: Any, bounds: tuple[float, float, float, float]) -> pyproj.CRS:
    if crs_metric is None:
        return metric_crs_for(bounds)
    crs = pyproj.CRS.from_user_input(crs_metric)
    if not crs.is_projected:
        raise ValidationFailed(
            f"crs_metric {crs.to_string()} is not a projected CRS: areas must be computed in "
            "metres (UTM or CGCS2000 Gauss–Krüger), never in degrees",
            [FieldError("crs_metric", "must be projected")],
        )
    return crs


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------

_WGS84 = pyproj.CRS.from_epsg(4326)


def _communities_input(communities: GeoDataFrame) -> tuple[NDArray[np.str_], GeomArray]:
    """Validated community codes and EPSG:4326 polygons (made valid where they are not)."""
    if "code" not in communities.columns:
        raise ValidationFailed(
            "communities have no `code` column: give each community its 12-digit code",
            [FieldError("code", "column missing")],
        )
    if communities.crs is None:
        raise ValidationFailed(
            "communities have no CRS: set it (EPSG:4326 for WGS84 lon/lat) before gridding",
            [FieldError("geometry", "CRS missing")],
        )
    if len(communities) == 0:
        raise ValidationFailed("no communities given: nothing to divide into grids")
    gdf = communities if communities.crs == _WGS84 else communities.to_crs(_WGS84)
    codes = np.asarray(gdf["code"].astype(str).to_numpy(), dtype=np.str_)
    errors: list[FieldError] = []
    for i, code in enumerate(codes):
        if not COMMUNITY_CODE_RE.match(code):
            errors.append(FieldError(f"communities[{i}].code", f"{code!r} is not 12 digits"))
    uniq, counts = np.unique(codes, return_counts=True)
    for code in uniq[counts > 1]:
        errors.append(FieldError("code", f"community code {code} appears more than once"))
    geoms: GeomArray = np.asarray(gdf.geometry.to_numpy(), dtype=object)
    bad_type = shapely.is_missing(geoms) | shapely.is_empty(geoms)
    type_ids = shapely.get_type_id(geoms)
    bad_type |= ~np.isin(type_ids, (_POLYGON, _MULTIPOLYGON))
    for j in np.flatnonzero(bad_type).tolist():
        errors.append(
            FieldError(f"communities[{codes[j]}].geometry", "must be a non-empty (Multi)Polygon")
        )
    if errors:
        raise ValidationFailed(
            "communities are not valid input for gridding: each needs a unique 12-digit code "
            "(district 6 + street 3 + community 3) and a polygon",
            errors,
        )
    invalid = ~shapely.is_valid(geoms)
    if invalid.any():
        log.warning(
            "repaired %d invalid community polygon(s) with make_valid: %s",
            int(invalid.sum()),
            ", ".join(codes[invalid][:10]),
        )
        geoms = geoms.copy()
        geoms[invalid] = _polygonal(shapely.make_valid(geoms[invalid]))
    return codes, geoms


def _polygonal(geoms: GeomArray) -> GeomArray:
    """Keep only the polygonal parts of each geometry (make_valid may add lines or points)."""
    parts, idx = shapely.get_parts(geoms, return_index=True)
    # GeometryCollections from make_valid nest one level; a second pass flattens them.
    parts2, idx2 = shapely.get_parts(parts, return_index=True)
    keep = shapely.get_type_id(parts2) == _POLYGON
    owners = idx[idx2][keep]
    out = np.empty(len(geoms), dtype=object)
    for i in range(len(geoms)):
        out[i] = shapely.multipolygons(parts2[keep][owners == i])
    return out


def _roads_input(roads: GeoDataFrame | None, metric: pyproj.CRS) -> GeomArray:
    """Road lines (道路中心线) in the metric CRS; polygons (road surfaces) give their outlines."""
    if roads is None or len(roads) == 0:
        return np.empty(0, dtype=object)
    if roads.crs is None:
        raise ValidationFailed(
            "roads have no CRS: set it (EPSG:4326 for WGS84 lon/lat) before gridding",
            [FieldError("roads.geometry", "CRS missing")],
        )
    geoms = np.asarray(roads.geometry.to_numpy(), dtype=object)
    geoms = geoms[~(shapely.is_missing(geoms) | shapely.is_empty(geoms))]
    # Road surfaces (polygons) cut along their outlines, centre lines along themselves.
    is_area = np.isin(shapely.get_type_id(geoms), (_POLYGON, _MULTIPOLYGON))
    geoms = np.where(is_area, shapely.boundary(geoms), geoms)
    parts = shapely.get_parts(geoms)
    parts = parts[np.isin(shapely.get_type_id(parts), (_LINESTRING, _LINEARRING))]
    return _transform(parts, pyproj.CRS.from_user_input(roads.crs), metric)


def _check_overlaps(codes: NDArray[np.str_], geoms_m: GeomArray, tolerance_m2: float) -> None:
    """Refuse communities that overlap: a grid must belong to exactly one community (属地管理)."""
    tree = STRtree(geoms_m)
    a, b = tree.query(geoms_m, predicate="intersects")
    pair = a < b
    a, b = a[pair], b[pair]
    if not a.size:
        return
    overlap = shapely.area(shapely.intersection(geoms_m[a], geoms_m[b]))
    bad = overlap > tolerance_m2
    if bad.any():
        errors = [
            FieldError(f"communities[{codes[i]}]", f"overlaps {codes[j]} by {area:.1f} m²")
            for i, j, area in zip(a[bad], b[bad], overlap[bad], strict=True)
        ]
        raise ValidationFailed(
            f"{int(bad.sum())} pair(s) of communities overlap by more than {tolerance_m2} m²: "
            "a unit grid must belong to exactly one community (属地管理, 无缝拼接); fix the "
            "community boundaries so that they do not overlap",
            errors[:50],
        )


# --------------------------------------------------------------------------------------------
# Division
# --------------------------------------------------------------------------------------------


def _blocks(
    comm_m: GeomArray, roads_m: GeomArray, edge_tol: float
) -> tuple[GeomArray, IntArray, NDArray[np.bool_]]:
    """Cut each community along the roads into blocks (街坊).

    Returns block polygons, the index of their community and whether the community was cut
    (cut blocks are split along their own orientation, uncut ones on a north-up grid).
    """
    parts, owner = shapely.get_parts(comm_m, return_index=True)
    n_parts = np.bincount(owner, minlength=len(comm_m))
    if not roads_m.size:
        return parts, owner.astype(np.int64), np.zeros(len(parts), dtype=bool)

    tree = STRtree(roads_m)
    ci, ri = tree.query(comm_m, predicate="intersects")
    # Clip roads to the community's bounding box grown by a margin, not to the community
    # itself: a line cut exactly at the boundary ends a rounding error short of it, leaves a
    # dangle and silently fails to cut. Lines that overrun the boundary are noded against it.
    margin = 100 * edge_tol
    box = shapely.bounds(comm_m[ci])
    frames = shapely.box(
        box[:, 0] - margin, box[:, 1] - margin, box[:, 2] + margin, box[:, 3] + margin
    )
    clipped = shapely.intersection(roads_m[ri], frames)
    lines, li = shapely.get_parts(clipped, return_index=True)
    keep = np.isin(shapely.get_type_id(lines), (_LINESTRING, _LINEARRING))
    lines, line_owner = lines[keep], ci[li[keep]]
    has_roads = np.zeros(len(comm_m), dtype=bool)
    has_roads[line_owner] = True

    out_geoms: list[GeomArray] = [parts[~has_roads[owner]]]
    out_owner: list[IntArray] = [owner[~has_roads[owner]].astype(np.int64)]
    out_cut: list[NDArray[np.bool_]] = [np.zeros(int((~has_roads[owner]).sum()), dtype=bool)]

    order = np.argsort(line_owner, kind="stable")
    line_owner, lines = line_owner[order], lines[order]
    starts = np.flatnonzero(np.r_[True, line_owner[1:] != line_owner[:-1]])
    ends = np.r_[starts[1:], len(line_owner)]
    # One GEOS noding + polygonize per community that roads cross: a loop over ~1,000
    # communities, not over rows; every step inside is a whole-array call.
    for s, e in zip(starts, ends, strict=True):
        c = int(line_owner[s])
        comm = comm_m[c]
        ring = shapely.boundary(comm)
        # A road that ends a hair short of the boundary (a T-junction at the community edge)
        # would dangle; snapping its vertices onto the boundary lets it cut.
        mine = shapely.snap(lines[s:e], ring, 10 * edge_tol)
        linework = shapely.union_all(np.r_[np.array([ring]), mine])
        faces = shapely.get_parts(shapely.polygonize(shapely.get_parts(linework)))
        if faces.size:
            # Faces inside a hole of the community (or outside it) are not part of it.
            faces = faces[shapely.covers(comm, shapely.point_on_surface(faces))]
        area_c = shapely.area(comm)
        gap = area_c - float(shapely.area(faces).sum()) if faces.size else area_c
        if abs(gap) > 1e-9 * area_c + edge_tol**2:
            # Noding lost a piece (floating point): add the remainder so the tiling stays exact.
            rest = shapely.difference(comm, shapely.union_all(faces)) if faces.size else comm
            extra = shapely.get_parts(rest)
            extra = extra[shapely.get_type_id(extra) == _POLYGON]
            faces = np.r_[faces, extra]
        cut = len(faces) > n_parts[c]
        out_geoms.append(faces)
        out_owner.append(np.full(len(faces), c, dtype=np.int64))
        out_cut.append(np.full(len(faces), cut, dtype=bool))
    return np.concatenate(out_geoms), np.concatenate(out_owner), np.concatenate(out_cut)


def _split_large(
    blocks: GeomArray,
    oriented: NDArray[np.bool_],
    target: float,
    split_factor: float,
    edge_tol: float,
) -> tuple[GeomArray, IntArray]:
    """Split blocks above ``split_factor × target`` into cells of about ``target`` m².

    Road-cut blocks use a regular grid along their minimum rotated rectangle (the block's own
    orientation, so cells line up with the roads); uncut communities use a north-up grid
    anchored on their bounding box. The cell count per side is chosen so that
    ``area / (nx·ny)`` is closest to the target in ratio terms. Returns pieces (Polygons) and
    the index of their block.
    """
    area = shapely.area(blocks)
    big = np.flatnonzero(area > split_factor * target)
    small_idx = np.setdiff1d(np.arange(len(blocks)), big)
    if not big.size:
        return blocks, np.arange(len(blocks), dtype=np.int64)

    env = np.where(
        oriented[big], shapely.oriented_envelope(blocks[big]), shapely.envelope(blocks[big])
    )
    rect_ok = shapely.get_type_id(env) == _POLYGON
    env_coords = shapely.get_coordinates(shapely.get_exterior_ring(env[rect_ok]))
    # Each rectangle ring has 5 coordinates: p0, p1, p2, p3, p0.
    ring = env_coords.reshape(-1, 5, 2)
    bi = big[rect_ok]
    p0 = ring[:, 0, :]
    e1 = ring[:, 1, :] - p0
    e2 = ring[:, 3, :] - p0
    length = np.hypot(e1[:, 0], e1[:, 1])
    width = np.hypot(e2[:, 0], e2[:, 1])
    # Make e1 the long side, so that equal blocks get equal splits whichever corner GEOS
    # starts the rectangle at.
    swap = width > length
    e1[swap], e2[swap] = e2[swap].copy(), e1[swap].copy()
    length, width = np.maximum(length, width), np.minimum(length, width)
    ok = (length > edge_tol) & (width > edge_tol)
    bi, p0, e1, e2, length, width = bi[ok], p0[ok], e1[ok], e2[ok], length[ok], width[ok]
    # Blocks whose rectangle is degenerate stay whole.
    unsplit = np.r_[small_idx, np.setdiff1d(big, bi)]

    # Grow the rectangle by a millimetre: a rotated rectangle is computed, not copied, and its
    # sides can run micrometres off the block's edges at a tiny angle; such near-coincident
    # edges make the overlay snap and leave hair gaps. Clear of the block, the clip is clean.
    grow = edge_tol / 10
    u1 = e1 / length[:, None]
    u2 = e2 / width[:, None]
    p0 = p0 - grow * (u1 + u2)
    e1 = e1 + 2 * grow * u1
    e2 = e2 + 2 * grow * u2
    length = length + 2 * grow
    width = width + 2 * grow

    a = area[bi]
    n = np.maximum(2, np.floor(a / target + 0.5))
    ny = np.maximum(1, np.floor(np.sqrt(n * width / length) + 0.5))
    nx_lo = np.maximum(1, np.floor(n / ny))
    nx_hi = np.maximum(1, np.ceil(n / ny))
    err_lo = np.abs(np.log(a / (nx_lo * ny) / target))
    err_hi = np.abs(np.log(a / (nx_hi * ny) / target))
    nx = np.where(err_hi < err_lo, nx_hi, nx_lo).astype(np.int64)
    ny = ny.astype(np.int64)

    k = nx * ny
    cell_block = np.repeat(np.arange(len(bi)), k)
    offsets = np.repeat(np.cumsum(k) - k, k)
    local = np.arange(int(k.sum())) - offsets
    u = local % nx[cell_block]
    v = local // nx[cell_block]
    # Corners are computed from integer lattice positions, so neighbouring cells share
    # bit-identical coordinates and the cells tile the rectangle exactly.
    du = np.array([0, 1, 1, 0, 0])
    dv = np.array([0, 0, 1, 1, 0])
    fu = (u[:, None] + du[None, :]) / nx[cell_block][:, None]
    fv = (v[:, None] + dv[None, :]) / ny[cell_block][:, None]
    coords = (
        p0[cell_block][:, None, :]
        + fu[:, :, None] * e1[cell_block][:, None, :]
        + fv[:, :, None] * e2[cell_block][:, None, :]
    )
    cells = shapely.polygons(coords)
    pieces = shapely.intersection(cells, blocks[bi[cell_block]])
    parts, pi = shapely.get_parts(pieces, return_index=True)
    keep = (shapely.get_type_id(parts) == _POLYGON) & (shapely.area(parts) > 0)
    split_geoms = parts[keep]
    split_block = bi[cell_block[pi[keep]]]
    return (
        np.r_[blocks[unsplit], split_geoms],
        np.r_[unsplit, split_block].astype(np.int64),
    )


def _dissolve(geoms: GeomArray, parent: IntArray, grid_size: float) -> tuple[GeomArray, IntArray]:
    """Union every group of pieces that share a root; returns (geometries, root index).

    The union snap-rounds to ``grid_size`` so that edges which coincide only up to rounding
    (a T-junction vertex a fraction of a millimetre off its neighbour's edge) fuse instead of
    leaving a hair-thin gap that would split the grid in two.
    """
    order = np.argsort(parent, kind="stable")
    roots, starts, sizes = np.unique(parent[order], return_index=True, return_counts=True)
    out = geoms[roots].copy()
    multi = np.flatnonzero(sizes > 1)
    if multi.size:
        width = int(sizes[multi].max())
        # One vectorised union over a None-padded (groups × members) array.
        table = np.full((multi.size, width), None, dtype=object)
        for col in range(width):
            has = sizes[multi] > col
            table[has, col] = geoms[order[starts[multi[has]] + col]]
        out[multi] = shapely.union_all(table, axis=1, grid_size=grid_size)
    return out, roots.astype(np.int64)


def _merge_small(
    geoms: GeomArray,
    comm: IntArray,
    block: IntArray,
    threshold: float,
    edge_tol: float,
    min_shared: float,
    same_block: bool,
) -> tuple[GeomArray, IntArray, IntArray]:
    """Merge pieces under ``threshold`` m² into the neighbour sharing the longest edge.

    Neighbours are limited to the same community (a grid never spans two communities) and,
    when ``same_block``, to the same road block, so that grid edges keep following roads. A
    piece only merges into a larger one (ties broken by index), which makes the merge graph a
    forest: every group is unioned once per round, and rounds repeat until nothing changes.
    """
    grid_size = SNAP_GRID_M
    # Pieces that came back in parts from a union are frozen (never the merging party again),
    # so a pair that cannot fuse does not retry forever.
    frozen = np.zeros(len(geoms), dtype=bool)
    for _ in range(64):
        area = shapely.area(geoms)
        small = np.flatnonzero((area < threshold) & ~frozen)
        if not small.size:
            break
        tree = STRtree(geoms)
        # dwithin, not intersects: neighbours along a T-junction may be 1e-10 m apart.
        si, ni = tree.query(geoms[small], predicate="dwithin", distance=edge_tol)
        si = small[si]
        ok = (ni != si) & (comm[ni] == comm[si])
        if same_block:
            ok &= block[ni] == block[si]
        ok &= (area[ni] > area[si]) | ((area[ni] == area[si]) & (ni > si))
        si, ni = si[ok], ni[ok]
        if not si.size:
            break
        uniq, inv = np.unique(ni, return_inverse=True)
        grown = shapely.buffer(geoms[uniq], edge_tol, quad_segs=1)
        shared = shapely.length(shapely.intersection(shapely.boundary(geoms[si]), grown[inv]))
        # A real shared edge, not a corner: two pieces meeting at an acute corner run within
        # the tolerance of each other for a short stretch, which must not count.
        # Tiny pieces (a corner cut off by a road) have no edge that long: for them a quarter
        # of their own perimeter is enough.
        ok = shared > np.minimum(min_shared, 0.25 * shapely.length(geoms[si]))
        si, ni, shared = si[ok], ni[ok], shared[ok]
        if not si.size:
            break
        # Best neighbour per small piece: longest shared edge.
        order = np.lexsort((-shared, si))
        si, ni = si[order], ni[order]
        first = np.r_[True, si[1:] != si[:-1]]
        parent = np.arange(len(geoms), dtype=np.int64)
        parent[si[first]] = ni[first]
        while True:
            nxt = parent[parent]
            if np.array_equal(nxt, parent):
                break
            parent = nxt
        geoms, roots = _dissolve(geoms, parent, grid_size)
        comm, block, frozen = comm[roots], block[roots], frozen[roots]
        # Safety net: a union that came out in several parts (pieces touching at a point
        # only) goes back to its parts, so that grids stay single Polygons.
        # (A one-part MultiPolygon from the union is unwrapped by the same step.)
        if (shapely.get_type_id(geoms) != _POLYGON).any():
            parts, pi = shapely.get_parts(geoms, return_index=True)
            split = np.bincount(pi, minlength=len(geoms))[pi] > 1
            keep = (shapely.get_type_id(parts) == _POLYGON) & (shapely.area(parts) > 0)
            geoms, comm, block = parts[keep], comm[pi[keep]], block[pi[keep]]
            frozen = frozen[pi[keep]] | split[keep]
    return geoms, comm, block


def _drop_noise_islands(
    geoms: GeomArray,
    comm: IntArray,
    codes: NDArray[np.str_],
    min_island: float,
) -> tuple[GeomArray, IntArray]:
    """Drop digitising noise among the small pieces that merging left alone.

    What is still small after merging has no neighbour in its community to join: an isolated
    part of a multi-part community, or a community smaller than the threshold as a whole.
    Grids stay single Polygons (layer ``grids`` is a Polygon layer), so such a part keeps its
    own grid, unless it is under ``min_island`` m²: then it is noise and is dropped (warned).
    """
    area = shapely.area(geoms)
    noise = area < min_island
    # Never drop the only piece of a community.
    counts = np.bincount(comm, minlength=len(codes))
    noise &= counts[comm] > 1
    if noise.any():
        log.warning(
            "dropped %d isolated community part(s) under %s m² (digitising noise): %s",
            int(noise.sum()),
            min_island,
            ", ".join(sorted(set(codes[comm[noise]].tolist()))[:10]),
        )
    return geoms[~noise], comm[~noise]


def _sequence(geoms: GeomArray, comm: IntArray, comm_m: GeomArray, band: float) -> IntArray:
    """Sequence numbers 1… per community: north→south rows, west→east inside a row.

    DB11/T 2157-2023 numbers grids 从西向东、由北至南. Rows are bands of height ``band``
    measured down from the community's northern edge (in the metric CRS); a grid's row is the
    band holding its centroid, and grids in one row are ordered by centroid x.
    """
    cxy = shapely.get_coordinates(shapely.centroid(geoms))
    north = shapely.bounds(comm_m)[:, 3]
    row = np.floor((north[comm] - cxy[:, 1]) / band).astype(np.int64)
    # Keys, least significant first: centroid y (north first, only breaks exact ties), x, row.
    order = np.lexsort((-cxy[:, 1], cxy[:, 0], row, comm))
    seq = np.empty(len(geoms), dtype=np.int64)
    sorted_comm = comm[order]
    starts = np.r_[0, np.flatnonzero(sorted_comm[1:] != sorted_comm[:-1]) + 1]
    first = np.zeros(len(order), dtype=np.int64)
    first[starts] = starts
    first = np.maximum.accumulate(first)
    seq[order] = np.arange(len(order)) - first + 1
    return seq


def build_grids(
    communities: GeoDataFrame,
    roads: GeoDataFrame | None = None,
    *,
    target_area_m2: float = 10_000,
    crs_metric: Any = None,
    rules: GridRules | None = None,
) -> GeoDataFrame:
    """Divide communities into unit grids (单元网格) and give each its 15-digit code.

    GB/T 30428.1 / CJ/T 213 principles (REFERENCE.md Part A §2): each community (社区/村) is
    cut along the roads into blocks (街坊, 地理布局); blocks above ``split_factor × target``
    are split into roughly equal cells along the block's orientation (面积适当, 负载均衡);
    pieces under ``sliver_factor × target`` merge into the neighbour in the same block sharing
    the longest edge, and a whole block that small into a neighbouring block of the same
    community (rule ``merge_small_blocks_across_roads``; the only case where a road runs
    inside a grid, besides dead-end roads that bound nothing). Without roads, a north-up grid
    of ~target cells is clipped to the community. An isolated part of a multi-part community
    too small to stand alone keeps its own grid (grids stay single Polygons); one under
    ``min_island_m2`` is digitising noise and is dropped with a warning.

    Guarantees: the grids of a community tile it (无缝拼接: union = community within floating
    tolerance, no overlaps); every grid lies in exactly one community (属地管理); codes are
    ``community code + 3-digit sequence`` (DB11/T 2157-2023), numbered west→east in rows
    running north→south (rows of ``row_band_m``, default √target, from the community's northern
    edge); geometries are single Polygons in EPSG:4326; ``area_m2`` is measured in
    ``crs_metric`` (default: the UTM zone of the data's centre).

    Args:
        communities: ``code`` (12 digits: district 6 + street 3 + community 3) and polygons.
        roads: optional road centre lines (or road surfaces, which cut along their outlines).
        target_area_m2: nominal grid area (万米单元网格: 10,000 m²); a caller without its own
            value should pass ``load_grid_rules().target_area_m2`` (the city's rule file).
        crs_metric: a projected CRS (anything pyproj accepts) for areas and splitting.
        rules: division parameters; default ``rules/base/grids.yaml``.

    Returns:
        GeoDataFrame with ``code``, ``community_code``, ``street_code``, ``district_code``,
        ``area_m2`` and geometry (EPSG:4326), sorted by code.

    Raises:
        ValidationFailed: bad codes/geometries, overlapping communities, a non-projected
            ``crs_metric``, or a community that would need more than 999 grids.
    """
    import geopandas as gpd

    if not (target_area_m2 > 0 and math.isfinite(target_area_m2)):
        raise ValidationFailed(
            f"target_area_m2 must be a positive number of m², got {target_area_m2}",
            [FieldError("target_area_m2", "must be > 0")],
        )
    rules = rules or load_grid_rules()
    target = float(target_area_m2)
    codes, geoms = _communities_input(communities)
    bounds = tuple(float(v) for v in shapely.total_bounds(geoms))
    metric = _resolve_metric_crs(crs_metric, (bounds[0], bounds[1], bounds[2], bounds[3]))
    comm_m = _transform(geoms, _WGS84, metric)
    comm_area = shapely.area(comm_m)

    # Fail fast before any heavy work when a community cannot fit in 999 sequence numbers.
    _check_capacity(codes, comm_area, comm_area / target, target, rules.max_sequence, early=True)
    _check_overlaps(codes, comm_m, rules.overlap_tolerance_m2)

    roads_m = _roads_input(roads, metric)
    tol = rules.edge_tolerance_m
    blocks, block_comm, cut = _blocks(comm_m, roads_m, tol)
    pieces, piece_block = _split_large(blocks, cut, target, rules.split_factor, tol)
    piece_comm = block_comm[piece_block]

    threshold = rules.sliver_factor * target
    pieces, piece_comm, piece_block = _merge_small(
        pieces, piece_comm, piece_block, threshold, tol, rules.min_shared_edge_m, same_block=True
    )
    if rules.merge_small_blocks_across_roads:
        pieces, piece_comm, piece_block = _merge_small(
            pieces,
            piece_comm,
            piece_block,
            threshold,
            tol,
            rules.min_shared_edge_m,
            same_block=False,
        )
    pieces, piece_comm = _drop_noise_islands(pieces, piece_comm, codes, rules.min_island_m2)

    counts = np.bincount(piece_comm, minlength=len(codes))
    _check_capacity(codes, comm_area, counts.astype(float), target, rules.max_sequence, early=False)

    band = rules.row_band_m or math.sqrt(target)
    seq = _sequence(pieces, piece_comm, comm_m, band)
    comm_codes = codes[piece_comm]
    grid_codes = np.char.add(comm_codes, np.char.zfill(seq.astype(str), 3))
    area_m2 = shapely.area(pieces)
    out_geoms = _transform(pieces, metric, _WGS84)
    order = np.argsort(grid_codes, kind="stable")
    gdf = gpd.GeoDataFrame(
        {
            "code": grid_codes[order].astype(object),
            "community_code": comm_codes[order].astype(object),
            "street_code": comm_codes[order].astype("U9").astype(object),
            "district_code": comm_codes[order].astype("U6").astype(object),
            "area_m2": area_m2[order],
        },
        geometry=out_geoms[order],
        crs=_WGS84,
    )
    return gdf.reset_index(drop=True)


def _check_capacity(
    codes: NDArray[np.str_],
    comm_area: FloatArray,
    counts: FloatArray,
    target: float,
    max_sequence: int,
    *,
    early: bool,
) -> None:
    """A community needing more than ``max_sequence`` grids cannot be coded (3-digit sequence)."""
    # The early check uses area/target, which can overshoot the final count a little; allow
    # 1.5× before refusing so that only hopeless inputs stop before the real count.
    limit = max_sequence * (1.5 if early else 1.0)
    bad = np.flatnonzero(counts > limit)
    if not bad.size:
        return
    errors = []
    for i in bad:
        need = comm_area[i] / max_sequence * 1.5
        suggest = math.ceil(need / 1000.0) * 1000
        errors.append(
            FieldError(
                f"communities[{codes[i]}]",
                f"needs about {round(float(counts[i]))} grids ({comm_area[i]:.0f} m²); the "
                f"3-digit grid sequence allows {max_sequence}: try target_area_m2 = {suggest} "
                "or split the community",
            )
        )
    worst = bad[np.argmax(comm_area[bad])]
    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    raise ValidationFailed(
        f"community {codes[worst]}{more} would need more than {max_sequence} unit grids at "
        f"target {target:.0f} m² — the 15-digit code has a 3-digit grid sequence "
        f"(DB11/T 2157-2023): pass a larger target_area_m2 (e.g. "
        f"{math.ceil(comm_area[worst] / max_sequence * 1.5 / 1000.0) * 1000} m²) or split the "
        "community",
        errors,
    )
