"""``cityops lifeline nab-run`` / ``nab-score``: NAB's layout, skipped files, clear errors."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from cityops.lifeline.cli import app

FILES = [
    "realKnownCause/rogue_agent_key_hold.csv",
    "realAdExchange/exchange-3_cpc_results.csv",
    "artificialNoAnomaly/art_flatline.csv",
]

runner = CliRunner()


def flat(text: str) -> str:
    """The words of a (rich-boxed, wrapped) message on one line."""
    return " ".join(text.replace("│", " ").split())


@pytest.fixture
def mini_nab(shared_data: Path, tmp_path: Path) -> Path:
    """A NAB root with three of the corpus files (labels and profiles cut down to them)."""
    src = shared_data / "nab"
    if not (src / "labels" / "combined_windows.json").is_file():
        pytest.skip(f"NAB data not found under {src}")
    root = tmp_path / "nab"
    windows = json.loads((src / "labels" / "combined_windows.json").read_text())
    for key in FILES:
        (root / "data" / key).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / "data" / key, root / "data" / key)
    (root / "labels").mkdir()
    (root / "labels" / "combined_windows.json").write_text(
        json.dumps({k: windows[k] for k in FILES})
    )
    (root / "config").mkdir()
    shutil.copy(src / "config" / "profiles.json", root / "config" / "profiles.json")
    return root


@pytest.mark.shared_data
def test_nab_run_writes_nabs_layout_and_nab_score_reads_it(mini_nab: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    result = runner.invoke(app, ["nab-run", "--data", str(mini_nab), "--out", str(out)])
    assert result.exit_code == 0, result.output
    for key in FILES:
        category, name = key.split("/")
        path = out / "cityops" / category / f"cityops_{name}"
        frame = pd.read_csv(path)
        data = pd.read_csv(mini_nab / "data" / key)
        assert list(frame.columns) == ["timestamp", "value", "anomaly_score", "label"]
        assert frame["timestamp"].tolist() == data["timestamp"].tolist()
        assert frame["anomaly_score"].between(0, 1).all()
    # label = 1 inside the window (both ends included), 0 elsewhere.
    hold = pd.read_csv(out / "cityops" / "realKnownCause" / "cityops_rogue_agent_key_hold.csv")
    windows = json.loads((mini_nab / "labels" / "combined_windows.json").read_text())
    ts = pd.to_datetime(hold["timestamp"])
    inside = pd.Series(False, index=hold.index)
    for start, end in windows[FILES[0]]:
        inside |= (ts >= pd.Timestamp(start)) & (ts <= pd.Timestamp(end))
    assert (hold["label"] == inside.astype(int)).all()
    assert hold["label"].sum() > 0

    # Files that are not detector results are skipped: a summary, a gzipped twin, a stray CSV.
    pd.DataFrame({"Detector": ["x"], "Score": [1.0]}).to_csv(
        out / "cityops" / "cityops_standard_scores.csv", index=False
    )
    (out / "cityops" / "notes.csv").write_text("a,b\n1,2\n")
    twin = out / "cityops" / "realKnownCause" / "cityops_rogue_agent_key_hold.csv"
    with gzip.open(str(twin) + ".gz", "wt") as fh:
        fh.write(twin.read_text())
    result = runner.invoke(app, ["nab-score", str(out), "--data", str(mini_nab)])
    assert result.exit_code == 0, result.output
    (line,) = result.stdout.strip().splitlines()
    name, *fields = line.split()
    assert name == "cityops"
    assert [f.split("=")[0] for f in fields] == [
        "standard",
        "reward_low_FP_rate",
        "reward_low_FN_rate",
    ]
    assert all(-100.0 <= float(f.split("=")[1]) <= 100.0 for f in fields)


@pytest.mark.shared_data
def test_nab_score_reads_gzipped_results(mini_nab: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    assert (
        runner.invoke(app, ["nab-run", "--data", str(mini_nab), "--out", str(out)]).exit_code == 0
    )
    plain = runner.invoke(app, ["nab-score", str(out), "--data", str(mini_nab)])
    for path in (out / "cityops").rglob("*.csv"):
        with gzip.open(str(path) + ".gz", "wt") as fh:
            fh.write(path.read_text())
        path.unlink()
    zipped = runner.invoke(app, ["nab-score", str(out), "--data", str(mini_nab)])
    assert zipped.exit_code == 0, zipped.output
    assert zipped.stdout == plain.stdout


def test_missing_nab_folder_is_a_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["nab-run", "--data", str(tmp_path / "nope"), "--out", "x"])
    assert result.exit_code == 2
    assert "--data" in flat(result.output) and "does not exist" in flat(result.output)


def test_missing_labels_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    result = runner.invoke(app, ["nab-score", str(tmp_path), "--data", str(tmp_path)])
    assert result.exit_code == 2
    assert "labels/combined_windows.json" in flat(result.output)


@pytest.mark.shared_data
def test_no_results_is_an_error(mini_nab: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["nab-score", str(tmp_path / "empty"), "--data", str(mini_nab)])
    assert result.exit_code == 1
    assert "no detector results" in flat(result.stderr)


@pytest.mark.shared_data
def test_incomplete_results_are_reported_not_scored(mini_nab: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    assert (
        runner.invoke(app, ["nab-run", "--data", str(mini_nab), "--out", str(out)]).exit_code == 0
    )
    next((out / "cityops").rglob("*.csv")).unlink()
    result = runner.invoke(app, ["nab-score", str(out), "--data", str(mini_nab)])
    assert result.exit_code == 1
    assert "2 of 3 corpus files" in flat(result.stderr)
