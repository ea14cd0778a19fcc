"""Tables of the digital base (城市数字底座): layers, features, their history, imports, grid
worker assignments.

Every layer shares one ``features`` table: typed "hot" columns for the fields that are
queried and indexed (codes, names, kinds, building floors/height/year/structure/use …) and a
JSON ``props`` column for everything else, validated by the layer's JSON Schema — so a new
layer needs no DDL (DESIGN §3 "Layers").
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from shapely.geometry.base import BaseGeometry
from sqlalchemy import (
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from cityops.core.db import Base, JSONType, UTCDateTime, utcnow
from cityops.core.geometry import Geometry
from cityops.core.models import BigId

#: the typed columns every layer shares, with their Python type (also the import contract)
HOT_FIELDS: dict[str, type] = {
    "code": str,
    "name": str,
    "kind": str,
    "parent_code": str,
    "floors": int,
    "height": float,
    "year_built": int,
    "structure": str,
    "use": str,
    "address": str,
    "households": int,
}


class Layer(Base):
    """A layer of city features; its name is also its OGC API collection id."""

    __tablename__ = "layers"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    title: Mapped[str] = mapped_column(String(128))
    title_zh: Mapped[str] = mapped_column(String(128), default="")
    description: Mapped[str] = mapped_column(Text, default="")
    fixed: Mapped[bool] = mapped_column(Boolean, default=False)
    geometry_type: Mapped[str] = mapped_column(String(32), default="Geometry")
    json_schema: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    #: None: follow ``CITYOPS_PUBLIC_COLLECTIONS``; True/False: this layer's own setting
    public: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Feature(Base):
    """The current state of one city feature. ``id`` is stable and never reused."""

    __tablename__ = "features"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    layer: Mapped[str] = mapped_column(ForeignKey("layers.name"))
    key: Mapped[str | None] = mapped_column(String(128))
    code: Mapped[str | None] = mapped_column(String(32))
    name: Mapped[str | None] = mapped_column(String(256))
    kind: Mapped[str | None] = mapped_column(String(64))
    parent_code: Mapped[str | None] = mapped_column(String(32))
    floors: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[float | None] = mapped_column(Float)
    year_built: Mapped[int | None] = mapped_column(Integer)
    structure: Mapped[str | None] = mapped_column(String(32))
    use: Mapped[str | None] = mapped_column(String(32))
    address: Mapped[str | None] = mapped_column(String(256))
    households: Mapped[int | None] = mapped_column(Integer)
    props: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    geom: Mapped[BaseGeometry] = mapped_column(Geometry())
    minx: Mapped[float] = mapped_column(Float)
    miny: Mapped[float] = mapped_column(Float)
    maxx: Mapped[float] = mapped_column(Float)
    maxy: Mapped[float] = mapped_column(Float)
    version: Mapped[int] = mapped_column(Integer, default=1)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(64), default="system")

    __table_args__ = (
        Index("ix_features_layer_id", "layer", "id"),
        Index(
            "ix_features_layer_code",
            "layer",
            "code",
            sqlite_where=text("code IS NOT NULL"),
            postgresql_where=text("code IS NOT NULL"),
        ),
        Index(
            "uq_features_layer_key",
            "layer",
            "key",
            unique=True,
            sqlite_where=text("key IS NOT NULL"),
            postgresql_where=text("key IS NOT NULL"),
        ),
        {"sqlite_autoincrement": True},
    )


class FeatureHistory(Base):
    """One state of a feature between ``valid_from`` and ``valid_to`` (open = current).

    Together the rows are the city archive (城建档案): who changed what, when and why, the
    state before (the previous row) and after (this row); ``op`` = insert|update|delete.
    "As of" queries read these rows, never backups.

    The open row (``valid_to`` NULL) of a live feature keeps no copy of the state: that state
    is the ``features`` row itself. The state is copied into the history row in the same
    statement that closes it (before the feature changes), so a million-row import writes
    lean history rows and never the geometry twice.
    """

    __tablename__ = "feature_history"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    feature_id: Mapped[int] = mapped_column(BigId)
    layer: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    op: Mapped[str] = mapped_column(String(8))
    valid_from: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    valid_to: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    actor: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text, default="")
    import_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
    # the state itself: the same columns as ``features`` (so history is written set-based
    # with one INSERT … SELECT on both backends); empty on a delete row
    key: Mapped[str | None] = mapped_column(String(128))
    code: Mapped[str | None] = mapped_column(String(32))
    name: Mapped[str | None] = mapped_column(String(256))
    kind: Mapped[str | None] = mapped_column(String(64))
    parent_code: Mapped[str | None] = mapped_column(String(32))
    floors: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[float | None] = mapped_column(Float)
    year_built: Mapped[int | None] = mapped_column(Integer)
    structure: Mapped[str | None] = mapped_column(String(32))
    use: Mapped[str | None] = mapped_column(String(32))
    address: Mapped[str | None] = mapped_column(String(256))
    households: Mapped[int | None] = mapped_column(Integer)
    props: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    geom: Mapped[BaseGeometry | None] = mapped_column(Geometry(), nullable=True)

    __table_args__ = (Index("ix_feature_history_feature", "feature_id", "version"),)


class ImportRun(Base):
    """One import of one file into one layer (atomic: it is recorded only when it landed)."""

    __tablename__ = "imports"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    layer: Mapped[str] = mapped_column(String(64))
    file: Mapped[str] = mapped_column(Text)
    format: Mapped[str] = mapped_column(String(32))
    source_crs: Mapped[str] = mapped_column(Text)
    key: Mapped[str | None] = mapped_column(String(64))
    inserted: Mapped[int] = mapped_column(Integer, default=0)
    updated: Mapped[int] = mapped_column(Integer, default=0)
    warnings: Mapped[list[str]] = mapped_column(JSONType, default=list)
    actor: Mapped[str] = mapped_column(String(64))
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class GridAssignment(Base):
    """A grid worker (网格员) assigned to a unit grid (单元网格)."""

    __tablename__ = "grid_assignments"
    grid_code: Mapped[str] = mapped_column(String(15), primary_key=True)
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    assigned_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
