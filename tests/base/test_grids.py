"""Unit grids (单元网格): division, tiling, numbering and codes (GB/T 30428.1, DB11/T 2157-2023).

Communities are drawn in UTM 50N metres (Beijing) and handed to ``build_grids`` in EPSG:4326,
as the database stores them; checks are made back in metres.
"""

from __future__ import annotations

import re
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyproj
import pytest
import shapely
import yaml
from shapely import affinity
from shapely.geometry import LineString, MultiPolygon, Polygon, box

import cityops
from cityops.base.grids import (
    GridRules,
    build_grids,
    grid_code_parts,
    load_grid_rules,
    metric_crs_for,
    validate_grid_code,
)
from cityops.core.errors import ValidationFailed
from cityops.core.rules import RuleFileError

M = "EPSG:32650"
X0, Y0 = 440_000.0, 4_420_000.0


def communities(geoms: list[Polygon | MultiPolygon], codes: list[str]) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame({"code": codes}, geometry=geoms, crs=M).to_crs(4326)


def roads(lines: list[LineString]) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(geometry=lines, crs=M).to_crs(4326)


def build(comm: gpd.GeoDataFrame, rd: gpd.GeoDataFrame | None = None, **kw: object):
    grids = build_grids(comm, rd, crs_metric=M, **kw)  # type: ignore[arg-type]
    return grids, grids.to_crs(M)


def assert_tiles(grids_m: gpd.GeoDataFrame, comm: gpd.GeoDataFrame) -> None:
    """无缝拼接: per community, union == community, no overlaps, each grid in one community."""
    comm_m = comm.to_crs(M).set_index("code")
    geoms = grids_m.geometry.to_numpy()
    assert shapely.is_valid(geoms).all()
    assert (shapely.get_type_id(geoms) == 3).all(), "grids are single Polygons"
    for code, grp in grids_m.groupby("community_code"):
        c = comm_m.loc[code].geometry
        u = shapely.union_all(grp.geometry.to_numpy())
        assert shapely.area(shapely.symmetric_difference(u, c)) < 1e-3
        assert grp["area_m2"].sum() == pytest.approx(c.area, rel=1e-7)
        inside = shapely.area(shapely.intersection(grp.geometry.to_numpy(), c))
        np.testing.assert_allclose(inside, grp["area_m2"].to_numpy(), rtol=1e-7)
    assert set(grids_m["community_code"]) == set(comm_m.index)
    tree = shapely.STRtree(geoms)
    a, b = tree.query(geoms, predicate="intersects")
    pair = a < b
    overlap = shapely.area(shapely.intersection(geoms[a[pair]], geoms[b[pair]]))
    assert overlap.max(initial=0) < 1e-3


def assert_codes(grids: gpd.GeoDataFrame) -> None:
    for row in grids.itertuples():
        assert re.fullmatch(r"\d{15}", row.code)
        assert row.code.startswith(row.community_code)
        assert row.community_code.startswith(row.street_code)
        assert row.street_code.startswith(row.district_code)
        assert (len(row.district_code), len(row.street_code), len(row.community_code)) == (
            6,
            9,
            12,
        )
    for _, grp in grids.groupby("community_code"):
        seqs = sorted(int(c[-3:]) for c in grp["code"])
        assert seqs == list(range(1, len(grp) + 1)), "sequence 001… without gaps"


def centroids(grids_m: gpd.GeoDataFrame) -> np.ndarray:
    return shapely.get_coordinates(shapely.centroid(grids_m.geometry.to_numpy())) - [X0, Y0]


RECT = box(X0, Y0, X0 + 500, Y0 + 400)
CROSS = [
    LineString([(X0 - 50, Y0 + 200), (X0 + 550, Y0 + 200)]),
    LineString([(X0 + 250, Y0 - 50), (X0 + 250, Y0 + 450)]),
]


def test_rectangle_with_cross_road_tiles_and_numbers_west_east_north_south() -> None:
    comm = communities([RECT], ["110105001001"])
    grids, gm = build(comm, roads(CROSS))
    assert_tiles(gm, comm)
    assert_codes(grids)
    # 4 blocks of 250 × 200 = 50,000 m², each split 3 × 2 into cells of 8,333 m².
    assert len(grids) == 24
    np.testing.assert_allclose(gm["area_m2"], 50_000 / 6, rtol=1e-4)
    # Rows run north→south (y 350, 250, 150, 50), each row west→east (x 41.7 … 458.3).
    xy = centroids(gm)
    seq = gm["code"].str[-3:].astype(int).to_numpy()
    row = np.rint((350 - xy[:, 1]) / 100).astype(int)
    col = np.argsort(np.argsort(xy[:, 0] + 1e4 * row)) % 6
    np.testing.assert_array_equal(seq, row * 6 + col + 1)
    assert grids["code"].iloc[0] == "110105001001001"
    assert xy[0, 0] < 100 and xy[0, 1] > 300, "001 is the north-west grid"


def test_roads_are_never_crossed_inside_a_grid() -> None:
    comm = communities([RECT], ["110105001001"])
    _, gm = build(comm, roads(CROSS))
    inner = shapely.buffer(gm.geometry.to_numpy(), -0.01)
    for line in CROSS:
        assert shapely.length(shapely.intersection(line, inner)).max() < 1e-6


def test_rotated_street_grid_gives_rectangles_along_the_roads() -> None:
    centre = (X0 + 250, Y0 + 200)
    comm = communities([affinity.rotate(RECT, 30, origin=centre)], ["110105001002"])
    rd = roads([affinity.rotate(line, 30, origin=centre) for line in CROSS])
    grids, gm = build(comm, rd)
    assert_tiles(gm, comm)
    assert_codes(grids)
    assert len(grids) == 24
    np.testing.assert_allclose(gm["area_m2"], 50_000 / 6, rtol=1e-3)
    # Split along the block's own orientation: every grid is a 4-corner rectangle.
    assert (shapely.get_num_coordinates(gm.geometry.to_numpy()) == 5).all()


def test_community_without_roads_gets_a_regular_grid() -> None:
    comm = communities([RECT], ["110105001003"])
    grids, gm = build(comm)
    assert_tiles(gm, comm)
    assert_codes(grids)
    assert len(grids) == 20
    np.testing.assert_allclose(gm["area_m2"], 10_000, rtol=1e-4)
    xy = centroids(gm)
    np.testing.assert_allclose(xy[0], [50, 350], atol=0.01)  # 001: north-west
    np.testing.assert_allclose(xy[4], [450, 350], atol=0.01)  # 005: north-east
    np.testing.assert_allclose(xy[5], [50, 250], atol=0.01)  # 006: next row, west
    np.testing.assert_allclose(xy[19], [450, 50], atol=0.01)  # 020: south-east


def test_irregular_community_merges_slivers() -> None:
    poly = Polygon(
        [
            (X0, Y0),
            (X0 + 430, Y0 + 35),
            (X0 + 470, Y0 + 330),
            (X0 + 160, Y0 + 410),
            (X0 + 20, Y0 + 250),
        ]
    )
    comm = communities([poly], ["110105001004"])
    grids, gm = build(comm)
    assert_tiles(gm, comm)
    assert_codes(grids)
    # No sliver below 0.3 × target survives; nothing grossly oversized either.
    assert gm["area_m2"].min() >= 3_000
    assert gm["area_m2"].max() <= 2.5 * 10_000
    assert abs(len(grids) - poly.area / 10_000) <= 0.35 * poly.area / 10_000


def test_small_block_between_road_and_boundary_merges_into_its_neighbour() -> None:
    comm = communities([RECT], ["110105001005"])
    # A road 5 m inside the west edge leaves a 2,000 m² strip (< 0.3 × target).
    rd = roads([LineString([(X0 + 5, Y0 - 20), (X0 + 5, Y0 + 420)])])
    _, gm = build(comm, rd)
    assert_tiles(gm, comm)
    assert gm["area_m2"].min() >= 3_000
    # The city may keep such blocks whole instead (rule merge_small_blocks_across_roads).
    rules = GridRules(merge_small_blocks_across_roads=False)
    _, kept = build(comm, rd, rules=rules)
    assert_tiles(kept, comm)
    assert kept["area_m2"].min() == pytest.approx(2_000, rel=1e-4)
    inner = shapely.buffer(kept.geometry.to_numpy(), -0.01)
    assert shapely.length(shapely.intersection(rd.to_crs(M).geometry.iloc[0], inner)).max() < 1e-6


def test_multipolygon_community_and_hole() -> None:
    west = box(X0, Y0, X0 + 300, Y0 + 200)
    east = box(X0 + 400, Y0, X0 + 700, Y0 + 200)
    island = box(X0 + 800, Y0, X0 + 820, Y0 + 10)  # 200 m², isolated: keeps its own grid
    holed = Polygon(
        box(X0, Y0 + 300, X0 + 300, Y0 + 600).exterior.coords,
        [box(X0 + 100, Y0 + 400, X0 + 200, Y0 + 500).exterior.coords],
    )
    comm = communities(
        [MultiPolygon([west, east, island]), holed], ["110105001006", "110105002001"]
    )
    grids, gm = build(comm)
    assert_tiles(gm, comm)
    assert_codes(grids)
    parts = [west, east, island]
    mine = gm[gm["community_code"] == "110105001006"]
    # Each grid lies in exactly one part of the community.
    for geom in mine.geometry:
        assert sum(shapely.area(shapely.intersection(geom, p)) > 1e-6 for p in parts) == 1
    assert (mine.geometry.area < 1_000).sum() == 1
    hole = box(X0 + 100, Y0 + 400, X0 + 200, Y0 + 500)
    assert shapely.area(shapely.intersection(gm.geometry.to_numpy(), hole)).max() < 1e-6


def test_two_communities_share_nothing_and_keep_their_prefixes() -> None:
    a = box(X0, Y0, X0 + 300, Y0 + 300)
    b = box(X0 + 300, Y0, X0 + 600, Y0 + 300)
    comm = communities([a, b], ["110105001007", "110105003002"])
    grids, gm = build(comm, roads(CROSS))
    assert_tiles(gm, comm)
    assert_codes(grids)
    assert set(grids["street_code"]) == {"110105001", "110105003"}
    assert set(grids["district_code"]) == {"110105"}
    assert grids["code"].is_monotonic_increasing


def test_target_area_controls_the_size() -> None:
    comm = communities([RECT], ["110105001008"])
    grids, gm = build(comm, target_area_m2=2_500)
    assert_tiles(gm, comm)
    assert len(grids) == 80
    np.testing.assert_allclose(gm["area_m2"], 2_500, rtol=1e-4)


def test_more_than_999_grids_is_an_error_naming_the_community_and_the_fix() -> None:
    comm = communities([RECT], ["110105001009"])
    with pytest.raises(ValidationFailed) as err:  # 2,000 grids: refused before any work
        build(comm, target_area_m2=100)
    assert "110105001009" in err.value.detail and "target_area_m2" in err.value.detail
    with pytest.raises(ValidationFailed) as err:  # ~1,100 grids: refused after counting
        build(comm, target_area_m2=182)
    assert "110105001009" in err.value.detail and "999" in err.value.detail


@pytest.mark.parametrize(
    ("codes", "fragment"),
    [(["11010500100"], "12 digits"), (["110105001001", "110105001001"], "more than once")],
)
def test_bad_community_codes_are_refused(codes: list[str], fragment: str) -> None:
    comm = communities([RECT] * len(codes), codes)
    with pytest.raises(ValidationFailed) as err:
        build(comm)
    assert any(fragment in e.message for e in err.value.errors)


def test_overlapping_communities_are_refused() -> None:
    comm = communities([RECT, affinity.translate(RECT, 100, 0)], ["110105001010", "110105001011"])
    with pytest.raises(ValidationFailed) as err:
        build(comm)
    assert "overlap" in err.value.detail


def test_missing_crs_and_geographic_metric_crs_are_refused() -> None:
    comm = communities([RECT], ["110105001012"])
    with pytest.raises(ValidationFailed):
        build_grids(comm.set_crs(None, allow_override=True))
    with pytest.raises(ValidationFailed, match="projected"):
        build_grids(comm, crs_metric="EPSG:4326")


def test_default_metric_crs_is_the_utm_zone_of_the_centre() -> None:
    assert metric_crs_for((116.3, 39.8, 116.6, 40.0)) == pyproj.CRS.from_epsg(32650)
    assert metric_crs_for((121.3, 31.1, 121.6, 31.3)) == pyproj.CRS.from_epsg(32651)
    comm = communities([RECT], ["110105001013"])
    grids = build_grids(comm)  # default CRS: UTM 50N here, so areas match the metre drawing
    assert grids["area_m2"].sum() == pytest.approx(200_000, rel=1e-6)


def test_grid_code_helpers() -> None:
    assert grid_code_parts("110105001001007") == (
        "110105",
        "110105001",
        "110105001001",
        "110105001001007",
    )
    validate_grid_code("110105001001007", "110105001001")
    with pytest.raises(ValidationFailed):
        validate_grid_code("11010500100100")
    with pytest.raises(ValidationFailed):
        validate_grid_code("110105001002007", "110105001001")


def test_rule_file_loads_with_sources(tmp_path: Path) -> None:
    rules = load_grid_rules()
    assert rules.target_area_m2 == 10_000
    assert rules.max_sequence == 999
    assert rules == GridRules(standard_ref=rules.standard_ref)  # file and code defaults agree
    packaged = Path(cityops.__file__).parent / "rules" / "base" / "grids.yaml"
    raw = yaml.safe_load(packaged.read_text(encoding="utf-8"))
    assert all(p["source"] and p["label"] for p in raw["parameters"].values())
    # A city's own file overrides values; a value out of range is refused, naming the file.
    raw["parameters"]["sliver_factor"]["value"] = 0.2
    (tmp_path / "grids.yaml").write_text(yaml.safe_dump(raw, allow_unicode=True), "utf-8")
    assert load_grid_rules(tmp_path / "grids.yaml").sliver_factor == 0.2
    raw["parameters"]["max_sequence"]["value"] = 1000
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(raw, allow_unicode=True), "utf-8")
    with pytest.raises(RuleFileError, match=r"bad\.yaml.*max_sequence"):
        load_grid_rules(tmp_path / "bad.yaml")


def voronoi_district(n: int, seed: int = 7) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame]:
    """n Voronoi communities over a square of ~n × 0.2 km², with tilted through roads."""
    rng = np.random.default_rng(seed)
    side = float(np.sqrt(n * 200_000))
    frame = box(X0, Y0, X0 + side, Y0 + side)
    pts = shapely.points(rng.uniform(X0, X0 + side, n), rng.uniform(Y0, Y0 + side, n))
    cells = shapely.intersection(
        shapely.get_parts(shapely.voronoi_polygons(shapely.multipoints(pts), extend_to=frame)),
        frame,
    )
    codes = [f"110105{i // 30 + 1:03d}{i % 30 + 1:03d}" for i in range(len(cells))]
    lines = [
        LineString([(X0 + t, Y0 - 10), (X0 + t + rng.uniform(-60, 60), Y0 + side + 10)])
        for t in np.arange(350, side, 700)
    ] + [
        LineString([(X0 - 10, Y0 + t), (X0 + side + 10, Y0 + t + rng.uniform(-60, 60))])
        for t in np.arange(350, side, 700)
    ]
    return communities(list(cells), codes), roads(lines)


def test_generated_district_keeps_every_guarantee() -> None:
    comm, rd = voronoi_district(120)
    grids, gm = build(comm, rd)
    assert_tiles(gm, comm)
    assert_codes(grids)
    assert gm["area_m2"].min() >= 3_000
    assert 5_000 < gm["area_m2"].median() < 15_000


@pytest.mark.slow
def test_thousand_communities_in_reasonable_time() -> None:
    import time

    comm, rd = voronoi_district(1000)
    t = time.perf_counter()
    grids, gm = build(comm, rd)
    assert time.perf_counter() - t < 60
    assert_codes(grids)
    assert (shapely.get_type_id(gm.geometry.to_numpy()) == 3).all()
    assert gm["area_m2"].min() >= 3_000
    assert grids["area_m2"].sum() == pytest.approx(comm.to_crs(M).area.sum(), rel=1e-7)
