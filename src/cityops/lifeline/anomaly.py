"""The learned anomaly detector as a fourth alarm input (kind ``anomaly``, blue by default).

The detector itself — one global configuration, the same one NAB scores — lives in
:mod:`cityops.lifeline.detect` (another module's work). This bank keeps one streaming
:class:`~cityops.lifeline.detect.NoveltyDetector` per sensor in the ingest process. Its state is
*derived from the stored series*, not stored itself: the first time a sensor is seen after a
start, the bank replays the sensor's last ``learning_period`` stored readings (up to the last one
the stream had processed), and its chunk-invariant ``update`` makes that replay give exactly the
scores streaming would have given.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

log = logging.getLogger("cityops.lifeline")


def detector_available() -> bool:
    try:
        from cityops.lifeline.detect import NoveltyDetector  # noqa: F401
    except ImportError:
        return False
    return True


class AnomalyBank:
    """One detector per sensor, warmed from history on first use."""

    def __init__(self, learning_period: int) -> None:
        from cityops.lifeline.detect import DEFAULT_CONFIG

        self.learning_period = learning_period
        self.config = DEFAULT_CONFIG
        self._detectors: dict[str, Any] = {}

    def _new(self) -> Any:
        from cityops.lifeline.detect import NoveltyDetector

        return NoveltyDetector(self.learning_period, self.config)

    def knows(self, sensor_id: str) -> bool:
        return sensor_id in self._detectors

    def warm(self, session: Session, sensor_id: str, upto: dt.datetime | None) -> None:
        """Create the sensor's detector and replay its stored history up to ``upto``."""
        from cityops.lifeline.models import Sample

        det = self._new()
        if upto is not None:
            rows = session.execute(
                select(Sample.value)
                .where(Sample.sensor_id == sensor_id, Sample.ts <= upto, Sample.flag == 0)
                .order_by(Sample.ts.desc())
                .limit(self.learning_period * 2)
            ).scalars()
            history = np.array(list(rows)[::-1], dtype=np.float64)
            if history.size:
                det.update(history)
        self._detectors[sensor_id] = det

    def score(self, sensor_id: str, values: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """Scores of the next readings of one sensor (in time order)."""
        det = self._detectors.get(sensor_id)
        if det is None:
            det = self._detectors[sensor_id] = self._new()
        out: np.ndarray[Any, Any] = det.update(values)
        return out

    def forget(self, sensor_id: str) -> None:
        self._detectors.pop(sensor_id, None)
