"""Lifeline networks (城市生命线), their sensors, and city-management components (部件).

Lifelines (REFERENCE Part C §1.2): gas mains (中压 along arterial/secondary roads, 低压 along
branch roads), water mains (trunk mains along arterials, DMA distribution elsewhere), drains
(separate storm and sewer, combined 合流制 in the old core), manholes (检查井, 阀门井 — the
"adjacent underground spaces" gas monitoring watches), bridges where roads cross rivers,
underpasses (下立交) at some arterial crossings with their pump stations, gas regulator
stations (调压站) and DMA inlet meters. Each pipe network is the road network translated by a
small vector, so its pipes meet exactly at junctions and stay under the carriageway, clipped
to the district (on a boundary road the translated main may run just outside it); every sensor
lies inside the district, so an incident on it falls in a coded area. Sensors measure what
Part C §1.2 lists: methane (%LEL) in adjacent spaces, pressure and flow, leak noise, water
level in drains and underpasses, rainfall, and bridge strain, tilt, vibration, deflection and
temperature.

Components (REFERENCE Part A §3): GB/T 30428.2-2013 legacy 4-digit class codes (2-digit 大类 +
2-digit 小类) and 16-digit ids (6 division + 4 class + 6 sequence); manhole covers are the
manholes' own components, linked both ways.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from numpy.typing import NDArray

from cityops.synth import strs
from cityops.synth.areas import area_polygons_uv
from cityops.synth.context import Ctx, lines_uv
from cityops.synth.layout import (
    ARTERIAL,
    BRANCH,
    RIVER,
    SECONDARY,
    group_index,
    rank_within,
    stage_rng,
)
from cityops.synth.names import stems, take

__all__ = ["BusStops", "components_frame", "lifelines_and_sensors"]

F = NDArray[np.float64]
IA = NDArray[np.int64]
B = NDArray[np.bool_]

STAGE_NETWORKS = 50
#: Every sensor lies at least this far inside the district (metres), clear of its boundary.
SENSOR_MARGIN_M = 0.5
#: GB/T 30428.2-2013 component ids end in a 6-digit sequence per class.
MAX_SEQ = 999_999

#: Translation of each pipe network from the road centre lines (metres along u and v): less
#: than the narrowest half-width (5 m lanes in the old core), so every pipe stays under its road.
OFFSETS = {"water": (2.5, 2.5), "gas": (-3.0, -3.0), "storm": (1.0, -1.0), "sewer": (-1.0, 1.0)}
#: Years pipes were laid, by zone (old core … edge): design choice.
ZONE_YEARS = ((1980, 2005), (1988, 2010), (1998, 2016), (2006, 2022))

UTILITIES = ("storm", "sewer", "combined", "water_supply", "gas", "power", "telecom")
UTILITY_DOMAIN = ("drainage", "drainage", "drainage", "water_supply", "gas", "power", "telecom")
#: Cover class of each utility's manholes (REFERENCE Part A §3.3: 0101 上水, 0102 污水,
#: 0103 雨水, 0105 电力, 0107 通信, 0111 燃气); combined sewers take 污水井盖.
UTILITY_COVER = ("0103", "0102", "0102", "0101", "0111", "0105", "0107")
MATERIALS = ("灰口铸铁", "球墨铸铁", "PE", "钢管", "钢筋混凝土", "HDPE")


@dataclass
class BusStops:
    u: F
    v: F


class _Nets:
    """Network id table: each network gets a small integer code."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def add(self, names: list[str] | NDArray[np.str_]) -> int:
        base = len(self.names)
        self.names.extend(str(n) for n in names)
        return base


def _along(ctx: Ctx, seg: IA, spacing: F, offset: F, alternate: bool) -> tuple[F, F, IA]:
    """Points every ``spacing`` m along road segments, ``offset`` m off the centre line
    (alternating sides when asked); returns u, v and the segment of each point."""
    lay = ctx.lay
    length = np.abs(lay.seg_b[seg] - lay.seg_a[seg])
    k = np.zeros(len(seg), dtype=np.int64)
    pos_sp = spacing > 0
    k[pos_sp] = np.floor(length[pos_sp] / spacing[pos_sp]).astype(np.int64)
    parent, j = group_index(k)
    s = seg[parent]
    lo = np.minimum(lay.seg_a[s], lay.seg_b[s])
    t = lo + (j + 0.5) * length[parent] / k[parent]
    off = offset[parent] * (np.where(j % 2 == 0, 1.0, -1.0) if alternate else 1.0)
    line = lay.seg_line[s]
    pos = lay.line_pos[line]
    ax = lay.line_axis[line]
    return np.where(ax == 0, pos + off, t), np.where(ax == 0, t, pos + off), s


def _beside(ctx: Ctx, seg: IA) -> IA:
    """A district block beside each segment (either side)."""
    lay = ctx.lay
    s0, s1 = lay.seg_side0[seg], lay.seg_side1[seg]
    ok0 = (s0 >= 0) & lay.sel[np.maximum(s0, 0)]
    return np.maximum(np.where(ok0, s0, s1), 0)


def _nodes(u0: F, v0: F, u1: F, v1: F) -> tuple[F, F, IA, IA]:
    """Unique end points of lines: u, v, degree and one line ending there."""
    pu, pv = np.r_[u0, u1], np.r_[v0, v1]
    owner = np.r_[np.arange(len(u0)), np.arange(len(u0))]
    # Pipe ends meet at bit-identical coordinates; a complex key makes the pair sortable.
    key = np.round(pu, 3) + 1j * np.round(pv, 3)
    _, first, cnt = np.unique(key, return_index=True, return_counts=True)
    return pu[first], pv[first], cnt.astype(np.int64), owner[first]


def _extra(cfg: dict[str, Any], key: str, name: str) -> float:
    """A sensor kind's extra numeric setting (e.g. its sampling share) from services.yaml."""
    extra = cfg[key].model_extra or {}
    if name not in extra:
        raise KeyError(f"rules/synth/services.yaml: sensors.{key}.{name} is missing")
    return float(extra[name])


def _frame(cols: dict[str, Any], n: int) -> pd.DataFrame:
    """A DataFrame from arrays/Series/scalars of length ``n`` (scalars broadcast)."""
    out = {}
    for k, v in cols.items():
        if isinstance(v, pd.Series):
            out[k] = v.reset_index(drop=True)
        elif isinstance(v, np.ndarray):
            out[k] = v
        else:
            out[k] = (
                pd.Series(pd.array([v] * n if n else [], dtype=strs.STR))
                if isinstance(v, str)
                else v
            )
    return pd.DataFrame(out, index=pd.RangeIndex(n))


def _clip_pipe(p: dict[str, Any], district: Any) -> dict[str, Any]:
    """The pipes of one network table clipped to the district (local frame): a pipe wholly
    outside is dropped, one crossing the boundary ends on it (in pieces if it leaves and comes
    back). Per-pipe attributes follow their pipe; ``seg`` still names the road segment."""
    lines = lines_uv(p["u0"], p["v0"], p["u1"], p["v1"])
    inside = shapely.contains(district, lines)
    if inside.all():
        return p
    clipped = lines.copy()
    clipped[~inside] = shapely.intersection(lines[~inside], district)
    parts, parent = shapely.get_parts(clipped, return_index=True)
    # Touching the boundary leaves points or zero-length bits: only real lengths of pipe stay.
    ok = (shapely.get_type_id(parts) == shapely.GeometryType.LINESTRING) & (
        shapely.length(parts) > 0.01
    )
    parts, parent = parts[ok], parent[ok]
    n_pts = shapely.get_num_coordinates(parts)
    coords = shapely.get_coordinates(parts)
    last = np.cumsum(n_pts) - 1
    first = last - n_pts + 1
    out = {k: (v[parent] if isinstance(v, np.ndarray) else v) for k, v in p.items()}
    out["u0"], out["v0"] = coords[first, 0], coords[first, 1]
    out["u1"], out["v1"] = coords[last, 0], coords[last, 1]
    out["length_m"] = np.where(inside[parent], p["length_m"][parent], shapely.length(parts))
    return out


def lifelines_and_sensors(
    ctx: Ctx, district: Any = None
) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame, pd.DataFrame]:
    """``lifeline_networks``, ``sensors``, and the manholes (u, v, cover class, object id,
    community) from which the cover components are made.

    ``district``: the district polygon in the local frame (computed when not given). Pipes are
    clipped to it (a main on a boundary road, translated off the centre line, may run outside)
    and every sensor lies inside it, so each sensor's incidents fall in a coded area."""
    if district is None:
        district = area_polygons_uv(ctx)[2]
    rng = stage_rng(ctx.seed, STAGE_NETWORKS)
    lay = ctx.lay
    dc = ctx.district_code
    seg = ctx.road_seg
    n = len(seg)
    line = lay.seg_line[seg]
    cls = lay.line_cls[line].astype(np.int64)
    u0, v0, u1, v1 = lay.seg_u0[seg], lay.seg_v0[seg], lay.seg_u1[seg], lay.seg_v1[seg]
    length = np.abs(lay.seg_b[seg] - lay.seg_a[seg])
    blk = _beside(ctx, seg)
    street = ctx.blk_street[blk]
    zone = lay.blk_zone[blk]
    road_id = ctx.road_name_id(line, (lay.seg_a[seg] + lay.seg_b[seg]) / 2)
    road_tab = ctx.road_table()
    sc = ctx.street_codes
    nets = _Nets()
    net_ws_trunk = nets.add([f"WS-{dc}-TRUNK"])
    net_ws = nets.add(np.char.add(np.char.add("WS-", sc), "-DMA"))
    net_gas_mp = nets.add([f"GAS-{dc}-MP"])
    net_gas_lp = nets.add(np.char.add(np.char.add("GAS-", sc), "-LP"))
    net_storm = nets.add(np.char.add(np.char.add("DR-", sc), "-STORM"))
    net_comb = nets.add(np.char.add(np.char.add("DR-", sc), "-COMB"))
    net_sewer = nets.add(np.char.add(np.char.add("DR-", sc), "-SEWER"))
    net_pwr = nets.add(np.char.add("PWR-", sc))
    net_tel = nets.add(np.char.add("TEL-", sc))
    net_br = nets.add([f"BR-{dc}"])

    ylo = np.array([z[0] for z in ZONE_YEARS])[zone]
    yhi = np.array([z[1] for z in ZONE_YEARS])[zone]
    year = rng.integers(ylo, yhi + 1)
    combined = zone == 0
    art, sec, br = cls == ARTERIAL, cls == SECONDARY, cls == BRANCH

    # --- pipes: one table per network kind, all from the same road segments.
    pipes: list[dict[str, Any]] = []

    def pipe(
        kind: str,
        domain: str,
        offs: tuple[float, float],
        mask: B,
        net: IA,
        diam: IA,
        material: IA,
        system: str | NDArray[np.object_] | None,
        pressure: NDArray[np.object_] | None,
        yr: IA,
    ) -> None:
        idx = np.flatnonzero(mask)
        du, dv = offs
        pipes.append(
            {
                "kind": kind,
                "domain": domain,
                "net": net[idx],
                "diameter_mm": diam[idx],
                "material": material[idx],
                "install_year": yr[idx],
                "system": system[idx] if isinstance(system, np.ndarray) else system,
                "pressure_class": pressure[idx] if pressure is not None else None,
                "seg": idx,
                "u0": u0[idx] + du,
                "v0": v0[idx] + dv,
                "u1": u1[idx] + du,
                "v1": v1[idx] + dv,
            }
        )

    m_ = {m: i for i, m in enumerate(MATERIALS)}
    w_d = np.select(
        [art, sec],
        [rng.choice([600, 800, 1000], n), rng.choice([300, 400, 500], n)],
        rng.choice([150, 200], n),
    )
    # Grey cast iron (灰口铸铁) before 1995 — the mains most prone to bursts.
    w_mat = np.where(year < 1995, m_["灰口铸铁"], np.where(w_d >= 300, m_["球墨铸铁"], m_["PE"]))
    pipe(
        "water_main",
        "water_supply",
        OFFSETS["water"],
        np.ones(n, bool),
        np.where(art, net_ws_trunk, net_ws + street),
        w_d,
        w_mat,
        np.where(art, "trunk", "distribution").astype(object),
        None,
        year,
    )
    year_g = rng.integers(np.maximum(ylo, 1990), yhi + 1)
    mp = ~br
    g_d = np.where(mp, rng.choice([200, 250, 300], n), rng.choice([90, 110, 160], n))
    g_mat = np.where(mp & (year_g < 2005), m_["钢管"], m_["PE"])
    pipe(
        "gas_main",
        "gas",
        OFFSETS["gas"],
        np.ones(n, bool),
        np.where(mp, net_gas_mp, net_gas_lp + street),
        g_d,
        g_mat,
        None,
        np.where(mp, "中压", "低压").astype(object),
        year_g,
    )
    s_d = np.select(
        [art, sec],
        [rng.choice([1200, 1500], n), rng.choice([800, 1000], n)],
        rng.choice([400, 500, 600], n),
    )
    pipe(
        "drain",
        "drainage",
        OFFSETS["storm"],
        np.ones(n, bool),
        np.where(combined, net_comb, net_storm) + street,
        s_d,
        np.where(s_d >= 800, m_["钢筋混凝土"], m_["HDPE"]),
        np.where(combined, "combined", "storm").astype(object),
        None,
        year,
    )
    w_s = np.select(
        [art, sec], [rng.choice([600, 800], n), rng.choice([400, 500], n)], np.full(n, 300)
    )
    pipe(
        "drain",
        "drainage",
        OFFSETS["sewer"],
        ~combined,
        net_sewer + street,
        w_s,
        np.where(w_s >= 600, m_["钢筋混凝土"], m_["HDPE"]),
        "sewer",
        None,
        year,
    )

    # --- manholes: junction wells at every drain node, interior wells at the spacing; valve
    # wells at water and gas junctions; cable wells along arterial/secondary roads.
    spacing = ctx.services.lifelines.manhole_spacing_m
    mh_u: list[F] = []
    mh_v: list[F] = []
    mh_util: list[IA] = []
    mh_net: list[IA] = []
    mh_seg: list[IA] = []

    def add_wells(u: F, v: F, util: str, net: IA, sg: IA) -> None:
        mh_u.append(u)
        mh_v.append(v)
        mh_util.append(np.full(len(u), UTILITIES.index(util)))
        mh_net.append(net)
        mh_seg.append(sg)

    for p in pipes:
        if p["kind"] != "drain":
            continue
        system = p["system"]
        sys_arr = (
            system if isinstance(system, np.ndarray) else np.full(len(p["seg"]), system, object)
        )
        for util in ("storm", "combined", "sewer"):
            m = sys_arr == util
            if not m.any():
                continue
            pu0, pv0, pu1, pv1 = (p[k][m] for k in ("u0", "v0", "u1", "v1"))
            nu_, nv_, _deg, own = _nodes(pu0, pv0, pu1, pv1)
            add_wells(nu_, nv_, util, p["net"][m][own], p["seg"][m][own])
            L = length[p["seg"][m]]
            k = np.maximum(np.floor(L / spacing["sewer" if util == "sewer" else "storm"]) - 1, 0)
            parent, j = group_index(k.astype(np.int64))
            f = (j + 1) / (k[parent] + 1)
            add_wells(
                pu0[parent] + f * (pu1 - pu0)[parent],
                pv0[parent] + f * (pv1 - pv0)[parent],
                util,
                p["net"][m][parent],
                p["seg"][m][parent],
            )
    for p, util, share in ((pipes[0], "water_supply", 1.0), (pipes[1], "gas", 0.5)):
        m = (
            np.ones(len(p["seg"]), bool)
            if util == "water_supply"
            else (p["pressure_class"] == "中压")
        )
        nu_, nv_, deg, own = _nodes(p["u0"][m], p["v0"][m], p["u1"][m], p["v1"][m])
        k = (deg >= 3) & (rng.random(len(deg)) < share)
        add_wells(nu_[k], nv_[k], util, p["net"][m][own[k]], p["seg"][m][own[k]])
    big = np.flatnonzero(~br)
    for util, off, base in (("power", 6.0, net_pwr), ("telecom", -6.0, net_tel)):
        uu, vv, s = _along(
            ctx, seg[big], np.full(len(big), spacing[util]), np.full(len(big), off), False
        )
        local = np.searchsorted(seg, s)
        add_wells(uu, vv, util, base + street[local], local)
    mu, mv = np.concatenate(mh_u), np.concatenate(mh_v)
    mblk = lay.locate_selected(mu, mv)
    keep = mblk >= 0
    mh = pd.DataFrame(
        {
            "u": mu[keep],
            "v": mv[keep],
            "util": np.concatenate(mh_util)[keep],
            "net": np.concatenate(mh_net)[keep],
            "seg": np.concatenate(mh_seg)[keep],
            "comm": ctx.blk_comm[mblk[keep]],
        }
    )
    mh["object_id"] = strs.ids(f"{dc}-MH", len(mh), 7)
    mh["cover"] = strs.labels(UTILITY_COVER, mh["util"].to_numpy())

    # --- bridges where roads cross rivers (both road segments at the crossing in the district).
    river = np.flatnonzero((lay.line_cls == RIVER) & (ctx.line_name != ""))
    ends_t = np.r_[lay.seg_a[seg], lay.seg_b[seg]]
    ends_line = np.r_[line, line]
    pairs = []
    for r in river:
        m = (lay.line_axis[ends_line] != lay.line_axis[r]) & (ends_t == lay.line_pos[r])
        if m.any():
            key, cnt = np.unique(ends_line[m], return_counts=True)
            pairs += [(int(ln), int(r)) for ln in key[cnt >= 2]]
    brp = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    b_line, b_river = brp[:, 0], brp[:, 1]
    hw_r = lay.line_half_width[b_river] + ctx.rules.grid.bridge_approach_m
    hw_road = lay.line_half_width[b_line]
    t_c, p_c = lay.line_pos[b_river], lay.line_pos[b_line]
    ax_b = lay.line_axis[b_line]
    bu0 = np.where(ax_b == 0, p_c - hw_road, t_c - hw_r)
    bu1 = np.where(ax_b == 0, p_c + hw_road, t_c + hw_r)
    bv0 = np.where(ax_b == 0, t_c - hw_r, p_c - hw_road)
    bv1 = np.where(ax_b == 0, t_c + hw_r, p_c + hw_road)
    nb = len(brp)
    b_comm = ctx.blk_comm[
        np.maximum(
            lay.locate_selected(
                np.where(ax_b == 0, p_c + hw_road + 0.5, t_c),
                np.where(ax_b == 0, t_c, p_c + hw_road + 0.5),
            ),
            0,
        )
    ]
    bridges = {
        "name": np.char.add(
            take(stems(stage_rng(ctx.seed, STAGE_NETWORKS, 1)), 0, nb), "桥"
        ).astype(object),
        "road": ctx.road_name_id(b_line, t_c),
        "river_name": ctx.line_name[b_river].astype(object),
        "length_m": np.round(2 * hw_r, 1),
        "width_m": np.round(2 * hw_road, 1),
        "install_year": rng.integers(1975, 2021, nb),
        "structure": rng.choice(
            np.array(
                ["预应力混凝土简支梁桥", "预应力混凝土连续梁桥", "钢筋混凝土拱桥"], dtype=object
            ),
            nb,
        ),
        "comm": b_comm,
    }

    # --- crossings of the global grid inside the district (all four corners in the district).
    nU, nV = len(lay.U), len(lay.V)

    def crossings(classes: tuple[int, ...]) -> tuple[IA, IA, F, F]:
        iu = np.flatnonzero(np.isin(lay.line_cls[:nU], classes))
        iv = nU + np.flatnonzero(np.isin(lay.line_cls[nU : nU + nV], classes))
        mu_, mv_ = np.meshgrid(iu, iv, indexing="ij")
        gu, gv = mu_.ravel(), mv_.ravel()
        pu, pv = lay.line_pos[gu], lay.line_pos[gv]
        ok = np.ones(len(gu), bool)
        for du, dv in ((1, 1), (1, -1), (-1, 1), (-1, -1)):
            ok &= lay.locate_selected(pu + du, pv + dv) >= 0
        return gu[ok], gv[ok], pu[ok], pv[ok]

    # Underpasses (下立交) at arterial crossings at least 300 m from a river, with pump stations.
    cu_, cv_, pu, pv = crossings((ARTERIAL,))
    far = np.ones(len(pu), bool)
    for axis, coord in ((0, pu), (1, pv)):
        rp = lay.line_pos[river[lay.line_axis[river] == axis]]
        if len(rp) and len(coord):
            far &= np.abs(coord[:, None] - rp[None, :]).min(axis=1) > 300
    cand = np.flatnonzero(far)
    n_up = round(ctx.area_km2 * ctx.services.lifelines.underpass_per_km2)
    n_up = max(n_up, 1) if ctx.area_km2 >= 8 else n_up
    pick = np.sort(cand[rng.permutation(len(cand))[: min(n_up, len(cand))]])
    along_u = rng.random(len(pick)) < 0.5  # the road that dips runs east-west
    uu, vv = pu[pick], pv[pick]
    l_main = np.where(along_u, cv_[pick], cu_[pick])
    l_cross = np.where(along_u, cu_[pick], cv_[pick])
    up_half, up_w = 150.0, 8.0
    up_box = (
        np.where(along_u, uu - up_half, uu - up_w),
        np.where(along_u, vv - up_w, vv - up_half),
        np.where(along_u, uu + up_half, uu + up_w),
        np.where(along_u, vv + up_w, vv + up_half),
    )
    up_comm = ctx.blk_comm[lay.locate_selected(uu + 1, vv + 1)]
    up_street = ctx.comm_street[up_comm]
    up_name = np.char.add(
        np.char.add(
            ctx.road_name_at(l_main, np.where(along_u, uu, vv)),
            ctx.road_name_at(l_cross, np.where(along_u, vv, uu)),
        ),
        "下立交",
    )
    underpasses = {
        "name": up_name.astype(object),
        "road": ctx.road_name_id(l_main, np.where(along_u, uu, vv)),
        "install_year": rng.integers(2000, 2021, len(pick)),
        "net": net_storm + up_street,
        "comm": up_comm,
        "u": uu,
        "v": vv,
        "along_u": along_u,
    }
    pumps = {
        "name": np.char.add(up_name, "排水泵站").astype(object),
        "net": net_storm + up_street,
        "install_year": underpasses["install_year"],
        "comm": up_comm,
        "u": uu + lay.line_half_width[cu_[pick]] + 1.0,
        "v": vv + lay.line_half_width[cv_[pick]] + 1.0,
    }
    # Gas regulator stations (调压站) at medium-pressure crossings; DMA meters, two per street.
    xu, xv, qu, qv = crossings((ARTERIAL, SECONDARY))
    n_reg = (
        max(1, round(ctx.area_km2 * ctx.services.lifelines.gas_regulator_per_km2)) if len(xu) else 0
    )
    reg = np.sort(rng.permutation(len(xu))[:n_reg])
    r_u = qu[reg] - lay.line_half_width[xu[reg]] - 1.0
    r_v = qv[reg] - lay.line_half_width[xv[reg]] - 1.0
    regs = {
        "name": np.char.add(
            np.char.add(ctx.road_name_at(xu[reg], qv[reg]), ctx.road_name_at(xv[reg], qu[reg])),
            "调压站",
        ).astype(object),
        "net": np.full(len(reg), net_gas_mp),
        "install_year": rng.integers(1995, 2021, len(reg)),
        "comm": ctx.blk_comm[lay.locate_selected(r_u, r_v)],
        "u": r_u,
        "v": r_v,
    }
    x_comm = ctx.blk_comm[np.maximum(lay.locate_selected(qu + 1, qv + 1), 0)]
    x_street = ctx.comm_street[x_comm]
    order = np.lexsort((rng.random(len(xu)), x_street))
    dma = np.sort(order[rank_within(x_street[order]) < 2])
    d_u, d_v = qu[dma] + OFFSETS["water"][0], qv[dma] + OFFSETS["water"][1]
    dmas = {
        "name": np.array(
            [ctx.street_names[s].removesuffix("街道") + "DMA计量井" for s in x_street[dma]],
            dtype=object,
        ),
        "net": net_ws + x_street[dma],
        "install_year": rng.integers(2012, 2024, len(dma)),
        "comm": ctx.blk_comm[np.maximum(lay.locate_selected(d_u, d_v), 0)],
        "u": d_u,
        "v": d_v,
    }

    # --- clip the pipes to the district (the manholes above were kept only inside it).
    # The gas network of each road segment is kept for the methane sensors of its manholes,
    # even where the segment's own gas main runs outside and is clipped away.
    gas_net_of_seg = np.where(mp, net_gas_mp, net_gas_lp + street)
    n_water = len(pipes[0]["seg"])
    for p in pipes:
        p["length_m"] = length[p["seg"]]
    shapely.prepare(district)
    pipes = [_clip_pipe(p, district) for p in pipes]

    # --- assemble lifeline_networks.
    net_tab = strs.table(nets.names)
    road_tab_s = strs.table(road_tab)
    comm_tab = strs.table(ctx.comm_codes)
    street_tab = strs.table(ctx.street_codes)
    mat_tab = strs.table(MATERIALS)

    def street_of_comm(c: IA) -> pd.Series:
        return pd.Series(street_tab.take(ctx.comm_street[c]))

    groups: list[pd.DataFrame] = []
    geoms: list[NDArray[np.object_]] = []
    for p in pipes:
        k = len(p["seg"])
        s_blk = blk[p["seg"]]
        groups.append(
            _frame(
                {
                    "kind": p["kind"],
                    "domain": p["domain"],
                    "network_id": pd.Series(net_tab.take(p["net"])),
                    "system": pd.Series(pd.array(p["system"], dtype=strs.STR))
                    if isinstance(p["system"], np.ndarray)
                    else p["system"],
                    "pressure_class": pd.Series(pd.array(p["pressure_class"], dtype=strs.STR))
                    if p["pressure_class"] is not None
                    else None,
                    "diameter_mm": pd.array(p["diameter_mm"], dtype="Int64"),
                    "material": pd.Series(mat_tab.take(p["material"])),
                    "install_year": pd.array(p["install_year"], dtype="Int64"),
                    "length_m": np.round(p["length_m"], 1),
                    "road_name": pd.Series(road_tab_s.take(road_id[p["seg"]])),
                    "street_code": pd.Series(street_tab.take(ctx.blk_street[s_blk])),
                    "community_code": pd.Series(comm_tab.take(ctx.blk_comm[s_blk])),
                },
                k,
            )
        )
        geoms.append(ctx.to_ll_lines(p["u0"], p["v0"], p["u1"], p["v1"]))
    n_pipes = sum(len(g) for g in groups)
    pipe_ids = strs.ids(f"{dc}-PL", n_pipes, 7)
    util = mh["util"].to_numpy()
    mh_comm = mh["comm"].to_numpy()
    groups.append(
        _frame(
            {
                "kind": "manhole",
                "domain": strs.labels(UTILITY_DOMAIN, util),
                "network_id": pd.Series(net_tab.take(mh["net"].to_numpy())),
                "utility": strs.labels(UTILITIES, util),
                "road_name": pd.Series(road_tab_s.take(road_id[mh["seg"].to_numpy()])),
                "street_code": street_of_comm(mh_comm),
                "community_code": pd.Series(comm_tab.take(mh_comm)),
            },
            len(mh),
        )
    )
    geoms.append(ctx.to_ll_points(mh["u"].to_numpy(), mh["v"].to_numpy()))
    groups.append(
        _frame(
            {
                "kind": "bridge",
                "domain": "bridge",
                "network_id": pd.Series(net_tab.take(np.full(nb, net_br))),
                "name": pd.Series(pd.array(bridges["name"], dtype=strs.STR)),
                "structure": pd.Series(pd.array(bridges["structure"], dtype=strs.STR)),
                "install_year": pd.array(bridges["install_year"], dtype="Int64"),
                "length_m": bridges["length_m"],
                "width_m": bridges["width_m"],
                "road_name": pd.Series(road_tab_s.take(bridges["road"])),
                "river_name": pd.Series(pd.array(bridges["river_name"], dtype=strs.STR)),
                "street_code": street_of_comm(b_comm),
                "community_code": pd.Series(comm_tab.take(b_comm)),
            },
            nb,
        )
    )
    geoms.append(ctx.to_ll_boxes(bu0, bv0, bu1, bv1))
    n_up_ = len(pick)
    groups.append(
        _frame(
            {
                "kind": "underpass",
                "domain": "drainage",
                "network_id": pd.Series(net_tab.take(underpasses["net"])),
                "name": pd.Series(pd.array(underpasses["name"], dtype=strs.STR)),
                "install_year": pd.array(underpasses["install_year"], dtype="Int64"),
                "length_m": np.full(n_up_, 2 * up_half),
                "width_m": np.full(n_up_, 2 * up_w),
                "road_name": pd.Series(road_tab_s.take(underpasses["road"])),
                "street_code": street_of_comm(up_comm),
                "community_code": pd.Series(comm_tab.take(up_comm)),
            },
            n_up_,
        )
    )
    geoms.append(ctx.to_ll_boxes(*up_box))
    for kind, domain, d in (
        ("pump_station", "drainage", pumps),
        ("gas_regulator_station", "gas", regs),
        ("dma_meter", "water_supply", dmas),
    ):
        k = len(d["u"])
        groups.append(
            _frame(
                {
                    "kind": kind,
                    "domain": domain,
                    "network_id": pd.Series(net_tab.take(d["net"])),
                    "name": pd.Series(pd.array(d["name"], dtype=strs.STR)),
                    "pressure_class": "中压" if kind == "gas_regulator_station" else None,
                    "install_year": pd.array(d["install_year"], dtype="Int64"),
                    "street_code": street_of_comm(d["comm"]),
                    "community_code": pd.Series(comm_tab.take(d["comm"])),
                },
                k,
            )
        )
        geoms.append(ctx.to_ll_points(d["u"], d["v"]))
    prefixes = [
        ("PL", n_pipes, 7),
        ("MH", len(mh), 7),
        ("BR", nb, 4),
        ("UP", n_up_, 4),
        ("PS", len(pumps["u"]), 4),
        ("GR", len(regs["u"]), 4),
        ("DM", len(dmas["u"]), 4),
    ]
    life = pd.concat(groups, ignore_index=True)
    obj_ids = pd.concat(
        [pipe_ids, mh["object_id"]] + [strs.ids(f"{dc}-{p}", k, w) for p, k, w in prefixes[2:]],
        ignore_index=True,
    )
    life.insert(0, "object_id", obj_ids)
    cols = [
        "object_id",
        "kind",
        "domain",
        "network_id",
        "name",
        "system",
        "utility",
        "pressure_class",
        "diameter_mm",
        "material",
        "structure",
        "install_year",
        "length_m",
        "width_m",
        "road_name",
        "river_name",
        "street_code",
        "community_code",
    ]
    life = life.reindex(columns=cols)
    # Covers (部件) are linked back after the components are numbered.
    life["component_code"] = pd.Series(pd.array([None] * len(life), dtype=strs.STR))
    lifelines = gpd.GeoDataFrame(life, geometry=np.concatenate(geoms), crs="EPSG:4326")

    # --- sensors.
    offsets = np.cumsum([0] + [len(p["seg"]) for p in pipes])
    sensors = _sensors(
        ctx,
        rng,
        district,
        pipes,
        n_water,
        gas_net_of_seg,
        offsets,
        pipe_ids,
        mh,
        net_tab,
        (bu0, bv0, bu1, bv1),
        bridges,
        net_br,
        underpasses,
        pumps,
        regs,
        dmas,
        nb,
        prefixes,
    )
    return lifelines, sensors, mh


def _sensors(
    ctx: Ctx,
    rng: np.random.Generator,
    district: Any,
    pipes: list[dict[str, Any]],
    n_water: int,
    gas_net_of_seg: IA,
    offsets: IA,
    pipe_ids: pd.Series,
    mh: pd.DataFrame,
    net_tab: Any,
    b_uv: tuple[F, F, F, F],
    bridges: dict[str, Any],
    net_br: int,
    underpasses: dict[str, Any],
    pumps: dict[str, Any],
    regs: dict[str, Any],
    dmas: dict[str, Any],
    nb: int,
    prefixes: list[tuple[str, int, int]],
) -> gpd.GeoDataFrame:
    """Sensors on the lifeline objects; ids, networks and positions of what they measure.

    Every sensor lies inside the district (``district``, local frame) by at least
    ``SENSOR_MARGIN_M``; bridge gauges on a boundary road move onto the deck's inner half."""
    cfg = ctx.services.sensors
    dc = ctx.district_code
    core = shapely.buffer(district, -SENSOR_MARGIN_M, join_style="mitre")
    shapely.prepare(core)

    def inside(u: F, v: F) -> B:
        out: B = shapely.contains_xy(core, u, v)
        return out

    kinds: list[str] = []
    keys: list[str] = []
    obj: list[pd.Series] = []
    net: list[IA] = []
    us: list[F] = []
    vs: list[F] = []

    def add(key: str, kind: str, ids: pd.Series, nets: IA, u: F, v: F) -> None:
        keys.extend([key] * len(u))
        kinds.extend([kind] * len(u))
        obj.append(ids.reset_index(drop=True))
        net.append(np.asarray(nets, dtype=np.int64))
        us.append(np.asarray(u, float))
        vs.append(np.asarray(v, float))

    def ids_of(prefix: str) -> pd.Series:
        p = dict((p, (k, w)) for p, k, w in prefixes)[prefix]
        return strs.ids(f"{dc}-{prefix}", p[0], p[1])

    # Gas: methane in the adjacent underground spaces (manholes of other utilities), on the gas
    # network of the same road segment.
    adj = np.flatnonzero(mh["util"].to_numpy() != 4)  # 4 = gas
    m = adj[rng.random(len(adj)) < _extra(cfg, "gas_concentration", "share_of_adjacent_manholes")]
    add(
        "gas_concentration",
        "gas_concentration",
        mh["object_id"].iloc[m],
        gas_net_of_seg[mh["seg"].to_numpy()[m]],
        mh["u"].to_numpy()[m],
        mh["v"].to_numpy()[m],
    )
    for key, kind in (("gas_pressure", "pipe_pressure"), ("gas_flow", "flow")):
        add(key, kind, ids_of("GR"), regs["net"], regs["u"], regs["v"])
    # Water: pressure along mains, leak noise on trunk mains, flow and pressure at DMA inlets.
    wp = pipes[0]
    L = np.abs(wp["u1"] - wp["u0"]) + np.abs(wp["v1"] - wp["v0"])
    mid_u, mid_v = (wp["u0"] + wp["u1"]) / 2, (wp["v0"] + wp["v1"]) / 2
    w_ids = pipe_ids.iloc[offsets[0] : offsets[1]].reset_index(drop=True)
    # One draw per road segment (the mains before clipping), so clipping moves no other sensor.
    draw = rng.random(n_water)[wp["seg"]]
    m = np.flatnonzero(draw < L / 1000 * _extra(cfg, "water_pressure", "per_main_km"))
    add("water_pressure", "pipe_pressure", w_ids.iloc[m], wp["net"][m], mid_u[m], mid_v[m])
    trunk = wp["system"] == "trunk"
    draw = rng.random(n_water)[wp["seg"]]
    m = np.flatnonzero(trunk & (draw < L / 1000 * _extra(cfg, "leak_noise", "per_trunk_km")))
    add("leak_noise", "leak_noise", w_ids.iloc[m], wp["net"][m], mid_u[m], mid_v[m])
    for key, kind in (("water_flow", "flow"), ("water_pressure", "pipe_pressure")):
        add(key, kind, ids_of("DM"), dmas["net"], dmas["u"], dmas["v"])
    # Drainage: level in storm/combined manholes, two gauges per underpass, pump stations.
    st = np.flatnonzero(np.isin(mh["util"].to_numpy(), (0, 2)))
    m = st[rng.random(len(st)) < _extra(cfg, "water_level", "share_of_storm_manholes")]
    add(
        "water_level",
        "water_level",
        mh["object_id"].iloc[m],
        mh["net"].to_numpy()[m],
        mh["u"].to_numpy()[m],
        mh["v"].to_numpy()[m],
    )
    up_ids = ids_of("UP")
    # One gauge at the sag point, one on the ramp (Shanghai-style 25 cm signs need both).
    ramp = np.where(underpasses["along_u"], 1.0, 0.0)
    for shift in (0.0, 60.0):
        add(
            "underpass_water_level",
            "water_level",
            up_ids,
            underpasses["net"],
            underpasses["u"] + shift * ramp,
            underpasses["v"] + shift * (1.0 - ramp),
        )
    ps_ids = ids_of("PS")
    add("rainfall", "rainfall", ps_ids, pumps["net"], pumps["u"], pumps["v"])
    add("drain_flow", "flow", ps_ids, pumps["net"], pumps["u"], pumps["v"])
    # Bridges (桥梁健康监测): strain gauges along the span (more on long bridges), pier tilt,
    # vibration, deflection at mid-span, temperature.
    bu0, bv0, bu1, bv1 = b_uv
    cu, cv = (bu0 + bu1) / 2, (bv0 + bv1) / 2
    Lb = bridges["length_m"]
    along_u = (bu1 - bu0) > (bv1 - bv0)
    br_ids = ids_of("BR")
    per = {
        "strain": 2 + (Lb // 40).astype(np.int64),
        "tilt": np.full(nb, 2),
        "vibration": np.ones(nb, np.int64),
        "deflection": 1 + (Lb > 60).astype(np.int64),
        "temperature": np.ones(nb, np.int64),
    }
    # A bridge on a road along the district boundary is half outside: its gauges on the road
    # centre line would sit on the boundary, so they move to the middle of the deck's inner half.
    cross = np.where(along_u, bv1 - bv0, bu1 - bu0) / 4
    for kind, k in per.items():
        parent, j = group_index(k)
        f = (j + 1) / (k[parent] + 1) - 0.5
        du = np.where(along_u[parent], f * (bu1 - bu0)[parent], 0.0)
        dv = np.where(along_u[parent], 0.0, f * (bv1 - bv0)[parent])
        pu, pv = cu[parent] + du, cv[parent] + dv
        for side in (1.0, -1.0):
            move = ~inside(pu, pv)
            step = side * cross[parent] * move
            su, sv = (
                pu + np.where(along_u[parent], 0.0, step),
                pv + np.where(along_u[parent], step, 0.0),
            )
            ok = move & inside(su, sv)
            pu, pv = np.where(ok, su, pu), np.where(ok, sv, pv)
        add(kind, kind, br_ids.iloc[parent], np.full(len(parent), net_br), pu, pv)

    # Whatever still lies outside the district (none in the generated cities so far) is left
    # out: the case loop places every incident in an area.
    u, v = np.concatenate(us), np.concatenate(vs)
    keep = inside(u, v)
    u, v = u[keep], v[keep]
    kinds = [k for k, ok in zip(kinds, keep, strict=True) if ok]
    keys = [k for k, ok in zip(keys, keep, strict=True) if ok]
    n = len(kinds)
    key_arr = np.array(keys, dtype=object)
    dom = pd.Series(key_arr).map({k: c.domain for k, c in cfg.items()})
    unit = pd.Series(key_arr).map({k: c.unit for k, c in cfg.items()})
    interval = pd.Series(key_arr).map({k: c.interval_s for k, c in cfg.items()}).to_numpy(np.int64)
    df = pd.DataFrame(
        {
            "sensor_id": strs.ids(f"{dc}-SN", n, 6),
            "kind": pd.Series(pd.array(kinds, dtype=strs.STR)),
            "domain": pd.Series(pd.array(dom.to_numpy(object), dtype=strs.STR)),
            "unit": pd.Series(pd.array(unit.to_numpy(object), dtype=strs.STR)),
            "object_id": pd.concat(obj, ignore_index=True)[keep].reset_index(drop=True),
            "network_id": pd.Series(net_tab.take(np.concatenate(net)[keep])),
            "interval_s": interval,
            "community_code": strs.labels(
                ctx.comm_codes, ctx.blk_comm[np.maximum(ctx.lay.locate_selected(u, v), 0)]
            ),
        }
    )
    return gpd.GeoDataFrame(df, geometry=ctx.to_ll_points(u, v), crs="EPSG:4326")


def components_frame(
    ctx: Ctx, mh: pd.DataFrame, bus: BusStops
) -> tuple[gpd.GeoDataFrame, pd.Series]:
    """``components`` (部件), and the component code of each manhole (its cover), in order."""
    rng = stage_rng(ctx.seed, STAGE_NETWORKS, 2)
    lay = ctx.lay
    comp = ctx.services.components
    dc = ctx.district_code
    classes = sorted(comp.classes)
    code_of = {c: i for i, c in enumerate(classes)}
    seg = ctx.road_seg
    line = lay.seg_line[seg]
    cls = lay.line_cls[line]
    hw = lay.line_half_width[line]
    cname = ("arterial", "secondary", "branch")
    us: list[F] = []
    vs: list[F] = []
    ks: list[IA] = []

    def put(code: str | IA, u: F, v: F) -> None:
        us.append(np.asarray(u, float))
        vs.append(np.asarray(v, float))
        ks.append(
            np.full(len(us[-1]), code_of[code]) if isinstance(code, str) else np.asarray(code)
        )

    # Manhole covers first, so that their codes line up with the manholes.
    cover = np.array([code_of[c] for c in UTILITY_COVER], dtype=np.int64)[mh["util"].to_numpy()]
    put(cover, mh["u"].to_numpy(), mh["v"].to_numpy())
    n_cover = len(mh)
    # Along roads, near the kerb: street lights, litter bins, hydrants, gully grates.
    kerb = {"0118": 1.5, "0305": 2.0, "0113": 1.2, "0104": 0.6}
    for code, tab in comp.spacing_m.items():
        sp = np.array([tab.get(c, 0.0) for c in cname])[cls]
        u, v, _ = _along(ctx, seg, sp, hw - kerb.get(code, 1.0), True)
        put(code, u, v)
    # Traffic signs near the start of arterial/secondary segments; a name plate on every road.
    L = np.abs(lay.seg_b[seg] - lay.seg_a[seg])
    lo = np.minimum(lay.seg_a[seg], lay.seg_b[seg])
    pos, ax = lay.line_pos[line], lay.line_axis[line]
    for code, m, dt, off in (
        ("0209", (cls != BRANCH) & (L > 60), 25.0, hw - 1.0),
        ("0213", L > 30, 12.0, -(hw - 0.8)),
    ):
        t, o = lo[m] + dt, off[m]
        put(code, np.where(ax[m] == 0, pos[m] + o, t), np.where(ax[m] == 0, t, pos[m] + o))
    put("0203", bus.u, bus.v)  # bus shelters (公交站亭) at the stops
    # Per community: public toilets and notice boards in a block's setback strip.
    sel = np.flatnonzero(lay.sel)
    bc = ctx.blk_comm[sel]
    n_c = len(ctx.comm_codes)
    counts = np.bincount(bc, minlength=n_c)
    order = np.lexsort((rng.random(len(sel)), bc))
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    for code, k in comp.per_community.items():
        want = np.repeat(np.arange(n_c), k)
        b = sel[
            order[starts[want] + rng.integers(0, 1 << 30, len(want)) % np.maximum(counts[want], 1)]
        ]
        ins = lay.blk_inset[b]
        red = lay.line_half_width[lay.blk_sides[b]]
        u = lay.blk_u0[b] + red[:, 0] + 0.5 * (ins[:, 0] - red[:, 0])
        v = (lay.blk_v0[b] + ins[:, 2]) + rng.random(len(b)) * (
            (lay.blk_v1[b] - ins[:, 3]) - (lay.blk_v0[b] + ins[:, 2])
        )
        put(code, u, v)
    # In parks: fitness equipment and benches by area; old trees (古树名木) in older parks.
    t_park = lay.typology_names.index("park")
    parks = sel[lay.blk_typology[sel] == t_park]
    ins = lay.blk_inset[parks]
    pu0, pu1 = lay.blk_u0[parks] + ins[:, 0], lay.blk_u1[parks] - ins[:, 1]
    pv0, pv1 = lay.blk_v0[parks] + ins[:, 2], lay.blk_v1[parks] - ins[:, 3]
    ok = (pu1 - pu0 > 10) & (pv1 - pv0 > 10)
    parks, pu0, pu1, pv0, pv1 = parks[ok], pu0[ok], pu1[ok], pv0[ok], pv1[ok]
    ha = (pu1 - pu0) * (pv1 - pv0) / 1e4
    per_park = [
        (c, np.maximum(1, np.rint(ha * k)).astype(np.int64))
        for c, k in comp.per_park_hectare.items()
    ]
    per_park.append(("0401", np.where(lay.blk_zone[parks] <= 1, 2, 0)))
    for code, cnt in per_park:
        parent, _ = group_index(cnt)
        put(
            code,
            pu0[parent] + rng.random(len(parent)) * (pu1 - pu0)[parent],
            pv0[parent] + rng.random(len(parent)) * (pv1 - pv0)[parent],
        )
    # Footbridges (过街天桥) beside some commercial blocks on arterials.
    t_com = lay.typology_names.index("commercial")
    cb = sel[lay.blk_typology[sel] == t_com]
    arts = lay.line_cls[lay.blk_sides[cb]] == ARTERIAL
    has = arts.any(axis=1) & (rng.random(len(cb)) < 0.3)
    cb = cb[has]
    ln = lay.blk_sides[cb, np.argmax(arts[has], axis=1)]
    mid_u, mid_v = (lay.blk_u0[cb] + lay.blk_u1[cb]) / 2, (lay.blk_v0[cb] + lay.blk_v1[cb]) / 2
    put(
        "0205",
        np.where(lay.line_axis[ln] == 0, lay.line_pos[ln], mid_u),
        np.where(lay.line_axis[ln] == 0, mid_v, lay.line_pos[ln]),
    )

    u, v, kind = np.concatenate(us), np.concatenate(vs), np.concatenate(ks)
    blk = lay.locate_selected(u, v)
    keep = blk >= 0  # the far side of a boundary road belongs to the neighbouring district
    keep[:n_cover] = True
    u, v, kind, blk = u[keep], v[keep], kind[keep], blk[keep]
    # 6-digit sequence per class in generation order (GB/T 30428.2-2013 component id).
    order = np.lexsort((np.arange(len(kind)), kind))
    seq = np.empty(len(kind), dtype=np.int64)
    seq[order] = rank_within(kind[order]) + 1
    if len(seq) and seq.max() > MAX_SEQ:
        raise ValueError(
            f"more than {MAX_SEQ} components of one class: the 6-digit sequence of a GB/T "
            "30428.2 component id is exhausted; raise the spacings in rules/synth/services.yaml"
        )
    code = dc + strs.labels(classes, kind) + strs.num(seq).str.zfill(6)
    comm = ctx.blk_comm[blk]
    obj = pd.concat(
        [mh["object_id"], pd.Series(pd.array([None] * (len(kind) - n_cover), dtype=strs.STR))],
        ignore_index=True,
    )
    df = pd.DataFrame(
        {
            "code": code,
            "kind": strs.labels(classes, kind),
            "name": strs.labels([comp.classes[c].name for c in classes], kind),
            "category": strs.labels([comp.categories[c[:2]] for c in classes], kind),
            "accuracy_class": strs.labels([comp.classes[c].accuracy for c in classes], kind),
            "standard_ref": strs.labels([comp.standard_ref], np.zeros(len(kind), np.int64)),
            "status": strs.labels(["完好"], np.zeros(len(kind), np.int64)),
            "object_id": obj,
            "community_code": strs.labels(ctx.comm_codes, comm),
            "street_code": strs.labels(ctx.street_codes, ctx.comm_street[comm]),
        }
    )
    return gpd.GeoDataFrame(df, geometry=ctx.to_ll_points(u, v), crs="EPSG:4326"), code.iloc[
        :n_cover
    ]
