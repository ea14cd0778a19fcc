"""The ``cityops`` command line (typer). Each domain mounts its own sub-app; commands here only
translate arguments and call services.

Every command that touches data takes ``--db URL``, defaulting to ``CITYOPS_DATABASE_URL``,
then to ``./cityops.db``.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from cityops.core.errors import CityopsError

app = typer.Typer(
    name="cityops",
    help="cityops — open platform for city operations (城市运行管理服务平台).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
db_app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)
users_app = typer.Typer(help="Users and roles.", no_args_is_help=True)
grid_app = typer.Typer(help="Unit grids (单元网格) and grid workers.", no_args_is_help=True)
audit_app = typer.Typer(help="The audit log's hash chain.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(users_app, name="users")
app.add_typer(grid_app, name="grid")
app.add_typer(audit_app, name="audit")

console = Console(stderr=True)

DbOpt = Annotated[
    str | None,
    typer.Option("--db", help="Database URL (default: CITYOPS_DATABASE_URL, then ./cityops.db)"),
]


def _db_url(db: str | None) -> str:
    from cityops.settings import get_settings

    return db or get_settings().database_url


def open_db(db: str | None, *, upgrade: bool = True) -> Any:
    """Open the database; bring a new one to the current schema."""
    from cityops.base import service
    from cityops.core.db import Database
    from cityops.core.migrate import is_initialised
    from cityops.core.migrate import upgrade as run_upgrade

    database = Database(_db_url(db))
    if upgrade:
        if not is_initialised(database):
            console.print(f"[dim]new database {database.url}: creating the schema[/dim]")
        run_upgrade(database)
        with database.write() as session:
            service.ensure_layers(session)
    return database


def _fail(exc: CityopsError) -> None:
    console.print(f"[red]error:[/red] {exc.detail}")
    for e in exc.errors[:20]:
        console.print(f"  - {e.field}: {e.message}")
    raise typer.Exit(2)


@db_app.command("upgrade")
def db_upgrade(db: DbOpt = None) -> None:
    """Create or migrate the schema to the newest version."""
    database = open_db(db)
    console.print(f"[green]schema up to date[/green] ({database.url})")


@app.command("serve")
def serve(
    db: DbOpt = None,
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    workers: Annotated[int, typer.Option(help="worker processes (PostgreSQL only)")] = 1,
) -> None:
    """Serve the REST API, OGC API and the web UI."""
    import uvicorn

    from cityops.app import create_app
    from cityops.settings import Settings

    database = open_db(db)
    settings = Settings(database_url=database.url)
    console.print(f"cityops on http://{host}:{port}  (database: {database.url})")
    uvicorn.run(
        create_app(settings, database),
        host=host,
        port=port,
        log_level="warning",
        workers=1 if workers < 2 else workers,
    )


@app.command("import")
def import_cmd(
    path: Annotated[
        Path,
        typer.Argument(
            help="GeoJSON, GeoPackage, Shapefile, CSV/xlsx, OSM PBF, GraphML or CityJSON file"
        ),
    ],
    layer: Annotated[str, typer.Option(help="target layer, e.g. buildings")],
    crs: Annotated[
        str | None,
        typer.Option(help="source CRS: EPSG code, gcj02, bd09 (default: what the file declares)"),
    ] = None,
    key: Annotated[
        str | None, typer.Option(help="key column: re-import updates instead of duplicating")
    ] = None,
    source_layer: Annotated[
        str | None, typer.Option(help="layer inside a multi-layer GeoPackage")
    ] = None,
    reason: Annotated[str, typer.Option(help="why (kept in each feature's history)")] = "",
    db: DbOpt = None,
) -> None:
    """Import a file into a layer, atomically: a bad file or row changes nothing."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from cityops.base import service
    from cityops.base.importers import read_source

    if not path.exists():
        console.print(f"[red]error:[/red] {path}: no such file")
        raise typer.Exit(2)
    database = open_db(db)
    try:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        ) as bar:
            task = bar.add_task(f"read {path.name}", total=None)
            frame = read_source(path, layer=layer, crs=crs, source_layer=source_layer)
            bar.update(task, total=len(frame.gdf), completed=len(frame.gdf))
            for w in frame.warnings:
                console.print(f"[yellow]warning:[/yellow] {w}")
            tasks: dict[str, Any] = {}

            def progress(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(stage, total=total)
                bar.update(tasks[stage], completed=done, total=total)

            run = service.import_frame(
                database,
                frame.gdf,
                layer=layer,
                file=str(path),
                fmt=frame.format,
                source_crs=frame.source_crs,
                key=key,
                actor=os.environ.get("USER", "cli"),
                reason=reason,
                warnings=frame.warnings,
                progress=progress,
            )
    except CityopsError as exc:
        _fail(exc)
    console.print(
        f"[green]imported[/green] {path.name} → {layer}: {run.inserted:,} new, "
        f"{run.updated:,} updated (import #{run.id}, source CRS {run.source_crs})"
    )


@app.command("export")
def export_cmd(
    layer: Annotated[str, typer.Option(help="layer to export")],
    out: Annotated[Path, typer.Option(help="output file: .geojson, .gpkg or .xlsx")],
    format: Annotated[
        str | None, typer.Option(help="geojson, gpkg or xlsx (default: from --out)")
    ] = None,
    db: DbOpt = None,
) -> None:
    """Export a layer to GeoJSON, GeoPackage or xlsx."""
    from cityops.base import service

    database = open_db(db)
    try:
        n = service.export_layer(database, layer, out, format)
    except CityopsError as exc:
        _fail(exc)
    console.print(f"[green]exported[/green] {n:,} features of {layer} → {out}")


@grid_app.command("build")
def grid_build(
    target_area: Annotated[
        float | None, typer.Option(help="target grid area, m² (default: rules, 10,000 万米网格)")
    ] = None,
    db: DbOpt = None,
) -> None:
    """Build unit grids for every community, cut along roads, coded under their community."""
    from cityops.base import geo_service

    database = open_db(db)
    try:
        with console.status("building grids…"):
            n = geo_service.build_and_store_grids(database, target_area_m2=target_area)
    except CityopsError as exc:
        _fail(exc)
    console.print(f"[green]{n:,} unit grids[/green] in layer grids")


@grid_app.command("assign")
def grid_assign(
    username: Annotated[str, typer.Argument(help="a grid_worker")],
    grid_codes: Annotated[list[str], typer.Argument(help="15-digit grid codes")],
    db: DbOpt = None,
) -> None:
    """Assign a grid worker (网格员) to grids."""
    from cityops.base import grid_workers

    database = open_db(db)
    try:
        n = grid_workers.assign(database, username, grid_codes)
    except CityopsError as exc:
        _fail(exc)
    console.print(f"[green]{username}[/green] now covers {n} grid(s)")


@app.command("geocode")
def geocode_cmd(
    in_: Annotated[Path, typer.Option("--in", help="CSV with lon, lat columns")],
    out: Annotated[
        Path, typer.Option(help="output CSV (adds district, street, community, grid_code)")
    ],
    db: DbOpt = None,
) -> None:
    """Geocode points in bulk to (district, street, community, grid)."""
    import numpy as np
    import pandas as pd

    from cityops.base import geo_service

    database = open_db(db)
    try:
        df = pd.read_csv(in_)
    except (OSError, ValueError) as exc:
        console.print(f"[red]error:[/red] {in_}: cannot read as CSV ({exc})")
        raise typer.Exit(2) from exc
    missing = [c for c in ("lon", "lat") if c not in df.columns]
    if missing:
        console.print(
            f"[red]error:[/red] {in_}: missing column(s) {', '.join(missing)}; "
            f"columns are {', '.join(map(str, df.columns))}"
        )
        raise typer.Exit(2)
    lon = pd.to_numeric(df["lon"], errors="coerce").to_numpy(dtype=float)
    lat = pd.to_numeric(df["lat"], errors="coerce").to_numpy(dtype=float)
    bad = ~(np.isfinite(lon) & np.isfinite(lat))
    if bad.any():
        row = int(np.flatnonzero(bad)[0]) + 2
        console.print(f"[red]error:[/red] {in_}, row {row}: lon/lat is not a number")
        raise typer.Exit(2)
    with console.status(f"geocoding {len(df):,} points…"):
        geocoder = geo_service.geocoder_for(database)
        res = geocoder.locate(lon, lat)
    cols = [c for c in ("district", "street", "community", "grid_code") if c in res.columns]
    for c in cols:
        df[c] = res[c].to_numpy()
    df.to_csv(out, index=False)
    found = int((res["grid_code"].fillna("") != "").sum()) if "grid_code" in res else 0
    console.print(f"[green]geocoded[/green] {len(df):,} points → {out} ({found:,} in a grid)")


@users_app.command("create")
def users_create(
    username: Annotated[str, typer.Argument()],
    role: Annotated[list[str], typer.Option("--role", help="role; repeat for several")],
    password: Annotated[str | None, typer.Option(help="password (prompted when omitted)")] = None,
    display_name: Annotated[str, typer.Option()] = "",
    department: Annotated[str | None, typer.Option(help="handling unit (承办部门)")] = None,
    scope: Annotated[
        str, typer.Option(help="division-code prefix of the data this user sees")
    ] = "",
    db: DbOpt = None,
) -> None:
    """Create a user with one or more roles."""
    from cityops.core import audit
    from cityops.core.auth import create_user

    if password is None:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    database = open_db(db)
    try:
        with database.write() as session:
            user = create_user(
                session,
                username,
                password,
                role,
                display_name=display_name,
                department=department,
                scope=scope,
            )
            audit.record(session, "cli", "user.create", "user", user.id, {"roles": role})
    except CityopsError as exc:
        _fail(exc)
    console.print(f"[green]created[/green] {username} ({', '.join(role)})")


@audit_app.command("seal")
def audit_seal(
    day: Annotated[str | None, typer.Option(help="UTC day YYYY-MM-DD (default: yesterday)")] = None,
    db: DbOpt = None,
) -> None:
    """Seal a day's audit entries into one hash chain."""
    from cityops.core import audit

    d = dt.date.fromisoformat(day) if day else dt.datetime.now(dt.UTC).date() - dt.timedelta(1)
    row = audit.seal(open_db(db), d)
    console.print(f"{d}: " + (f"sealed {row.entries} entries" if row else "no entries"))


@audit_app.command("verify")
def audit_verify(
    day: Annotated[str, typer.Option(help="UTC day YYYY-MM-DD")],
    db: DbOpt = None,
) -> None:
    """Check a day's audit entries against their digests and seal."""
    from cityops.core import audit

    problems = audit.verify(open_db(db), dt.date.fromisoformat(day))
    for p in problems:
        console.print(f"[red]{p}[/red]")
    if problems:
        raise typer.Exit(1)
    console.print(f"[green]{day}: intact[/green]")


@app.command("demo")
def demo(
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    db: DbOpt = None,
    buildings: Annotated[int, typer.Option(help="buildings in the generated district")] = 10_000,
    seed: Annotated[int, typer.Option(help="generator seed")] = 1,
    no_browser: Annotated[bool, typer.Option("--no-browser", help="do not open a browser")] = False,
    no_serve: Annotated[bool, typer.Option("--no-serve", help="build the demo and exit")] = False,
    fresh: Annotated[bool, typer.Option("--fresh", help="rebuild the demo database")] = False,
) -> None:
    """Build a demo city in ./cityops-demo.db (or reuse one) and serve it."""
    from cityops import demo as demo_mod
    from cityops.settings import DEMO_DB_URL, get_settings

    url = db or DEMO_DB_URL
    try:
        database = demo_mod.prepare(
            url,
            buildings=buildings,
            seed=seed,
            fresh=fresh,
            explicit=db is not None,
            console=console,
        )
    except CityopsError as exc:
        _fail(exc)
    if no_serve:
        return
    no_browser = (
        no_browser
        or get_settings().no_browser
        or os.environ.get("CITYOPS_NO_BROWSER", "") not in ("", "0", "false")
    )
    demo_mod.serve(database, port=port, open_browser=not no_browser, console=console)


def _mount_domains() -> None:
    from cityops.cases.cli import app as cases_app
    from cityops.cases.cli import worker_cmd
    from cityops.lifeline.cli import app as lifeline_app
    from cityops.synth.cli import generate_city_cmd

    app.command("generate-city")(generate_city_cmd)
    app.add_typer(lifeline_app, name="lifeline", help="Lifeline monitoring (城市生命线).")
    app.add_typer(cases_app, name="cases", help="The case loop (一网统管 / 数字城管).")
    app.command("worker")(worker_cmd)


_mount_domains()


def main() -> None:
    try:
        app()
    except CityopsError as exc:  # a service error that escaped a command
        console.print(f"[red]error:[/red] {exc.detail}")
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
