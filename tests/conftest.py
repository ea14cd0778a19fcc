"""Shared fixtures.

``shared_data`` points at ``../shared/data`` (relative to the repository root) and skips with
a reason when that folder is absent; a test never passes because it skipped silently.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO_ROOT / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (clone the repo beside shared/)")
    return SHARED_DATA


# ------------------------------------------------------------------------------ databases

PG_URL = os.environ.get("CITYOPS_TEST_DATABASE_URL")


def _backends() -> list[object]:
    params: list[object] = ["sqlite"]
    params.append(
        pytest.param(
            "postgresql",
            marks=[
                pytest.mark.pg,
                pytest.mark.skipif(
                    not PG_URL,
                    reason="PostgreSQL tests are off: set CITYOPS_TEST_DATABASE_URL "
                    "(.ci/run does) to a server where a throw-away PostGIS database may be made",
                ),
            ],
        )
    )
    return params


def _pg_database() -> Iterator[str]:
    """Create a throw-away database with PostGIS, yield its URL, drop it."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from cityops.core.db import normalise_url

    assert PG_URL
    admin_url = make_url(normalise_url(PG_URL))
    name = f"cityops_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin_url.set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :n AND pid <> pg_backend_pid()"
                ),
                {"n": name},
            )
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


def make_test_db(backend: str, tmp_path: Path) -> Iterator[object]:
    from cityops.base import service
    from cityops.core.db import Database
    from cityops.core.migrate import upgrade

    if backend == "sqlite":
        db = Database(f"sqlite:///{tmp_path / 'test.db'}")
        upgrade(db)
        with db.write() as session:
            service.ensure_layers(session)
        yield db
        db.dispose()
        return
    gen = _pg_database()
    url = next(gen)
    db = Database(url)
    try:
        upgrade(db)
        with db.write() as session:
            service.ensure_layers(session)
        yield db
    finally:
        db.dispose()
        for _ in gen:
            pass


@pytest.fixture(params=_backends())
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[object]:
    """A migrated, empty database on each available backend."""
    yield from make_test_db(request.param, tmp_path)


@pytest.fixture
def client(db: object) -> Iterator[object]:
    """An httpx test client of the app over ``db``."""
    from fastapi.testclient import TestClient

    from cityops.app import create_app
    from cityops.settings import Settings

    app = create_app(Settings(database_url=db.url), db)  # type: ignore[attr-defined]
    with TestClient(app) as c:
        yield c


def make_user(db: object, username: str, roles: list[str], **kw: object) -> None:
    from cityops.core.auth import create_user

    with db.write() as session:  # type: ignore[attr-defined]
        create_user(session, username, "password-123", roles, **kw)  # type: ignore[arg-type]


def token_for(client: object, username: str, password: str = "password-123") -> dict[str, str]:
    r = client.post(  # type: ignore[attr-defined]
        "/api/v1/auth/token", data={"username": username, "password": password}
    )
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}
