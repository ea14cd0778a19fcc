"""Scoring a results folder and running a detector over the NAB corpus.

Thin glue between :mod:`cityops.lifeline.nab.corpus` (files) and
:mod:`cityops.lifeline.nab.scoring` (rules). Scores follow SOURCE.md points 7 and 8: one threshold
per detector and profile (optimised by the sweep, or given), then normalisation between the null
detector — a constant 0.5 detector scored here by the same code, never read from NAB's published
null files — and the perfect detector (tpWeight × number of windows).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from cityops.lifeline.nab.corpus import (
    DetectorResults,
    NabCorpus,
    NabInputError,
    find_results,
    read_data_file,
    read_result_file,
    window_indices,
)
from cityops.lifeline.nab.scoring import (
    FileLayout,
    file_events,
    file_layout,
    normalised_score,
    perfect_raw,
    probationary_length,
    raw_score_at,
    sweep,
)

#: The null detector's constant output (SOURCE.md "Gzipped result CSVs").
NULL_SCORE = 0.5


@dataclass(frozen=True)
class ProfileScore:
    """One detector under one profile: threshold, raw corpus score, the two baselines it was
    normalised between (point 8), the normalised score, and the raw score of each file."""

    profile: str
    threshold: float
    raw: float
    raw_null: float
    raw_perfect: float
    normalised: float
    per_file: Mapping[str, float]


@dataclass(frozen=True)
class DetectorScore:
    """A detector's scores under every profile, and the files that were skipped as not
    being detector results."""

    detector: str
    profiles: Mapping[str, ProfileScore]
    skipped: list[Path] = field(default_factory=list)

    def line(self) -> str:
        """The ``nab-score`` output line: ``<detector> standard=<x> ...``."""
        parts = [f"{p}={s.normalised:.6f}" for p, s in self.profiles.items()]
        return " ".join([self.detector, *parts])


def layouts_for(
    corpus: NabCorpus, timestamps: Mapping[str, npt.NDArray[np.datetime64]]
) -> dict[str, FileLayout]:
    """Per-file scoring layouts from each file's timestamps and the corpus windows."""
    out = {}
    for key, ts in timestamps.items():
        wins = window_indices(ts, corpus.windows[key], key)
        out[key] = file_layout(len(ts), wins, probationary_length(len(ts)))
    return out


@lru_cache(maxsize=4)
def _corpus_timestamps(root: Path, keys: tuple[str, ...]) -> dict[str, npt.NDArray[np.datetime64]]:
    out = {}
    for key in keys:
        path = root / "data" / key
        if not path.is_file():
            raise NabInputError(
                f"data file {path} is missing; --data must be a complete NAB root "
                "(data/<category>/<file>.csv)"
            )
        out[key] = read_data_file(path).timestamps
    return out


def corpus_timestamps(corpus: NabCorpus) -> dict[str, npt.NDArray[np.datetime64]]:
    """Timestamps of every corpus data file (read once per process)."""
    return _corpus_timestamps(corpus.root.resolve(), tuple(corpus.files))


def null_raw_scores(corpus: NabCorpus) -> dict[str, float]:
    """Raw corpus score of the null detector (constant 0.5) per profile, with its threshold
    optimised by the same sweep as any detector (SOURCE.md point 8: raw_null)."""
    layouts = layouts_for(corpus, corpus_timestamps(corpus))
    out = {}
    for name, cost in corpus.profiles.items():
        events = [
            file_events(lay, np.full(lay.n_rows, NULL_SCORE), cost) for lay in layouts.values()
        ]
        sw = sweep(events)
        out[name] = float(sw.raw[sw.best()])
    return out


def score_detector(
    results: DetectorResults,
    corpus: NabCorpus,
    thresholds: Mapping[str, float] | None = None,
    null_raw: Mapping[str, float] | None = None,
) -> DetectorScore:
    """Score one detector's result files under every profile (SOURCE.md points 4–8).

    With ``thresholds`` (profile → threshold, NAB's thresholds.json entry) those are used;
    otherwise each profile's threshold is optimised by the exhaustive sweep.
    """
    missing = sorted(set(corpus.files) - set(results.files))
    if missing:
        raise NabInputError(
            f"detector {results.name!r} has results for {len(results.files)} of "
            f"{len(corpus.files)} corpus files (missing e.g. {missing[0]}); "
            "re-run the detector on the whole corpus"
        )
    scores: dict[str, npt.NDArray[np.float64]] = {}
    stamps: dict[str, npt.NDArray[np.datetime64]] = {}
    for key in corpus.files:
        res = read_result_file(results.files[key])
        assert res.scores is not None  # read_result_file insists on anomaly_score
        stamps[key], scores[key] = res.timestamps, res.scores
    layouts = layouts_for(corpus, stamps)
    null = dict(null_raw) if null_raw is not None else null_raw_scores(corpus)
    profiles: dict[str, ProfileScore] = {}
    for name, cost in corpus.profiles.items():
        events = {k: file_events(layouts[k], scores[k], cost) for k in corpus.files}
        if thresholds is not None:
            if name not in thresholds:
                raise NabInputError(f"no threshold for {results.name!r} profile {name!r}")
            thr = thresholds[name]
        else:
            sw = sweep(list(events.values()))
            thr = float(sw.threshold[sw.best()])
        per_file = {k: raw_score_at(ev, thr) for k, ev in events.items()}
        raw = float(sum(per_file.values()))
        perfect = perfect_raw(corpus.n_windows, cost)
        profiles[name] = ProfileScore(
            profile=name,
            threshold=thr,
            raw=raw,
            raw_null=null[name],
            raw_perfect=perfect,
            normalised=normalised_score(raw, null[name], perfect),
            per_file=per_file,
        )
    return DetectorScore(detector=results.name, profiles=profiles, skipped=results.skipped)


def score_results_dir(
    results_dir: Path,
    corpus: NabCorpus,
    thresholds: Mapping[str, Mapping[str, float]] | None = None,
) -> Iterator[DetectorScore | NabInputError]:
    """Score every detector found under ``results_dir``; a detector that cannot be scored
    (incomplete results, no threshold given for it) yields its error instead of a score."""
    found = find_results(results_dir, corpus)
    if not found:
        raise NabInputError(
            f"no detector results under {results_dir}: expected "
            "<detector>/<category>/<detector>_<file>.csv[.gz] with an anomaly_score column"
        )
    null = null_raw_scores(corpus)
    for det in found:
        try:
            thr = None
            if thresholds is not None:
                if det.name not in thresholds:
                    raise NabInputError(
                        f"detector {det.name!r} has no entry in the thresholds file"
                    )
                thr = thresholds[det.name]
            yield score_detector(det, corpus, thr, null)
        except NabInputError as exc:
            yield exc


#: A batch detector: (values, learning period in rows) → anomaly scores in [0, 1].
BatchDetector = Callable[[npt.NDArray[np.float64], int], npt.NDArray[np.float64]]


def write_result(
    path: Path,
    timestamps: npt.NDArray[np.datetime64],
    values: npt.NDArray[np.float64],
    scores: npt.NDArray[np.float64],
    labels: npt.NDArray[np.int64],
) -> None:
    """One result file in NAB's layout: ``timestamp,value,anomaly_score,label``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Integer series (counts, NYC taxi) keep their integer spelling, as in NAB's own files.
    integral = bool(np.all(values == np.round(values))) and bool(np.all(np.abs(values) < 2**53))
    frame = pd.DataFrame(
        {
            "timestamp": pd.DatetimeIndex(timestamps).strftime("%Y-%m-%d %H:%M:%S"),
            "value": values.astype(np.int64) if integral else values,
            "anomaly_score": scores,
            "label": labels,
        }
    )
    frame.to_csv(path, index=False)  # repr floats: scores round-trip exactly


def window_labels(n_rows: int, windows: list[tuple[int, int]]) -> npt.NDArray[np.int64]:
    """NAB's ``label`` column: 1 inside a window (both ends included), 0 elsewhere."""
    lab = np.zeros(n_rows, dtype=np.int64)
    for left, right in windows:
        lab[left : right + 1] = 1
    return lab


def run_detector(
    corpus: NabCorpus,
    detect: BatchDetector,
    out_dir: Path,
    name: str,
    on_file: Callable[[str, int], None] | None = None,
) -> list[Path]:
    """Run ``detect`` over every corpus file and write ``out_dir/<name>/<category>/<name>_<file>``.

    The detector is told each file's probationary length (SOURCE.md point 2: "Detectors are told
    the same length") as its learning period; it never sees labels.
    """
    written = []
    for key in corpus.files:
        data_path = corpus.data_path(key)
        if not data_path.is_file():
            raise NabInputError(
                f"data file {data_path} is missing; --data must be a complete NAB root"
            )
        data = read_data_file(data_path)
        n = len(data.values)
        scores = np.asarray(detect(data.values, probationary_length(n)), dtype=np.float64)
        wins = window_indices(data.timestamps, corpus.windows[key], key)
        category, fname = key.split("/")
        path = out_dir / name / category / f"{name}_{fname}"
        write_result(path, data.timestamps, data.values, scores, window_labels(n, wins))
        written.append(path)
        if on_file is not None:
            on_file(key, n)
    return written
