"""The production detector: streaming = batch bit for bit, learning period, robustness, the one
global configuration, and its NAB score (an in-sample figure; see docs/lifeline-nab.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cityops.lifeline.detect import DEFAULT_CONFIG, NoveltyDetector, detect, load_detector_config
from cityops.lifeline.detect.config import DetectorConfig
from cityops.lifeline.nab.corpus import load_corpus, read_data_file
from cityops.lifeline.nab.runner import corpus_timestamps, layouts_for, null_raw_scores
from cityops.lifeline.nab.scoring import (
    file_events,
    normalised_score,
    perfect_raw,
    probationary_length,
    sweep,
)


def daily_series(n: int = 3000, period: int = 96, seed: int = 3) -> np.ndarray:
    """A sensor with a daily cycle, slow drift and noise (e.g. water-supply pressure)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return 50 + 10 * np.sin(2 * np.pi * t / period) + 0.001 * t + rng.normal(0, 0.5, n)


def test_streaming_equals_batch_bit_for_bit() -> None:
    x = daily_series()
    x[2000:2010] += 40  # a burst
    x[2500:] -= 15  # a level drop
    batch = detect(x, 450)
    det = NoveltyDetector(450)
    one_by_one = np.array([det.update_one(v) for v in x])
    assert np.array_equal(one_by_one, batch)
    det = NoveltyDetector(450)
    chunks = np.concatenate([det.update(c) for c in np.array_split(x, 17)])
    assert np.array_equal(chunks, batch)


def test_scores_lie_in_unit_interval_and_learning_period_scores_zero() -> None:
    x = daily_series()
    x[1800] = 500.0
    s = detect(x, 450)
    assert s.shape == x.shape
    assert np.all((s >= 0) & (s <= 1))
    assert np.all(s[:450] == 0)


def test_spike_and_level_shift_are_the_top_alarms_and_alarm_once() -> None:
    x = daily_series()
    x[2000] += 60.0
    x[2600:] += 25.0
    s = detect(x, 450)
    # The drift makes a few never-seen levels (honestly novel, moderately scored) ...
    drift = s[450:1990].max()
    assert drift < 0.65
    # ... the spike is the strongest alarm and the level shift the next one.
    assert s[2000] == s.max() == 1.0
    assert s[2600:2610].max() > drift
    # Refractory post-processing: nothing more for 0.1 P samples after each event.
    assert s[2001:2045].max() == 0.0
    assert np.sort(s[2600:2645])[-2] < 0.25 * s[2600:2645].max()


def test_missing_readings_get_nan_and_do_not_change_state() -> None:
    x = daily_series(1500)
    with_gaps = x.copy()
    gaps = [600, 601, 900]
    with_gaps[gaps] = np.nan
    s = detect(with_gaps, 450)
    assert np.isnan(s[gaps]).all()
    clean = detect(np.delete(x, gaps), 450)
    assert np.array_equal(np.delete(s, gaps), clean)
    det = NoveltyDetector(450)
    stream = np.array([det.update_one(v) for v in with_gaps])
    assert np.array_equal(stream, s, equal_nan=True)


def test_flat_learning_period_still_yields_finite_scores() -> None:
    x = np.full(600, 45.0)
    x[500] = 46.0
    s = detect(x, 300)
    assert np.isfinite(s).all()
    assert s[500] > 0.5


def test_learning_period_must_be_long_enough() -> None:
    with pytest.raises(ValueError, match="learning_period"):
        NoveltyDetector(3)


def test_rule_file_is_the_default_configuration() -> None:
    assert load_detector_config() == DEFAULT_CONFIG


def test_city_override_of_the_rule_file(tmp_path: Path) -> None:
    (tmp_path / "lifeline").mkdir()
    (tmp_path / "lifeline" / "detector.yaml").write_text(
        "version: 1\nsource: test city\ndetector:\n  bins: 20\n", encoding="utf-8"
    )
    cfg = load_detector_config(tmp_path)
    assert cfg.bins == 20 and cfg.refractory == DEFAULT_CONFIG.refractory
    (tmp_path / "lifeline" / "detector.yaml").write_text(
        "version: 1\nsource: test city\ndetector:\n  binz: 20\n", encoding="utf-8"
    )
    from cityops.core.rules import RuleFileError, _read_yaml

    _read_yaml.cache_clear()
    with pytest.raises(RuleFileError, match="binz"):
        load_detector_config(tmp_path)


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        DetectorConfig(bins=1)
    with pytest.raises(ValueError):
        DetectorConfig(refractory=0.0)


# -- on the NAB corpus ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def nab(shared_data: Path) -> Path:
    root = shared_data / "nab"
    if not (root / "labels" / "combined_windows.json").is_file():
        pytest.skip(f"NAB data not found under {root}")
    return root


@pytest.mark.shared_data
def test_streaming_equals_batch_on_nab_files(nab: Path) -> None:
    for key in ["realKnownCause/nyc_taxi.csv", "realTweets/Twitter_volume_AAPL.csv"]:
        x = read_data_file(nab / "data" / key).values[:6000]
        p = probationary_length(len(read_data_file(nab / "data" / key).values))
        det = NoveltyDetector(p)
        assert np.array_equal(np.array(det.update_many(x)), detect(x, p)), key


@pytest.mark.shared_data
def test_nab_standard_score_beats_numenta_htm(nab: Path) -> None:
    """The figure reported in docs/lifeline-nab.md (in-sample: the configuration was chosen on
    this corpus). Numenta HTM scores 70.1 (final_results.json)."""
    corpus = load_corpus(nab)
    stamps = corpus_timestamps(corpus)
    layouts = layouts_for(corpus, stamps)
    scores = {}
    for key in corpus.files:
        x = read_data_file(nab / "data" / key).values
        scores[key] = detect(x, probationary_length(len(x)))
    null = null_raw_scores(corpus)
    got = {}
    for name, cost in corpus.profiles.items():
        sw = sweep([file_events(layouts[k], scores[k], cost) for k in corpus.files])
        raw = float(sw.raw[sw.best()])
        got[name] = normalised_score(raw, null[name], perfect_raw(corpus.n_windows, cost))
    assert got["standard"] > 70.1
    assert got["standard"] == pytest.approx(71.53, abs=0.01)
    assert got["reward_low_FP_rate"] == pytest.approx(57.46, abs=0.01)
    assert got["reward_low_FN_rate"] == pytest.approx(78.14, abs=0.01)


def test_saved_state_resumes_exactly() -> None:
    import json

    x = daily_series()
    x[2000] += 60.0
    whole = detect(x, 450)
    for cut in (200, 450, 1500):
        det = NoveltyDetector(450)
        first = det.update(x[:cut])
        saved = json.loads(json.dumps(det.to_state()))
        resumed = NoveltyDetector.from_state(saved)
        assert np.array_equal(np.concatenate([first, resumed.update(x[cut:])]), whole), cut
    with pytest.raises(ValueError, match="version"):
        NoveltyDetector.from_state({"version": 0})
