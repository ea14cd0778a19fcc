"""Road grid, blocks (街区) and district outline of the synthetic city — pure NumPy.

Everything is laid out in a local metric frame ``(u, v)``: ``u`` runs east, ``v`` north, both
rotated by a small angle per seed and then placed on the UTM zone of the city centre. In that
frame every road is a straight axis-parallel line, so blocks are exact rectangles whose shared
edges have bit-identical coordinates; the administrative areas built from them therefore
partition the district with no gaps or overlaps (GB/T 30428.1 无缝拼接, REFERENCE Part A §2),
and their edges follow road centre lines (地理布局).

The grid has three levels, after the road classes of CJJ 37-2012: arterials (主干路) and
secondary roads (次干路) are long lines across the whole extent; branch roads (支路, 巷) cut
each secondary-road cell into blocks whose size depends on the zone (small blocks in the old
core, 300–500 m superblocks at the edge). Some secondary lines are rivers instead of roads;
roads cross them on bridges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from cityops.synth.config import ZONES, UrbanFormRules

__all__ = [
    "ARTERIAL",
    "BRANCH",
    "CLASS_NAMES",
    "RIVER",
    "SECONDARY",
    "Layout",
    "build_layout",
    "group_index",
    "rank_within",
]

ARTERIAL, SECONDARY, BRANCH, RIVER = 0, 1, 2, 3
CLASS_NAMES = np.array(["arterial", "secondary", "branch", "river"])

F = NDArray[np.float64]
IA = NDArray[np.int64]
B = NDArray[np.bool_]

# Stage ids of the seeded random streams: each stage draws from its own stream, so that a change
# in one stage never shifts the numbers another stage sees.
STAGE_GRID, STAGE_BLOCKS, STAGE_SHAPE = 1, 2, 3


def stage_rng(seed: int, stage: int, *extra: int) -> np.random.Generator:
    """A random generator for one stage of one seed (independent, reproducible streams)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), stage, *extra]))


def rank_within(groups: IA) -> IA:
    """0-based position of each element inside its run of equal ``groups`` (sorted input)."""
    n = len(groups)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.r_[0, np.flatnonzero(groups[1:] != groups[:-1]) + 1]
    first = np.zeros(n, dtype=np.int64)
    first[starts] = starts
    return np.arange(n) - np.maximum.accumulate(first)


def group_index(counts: IA) -> tuple[IA, IA]:
    """For ``counts`` per parent: (parent of each child, index of the child in its parent)."""
    counts = np.asarray(counts, dtype=np.int64)
    parent = np.repeat(np.arange(len(counts)), counts)
    return parent, rank_within(parent)


@dataclass
class Layout:
    """The selected district: road lines, segments and blocks, all in the ``(u, v)`` frame."""

    n_buildings: int
    radius_m: float
    # Global lines (sorted positions) and their classes.
    U: F
    V: F
    # Lines: global u-lines, then global v-lines, then branch lines. axis 0: u = pos (runs
    # north-south), axis 1: v = pos (runs east-west).
    line_axis: NDArray[np.int8]
    line_pos: F
    line_cls: NDArray[np.int8]
    line_half_width: F
    line_cell: IA
    # Cells (between consecutive global lines) and their branch subdivision.
    cell_u0: F
    cell_v0: F
    cell_u1: F
    cell_v1: F
    cell_ku: IA
    cell_kv: IA
    cell_first_block: IA
    cell_bu: F  # interior branch u positions, padded with +inf
    cell_bv: F
    # Blocks of the whole candidate extent; ``sel`` marks the district.
    blk_u0: F
    blk_v0: F
    blk_u1: F
    blk_v1: F
    blk_cell: IA
    blk_sides: IA  # (n, 4) line ids: left, right, bottom, top
    blk_r: F
    blk_zone: IA
    blk_typology: IA
    blk_slot_u: F
    blk_slot_v: F
    blk_nu: IA
    blk_nv: IA
    blk_main: IA  # main-building slots (excluding the green slot)
    blk_green: B  # one slot kept as the estate's central green
    blk_anc: IA
    blk_inset: F  # (n, 4) distance from each side's centre line to the buildable edge
    sel: B
    # Buildings per block after trimming to exactly n_buildings (0 outside the district).
    blk_built_main: IA
    blk_built_anc: IA
    # Road/river segments between nodes: line id, start and end position along the line and the
    # blocks on either side (left/below, right/above; -1 outside the candidate extent).
    seg_line: IA
    seg_a: F
    seg_b: F
    seg_side0: IA
    seg_side1: IA
    typology_names: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------ lookups
    def locate(self, u: F, v: F) -> IA:
        """Block index containing each point (-1 outside the candidate extent), vectorised."""
        u = np.asarray(u, dtype=np.float64)
        v = np.asarray(v, dtype=np.float64)
        ncu = len(self.U) - 1
        ncv = len(self.V) - 1
        i = np.searchsorted(self.U, u, side="right") - 1
        j = np.searchsorted(self.V, v, side="right") - 1
        ok = (i >= 0) & (i < ncu) & (j >= 0) & (j < ncv)
        c = np.where(ok, j * ncu + i, 0)
        iu = (self.cell_bu[c] <= u[:, None]).sum(axis=1)
        iv = (self.cell_bv[c] <= v[:, None]).sum(axis=1)
        b = self.cell_first_block[c] + iv * self.cell_ku[c] + iu
        return np.where(ok, b, -1)

    def locate_selected(self, u: F, v: F) -> IA:
        """Like :meth:`locate` but -1 for blocks outside the district."""
        b = self.locate(u, v)
        ok = b >= 0
        b[ok & ~self.sel[np.where(ok, b, 0)]] = -1
        return b

    @property
    def seg_u0(self) -> F:
        ax = self.line_axis[self.seg_line]
        return np.where(ax == 0, self.line_pos[self.seg_line], self.seg_a)

    @property
    def seg_u1(self) -> F:
        ax = self.line_axis[self.seg_line]
        return np.where(ax == 0, self.line_pos[self.seg_line], self.seg_b)

    @property
    def seg_v0(self) -> F:
        ax = self.line_axis[self.seg_line]
        return np.where(ax == 1, self.line_pos[self.seg_line], self.seg_a)

    @property
    def seg_v1(self) -> F:
        ax = self.line_axis[self.seg_line]
        return np.where(ax == 1, self.line_pos[self.seg_line], self.seg_b)

    @property
    def n_global_lines(self) -> int:
        return len(self.U) + len(self.V)


# ---------------------------------------------------------------------------------- grid


def _global_lines(
    rng: np.random.Generator, half: float, rules: UrbanFormRules
) -> tuple[F, NDArray[np.int8]]:
    """Arterial lines every ~1 km with 1–2 secondary lines between them (one axis)."""
    g = rules.grid
    lo, hi = g.arterial_spacing_m
    n = math.ceil(2 * half / lo) + 2
    steps = rng.uniform(lo, hi, n)
    art = -half + np.r_[0.0, np.cumsum(steps)]
    art = art[: int(np.searchsorted(art, half)) + 1]
    w = np.diff(art)
    k = np.maximum(1, np.rint(w / rng.uniform(*g.secondary_spacing_m, len(w)))).astype(np.int64)
    parent, idx = group_index(k - 1)
    jit = rng.uniform(-0.12, 0.12, len(parent))
    sec = art[parent] + w[parent] * (idx + 1 + jit) / k[parent]
    pos = np.r_[art, sec]
    cls = np.r_[np.full(len(art), ARTERIAL), np.full(len(sec), SECONDARY)].astype(np.int8)
    order = np.argsort(pos, kind="stable")
    return pos[order], cls[order]


def _rivers(
    rng: np.random.Generator, pos: F, cls: NDArray[np.int8], every: float, offset: float
) -> NDArray[np.int8]:
    """Turn the secondary lines nearest to ``offset + k × every`` into rivers (河道)."""
    cls = cls.copy()
    sec = np.flatnonzero(cls == SECONDARY)
    if len(sec) == 0:
        return cls
    k = np.arange(math.floor((pos[0] - offset) / every), math.ceil((pos[-1] - offset) / every) + 1)
    targets = offset + k * every
    targets = targets[(targets > pos[0]) & (targets < pos[-1])]
    if len(targets) == 0:
        return cls
    nearest = sec[np.abs(pos[sec][None, :] - targets[:, None]).argmin(axis=1)]
    cls[np.unique(nearest)] = RIVER
    return cls


def _shape_noise(rng: np.random.Generator) -> tuple[F, F]:
    amps = np.array([0.12, 0.08, 0.05]) * rng.uniform(0.6, 1.2, 3)
    phases = rng.uniform(0, 2 * np.pi, 3)
    return amps, phases


def _radial(u: F, v: F, radius: float, amps: F, phases: F) -> F:
    """Normalised distance from the centre with a smooth angular wobble (an irregular outline)."""
    phi = np.arctan2(v, u)
    k = np.arange(1, len(amps) + 1)
    g = 1.0 + (amps[None, :] * np.sin(k[None, :] * phi[:, None] + phases[None, :])).sum(axis=1)
    r: F = np.hypot(u, v) / (radius * g)
    return r


def _zone_of(r: F, rules: UrbanFormRules) -> IA:
    bounds = np.array([rules.zones[z] for z in ZONES[:-1]])
    return np.searchsorted(bounds, r, side="right").astype(np.int64)


def _sample_typologies(rng: np.random.Generator, zone: IA, rules: UrbanFormRules) -> IA:
    names = list(rules.typologies)
    w = np.array([[rules.typologies[t].zones.get(z, 0.0) for t in names] for z in ZONES])
    cum = np.cumsum(w / w.sum(axis=1, keepdims=True), axis=1)
    cum[:, -1] = 1.0
    x = rng.random(len(zone))
    out: IA = (cum[zone] < x[:, None]).sum(axis=1).astype(np.int64)
    return out


def _candidate_extent(
    n_buildings: int, radius: float, seed: int, rules: UrbanFormRules, margin: float
) -> Layout:
    """Grid, blocks, typologies and capacities over a square around the centre (no selection)."""
    g = rules.grid
    half = margin * radius + 1200.0
    rng = stage_rng(seed, STAGE_GRID)
    U, Ucls = _global_lines(rng, half, rules)
    V, Vcls = _global_lines(rng, half, rules)
    # Rivers run east-west or north-south depending on the seed, offset from the centre so that
    # the old core sits on one bank.
    river_axis = int(rng.integers(0, 2))
    offset = float(rng.uniform(0.2, 0.45) * radius * rng.choice([-1, 1]))
    if river_axis == 0:
        Ucls = _rivers(rng, U, Ucls, g.river_every_m, offset)
    else:
        Vcls = _rivers(rng, V, Vcls, g.river_every_m, offset)
    amps, phases = _shape_noise(stage_rng(seed, STAGE_SHAPE))

    nU, nV = len(U), len(V)
    ncu, ncv = nU - 1, nV - 1
    ci = np.tile(np.arange(ncu), ncv)
    cj = np.repeat(np.arange(ncv), ncu)
    cu0, cu1, cv0, cv1 = U[ci], U[ci + 1], V[cj], V[cj + 1]
    cell_zone = _zone_of(_radial((cu0 + cu1) / 2, (cv0 + cv1) / 2, radius, amps, phases), rules)

    # Branch subdivision by zone; no branch road may run into a river, so a cell with a river
    # side gets no branch lines perpendicular to it.
    brng = stage_rng(seed, STAGE_GRID, 1)
    lo = np.array([g.branch_block_m[z][0] for z in ZONES])[cell_zone]
    hi = np.array([g.branch_block_m[z][1] for z in ZONES])[cell_zone]
    wu, wv = cu1 - cu0, cv1 - cv0
    ku = np.maximum(1, np.rint(wu / brng.uniform(lo, hi))).astype(np.int64)
    kv = np.maximum(1, np.rint(wv / brng.uniform(lo, hi))).astype(np.int64)
    river_lr = (Ucls[ci] == RIVER) | (Ucls[ci + 1] == RIVER)
    river_bt = (Vcls[cj] == RIVER) | (Vcls[cj + 1] == RIVER)
    kv[river_lr] = 1
    ku[river_bt] = 1
    kmax_u, kmax_v = int(ku.max()), int(kv.max())
    ks_u = np.arange(1, max(kmax_u, 2))
    ks_v = np.arange(1, max(kmax_v, 2))
    # Branch positions are a monotone warp g(f) = f + a·sin(2πf)/2π of the even fractions
    # f = k/ku, with one amplitude per grid column (row): cells of a column that are cut the same
    # way get aligned lanes that continue across the secondary road, and different cuts stay
    # tens of metres apart instead of leaving 2-metre offsets between T-junctions.
    a_col = brng.uniform(-0.6, 0.6, ncu)[ci]
    a_row = brng.uniform(-0.6, 0.6, ncv)[cj]
    fu = ks_u[None, :] / ku[:, None]
    fv = ks_v[None, :] / kv[:, None]
    two_pi = 2 * np.pi
    bu = cu0[:, None] + wu[:, None] * (fu + a_col[:, None] * np.sin(two_pi * fu) / two_pi)
    bv = cv0[:, None] + wv[:, None] * (fv + a_row[:, None] * np.sin(two_pi * fv) / two_pi)
    bu[ks_u[None, :] >= ku[:, None]] = np.inf
    bv[ks_v[None, :] >= kv[:, None]] = np.inf

    # Lines: global u, global v, branch u (per cell), branch v (per cell).
    nbu = ku - 1
    nbv = kv - 1
    bu_cell, bu_k = group_index(nbu)
    bv_cell, bv_k = group_index(nbv)
    base_bu = nU + nV
    base_bv = base_bu + len(bu_cell)
    first_bu = base_bu + np.r_[0, np.cumsum(nbu)[:-1]]
    first_bv = base_bv + np.r_[0, np.cumsum(nbv)[:-1]]
    roads = rules.roads
    hw_class = np.array(
        [
            roads["arterial"].half_width_m,
            roads["secondary"].half_width_m,
            roads["branch"].half_width_m,
            0.0,
        ]
    )
    core_branch = roads["branch"].core_half_width_m or roads["branch"].half_width_m
    line_axis = np.r_[np.zeros(nU), np.ones(nV), np.zeros(len(bu_cell)), np.ones(len(bv_cell))]
    line_pos = np.r_[U, V, bu[bu_cell, bu_k], bv[bv_cell, bv_k]]
    line_cls = np.r_[Ucls, Vcls, np.full(len(bu_cell) + len(bv_cell), BRANCH)].astype(np.int8)
    line_cell = np.r_[np.full(nU + nV, -1), bu_cell, bv_cell].astype(np.int64)
    hw = hw_class[line_cls]
    is_core_branch = (line_cls == BRANCH) & (cell_zone[np.maximum(line_cell, 0)] == 0)
    hw[is_core_branch] = core_branch
    river = np.flatnonzero(line_cls == RIVER)
    hw[river] = rng.uniform(*g.river_half_width_m, len(river))

    # Blocks.
    nblk = ku * kv
    blk_cell, k_in = group_index(nblk)
    first_block = np.r_[0, np.cumsum(nblk)[:-1]]
    iu = k_in % ku[blk_cell]
    iv = k_in // ku[blk_cell]
    fu = np.c_[cu0, bu, np.zeros(len(ku))]
    fv = np.c_[cv0, bv, np.zeros(len(kv))]
    fu[np.arange(len(ku)), ku] = cu1
    fv[np.arange(len(kv)), kv] = cv1
    b_u0 = fu[blk_cell, iu]
    b_u1 = fu[blk_cell, iu + 1]
    b_v0 = fv[blk_cell, iv]
    b_v1 = fv[blk_cell, iv + 1]
    ci_b, cj_b = ci[blk_cell], cj[blk_cell]
    left = np.where(iu == 0, ci_b, first_bu[blk_cell] + iu - 1)
    right = np.where(iu == ku[blk_cell] - 1, ci_b + 1, first_bu[blk_cell] + iu)
    bottom = np.where(iv == 0, nU + cj_b, first_bv[blk_cell] + iv - 1)
    top = np.where(iv == kv[blk_cell] - 1, nU + cj_b + 1, first_bv[blk_cell] + iv)
    sides = np.c_[left, right, bottom, top]

    bcx, bcy = (b_u0 + b_u1) / 2, (b_v0 + b_v1) / 2
    r = _radial(bcx, bcy, radius, amps, phases)
    zone = _zone_of(r, rules)
    trng = stage_rng(seed, STAGE_BLOCKS)
    typ = _sample_typologies(trng, zone, rules)
    names = list(rules.typologies)
    # Riverside blocks often become linear parks (滨河绿地).
    on_river = (line_cls[sides] == RIVER).any(axis=1)
    typ[on_river & (trng.random(len(typ)) < 0.3)] = names.index("park")

    # Buildable rectangle: centre line → red line → building setback (建筑退让).
    setback = np.array([rules.typologies[t].setback_m for t in names])[typ]
    side_hw = hw[sides]
    green = np.where(line_cls[sides] == RIVER, g.river_green_m, 0.0)
    inset = side_hw + green + setback[:, None]
    bw = (b_u1 - b_u0) - inset[:, 0] - inset[:, 1]
    bh = (b_v1 - b_v0) - inset[:, 2] - inset[:, 3]
    layout = np.array([rules.typologies[t].layout for t in names])[typ]
    su_lo = np.array([rules.typologies[t].slot_u_m[0] for t in names])[typ]
    su_hi = np.array([rules.typologies[t].slot_u_m[1] for t in names])[typ]
    sv_lo = np.array([rules.typologies[t].slot_v_m[0] for t in names])[typ]
    sv_hi = np.array([rules.typologies[t].slot_v_m[1] for t in names])[typ]
    su = trng.uniform(su_lo, su_hi)
    sv = trng.uniform(sv_lo, sv_hi)
    bh_build = np.where(layout == "campus", 0.5 * bh, bh)
    with np.errstate(invalid="ignore", divide="ignore"):
        nu = np.where(su > 0, np.floor(np.maximum(bw, 0) / np.where(su > 0, su, 1)), 0)
        nv = np.where(sv > 0, np.floor(np.maximum(bh_build, 0) / np.where(sv > 0, sv, 1)), 0)
    nu = nu.astype(np.int64)
    nv = nv.astype(np.int64)
    nu[layout == "open"] = 0
    # Estates of six slots or more keep one slot as their central green (集中绿地, GB 50180-2018
    # cl. 4.0.7 asks residential blocks for one); it doubles as a community emergency shelter.
    estate = np.array([bool(rules.typologies[t].estate_suffixes) for t in names])[typ]
    green = estate & (nu * nv >= 6)
    main = nu * nv - green
    p_anc = np.array([rules.typologies[t].ancillary for t in names])[typ]
    anc = trng.binomial(main, p_anc)

    # Segments: every line is cut at every node on it (crossings and T-junctions).
    seg_line, seg_a, seg_b = _segments(
        U,
        V,
        cu0,
        cu1,
        cv0,
        cv1,
        ci,
        cj,
        bu_cell,
        bu_k,
        bv_cell,
        bv_k,
        bu,
        bv,
        nbu,
        nbv,
        first_bu,
        first_bv,
    )
    lay = Layout(
        n_buildings=n_buildings,
        radius_m=radius,
        U=U,
        V=V,
        line_axis=line_axis.astype(np.int8),
        line_pos=line_pos,
        line_cls=line_cls,
        line_half_width=hw,
        line_cell=line_cell,
        cell_u0=cu0,
        cell_v0=cv0,
        cell_u1=cu1,
        cell_v1=cv1,
        cell_ku=ku,
        cell_kv=kv,
        cell_first_block=first_block,
        cell_bu=bu,
        cell_bv=bv,
        blk_u0=b_u0,
        blk_v0=b_v0,
        blk_u1=b_u1,
        blk_v1=b_v1,
        blk_cell=blk_cell,
        blk_sides=sides,
        blk_r=r,
        blk_zone=zone,
        blk_typology=typ,
        blk_slot_u=su,
        blk_slot_v=sv,
        blk_nu=nu,
        blk_nv=nv,
        blk_main=main,
        blk_green=green,
        blk_anc=anc,
        blk_inset=inset,
        sel=np.zeros(len(typ), dtype=bool),
        blk_built_main=np.zeros(len(typ), dtype=np.int64),
        blk_built_anc=np.zeros(len(typ), dtype=np.int64),
        seg_line=seg_line,
        seg_a=seg_a,
        seg_b=seg_b,
        seg_side0=np.zeros(0, dtype=np.int64),
        seg_side1=np.zeros(0, dtype=np.int64),
        typology_names=names,
    )
    # Which blocks lie on either side of each segment (a hair off its midpoint).
    eps = 1e-3
    mid = (seg_a + seg_b) / 2
    pos = line_pos[seg_line]
    ax = line_axis[seg_line]
    u0 = np.where(ax == 0, pos - eps, mid)
    v0 = np.where(ax == 0, mid, pos - eps)
    u1 = np.where(ax == 0, pos + eps, mid)
    v1 = np.where(ax == 0, mid, pos + eps)
    lay.seg_side0 = lay.locate(u0, v0)
    lay.seg_side1 = lay.locate(u1, v1)
    return lay


def _segments(
    U: F,
    V: F,
    cu0: F,
    cu1: F,
    cv0: F,
    cv1: F,
    ci: IA,
    cj: IA,
    bu_cell: IA,
    bu_k: IA,
    bv_cell: IA,
    bv_k: IA,
    bu: F,
    bv: F,
    nbu: IA,
    nbv: IA,
    first_bu: IA,
    first_bv: IA,
) -> tuple[IA, F, F]:
    nU, nV = len(U), len(V)
    keys: list[IA] = []
    ts: list[F] = []
    # Global u-lines are crossed by every global v-line, and so on.
    keys.append(np.repeat(np.arange(nU), nV))
    ts.append(np.tile(V, nU))
    keys.append(nU + np.repeat(np.arange(nV), nU))
    ts.append(np.tile(U, nV))
    # Branch v-lines (east-west) end on the global u-lines left and right of their cell.
    pos_bv = bv[bv_cell, bv_k]
    keys += [ci[bv_cell], ci[bv_cell] + 1]
    ts += [pos_bv, pos_bv]
    pos_bu = bu[bu_cell, bu_k]
    keys += [nU + cj[bu_cell], nU + cj[bu_cell] + 1]
    ts += [pos_bu, pos_bu]
    # Branch u-lines: their cell's bottom and top, and every branch v-line of the same cell.
    id_bu = first_bu[bu_cell] + bu_k
    keys += [id_bu, id_bu]
    ts += [cv0[bu_cell], cv1[bu_cell]]
    rep = nbv[bu_cell]
    parent, k = group_index(rep)
    keys.append(id_bu[parent])
    ts.append(bv[bu_cell[parent], k])
    id_bv = first_bv[bv_cell] + bv_k
    keys += [id_bv, id_bv]
    ts += [cu0[bv_cell], cu1[bv_cell]]
    rep = nbu[bv_cell]
    parent, k = group_index(rep)
    keys.append(id_bv[parent])
    ts.append(bu[bv_cell[parent], k])
    key = np.concatenate(keys)
    t = np.concatenate(ts)
    order = np.lexsort((t, key))
    key, t = key[order], t[order]
    keep = np.r_[True, (key[1:] != key[:-1]) | (t[1:] != t[:-1])]
    key, t = key[keep], t[keep]
    same = key[1:] == key[:-1]
    return key[:-1][same], t[:-1][same], t[1:][same]


# ---------------------------------------------------------------------------------- selection


def _components(n: int, a: IA, b: IA) -> IA:
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    labels: IA = connected_components(graph, directed=False)[1].astype(np.int64)
    return labels


def _select(lay: Layout, n_buildings: int) -> bool:
    """Pick the district: blocks in order of (noisy) distance until they hold ``n_buildings``.

    The district must be one connected piece (edge-adjacent blocks) without enclaves: islands
    are dropped and enclosed holes filled, then the prefix grows until capacity suffices.
    Returns False when the candidate extent is too small.
    """
    cap = lay.blk_main + lay.blk_anc
    nblk = len(cap)
    order = np.argsort(lay.blk_r, kind="stable")
    cum = np.cumsum(cap[order])
    if len(cum) == 0 or cum[-1] < n_buildings:
        return False
    s0, s1 = lay.seg_side0, lay.seg_side1
    inner = (s0 >= 0) & (s1 >= 0)
    a, b = s0[inner], s1[inner]
    border = np.zeros(nblk, dtype=bool)
    border[s0[s1 < 0]] = True
    border[s1[s0 < 0]] = True
    k = int(np.searchsorted(cum, n_buildings)) + 1
    while k <= nblk:
        sel = np.zeros(nblk, dtype=bool)
        sel[order[:k]] = True
        both = sel[a] & sel[b]
        lab = _components(nblk, a[both], b[both])
        sel &= lab == lab[order[0]]
        both_out = ~sel[a] & ~sel[b]
        lab = _components(nblk, a[both_out], b[both_out])
        outside = np.unique(lab[border & ~sel])
        sel |= ~sel & ~np.isin(lab, outside)
        have = int(cap[sel].sum())
        if have >= n_buildings:
            lay.sel = sel
            return True
        # Grow the prefix by what was lost to islands (at least one block).
        k = max(k + 1, int(np.searchsorted(cum, 2 * n_buildings - have)) + 1)
    return False


def _trim(lay: Layout, n_buildings: int) -> None:
    """Keep exactly ``n_buildings``: fill blocks in order of distance, main buildings first."""
    idx = np.flatnonzero(lay.sel)
    idx = idx[np.argsort(lay.blk_r[idx], kind="stable")]
    cap = (lay.blk_main + lay.blk_anc)[idx]
    before = np.r_[0, np.cumsum(cap)[:-1]]
    take = np.clip(n_buildings - before, 0, cap)
    main = np.minimum(take, lay.blk_main[idx])
    lay.blk_built_main[:] = 0
    lay.blk_built_anc[:] = 0
    lay.blk_built_main[idx] = main
    lay.blk_built_anc[idx] = take - main


def build_layout(n_buildings: int, seed: int, rules: UrbanFormRules) -> Layout:
    """Lay out a district that holds exactly ``n_buildings`` buildings.

    The district radius is first guessed from ``grid.buildings_per_km2`` and then refined
    from the density the typologies actually give, so zones (old core, rings, edge) keep
    their proportions at any size.
    """
    if n_buildings < 1:
        raise ValueError("buildings must be at least 1")
    area = n_buildings / rules.grid.buildings_per_km2 * 1e6
    radius = max(math.sqrt(area / math.pi), 150.0)
    margin = 1.6
    lay: Layout | None = None
    for _ in range(6):
        cand = _candidate_extent(n_buildings, radius, seed, rules, margin)
        if not _select(cand, n_buildings):
            margin *= 1.5
            continue
        lay = cand
        got = float(((cand.blk_u1 - cand.blk_u0) * (cand.blk_v1 - cand.blk_v0))[cand.sel].sum())
        new_radius = max(math.sqrt(got / math.pi), 150.0)
        if abs(new_radius / radius - 1) < 0.08:
            break
        radius = new_radius
    if lay is None:
        raise RuntimeError(f"could not lay out {n_buildings} buildings (seed {seed})")
    _trim(lay, n_buildings)
    return lay
