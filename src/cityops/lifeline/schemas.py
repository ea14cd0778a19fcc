"""Pydantic input and output models of the lifeline API (never the tables themselves)."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Level = Literal["red", "orange", "yellow", "blue"]

_ID = r"^[A-Za-z0-9_.:\-]{1,64}$"


class SensorIn(BaseModel):
    """A sensor to register (监测点). Thresholds come from the profile that matches its domain,
    kind and object kind (``rules/lifeline/thresholds.yaml``); ``thresholds`` overrides fields of
    that profile for this sensor only."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=_ID, description="stable sensor id; also the MQTT topic's last level")
    device_id: str | None = Field(None, pattern=_ID)
    channel: str | None = Field(None, max_length=64, description="channel name on its device")
    name: str = ""
    domain: str = Field(description="one of the 8 lifeline domains (GET /lifeline/domains)")
    kind: str = Field(max_length=64, description="measured quantity: gas_concentration, …")
    object_kind: str | None = Field(
        None, description="monitored object kind (default: from domain and kind)"
    )
    object_id: str | None = Field(None, max_length=64)
    network_id: str | None = Field(None, max_length=64, description="network for incident merge")
    feature_id: int | None = Field(None, description="the digital base feature of this sensor")
    unit: str | None = Field(None, max_length=32, description="default: the profile's unit")
    interval_s: int = Field(300, gt=0, le=7 * 86400, description="sampling interval, seconds")
    lon: float = Field(ge=-180, le=180)
    lat: float = Field(ge=-90, le=90)
    owner_unit: str | None = Field(None, max_length=64, description="权属单位 (default: domain's)")
    profile: str | None = Field(None, description="threshold profile (default: best match)")
    thresholds: dict[str, Any] = Field(default_factory=dict)
    active: bool = True


class SensorPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    object_id: str | None = None
    network_id: str | None = None
    feature_id: int | None = None
    unit: str | None = None
    interval_s: int | None = Field(None, gt=0, le=7 * 86400)
    lon: float | None = Field(None, ge=-180, le=180)
    lat: float | None = Field(None, ge=-90, le=90)
    owner_unit: str | None = None
    profile: str | None = None
    thresholds: dict[str, Any] | None = None
    active: bool | None = None


class MaintenanceIn(BaseModel):
    """Switch maintenance (维护) on or off; alarms are not raised while it is on."""

    model_config = ConfigDict(extra="forbid")

    on: bool
    until: dt.datetime | None = Field(None, description="ends by itself at this time")
    reason: str = ""

    @field_validator("until")
    @classmethod
    def _aware(cls, v: dt.datetime | None) -> dt.datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("give a time with a UTC offset, e.g. 2026-05-01T18:00:00+08:00")
        return v


class RuleOut(BaseModel):
    profile: str
    levels: dict[str, dict[str, float | None]]
    hysteresis: float
    min_duration_s: float
    clear_duration_s: float
    physical: dict[str, float | None]
    rate: dict[str, Any] | None
    stuck: dict[str, Any] | None
    offline_intervals: int


class SensorOut(BaseModel):
    id: str
    device_id: str | None
    channel: str | None
    name: str
    domain: str
    kind: str
    object_kind: str
    object_id: str | None
    network_id: str | None
    feature_id: int | None
    unit: str
    interval_s: int
    lon: float
    lat: float
    owner_unit: str | None
    profile: str | None
    thresholds: dict[str, Any]
    maintenance: bool
    maintenance_until: dt.datetime | None
    maintenance_reason: str
    active: bool
    last_ts: dt.datetime | None = None
    last_value: float | None = None
    open_alarms: dict[str, str] = Field(
        default_factory=dict, description="kind → level of each open alarm"
    )
    rule: RuleOut | None = None


class SampleIn(BaseModel):
    """One reading of the HTTP batch (documentation model; the endpoint judges each item
    itself so that a bad item goes to the dead letters without failing the others)."""

    sensor_id: str | None = Field(None, description="sensor id (or give device_id + values)")
    device_id: str | None = None
    ts: str | int = Field(description="ISO 8601 with offset, or epoch milliseconds")
    value: float | None = None
    values: dict[str, float] | None = Field(
        None, description="several sensors (or device channels) at one time"
    )


class SampleBatchIn(BaseModel):
    samples: list[SampleIn]


class RejectedOut(BaseModel):
    index: int | None = None
    reason: str
    detail: str
    sensor_ref: str | None = None


class IngestOut(BaseModel):
    received: int = Field(description="readings found in the request")
    stored: int = Field(description="readings written (upserted on sensor and time)")
    in_order: int = Field(description="new readings fed to the detectors")
    late_or_duplicate: int = Field(description="stored only: not newer than the last reading")
    dead_letters: int
    rejected: list[RejectedOut] = Field(default_factory=list)
    alarms_raised: int = 0
    alarms_cleared: int = 0


class BucketOut(BaseModel):
    t: dt.datetime
    mean: float
    min: float
    max: float
    count: int


class SeriesOut(BaseModel):
    sensor_id: str
    unit: str
    start: dt.datetime
    end: dt.datetime
    bucket_s: int
    points: list[BucketOut]


class DeadLetterOut(BaseModel):
    id: int
    received_at: dt.datetime
    source: str
    topic: str | None
    sensor_id: str | None
    reason: str
    detail: str
    payload: str


class AlarmOut(BaseModel):
    id: int
    sensor_id: str
    kind: str
    level: Level
    status: str = Field(description="ACTIVE_UNACK, ACTIVE_ACK, CLEARED_UNACK or CLEARED_ACK")
    message: str
    threshold: float | None
    raised_at: dt.datetime
    raised_value: float | None
    last_at: dt.datetime
    last_value: float | None
    updates: int
    acknowledged_at: dt.datetime | None
    acknowledged_by: str | None
    cleared_at: dt.datetime | None
    cleared_value: float | None
    incident_id: int | None


class TransitionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: Literal["acknowledge", "verify", "dismiss"]
    verdict: Literal["real", "false_alarm", "device_fault"] | None = None
    note: str = ""


class IncidentTransitionOut(BaseModel):
    action: str
    from_state: str
    to_state: str
    verdict: str | None
    note: str
    actor: str
    at: dt.datetime


class IncidentOut(BaseModel):
    id: int
    state: str
    level: Level
    domain: str
    network_id: str | None
    owner_unit: str | None
    lon: float
    lat: float
    opened_at: dt.datetime
    last_alarm_at: dt.datetime
    alarm_count: int
    verdict: str | None
    note: str
    acknowledged_at: dt.datetime | None
    acknowledged_by: str | None
    verified_at: dt.datetime | None
    verified_by: str | None
    case_id: str | None
    closed_at: dt.datetime | None
    version: int
    allowed_actions: list[str] = Field(default_factory=list)
    alarms: list[AlarmOut] | None = None
    transitions: list[IncidentTransitionOut] | None = None
