"""The district, its streets (街道) and communities (社区): grouping, codes, names, polygons."""

from __future__ import annotations

import re

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from numpy.typing import NDArray

from cityops.synth.context import Ctx, boxes_uv
from cityops.synth.layout import stage_rng
from cityops.synth.names import stems, take
from cityops.synth.partition import (
    COMMUNITIES_PER_STREET,
    band_for,
    bisect,
    count_areas,
    merge_small,
    number_groups,
    repair_connectivity,
    split_counts,
)

__all__ = ["DISTRICT_CODE_RE", "areas_frame", "assign_areas", "check_district_code"]

F = NDArray[np.float64]
IA = NDArray[np.int64]

STAGE_AREAS = 20

#: GB/T 2260 county-level code: 2 province + 2 prefecture + 2 county digits, none of them 00.
DISTRICT_CODE_RE = re.compile(r"^(?!00)\d{2}(?!00)\d{2}(?!00)\d{2}$")


def check_district_code(code: str) -> None:
    """A county-level GB/T 2260 code: six digits, no pair 00 (REFERENCE Part A §7)."""
    if not DISTRICT_CODE_RE.match(code):
        raise ValueError(
            f"district_code {code!r} is not a county-level GB/T 2260 code: six digits "
            "(province 2 + prefecture 2 + county 2), none of the pairs 00 — e.g. 320599"
        )


def _selected_edges(ctx: Ctx, local: IA) -> tuple[IA, IA]:
    lay = ctx.lay
    s0, s1 = lay.seg_side0, lay.seg_side1
    ok = (s0 >= 0) & (s1 >= 0)
    a, b = local[np.where(ok, s0, 0)], local[np.where(ok, s1, 0)]
    keep = ok & (a >= 0) & (b >= 0) & (a != b)
    return a[keep], b[keep]


def assign_areas(ctx: Ctx) -> None:
    """Group the district's blocks into streets and communities, then code and name them.

    Weights mix building count (70 %), population (20 %) and land area (10 %): a community
    holds about 500 buildings, yet dense high-rise estates do not make one community of
    50,000 people and parks still fall to someone.
    """
    lay, bld = ctx.lay, ctx.bld
    sel = np.flatnonzero(lay.sel)
    nb = len(lay.sel)
    local = np.full(nb, -1, dtype=np.int64)
    local[sel] = np.arange(len(sel))
    cnt = np.bincount(bld.block, minlength=nb)[sel].astype(float)
    pop = np.bincount(bld.block, weights=bld.population, minlength=nb)[sel]
    area = ((lay.blk_u1 - lay.blk_u0) * (lay.blk_v1 - lay.blk_v0))[sel]
    w = 0.70 * cnt / cnt.sum() + 0.20 * pop / max(pop.sum(), 1.0) + 0.10 * area / area.sum()
    bu = (lay.blk_u0[sel] + lay.blk_u1[sel]) / 2
    bv = (lay.blk_v0[sel] + lay.blk_v1[sel]) / 2
    a, b = _selected_edges(ctx, local)

    n_street, n_comm = count_areas(lay.n_buildings)
    n_street = min(n_street, len(sel))
    st = bisect(bu, bv, w, n_street)
    st = repair_connectivity(st, a, b, w, np.zeros(len(sel), np.int64))
    st = np.unique(st, return_inverse=True)[1].astype(np.int64)
    n_street = int(st.max()) + 1
    st_w = np.bincount(st, weights=w, minlength=n_street)
    st_n = np.bincount(st, minlength=n_street)
    k = split_counts(max(n_comm, n_street), st_w.astype(np.float64), lo=1)
    k = np.minimum(np.minimum(k, st_n), COMMUNITIES_PER_STREET[1])
    comm = np.zeros(len(sel), dtype=np.int64)
    offset = 0
    for s in range(n_street):
        idx = np.flatnonzero(st == s)
        comm[idx] = offset + bisect(bu[idx], bv[idx], w[idx], int(k[s]))
        offset += int(k[s])
    comm = repair_connectivity(comm, a, b, w, st)
    # No community of parks alone: at least 30 % of the mean size (in buildings).
    min_bld = 0.3 * cnt.sum() / max(int(k.sum()), 1)
    comm = merge_small(comm, a, b, cnt, st, min_bld)
    comm = np.unique(comm, return_inverse=True)[1].astype(np.int64)

    # Codes: bands north→south, west→east (world coordinates, so "north" is true north).
    x, y = ctx.frame.to_xy(bu, bv)
    x, y = x - ctx.frame.x0, y - ctx.frame.y0
    total_area = float(area.sum())
    st_seq = number_groups(
        st, x, y, w, np.zeros(len(sel), np.int64), band_for(total_area, n_street)
    )
    comm_street = np.zeros(int(comm.max()) + 1, dtype=np.int64)
    comm_street[comm] = st
    cm_seq = number_groups(comm, x, y, w, st, band_for(total_area, int(comm.max()) + 1))
    # Relabel so that label order == code order.
    st_order = np.zeros(n_street, dtype=np.int64)
    st_order[st] = st_seq
    st_new = np.argsort(np.argsort(st_order, kind="stable"), kind="stable")
    st = st_new[st]
    n_comm = int(comm.max()) + 1
    cm_key = np.zeros(n_comm, dtype=np.int64)
    cm_key[comm] = st * 1000 + cm_seq
    cm_new = np.argsort(np.argsort(cm_key, kind="stable"), kind="stable")
    comm = cm_new[comm]
    comm_street = np.zeros(n_comm, dtype=np.int64)
    comm_street[comm] = st
    cm_seq_of = np.zeros(n_comm, dtype=np.int64)
    cm_seq_of[comm] = cm_seq

    st_codes = np.array([f"{ctx.district_code}{i:03d}" for i in range(1, n_street + 1)])
    cm_codes = np.array(
        [f"{st_codes[s]}{q:03d}" for s, q in zip(comm_street, cm_seq_of, strict=True)]
    )

    rng = stage_rng(ctx.seed, STAGE_AREAS)
    pool = stems(rng)
    names = take(pool, 0, n_street + n_comm)
    st_names = np.char.add(names[:n_street], "街道")
    cm_names = np.char.add(names[n_street:], "社区")

    ctx.blk_street = np.full(nb, -1, dtype=np.int64)
    ctx.blk_comm = np.full(nb, -1, dtype=np.int64)
    ctx.blk_street[sel] = st
    ctx.blk_comm[sel] = comm
    ctx.street_codes, ctx.street_names = st_codes, st_names
    ctx.comm_codes, ctx.comm_names, ctx.comm_street = cm_codes, cm_names, comm_street
    ctx.area_km2 = total_area / 1e6


def area_polygons_uv(ctx: Ctx) -> tuple[NDArray[np.object_], NDArray[np.object_], object]:
    """Community, street and district polygons in the local frame (exact unions of blocks)."""
    lay = ctx.lay
    sel = np.flatnonzero(lay.sel)
    boxes = boxes_uv(lay.blk_u0[sel], lay.blk_v0[sel], lay.blk_u1[sel], lay.blk_v1[sel])
    comm = ctx.blk_comm[sel]
    order = np.argsort(comm, kind="stable")
    bounds = np.r_[0, np.flatnonzero(np.diff(comm[order])) + 1, len(order)]
    comm_poly = np.empty(len(ctx.comm_codes), dtype=object)
    for i in range(len(bounds) - 1):
        part = order[bounds[i] : bounds[i + 1]]
        comm_poly[comm[part[0]]] = shapely.union_all(boxes[part])
    street_poly = np.empty(len(ctx.street_codes), dtype=object)
    for s in range(len(ctx.street_codes)):
        street_poly[s] = shapely.union_all(comm_poly[ctx.comm_street == s])
    district = shapely.union_all(street_poly)
    return comm_poly, street_poly, district


def areas_frame(ctx: Ctx) -> tuple[gpd.GeoDataFrame, object]:
    """The ``areas`` layer (district, streets, communities) and the district polygon (local)."""
    comm_poly, street_poly, district = area_polygons_uv(ctx)
    bld = ctx.bld
    b_comm = ctx.blk_comm[bld.block]
    n_c = len(ctx.comm_codes)
    c_bld = np.bincount(b_comm, minlength=n_c)
    c_pop = np.bincount(b_comm, weights=bld.population, minlength=n_c).astype(np.int64)
    c_hh = np.bincount(b_comm, weights=bld.households, minlength=n_c).astype(np.int64)
    s_bld = np.bincount(ctx.comm_street, weights=c_bld, minlength=len(ctx.street_codes))
    s_pop = np.bincount(ctx.comm_street, weights=c_pop, minlength=len(ctx.street_codes))
    s_hh = np.bincount(ctx.comm_street, weights=c_hh, minlength=len(ctx.street_codes))
    geoms_uv = np.r_[np.array([district], dtype=object), street_poly, comm_poly]
    prefecture = ctx.district_code[:4] + "00"
    df = pd.DataFrame(
        {
            "code": np.r_[[ctx.district_code], ctx.street_codes, ctx.comm_codes].astype(object),
            "name": np.r_[[ctx.district_name], ctx.street_names, ctx.comm_names].astype(object),
            "kind": ["district"] + ["street"] * len(ctx.street_codes) + ["community"] * n_c,
            "parent_code": np.r_[
                [prefecture],
                [ctx.district_code] * len(ctx.street_codes),
                ctx.street_codes[ctx.comm_street],
            ].astype(object),
            "buildings": np.r_[[len(bld)], s_bld, c_bld].astype(np.int64),
            "population": np.r_[[bld.population.sum()], s_pop, c_pop].astype(np.int64),
            "households": np.r_[[bld.households.sum()], s_hh, c_hh].astype(np.int64),
            "area_m2": np.round(shapely.area(geoms_uv), 1),
        }
    )
    gdf = gpd.GeoDataFrame(df, geometry=ctx.frame.geoms_to_lonlat(geoms_uv), crs="EPSG:4326")
    return gdf, district
