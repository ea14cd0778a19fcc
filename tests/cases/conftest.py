"""Fixtures of the case-loop tests: a small coded city, one user per role, a fixed clock.

The city (WGS84 boxes near Beijing's 朝阳区, codes after REFERENCE Part A §2/§7):

    district 110105 ─ street 110105001 ─ community 110105001001 (grids 001–004, 2 × 2)
                    │                  └ community 110105001002 (grid 001)
                    └ street 110105002 ─ community 110105002001 (grid 001)

Lon 116.40–116.50, lat 39.90–39.96. A point at lon 117.5 lies outside every area.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# the in-process worker would race the tests' own explicit worker rounds
os.environ.setdefault("CITYOPS_WORKER_IN_PROCESS", "off")

from tests.conftest import make_user, token_for

SHANGHAI = dt.timezone(dt.timedelta(hours=8))


def cst_dt(y: int, mo: int, d: int, h: int, mi: int = 0) -> dt.datetime:
    """A time in China Standard Time (UTC+8)."""
    return dt.datetime(y, mo, d, h, mi, tzinfo=SHANGHAI)


# a point inside each grid / area
IN_GRID_1 = (116.4050, 39.9050)  # grid 110105001001001
IN_GRID_4 = (116.4200, 39.9500)  # grid 110105001001004
IN_COMMUNITY_2 = (116.4400, 39.9300)  # grid 110105001002001
IN_STREET_2 = (116.4800, 39.9300)  # grid 110105002001001
OUTSIDE = (117.5, 39.93)

USERS: dict[str, dict[str, Any]] = {
    "sup": {"roles": ["supervisor"]},
    "disp": {"roles": ["dispatcher"]},
    "seat": {"roles": ["supervisor", "dispatcher"]},
    "san": {"roles": ["handler"], "department": "sanitation"},
    "san2": {"roles": ["handler"], "department": "sanitation"},
    "law": {"roles": ["handler"], "department": "law_enforcement"},
    "gw": {"roles": ["grid_worker"], "scope": "110105001"},
    "gw2": {"roles": ["grid_worker"], "scope": "110105002"},
    "sup2": {"roles": ["supervisor"], "scope": "110105002"},
    "cit": {"roles": ["citizen"]},
    "cit2": {"roles": ["citizen"]},
    "ana": {"roles": ["analyst"]},
    "root": {"roles": ["admin"]},
}


def seed_city(db: Any) -> None:
    import geopandas as gpd
    from shapely.geometry import box

    from cityops.base import service as base

    areas = gpd.GeoDataFrame(
        {
            "code": [
                "110105",
                "110105001",
                "110105002",
                "110105001001",
                "110105001002",
                "110105002001",
            ],
            "name": ["朝阳区", "甲街道", "乙街道", "一社区", "二社区", "三社区"],
            "kind": ["district", "street", "street", "community", "community", "community"],
        },
        geometry=[
            box(116.40, 39.90, 116.50, 39.96),
            box(116.40, 39.90, 116.45, 39.96),
            box(116.45, 39.90, 116.50, 39.96),
            box(116.40, 39.90, 116.425, 39.96),
            box(116.425, 39.90, 116.45, 39.96),
            box(116.45, 39.90, 116.50, 39.96),
        ],
        crs="EPSG:4326",
    )
    grids = gpd.GeoDataFrame(
        {
            "code": [
                "110105001001001",
                "110105001001002",
                "110105001001003",
                "110105001001004",
                "110105001002001",
                "110105002001001",
            ],
            "kind": ["unit_grid"] * 6,
        },
        geometry=[
            box(116.40, 39.90, 116.4125, 39.93),
            box(116.4125, 39.90, 116.425, 39.93),
            box(116.40, 39.93, 116.4125, 39.96),
            box(116.4125, 39.93, 116.425, 39.96),
            box(116.425, 39.90, 116.45, 39.96),
            box(116.45, 39.90, 116.50, 39.96),
        ],
        crs="EPSG:4326",
    )
    for layer, frame in (("areas", areas), ("grids", grids)):
        base.import_frame(
            db, frame, layer=layer, file="test", fmt="test", source_crs="EPSG:4326", key="code"
        )


@pytest.fixture(autouse=True)
def _case_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from cityops.cases import service
    from cityops.settings import get_settings

    monkeypatch.setenv("CITYOPS_ATTACHMENTS_DIR", str(tmp_path / "files"))
    monkeypatch.setenv("CITYOPS_WORKER_IN_PROCESS", "off")
    get_settings.cache_clear()
    service.clear_caches()
    yield
    service.set_clock(None)
    get_settings.cache_clear()
    service.clear_caches()


@pytest.fixture
def city(db: Any) -> Any:
    seed_city(db)
    return db


def ensure_user(db: Any, name: str) -> None:
    """Create a test user the first time it is needed (argon2 hashing is slow on purpose)."""
    from sqlalchemy import select

    from cityops.core.models import User

    with db.read() as session:
        if session.scalar(select(User.id).where(User.username == name)) is not None:
            return
    spec = USERS[name]
    make_user(
        db, name, spec["roles"], department=spec.get("department"), scope=spec.get("scope", "")
    )


class Clock:
    """A settable clock for the service (the edge tests fake)."""

    def __init__(self, start: dt.datetime) -> None:
        self.t = start

    def __call__(self) -> dt.datetime:
        return self.t

    def set(self, t: dt.datetime) -> None:
        self.t = t

    def advance(self, **kw: float) -> None:
        self.t += dt.timedelta(**kw)


@pytest.fixture
def clock() -> Iterator[Clock]:
    from cityops.cases import service

    c = Clock(dt.datetime(2025, 9, 29, 10, 0, tzinfo=SHANGHAI))  # a Monday, working day
    service.set_clock(c)
    yield c
    service.set_clock(None)


class Api:
    """Signed-in calls as named test users."""

    def __init__(self, client: Any, db: Any) -> None:
        self.client = client
        self.db = db
        self._tokens: dict[str, dict[str, str]] = {}

    def h(self, user: str) -> dict[str, str]:
        if user not in self._tokens:
            ensure_user(self.db, user)
            self._tokens[user] = token_for(self.client, user)
        return self._tokens[user]

    def report(
        self,
        user: str = "gw",
        *,
        expect: int = 201,
        headers: dict[str, str] | None = None,
        **body: Any,
    ) -> dict[str, Any]:
        lon, lat = body.pop("at", IN_GRID_1)
        payload = {
            "source": "grid_patrol",
            "category": "event:0102",
            "title": "暴露垃圾",
            "description": "路边堆放生活垃圾",
            "location": {"lon": lon, "lat": lat},
            **body,
        }
        r = self.client.post(
            "/api/v1/cases", json=payload, headers={**self.h(user), **(headers or {})}
        )
        assert r.status_code == expect, r.text
        return dict(r.json())

    def act(
        self, user: str, case_id: str, action: str, *, expect: int = 200, **body: Any
    ) -> dict[str, Any]:
        r = self.client.post(
            f"/api/v1/cases/{case_id}/transitions",
            json={"action": action, **body},
            headers=self.h(user),
        )
        assert r.status_code == expect, f"{action} by {user}: {r.status_code} {r.text}"
        return dict(r.json())

    def get(self, user: str, case_id: str, expect: int = 200) -> dict[str, Any]:
        r = self.client.get(f"/api/v1/cases/{case_id}", headers=self.h(user))
        assert r.status_code == expect, r.text
        return dict(r.json())


@pytest.fixture
def api(client: Any, city: Any) -> Api:
    return Api(client, city)


# ------------------------------------------------------------------------------ live server
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def live_server(city: Any) -> Iterator[str]:
    """The app served by uvicorn in a thread: real concurrent HTTP requests."""
    import uvicorn

    from cityops.app import create_app
    from cityops.settings import Settings

    app = create_app(Settings(database_url=city.url), city)
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", workers=1)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)
