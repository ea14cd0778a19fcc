"""Rule files of the synthetic city generator, validated on load (DESIGN §1.4 "rules are data").

``rules/synth/urban_form.yaml`` holds the road grid, the zones and the block typologies;
``rules/synth/services.yaml`` the facility norms, shelter classes, component classes, lifeline
spacings and sensor defaults. A city overrides either file under ``CITYOPS_RULES_DIR``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cityops.core.rules import load_rules

__all__ = [
    "STRUCTURES",
    "USES",
    "ZONES",
    "ServicesRules",
    "Typology",
    "UrbanFormRules",
    "load_services",
    "load_urban_form",
]

ZONES: tuple[str, ...] = ("core", "inner", "middle", "outer")
#: Structure classes (结构类型): brick-wood, masonry (brick-concrete), frame, frame-shear wall,
#: shear wall, steel.
STRUCTURES: tuple[str, ...] = ("砖木", "砖混", "框架", "框架-剪力墙", "剪力墙", "钢结构")
#: Building uses (用途): residential, commercial, office, industrial, warehouse, public service,
#: ancillary (附属用房: bike sheds, substations, gatehouses).
USES: tuple[str, ...] = ("住宅", "商业", "办公", "工业", "仓储", "公共服务", "附属")

Range = tuple[float, float]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StructureRule(_Strict):
    """First matching rule gives a building's structure mix (conditions are ANDed)."""

    year_lt: int | None = None
    year_ge: int | None = None
    floors_le: int | None = None
    floors_ge: int | None = None
    mix: dict[str, float]


class Typology(_Strict):
    label_cn: str
    zones: dict[str, float]
    layout: Literal["rows", "campus", "open"] = "rows"
    setback_m: float = Field(ge=0)
    gap_m: float = Field(default=3.0, gt=0)
    slot_u_m: Range = (0.0, 0.0)
    slot_v_m: Range = (0.0, 0.0)
    foot_u: Range = (0.0, 0.0)
    foot_v: Range = (0.0, 0.0)
    l_shape: float = Field(default=0.0, ge=0, le=1)
    floors: dict[int, float] = Field(default_factory=dict)
    years: list[tuple[int, int, float]] = Field(default_factory=list)
    uses: dict[str, float] = Field(default_factory=dict)
    floor_height_m: Range = (3.0, 3.0)
    unit_gross_m2: float = 0.0
    occupancy: float = Field(default=0.0, ge=0, le=1)
    ancillary: float = Field(default=0.0, ge=0, le=1)
    frontage_shop: float = Field(default=0.0, ge=0, le=1)
    structure: list[StructureRule] = Field(default_factory=list)
    estate_suffixes: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> Typology:
        if set(self.uses) - set(USES):
            raise ValueError(f"unknown use(s) {set(self.uses) - set(USES)}; use {USES}")
        for rule in self.structure:
            if set(rule.mix) - set(STRUCTURES):
                raise ValueError(f"unknown structure(s) {set(rule.mix) - set(STRUCTURES)}")
        if set(self.zones) - set(ZONES):
            raise ValueError(f"unknown zone(s) {set(self.zones) - set(ZONES)}; use {ZONES}")
        if self.layout == "open":
            return self
        if not (
            0 < self.slot_u_m[0] <= self.slot_u_m[1] and 0 < self.slot_v_m[0] <= self.slot_v_m[1]
        ):
            raise ValueError("slot_u_m / slot_v_m must be positive [min, max] ranges")
        if not (
            0 < self.foot_u[0] <= self.foot_u[1] < 1 and 0 < self.foot_v[0] <= self.foot_v[1] < 1
        ):
            raise ValueError("foot_u / foot_v are fractions of the slot in (0, 1)")
        # Footprints are clipped to leave gap_m on each side; the slot must still hold one.
        if min(self.slot_u_m[0], self.slot_v_m[0]) < 2 * self.gap_m + 4:
            raise ValueError("slots must be at least 2 × gap_m + 4 m on each axis")
        if not self.floors or not self.years or not self.uses or not self.structure:
            raise ValueError("a built typology needs floors, years, uses and structure")
        if self.structure[-1].model_dump(exclude={"mix"}, exclude_none=True):
            raise ValueError("the last structure rule must be unconditional (a fallback)")
        for lo, hi, _w in self.years:
            if lo > hi:
                raise ValueError(f"year bin {lo}–{hi} is reversed")
        return self


class RoadClass(_Strict):
    label_cn: str
    half_width_m: float = Field(gt=0)
    core_half_width_m: float | None = None


class GridRules(_Strict):
    arterial_spacing_m: Range
    secondary_spacing_m: Range
    branch_block_m: dict[str, Range]
    rotation_deg: Range
    river_every_m: float = Field(gt=0)
    river_half_width_m: Range
    river_green_m: float = Field(ge=0)
    bridge_approach_m: float = Field(ge=0)
    buildings_per_km2: float = Field(gt=0)


class Households(_Strict):
    persons_per_household: float = Field(gt=0)
    dwelling_share_of_floor_area: float = Field(gt=0, le=1)


class UrbanFormRules(_Strict):
    version: int
    source: str
    zones: dict[str, float]
    grid: GridRules
    roads: dict[Literal["arterial", "secondary", "branch"], RoadClass]
    households: Households
    typologies: dict[str, Typology]

    @model_validator(mode="after")
    def _check(self) -> UrbanFormRules:
        if list(self.zones) != list(ZONES[:-1]):
            raise ValueError(f"zones must give upper bounds for {ZONES[:-1]} in that order")
        for zone in ZONES:
            if sum(t.zones.get(zone, 0.0) for t in self.typologies.values()) <= 0:
                raise ValueError(f"no typology has weight in zone {zone}")
        return self


class PerPopulation(_Strict):
    per: float = Field(gt=0)
    level: Literal["community", "street", "district"]
    name: str
    source: str = ""


class Facilities(_Strict):
    per_population: dict[str, PerPopulation]
    per_community: dict[str, str]
    per_street: dict[str, str]
    fire_station_district_km2: float = Field(gt=0)
    bus_stop_spacing_m: float = Field(gt=0)
    parks: list[tuple[float, str]]


class ShelterClass(_Strict):
    kind: str
    label_cn: str
    min_effective_m2: float = Field(ge=0)
    m2_per_person: float = Field(gt=0)
    level: str


class Shelters(_Strict):
    classes: list[ShelterClass]
    effective_ratio: dict[str, float]


class ComponentClass(_Strict):
    name: str
    accuracy: Literal["A", "B", "C"]


class Components(_Strict):
    standard_ref: str
    classes: dict[str, ComponentClass]
    categories: dict[str, str]
    spacing_m: dict[str, dict[str, float]]
    per_community: dict[str, int]
    per_park_hectare: dict[str, float]

    @model_validator(mode="after")
    def _check(self) -> Components:
        for code in self.classes:
            if len(code) != 4 or not code.isdigit() or code[:2] not in self.categories:
                raise ValueError(f"component class {code!r} is not a legacy 4-digit 大类+小类 code")
        used = set(self.spacing_m) | set(self.per_community) | set(self.per_park_hectare)
        if used - set(self.classes):
            raise ValueError(f"component codes used but not defined: {used - set(self.classes)}")
        return self


class Lifelines(_Strict):
    manhole_spacing_m: dict[str, float]
    gas_regulator_per_km2: float = Field(ge=0)
    underpass_per_km2: float = Field(ge=0)


class SensorKind(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    domain: str
    unit: str
    interval_s: int = Field(gt=0)


class ServicesRules(_Strict):
    version: int
    source: str
    facilities: Facilities
    shelters: Shelters
    components: Components
    lifelines: Lifelines
    sensors: dict[str, SensorKind]


def load_urban_form() -> UrbanFormRules:
    """``rules/synth/urban_form.yaml`` (or the city's override), validated."""
    return load_rules("synth/urban_form.yaml", UrbanFormRules)


def load_services() -> ServicesRules:
    """``rules/synth/services.yaml`` (or the city's override), validated."""
    return load_rules("synth/services.yaml", ServicesRules)
