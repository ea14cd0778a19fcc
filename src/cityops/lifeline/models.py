"""Tables of lifeline monitoring (城市生命线安全工程): devices and sensors, their streaming state,
samples, dead letters, alarms and incidents.

* ``lifeline_samples`` is the time series: on PostgreSQL a table partitioned by month (created in
  migration 0003 with raw SQL; :func:`cityops.lifeline.timeseries.ensure_partitions` creates
  months ahead, a DEFAULT partition catches stragglers); on SQLite a ``WITHOUT ROWID`` table
  clustered on (sensor, time). Either way (sensor_id, ts) is the primary key: ingest is an
  idempotent upsert on it (DESIGN §8 "MQTT").
* ``lifeline_alarms`` holds one open alarm per (sensor, kind) — a unique partial index on both
  backends (EXAMPLES §5: ThingsBoard's index is not unique; ours is). ``acknowledged_at`` and
  ``cleared_at`` are two independent facts; the status is derived from them.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from shapely.geometry.base import BaseGeometry
from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Text,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from cityops.core.db import Base, JSONType, UTCDateTime, utcnow
from cityops.core.geometry import Geometry
from cityops.core.models import BigId


class Device(Base):
    """A field device (前端设备): one box that may carry several sensors (channels)."""

    __tablename__ = "lifeline_devices"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(256), default="")
    model: Mapped[str] = mapped_column(String(128), default="")
    vendor: Mapped[str] = mapped_column(String(128), default="")
    owner_unit: Mapped[str | None] = mapped_column(String(64))
    installed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    props: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Sensor(Base):
    """One measured quantity at one place (监测点). ``feature_id`` may point at the digital
    base's feature of the sensor; ``object_id`` names the monitored object (管段, 窨井, 桥跨 …)."""

    __tablename__ = "lifeline_sensors"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    device_id: Mapped[str | None] = mapped_column(ForeignKey("lifeline_devices.id"))
    channel: Mapped[str | None] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(256), default="")
    domain: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(64))
    object_kind: Mapped[str] = mapped_column(String(64))
    object_id: Mapped[str | None] = mapped_column(String(64))
    network_id: Mapped[str | None] = mapped_column(String(64))
    feature_id: Mapped[int | None] = mapped_column(BigId)
    unit: Mapped[str] = mapped_column(String(32), default="")
    interval_s: Mapped[int] = mapped_column(Integer, default=300)
    lon: Mapped[float] = mapped_column(Float)
    lat: Mapped[float] = mapped_column(Float)
    geom: Mapped[BaseGeometry] = mapped_column(Geometry())
    owner_unit: Mapped[str | None] = mapped_column(String(64))
    profile: Mapped[str | None] = mapped_column(String(64))
    thresholds: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    maintenance: Mapped[bool] = mapped_column(Boolean, default=False)
    maintenance_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    maintenance_reason: Mapped[str] = mapped_column(Text, default="")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (
        Index("ix_lifeline_sensors_domain_kind", "domain", "kind"),
        Index("ix_lifeline_sensors_network", "network_id"),
        Index("ix_lifeline_sensors_device", "device_id", "channel"),
        Index("ix_lifeline_sensors_lon_lat", "lon", "lat"),
        Index("ix_lifeline_sensors_updated", "updated_at"),
    )

    def in_maintenance(self, at: dt.datetime) -> bool:
        """维护状态: switched on, and not past its end time if it has one."""
        if not self.maintenance:
            return False
        return self.maintenance_until is None or at < self.maintenance_until


class SensorState(Base):
    """The streaming state of one sensor (last reading, open alarm levels, runs in progress),
    written in the same transaction as the samples that changed it."""

    __tablename__ = "lifeline_sensor_state"
    sensor_id: Mapped[str] = mapped_column(
        ForeignKey("lifeline_sensors.id", ondelete="CASCADE"), primary_key=True
    )
    last_ts: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    last_value: Mapped[float | None] = mapped_column(Float)
    readings: Mapped[int] = mapped_column(BigInteger, default=0)
    late: Mapped[int] = mapped_column(BigInteger, default=0)
    #: bumped by every write: ingest processes keep states in memory and write them back only
    #: if nobody else wrote meanwhile (optimistic concurrency)
    rev: Mapped[int] = mapped_column(BigInteger, default=0)
    state: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Sample(Base):
    """One reading. ``flag`` 1 marks a physically impossible value (kept, never alarmed on)."""

    __tablename__ = "lifeline_samples"
    sensor_id: Mapped[str] = mapped_column(String(64))
    ts: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    value: Mapped[float] = mapped_column(Float)
    flag: Mapped[int] = mapped_column(SmallInteger, default=0)

    __table_args__ = (
        PrimaryKeyConstraint("sensor_id", "ts", name="pk_lifeline_samples"),
        {"sqlite_with_rowid": False},
    )


class DeadLetter(Base):
    """A payload that could not be ingested, with the reason (死信), kept for the operator."""

    __tablename__ = "lifeline_dead_letters"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    source: Mapped[str] = mapped_column(String(16))
    topic: Mapped[str | None] = mapped_column(String(256))
    sensor_id: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text, default="")
    payload: Mapped[str] = mapped_column(Text, default="")

    __table_args__ = (Index("ix_lifeline_dead_letters_received", "received_at"),)


class Alarm(Base):
    """An alarm (报警) of one kind on one sensor. Status is derived from two facts,
    ``acknowledged_at`` and ``cleared_at`` (EXAMPLES §5): a condition may end before anyone
    looked and still wait for the monitoring centre."""

    __tablename__ = "lifeline_alarms"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    sensor_id: Mapped[str] = mapped_column(ForeignKey("lifeline_sensors.id"))
    kind: Mapped[str] = mapped_column(String(32))
    level: Mapped[str] = mapped_column(String(8))
    message: Mapped[str] = mapped_column(Text, default="")
    threshold: Mapped[float | None] = mapped_column(Float)
    raised_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    raised_value: Mapped[float | None] = mapped_column(Float)
    last_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    last_value: Mapped[float | None] = mapped_column(Float)
    #: repeat triggers folded into this alarm instead of new alarms
    updates: Mapped[int] = mapped_column(Integer, default=0)
    acknowledged_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    acknowledged_by: Mapped[str | None] = mapped_column(String(64))
    cleared_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    cleared_value: Mapped[float | None] = mapped_column(Float)
    incident_id: Mapped[int | None] = mapped_column(ForeignKey("lifeline_incidents.id"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    #: set by the ingest batch so that a new incident and its alarms flush together
    incident: Mapped[Incident | None] = relationship(lazy="select")

    __table_args__ = (
        Index(
            "uq_lifeline_alarms_open",
            "sensor_id",
            "kind",
            unique=True,
            sqlite_where=text("cleared_at IS NULL"),
            postgresql_where=text("cleared_at IS NULL"),
        ),
        Index("ix_lifeline_alarms_incident", "incident_id"),
        Index("ix_lifeline_alarms_raised", "raised_at"),
    )

    @property
    def status(self) -> str:
        """ThingsBoard's derived status: ACTIVE_UNACK, ACTIVE_ACK, CLEARED_UNACK, CLEARED_ACK."""
        cleared = "CLEARED" if self.cleared_at is not None else "ACTIVE"
        ack = "ACK" if self.acknowledged_at is not None else "UNACK"
        return f"{cleared}_{ack}"


class AlarmEvent(Base):
    """The history of an alarm: raised, escalated, cleared, acknowledged (repeat triggers are
    counted on the alarm, not written here)."""

    __tablename__ = "lifeline_alarm_events"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    alarm_id: Mapped[int] = mapped_column(ForeignKey("lifeline_alarms.id", ondelete="CASCADE"))
    action: Mapped[str] = mapped_column(String(16))
    level: Mapped[str] = mapped_column(String(8))
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    value: Mapped[float | None] = mapped_column(Float)
    actor: Mapped[str] = mapped_column(String(64), default="system")
    recorded_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (Index("ix_lifeline_alarm_events_alarm", "alarm_id"),)


class Incident(Base):
    """Alarms on one network, close in space and time, merged into one incident (事件) that the
    monitoring centre verifies (研判) — REFERENCE Part C §1.4."""

    __tablename__ = "lifeline_incidents"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    state: Mapped[str] = mapped_column(String(16), default="raised")
    level: Mapped[str] = mapped_column(String(8))
    domain: Mapped[str] = mapped_column(String(32))
    network_id: Mapped[str | None] = mapped_column(String(64))
    owner_unit: Mapped[str | None] = mapped_column(String(64))
    lon: Mapped[float] = mapped_column(Float)
    lat: Mapped[float] = mapped_column(Float)
    opened_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    last_alarm_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    alarm_count: Mapped[int] = mapped_column(Integer, default=0)
    verdict: Mapped[str | None] = mapped_column(String(16))
    note: Mapped[str] = mapped_column(Text, default="")
    acknowledged_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    acknowledged_by: Mapped[str | None] = mapped_column(String(64))
    verified_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    verified_by: Mapped[str | None] = mapped_column(String(64))
    case_id: Mapped[str | None] = mapped_column(String(64))
    closed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (
        Index("ix_lifeline_incidents_state", "state"),
        Index("ix_lifeline_incidents_network_state", "network_id", "state"),
        Index("ix_lifeline_incidents_case", "case_id"),
    )


class IncidentTransition(Base):
    """One action on an incident: who, when, from which state to which, why."""

    __tablename__ = "lifeline_incident_transitions"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    incident_id: Mapped[int] = mapped_column(
        ForeignKey("lifeline_incidents.id", ondelete="CASCADE")
    )
    action: Mapped[str] = mapped_column(String(16))
    from_state: Mapped[str] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    verdict: Mapped[str | None] = mapped_column(String(16))
    note: Mapped[str] = mapped_column(Text, default="")
    actor: Mapped[str] = mapped_column(String(64))
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (Index("ix_lifeline_incident_transitions_incident", "incident_id"),)
