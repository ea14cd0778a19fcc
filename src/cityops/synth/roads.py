"""Road and river names, the ``roads`` and ``water`` layers, and building addresses (门牌).

Road classes follow CJJ 37-2012 (主干路 arterial, 次干路 secondary, 支路 branch). Names follow
common habits: arterials take civic stems (人民路, 长江路, some 大道), long arterials split
into 东/西 (南/北) halves at the centre (干将东路/干将西路), branch roads are 巷/弄/里 in the
old core. House numbers run from the start of the road (or from the centre for split
arterials), odd on one side and even on the other; buildings of an estate (小区) share the gate
number and are told apart by 幢.
"""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from numpy.typing import NDArray

from cityops.synth import strs
from cityops.synth.context import Ctx
from cityops.synth.layout import (
    ARTERIAL,
    BRANCH,
    CLASS_NAMES,
    RIVER,
    SECONDARY,
    rank_within,
    stage_rng,
)
from cityops.synth.names import stems, take

__all__ = ["addresses", "name_roads", "roads_frame", "water_frame"]

F = NDArray[np.float64]
IA = NDArray[np.int64]
S = NDArray[np.str_]

STAGE_ROADS = 30
LABEL_CN = {ARTERIAL: "主干路", SECONDARY: "次干路", BRANCH: "支路"}
#: House-number pitch along a road (m): two slots never share a number (slots are ≥ 11 m).
NUMBER_PITCH_M = 10.0
SPLIT_MIN_M = 2000.0


def name_roads(ctx: Ctx) -> None:
    """Pick the district's road segments and name every road and river line on them."""
    lay = ctx.lay
    sel = lay.sel
    s0, s1 = lay.seg_side0, lay.seg_side1
    in0 = (s0 >= 0) & sel[np.maximum(s0, 0)]
    in1 = (s1 >= 0) & sel[np.maximum(s1, 0)]
    cls = lay.line_cls[lay.seg_line]
    touching = in0 | in1
    ctx.road_seg = np.flatnonzero(touching & (cls != RIVER))
    rng = stage_rng(ctx.seed, STAGE_ROADS)

    n_lines = len(lay.line_pos)
    names = np.full(n_lines, "", dtype=object)
    used = np.unique(lay.seg_line[ctx.road_seg])
    ucls = lay.line_cls[used]
    order = used[np.lexsort((used, ucls))]  # arterials first, then secondary, then branch
    pool = stems(rng, civic_first=True)
    stem = take(pool, 0, len(order))
    ocls = lay.line_cls[order]
    cell = lay.line_cell[order]
    zone_of_cell = _cell_zone(ctx)
    core = (cell >= 0) & (zone_of_cell[np.maximum(cell, 0)] == 0)
    x = rng.random(len(order))
    suffix = np.select(
        [
            ocls == ARTERIAL,
            ocls == SECONDARY,
            core,
        ],
        [
            np.where(x < 0.2, "大道", "路"),
            np.where(x < 0.3, "街", "路"),
            np.where(x < 0.5, "巷", np.where(x < 0.8, "弄", "里")),
        ],
        default=np.where(x < 0.4, "街", np.where(x < 0.7, "路", "巷")),
    )
    names[order] = np.char.add(stem.astype(str), suffix.astype(str))

    # Rivers: every river line that touches the district.
    rseg = np.flatnonzero(touching & (cls == RIVER))
    rivers = np.unique(lay.seg_line[rseg])
    rpool = stems(stage_rng(ctx.seed, STAGE_ROADS, 1))
    rx = rng.random(len(rivers))
    names[rivers] = np.char.add(
        take(rpool, 0, len(rivers)).astype(str), np.where(rx < 0.6, "河", "塘")
    )
    ctx.line_name = names.astype(str)

    # Long arterials are split into 东/西 (南/北) halves at the centre.
    split = np.zeros(n_lines, dtype=bool)
    seg = ctx.road_seg
    line = lay.seg_line[seg]
    art = lay.line_cls[line] == ARTERIAL
    lo = pd.Series(np.minimum(lay.seg_a[seg], lay.seg_b[seg])[art]).groupby(line[art]).min()
    hi = pd.Series(np.maximum(lay.seg_a[seg], lay.seg_b[seg])[art]).groupby(line[art]).max()
    ok = (lo < -SPLIT_MIN_M) & (hi > SPLIT_MIN_M)
    split[ok.index[ok.to_numpy()].to_numpy()] = True
    # Only 路 names split (人民东路); a 大道 keeps one name and one numbering.
    split &= np.char.endswith(ctx.line_name, "路")
    ctx.line_dir_split = split


def _cell_zone(ctx: Ctx) -> IA:
    """Zone of each grid cell (the zone of its first block)."""
    lay = ctx.lay
    return lay.blk_zone[lay.cell_first_block]


def roads_frame(ctx: Ctx) -> gpd.GeoDataFrame:
    """One LineString per road segment between junctions (道路中心线)."""
    lay = ctx.lay
    seg = ctx.road_seg
    line = lay.seg_line[seg]
    cls = lay.line_cls[line]
    mid = (lay.seg_a[seg] + lay.seg_b[seg]) / 2
    road_idx = np.unique(line, return_inverse=True)[1]
    n = len(seg)
    df = pd.DataFrame(
        {
            "segment_id": strs.ids(ctx.district_code + "-RS", n, 6),
            "road_id": ctx.district_code + "-R" + strs.num(road_idx + 1).str.zfill(5),
            "name": ctx.road_name_at(line, mid).astype(object),
            "kind": CLASS_NAMES[cls].astype(object),
            "level_cn": np.array([LABEL_CN[c] for c in range(3)], dtype=object)[cls],
            "width_m": np.round(2 * lay.line_half_width[line], 1),
            "length_m": np.round(np.abs(lay.seg_b[seg] - lay.seg_a[seg]), 1),
        }
    )
    geom = ctx.to_ll_lines(lay.seg_u0[seg], lay.seg_v0[seg], lay.seg_u1[seg], lay.seg_v1[seg])
    return gpd.GeoDataFrame(df, geometry=geom, crs="EPSG:4326")


def water_frame(ctx: Ctx, district_uv: object) -> tuple[gpd.GeoDataFrame, NDArray[np.object_]]:
    """River surfaces (河道) inside the district; also returned in the local frame."""
    lay = ctx.lay
    rivers = np.flatnonzero((lay.line_cls == RIVER) & (ctx.line_name != ""))
    polys = []
    keep = []
    for r in rivers:
        segs = np.flatnonzero(lay.seg_line == r)
        lo = float(np.minimum(lay.seg_a[segs], lay.seg_b[segs]).min())
        hi = float(np.maximum(lay.seg_a[segs], lay.seg_b[segs]).max())
        hw, pos = lay.line_half_width[r], lay.line_pos[r]
        band = (
            shapely.box(pos - hw, lo, pos + hw, hi)
            if lay.line_axis[r] == 0
            else shapely.box(lo, pos - hw, hi, pos + hw)
        )
        part = shapely.intersection(band, district_uv)
        if not shapely.is_empty(part) and shapely.area(part) > 0:
            polys.append(part)
            keep.append(r)
    polys_uv = np.array(polys, dtype=object)
    keep_a = np.array(keep, dtype=np.int64)
    df = pd.DataFrame(
        {
            "kind": ["river"] * len(keep_a),
            "name": ctx.line_name[keep_a].astype(object) if len(keep_a) else [],
            "width_m": np.round(2 * lay.line_half_width[keep_a], 1) if len(keep_a) else [],
            "area_m2": np.round(shapely.area(polys_uv), 1) if len(keep_a) else [],
        }
    )
    geom = ctx.frame.geoms_to_lonlat(polys_uv) if len(keep_a) else np.empty(0, dtype=object)
    return gpd.GeoDataFrame(df, geometry=geom, crs="EPSG:4326"), polys_uv


def line_start(ctx: Ctx) -> F:
    """Smallest position of each line along its district segments (house numbers start there)."""
    lay = ctx.lay
    seg = ctx.road_seg
    start = np.zeros(len(lay.line_pos))
    s = pd.Series(np.minimum(lay.seg_a[seg], lay.seg_b[seg])).groupby(lay.seg_line[seg]).min()
    start[s.index.to_numpy()] = s.to_numpy()
    return start


def house_numbers(ctx: Ctx, line: IA, t: F, perp: F) -> IA:
    """Odd numbers on the left/lower side of a line, even on the right/upper side."""
    lay = ctx.lay
    start = line_start(ctx)
    split = ctx.line_dir_split[line]
    s = np.where(split, np.abs(t), t - start[line])
    upper = perp > lay.line_pos[line]
    return (2 * np.floor(np.maximum(s, 0) / NUMBER_PITCH_M) + 1 + upper).astype(np.int64)


def addresses(ctx: Ctx) -> tuple[pd.Series, pd.Series, IA]:
    """Address (road + 号 [+ 幢]) of every building, its estate (小区) name or "", and the
    road-name id (into ``ctx.road_table()``) of the address."""
    lay, bld = ctx.lay, ctx.bld
    typs = [ctx.rules.typologies[t] for t in lay.typology_names]
    estate_typ = np.array([bool(t.estate_suffixes) or t.layout == "campus" for t in typs])
    blk = bld.block
    sides = lay.blk_sides[blk]
    scls = lay.line_cls[sides]
    u0, u1 = lay.blk_u0[blk], lay.blk_u1[blk]
    v0, v1 = lay.blk_v0[blk], lay.blk_v1[blk]
    cu, cv = bld.cu, bld.cv
    dist = np.stack([cu - u0, u1 - cu, cv - v0, v1 - cv], axis=1)
    dist[scls == RIVER] = np.inf
    near = np.argmin(dist, axis=1)

    # Estate gate (小区大门): on the block's best road (arterial first), one per block.
    rng = stage_rng(ctx.seed, STAGE_ROADS, 2)
    bcls = lay.line_cls[lay.blk_sides].astype(float)
    bcls[bcls == RIVER] = 99
    gate = np.argmin(bcls + rng.random(bcls.shape) * 0.5, axis=1)
    is_estate = estate_typ[lay.blk_typology[blk]]
    side = np.where(is_estate, gate[blk], near)
    rows = np.arange(len(blk))
    line = sides[rows, side]
    axis = lay.line_axis[line]

    # Position along the line: the slot centre (direct numbering) or the block centre (estates).
    inset = lay.blk_inset[blk]
    bu0 = u0 + inset[:, 0]
    nu = np.maximum(lay.blk_nu[blk], 1)
    su = (u1 - inset[:, 1] - bu0) / nu
    slot_cu = bu0 + (bld.slot_iu + 0.5) * su
    bv1 = v1 - inset[:, 3]
    typ_campus = np.array([t.layout == "campus" for t in typs])[lay.blk_typology[blk]]
    bh = np.where(typ_campus, 0.5, 1.0) * (bv1 - (v0 + inset[:, 2]))
    nv = np.maximum(lay.blk_nv[blk], 1)
    slot_cv = bv1 - (bld.slot_iv + 0.5) * bh / nv
    t = np.where(
        is_estate,
        np.where(axis == 1, (u0 + u1) / 2, (v0 + v1) / 2),
        np.where(axis == 1, slot_cu, slot_cv),
    )
    perp = np.where(axis == 1, cv, cu)
    number = strs.num(house_numbers(ctx, line, t, perp))
    road_id = ctx.road_name_id(line, t)
    road = strs.labels(ctx.road_table(), road_id)

    depth = np.choose(side, [bld.slot_iu, nu - 1 - bld.slot_iu, nv - 1 - bld.slot_iv, bld.slot_iv])
    # Direct numbering (临街门牌): 35号, a building behind it 35-2号, an outbuilding 35号附1.
    direct = road + number
    direct = direct.where(depth == 0, direct + "-" + strs.num(depth + 1))
    direct = direct + "号"
    direct = direct.where(~bld.is_anc, direct + "附1")
    # Estates: gate number + 幢 in generation order (rows north→south, then ancillaries).
    order = np.lexsort((rows, blk))
    k = np.empty(len(blk), dtype=np.int64)
    k[order] = rank_within(blk[order]) + 1
    est = road + number + "号" + strs.num(k) + "幢"
    address = est.where(is_estate, direct)

    # Estate names (凤鸣花园, 青枫新村): one per estate block.
    named = np.array([bool(t.estate_suffixes) for t in typs])[lay.blk_typology[blk]]
    eblocks = np.unique(blk[named])
    enames = np.full(len(lay.sel) + 1, "", dtype=object)
    if len(eblocks):
        pool = stems(stage_rng(ctx.seed, STAGE_ROADS, 3))
        stem = take(pool, 0, len(eblocks))
        typ_e = lay.blk_typology[eblocks]
        suffix = np.empty(len(eblocks), dtype=object)
        r = rng.random(len(eblocks))
        for ti, ty in enumerate(typs):
            m = typ_e == ti
            if m.any():
                opts = ty.estate_suffixes or ["小区"]
                suffix[m] = np.array(opts, dtype=object)[(r[m] * len(opts)).astype(int)]
        enames[eblocks] = np.char.add(stem.astype(str), suffix.astype(str))
    ctx.blk_estate = enames[:-1]
    # Index len(sel) holds "" for buildings outside named estates.
    estate = strs.labels(enames, np.where(named, blk, len(lay.sel)))
    return address, estate, road_id
