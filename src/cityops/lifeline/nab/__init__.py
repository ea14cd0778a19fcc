"""NAB (Numenta Anomaly Benchmark) for lifeline monitoring (城市生命线): a faithful scorer of NAB
result folders and a runner that writes our detector's results in NAB's layout.

See ``docs/lifeline-nab.md`` and ``/work/shared/data/nab/SOURCE.md`` ("How NAB scoring works").
"""

from cityops.lifeline.nab.corpus import NabCorpus, NabInputError, load_corpus, load_thresholds
from cityops.lifeline.nab.runner import (
    DetectorScore,
    ProfileScore,
    run_detector,
    score_detector,
    score_results_dir,
)
from cityops.lifeline.nab.scoring import (
    NAB_PROFILES,
    CostMatrix,
    normalised_score,
    probationary_length,
    scaled_sigmoid,
    sweep,
)

__all__ = [
    "NAB_PROFILES",
    "CostMatrix",
    "DetectorScore",
    "NabCorpus",
    "NabInputError",
    "ProfileScore",
    "load_corpus",
    "load_thresholds",
    "normalised_score",
    "probationary_length",
    "run_detector",
    "scaled_sigmoid",
    "score_detector",
    "score_results_dir",
    "sweep",
]
