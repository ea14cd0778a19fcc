"""Benchmark: bulk geocoding (地理编码) of 1,000,000 points vs a bare STRtree query.

Builds a synthetic district (Voronoi communities, a jittered arterial road net and some local
roads, all generated here; no dependency on ``cityops.synth``), divides it into unit grids with
``cityops.base.grids.build_grids``, then in the same run times

- ours:      ``Geocoder.locate(lon, lat)`` — from raw coordinate arrays to a DataFrame of
             district/street/community/grid codes and names, chunked;
- reference: ``STRtree(grids).query(points, predicate="within")`` on pre-built points and a
             pre-built tree (the physical floor of point-in-polygon with Shapely 2).

and prints both rates, their ratio (target ≥ 0.5) and the agreement between the two answers.

    PYTHONPATH=src .venv/bin/python bench/bench_geocode.py [--communities 1000] [--points 1000000]
"""

from __future__ import annotations

import argparse
import platform
import time

import geopandas as gpd
import numpy as np
import shapely
from shapely import STRtree

from cityops.base.geocode import Geocoder
from cityops.base.grids import build_grids

METRIC = "EPSG:32650"  # UTM 50N: Beijing
CENTRE = (453_000.0, 4_418_000.0)


def synthetic_district(
    n_communities: int = 1000, mean_area_m2: float = 250_000.0, seed: int = 0
) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame, gpd.GeoDataFrame]:
    """(communities, roads, areas) of a square district in EPSG:4326, codes under 110105."""
    rng = np.random.default_rng(seed)
    side = float(np.sqrt(n_communities * mean_area_m2))
    x0, y0 = CENTRE[0] - side / 2, CENTRE[1] - side / 2
    frame = shapely.box(x0, y0, x0 + side, y0 + side)

    # Communities: Voronoi cells of a jittered lattice of seeds.
    k = int(np.ceil(np.sqrt(n_communities)))
    step = side / k
    gx, gy = np.meshgrid(np.arange(k), np.arange(k))
    sx = x0 + (gx.ravel() + 0.5 + rng.uniform(-0.35, 0.35, k * k)) * step
    sy = y0 + (gy.ravel() + 0.5 + rng.uniform(-0.35, 0.35, k * k)) * step
    keep = rng.permutation(k * k)[:n_communities]
    sx, sy = sx[keep], sy[keep]
    seeds = shapely.points(sx, sy)
    cells = shapely.get_parts(
        shapely.voronoi_polygons(shapely.multipoints(seeds), extend_to=frame, ordered=True)
    )
    cells = shapely.intersection(cells, frame)

    # Streets (街道): a coarse tiling of the district, ~25 communities each.
    tiles = max(1, round(float(np.sqrt(n_communities / 25))))
    street = np.minimum(((sx - x0) / side * tiles).astype(int), tiles - 1) * tiles + np.minimum(
        ((sy - y0) / side * tiles).astype(int), tiles - 1
    )
    order = np.lexsort((-sy, sx, street))
    codes = np.empty(n_communities, dtype=object)
    street_codes = np.empty(n_communities, dtype=object)
    seq_in_street: dict[int, int] = {}
    street_no = {s: i + 1 for i, s in enumerate(sorted(set(street.tolist())))}
    for i in order:
        s = int(street[i])
        seq_in_street[s] = seq_in_street.get(s, 0) + 1
        street_codes[i] = f"110105{street_no[s]:03d}"
        codes[i] = f"{street_codes[i]}{seq_in_street[s]:03d}"

    # Roads: tilted arterials every ~600 m, plus short local roads (some of them dangle).
    lines = []
    for t in np.arange(x0 + 300, x0 + side, 600):
        tilt = rng.uniform(-40, 40)
        lines.append(shapely.linestrings([[t - tilt, y0 - 50], [t + tilt, y0 + side + 50]]))
    for t in np.arange(y0 + 300, y0 + side, 600):
        tilt = rng.uniform(-40, 40)
        lines.append(shapely.linestrings([[x0 - 50, t - tilt], [x0 + side + 50, t + tilt]]))
    n_local = n_communities // 2
    px = rng.uniform(x0, x0 + side, n_local)
    py = rng.uniform(y0, y0 + side, n_local)
    ang = rng.uniform(0, np.pi, n_local)
    ln = rng.uniform(200, 600, n_local)
    for a, b, c, d in zip(px, py, ang, ln, strict=True):
        lines.append(shapely.linestrings([[a, b], [a + d * np.cos(c), b + d * np.sin(c)]]))

    communities = gpd.GeoDataFrame({"code": codes.astype(str)}, geometry=cells, crs=METRIC).to_crs(
        4326
    )
    roads = gpd.GeoDataFrame(geometry=np.array(lines), crs=METRIC).to_crs(4326)

    comm_m = communities.to_crs(METRIC)
    streets = comm_m.assign(street=street_codes.astype(str)).dissolve("street").reset_index()
    areas = gpd.GeoDataFrame(
        {
            "code": [*communities["code"], *streets["street"], "110105"],
            "kind": ["community"] * len(communities) + ["street"] * len(streets) + ["district"],
            "name": [f"社区{c[-6:]}" for c in communities["code"]]
            + [f"街道{s[-3:]}" for s in streets["street"]]
            + ["示范区"],
        },
        geometry=[*comm_m.geometry, *streets.geometry, frame],
        crs=METRIC,
    ).to_crs(4326)
    return communities, roads, areas


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--communities", type=int, default=1000)
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    print(
        f"machine: {platform.machine()} {platform.processor() or ''} python "
        f"{platform.python_version()} shapely {shapely.__version__} GEOS "
        f"{'.'.join(map(str, shapely.geos_version))}"
    )
    t = time.perf_counter()
    communities, roads, areas = synthetic_district(args.communities, seed=args.seed)
    print(
        f"synthetic district: {len(communities)} communities, {len(roads)} roads "
        f"({time.perf_counter() - t:.1f} s)"
    )

    t = time.perf_counter()
    grids = build_grids(communities, roads, crs_metric=METRIC)
    t_build = time.perf_counter() - t
    print(
        f"build_grids: {len(grids)} grids in {t_build:.1f} s; area m² median "
        f"{grids['area_m2'].median():.0f}, p5 {grids['area_m2'].quantile(0.05):.0f}, "
        f"p95 {grids['area_m2'].quantile(0.95):.0f}"
    )

    t = time.perf_counter()
    geocoder = Geocoder(grids, areas)
    print(f"Geocoder init: {time.perf_counter() - t:.2f} s")

    rng = np.random.default_rng(args.seed + 1)
    minx, miny, maxx, maxy = grids.total_bounds
    lon = rng.uniform(minx, maxx, args.points)
    lat = rng.uniform(miny, maxy, args.points)

    # Reference: the bare query on pre-built points and tree (not timed: their construction).
    ref_points = shapely.points(lon, lat)
    grid_geoms = grids.geometry.to_numpy()
    tree = STRtree(grid_geoms)

    t_ours: list[float] = []
    t_ref: list[float] = []
    for _ in range(args.repeat):  # interleaved, best of N: the machine is shared and noisy
        t = time.perf_counter()
        result = geocoder.locate(lon, lat)
        t_ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        pairs = tree.query(ref_points, predicate="within")
        t_ref.append(time.perf_counter() - t)

    ours, ref = args.points / min(t_ours), args.points / min(t_ref)
    print(
        f"ours      Geocoder.locate           : {ours:12,.0f} points/s "
        f"(best {min(t_ours):.2f} s of {[round(v, 2) for v in t_ours]})"
    )
    print(
        f"reference STRtree.query(within)     : {ref:12,.0f} points/s "
        f"(best {min(t_ref):.2f} s of {[round(v, 2) for v in t_ref]})"
    )
    print(f"ratio ours/reference                : {ours / ref:.2f}  (target >= 0.50)")

    # Agreement: wherever the reference finds exactly one grid, we must name the same one.
    counts = np.bincount(pairs[0], minlength=args.points)
    single = counts == 1
    ref_code = np.full(args.points, "", dtype=object)
    ref_code[pairs[0]] = grids["code"].to_numpy()[pairs[1]]
    agree = (result["grid_code"].astype(str).to_numpy()[single] == ref_code[single]).mean()
    located = (result["grid_code"].astype(str) != "").mean()
    print(
        f"agreement with reference on {int(single.sum()):,} points: {agree:.6f}; "
        f"located in a grid: {located:.3f}"
    )


if __name__ == "__main__":
    main()
