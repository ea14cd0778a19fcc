"""Alembic environment: the connection is handed in by :func:`cityops.core.migrate.upgrade`."""

from __future__ import annotations

from alembic import context

import cityops.base.models  # registers the tables
import cityops.cases.models
import cityops.core.models
import cityops.lifeline.models  # noqa: F401
from cityops.core.db import Base, make_engine

target_metadata = Base.metadata
config = context.config


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        engine = make_engine(config.get_main_option("sqlalchemy.url") or "")
        with engine.connect() as conn:
            _run(conn)
        engine.dispose()
    else:
        _run(connection)


def _run(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run()
