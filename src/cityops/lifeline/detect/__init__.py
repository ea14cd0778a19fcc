"""Lifeline detection (城市生命线 监测): the production anomaly detector, sensor-health checks,
level alarms with hysteresis and rate-of-change checks — pure functions and one streaming state."""

from cityops.lifeline.detect.config import DEFAULT_CONFIG, DetectorConfig, load_detector_config
from cityops.lifeline.detect.novelty import NoveltyDetector, detect

__all__ = [
    "DEFAULT_CONFIG",
    "DetectorConfig",
    "NoveltyDetector",
    "detect",
    "load_detector_config",
]
