"""Dispatch rules (派遣规则 / 派单目录): category × area → the responsible department.

Rules are ordered and the first match wins (Signalen's routing rules, EXAMPLES §2). A rule may
name several departments; the first leads (首接负责: 《北京市接诉即办工作条例》, and 国办函〔2025〕
66号's 主办/协办, REFERENCE Part A §6) and the others assist. What matches no rule goes to the
district's own unit (属地兜底, REFERENCE §2 "the local government is the fallback owner"). A
dispatcher may override with a reason; that check lives in the machine (``dispatch``).
Pure: the rule file is parsed once by :mod:`cityops.cases.service`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydantic import BaseModel, Field, field_validator, model_validator

_FALLBACK_CODE = re.compile(r"^district:\d{6}$")


class Department(BaseModel):
    code: str = Field(pattern=r"^[a-z][a-z0-9_]{1,63}$")
    name: str


class DispatchRule(BaseModel):
    categories: list[str] = Field(min_length=1)
    areas: list[str] = []
    departments: list[str] = Field(min_length=1)

    @field_validator("areas")
    @classmethod
    def _prefixes(cls, value: list[str]) -> list[str]:
        for area in value:
            if not (area.isdigit() and len(area) in (2, 4, 6, 9, 12, 15)):
                raise ValueError(
                    f"area {area!r}: give a division-code prefix of 2, 4, 6, 9, 12 or 15 digits"
                )
        return value


class DispatchRules(BaseModel):
    """``cases/dispatch.yaml``."""

    version: int
    source: str
    fallback: str = "district:{district}"
    fallback_name: str = "{district_name}（兜底）"
    departments: list[Department] = Field(min_length=1)
    rules: list[DispatchRule] = []

    @model_validator(mode="after")
    def _known_departments(self) -> DispatchRules:
        known = {d.code for d in self.departments}
        if len(known) != len(self.departments):
            raise ValueError("a department code is listed twice")
        for i, rule in enumerate(self.rules):
            unknown = [d for d in rule.departments if d not in known]
            if unknown:
                raise ValueError(f"rules[{i}]: department(s) {unknown} are not in `departments`")
        if "{district}" not in self.fallback:
            raise ValueError("fallback must contain {district}")
        return self

    def is_known(self, code: str) -> bool:
        """A listed department, or a district fallback unit ``district:<6 digits>``."""
        return code in {d.code for d in self.departments} or bool(_FALLBACK_CODE.match(code))

    def name_of(self, code: str | None, district_name: str | None = None) -> str | None:
        if code is None:
            return None
        for d in self.departments:
            if d.code == code:
                return d.name
        if _FALLBACK_CODE.match(code):
            return self.fallback_name.format(
                district=code.split(":", 1)[1], district_name=district_name or code
            )
        return code


@dataclass(frozen=True)
class Assignment:
    """The rules' answer: a lead department, assisting ones, and why."""

    lead: str
    assisting: tuple[str, ...]
    rule: int | None  # index of the matching rule; None = district fallback (兜底)

    @property
    def reason(self) -> str:
        return "district fallback (属地兜底)" if self.rule is None else f"dispatch rule {self.rule}"


def area_code(district: str, street: str = "", community: str = "", grid: str = "") -> str:
    """The most specific division code of a location (grid ⊃ community ⊃ street ⊃ district
    by prefix, REFERENCE §2, §7)."""
    return grid or community or street or district


def assign(rules: DispatchRules, category: str, district: str, code: str) -> Assignment:
    """Who handles ``category`` at a location whose most specific code is ``code``."""
    for i, rule in enumerate(rules.rules):
        if category not in rule.categories:
            continue
        if rule.areas and not any(code.startswith(a) for a in rule.areas):
            continue
        return Assignment(rule.departments[0], tuple(rule.departments[1:]), i)
    return Assignment(rules.fallback.format(district=district), (), None)
