"""Public-service facilities (公共服务设施), parks, bus stops, fire stations and shelters.

Counts follow the life-circle norms of GB 50180-2018 (REFERENCE Part D §4): per community
(5-minute circle) a community service station, a health station, an elderly day-care centre and
kindergartens by population; per street (15-minute circle) a community health centre, an
elderly home, a street-level service centre, the street office and a police station; schools
and hospitals per district population. Fire stations: one per ≤ 7 km² (建标152-2017 cl. 14,
REFERENCE Part D §7). Parks are classed by area after GB/T 51346-2019 (recalled, unverified;
Part D §5); shelters take GB 51143-2015 types with recalled per-capita areas (unverified;
Part D §6) — both loaded from ``rules/synth/services.yaml``.

Facilities occupy existing buildings (a low-rise one where the community has it, else the podium
of a tower), so a POI point never lands on a road or between buildings at random.
"""

from __future__ import annotations

import math

import geopandas as gpd
import numpy as np
import pandas as pd
from numpy.typing import NDArray

from cityops.synth import strs
from cityops.synth.buildings import us
from cityops.synth.context import FACILITY_KINDS, Ctx
from cityops.synth.layout import (
    ARTERIAL,
    RIVER,
    SECONDARY,
    group_index,
    rank_within,
    stage_rng,
)
from cityops.synth.names import cn_number, stems, take
from cityops.synth.networks import BusStops
from cityops.synth.partition import bisect

__all__ = ["building_points", "place_facilities", "pois_and_shelters"]

F = NDArray[np.float64]
IA = NDArray[np.int64]
S = NDArray[np.str_]

STAGE_FACILITIES = 40


def building_points(ctx: Ctx, idx: IA) -> tuple[F, F]:
    """A point inside each building's footprint (for L-shapes, in the uncut quadrant)."""
    b = ctx.bld
    cu, cv = b.cu[idx], b.cv[idx]
    corner = b.l_corner[idx]
    sx = np.where(np.isin(corner, (0, 3)), 1.0, -1.0)
    sy = np.where(np.isin(corner, (0, 1)), 1.0, -1.0)
    is_l = corner >= 0
    cu = np.where(is_l, cu - sx * (b.u1[idx] - b.u0[idx]) / 4, cu)
    cv = np.where(is_l, cv - sy * (b.v1[idx] - b.v0[idx]) / 4, cv)
    return cu, cv


def _stoch_round(rng: np.random.Generator, x: F) -> IA:
    base = np.floor(x)
    return (base + (rng.random(len(x)) < (x - base))).astype(np.int64)


def _pick(
    ctx: Ctx, rng: np.random.Generator, group: IA, demand: pd.DataFrame, used: NDArray[np.bool_]
) -> pd.DataFrame:
    """Assign demand rows (group, kind, …) to suitable buildings of the same group.

    Preference: low-rise (≤ 4 floors) residential/commercial/public buildings, then ≤ 6 floors,
    then any main building (a facility in a tower's podium); never ancillary, industrial,
    warehouse or campus buildings, never a building that already hosts a facility.
    """
    b = ctx.bld
    names = ctx.lay.typology_names
    campus = np.isin(ctx.lay.blk_typology[b.block], [names.index("campus")])
    score = np.where(b.floors <= 4, 0, np.where(b.floors <= 6, 1, 2))
    bad = b.is_anc | used | campus | np.isin(b.use, (us("工业"), us("仓储"))) | (group < 0)
    score = np.where(bad, 9, score)
    order = np.lexsort((rng.random(len(b)), score, group))
    order = order[score[order] < 9]
    rk = rank_within(group[order])
    cand = pd.DataFrame({"group": group[order], "rank": rk, "building": order})
    demand = demand.sort_values(["group", "prio"], kind="stable").reset_index(drop=True)
    demand["rank"] = rank_within(demand["group"].to_numpy())
    out = demand.merge(cand, on=["group", "rank"], how="inner")
    used[out["building"].to_numpy()] = True
    return out


def _occupy(ctx: Ctx, idx: IA, kind: NDArray[np.object_]) -> None:
    """The facility takes the building (≤ 6 floors) or its podium (taller buildings)."""
    b = ctx.bld
    code = {k: i for i, k in enumerate(FACILITY_KINDS)}
    ctx.facility[idx] = np.array([code[k] for k in kind], dtype=np.int64)
    whole = idx[b.floors[idx] <= 6]
    b.use[whole] = us("公共服务")
    b.households[whole] = 0
    b.population[whole] = 0


def _nth(name_stem: NDArray[np.object_], label: NDArray[np.object_], k: IA) -> NDArray[np.object_]:
    """金桥幼儿园, 金桥第二幼儿园, … (k is 0-based within the group)."""
    kk = np.maximum(k, 1)
    ordinal = np.where(k > 0, np.char.add("第", cn_number(np.minimum(kk + 1, 99))), "")
    out: NDArray[np.object_] = (
        name_stem.astype(str) + ordinal.astype(str) + label.astype(str)
    ).astype(object)
    return out


def place_facilities(ctx: Ctx) -> pd.DataFrame:
    """Put schools, hospitals, clinics, elderly care, kindergartens, markets, service centres,
    street offices, police and fire stations into buildings. Returns one row per facility."""
    rng = stage_rng(ctx.seed, STAGE_FACILITIES)
    lay, b, svc = ctx.lay, ctx.bld, ctx.services.facilities
    n = len(b)
    ctx.facility = np.zeros(n, dtype=np.int64)
    used = np.zeros(n, dtype=bool)
    comm = ctx.blk_comm[b.block]
    street = ctx.blk_street[b.block]
    pop_total = float(b.population.sum())
    rows: list[pd.DataFrame] = []
    comm_stem = np.array([c.removesuffix("社区") for c in ctx.comm_names.tolist()], dtype=object)
    street_stem = np.array(
        [s.removesuffix("街道") for s in ctx.street_names.tolist()], dtype=object
    )

    # --- district level: schools and hospitals, first on campuses (学校医院用地).
    pp = svc.per_population
    need = {
        k: math.floor(pop_total / pp[k].per + 0.5)
        for k in ("middle_school", "hospital", "primary_school")
    }
    if pop_total >= 5000:
        need["primary_school"] = max(need["primary_school"], 1)
    campus_t = lay.typology_names.index("campus")
    on_campus = ~b.is_anc & (lay.blk_typology[b.block] == campus_t)
    cidx = np.flatnonzero(on_campus)
    # The largest main building of each campus hosts the school or hospital.
    order = np.lexsort((cidx, -b.footprint_m2[cidx], b.block[cidx]))
    cb = b.block[cidx[order]]
    campus_main = cidx[order][np.r_[True, cb[1:] != cb[:-1]][: len(cb)]]
    campus_main = campus_main[rng.permutation(len(campus_main))]
    roles = (
        ["middle_school"] * need["middle_school"]
        + ["hospital"] * need["hospital"]
        + ["primary_school"] * need["primary_school"]
    )
    extra = ["高中", "职业学校", "primary_school"]
    role = [
        roles[i] if i < len(roles) else extra[(i - len(roles)) % 3] for i in range(len(campus_main))
    ]
    missing = roles[len(campus_main) :]
    d_rows = pd.DataFrame({"building": campus_main, "role": role})
    if missing:
        dem = pd.DataFrame({"group": 0, "role": missing, "prio": np.arange(len(missing))})
        got = _pick(ctx, rng, np.where(b.population >= 0, 0, -1), dem, used)
        d_rows = pd.concat([d_rows, got[["building", "role"]]], ignore_index=True)
    used[d_rows["building"].to_numpy()] = True
    d_rows["kind"] = np.where(d_rows["role"] == "hospital", "hospital", "school")
    subtype_map = {"primary_school": "小学", "middle_school": "初级中学", "hospital": "综合医院"}
    d_rows["subtype"] = d_rows["role"].map(lambda r: subtype_map.get(r, r))
    d_rows["level"] = "district"
    school_stems = take(stems(stage_rng(ctx.seed, STAGE_FACILITIES, 1)), 0, len(d_rows))
    nm = np.empty(len(d_rows), dtype=object)
    dname = ctx.district_name
    for r, label in (
        ("primary_school", "小学"),
        ("高中", "高级中学"),
        ("职业学校", "职业技术学校"),
    ):
        m = np.flatnonzero(d_rows["role"].to_numpy() == r)
        nm[m] = (school_stems[m].astype(str) + label).astype(object)
    for r, label in (("middle_school", "中学"), ("hospital", "人民医院")):
        m = np.flatnonzero(d_rows["role"].to_numpy() == r)
        k = np.arange(len(m))
        ordinal = np.where(k == 0, "", np.char.add("第", cn_number(np.minimum(k + 1, 99))))
        nm[m] = (dname + ordinal.astype(str) + label).astype(object)
    d_rows["name"] = nm
    rows.append(d_rows)

    # --- community level (5-minute circle).
    n_c = len(ctx.comm_codes)
    c_pop = np.bincount(comm, weights=b.population, minlength=n_c)
    kg = _stoch_round(rng, c_pop / pp["kindergarten"].per)
    kg = np.where(c_pop >= 3000, np.maximum(kg, 1), kg)
    mk = _stoch_round(rng, c_pop / pp["market"].per)
    dem = []
    for prio, (kind, label) in enumerate(svc.per_community.items()):
        dem.append(
            pd.DataFrame({"group": np.arange(n_c), "kind": kind, "subtype": label, "prio": prio})
        )
    for kind, counts, label, prio in (
        ("kindergarten", kg, pp["kindergarten"].name, 10),
        ("market", mk, pp["market"].name, 20),
    ):
        g = np.repeat(np.arange(n_c), counts)
        dem.append(pd.DataFrame({"group": g, "kind": kind, "subtype": label, "prio": prio}))
    demand = pd.concat(dem, ignore_index=True)
    c_rows = _pick(ctx, rng, comm, demand, used)
    c_rows = c_rows.sort_values(["group", "prio", "rank"], kind="stable").reset_index(drop=True)
    kth = rank_within(
        (c_rows["group"].astype(np.int64) * 100 + c_rows["prio"].astype(np.int64)).to_numpy()
    )
    stem_c = comm_stem[c_rows["group"].to_numpy()]
    label = c_rows["subtype"].to_numpy().astype(object)
    # Community-service names already start with 社区 (社区卫生服务站); keep 金桥社区… form.
    pref = stem_c
    label2 = np.where(
        c_rows["kind"].isin(["kindergarten", "market"]),
        label,
        np.array(["社区" + str(x).replace("社区", "") for x in label], dtype=object),
    )
    c_rows["name"] = _nth(pref, label2, kth)
    c_rows["level"] = "community"
    rows.append(c_rows)

    # --- street level (15-minute circle).
    n_s = len(ctx.street_codes)
    dem = [
        pd.DataFrame({"group": np.arange(n_s), "kind": kind, "subtype": label, "prio": prio})
        for prio, (kind, label) in enumerate(svc.per_street.items())
    ]
    s_rows = _pick(ctx, rng, street, pd.concat(dem, ignore_index=True), used)
    stem_s = street_stem[s_rows["group"].to_numpy()]
    lab = s_rows["subtype"].to_numpy().astype(str)
    with_jd = np.isin(
        s_rows["kind"].to_numpy(),
        ["community_health_center", "community_service_center", "street_office"],
    )
    s_rows["name"] = (stem_s.astype(str) + np.where(with_jd, "街道", "") + lab).astype(object)
    s_rows["kind"] = s_rows["kind"].replace({"community_health_center": "clinic"})
    s_rows["level"] = "street"
    rows.append(s_rows)

    # --- fire stations: one per ≤ fire_station_district_km2 of district (建标152-2017 cl. 14).
    k_fire = max(1, math.ceil(ctx.area_km2 / svc.fire_station_district_km2))
    sel = np.flatnonzero(lay.sel)
    area = (lay.blk_u1 - lay.blk_u0)[sel] * (lay.blk_v1 - lay.blk_v0)[sel]
    bu = (lay.blk_u0[sel] + lay.blk_u1[sel]) / 2
    bv = (lay.blk_v0[sel] + lay.blk_v1[sel]) / 2
    zone_lab = bisect(bu, bv, area, min(k_fire, len(sel)))
    blk_zone = np.full(len(lay.sel), -1, dtype=np.int64)
    blk_zone[sel] = zone_lab
    z_area = np.bincount(zone_lab, weights=area)
    zu = np.bincount(zone_lab, weights=area * bu) / z_area
    zv = np.bincount(zone_lab, weights=area * bv) / z_area
    fz = blk_zone[b.block]
    on_artery = np.isin(lay.line_cls[lay.blk_sides[b.block]], (ARTERIAL, SECONDARY)).any(axis=1)
    ok = ~b.is_anc & ~used & (b.floors <= 4) & (fz >= 0) & ~np.isin(b.use, (us("工业"), us("仓储")))
    dist = np.hypot(b.cu - zu[np.maximum(fz, 0)], b.cv - zv[np.maximum(fz, 0)])
    key = np.where(ok, dist + np.where(on_artery, 0.0, 2000.0), np.inf)
    order = np.lexsort((np.arange(n), key, fz))
    order = order[np.isfinite(key[order])]
    fo = fz[order]
    firsts = order[np.r_[True, fo[1:] != fo[:-1]][: len(fo)]]
    used[firsts] = True
    f_rows = pd.DataFrame({"building": firsts, "kind": "fire_station", "subtype": "一级普通消防站"})
    f_rows["level"] = "district"
    rows.append(f_rows)

    out = pd.concat(rows, ignore_index=True)
    _occupy(ctx, out["building"].to_numpy(np.int64), out["kind"].to_numpy(object))
    return out[["building", "kind", "subtype", "level"] + (["name"] if "name" in out else [])]


def pois_and_shelters(
    ctx: Ctx, fac: pd.DataFrame, address: pd.Series, building_id: pd.Series, road_id: IA
) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame, BusStops]:
    """The ``pois`` layer (facility points, park/plaza polygons, bus stops), ``shelters`` and
    the bus-stop positions (for their shelters, 公交站亭, among the components)."""
    rng = stage_rng(ctx.seed, STAGE_FACILITIES, 2)
    lay, b = ctx.lay, ctx.bld
    svc = ctx.services
    # ---- facility points.
    bi = fac["building"].to_numpy(np.int64)
    pu, pv = building_points(ctx, bi)
    names = fac["name"].to_numpy(object) if "name" in fac else np.full(len(fac), None, object)
    # Fire stations are named after their road (长江路消防救援站).
    fire = fac["kind"].to_numpy() == "fire_station"
    road_name = ctx.road_table()[road_id[bi]]
    names = np.where(fire, np.char.add(road_name, "消防救援站").astype(object), names)
    names = np.where(pd.isna(names), fac["subtype"].to_numpy(object), names)
    comm = ctx.blk_comm[b.block[bi]]
    pts = pd.DataFrame(
        {
            "kind": fac["kind"].to_numpy(object),
            "subtype": fac["subtype"].to_numpy(object),
            "name": names,
            "level": fac["level"].to_numpy(object),
            "building_id": building_id.iloc[bi].to_numpy(object),
            "address": address.iloc[bi].to_numpy(object),
            "u": pu,
            "v": pv,
            "comm": comm,
        }
    )

    # ---- parks and plazas: the buildable rectangle of open blocks.
    t_park = lay.typology_names.index("park")
    t_plaza = lay.typology_names.index("plaza")
    sel = lay.sel
    openb = np.flatnonzero(sel & np.isin(lay.blk_typology, (t_park, t_plaza)))
    ins = lay.blk_inset[openb]
    o_u0, o_u1 = lay.blk_u0[openb] + ins[:, 0], lay.blk_u1[openb] - ins[:, 1]
    o_v0, o_v1 = lay.blk_v0[openb] + ins[:, 2], lay.blk_v1[openb] - ins[:, 3]
    good = (o_u1 - o_u0 > 10) & (o_v1 - o_v0 > 10)
    openb, o_u0, o_u1, o_v0, o_v1 = openb[good], o_u0[good], o_u1[good], o_v0[good], o_v1[good]
    o_area = (o_u1 - o_u0) * (o_v1 - o_v0)
    is_park = lay.blk_typology[openb] == t_park
    tiers = sorted(svc.facilities.parks, key=lambda x: -x[0])
    park_class = np.full(len(openb), "广场", dtype=object)
    for min_a, label in reversed(tiers):
        park_class = np.where(is_park & (o_area >= min_a), label, park_class)
    pstem = take(stems(stage_rng(ctx.seed, STAGE_FACILITIES, 3)), 0, 2 * len(openb))
    o_name = np.where(
        is_park,
        np.char.add(pstem[: len(openb)], "公园"),
        np.char.add(pstem[len(openb) :], "广场"),
    ).astype(object)
    o_rows = pd.DataFrame(
        {
            "kind": np.where(is_park, "park", "plaza").astype(object),
            "subtype": park_class,
            "name": o_name,
            "level": np.where(
                o_area >= 100000, "district", np.where(o_area >= 10000, "street", "community")
            ).astype(object),
            "comm": ctx.blk_comm[openb],
            "area_m2": np.round(o_area, 1),
        }
    )
    o_geom = ctx.to_ll_boxes(o_u0, o_v0, o_u1, o_v1)

    # ---- estate central greens (集中绿地): the green slot of every built estate.
    g_blk, g_box = _estate_greens(ctx)
    g_area = (g_box[2] - g_box[0]) * (g_box[3] - g_box[1])
    g_rows = pd.DataFrame(
        {
            "kind": "green_space",
            "subtype": "小区集中绿地",
            "name": np.char.add(ctx.blk_estate[g_blk].astype(str), "中心绿地").astype(object),
            "level": "community",
            "comm": ctx.blk_comm[g_blk],
            "area_m2": np.round(g_area, 1),
        }
    )
    g_geom = ctx.to_ll_boxes(*g_box)

    # ---- bus stops every ~500 m along arterials and secondary roads (GB 50180 公交站 ≤ 500 m).
    bs = _bus_stops(ctx, rng)

    # Assemble POIs: facility points, bus stops, then open spaces.
    p_geom = ctx.to_ll_points(
        np.r_[pts["u"].to_numpy(), bs["u"].to_numpy()],
        np.r_[pts["v"].to_numpy(), bs["v"].to_numpy()],
    )
    pts_all = pd.concat(
        [pts.drop(columns=["u", "v"]), bs.drop(columns=["u", "v"])], ignore_index=True
    )
    allp = pd.concat([pts_all, o_rows, g_rows], ignore_index=True)
    geom = np.r_[p_geom, o_geom, g_geom]
    c = allp["comm"].to_numpy(np.int64)
    allp["community_code"] = np.where(c >= 0, ctx.comm_codes[np.maximum(c, 0)], "").astype(object)
    allp["street_code"] = np.where(
        c >= 0, ctx.street_codes[ctx.comm_street[np.maximum(c, 0)]], ""
    ).astype(object)
    allp = allp.drop(columns=["comm"])
    allp.insert(0, "poi_id", strs.ids(ctx.district_code + "-P", len(allp), 6))
    pois = gpd.GeoDataFrame(allp, geometry=geom, crs="EPSG:4326")

    # ---- shelters: parks, plazas and school sports grounds (操场).
    campus_t = lay.typology_names.index("campus")
    fac_b = fac["building"].to_numpy(np.int64)
    school_blocks = np.unique(b.block[fac_b[fac["kind"].to_numpy() == "school"]])
    school_blocks = school_blocks[lay.blk_typology[school_blocks] == campus_t]
    ins = lay.blk_inset[school_blocks]
    s_u0 = lay.blk_u0[school_blocks] + ins[:, 0] + 3
    s_u1 = lay.blk_u1[school_blocks] - ins[:, 1] - 3
    s_v0 = lay.blk_v0[school_blocks] + ins[:, 2] + 3
    bh = (lay.blk_v1[school_blocks] - ins[:, 3]) - (lay.blk_v0[school_blocks] + ins[:, 2])
    s_v1 = s_v0 + 0.45 * bh - 6
    ok = (s_u1 - s_u0 > 20) & (s_v1 - s_v0 > 20)
    school_blocks, s_u0, s_u1, s_v0, s_v1 = (x[ok] for x in (school_blocks, s_u0, s_u1, s_v0, s_v1))
    school_name = pd.Series(
        fac.loc[fac["kind"] == "school", "name"].to_numpy(),
        index=b.block[fac_b[fac["kind"].to_numpy() == "school"]],
    )
    school_name = school_name[~school_name.index.duplicated()]
    er = svc.shelters.effective_ratio
    site_area = np.r_[o_area, (s_u1 - s_u0) * (s_v1 - s_v0), g_area]
    ratio = np.r_[
        np.where(is_park, er["park"], er["plaza"]),
        np.full(len(school_blocks), er["sports_ground"]),
        np.full(len(g_blk), er["green"]),
    ]
    eff = site_area * ratio
    classes = svc.shelters.classes
    sh_kind = np.full(len(eff), classes[-1].kind, dtype=object)
    sh_label = np.full(len(eff), classes[-1].label_cn, dtype=object)
    per = np.full(len(eff), classes[-1].m2_per_person)
    level = np.full(len(eff), classes[-1].level, dtype=object)
    is_open_park = np.r_[is_park, np.zeros(len(school_blocks) + len(g_blk), bool)]
    is_green = np.r_[np.zeros(len(openb) + len(school_blocks), bool), np.ones(len(g_blk), bool)]
    for cl in reversed(classes[:-1]):
        m = eff >= cl.min_effective_m2
        if cl.kind == "central":
            # One central shelter per ~50 km² (REFERENCE Part D §6, unverified): the largest.
            n_central = max(1, round(ctx.area_km2 / 50))
            cand = np.flatnonzero(m & is_open_park)
            cand = cand[np.argsort(-eff[cand], kind="stable")][:n_central]
            m = np.zeros(len(eff), bool)
            m[cand] = True
        else:
            # Estate greens serve their estate only (紧急避难场所), whatever their size.
            m &= (is_open_park | (cl.min_effective_m2 <= 10000)) & ~is_green
        sh_kind[m], sh_label[m], per[m], level[m] = cl.kind, cl.label_cn, cl.m2_per_person, cl.level
    sh_name = np.r_[
        o_name,
        school_name.reindex(school_blocks).to_numpy(object),
        g_rows["name"].to_numpy(object),
    ]
    sh_name = np.char.add(sh_name.astype(str), "应急避难场所").astype(object)
    sh_comm = np.r_[ctx.blk_comm[openb], ctx.blk_comm[school_blocks], ctx.blk_comm[g_blk]]
    sh = pd.DataFrame(
        {
            "shelter_id": strs.ids(ctx.district_code + "-SH", len(eff), 4),
            "kind": sh_kind,
            "class_cn": sh_label,
            "name": sh_name,
            "site": np.r_[
                np.where(is_park, "park", "plaza"),
                np.full(len(school_blocks), "sports_ground"),
                np.full(len(g_blk), "green"),
            ].astype(object),
            "level": level,
            "area_m2": np.round(site_area, 1),
            "effective_area_m2": np.round(eff, 1),
            "capacity": np.floor(np.round(eff, 1) / per).astype(np.int64),
            "m2_per_person": per,
            "community_code": ctx.comm_codes[sh_comm].astype(object),
            "standard_ref": "GB 51143-2015",
        }
    )
    sh_geom = np.r_[o_geom, ctx.to_ll_boxes(s_u0, s_v0, s_u1, s_v1), g_geom]
    shelters = gpd.GeoDataFrame(sh, geometry=sh_geom, crs="EPSG:4326")
    return pois, shelters, BusStops(bs["u"].to_numpy(), bs["v"].to_numpy())


def _estate_greens(ctx: Ctx) -> tuple[IA, tuple[F, F, F, F]]:
    """Blocks with a built estate green and the green's rectangle (the slot minus its gaps)."""
    lay = ctx.lay
    blk = np.flatnonzero(lay.sel & lay.blk_green & (lay.blk_built_main > 0))
    typs = [ctx.rules.typologies[t] for t in lay.typology_names]
    gap = np.array([t.gap_m for t in typs])[lay.blk_typology[blk]]
    ins = lay.blk_inset[blk]
    bu0 = lay.blk_u0[blk] + ins[:, 0]
    bu1 = lay.blk_u1[blk] - ins[:, 1]
    bv0 = lay.blk_v0[blk] + ins[:, 2]
    bv1 = lay.blk_v1[blk] - ins[:, 3]
    su = (bu1 - bu0) / lay.blk_nu[blk]
    sv = (bv1 - bv0) / lay.blk_nv[blk]
    iu, iv = lay.blk_nu[blk] // 2, lay.blk_nv[blk] // 2
    u0 = bu0 + iu * su + gap
    v1 = bv1 - iv * sv - gap
    return blk, (u0, v1 - sv + 2 * gap, u0 + su - 2 * gap, v1)


def _bus_stops(ctx: Ctx, rng: np.random.Generator) -> pd.DataFrame:
    lay = ctx.lay
    spacing = ctx.services.facilities.bus_stop_spacing_m
    seg = ctx.road_seg
    line = lay.seg_line[seg]
    big = np.isin(lay.line_cls[line], (ARTERIAL, SECONDARY))
    seg, line = seg[big], line[big]
    lo = np.minimum(lay.seg_a[seg], lay.seg_b[seg])
    hi = np.maximum(lay.seg_a[seg], lay.seg_b[seg])
    g = (
        pd.DataFrame({"line": line, "lo": lo, "hi": hi})
        .groupby("line")
        .agg(lo=("lo", "min"), hi=("hi", "max"))
    )
    lines = g.index.to_numpy()
    n_per = np.maximum(0, np.floor((g["hi"] - g["lo"]).to_numpy() / spacing)).astype(np.int64)
    parent, k = group_index(n_per)
    ln = lines[parent]
    t = g["lo"].to_numpy()[parent] + (k + 0.5) * spacing + rng.uniform(-60, 60, len(parent))
    # Both directions: one stop on each side of the road.
    ln2 = np.r_[ln, ln]
    t2 = np.r_[t, t + rng.uniform(-40, 40, len(t))]
    side = np.r_[np.ones(len(t)), -np.ones(len(t))]
    off = side * (lay.line_half_width[ln2] - 2.5)
    pos = lay.line_pos[ln2]
    ax = lay.line_axis[ln2]
    u = np.where(ax == 0, pos + off, t2)
    v = np.where(ax == 0, t2, pos + off)
    blk = ctx.lay.locate_selected(u, v)
    ok = blk >= 0
    u, v, ln2, t2, blk = u[ok], v[ok], ln2[ok], t2[ok], blk[ok]
    # Name: this road + the nearest crossing road (人民路长江路口).
    ax = lay.line_axis[ln2]
    nU = len(lay.U)
    # Candidate crossings: global lines of the other axis that are named roads.
    names_glob = ctx.line_name
    cls_glob = lay.line_cls
    res_name = np.empty(len(ln2), dtype=object)
    for axis, arr, base in ((0, lay.V, nU), (1, lay.U, 0)):
        m = np.flatnonzero(ax == axis)
        if len(m) == 0:
            continue
        ids = base + np.arange(len(arr))
        ok_line = (names_glob[ids] != "") & (cls_glob[ids] != RIVER)
        cand = ids[ok_line]
        cpos = arr[ok_line]
        if len(cand) == 0:
            res_name[m] = ""
            continue
        j = np.clip(np.searchsorted(cpos, t2[m]), 1, len(cpos)) - 1
        j2 = np.minimum(j + 1, len(cpos) - 1)
        pick = np.where(np.abs(cpos[j2] - t2[m]) < np.abs(cpos[j] - t2[m]), j2, j)
        cross_line = cand[pick]
        other_pos = lay.line_pos[ln2[m]]
        res_name[m] = ctx.road_name_at(cross_line, other_pos)
    this = ctx.road_name_at(ln2, t2)
    name = np.char.add(np.char.add(this.astype(str), res_name.astype(str)), "口")
    return pd.DataFrame(
        {
            "kind": "bus_stop",
            "subtype": "公交站",
            "name": name.astype(object),
            "level": "community",
            "u": u,
            "v": v,
            "comm": ctx.blk_comm[blk],
        }
    )
