"""Request and response shapes of the case API (pydantic), apart from the tables."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cityops.core.calendar import Unit


class Source(StrEnum):
    """Where a case comes from (issue 3 §1)."""

    GRID_PATROL = "grid_patrol"  # 网格员/监督员巡查上报
    ONLINE = "online"  # 市民网上/小程序
    HOTLINE = "hotline"  # 12345 热线
    SENSOR_ALARM = "sensor_alarm"  # 城市生命线 / 物联感知报警
    HAZARD = "hazard"  # 安全隐患
    INSPECTION = "inspection"  # 执法检查
    VIDEO = "video"  # 视频智能识别
    SUPERIOR = "superior"  # 上级交办


PUBLIC_SOURCES = frozenset({Source.ONLINE, Source.HOTLINE})


class Location(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lon: float = Field(ge=-180, le=180, description="WGS84 longitude (first, as in GeoJSON)")
    lat: float = Field(ge=-90, le=90, description="WGS84 latitude")
    address: str = Field("", max_length=256, description="事发位置 as text")


class Contact(BaseModel):
    """Reporter contact details: stored encrypted, shown masked."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, max_length=64)
    phone: str | None = Field(None, pattern=r"^\+?[0-9][0-9 \-]{4,19}$")
    email: str | None = Field(None, pattern=r"^[^@\s]{1,64}@[^@\s]{1,190}\.[^@\s]{1,63}$")
    notify: bool = Field(True, description="notify this person when the case is closed")


class CaseCreate(BaseModel):
    """A new report (信息收集). ``register`` / ``dispatch`` let a supervisor + dispatcher seat
    register and dispatch it in the same request (each step is still judged by the machine
    and recorded in the history)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    source: Source
    category: str = Field(description="category id from GET /api/v1/categories, e.g. event:0102")
    urgency: str = Field("normal", description="an urgency of the deadline rules: normal, urgent")
    title: str = Field(min_length=1, max_length=200)
    description: str = Field("", max_length=5000)
    location: Location
    component_id: str | None = Field(
        None, pattern=r"^\d{16,17}$", description="管理部件标识码 (16 or 17 digits)"
    )
    reporter: Contact | None = None
    do_register: bool = Field(False, alias="register", description="also register (立案)")
    do_dispatch: bool = Field(
        False, alias="dispatch", description="also register and dispatch (派遣)"
    )
    department: str | None = Field(None, description="dispatch override (needs note)")
    note: str | None = Field(None, max_length=4000)


class Extension(BaseModel):
    model_config = ConfigDict(extra="forbid")
    amount: float = Field(gt=0, le=365)
    unit: Unit


class Feedback(BaseModel):
    """Citizen follow-up (回访), for the 12345 三率 (REFERENCE Part A §6)."""

    model_config = ConfigDict(extra="forbid")
    contacted: bool = Field(description="the unit contacted the caller (响应)")
    solved: bool = Field(description="the caller says it is solved (解决)")
    satisfaction: Literal["satisfied", "basically_satisfied", "dissatisfied"]


class TransitionIn(BaseModel):
    """``{"action": "...", "note": "...", ...}``; which fields an action needs is in
    docs/cases.md (and in the 422 answer when one is missing)."""

    model_config = ConfigDict(extra="forbid")
    action: str
    note: str | None = Field(None, max_length=4000)
    department: str | None = None
    category: str | None = None
    urgency: str | None = None
    extension: Extension | None = None
    into: str | None = Field(None, max_length=16)
    passed: bool | None = None
    found: bool | None = None
    feedback: Feedback | None = None
    version: int | None = Field(
        None, description="the version you read; a different current version answers 409"
    )

    def params(self) -> dict[str, Any]:
        return {
            k: v for k, v in self.model_dump(exclude={"action", "version"}).items() if v is not None
        }


class EventOut(BaseModel):
    seq: int
    action: str
    from_status: str | None
    to_status: str
    actor: str
    role: str
    at: dt.datetime
    note: str
    department: str | None
    data: dict[str, Any]


class CaseOut(BaseModel):
    id: str
    version: int
    status: str
    status_zh: str
    source: str
    category: str
    category_name: str | None
    kind: str | None
    urgency: str
    title: str
    description: str
    location: dict[str, Any]
    district: str
    street: str
    community: str
    grid_code: str
    component_id: str | None
    department: str | None
    department_name: str | None
    assisting: list[str]
    suggested_department: str | None
    dispatch_rule: str
    stage: str | None
    due_at: dt.datetime | None
    due_provisional: bool
    handling_due_at: dt.datetime | None
    overdue: bool
    escalation_level: int
    extension_request: dict[str, Any] | None
    reported_by: str
    reported_at: dt.datetime
    registered_at: dt.datetime | None
    dispatched_at: dt.datetime | None
    resolved_at: dt.datetime | None
    closed_at: dt.datetime | None
    rework_count: int
    merged_into: str | None
    likely_duplicates: list[dict[str, Any]]
    satisfaction: str | None
    actions: list[str] = Field(description="actions the caller may take now")
    reporters: list[dict[str, Any]] | None = None
    attachments: list[dict[str, Any]] | None = None
    merged_cases: list[str] | None = None
    history: list[EventOut] | None = None


class CaseList(BaseModel):
    items: list[CaseOut]
    next_cursor: str | None
    limit: int


class CategoryOut(BaseModel):
    id: str
    code: str
    name: str
    kind: str
    kind_zh: str
    major: str
    standard_ref: str
    code_47678: str | None
    default_department: str
    default_department_name: str | None
    deadlines: dict[str, dict[str, str]]


class OverrideIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    working: bool
    note: str = Field(min_length=1, max_length=500, description="why (e.g. the notice)")
