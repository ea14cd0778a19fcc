"""lifeline monitoring: devices, sensors, samples (monthly partitions on PostgreSQL), dead
letters, alarms (one open per sensor and kind), incidents

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import cityops.core.db
import cityops.core.geometry

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSONType = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def _ts(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, cityops.core.db.UTCDateTime(timezone=True), nullable=nullable)


# Month partitions of lifeline_samples, created ahead by the ingest worker (DESIGN §3: the one
# run-time DDL allowed). A month whose rows already sit in the DEFAULT partition (stragglers
# that arrived before their month existed) is created detached, filled from the default
# partition, then attached — attaching over rows still in DEFAULT would fail.
PARTITION_FUNCTION = r"""
CREATE OR REPLACE FUNCTION lifeline_ensure_partitions(p_from timestamptz, p_months integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
  first_month timestamp := date_trunc('month', p_from AT TIME ZONE 'UTC');
  lo timestamptz;
  hi timestamptz;
  part text;
  created integer := 0;
BEGIN
  -- One creator at a time: two workers must not both create and attach the same month.
  PERFORM pg_advisory_xact_lock(hashtext('lifeline_samples_partitions'));
  FOR i IN 0..GREATEST(p_months, 0) LOOP
    lo := (first_month + make_interval(months => i)) AT TIME ZONE 'UTC';
    hi := (first_month + make_interval(months => i + 1)) AT TIME ZONE 'UTC';
    part := 'lifeline_samples_' || to_char(first_month + make_interval(months => i), 'YYYYMM');
    IF to_regclass(part) IS NULL THEN
      EXECUTE format(
        'CREATE TABLE %I (LIKE lifeline_samples INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
        part);
      EXECUTE format(
        'WITH moved AS (DELETE FROM lifeline_samples_default WHERE ts >= %L AND ts < %L '
        'RETURNING sensor_id, ts, value, flag) '
        'INSERT INTO %I (sensor_id, ts, value, flag) SELECT sensor_id, ts, value, flag FROM moved',
        lo, hi, part);
      EXECUTE format(
        'ALTER TABLE lifeline_samples ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
        part, lo, hi);
      created := created + 1;
    END IF;
  END LOOP;
  RETURN created;
END
$$;
"""


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.create_table(
        "lifeline_devices",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("vendor", sa.String(length=128), nullable=False),
        sa.Column("owner_unit", sa.String(length=64), nullable=True),
        _ts("installed_at", True),
        sa.Column("props", JSONType, nullable=False),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lifeline_devices")),
    )
    op.create_table(
        "lifeline_sensors",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=True),
        sa.Column("channel", sa.String(length=64), nullable=True),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("domain", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("object_kind", sa.String(length=64), nullable=False),
        sa.Column("object_id", sa.String(length=64), nullable=True),
        sa.Column("network_id", sa.String(length=64), nullable=True),
        sa.Column("feature_id", BigId, nullable=True),
        sa.Column("unit", sa.String(length=32), nullable=False),
        sa.Column("interval_s", sa.Integer(), nullable=False),
        sa.Column("lon", sa.Float(), nullable=False),
        sa.Column("lat", sa.Float(), nullable=False),
        sa.Column("geom", cityops.core.geometry.Geometry(), nullable=False),
        sa.Column("owner_unit", sa.String(length=64), nullable=True),
        sa.Column("profile", sa.String(length=64), nullable=True),
        sa.Column("thresholds", JSONType, nullable=False),
        sa.Column("maintenance", sa.Boolean(), nullable=False),
        _ts("maintenance_until", True),
        sa.Column("maintenance_reason", sa.Text(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        _ts("created_at"),
        _ts("updated_at"),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["lifeline_devices.id"],
            name=op.f("fk_lifeline_sensors_device_id_lifeline_devices"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lifeline_sensors")),
    )
    op.create_index("ix_lifeline_sensors_domain_kind", "lifeline_sensors", ["domain", "kind"])
    op.create_index("ix_lifeline_sensors_network", "lifeline_sensors", ["network_id"])
    op.create_index("ix_lifeline_sensors_device", "lifeline_sensors", ["device_id", "channel"])
    op.create_index("ix_lifeline_sensors_lon_lat", "lifeline_sensors", ["lon", "lat"])
    op.create_index("ix_lifeline_sensors_updated", "lifeline_sensors", ["updated_at"])
    if dialect == "postgresql":
        op.execute("CREATE INDEX ix_lifeline_sensors_geom ON lifeline_sensors USING GIST (geom)")

    op.create_table(
        "lifeline_sensor_state",
        sa.Column("sensor_id", sa.String(length=64), nullable=False),
        _ts("last_ts", True),
        sa.Column("last_value", sa.Float(), nullable=True),
        sa.Column("readings", sa.BigInteger(), nullable=False),
        sa.Column("late", sa.BigInteger(), nullable=False),
        sa.Column("rev", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("state", JSONType, nullable=False),
        _ts("updated_at"),
        sa.ForeignKeyConstraint(
            ["sensor_id"],
            ["lifeline_sensors.id"],
            name=op.f("fk_lifeline_sensor_state_sensor_id_lifeline_sensors"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("sensor_id", name=op.f("pk_lifeline_sensor_state")),
    )

    if dialect == "postgresql":
        op.execute(
            "CREATE TABLE lifeline_samples ("
            " sensor_id varchar(64) NOT NULL,"
            " ts timestamptz NOT NULL,"
            " value double precision NOT NULL,"
            " flag smallint NOT NULL DEFAULT 0,"
            " CONSTRAINT pk_lifeline_samples PRIMARY KEY (sensor_id, ts)"
            ") PARTITION BY RANGE (ts)"
        )
        op.execute("CREATE TABLE lifeline_samples_default PARTITION OF lifeline_samples DEFAULT")
        op.execute(PARTITION_FUNCTION)
        # This month and the next three exist from the start; the worker keeps ahead of time.
        now = dt.datetime.now(dt.UTC)
        op.execute(sa.text("SELECT lifeline_ensure_partitions(:t, 3)").bindparams(t=now))
    else:
        op.create_table(
            "lifeline_samples",
            sa.Column("sensor_id", sa.String(length=64), nullable=False),
            _ts("ts"),
            sa.Column("value", sa.Float(), nullable=False),
            sa.Column("flag", sa.SmallInteger(), nullable=False, server_default="0"),
            sa.PrimaryKeyConstraint("sensor_id", "ts", name="pk_lifeline_samples"),
            sqlite_with_rowid=False,
        )

    op.create_table(
        "lifeline_dead_letters",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        _ts("received_at"),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("topic", sa.String(length=256), nullable=True),
        sa.Column("sensor_id", sa.String(length=64), nullable=True),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lifeline_dead_letters")),
    )
    op.create_index("ix_lifeline_dead_letters_received", "lifeline_dead_letters", ["received_at"])

    op.create_table(
        "lifeline_incidents",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("level", sa.String(length=8), nullable=False),
        sa.Column("domain", sa.String(length=32), nullable=False),
        sa.Column("network_id", sa.String(length=64), nullable=True),
        sa.Column("owner_unit", sa.String(length=64), nullable=True),
        sa.Column("lon", sa.Float(), nullable=False),
        sa.Column("lat", sa.Float(), nullable=False),
        _ts("opened_at"),
        _ts("last_alarm_at"),
        sa.Column("alarm_count", sa.Integer(), nullable=False),
        sa.Column("verdict", sa.String(length=16), nullable=True),
        sa.Column("note", sa.Text(), nullable=False),
        _ts("acknowledged_at", True),
        sa.Column("acknowledged_by", sa.String(length=64), nullable=True),
        _ts("verified_at", True),
        sa.Column("verified_by", sa.String(length=64), nullable=True),
        sa.Column("case_id", sa.String(length=64), nullable=True),
        _ts("closed_at", True),
        sa.Column("version", sa.Integer(), nullable=False),
        _ts("created_at"),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lifeline_incidents")),
    )
    op.create_index("ix_lifeline_incidents_state", "lifeline_incidents", ["state"])
    op.create_index(
        "ix_lifeline_incidents_network_state", "lifeline_incidents", ["network_id", "state"]
    )
    op.create_index("ix_lifeline_incidents_case", "lifeline_incidents", ["case_id"])

    op.create_table(
        "lifeline_alarms",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("sensor_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("level", sa.String(length=8), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=True),
        _ts("raised_at"),
        sa.Column("raised_value", sa.Float(), nullable=True),
        _ts("last_at"),
        sa.Column("last_value", sa.Float(), nullable=True),
        sa.Column("updates", sa.Integer(), nullable=False),
        _ts("acknowledged_at", True),
        sa.Column("acknowledged_by", sa.String(length=64), nullable=True),
        _ts("cleared_at", True),
        sa.Column("cleared_value", sa.Float(), nullable=True),
        sa.Column("incident_id", BigId, nullable=True),
        _ts("created_at"),
        _ts("updated_at"),
        sa.ForeignKeyConstraint(
            ["sensor_id"],
            ["lifeline_sensors.id"],
            name=op.f("fk_lifeline_alarms_sensor_id_lifeline_sensors"),
        ),
        sa.ForeignKeyConstraint(
            ["incident_id"],
            ["lifeline_incidents.id"],
            name=op.f("fk_lifeline_alarms_incident_id_lifeline_incidents"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lifeline_alarms")),
    )
    # One open alarm per (sensor, kind): a unique *partial* index on both backends.
    op.create_index(
        "uq_lifeline_alarms_open",
        "lifeline_alarms",
        ["sensor_id", "kind"],
        unique=True,
        sqlite_where=sa.text("cleared_at IS NULL"),
        postgresql_where=sa.text("cleared_at IS NULL"),
    )
    op.create_index("ix_lifeline_alarms_incident", "lifeline_alarms", ["incident_id"])
    op.create_index("ix_lifeline_alarms_raised", "lifeline_alarms", ["raised_at"])

    op.create_table(
        "lifeline_alarm_events",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("alarm_id", BigId, nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("level", sa.String(length=8), nullable=False),
        _ts("at"),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("actor", sa.String(length=64), nullable=False),
        _ts("recorded_at"),
        sa.ForeignKeyConstraint(
            ["alarm_id"],
            ["lifeline_alarms.id"],
            name=op.f("fk_lifeline_alarm_events_alarm_id_lifeline_alarms"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lifeline_alarm_events")),
    )
    op.create_index("ix_lifeline_alarm_events_alarm", "lifeline_alarm_events", ["alarm_id"])

    op.create_table(
        "lifeline_incident_transitions",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("incident_id", BigId, nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("from_state", sa.String(length=16), nullable=False),
        sa.Column("to_state", sa.String(length=16), nullable=False),
        sa.Column("verdict", sa.String(length=16), nullable=True),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        _ts("at"),
        sa.ForeignKeyConstraint(
            ["incident_id"],
            ["lifeline_incidents.id"],
            name=op.f("fk_lifeline_incident_transitions_incident_id_lifeline_incidents"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lifeline_incident_transitions")),
    )
    op.create_index(
        "ix_lifeline_incident_transitions_incident",
        "lifeline_incident_transitions",
        ["incident_id"],
    )


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.drop_table("lifeline_incident_transitions")
    op.drop_table("lifeline_alarm_events")
    op.drop_table("lifeline_alarms")
    op.drop_table("lifeline_incidents")
    op.drop_table("lifeline_dead_letters")
    if dialect == "postgresql":
        op.execute("DROP TABLE IF EXISTS lifeline_samples CASCADE")
        op.execute("DROP FUNCTION IF EXISTS lifeline_ensure_partitions(timestamptz, integer)")
    else:
        op.drop_table("lifeline_samples")
    op.drop_table("lifeline_sensor_state")
    op.drop_table("lifeline_sensors")
    op.drop_table("lifeline_devices")
