"""The synthetic city generator (合成城市): a plausible Chinese district from a size and a seed.

``generate_city(buildings, seed)`` returns the platform's layers as WGS84 GeoDataFrames —
``areas``, ``roads``, ``buildings``, ``pois``, ``shelters``, ``components``,
``lifeline_networks``, ``sensors`` — plus ``water`` (rivers) and ``blocks`` (街区). The same
seed gives byte-identical layers; every stage is vectorised (NumPy / Shapely 2 over whole
arrays), so a million buildings take well under a minute on one core.

How the pieces fit (each module names the standards it follows):

- ``layout``: road grid (CJJ 37-2012 road classes), blocks, district outline;
- ``buildings``: footprints and attributes (era mixes, GB 50011 masonry limits, precast slabs);
- ``areas``: streets and communities, GB/T 2260 / GB/T 10114 / NBS codes;
- ``roads``: road names, house numbers (门牌);
- ``facilities``: life-circle facilities (GB 50180-2018), fire stations (建标152-2017),
  parks (GB/T 51346-2019), shelters (GB 51143-2015);
- ``networks``: lifelines and sensors (REFERENCE Part C §1.2), components (GB/T 30428.2-2013).
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from cityops.synth import strs
from cityops.synth.areas import areas_frame, assign_areas, check_district_code
from cityops.synth.buildings import make_buildings
from cityops.synth.config import STRUCTURES, USES, load_services, load_urban_form
from cityops.synth.context import FACILITY_KINDS, Ctx
from cityops.synth.facilities import place_facilities, pois_and_shelters
from cityops.synth.frame import Frame
from cityops.synth.layout import build_layout, stage_rng
from cityops.synth.networks import components_frame, lifelines_and_sensors
from cityops.synth.roads import addresses, name_roads, roads_frame, water_frame

__all__ = [
    "DEFAULT_CENTER",
    "DEFAULT_DISTRICT_CODE",
    "DEFAULT_DISTRICT_NAME",
    "GENERATOR_VERSION",
    "LAYERS",
    "STAGES",
    "SyntheticCity",
    "generate_city",
    "write_city",
]

#: A plausible spot in a Chinese city (south-east Suzhou, on the same prefecture code as the
#: default district code) — the generated district is fictitious.
DEFAULT_CENTER = (120.66, 31.27)
#: Well-formed GB/T 2260 county-level code under Suzhou (3205); 99 is not a real district.
DEFAULT_DISTRICT_CODE = "320599"
DEFAULT_DISTRICT_NAME = "虹溪区"
GENERATOR_VERSION = "1"

LAYERS = (
    "areas",
    "roads",
    "buildings",
    "pois",
    "shelters",
    "components",
    "lifeline_networks",
    "sensors",
    "water",
    "blocks",
)
STAGES = (
    "layout",
    "buildings",
    "areas",
    "roads",
    "facilities",
    "buildings layer",
    "pois",
    "lifelines",
    "components",
)


class SyntheticCity(dict[str, gpd.GeoDataFrame]):
    """The generated layers by name, with ``summary`` (totals, parameters, timings)."""

    summary: dict[str, Any]

    def __init__(self, layers: dict[str, gpd.GeoDataFrame], summary: dict[str, Any]) -> None:
        super().__init__(layers)
        self.summary = summary


def generate_city(
    buildings: int,
    seed: int,
    *,
    center: tuple[float, float] = DEFAULT_CENTER,
    district_code: str = DEFAULT_DISTRICT_CODE,
    district_name: str = DEFAULT_DISTRICT_NAME,
    progress: Callable[[str], None] | None = None,
) -> SyntheticCity:
    """Generate a district of exactly ``buildings`` buildings, deterministic per ``seed``.

    Args:
        buildings: number of buildings (≥ 1); streets, communities, roads, facilities,
            components, lifelines and sensors scale with it.
        seed: random seed; the same seed gives byte-identical layers.
        center: (lon, lat) of the district centre, WGS84.
        district_code: GB/T 2260 county-level code (6 digits); streets get 9-digit and
            communities 12-digit codes under it (REFERENCE Part A §7).
        district_name: e.g. "虹溪区".
        progress: called with each stage name (see ``STAGES``) as it starts.

    Returns:
        :class:`SyntheticCity`: layers in EPSG:4326 and a ``summary`` dict.
    """
    if isinstance(buildings, bool) or int(buildings) != buildings or buildings < 1:
        raise ValueError(f"buildings must be a positive integer, got {buildings!r}")
    buildings = int(buildings)
    check_district_code(district_code)
    lon, lat = (float(c) for c in center)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    clock: list[Any] = [t_all, ""]

    def stage(name: str) -> None:
        now = time.perf_counter()
        if clock[1]:
            timings[str(clock[1])] = round(now - float(clock[0]), 3)
        clock[0], clock[1] = now, name
        if progress is not None and name:
            progress(name)

    rules = load_urban_form()
    services = load_services()
    theta = math.radians(float(stage_rng(seed, 0).uniform(*rules.grid.rotation_deg)))
    frame = Frame.at(lon, lat, theta)

    stage("layout")
    lay = build_layout(buildings, seed, rules)
    stage("buildings")
    bld = make_buildings(lay, rules, seed)
    ctx = Ctx(seed, district_code, district_name, frame, rules, services, lay, bld)
    stage("areas")
    assign_areas(ctx)
    stage("roads")
    name_roads(ctx)
    address, estate, road_id = addresses(ctx)
    roads = roads_frame(ctx)
    stage("facilities")
    fac = place_facilities(ctx)
    building_id = strs.ids(district_code + "-B", len(bld), 7)
    areas, district_uv = areas_frame(ctx)
    water, _ = water_frame(ctx, district_uv)
    stage("buildings layer")
    buildings_gdf = _buildings_frame(ctx, building_id, address, estate)
    stage("pois")
    pois, shelters, bus = pois_and_shelters(ctx, fac, address, building_id, road_id)
    stage("lifelines")
    lifelines, sensors, manholes = lifelines_and_sensors(ctx, district_uv)
    stage("components")
    components, cover_codes = components_frame(ctx, manholes, bus)
    # Manholes are one contiguous run in lifeline_networks, in the same order as their covers.
    first_mh = int(np.argmax((lifelines["kind"] == "manhole").to_numpy())) if len(manholes) else 0
    codes = lifelines["component_code"].copy()
    codes.iloc[first_mh : first_mh + len(manholes)] = cover_codes.to_numpy()
    lifelines["component_code"] = codes
    blocks = _blocks_frame(ctx)
    stage("")
    timings["total"] = round(time.perf_counter() - t_all, 3)

    layers = {
        "areas": areas,
        "roads": roads,
        "buildings": buildings_gdf,
        "pois": pois,
        "shelters": shelters,
        "components": components,
        "lifeline_networks": lifelines,
        "sensors": sensors,
        "water": water,
        "blocks": blocks,
    }
    summary = {
        "generator": f"cityops.synth {GENERATOR_VERSION}",
        "seed": int(seed),
        "buildings": len(bld),
        "population": int(bld.population.sum()),
        "households": int(bld.households.sum()),
        "district_code": district_code,
        "district_name": district_name,
        "center": [lon, lat],
        "area_km2": round(ctx.area_km2, 3),
        "streets": len(ctx.street_codes),
        "communities": len(ctx.comm_codes),
        "metric_crs": frame.metric_crs,
        "rotation_deg": round(math.degrees(theta), 4),
        "counts": {k: len(v) for k, v in layers.items()},
        "timings_s": timings,
    }
    for gdf in layers.values():
        gdf.attrs["cityops_synth"] = {"seed": int(seed), "district_code": district_code}
    return SyntheticCity(layers, summary)


def _buildings_frame(
    ctx: Ctx, building_id: pd.Series, address: pd.Series, estate: pd.Series
) -> gpd.GeoDataFrame:
    b = ctx.bld
    u, v, offsets = b.rings()
    lon, lat = ctx.frame.to_lonlat(u, v)
    n = len(b)
    geom = shapely.from_ragged_array(
        shapely.GeometryType.POLYGON,
        np.column_stack([lon, lat]),
        (offsets, np.arange(n + 1)),
    )
    comm = ctx.blk_comm[b.block]
    df = pd.DataFrame(
        {
            "building_id": building_id,
            "floors": b.floors,
            "height": b.height,
            "year_built": b.year_built,
            "structure": strs.labels(STRUCTURES, b.structure),
            "use": strs.labels(USES, b.use),
            "address": address,
            "households": b.households,
            "population": b.population,
            "precast_slab": b.precast_slab,
            "community_code": strs.labels(ctx.comm_codes, comm),
            "street_code": strs.labels(ctx.street_codes, ctx.comm_street[comm]),
            "estate": estate,
            "facility": strs.labels(FACILITY_KINDS, ctx.facility),
            "typology": strs.labels(ctx.lay.typology_names, ctx.lay.blk_typology[b.block]),
            "ancillary": b.is_anc,
            "footprint_m2": np.round(b.footprint_m2, 1),
        }
    )
    return gpd.GeoDataFrame(df, geometry=geom, crs="EPSG:4326")


def _blocks_frame(ctx: Ctx) -> gpd.GeoDataFrame:
    lay = ctx.lay
    sel = np.flatnonzero(lay.sel)
    names = np.array(lay.typology_names, dtype=object)
    typ = names[lay.blk_typology[sel]]
    built = lay.blk_built_main[sel] + lay.blk_built_anc[sel]
    cap = lay.blk_main[sel] + lay.blk_anc[sel]
    # Blocks whose buildings were trimmed away to hit the exact count are vacant land (待建空地).
    typ = np.where((cap > 0) & (built == 0), "vacant", typ)
    labels = {k: t.label_cn for k, t in ctx.rules.typologies.items()} | {"vacant": "待建空地"}
    comm = ctx.blk_comm[sel]
    df = pd.DataFrame(
        {
            "block_id": strs.ids(ctx.district_code + "-K", len(sel), 6),
            "kind": typ,
            "label_cn": pd.Series(typ).map(labels).to_numpy(object),
            "zone": np.array(["core", "inner", "middle", "outer"], dtype=object)[lay.blk_zone[sel]],
            "buildings": built,
            "community_code": ctx.comm_codes[comm].astype(object),
            "area_m2": np.round((lay.blk_u1 - lay.blk_u0)[sel] * (lay.blk_v1 - lay.blk_v0)[sel], 1),
        }
    )
    geom = ctx.to_ll_boxes(lay.blk_u0[sel], lay.blk_v0[sel], lay.blk_u1[sel], lay.blk_v1[sel])
    return gpd.GeoDataFrame(df, geometry=geom, crs="EPSG:4326")


def write_city(
    layers: dict[str, gpd.GeoDataFrame],
    path: str | os.PathLike[str],
    *,
    progress: Callable[[str, int], None] | None = None,
) -> Path:
    """Write every layer into one GeoPackage, one table per key, atomically.

    The file is written next to ``path`` under a temporary name and renamed into place only
    when every layer is in, so a failed run never leaves half a city behind (DESIGN §1.5).
    Uses pyogrio's Arrow path when pyarrow is installed. A ``SyntheticCity``'s summary goes
    into an attribute table ``synth_metadata`` (key, value).
    """
    import json

    import pyogrio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import pyarrow  # noqa: F401

        use_arrow = True
    except ImportError:  # pragma: no cover - pyarrow is optional
        use_arrow = False
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".gpkg", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()
    try:
        for name, gdf in layers.items():
            if progress is not None:
                progress(name, len(gdf))
            pyogrio.write_dataframe(
                gdf,
                tmp,
                layer=name,
                driver="GPKG",
                use_arrow=use_arrow,
                promote_to_multi=False,
                geometry_type=_geometry_type(gdf),
            )
        summary = getattr(layers, "summary", None)
        if summary:
            meta = pd.DataFrame(
                {
                    "key": list(summary),
                    "value": [json.dumps(v, ensure_ascii=False) for v in summary.values()],
                }
            )
            pyogrio.write_dataframe(meta, tmp, layer="synth_metadata", driver="GPKG")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _geometry_type(gdf: gpd.GeoDataFrame) -> str:
    types = pd.unique(gdf.geometry.geom_type.dropna())
    return str(types[0]) if len(types) == 1 else "Unknown"
