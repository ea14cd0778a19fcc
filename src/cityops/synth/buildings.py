"""Building footprints and attributes of the synthetic city — vectorised, no loop per building.

Each built block is cut into a regular grid of slots (south-facing rows); a main building sits
at the north edge of its slot, leaving the south strip free (日照间距, sunlight spacing) where an
ancillary building (车棚, 配电房, 门卫, 物业用房) may stand. Footprints keep ``gap_m`` to their
slot edges, so buildings never overlap, and slots lie inside the block's buildable rectangle
(centre line → red line → setback), so buildings never touch a road.

Attributes follow the typology mixes of ``rules/synth/urban_form.yaml``; two rules are code
because they are physical constraints, not mixes:

- masonry storey limits, after GB 50011-2010 Table 7.1.2 (多层砌体房屋 at 6–7度 ≤ 7 storeys):
  砖混 ≤ 7 floors, 砖木 ≤ 3 floors;
- precast hollow-core floor slabs (预制空心板, 预制板) only in masonry (砖混) completed in
  1980–1999 — the era REFERENCE Part D §8 describes (1970s–1990s), narrowed to the 1980s–90s
  housing the housing-safety brief targets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cityops.synth.config import STRUCTURES, USES, Typology, UrbanFormRules
from cityops.synth.layout import ARTERIAL, SECONDARY, Layout, group_index, rank_within, stage_rng

__all__ = [
    "PRECAST_YEARS",
    "STRUCTURES",
    "USES",
    "Buildings",
    "green_slot",
    "make_buildings",
    "st",
    "us",
]

F = NDArray[np.float64]
IA = NDArray[np.int64]

STAGE_BUILDINGS = 10

PRECAST_YEARS = (1980, 1999)
MASONRY_MAX_FLOORS = {"砖混": 7, "砖木": 3}
#: Chance that a masonry building of the precast era has precast slabs, residential / other
#: (design choice: nearly all 1980s–90s walk-up housing did; other buildings less often).
PRECAST_SHARE = (0.8, 0.5)


def st(name: str) -> int:
    """Code of a structure class in ``STRUCTURES``."""
    return STRUCTURES.index(name)


def us(name: str) -> int:
    """Code of a use in ``USES``."""
    return USES.index(name)


@dataclass
class Buildings:
    """Column arrays of the buildings, in generation order (block by block, north to south)."""

    block: IA
    is_anc: NDArray[np.bool_]
    slot_iu: IA
    slot_iv: IA
    frontage: IA  # side index (0 left, 1 right, 2 bottom, 3 top) of a road-facing slot, else -1
    # Rectangle in the local frame and the L-shape cut (corner 0..3, -1 none; cut sizes).
    u0: F
    v0: F
    u1: F
    v1: F
    l_corner: IA
    l_cu: F
    l_cv: F
    floors: IA
    height: F
    year_built: IA
    structure: IA  # codes into STRUCTURES
    use: IA  # codes into USES
    households: IA
    population: IA
    precast_slab: NDArray[np.bool_]
    footprint_m2: F

    def __len__(self) -> int:
        return len(self.block)

    @property
    def cu(self) -> F:
        return (self.u0 + self.u1) / 2

    @property
    def cv(self) -> F:
        return (self.v0 + self.v1) / 2

    def rings(self) -> tuple[F, F, IA]:
        """Exterior rings in the local frame: (u, v, offsets) for ``shapely.from_ragged_array``.

        Rectangles have 5 coordinates, L-shapes 7 (closed rings, counter-clockwise).
        """
        is_l = self.l_corner >= 0
        nv = np.where(is_l, 7, 5)
        offsets = np.r_[0, np.cumsum(nv)]
        u = np.empty(int(offsets[-1]))
        v = np.empty(int(offsets[-1]))
        r = np.flatnonzero(~is_l)
        start = offsets[:-1]
        x0, x1, y0, y1 = self.u0, self.u1, self.v0, self.v1
        for k, (xs, ys) in enumerate(((x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0))):
            u[start[r] + k] = xs[r]
            v[start[r] + k] = ys[r]
        li = np.flatnonzero(is_l)
        if len(li):
            cx, cy = (x0[li] + x1[li]) / 2, (y0[li] + y1[li]) / 2
            ha, hb = (x1[li] - x0[li]) / 2, (y1[li] - y0[li]) / 2
            ca, cb = self.l_cu[li], self.l_cv[li]
            # Template: the north-east corner cut away; other corners by mirroring.
            tx = np.stack([-ha, ha, ha, ha - ca, ha - ca, -ha, -ha], axis=1)
            ty = np.stack([-hb, -hb, hb - cb, hb - cb, hb, hb, -hb], axis=1)
            corner = self.l_corner[li]
            sx = np.where(np.isin(corner, (0, 3)), 1.0, -1.0)[:, None]
            sy = np.where(np.isin(corner, (0, 1)), 1.0, -1.0)[:, None]
            px, py = cx[:, None] + sx * tx, cy[:, None] + sy * ty
            # A mirror in one axis reverses the ring; turn it back to counter-clockwise.
            flip = (sx * sy)[:, 0] < 0
            px[flip] = px[flip, ::-1]
            py[flip] = py[flip, ::-1]
            idx = start[li][:, None] + np.arange(7)[None, :]
            u[idx] = px
            v[idx] = py
        return u, v, offsets


def green_slot(lay: Layout, blk: IA) -> IA:
    """Index of the slot an estate keeps green: the middle slot of its middle row."""
    return (lay.blk_nv[blk] // 2) * lay.blk_nu[blk] + lay.blk_nu[blk] // 2


def _choice_by_group(
    rng: np.random.Generator,
    group: IA,
    tables: list[dict[Any, float]],
    encode: dict[str, int] | None = None,
) -> IA:
    """Sample one key per element from ``tables[group]`` ({value: weight} per group).

    Returns the key itself (ints) or ``encode[key]`` when given (string keys to codes).
    """
    out = np.zeros(len(group), dtype=np.int64)
    for gi, tab in enumerate(tables):
        m = np.flatnonzero(group == gi)
        if len(m) == 0 or not tab:
            continue
        keys = list(tab)
        w = np.array([tab[k] for k in keys], dtype=float)
        vals = np.array([encode[k] if encode is not None else k for k in keys], dtype=np.int64)
        out[m] = vals[rng.choice(len(keys), size=len(m), p=w / w.sum())]
    return out


def _years(rng: np.random.Generator, group: IA, tables: list[list[tuple[int, int, float]]]) -> IA:
    out = np.zeros(len(group), dtype=np.int64)
    for gi, bins in enumerate(tables):
        m = np.flatnonzero(group == gi)
        if len(m) == 0 or not bins:
            continue
        lo = np.array([b[0] for b in bins])
        hi = np.array([b[1] for b in bins])
        w = np.array([b[2] for b in bins], dtype=float)
        k = rng.choice(len(bins), size=len(m), p=w / w.sum())
        out[m] = rng.integers(lo[k], hi[k] + 1)
    return out


def make_buildings(lay: Layout, rules: UrbanFormRules, seed: int) -> Buildings:
    """Footprints and attributes of exactly ``lay.n_buildings`` buildings."""
    rng = stage_rng(seed, STAGE_BUILDINGS)
    names = lay.typology_names
    typs = [rules.typologies[t] for t in names]

    # ---- slots of the built main buildings, row by row from the north edge of the block.
    blocks = np.flatnonzero(lay.blk_built_main > 0)
    blk, k = group_index(lay.blk_built_main[blocks])
    blk = blocks[blk]
    nu = lay.blk_nu[blk]
    # Skip the green slot (middle of the block) where the estate keeps one.
    k = k + (lay.blk_green[blk] & (k >= green_slot(lay, blk)))
    iu, iv = k % nu, k // nu
    # ---- ancillary buildings: a random subset of the block's slots (all mains are built there).
    slot_key = rng.random(len(blk))
    order = np.lexsort((slot_key, blk))
    rank = np.empty(len(blk), dtype=np.int64)
    rank[order] = rank_within(blk[order])
    has_anc = rank < lay.blk_built_anc[blk]

    typ = lay.blk_typology[blk]
    gap = np.array([t.gap_m for t in typs])[typ]
    inset = lay.blk_inset[blk]
    bu0 = lay.blk_u0[blk] + inset[:, 0]
    bu1 = lay.blk_u1[blk] - inset[:, 1]
    bv0 = lay.blk_v0[blk] + inset[:, 2]
    bv1 = lay.blk_v1[blk] - inset[:, 3]
    campus = np.array([t.layout == "campus" for t in typs])[typ]
    bh = np.where(campus, 0.5 * (bv1 - bv0), bv1 - bv0)
    su = (bu1 - bu0) / nu
    sv = bh / lay.blk_nv[blk]
    s_u0 = bu0 + iu * su
    s_v1 = bv1 - iv * sv
    s_v0 = s_v1 - sv

    fu_lo = np.array([t.foot_u[0] for t in typs])[typ]
    fu_hi = np.array([t.foot_u[1] for t in typs])[typ]
    fv_lo = np.array([t.foot_v[0] for t in typs])[typ]
    fv_hi = np.array([t.foot_v[1] for t in typs])[typ]
    a = np.clip(su * rng.uniform(fu_lo, fu_hi), 3.0, su - 2 * gap)
    # Leave room for the ancillary strip (≥ 2.5 m plus its gaps) where there is one.
    b_max = np.where(has_anc, sv - 3 * gap - 2.5, sv - 2 * gap)
    b = np.clip(sv * rng.uniform(fv_lo, fv_hi), 3.0, np.maximum(b_max, 3.0))
    free_u = su - a - 2 * gap
    mu0 = s_u0 + gap + rng.random(len(blk)) * free_u
    free_v = sv - b - 2 * gap
    top = s_v1 - gap - np.where(has_anc, 0.0, rng.random(len(blk)) * 0.3 * free_v)
    mv0 = top - b

    # Road-facing slots (临街): outer ring of slots on an arterial or secondary side.
    sides = lay.blk_sides[blk]
    road_side = np.isin(lay.line_cls[sides], (ARTERIAL, SECONDARY))
    facing = (
        np.stack([iu == 0, iu == nu - 1, iv == lay.blk_nv[blk] - 1, iv == 0], axis=1) & road_side
    )
    facing[campus] = False
    frontage = np.where(facing.any(axis=1), np.argmax(facing, axis=1), -1)

    # ---- ancillary footprints in the free strip south of their main building.
    ai = np.flatnonzero(has_anc)
    depth = mv0[ai] - s_v0[ai] - 2 * gap[ai]
    c = np.minimum(rng.uniform(6, 14, len(ai)), su[ai] - 2 * gap[ai])
    d = np.minimum(rng.uniform(4, 8, len(ai)), depth)
    au0 = s_u0[ai] + gap[ai] + rng.random(len(ai)) * (su[ai] - 2 * gap[ai] - c)
    av0 = s_v0[ai] + gap[ai] + rng.random(len(ai)) * (depth - d)

    n_main, n_anc = len(blk), len(ai)
    block = np.r_[blk, blk[ai]]
    is_anc = np.r_[np.zeros(n_main, bool), np.ones(n_anc, bool)]
    u0 = np.r_[mu0, au0]
    u1 = np.r_[mu0 + a, au0 + c]
    v0 = np.r_[mv0, av0]
    v1 = np.r_[mv0 + b, av0 + d]
    t_all = lay.blk_typology[block]

    # ---- L-shapes for some main buildings.
    p_l = np.array([t.l_shape for t in typs])[t_all]
    is_l = ~is_anc & (rng.random(len(block)) < p_l)
    l_corner = np.where(is_l, rng.integers(0, 4, len(block)), -1)
    l_cu = (u1 - u0) * rng.uniform(0.35, 0.6, len(block))
    l_cv = (v1 - v0) * rng.uniform(0.35, 0.6, len(block))
    area = (u1 - u0) * (v1 - v0) - np.where(is_l, l_cu * l_cv, 0.0)

    # ---- attributes.
    n = len(block)
    floors = _choice_by_group(rng, t_all, [t.floors for t in typs])
    use = _choice_by_group(rng, t_all, [t.uses for t in typs], {u: i for i, u in enumerate(USES)})
    # Estates are built in one go: their buildings share the block's year ± 1.
    estate = np.array([bool(t.estate_suffixes) or t.layout == "campus" for t in typs])
    blk_year = _years(rng, lay.blk_typology, [t.years for t in typs])
    own_year = _years(rng, t_all, [t.years for t in typs])
    year = np.where(estate[t_all], blk_year[block] + rng.integers(-1, 2, n), own_year)
    yr_lo = np.array([min(b[0] for b in t.years) if t.years else 0 for t in typs])[t_all]
    yr_hi = np.array([max(b[1] for b in t.years) if t.years else 0 for t in typs])[t_all]
    year = np.clip(year, yr_lo, yr_hi)

    front = np.r_[frontage, np.full(n_anc, -1)]
    shop = (front >= 0) & (rng.random(n) < np.array([t.frontage_shop for t in typs])[t_all])
    use = np.where(shop, us("商业"), use)
    floors = np.where(shop, rng.choice([1, 2, 2, 3], n), floors)
    anc_use = np.array(
        [
            us("仓储")
            if nm == "industrial"
            else us("公共服务")
            if t.layout == "campus"
            else us("附属")
            for nm, t in zip(names, typs, strict=True)
        ]
    )
    use = np.where(is_anc, anc_use[t_all], use)
    floors = np.where(is_anc, np.where(rng.random(n) < 0.85, 1, 2), floors)

    structure = _structures(rng, t_all, floors, year, typs)
    anc_struct = np.where(
        year < 2000, st("砖混"), np.where(use == us("仓储"), st("钢结构"), st("框架"))
    )
    structure = np.where(is_anc, anc_struct, structure)
    # GB 50011-2010 Table 7.1.2: masonry storey limits.
    for name, cap in MASONRY_MAX_FLOORS.items():
        floors = np.where(structure == st(name), np.minimum(floors, cap), floors)

    precast_p = np.where(use == us("住宅"), PRECAST_SHARE[0], PRECAST_SHARE[1])
    precast = (
        (structure == st("砖混"))
        & (year >= PRECAST_YEARS[0])
        & (year <= PRECAST_YEARS[1])
        & (rng.random(n) < precast_p)
    )

    fh_lo = np.array([t.floor_height_m[0] for t in typs])[t_all]
    fh_hi = np.array([t.floor_height_m[1] for t in typs])[t_all]
    fh = rng.uniform(fh_lo, fh_hi)
    fh = np.where(use == us("商业"), np.maximum(fh, rng.uniform(3.6, 4.5, n)), fh)
    fh = np.where(is_anc, rng.uniform(2.8, 4.2, n), fh)
    roof = np.where(structure == st("砖木"), rng.uniform(1.2, 2.8, n), rng.uniform(0.3, 1.5, n))
    height = np.round(floors * fh * rng.normal(1.0, 0.02, n) + roof, 1)

    hh_cfg = rules.households
    unit = np.array([t.unit_gross_m2 or 80.0 for t in typs])[t_all]
    resid = use == us("住宅")
    dwellings = area * floors * hh_cfg.dwelling_share_of_floor_area / unit
    households = np.where(
        resid, np.maximum(1, np.rint(dwellings * rng.uniform(0.9, 1.1, n))), 0
    ).astype(np.int64)
    occ = np.array([t.occupancy for t in typs])[t_all]
    population = np.where(
        resid, rng.poisson(households * hh_cfg.persons_per_household * occ), 0
    ).astype(np.int64)

    return Buildings(
        block=block,
        is_anc=is_anc,
        slot_iu=np.r_[iu, iu[ai]],
        slot_iv=np.r_[iv, iv[ai]],
        frontage=front,
        u0=u0,
        v0=v0,
        u1=u1,
        v1=v1,
        l_corner=l_corner,
        l_cu=l_cu,
        l_cv=l_cv,
        floors=floors.astype(np.int64),
        height=height,
        year_built=year.astype(np.int64),
        structure=structure.astype(np.int64),
        use=use.astype(np.int64),
        households=households,
        population=population,
        precast_slab=precast,
        footprint_m2=area,
    )


def _structures(
    rng: np.random.Generator, t_all: IA, floors: IA, year: IA, typs: list[Typology]
) -> IA:
    """First matching structure rule of the building's typology, then sample its mix."""
    out = np.full(len(t_all), st("砖混"), dtype=np.int64)
    for ti, t in enumerate(typs):
        todo = t_all == ti
        for rule in t.structure:
            m = todo.copy()
            if rule.year_lt is not None:
                m &= year < rule.year_lt
            if rule.year_ge is not None:
                m &= year >= rule.year_ge
            if rule.floors_le is not None:
                m &= floors <= rule.floors_le
            if rule.floors_ge is not None:
                m &= floors >= rule.floors_ge
            idx = np.flatnonzero(m)
            if len(idx):
                keys = list(rule.mix)
                w = np.array([rule.mix[k] for k in keys], dtype=float)
                vals = np.array([st(k) for k in keys], dtype=np.int64)
                out[idx] = vals[rng.choice(len(keys), size=len(idx), p=w / w.sum())]
            todo &= ~m
    return out
