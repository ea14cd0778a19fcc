"""Reading NAB's layout: corpus data, label windows, profiles, thresholds and result files.

NAB root layout (SOURCE.md "Layout"): ``data/<category>/<file>.csv`` (``timestamp,value``),
``labels/combined_windows.json``, ``config/profiles.json``, ``config/thresholds.json``, and result
folders ``<results>/<detector>/<category>/<detector>_<file>.csv`` with an ``anomaly_score``
column. Result files may be gzipped (``.csv.gz``); files that are not per-row detector results
(e.g. ``<det>_<profile>_scores.csv.gz`` summaries, anything without ``anomaly_score``) are skipped.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from cityops.lifeline.nab.scoring import NAB_PROFILES, CostMatrix

#: Scores must parse exactly as NAB parsed them (a published threshold such as 0.5421876907348634
#: is compared with ``>=``). pandas 3 parses round-trip exactly by default and deprecates the
#: option; pandas 2 needs it.
_CSV_KW: dict[str, Any] = (
    {"float_precision": "round_trip"} if int(pd.__version__.split(".")[0]) < 3 else {}
)

#: Timestamps in NAB data and result files (SOURCE.md "Layout").
NAB_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
RESULT_SUFFIXES = (".csv.gz", ".csv")


class NabInputError(ValueError):
    """Bad NAB input; the message says what is wrong and what to do."""


@dataclass(frozen=True)
class NabCorpus:
    """A NAB root: the label windows per data file and the scoring profiles.

    ``windows`` maps ``"<category>/<file>.csv"`` to ``[(start, end), ...]`` as datetime64[ns]
    (label timestamps carry a ``.000000`` suffix; parsing makes both formats comparable).
    """

    root: Path
    windows: Mapping[str, list[tuple[np.datetime64, np.datetime64]]]
    profiles: Mapping[str, CostMatrix] = field(default_factory=lambda: dict(NAB_PROFILES))

    @property
    def files(self) -> list[str]:
        return sorted(self.windows)

    @property
    def n_windows(self) -> int:
        return sum(len(w) for w in self.windows.values())

    def data_path(self, key: str) -> Path:
        return self.root / "data" / key


def load_corpus(root: Path, labels: Path | None = None) -> NabCorpus:
    """Read a NAB root (``--data``): windows from ``labels/combined_windows.json`` and profiles
    from ``config/profiles.json`` (SOURCE.md points 1 and 6)."""
    root = Path(root)
    if not root.is_dir():
        raise NabInputError(
            f"NAB folder {root} does not exist; pass --data the NAB root that holds data/, "
            "labels/ and config/ (e.g. /work/shared/data/nab)"
        )
    labels = labels or root / "labels" / "combined_windows.json"
    if not labels.is_file():
        raise NabInputError(
            f"label windows file {labels} is missing; a NAB root needs "
            "labels/combined_windows.json (copy it from numenta/NAB)"
        )
    try:
        raw = json.loads(labels.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise NabInputError(f"{labels} is not valid JSON ({exc}); restore NAB's file") from exc
    windows: dict[str, list[tuple[np.datetime64, np.datetime64]]] = {}
    for key, pairs in raw.items():
        parsed = []
        for k, pair in enumerate(pairs):
            try:
                if not isinstance(pair, list) or len(pair) != 2:
                    raise ValueError("not a [start, end] pair")
                start, end = pd.to_datetime(pair).to_numpy(dtype="datetime64[ns]")
            except (ValueError, TypeError) as exc:
                raise NabInputError(
                    f"{labels}: window {k} of {key} is not a [start, end] pair of "
                    f"timestamps ({exc}); restore NAB's labels file"
                ) from exc
            parsed.append((start, end))
        windows[key] = sorted(parsed)
    profiles_path = root / "config" / "profiles.json"
    profiles = dict(NAB_PROFILES)
    if profiles_path.is_file():
        profiles = load_profiles(profiles_path)
    return NabCorpus(root=root, windows=windows, profiles=profiles)


def load_profiles(path: Path) -> dict[str, CostMatrix]:
    """NAB's ``config/profiles.json``: ``{name: {"CostMatrix": {tpWeight, fpWeight, fnWeight}}}``
    (SOURCE.md point 6; tnWeight is ignored, as NAB's scorer ignores it)."""
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    out: dict[str, CostMatrix] = {}
    for name, body in raw.items():
        try:
            cm = body["CostMatrix"]
            out[name] = CostMatrix(
                tp_weight=float(cm["tpWeight"]),
                fp_weight=float(cm["fpWeight"]),
                fn_weight=float(cm["fnWeight"]),
            )
        except (KeyError, TypeError) as exc:
            raise NabInputError(
                f"{path}: profile {name!r} lacks CostMatrix.tpWeight/fpWeight/fnWeight"
            ) from exc
    return out


def load_thresholds(path: Path) -> dict[str, dict[str, float]]:
    """NAB's ``config/thresholds.json``: ``{detector: {profile: {"threshold": t, ...}}}``."""
    p = Path(path)
    if not p.is_file():
        raise NabInputError(f"thresholds file {p} does not exist; pass NAB's thresholds.json")
    raw = json.loads(p.read_text(encoding="utf-8"))
    try:
        return {
            det: {prof: float(v["threshold"]) for prof, v in profs.items()}
            for det, profs in raw.items()
        }
    except (KeyError, TypeError, AttributeError) as exc:
        raise NabInputError(
            f"{p}: expected NAB's format {{detector: {{profile: {{threshold: t}}}}}}"
        ) from exc


def parse_timestamps(values: pd.Series) -> npt.NDArray[np.datetime64]:
    """NAB timestamps (``YYYY-MM-DD HH:MM:SS``) as datetime64[ns]; other ISO forms also pass."""
    try:
        ts = pd.to_datetime(values, format=NAB_TIME_FORMAT)
    except (ValueError, TypeError):
        ts = pd.to_datetime(values, format="ISO8601")
    return np.asarray(ts.to_numpy(dtype="datetime64[ns]"))


@dataclass(frozen=True)
class SeriesFile:
    """One time series: timestamps, values and (for result files) anomaly scores."""

    timestamps: npt.NDArray[np.datetime64]
    values: npt.NDArray[np.float64]
    scores: npt.NDArray[np.float64] | None = None


def read_data_file(path: Path) -> SeriesFile:
    """A NAB data file ``timestamp,value``."""
    frame = pd.read_csv(path, **_CSV_KW)
    missing = {"timestamp", "value"} - set(frame.columns)
    if missing:
        raise NabInputError(
            f"{path} lacks column(s) {sorted(missing)}; NAB data has timestamp,value"
        )
    return SeriesFile(
        timestamps=parse_timestamps(frame["timestamp"]),
        values=frame["value"].to_numpy(dtype=np.float64),
    )


def _header(path: Path) -> list[str]:
    if path.name.endswith(".gz"):
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            line = fh.readline()
    else:
        with path.open(encoding="utf-8") as fh:
            line = fh.readline()
    return [c.strip() for c in line.split(",")]


def is_result_file(path: Path) -> bool:
    """True when ``path`` is a per-row detector result: CSV (or .csv.gz) with anomaly_score."""
    if not path.name.endswith(RESULT_SUFFIXES):
        return False
    try:
        cols = _header(path)
    except (OSError, UnicodeDecodeError, EOFError):
        return False
    return "anomaly_score" in cols and "timestamp" in cols


def read_result_file(path: Path) -> SeriesFile:
    """A detector result file; scores are read exactly (see ``_CSV_KW``)."""
    frame = pd.read_csv(path, **_CSV_KW)
    if "anomaly_score" not in frame.columns or "timestamp" not in frame.columns:
        raise NabInputError(f"{path} is not a detector result (needs timestamp, anomaly_score)")
    values = (
        frame["value"].to_numpy(dtype=np.float64)
        if "value" in frame.columns
        else np.full(len(frame), np.nan)
    )
    scores = frame["anomaly_score"].to_numpy(dtype=np.float64)
    if np.isnan(scores).any():
        raise NabInputError(f"{path}: anomaly_score has empty or non-numeric values")
    return SeriesFile(
        timestamps=parse_timestamps(frame["timestamp"]),
        values=values,
        scores=scores,
    )


def window_indices(
    timestamps: npt.NDArray[np.datetime64],
    windows: list[tuple[np.datetime64, np.datetime64]],
    where: str,
) -> list[tuple[int, int]]:
    """Row indices of each window's ends: the first row holding that timestamp, as NAB's
    ``timestamps.index(...)`` finds it (SOURCE.md point 1: "each label timestamp matches exactly
    one data row")."""
    out = []
    for start, end in windows:
        hits_l = np.flatnonzero(timestamps == start)
        hits_r = np.flatnonzero(timestamps == end)
        if hits_l.size == 0 or hits_r.size == 0:
            raise NabInputError(
                f"{where}: window [{start}, {end}] has an end with no matching row; "
                "the result file must keep the data file's timestamps"
            )
        left, right = int(hits_l[0]), int(hits_r[0])
        if right < left:
            raise NabInputError(f"{where}: window [{start}, {end}] ends before it starts")
        out.append((left, right))
    return out


def result_key(detector: str, rel: Path) -> str | None:
    """Corpus key ``<category>/<file>.csv`` of a result path ``<category>/<det>_<file>.csv[.gz]``
    relative to the detector folder, or None when the name does not follow NAB's layout."""
    if len(rel.parts) != 2:
        return None
    category, name = rel.parts
    prefix = f"{detector}_"
    if not name.startswith(prefix):
        return None
    base = name[len(prefix) :]
    if base.endswith(".gz"):
        base = base[: -len(".gz")]
    return f"{category}/{base}"


@dataclass
class DetectorResults:
    """Result files of one detector, by corpus key, and the files that were skipped."""

    name: str
    folder: Path
    files: dict[str, Path] = field(default_factory=dict)
    skipped: list[Path] = field(default_factory=list)


def find_results(results_dir: Path, corpus: NabCorpus) -> list[DetectorResults]:
    """Detectors under ``results_dir`` (NAB's ``results/<detector>/<category>/...`` layout).

    ``results_dir`` may also be one detector's folder itself (it holds category folders).
    A ``.csv`` is preferred to a ``.csv.gz`` of the same file. Files that are not per-row
    results of a corpus file are listed in ``skipped``.
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise NabInputError(f"results folder {results_dir} does not exist; run nab-run first")
    categories = {k.split("/")[0] for k in corpus.windows}
    if any((results_dir / c).is_dir() for c in categories):
        folders = [results_dir]
    else:
        folders = sorted(p for p in results_dir.iterdir() if p.is_dir())
    found = []
    for folder in folders:
        det = DetectorResults(name=folder.name, folder=folder)
        for path in sorted(folder.rglob("*")):
            if not path.is_file() or not path.name.endswith(RESULT_SUFFIXES):
                continue
            key = result_key(det.name, path.relative_to(folder))
            if key is None or key not in corpus.windows or not is_result_file(path):
                det.skipped.append(path)
                continue
            if key in det.files and det.files[key].name.endswith(".csv"):
                det.skipped.append(path)  # the plain .csv wins over its .csv.gz twin
                continue
            det.files[key] = path
        if det.files:
            found.append(det)
    return found
