"""Shared state of one generation run, and small geometry helpers in the local frame."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import shapely
from numpy.typing import NDArray

from cityops.synth.buildings import Buildings
from cityops.synth.config import ServicesRules, UrbanFormRules
from cityops.synth.frame import Frame
from cityops.synth.layout import Layout

__all__ = ["FACILITY_KINDS", "Ctx", "boxes_uv", "lines_uv", "points_ll"]

#: Facility kinds a building can host (code 0: none); the ``pois`` kinds.
FACILITY_KINDS: tuple[str, ...] = (
    "",
    "school",
    "hospital",
    "kindergarten",
    "clinic",
    "elderly_care",
    "community_service_center",
    "market",
    "street_office",
    "police_station",
    "fire_station",
)

F = NDArray[np.float64]
IA = NDArray[np.int64]
S = NDArray[np.str_]


@dataclass
class Ctx:
    seed: int
    district_code: str
    district_name: str
    frame: Frame
    rules: UrbanFormRules
    services: ServicesRules
    lay: Layout
    bld: Buildings
    # Per candidate block (-1 / "" outside the district).
    blk_street: IA = field(default_factory=lambda: np.zeros(0, np.int64))
    blk_comm: IA = field(default_factory=lambda: np.zeros(0, np.int64))
    street_codes: S = field(default_factory=lambda: np.zeros(0, "<U9"))
    street_names: S = field(default_factory=lambda: np.zeros(0, "<U12"))
    comm_codes: S = field(default_factory=lambda: np.zeros(0, "<U12"))
    comm_names: S = field(default_factory=lambda: np.zeros(0, "<U12"))
    comm_street: IA = field(default_factory=lambda: np.zeros(0, np.int64))
    # Road names per line id ("" for lines without a name, e.g. outside the district).
    line_name: S = field(default_factory=lambda: np.zeros(0, "<U12"))
    line_dir_split: NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, bool))
    # Selected road segments (indices into lay.seg_*).
    road_seg: IA = field(default_factory=lambda: np.zeros(0, np.int64))
    # Facility hosted by each building: code into FACILITY_KINDS (0 = none).
    facility: IA = field(default_factory=lambda: np.zeros(0, np.int64))
    # Estate (小区) name per candidate block ("" for none).
    blk_estate: NDArray[np.object_] = field(default_factory=lambda: np.zeros(0, object))
    _road_table: S | None = None
    area_km2: float = 0.0

    # ------------------------------------------------------------------ names
    def road_table(self) -> S:
        """Names by id ``2 × line + half``; split arterials have 西/南 (half 0) and 东/北 (1)."""
        if self._road_table is not None:
            return self._road_table
        base = self.line_name.astype(str)
        axis = self.lay.line_axis
        split = self.line_dir_split
        stem = np.array([b.removesuffix("路") for b in base.tolist()], dtype=object).astype(str)
        lo = np.char.add(np.char.add(stem, np.where(axis == 1, "西", "南")), "路")
        hi = np.char.add(np.char.add(stem, np.where(axis == 1, "东", "北")), "路")
        out = np.empty(2 * len(base), dtype=object)
        out[0::2] = np.where(split, lo, base)
        out[1::2] = np.where(split, hi, base)
        self._road_table = out.astype(str)
        return self._road_table

    def road_name_id(self, line: IA, t: F) -> IA:
        """Id (into :meth:`road_table`) of the name of ``line`` at position ``t``."""
        return 2 * np.asarray(line, dtype=np.int64) + (
            self.line_dir_split[line] & (np.asarray(t) >= 0)
        ).astype(np.int64)

    def road_name_at(self, line: IA, t: F) -> S:
        """Name of ``line`` at position ``t`` (东/西, 南/北 halves for split arterials)."""
        return self.road_table()[self.road_name_id(line, t)]

    # ------------------------------------------------------------------ geometry
    def to_ll_points(self, u: F, v: F) -> NDArray[np.object_]:
        lon, lat = self.frame.to_lonlat(u, v)
        out: NDArray[np.object_] = shapely.points(lon, lat)
        return out

    def to_ll_lines(self, u0: F, v0: F, u1: F, v1: F) -> NDArray[np.object_]:
        lon0, lat0 = self.frame.to_lonlat(u0, v0)
        lon1, lat1 = self.frame.to_lonlat(u1, v1)
        coords = np.stack([np.c_[lon0, lat0], np.c_[lon1, lat1]], axis=1)
        out: NDArray[np.object_] = shapely.linestrings(coords)
        return out

    def to_ll_boxes(self, u0: F, v0: F, u1: F, v1: F) -> NDArray[np.object_]:
        us = np.stack([u0, u1, u1, u0, u0], axis=1)
        vs = np.stack([v0, v0, v1, v1, v0], axis=1)
        lon, lat = self.frame.to_lonlat(us.ravel(), vs.ravel())
        coords = np.stack([lon.reshape(us.shape), lat.reshape(us.shape)], axis=2)
        out: NDArray[np.object_] = shapely.polygons(coords)
        return out


def boxes_uv(u0: F, v0: F, u1: F, v1: F) -> NDArray[np.object_]:
    out: NDArray[np.object_] = shapely.box(u0, v0, u1, v1, ccw=True)
    return out


def lines_uv(u0: F, v0: F, u1: F, v1: F) -> NDArray[np.object_]:
    out: NDArray[np.object_] = shapely.linestrings(np.stack([np.c_[u0, v0], np.c_[u1, v1]], axis=1))
    return out


def points_ll(ctx: Ctx, u: F, v: F) -> NDArray[np.object_]:
    return ctx.to_ll_points(u, v)
