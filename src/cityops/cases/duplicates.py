"""Likely duplicates (疑似重复): same category, near in space and time, similar text.

国办函〔2025〕66号 asks that repeat requests be merged (并单, REFERENCE Part A §6); this module
only flags candidates, a supervisor decides (``merge``). Distances are geodesic on the WGS84
ellipsoid (pyproj ``Geod``), never in degrees (DESIGN §3). Text similarity is the Jaccard index
of character bigrams, which needs no word segmentation and so works for Chinese. Pure.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise

import numpy as np
from pydantic import BaseModel, Field
from pyproj import Geod

_GEOD = Geod(ellps="WGS84")
_METRES_PER_DEGREE_LAT = 110_574.0  # at the equator; the largest-degree-error side is safe


class DuplicateRules(BaseModel):
    """``cases/duplicates.yaml``."""

    version: int
    source: str
    distance_m: float = Field(50, gt=0)
    window_hours: float = Field(72, gt=0)
    min_text_similarity: float = Field(0.25, ge=0, le=1)
    max_candidates: int = Field(5, ge=1)


@dataclass(frozen=True)
class Candidate:
    """An open case near the new one (pre-filtered by the database on category, time, box)."""

    id: str
    lon: float
    lat: float
    reported_at: dt.datetime
    text: str


@dataclass(frozen=True)
class Match:
    id: str
    distance_m: float
    minutes_apart: float
    similarity: float | None  # None: one of the two had no text

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "distance_m": round(self.distance_m, 1),
            "minutes_apart": round(self.minutes_apart, 1),
            "similarity": None if self.similarity is None else round(self.similarity, 3),
        }


@lru_cache(maxsize=4096)
def bigrams(text: str) -> frozenset[str]:
    """Character bigrams of the text without spaces/punctuation (a lone character is its own
    gram). Cached: reports repeat their wording (a patrol's templates), and every new case
    compares its text with each open case nearby."""
    chars = [c for c in text.lower() if c.isalnum()]
    if len(chars) == 1:
        return frozenset(chars)
    return frozenset(a + b for a, b in pairwise(chars))


def similarity(a: str, b: str) -> float | None:
    """Jaccard index of the bigram sets; ``None`` when either text is empty."""
    return _jaccard(bigrams(a), bigrams(b))


def _jaccard(ga: frozenset[str], gb: frozenset[str]) -> float | None:
    if not ga or not gb:
        return None
    return len(ga & gb) / len(ga | gb)


def search_box(rules: DuplicateRules, lon: float, lat: float) -> tuple[float, float, float, float]:
    """A lon/lat box surely holding every point within ``distance_m`` (database pre-filter
    only; the exact test is geodesic)."""
    dlat = rules.distance_m / _METRES_PER_DEGREE_LAT * 1.01
    coslat = max(math.cos(math.radians(min(abs(lat) + dlat, 89.0))), 1e-6)
    dlon = dlat / coslat
    return lon - dlon, lat - dlat, lon + dlon, lat + dlat


def find(
    rules: DuplicateRules,
    lon: float,
    lat: float,
    at: dt.datetime,
    text: str,
    candidates: Sequence[Candidate],
) -> list[Match]:
    """The likely duplicates among ``candidates``, nearest first."""
    if not candidates:
        return []
    lons = np.array([c.lon for c in candidates], dtype=float)
    lats = np.array([c.lat for c in candidates], dtype=float)
    _, _, dist = _GEOD.inv(np.full_like(lons, lon), np.full_like(lats, lat), lons, lats)
    window = dt.timedelta(hours=rules.window_hours)
    grams = bigrams(text)
    out = []
    for c, d in zip(candidates, np.asarray(dist), strict=True):
        apart = abs(at - c.reported_at)
        if d > rules.distance_m or apart > window:
            continue
        sim = _jaccard(grams, bigrams(c.text))
        if sim is not None and sim < rules.min_text_similarity:
            continue
        out.append(Match(c.id, float(d), apart.total_seconds() / 60, sim))
    out.sort(key=lambda m: (m.distance_m, m.minutes_apart))
    return out[: rules.max_candidates]
