"""``cityops demo``: a generated district in its own SQLite file, one user per role, its lifeline
sensors registered and the simulator running, served.

The demo never writes the production default database: it uses ``./cityops-demo.db`` unless
``--db`` names another, and it refuses to put demo users (whose password is public) into a
database it did not create (DESIGN §8 "Demo"). The database it creates carries a marker in
``app_state``; only such a database ever gets simulated lifeline data (:func:`app_for` starts the
simulator with the server's lifespan when ``CITYOPS_SIMULATE`` is on, its default).
"""

from __future__ import annotations

import logging
import threading
import time
import webbrowser
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from sqlalchemy import func, select

from cityops.core.auth import ROLES
from cityops.core.db import Database
from cityops.core.errors import ValidationFailed
from cityops.core.models import AppState

if TYPE_CHECKING:
    from fastapi import FastAPI

    from cityops.settings import Settings

log = logging.getLogger("cityops.demo")

DEMO_PASSWORD = "cityops-demo"
DEMO_MARKER = "demo_city"
#: generated layers that go into fixed layers of the same name; others become custom layers
DEMO_LAYERS = (
    "areas",
    "roads",
    "buildings",
    "pois",
    "shelters",
    "components",
    "lifeline_networks",
    "sensors",
)


def _sqlite_path(url: str) -> Path | None:
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///"))
    if "://" not in url:
        return Path(url)
    return None


def demo_marker(db: Database) -> str | None:
    """The demo marker of ``db`` (how it was generated), ``None`` for any database that
    ``cityops demo`` did not create."""
    from cityops.core.migrate import is_initialised

    if not is_initialised(db):
        return None
    with db.read() as session:
        row = session.get(AppState, DEMO_MARKER)
        return row.value if row else None


def prepare(
    url: str, *, buildings: int, seed: int, fresh: bool, explicit: bool, console: Console
) -> Database:
    """Create (or reuse) the demo database and return it."""
    from cityops.cli import open_db

    path = _sqlite_path(url)
    if fresh and path is not None and path.exists():
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
    existed = path.exists() if path is not None else True
    db = Database(url)
    marker = demo_marker(db) if existed else None
    if existed and marker is None:
        from cityops.core.migrate import is_initialised

        if is_initialised(db) or (path is not None and path.stat().st_size > 0):
            raise ValidationFailed(
                f"{url} was not created by `cityops demo`; the demo will not put users with a "
                "public password into it. Pass another --db, or no --db for ./cityops-demo.db."
            )
    if marker is not None:
        console.print(
            f"[green]reusing demo city[/green] in {db.url} ({marker}); --fresh rebuilds it"
        )
        db.dispose()
        db = open_db(url)  # a demo made by an older cityops gets the newer schema
        if _sensor_count(db) == 0:  # made before the demo registered its sensors
            register_sensors(db, console=console)
        _print_users(console)
        return db
    db = open_db(url)
    populate(db, buildings=buildings, seed=seed, console=console)
    _print_users(console)
    return db


def populate(db: Database, *, buildings: int, seed: int, console: Console) -> None:
    """Fill a new, empty database with the demo: mark it, generate and load the district, add
    one user per role and register the lifeline sensors of the generated networks."""
    with db.write() as session:
        session.add(AppState(key=DEMO_MARKER, value=f"buildings={buildings} seed={seed}"))
    build_city(db, buildings=buildings, seed=seed, console=console)
    _create_users(db)
    register_sensors(db, console=console)


def _sensor_count(db: Database) -> int:
    from cityops.lifeline.models import Sensor

    with db.read() as session:
        return int(session.scalar(select(func.count()).select_from(Sensor)) or 0)


def register_sensors(db: Database, *, console: Console) -> int:
    """Register the sensors of the ``sensors`` layer (on the ``lifeline_networks`` objects) in
    the lifeline registry, so that they report and alarm. Only those inside the district: an
    incident elsewhere could not become a case (the generator's mains may run past its edge)."""
    from cityops.lifeline import registry

    with console.status("registering lifeline sensors…"):
        n = registry.register_from_layer(db, actor="demo", inside_areas=True)
    console.print(f"[green]{n:,} lifeline sensors registered[/green]")
    return n


def build_city(db: Database, *, buildings: int, seed: int, console: Console) -> None:
    from cityops.base import geo_service, service
    from cityops.synth.generator import generate_city

    with console.status(f"generating a district of {buildings:,} buildings (seed {seed})…"):
        layers = generate_city(buildings, seed)
    for name in DEMO_LAYERS:
        gdf = layers.get(name)
        if gdf is None or len(gdf) == 0:
            continue
        key = "code" if name == "areas" else None
        with console.status(f"loading {name} ({len(gdf):,})…"):
            service.import_frame(
                db,
                gdf,
                layer=name,
                file=f"(generated seed {seed})",
                fmt="generated",
                source_crs="EPSG:4326",
                key=key,
                actor="demo",
                reason="demo city",
            )
    with console.status("building unit grids…"):
        n = geo_service.build_and_store_grids(db, actor="demo", reason="demo city")
    console.print(f"[green]demo city ready[/green]: {buildings:,} buildings, {n:,} grids")


def _create_users(db: Database) -> None:
    from cityops.base.models import Feature
    from cityops.core.auth import create_user
    from cityops.core.models import User

    with db.write() as session:
        for role in ROLES:
            if session.scalar(select(User.id).where(User.username == role)) is None:
                create_user(
                    session,
                    role,
                    DEMO_PASSWORD,
                    [role],
                    display_name=f"demo {role}",
                    department="市政管理部门" if role == "handler" else None,
                )
        grids = list(
            session.scalars(
                select(Feature.code)
                .where(Feature.layer == "grids")
                .order_by(Feature.code)
                .limit(20)
            )
        )
    if grids:
        from cityops.base import grid_workers

        grid_workers.assign(db, "grid_worker", grids, actor="demo")


def _print_users(console: Console) -> None:
    console.print(
        "demo users (demo databases only): "
        + ", ".join(ROLES)
        + f" — password [bold]{DEMO_PASSWORD}[/bold]"
    )


# ------------------------------------------------------------------------------ serving


def _backfill_hours(db: Database) -> float:
    """Hours of normal history to write before the live stream: one hour for a new demo, the
    gap since the last reading (at most an hour) for a reused one."""
    from cityops.lifeline.models import SensorState

    with db.read() as session:
        newest = session.scalar(select(func.max(SensorState.last_ts)))
    if newest is None:
        return 1.0
    return max(0.0, min(1.0, (time.time() - newest.timestamp()) / 3600.0))


def start_simulator(
    db: Database, stop: threading.Event, settings: Settings
) -> threading.Thread | None:
    """Start the lifeline simulator in a thread of this process, or return ``None`` when it is
    switched off (``CITYOPS_SIMULATE=false``) or ``db`` is not a demo database — a database
    that ``cityops demo`` did not create never gets simulated data."""
    from cityops.lifeline import simulate

    if not settings.simulate:
        log.info("lifeline simulator off (CITYOPS_SIMULATE=false)")
        return None
    if demo_marker(db) is None:
        log.warning("lifeline simulator not started: %s is not a demo database", db.url)
        return None
    return simulate.start_in_process(
        db, stop, speed=settings.simulate_speed, backfill_hours=_backfill_hours(db)
    )


def app_for(db: Database, settings: Settings | None = None) -> FastAPI:
    """The server app of the demo: the platform's app, plus the lifeline simulator started and
    stopped with the app's lifespan (after the other start-up work, before the other shut-down
    work), so that the live map has readings, incidents and alarms."""
    import anyio

    from cityops.app import create_app
    from cityops.settings import Settings

    settings = settings or Settings(database_url=db.url)
    app = create_app(settings, db)
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        async with inner(a) as state:
            stop = threading.Event()
            thread = await anyio.to_thread.run_sync(start_simulator, db, stop, settings)
            a.state.simulator = thread
            try:
                yield state
            finally:
                stop.set()
                if thread is not None:
                    await anyio.to_thread.run_sync(thread.join, 30.0)

    app.router.lifespan_context = lifespan
    return app


def serve(
    db: Database, *, port: int, open_browser: bool, console: Console, host: str = "127.0.0.1"
) -> None:
    import uvicorn

    from cityops.settings import Settings

    settings = Settings(database_url=db.url)
    app: Any = app_for(db, settings)
    if settings.simulate and demo_marker(db) is not None:
        console.print(
            f"lifeline simulator on ({settings.simulate_speed:g}× real time): the first "
            "injected incidents raise alarms within minutes; CITYOPS_SIMULATE=false turns it off"
        )
    url = f"http://{host}:{port}/"
    console.print(f"[bold green]cityops demo[/bold green] on {url}  (Ctrl+C to stop)")
    if open_browser:
        threading.Thread(
            target=lambda: (time.sleep(1.5), webbrowser.open(url)), daemon=True
        ).start()
    uvicorn.run(app, host=host, port=port, log_level="warning")
