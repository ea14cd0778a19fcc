"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import cityops.core.db
import cityops.core.geometry

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _state_columns() -> list[sa.Column[object]]:
    """The typed state columns shared by ``features`` and ``feature_history``."""
    return [
        sa.Column("key", sa.String(length=128), nullable=True),
        sa.Column("code", sa.String(length=32), nullable=True),
        sa.Column("name", sa.String(length=256), nullable=True),
        sa.Column("kind", sa.String(length=64), nullable=True),
        sa.Column("parent_code", sa.String(length=32), nullable=True),
        sa.Column("floors", sa.Integer(), nullable=True),
        sa.Column("height", sa.Float(), nullable=True),
        sa.Column("year_built", sa.Integer(), nullable=True),
        sa.Column("structure", sa.String(length=32), nullable=True),
        sa.Column("use", sa.String(length=32), nullable=True),
        sa.Column("address", sa.String(length=256), nullable=True),
        sa.Column("households", sa.Integer(), nullable=True),
    ]


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute("CREATE EXTENSION IF NOT EXISTS postgis")
    op.create_table(
        "app_state",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_app_state")),
    )
    op.create_table(
        "audit_log",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("at", cityops.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("entity", sa.String(length=64), nullable=False),
        sa.Column("entity_id", sa.String(length=128), nullable=False),
        sa.Column(
            "detail",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.create_index("ix_audit_log_at", ["at"], unique=False)

    op.create_table(
        "audit_seals",
        sa.Column("day", sa.String(length=10), nullable=False),
        sa.Column("first_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("last_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("entries", sa.Integer(), nullable=False),
        sa.Column("chain", sa.String(length=64), nullable=False),
        sa.Column("sealed_at", cityops.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("day", name=op.f("pk_audit_seals")),
    )
    op.create_table(
        "feature_history",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column(
            "feature_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("layer", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("op", sa.String(length=8), nullable=False),
        sa.Column("valid_from", cityops.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("valid_to", cityops.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("import_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        *_state_columns(),
        sa.Column(
            "props",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("geom", cityops.core.geometry.Geometry(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feature_history")),
    )
    with op.batch_alter_table("feature_history", schema=None) as batch_op:
        batch_op.create_index("ix_feature_history_feature", ["feature_id", "version"], unique=False)

    op.create_table(
        "imports",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("layer", sa.String(length=64), nullable=False),
        sa.Column("file", sa.Text(), nullable=False),
        sa.Column("format", sa.String(length=32), nullable=False),
        sa.Column("source_crs", sa.Text(), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=True),
        sa.Column("inserted", sa.Integer(), nullable=False),
        sa.Column("updated", sa.Integer(), nullable=False),
        sa.Column(
            "warnings",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("at", cityops.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_imports")),
    )
    op.create_table(
        "layers",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("title", sa.String(length=128), nullable=False),
        sa.Column("title_zh", sa.String(length=128), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("fixed", sa.Boolean(), nullable=False),
        sa.Column("geometry_type", sa.String(length=32), nullable=False),
        sa.Column(
            "json_schema",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("public", sa.Boolean(), nullable=True),
        sa.Column("created_at", cityops.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_layers")),
    )
    op.create_table(
        "users",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("display_name", sa.String(length=128), nullable=False),
        sa.Column("password_hash", sa.String(length=256), nullable=False),
        sa.Column("department", sa.String(length=64), nullable=True),
        sa.Column("scope", sa.String(length=15), nullable=False),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.Column("created_at", cityops.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("username", name=op.f("uq_users_username")),
    )
    op.create_table(
        "features",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("layer", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=True),
        sa.Column("code", sa.String(length=32), nullable=True),
        sa.Column("name", sa.String(length=256), nullable=True),
        sa.Column("kind", sa.String(length=64), nullable=True),
        sa.Column("parent_code", sa.String(length=32), nullable=True),
        sa.Column("floors", sa.Integer(), nullable=True),
        sa.Column("height", sa.Float(), nullable=True),
        sa.Column("year_built", sa.Integer(), nullable=True),
        sa.Column("structure", sa.String(length=32), nullable=True),
        sa.Column("use", sa.String(length=32), nullable=True),
        sa.Column("address", sa.String(length=256), nullable=True),
        sa.Column("households", sa.Integer(), nullable=True),
        sa.Column(
            "props",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("geom", cityops.core.geometry.Geometry(), nullable=False),
        sa.Column("minx", sa.Float(), nullable=False),
        sa.Column("miny", sa.Float(), nullable=False),
        sa.Column("maxx", sa.Float(), nullable=False),
        sa.Column("maxy", sa.Float(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_at", cityops.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["layer"], ["layers.name"], name=op.f("fk_features_layer_layers")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_features")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("features", schema=None) as batch_op:
        # partial: layers without codes or keys (most buildings) cost these indexes nothing
        batch_op.create_index(
            "ix_features_layer_code",
            ["layer", "code"],
            unique=False,
            sqlite_where=sa.text("code IS NOT NULL"),
            postgresql_where=sa.text("code IS NOT NULL"),
        )
        batch_op.create_index("ix_features_layer_id", ["layer", "id"], unique=False)
        batch_op.create_index(
            "uq_features_layer_key",
            ["layer", "key"],
            unique=True,
            sqlite_where=sa.text("key IS NOT NULL"),
            postgresql_where=sa.text("key IS NOT NULL"),
        )

    if dialect == "postgresql":
        op.execute("CREATE INDEX ix_features_geom ON features USING GIST (geom)")
    else:
        # R*Tree over the stored bounding boxes, kept in step by triggers (DESIGN §3).
        op.execute("CREATE VIRTUAL TABLE features_rtree USING rtree(id, minx, maxx, miny, maxy)")
        op.execute(
            "CREATE TRIGGER features_rtree_ins AFTER INSERT ON features BEGIN "
            "INSERT INTO features_rtree VALUES (new.id, new.minx, new.maxx, new.miny, new.maxy);"
            " END"
        )
        op.execute(
            "CREATE TRIGGER features_rtree_upd AFTER UPDATE OF minx, miny, maxx, maxy "
            "ON features BEGIN "
            "UPDATE features_rtree SET minx = new.minx, maxx = new.maxx, miny = new.miny, "
            "maxy = new.maxy WHERE id = new.id; END"
        )
        op.execute(
            "CREATE TRIGGER features_rtree_del AFTER DELETE ON features BEGIN "
            "DELETE FROM features_rtree WHERE id = old.id; END"
        )

    op.create_table(
        "grid_assignments",
        sa.Column("grid_code", sa.String(length=15), nullable=False),
        sa.Column("user_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("assigned_at", cityops.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_grid_assignments_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("grid_code", "user_id", name=op.f("pk_grid_assignments")),
    )
    op.create_table(
        "user_roles",
        sa.Column("user_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_user_roles_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("user_id", "role", name=op.f("pk_user_roles")),
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for trigger in ("features_rtree_ins", "features_rtree_upd", "features_rtree_del"):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        op.execute("DROP TABLE IF EXISTS features_rtree")
        op.drop_table("user_roles")
    op.drop_table("grid_assignments")
    with op.batch_alter_table("features", schema=None) as batch_op:
        batch_op.drop_index("uq_features_layer_key")
        batch_op.drop_index("ix_features_layer_id")
        batch_op.drop_index("ix_features_layer_code")

    op.drop_table("features")
    op.drop_table("users")
    op.drop_table("layers")
    op.drop_table("imports")
    with op.batch_alter_table("feature_history", schema=None) as batch_op:
        batch_op.drop_index("ix_feature_history_feature")

    op.drop_table("feature_history")
    op.drop_table("audit_seals")
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_log_at")

    op.drop_table("audit_log")
    op.drop_table("app_state")
