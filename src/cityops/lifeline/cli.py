"""``cityops lifeline`` commands (城市生命线): NAB scoring and the NAB run of our detector.

Nothing but argument translation: the rules live in :mod:`cityops.lifeline.nab` and
:mod:`cityops.lifeline.detect`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cityops.lifeline.detect.config import load_detector_config
from cityops.lifeline.detect.novelty import detect
from cityops.lifeline.nab.corpus import NabCorpus, NabInputError, load_corpus, load_thresholds
from cityops.lifeline.nab.runner import run_detector, score_results_dir

app = typer.Typer(
    help="Lifeline monitoring (城市生命线): NAB benchmark scoring and detector runs.",
    no_args_is_help=True,
)
_err = Console(stderr=True)


def _corpus(data: Path) -> NabCorpus:
    try:
        return load_corpus(data)
    except NabInputError as exc:
        raise typer.BadParameter(str(exc), param_hint="--data") from exc


@app.command("nab-score")
def nab_score(
    results_dir: Path = typer.Argument(
        ..., help="Folder of NAB results: <detector>/<category>/<detector>_<file>.csv[.gz]"
    ),
    data: Path = typer.Option(..., "--data", help="NAB root holding data/, labels/ and config/"),
    thresholds: Path | None = typer.Option(
        None,
        "--thresholds",
        help="NAB thresholds.json: score at these thresholds instead of optimising them",
    ),
) -> None:
    """Score every detector under RESULTS_DIR with NAB's rules; prints one line per detector:
    <detector> standard=<x> reward_low_FP_rate=<y> reward_low_FN_rate=<z>."""
    corpus = _corpus(data)
    if not results_dir.is_dir():
        raise typer.BadParameter(
            f"{results_dir} is not a folder; pass the folder nab-run --out wrote",
            param_hint="RESULTS_DIR",
        )
    thr = None
    if thresholds is not None:
        try:
            thr = load_thresholds(thresholds)
        except NabInputError as exc:
            raise typer.BadParameter(str(exc), param_hint="--thresholds") from exc
    failed = 0
    try:
        for item in score_results_dir(results_dir, corpus, thr):
            if isinstance(item, NabInputError):
                failed += 1
                _err.print(f"[red]error:[/red] {item}", highlight=False)
                continue
            typer.echo(item.line())
    except NabInputError as exc:
        _err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(code=1) from exc
    if failed:
        raise typer.Exit(code=1)


@app.command("nab-run")
def nab_run(
    data: Path = typer.Option(..., "--data", help="NAB root holding data/, labels/ and config/"),
    out: Path = typer.Option(..., "--out", help="Results folder to write (NAB's layout)"),
    detector_name: str = typer.Option(
        "cityops", "--detector-name", help="Detector folder and file-name prefix"
    ),
) -> None:
    """Run the production detector (its one global configuration) over the NAB corpus; writes
    OUT/<detector>/<category>/<detector>_<file>.csv (timestamp,value,anomaly_score,label)."""
    corpus = _corpus(data)
    if not detector_name or "/" in detector_name or "_" in detector_name:
        # NAB derives the corpus file from "<detector>_<file>"; an underscore would be ambiguous.
        raise typer.BadParameter(
            "use a plain name without '/' or '_' (e.g. cityops)", param_hint="--detector-name"
        )
    config = load_detector_config()

    def batch(values: npt.NDArray[np.float64], learning_period: int) -> npt.NDArray[np.float64]:
        return detect(values, learning_period, config)

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[file]}"),
        TimeElapsedColumn(),
        console=_err,
        transient=False,
    ) as progress:
        task = progress.add_task(f"nab-run {detector_name}", total=len(corpus.files), file="")

        def advance(key: str, _rows: int) -> None:
            progress.update(task, advance=1, file=key)

        try:
            written = run_detector(corpus, batch, out, detector_name, on_file=advance)
        except NabInputError as exc:
            _err.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(code=1) from exc
    typer.echo(f"wrote {len(written)} result files under {out / detector_name}")
    typer.echo(f"score them with: cityops lifeline nab-score {out} --data {data}")


def _register_ingest_commands() -> None:
    # ingest, simulate and register-sensors live beside the lifeline services
    from cityops.lifeline.ingest_cli import register_commands

    register_commands(app)


_register_ingest_commands()
