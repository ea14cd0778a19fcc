"""cityops.core.crs: GCJ-02 / BD-09 formulas, exact inverses, CRS parsing, reprojection."""

from __future__ import annotations

import numpy as np
import pyproj
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from cityops.core.crs import (
    CrsError,
    bd09_to_gcj02,
    bd09_to_wgs84,
    gcj02_to_bd09,
    gcj02_to_wgs84,
    geometries_to_wgs84,
    in_china,
    parse_crs,
    utm_crs_for,
    wgs84_to_bd09,
    wgs84_to_gcj02,
    xy_to_wgs84,
)

GEOD = pyproj.Geod(ellps="WGS84")

# Published vectors of the reference implementations (eviltransform's test.py, as (lon, lat);
# coordtransform's README for 116.404, 39.915).
WGS_GCJ = [
    ((121.5272106, 31.1774276), (121.531541859215, 31.17530398364597)),  # Shanghai
    ((113.912316, 22.543847), (113.9171764808363, 22.540796131694766)),  # Shenzhen
    ((116.377817, 39.911954), (116.38404722455657, 39.91334545536069)),  # Beijing
    ((116.404, 39.915), (116.41024449916938, 39.91640428150164)),  # coordtransform
]


def _metres(lon1, lat1, lon2, lat2) -> np.ndarray:
    return GEOD.inv(lon1, lat1, lon2, lat2)[2]


@pytest.mark.parametrize(("wgs", "gcj"), WGS_GCJ)
def test_gcj02_forward_matches_published_vectors(wgs, gcj) -> None:
    lon, lat = wgs84_to_gcj02(*wgs)
    assert float(lon) == pytest.approx(gcj[0], abs=1e-9)
    assert float(lat) == pytest.approx(gcj[1], abs=1e-9)


@pytest.mark.parametrize(("wgs", "gcj"), WGS_GCJ)
def test_gcj02_inverse_recovers_published_wgs84(wgs, gcj) -> None:
    lon, lat = gcj02_to_wgs84(*gcj)
    assert _metres(lon, lat, *wgs) < 0.001


def test_bd09_forward_matches_coordtransform() -> None:
    lon, lat = gcj02_to_bd09(116.404, 39.915)
    assert float(lon) == pytest.approx(116.41036949371029, abs=1e-9)
    assert float(lat) == pytest.approx(39.92133699351021, abs=1e-9)
    # coordtransform's inverse is Baidu's one-step approximation; ours refines it by < 1 m.
    lon, lat = bd09_to_gcj02(116.404, 39.915)
    assert _metres(lon, lat, 116.39762729119315, 39.90865673957631) < 1.0


def test_round_trip_error_on_random_points_in_china_is_far_below_a_centimetre() -> None:
    rng = np.random.default_rng(20240601)
    lon = rng.uniform(73.6, 134.7, 200_000)
    lat = rng.uniform(18.2, 53.5, 200_000)
    offset = _metres(lon, lat, *wgs84_to_gcj02(lon, lat))
    assert offset.min() > 10 and offset.max() < 1000  # the GCJ offset is real: tens to ~700 m
    back = _metres(lon, lat, *gcj02_to_wgs84(*wgs84_to_gcj02(lon, lat)))
    assert back.max() < 0.001
    back_bd = _metres(lon, lat, *bd09_to_wgs84(*wgs84_to_bd09(lon, lat)))
    assert back_bd.max() < 0.001


def test_one_step_inverse_is_worse_than_ours() -> None:
    # Why we iterate: the common one-step inverse is off by up to about a metre.
    rng = np.random.default_rng(7)
    lon = rng.uniform(100, 125, 10_000)
    lat = rng.uniform(20, 45, 10_000)
    glon, glat = wgs84_to_gcj02(lon, lat)
    dlon, dlat = wgs84_to_gcj02(glon, glat)
    one_step = _metres(lon, lat, glon - (dlon - glon), glat - (dlat - glat))
    assert one_step.max() > 0.1
    assert _metres(lon, lat, *gcj02_to_wgs84(glon, glat)).max() < 0.001


@settings(max_examples=200, deadline=None)
@given(
    st.floats(min_value=73.0, max_value=135.0),
    st.floats(min_value=3.9, max_value=53.6),
)
def test_round_trip_property(lon: float, lat: float) -> None:
    back = gcj02_to_wgs84(*wgs84_to_gcj02(lon, lat))
    assert float(_metres(lon, lat, *back)) < 0.001


def test_outside_china_gcj02_is_identity_and_bd09_is_not() -> None:
    lon = np.array([4.36, -74.0, 151.2])
    lat = np.array([52.01, 40.7, -33.9])
    assert not in_china(lon, lat).any()
    glon, glat = wgs84_to_gcj02(lon, lat)
    np.testing.assert_array_equal(glon, lon)
    np.testing.assert_array_equal(glat, lat)
    np.testing.assert_array_equal(gcj02_to_wgs84(lon, lat)[0], lon)


def test_in_china_mask() -> None:
    mask = in_china([116.4, 120.6, 4.3, 180.0, 114.05], [39.9, 31.3, 52.0, 0.0, 22.5])
    assert mask.tolist() == [True, True, False, False, True]


def test_scalars_keep_shape_and_nan_passes_through() -> None:
    lon, _ = gcj02_to_wgs84(114.0, 22.5)
    assert np.shape(lon) == ()
    lon, _ = gcj02_to_wgs84(np.array([np.nan, 114.0]), np.array([22.0, 22.5]))
    assert np.isnan(lon[0]) and np.isfinite(lon[1])
    grid = gcj02_to_wgs84(np.full((2, 3), 114.0), np.full((2, 3), 22.5))[0]
    assert grid.shape == (2, 3)


@pytest.mark.parametrize(
    ("text", "kind", "name", "epsg"),
    [
        ("EPSG:4490", "proj", "EPSG:4490", 4490),
        ("4490", "proj", "EPSG:4490", 4490),
        ("epsg:32650", "proj", "EPSG:32650", 32650),
        ("CGCS2000", "proj", "EPSG:4490", 4490),
        ("wgs84", "proj", "EPSG:4326", 4326),
        ("WGS84", "proj", "EPSG:4326", 4326),
        ("gcj02", "gcj02", "GCJ-02", 4326),
        ("GCJ-02", "gcj02", "GCJ-02", 4326),
        ("bd09", "bd09", "BD-09", 4326),
        ("urn:ogc:def:crs:OGC:1.3:CRS84", "proj", "EPSG:4326", None),
        ("urn:ogc:def:crs:EPSG::4326", "proj", "EPSG:4326", 4326),
        # CityJSON referenceSystem: compound RD New + NAP; the horizontal part is used.
        ("https://www.opengis.net/def/crs/EPSG/0/7415", "proj", "EPSG:7415", 28992),
        ("+proj=utm +zone=50 +datum=WGS84 +units=m +no_defs", "proj", None, 32650),
    ],
)
def test_parse_crs_accepts(text: str, kind: str, name: str | None, epsg: int | None) -> None:
    spec = parse_crs(text)
    assert spec.kind == kind
    if name is not None:
        assert spec.name == name
    if epsg is not None:
        assert spec.crs.to_epsg() == epsg


def test_parse_crs_accepts_wkt() -> None:
    spec = parse_crs(pyproj.CRS.from_epsg(4547).to_wkt())
    assert spec.name == "EPSG:4547"
    assert spec.crs.is_projected


@pytest.mark.parametrize("text", ["", "   ", "EPSG:999999", "mars", "EPSG:5709", "EPSG:4978"])
def test_parse_crs_refuses_with_the_accepted_forms(text: str) -> None:
    with pytest.raises(CrsError) as info:
        parse_crs(text)
    assert "EPSG" in str(info.value)


def test_wgs84_flags() -> None:
    assert parse_crs("wgs84").is_wgs84
    assert parse_crs("urn:ogc:def:crs:OGC:1.3:CRS84").is_wgs84
    assert not parse_crs("gcj02").is_wgs84
    assert parse_crs("gcj02").is_offset
    assert not parse_crs("EPSG:4490").is_wgs84  # CGCS2000 is transformed (by pyproj)


def test_projected_points_to_wgs84() -> None:
    # UTM 50N false easting 500 km at the central meridian 117E.
    lon, lat = xy_to_wgs84([500000.0], [0.0], parse_crs("EPSG:32650"))
    assert lon[0] == pytest.approx(117.0, abs=1e-9)
    assert lat[0] == pytest.approx(0.0, abs=1e-9)


def test_geometries_to_wgs84_keeps_z_and_missing() -> None:
    spec = parse_crs("EPSG:32650")
    geoms = np.array(
        [
            shapely.Point(500000.0, 2500000.0, 12.5),
            shapely.box(500000, 2500000, 500100, 2500100),
            None,
        ],
        dtype=object,
    )
    out = geometries_to_wgs84(geoms, spec)
    assert out[0].has_z and out[0].z == 12.5
    assert out[0].x == pytest.approx(117.0, abs=1e-9)
    assert not out[1].has_z
    assert out[2] is None
    # GCJ-02 geometry transform equals the point transform.
    gcj = np.array([shapely.Point(114.05, 22.54)], dtype=object)
    lon, lat = gcj02_to_wgs84(114.05, 22.54)
    moved = geometries_to_wgs84(gcj, parse_crs("gcj02"))[0]
    assert (moved.x, moved.y) == pytest.approx((float(lon), float(lat)))


def test_utm_crs_for() -> None:
    assert utm_crs_for(114.05, 22.54).to_epsg() == 32650  # Shenzhen
    assert utm_crs_for(120.6, 31.3).to_epsg() == 32651  # Suzhou
    assert utm_crs_for(-70.6, -33.4).to_epsg() == 32719  # Santiago
    assert utm_crs_for(180.0, 10.0).to_epsg() == 32601
    with pytest.raises(CrsError):
        utm_crs_for(float("nan"), 10.0)
