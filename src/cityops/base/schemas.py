"""Pydantic I/O models of the digital base."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, Field


class LayerOut(BaseModel):
    name: str
    title: str
    title_zh: str = ""
    description: str = ""
    fixed: bool
    geometry_type: str
    public: bool
    properties_schema: dict[str, Any] = Field(default_factory=dict)
    count: int | None = None


class LayerIn(BaseModel):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{1,62}$", description="lower-case id")
    title: str = Field(min_length=1, max_length=128)
    title_zh: str = ""
    description: str = ""
    geometry_type: str = "Geometry"
    properties_schema: dict[str, Any] = Field(
        default_factory=dict, description="JSON Schema (2020-12) of the extra attributes"
    )
    public: bool | None = None


class ImportSummary(BaseModel):
    import_id: int
    layer: str
    file: str
    format: str
    source_crs: str
    inserted: int
    updated: int
    warnings: list[str] = Field(default_factory=list)


class FeatureChange(BaseModel):
    """A change to one feature: new attribute values and/or geometry, and why."""

    properties: dict[str, Any] = Field(default_factory=dict)
    geometry: dict[str, Any] | None = None
    reason: str = Field(min_length=1, description="why the feature changes (kept in history)")


class HistoryEntry(BaseModel):
    version: int
    op: str
    valid_from: dt.datetime
    valid_to: dt.datetime | None
    actor: str
    reason: str
    properties: dict[str, Any] | None
    geometry: dict[str, Any] | None


class GeocodeIn(BaseModel):
    lon: float = Field(ge=-180, le=180)
    lat: float = Field(ge=-90, le=90)


class GeocodeOut(BaseModel):
    lon: float
    lat: float
    district: str | None = None
    street: str | None = None
    community: str | None = None
    grid_code: str | None = None
    district_name: str | None = None
    street_name: str | None = None
    community_name: str | None = None
