"""``cityops lifeline`` commands for ingest and simulation (typer); only argument translation.

The lead mounts this into the lifeline sub-app::

    from cityops.lifeline.ingest_cli import register_commands
    register_commands(app)          # app = the `cityops lifeline` typer app

or as its own group: ``app.add_typer(ingest_cli.app, name="stream")``.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(
    help="Lifeline sensors: MQTT ingest, simulation, sensor registry (城市生命线).",
    no_args_is_help=True,
)
console = Console(stderr=True)

DbOpt = Annotated[
    str | None,
    typer.Option("--db", help="Database URL (default: CITYOPS_DATABASE_URL, then ./cityops.db)"),
]
MqttOpt = Annotated[
    str | None,
    typer.Option("--mqtt-url", help="mqtt://host:port (default: CITYOPS_MQTT_URL)"),
]


def _open(db: str | None) -> object:
    from cityops.cli import open_db

    return open_db(db)


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(_sig: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


@app.command("ingest")
def ingest_cmd(
    db: DbOpt = None,
    mqtt_url: MqttOpt = None,
    workers: Annotated[
        int | None,
        typer.Option(help="worker processes (default CITYOPS_LIFELINE_WORKERS; 0: in-thread)"),
    ] = None,
    client_id: Annotated[
        str | None, typer.Option(help="MQTT client id = persistent session name")
    ] = None,
    city: Annotated[str | None, typer.Option(help="city segment of the topic ('+' = all)")] = None,
) -> None:
    """Consume sensor readings from MQTT (QoS 1, persistent session, ack after commit)."""
    from cityops.lifeline.ingest.mqtt import MqttConsumer
    from cityops.settings import get_settings

    settings = get_settings()
    if city:
        settings = settings.model_copy(update={"lifeline_city": city})
    url = mqtt_url or settings.mqtt_url
    if not url:
        console.print("[red]error:[/red] no broker: pass --mqtt-url or set CITYOPS_MQTT_URL")
        raise typer.Exit(2)
    database = _open(db)
    consumer = MqttConsumer(
        database,  # type: ignore[arg-type]
        url,
        settings=settings,
        client_id=client_id,
        workers=workers,
    )
    stop = _stop_on_signals()
    console.print(
        f"ingesting {consumer.topic} from {url} as {consumer.client_id} "
        f"({consumer.workers or 'no'} worker process(es)); Ctrl-C stops"
    )
    consumer.start()
    try:
        while not stop.wait(10):
            s = consumer.stats
            console.print(
                f"[dim]received {s.received:,}  committed {s.committed:,}  batches {s.batches:,}"
                f"  reconnects {max(0, s.connects - 1)}[/dim]"
            )
    finally:
        consumer.stop()
    console.print(f"[green]stopped[/green]: {consumer.stats.committed:,} messages committed")


@app.command("simulate")
def simulate_cmd(
    db: DbOpt = None,
    mqtt_url: MqttOpt = None,
    in_process: Annotated[
        bool, typer.Option("--in-process", help="write straight into the database, no broker")
    ] = False,
    city: Annotated[str, typer.Option(help="city segment of the topics")] = "demo",
    speed: Annotated[float, typer.Option(help="report and unfold incidents this much faster")] = 10,
    seed: Annotated[int, typer.Option(help="random seed (sensors picked for incidents)")] = 1,
    incidents: Annotated[
        str, typer.Option(help="comma-separated: gas_leak,main_burst,waterlogging,bridge_drift")
    ] = "gas_leak,main_burst,waterlogging,bridge_drift",
    duration: Annotated[
        float | None, typer.Option(help="seconds to run (default: until Ctrl-C)")
    ] = None,
    backfill: Annotated[float, typer.Option(help="hours of history to write first")] = 0.0,
) -> None:
    """Stream realistic readings for the registered sensors, with injected incidents."""
    from cityops.lifeline import simulate
    from cityops.settings import get_settings

    kinds = [k.strip() for k in incidents.split(",") if k.strip()]
    database = _open(db)
    stop = _stop_on_signals()
    counter = {"n": 0}

    def count(n: int) -> None:
        counter["n"] += n

    if duration is not None:
        threading.Timer(duration, stop.set).start()
    url = mqtt_url or get_settings().mqtt_url
    started = time.time()
    try:
        if in_process or not url:
            if not in_process:
                console.print("[yellow]no broker configured: simulating in-process[/yellow]")
            thread = threading.Thread(
                target=simulate.run_in_process,
                args=(database, stop),
                kwargs={
                    "speed": speed,
                    "seed": seed,
                    "incidents": kinds,
                    "backfill_hours": backfill,
                    "on_batch": count,
                },
                daemon=True,
            )
            thread.start()
            while thread.is_alive() and not stop.wait(10):
                console.print(f"[dim]{counter['n']:,} readings[/dim]")
            thread.join()
        else:
            console.print(f"publishing to {url} as cityops/{city}/lifeline/<sensor>; Ctrl-C stops")
            simulate.run_mqtt(
                database,  # type: ignore[arg-type]
                url,
                stop,
                city=city,
                speed=speed,
                seed=seed,
                incidents=kinds,
                on_batch=count,
            )
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    console.print(
        f"[green]done[/green]: {counter['n']:,} readings in {time.time() - started:.0f} s"
    )


@app.command("register-sensors")
def register_sensors_cmd(
    db: DbOpt = None,
    layer: Annotated[str, typer.Option(help="digital-base layer holding the sensors")] = "sensors",
    networks_layer: Annotated[
        str, typer.Option(help="layer of the monitored objects (for object kinds)")
    ] = "lifeline_networks",
    file: Annotated[
        Path | None, typer.Option(help="or a JSON/CSV file of sensors (fields of SensorIn)")
    ] = None,
) -> None:
    """Register sensors from a digital-base layer (e.g. the synthetic city's) or a file."""
    from cityops.core.errors import CityopsError
    from cityops.lifeline import registry

    database = _open(db)
    try:
        if file is not None:
            import json

            import pandas as pd

            if file.suffix.lower() == ".json":
                rows = json.loads(file.read_text(encoding="utf-8"))
            else:
                rows = pd.read_csv(file).to_dict("records")
            n = registry.register_rows(database, rows, "cli")  # type: ignore[arg-type]
        else:
            n = registry.register_from_layer(
                database,  # type: ignore[arg-type]
                layer=layer,
                networks_layer=networks_layer,
                actor="cli",
            )
    except CityopsError as exc:
        console.print(f"[red]error:[/red] {exc.detail}")
        raise typer.Exit(2) from exc
    console.print(f"[green]{n:,} sensors registered[/green]")


def register_commands(target: typer.Typer) -> None:
    """Add these commands to another typer app (the lead's ``cityops lifeline``)."""
    for cmd in app.registered_commands:
        target.registered_commands.append(cmd)
