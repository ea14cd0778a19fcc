"""Lifeline rule files: domains and object kinds, alarm thresholds per profile, incident merging.

``rules/lifeline/domains.yaml``, ``thresholds.yaml`` and ``incidents.yaml`` (overridable under
``CITYOPS_RULES_DIR``, DESIGN §1.4), validated by pydantic on load; :func:`sensor_rule` turns a
profile plus a sensor's own overrides into the plain :class:`~cityops.lifeline.alarms.SensorRule`
that the streaming rules use (REFERENCE Part C §1.3: "let each sensor type map its own
thresholds onto levels").
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cityops.core.rules import load_rules
from cityops.lifeline.alarms import (
    RANK,
    AnomalyRule,
    Band,
    RateRule,
    SensorRule,
    StuckRule,
)

Level = Literal["red", "orange", "yellow", "blue"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ------------------------------------------------------------------------------ domains


class DomainDef(_Strict):
    name: str
    title_zh: str
    owner_unit: str
    source: str


class ObjectKindDef(_Strict):
    name: str
    title_zh: str
    domain: str
    aliases: list[str] = Field(default_factory=list)


class DomainRules(_Strict):
    version: int
    source: str
    domains: list[DomainDef]
    object_kinds: list[ObjectKindDef]
    default_object_kind: dict[str, str]

    @model_validator(mode="after")
    def _check(self) -> DomainRules:
        names = {d.name for d in self.domains}
        kinds = {o.name for o in self.object_kinds}
        for o in self.object_kinds:
            if o.domain not in names:
                raise ValueError(f"object kind {o.name}: unknown domain {o.domain}")
        for key, kind in self.default_object_kind.items():
            if key.split("/")[0] not in names:
                raise ValueError(f"default_object_kind {key}: unknown domain")
            if kind not in kinds:
                raise ValueError(f"default_object_kind {key}: unknown object kind {kind}")
        return self

    def domain(self, name: str) -> DomainDef | None:
        return next((d for d in self.domains if d.name == name), None)

    def object_kind(self, domain: str, kind: str, given: str | None) -> str:
        """The object kind of a sensor: ``given`` (a name or an alias, preferring the sensor's
        domain), else the default for (domain, sensor kind), else for the domain."""
        if given:
            for o in self.object_kinds:
                if o.domain == domain and (o.name == given or given in o.aliases):
                    return o.name
            for o in self.object_kinds:
                if o.name == given or given in o.aliases:
                    return o.name
            raise ValueError(
                f"unknown object kind {given!r}: use one of "
                + ", ".join(o.name for o in self.object_kinds)
            )
        found = self.default_object_kind.get(f"{domain}/{kind}") or self.default_object_kind.get(
            domain
        )
        if found is None:
            raise ValueError(f"no default object kind for domain {domain!r}: name one")
        return found


# ---------------------------------------------------------------------------- thresholds


class BandIn(_Strict):
    above: float | None = None
    below: float | None = None

    @model_validator(mode="after")
    def _one(self) -> BandIn:
        if self.above is None and self.below is None:
            raise ValueError("give `above` and/or `below`")
        return self


class RateIn(_Strict):
    level: Level = "yellow"
    rise_per_min: float | None = Field(None, gt=0)
    drop_per_min: float | None = Field(None, gt=0)
    clear_after_s: float = Field(900.0, ge=0)


class StuckIn(_Strict):
    samples: int = Field(ge=2)
    ignore: list[float] = Field(default_factory=list)
    tolerance: float = Field(0.0, ge=0)


class PhysicalIn(_Strict):
    min: float | None = None
    max: float | None = None


class AnomalyIn(_Strict):
    score: float = Field(0.8, gt=0, le=1)
    level: Level = "blue"
    clear_after_s: float = Field(3600.0, ge=0)


class RuleFields(_Strict):
    """The fields a profile sets and a sensor may override (all optional here)."""

    levels: dict[Level, BandIn] | None = None
    hysteresis: float | None = Field(None, ge=0)
    min_duration_s: float | None = Field(None, ge=0)
    clear_duration_s: float | None = Field(None, ge=0)
    physical: PhysicalIn | None = None
    rate: RateIn | None = None
    stuck: StuckIn | None = None
    anomaly: AnomalyIn | None = None
    offline_intervals: int | None = Field(None, ge=1)
    health_level: Level | None = None


class Match(_Strict):
    domain: str | None = None
    kind: str | None = None
    object_kind: str | None = None

    def specificity(self, domain: str, kind: str, object_kind: str) -> int | None:
        """How many fields match (None: a field contradicts)."""
        n = 0
        for want, have in (
            (self.domain, domain),
            (self.kind, kind),
            (self.object_kind, object_kind),
        ):
            if want is None:
                continue
            if want != have:
                return None
            n += 1
        return n


class Profile(RuleFields):
    name: str
    match: Match
    unit: str | None = None
    source: str


class ThresholdRules(_Strict):
    version: int
    source: str
    defaults: RuleFields
    profiles: list[Profile]

    @field_validator("profiles")
    @classmethod
    def _unique(cls, v: list[Profile]) -> list[Profile]:
        names = [p.name for p in v]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"profile names given twice: {sorted(dup)}")
        return v

    def profile_for(self, domain: str, kind: str, object_kind: str) -> Profile:
        """The most specific matching profile (first listed on a tie)."""
        best: tuple[int, int, Profile] | None = None
        for i, p in enumerate(self.profiles):
            s = p.match.specificity(domain, kind, object_kind)
            if s is not None and (best is None or (s, -i) > (best[0], best[1])):
                best = (s, -i, p)
        if best is None:
            raise ValueError(f"no threshold profile matches {domain}/{kind}/{object_kind}")
        return best[2]

    def profile(self, name: str) -> Profile | None:
        return next((p for p in self.profiles if p.name == name), None)


# ------------------------------------------------------------------------------ incidents


class CaseRules(_Strict):
    source: str = "sensor_alarm"
    category_by_domain: dict[str, str] = Field(default_factory=dict)
    default_category: str = "city:other"


class IncidentRules(_Strict):
    version: int
    source: str
    distance_m: float = Field(120.0, gt=0)
    window_s: float = Field(1800.0, gt=0)
    kinds: list[str]
    join_kinds: list[str] = Field(default_factory=list)
    case: CaseRules = CaseRules()


# ------------------------------------------------------------------------------- loading


@lru_cache(maxsize=4)
def domain_rules() -> DomainRules:
    return load_rules("lifeline/domains.yaml", DomainRules)


@lru_cache(maxsize=4)
def threshold_rules() -> ThresholdRules:
    return load_rules("lifeline/thresholds.yaml", ThresholdRules)


@lru_cache(maxsize=4)
def incident_rules() -> IncidentRules:
    return load_rules("lifeline/incidents.yaml", IncidentRules)


def clear_caches() -> None:
    """Forget loaded rule files (tests, or after a city changes its rule directory)."""
    domain_rules.cache_clear()
    threshold_rules.cache_clear()
    incident_rules.cache_clear()
    _compiled.cache_clear()


def validate_overrides(data: dict[str, Any] | None) -> dict[str, Any]:
    """Check a sensor's threshold overrides; returns them normalised (raises ``ValueError``)."""
    if not data:
        return {}
    fields = RuleFields.model_validate(data)
    return fields.model_dump(exclude_unset=True)


def _merged(layers: list[RuleFields]) -> dict[str, Any]:
    """Later layers win field by field; a field set to null removes it (``rate: null`` turns a
    profile's rate rule off for one sensor)."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.model_dump(exclude_unset=True).items():
            if key in RuleFields.model_fields:
                out[key] = value
    return {k: v for k, v in out.items() if v is not None}


def _compile(fields: dict[str, Any], profile: str) -> SensorRule:
    levels = fields.get("levels") or {}
    bands = tuple(
        Band(level=lv, above=b.get("above"), below=b.get("below")) for lv, b in levels.items()
    )
    phys = fields.get("physical") or {}
    rate = fields.get("rate")
    stuck = fields.get("stuck")
    anomaly = fields.get("anomaly")
    return SensorRule(
        profile=profile,
        bands=bands,
        hysteresis=float(fields.get("hysteresis", 0.0)),
        min_duration_s=float(fields.get("min_duration_s", 0.0)),
        clear_duration_s=float(fields.get("clear_duration_s", 0.0)),
        physical_min=phys.get("min"),
        physical_max=phys.get("max"),
        rate=RateRule(**rate) if rate else None,
        stuck=StuckRule(
            samples=stuck["samples"],
            ignore=frozenset(stuck.get("ignore", [])),
            tolerance=float(stuck.get("tolerance", 0.0)),
        )
        if stuck
        else None,
        anomaly=AnomalyRule(**anomaly) if anomaly else None,
        offline_intervals=int(fields.get("offline_intervals", 3)),
        health_level=str(fields.get("health_level", "blue")),
    )


@lru_cache(maxsize=4096)
def _compiled(profile_name: str, overrides_key: str) -> SensorRule:
    import json

    rules = threshold_rules()
    profile = rules.profile(profile_name)
    if profile is None:
        raise ValueError(f"unknown threshold profile {profile_name!r}")
    layers: list[RuleFields] = [rules.defaults, profile]
    if overrides_key:
        layers.append(RuleFields.model_validate(json.loads(overrides_key)))
    return _compile(_merged(layers), profile_name)


def sensor_rule(
    domain: str,
    kind: str,
    object_kind: str,
    overrides: dict[str, Any] | None = None,
    profile: str | None = None,
) -> SensorRule:
    """The effective rule of a sensor: defaults, then its profile (named, or the best match),
    then its own overrides (a sensor's ``levels`` replace the profile's bands as a whole)."""
    import json

    name = profile or threshold_rules().profile_for(domain, kind, object_kind).name
    key = json.dumps(overrides, sort_keys=True) if overrides else ""
    return _compiled(name, key)


def level_rank(level: str) -> int:
    return RANK[level]
