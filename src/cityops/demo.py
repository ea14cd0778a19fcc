"""``cityops demo``: a generated district in its own SQLite file, one user per role, served.

The demo never writes the production default database: it uses ``./cityops-demo.db`` unless
``--db`` names another, and it refuses to put demo users (whose password is public) into a
database it did not create (DESIGN §8 "Demo").
"""

from __future__ import annotations

import threading
import time
import webbrowser
from pathlib import Path
from typing import Any

from rich.console import Console
from sqlalchemy import select

from cityops.core.auth import ROLES
from cityops.core.db import Database
from cityops.core.errors import ValidationFailed
from cityops.core.models import AppState

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


def _is_demo(db: Database) -> str | None:
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
    marker = _is_demo(db) if existed else None
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
        _print_users(console)
        return db
    db = open_db(url)
    with db.write() as session:
        session.add(AppState(key=DEMO_MARKER, value=f"buildings={buildings} seed={seed}"))
    build_city(db, buildings=buildings, seed=seed, console=console)
    _create_users(db)
    _print_users(console)
    return db


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


def serve(
    db: Database, *, port: int, open_browser: bool, console: Console, host: str = "127.0.0.1"
) -> None:
    import uvicorn

    from cityops.app import create_app
    from cityops.settings import Settings

    app: Any = create_app(Settings(database_url=db.url), db)
    url = f"http://{host}:{port}/"
    console.print(f"[bold green]cityops demo[/bold green] on {url}  (Ctrl+C to stop)")
    if open_browser:
        threading.Thread(
            target=lambda: (time.sleep(1.5), webbrowser.open(url)), daemon=True
        ).start()
    uvicorn.run(app, host=host, port=port, log_level="warning")
