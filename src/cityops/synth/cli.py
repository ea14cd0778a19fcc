"""``cityops generate-city``: write a synthetic district to a GeoPackage.

Only argument translation and progress display live here; the generator is
:func:`cityops.synth.generator.generate_city`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cityops.synth.generator import (
    DEFAULT_DISTRICT_CODE,
    DEFAULT_DISTRICT_NAME,
    STAGES,
    generate_city,
    write_city,
)

__all__ = ["app", "generate_city_cmd"]

app = typer.Typer(help="Synthetic city generator (合成城市).", no_args_is_help=True)
console = Console(stderr=True)


def generate_city_cmd(
    buildings: Annotated[
        int, typer.Option(min=1, help="number of buildings in the district")
    ] = 10_000,
    seed: Annotated[int, typer.Option(help="random seed (same seed → same city)")] = 1,
    out: Annotated[Path, typer.Option(help="output GeoPackage (one layer per table)")] = Path(
        "city.gpkg"
    ),
    district_code: Annotated[
        str, typer.Option(help="GB/T 2260 county-level code of the district")
    ] = DEFAULT_DISTRICT_CODE,
    district_name: Annotated[
        str, typer.Option(help="district name, e.g. 虹溪区")
    ] = DEFAULT_DISTRICT_NAME,
    lon: Annotated[float | None, typer.Option(help="centre longitude (WGS84)")] = None,
    lat: Annotated[float | None, typer.Option(help="centre latitude (WGS84)")] = None,
) -> None:
    """Generate a synthetic district (roads, buildings, facilities, lifelines, sensors …) and
    write it to a GeoPackage."""
    from cityops.synth.generator import DEFAULT_CENTER

    center = (
        lon if lon is not None else DEFAULT_CENTER[0],
        lat if lat is not None else DEFAULT_CENTER[1],
    )
    columns = (
        TextColumn("{task.description:<22}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns, console=console) as bar:
            gen = bar.add_task(f"generate {buildings:,} buildings", total=len(STAGES))

            def on_stage(name: str) -> None:
                bar.update(gen, advance=1, description=f"generate: {name}")

            city = generate_city(
                buildings,
                seed,
                center=center,
                district_code=district_code,
                district_name=district_name,
                progress=on_stage,
            )
            bar.update(gen, completed=len(STAGES), description="generated")
            wr = bar.add_task(f"write {out.name}", total=len(city))

            def on_layer(name: str, rows: int) -> None:
                bar.update(wr, description=f"write: {name} ({rows:,})")
                bar.advance(wr)

            write_city(city, out, progress=on_layer)
            bar.update(wr, completed=len(city), description=f"wrote {out.name}")
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc

    table = Table(title=f"{city.summary['district_name']} ({city.summary['district_code']})")
    table.add_column("layer")
    table.add_column("features", justify="right")
    for name, gdf in city.items():
        table.add_row(name, f"{len(gdf):,}")
    Console().print(table)
    s = city.summary
    console.print(
        f"[green]wrote[/green] {out}: {s['buildings']:,} buildings, population "
        f"{s['population']:,} in {s['households']:,} households, {s['area_km2']:.1f} km², "
        f"{s['streets']} streets, {s['communities']} communities "
        f"(seed {s['seed']}, generated in {s['timings_s']['total']:.1f} s)"
    )


@app.callback()
def _group() -> None:
    """Synthetic city generator (合成城市)."""  # keeps ``generate-city`` a sub-command


app.command("generate-city")(generate_city_cmd)
