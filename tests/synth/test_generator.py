"""Synthetic city: determinism, scaling, codes and attribute plausibility."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import shapely

from cityops.synth import generate_city
from cityops.synth.generator import LAYERS
from cityops.synth.partition import count_areas

# REFERENCE Part A §3.3: legacy component 小类 codes of the representative table.
LEGACY_COMPONENT_CODES = {
    "0101",
    "0102",
    "0103",
    "0104",
    "0105",
    "0107",
    "0110",
    "0111",
    "0112",
    "0113",
    "0114",
    "0115",
    "0116",
    "0117",
    "0118",
    "0121",
    "0126",
    "0127",
    "0201",
    "0203",
    "0204",
    "0205",
    "0207",
    "0209",
    "0211",
    "0213",
    "0301",
    "0302",
    "0303",
    "0305",
    "0306",
    "0307",
    "0401",
    "0402",
    "0404",
    "0405",
    "0407",
    "0501",
    "0502",
}


def _same(a, b) -> None:
    assert list(a.columns) == list(b.columns)
    assert a.crs == b.crs
    pd.testing.assert_frame_equal(
        pd.DataFrame(a.drop(columns="geometry")), pd.DataFrame(b.drop(columns="geometry"))
    )
    assert np.array_equal(shapely.to_wkb(a.geometry.array), shapely.to_wkb(b.geometry.array))


def test_same_seed_gives_identical_layers(make_city):
    a = generate_city(2_500, 42)
    b = generate_city(2_500, 42)
    assert set(a) == set(b) == set(LAYERS)
    for name in a:
        _same(a[name], b[name])
    assert a.summary["population"] == b.summary["population"]


def test_other_seed_gives_another_city():
    a = generate_city(2_500, 42)
    c = generate_city(2_500, 43)
    assert not np.array_equal(
        shapely.to_wkb(a["buildings"].geometry.array[:50]),
        shapely.to_wkb(c["buildings"].geometry.array[:50]),
    )


@pytest.mark.parametrize("n", [1, 37, 1_000, 4_321])
def test_exact_building_count(n):
    city = generate_city(n, 3)
    assert len(city["buildings"]) == n
    assert city.summary["buildings"] == n
    district = city["areas"].query("kind == 'district'")
    assert int(district["buildings"].iloc[0]) == n
    assert city["buildings"]["building_id"].is_unique


def test_counts_scale_with_size(city3k, city10k):
    small, big = city3k.summary, city10k.summary
    for key in ("area_km2", "population", "communities"):
        assert big[key] > small[key] * 2
    for layer in ("roads", "pois", "components", "lifeline_networks", "sensors"):
        assert len(city10k[layer]) > 2 * len(city3k[layer]), layer
    # A community holds ~300–800 buildings on average, a street 8–20 communities.
    comm = city10k["areas"].query("kind == 'community'")
    assert 300 <= comm["buildings"].mean() <= 800
    assert comm["buildings"].min() >= 100
    per_street = comm.groupby("parent_code").size()
    assert per_street.between(5, 20).all()
    # "A few hundred sensors at 10k buildings".
    assert 150 <= len(city10k["sensors"]) <= 800


def test_area_counts_at_a_million_buildings():
    streets, communities = count_areas(1_000_000)
    assert streets <= 99  # 街道 codes 001–099 (GB/T 10114 type flag)
    assert 8 <= communities / streets <= 20
    assert 300 <= 1_000_000 / communities <= 800


def test_area_codes_are_well_formed(city10k):
    areas = city10k["areas"]
    assert areas["code"].is_unique
    d = areas.query("kind == 'district'")
    assert len(d) == 1 and d["code"].iloc[0] == "320599" and d["name"].iloc[0].endswith("区")
    dc = d["code"].iloc[0]
    streets = areas.query("kind == 'street'")
    comms = areas.query("kind == 'community'")
    assert streets["code"].str.fullmatch(r"\d{9}").all()
    assert (streets["code"].str[:6] == dc).all() and (streets["parent_code"] == dc).all()
    assert streets["code"].str[6:].astype(int).between(1, 99).all()
    assert streets["name"].str.endswith("街道").all()
    assert comms["code"].str.fullmatch(r"\d{12}").all()
    assert (comms["code"].str[:9] == comms["parent_code"]).all()
    assert set(comms["parent_code"]) == set(streets["code"])
    assert comms["code"].str[9:].astype(int).between(1, 199).all()
    assert comms["name"].str.endswith("社区").all()
    assert comms["name"].is_unique and streets["name"].is_unique
    b = city10k["buildings"]
    assert set(b["community_code"]) <= set(comms["code"])
    assert (b["street_code"] == b["community_code"].str[:9]).all()


def test_component_codes_are_well_formed(city10k):
    comp = city10k["components"]
    assert comp["code"].str.fullmatch(r"\d{16}").all()
    assert comp["code"].is_unique
    assert (comp["code"].str[:6] == "320599").all()
    assert (comp["code"].str[6:10] == comp["kind"]).all()
    assert set(comp["kind"]) <= LEGACY_COMPONENT_CODES
    assert (comp["standard_ref"] == "GB/T 30428.2-2013").all()
    # Sequence numbers run 1..n inside each class.
    seq = comp["code"].str[10:].astype(int)
    for _kind, s in seq.groupby(comp["kind"]):
        assert sorted(s) == list(range(1, len(s) + 1))
    assert (comp["community_code"].str[:9] == comp["street_code"]).all()
    names = dict(zip(comp["kind"], comp["name"], strict=False))
    assert names["0101"] == "上水井盖" and names["0103"] == "雨水井盖" and names["0118"] == "路灯"


def test_building_attribute_mixes(city10k):
    b = city10k["buildings"]
    assert (b["floors"] >= 1).all()
    per_floor = b["height"] / b["floors"]
    assert per_floor.between(2.5, 10).all()
    resid = b["use"] == "住宅"
    assert per_floor[resid].median() == pytest.approx(3.2, abs=0.4)
    assert set(b["structure"]) <= {"砖木", "砖混", "框架", "框架-剪力墙", "剪力墙", "钢结构"}
    assert set(b["use"]) <= {"住宅", "商业", "办公", "工业", "仓储", "公共服务", "附属"}
    # Precast hollow-core slabs only in 1980–1999 masonry (REFERENCE Part D §8), and common there.
    pc = b[b["precast_slab"]]
    assert (pc["structure"] == "砖混").all()
    assert pc["year_built"].between(1980, 1999).all()
    era_housing = b[resid & (b["structure"] == "砖混") & b["year_built"].between(1980, 1999)]
    assert era_housing["precast_slab"].mean() > 0.6
    assert len(pc) > 0.05 * len(b)
    # GB 50011-2010 Table 7.1.2 masonry limits; towers are shear-wall.
    assert b.loc[b["structure"] == "砖混", "floors"].max() <= 7
    assert b.loc[b["structure"] == "砖木", "floors"].max() <= 3
    assert b.loc[resid & (b["floors"] >= 18), "structure"].isin(["剪力墙", "框架-剪力墙"]).all()
    assert b.loc[b["floors"] >= 18, "year_built"].min() >= 1990
    # Eras: old core older than the edge; every era present.
    assert b["year_built"].between(1930, 2025).all()
    for lo, hi in ((1950, 1979), (1980, 1999), (2000, 2009), (2010, 2024)):
        assert b["year_built"].between(lo, hi).mean() > 0.05
    blocks = city10k["blocks"]
    assert set(blocks["zone"]) >= {"core", "outer"}
    # Households and population only where people live.
    assert (b.loc[resid, "households"] >= 1).all()
    assert (b.loc[~resid, ["households", "population"]] == 0).all().all()
    pop = city10k.summary["population"]
    assert pop == int(b["population"].sum())
    assert 15 <= pop / len(b) <= 60
    assert b["population"].sum() / b["households"].sum() == pytest.approx(2.62 * 0.88, abs=0.3)


def test_addresses_are_chinese_and_unique(city10k):
    b = city10k["buildings"]
    assert (
        b["address"]
        .str.fullmatch(r"[\u4e00-\u9fff〇]+(路|街|巷|弄|里|大道)\d+(-\d+)?号(\d+幢|附1)?")
        .all()
    )
    assert b["address"].is_unique
    roads = set(city10k["roads"]["name"])
    road_of = b["address"].str.extract(r"^(.+?(?:大道|路|街|巷|弄|里))\d")[0]
    assert road_of.isin(roads).all()


def test_road_names_and_classes(city10k):
    r = city10k["roads"]
    assert set(r["kind"]) == {"arterial", "secondary", "branch"}
    assert r["name"].str.fullmatch(r"[\u4e00-\u9fff〇]+(路|街|巷|弄|里|大道)").all()
    assert r.groupby("kind")["width_m"].mean().sort_values().index.tolist() == [
        "branch",
        "secondary",
        "arterial",
    ]
    assert r["length_m"].min() > 20  # no slivers between staggered T-junctions


def test_bad_arguments():
    with pytest.raises(ValueError, match="district_code"):
        generate_city(100, 1, district_code="3205")
    with pytest.raises(ValueError, match="district_code"):
        generate_city(100, 1, district_code="320500")
    with pytest.raises(ValueError, match="positive"):
        generate_city(0, 1)


def test_center_and_district_are_honoured():
    city = generate_city(
        500, 2, center=(116.40, 39.90), district_code="110199", district_name="样例区"
    )
    b = city["buildings"].total_bounds
    assert 116.3 < b[0] < b[2] < 116.5 and 39.8 < b[1] < b[3] < 40.0
    assert city["areas"]["code"].str.startswith("110199").all()
    assert re.fullmatch(r"EPSG:326(50)", city.summary["metric_crs"])
