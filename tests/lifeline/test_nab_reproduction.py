"""The scorer reproduces NAB's published results (SOURCE.md "Verification notes").

These read ``../shared/data/nab``; the ``shared_data`` fixture skips them, with the reason, when
that folder is absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from cityops.lifeline.cli import app
from cityops.lifeline.nab.corpus import find_results, load_corpus, load_thresholds
from cityops.lifeline.nab.runner import DetectorScore, null_raw_scores, score_results_dir

pytestmark = pytest.mark.shared_data

PUBLISHED = ("null", "numenta", "windowedGaussian")
PROFILES = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")


@pytest.fixture(scope="module")
def nab(shared_data: Path) -> Path:
    root = shared_data / "nab"
    if not (root / "labels" / "combined_windows.json").is_file():
        pytest.skip(f"NAB data not found under {root}")
    return root


@pytest.fixture(scope="module")
def at_published(nab: Path) -> dict[str, DetectorScore]:
    corpus = load_corpus(nab)
    thresholds = load_thresholds(nab / "config" / "thresholds.json")
    out = {}
    for item in score_results_dir(nab / "results", corpus, thresholds):
        assert isinstance(item, DetectorScore), item
        out[item.detector] = item
    return out


@pytest.fixture(scope="module")
def swept(nab: Path) -> dict[str, DetectorScore]:
    corpus = load_corpus(nab)
    out = {}
    for item in score_results_dir(nab / "results", corpus, None):
        assert isinstance(item, DetectorScore), item
        out[item.detector] = item
    return out


def test_only_detector_results_are_read(nab: Path) -> None:
    found = {d.name: d for d in find_results(nab / "results", load_corpus(nab))}
    assert sorted(found) == list(PUBLISHED)
    for det in found.values():
        assert len(det.files) == 58
        # The per-profile summaries (<det>_<profile>_scores.csv.gz) are not results.
        assert sorted(p.name for p in det.skipped) == sorted(
            f"{det.name}_{p}_scores.csv.gz" for p in PROFILES
        )


def test_null_baseline_is_computed_not_read(nab: Path) -> None:
    # SOURCE.md point 8: −116, −116, −232 for a constant-0.5 detector.
    null = null_raw_scores(load_corpus(nab))
    assert null == {"standard": -116.0, "reward_low_FP_rate": -116.0, "reward_low_FN_rate": -232.0}


@pytest.mark.parametrize("detector", PUBLISHED)
def test_final_results_reproduced_at_published_thresholds(
    nab: Path, at_published: dict[str, DetectorScore], detector: str
) -> None:
    final = json.loads((nab / "results" / "final_results.json").read_text())
    for profile in PROFILES:
        score = at_published[detector].profiles[profile]
        assert score.raw_perfect == 116.0  # tpWeight × 116 windows (point 8)
        assert score.normalised == pytest.approx(final[detector][profile], abs=1e-6), profile


@pytest.mark.parametrize("detector", PUBLISHED)
def test_raw_totals_and_per_file_scores_reproduced(
    nab: Path, at_published: dict[str, DetectorScore], detector: str
) -> None:
    for profile in PROFILES:
        summary = pd.read_csv(nab / "results" / detector / f"{detector}_{profile}_scores.csv.gz")
        rows = summary[summary["Detector"] != "Totals"].set_index("File")["Score"]
        total = float(summary.loc[summary["Detector"] == "Totals", "Score"].iloc[0])
        got = at_published[detector].profiles[profile]
        assert got.raw == pytest.approx(total, abs=1e-6), (detector, profile)
        assert len(rows) == 58
        for key, score in rows.items():
            assert got.per_file[str(key)] == pytest.approx(float(score), abs=1e-6), key


def test_sweep_finds_published_optima_and_numentas_better_low_fp_threshold(
    swept: dict[str, DetectorScore], at_published: dict[str, DetectorScore]
) -> None:
    numenta = swept["numenta"].profiles
    # SOURCE.md: the sweep beats the old twiddle optimiser for numenta reward_low_FP_rate.
    assert numenta["reward_low_FP_rate"].threshold == pytest.approx(0.543099, abs=1e-6)
    assert numenta["reward_low_FP_rate"].raw == pytest.approx(30.645309, abs=1e-6)
    assert numenta["reward_low_FP_rate"].normalised == pytest.approx(63.21, abs=0.005)
    # ... and finds the published raw scores everywhere else.
    for det, profile in [
        ("numenta", "standard"),
        ("numenta", "reward_low_FN_rate"),
        ("windowedGaussian", "standard"),
        ("windowedGaussian", "reward_low_FP_rate"),
        ("windowedGaussian", "reward_low_FN_rate"),
        ("null", "standard"),
    ]:
        assert swept[det].profiles[profile].raw == pytest.approx(
            at_published[det].profiles[profile].raw, abs=1e-9
        ), (det, profile)


def test_cli_nab_score_prints_one_line_per_detector(nab: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "nab-score",
            str(nab / "results"),
            "--data",
            str(nab),
            "--thresholds",
            str(nab / "config" / "thresholds.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    final = json.loads((nab / "results" / "final_results.json").read_text())
    lines = result.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(PUBLISHED)
    for line in lines:
        name, *fields = line.split()
        values = dict(f.split("=") for f in fields)
        assert list(values) == list(PROFILES)
        for profile, text in values.items():
            assert float(text) == pytest.approx(final[name][profile], abs=1e-6)
