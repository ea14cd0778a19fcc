"""Parsing sensor payloads (MQTT messages and HTTP batch items) into readings, pure.

Topic scheme: ``cityops/{city}/lifeline/{id}``, where ``id`` is a sensor id, or a device id
whose payload names its sensors. Payloads are JSON, UTF-8:

* one reading: ``{"ts": T, "value": x}``;
* several quantities at once: ``{"ts": T, "values": {"<sensor id or device channel>": x, …}}``;
* a batch: a JSON list of either form (each element is judged on its own).

``T`` is an ISO 8601 time *with* a UTC offset (``2026-05-01T08:00:00+08:00``, ``…Z``) or Unix
epoch **milliseconds** (a JSON number). A naive time is refused rather than guessed: an eight-hour
error in a flood alarm is worse than a dead letter.

Anything unusable becomes a :class:`Rejected` with a stable reason code and a sentence that says
what to fix; it goes to the dead-letter table and the stream goes on:

``malformed_json``, ``too_large``, ``bad_topic``, ``bad_structure``, ``missing_field``,
``bad_type``, ``non_finite`` (NaN, ±Infinity), ``bad_timestamp``, ``future_timestamp``, and,
decided later against the registry, ``unknown_sensor``.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

__all__ = [
    "MAX_BATCH",
    "MAX_PAYLOAD_BYTES",
    "REASONS",
    "Reading",
    "Rejected",
    "parse_http_items",
    "parse_message",
    "parse_topic",
    "parse_ts",
    "topic_for",
]

MAX_PAYLOAD_BYTES = 1_048_576
MAX_BATCH = 10_000
#: Kept of a rejected payload, so the dead-letter table cannot be used to fill the disk.
MAX_KEPT_CHARS = 4096
#: Earliest accepted reading: an epoch in *seconds* sent as milliseconds lands in January 1970.
EARLIEST = dt.datetime(2000, 1, 1, tzinfo=dt.UTC).timestamp()

REASONS: dict[str, str] = {
    "malformed_json": "the payload is not valid UTF-8 JSON",
    "too_large": "the payload is larger than allowed",
    "bad_topic": "the topic is not cityops/{city}/lifeline/{sensor_id}",
    "bad_structure": "the JSON has not the shape of a reading, a values object or a batch list",
    "missing_field": "a required field is missing",
    "bad_type": "a field has the wrong type",
    "non_finite": "the value is NaN or infinite",
    "bad_timestamp": "the timestamp cannot be read or is implausible",
    "future_timestamp": "the timestamp is too far in the future",
    "unknown_sensor": "no registered sensor has this id",
    "retired_sensor": "the sensor is retired (inactive)",
}


class Reading(NamedTuple):
    """One reading. ``ref`` is a sensor id, or a channel name of device ``device``.

    (A named tuple, not a dataclass: tens of thousands are made per second.)"""

    ref: str
    ts: float
    value: float
    device: str | None = None


@dataclass(frozen=True)
class Rejected:
    """A payload (or one element of it) that cannot be ingested."""

    reason: str
    detail: str
    payload: str
    sensor_ref: str | None = None


class _Reject(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _keep(text: str) -> str:
    return text if len(text) <= MAX_KEPT_CHARS else text[:MAX_KEPT_CHARS] + "…(truncated)"


def _dump(obj: Any) -> str:
    try:
        return _keep(json.dumps(obj, ensure_ascii=False, allow_nan=True, default=str))
    except (TypeError, ValueError):  # pragma: no cover - defensive: anything json.loads made
        return _keep(repr(obj))


def topic_for(city: str, sensor_id: str) -> str:
    """The topic a sensor (or device) publishes on."""
    return f"cityops/{city}/lifeline/{sensor_id}"


def parse_topic(topic: str) -> str:
    """The sensor/device id of a topic ``cityops/{city}/lifeline/{id}`` (``ValueError`` else)."""
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != "cityops" or parts[2] != "lifeline" or not parts[3]:
        raise ValueError(f"topic {topic!r} is not cityops/{{city}}/lifeline/{{sensor_id}}")
    if not parts[1]:
        raise ValueError(f"topic {topic!r} has an empty city segment")
    return parts[3]


def parse_ts(raw: Any, now: float, max_future_s: float) -> float:
    """A timestamp (ISO 8601 with offset, or epoch milliseconds) → epoch seconds."""
    if isinstance(raw, bool) or raw is None:
        raise _Reject(
            "bad_type", f"ts must be an ISO 8601 string or epoch milliseconds, not {raw!r}"
        )
    if isinstance(raw, int | float):
        if not math.isfinite(raw):
            raise _Reject("bad_timestamp", "ts is NaN or infinite")
        ts = float(raw) / 1000.0
    elif isinstance(raw, str):
        try:
            parsed = dt.datetime.fromisoformat(raw.strip())
        except ValueError as exc:
            raise _Reject(
                "bad_timestamp", f"ts {raw!r} is not ISO 8601 (e.g. 2026-05-01T08:00:00+08:00)"
            ) from exc
        if parsed.tzinfo is None:
            raise _Reject(
                "bad_timestamp",
                f"ts {raw!r} has no UTC offset: add Z or +08:00 (naive times are not guessed)",
            )
        ts = parsed.timestamp()
    else:
        raise _Reject("bad_type", "ts must be an ISO 8601 string or epoch milliseconds")
    if ts < EARLIEST:
        raise _Reject(
            "bad_timestamp",
            f"ts {raw!r} is before 2000-01-01: epoch seconds sent where milliseconds belong?",
        )
    if ts > now + max_future_s:
        raise _Reject(
            "future_timestamp",
            f"ts {raw!r} is {ts - now:.0f} s ahead of the server clock (at most "
            f"{max_future_s:.0f} s allowed): check the device clock",
        )
    return ts


def _value(raw: Any, name: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise _Reject("bad_type", f"{name} must be a number, not {json.dumps(raw)[:60]}")
    try:
        v = float(raw)
    except OverflowError as exc:
        raise _Reject("non_finite", f"{name} is too large for a float") from exc
    if not math.isfinite(v):
        raise _Reject("non_finite", f"{name} is {v}: send no reading rather than NaN/Infinity")
    return v


def _element(obj: Any, ref: str, device_ok: bool, now: float, max_future_s: float) -> list[Reading]:
    if not isinstance(obj, Mapping):
        raise _Reject("bad_structure", 'a reading must be an object {"ts": …, "value": …}')
    if "ts" not in obj:
        raise _Reject("missing_field", 'the reading has no "ts"')
    has_value, has_values = "value" in obj, "values" in obj
    if has_value == has_values:
        raise _Reject(
            "missing_field" if not has_value else "bad_structure",
            'give exactly one of "value" or "values"',
        )
    ts = parse_ts(obj["ts"], now, max_future_s)
    if has_value:
        return [Reading(ref, ts, _value(obj["value"], "value"))]
    values = obj["values"]
    if not isinstance(values, Mapping) or not values:
        raise _Reject("bad_structure", '"values" must be a non-empty object {"<sensor>": x}')
    out = []
    for key, raw in values.items():
        out.append(Reading(str(key), ts, _value(raw, f"values.{key}"), ref if device_ok else None))
    return out


#: The canonical single reading ``{"ts": <epoch ms>, "value": <number>}`` (JSON number grammar,
#: RFC 8259 §6), read without building a dict; anything else takes the general path below.
FAST_READING = re.compile(
    rb'\s*\{\s*"ts"\s*:\s*(\d{1,16})\s*,\s*"value"\s*:\s*'
    rb"(-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?)\s*\}\s*\Z"
)
_FAST = FAST_READING


def parse_message(
    topic_id: str, payload: bytes, now: float, max_future_s: float
) -> tuple[list[Reading], list[Rejected]]:
    """All readings of one MQTT message on the topic of ``topic_id``, and what was rejected."""
    m = _FAST.match(payload)
    if m is not None:
        ts = int(m.group(1)) / 1000.0
        v = float(m.group(2))
        if EARLIEST <= ts <= now + max_future_s and math.isfinite(v):
            return [Reading(topic_id, ts, v)], []
        # out of range: the general path names the reason
    if len(payload) > MAX_PAYLOAD_BYTES:
        return [], [
            Rejected(
                "too_large",
                f"payload of {len(payload)} bytes; at most {MAX_PAYLOAD_BYTES}",
                _keep(payload[:MAX_KEPT_CHARS].decode("utf-8", "replace")),
                topic_id,
            )
        ]
    try:
        text = payload.decode("utf-8")
        obj = json.loads(text)
    except (UnicodeDecodeError, ValueError) as exc:
        return [], [
            Rejected(
                "malformed_json",
                f"not valid UTF-8 JSON ({exc})",
                _keep(payload.decode("utf-8", "replace")),
                topic_id,
            )
        ]
    items = obj if isinstance(obj, list) else [obj]
    if len(items) > MAX_BATCH:
        return [], [
            Rejected(
                "too_large", f"{len(items)} readings; at most {MAX_BATCH}", _keep(text), topic_id
            )
        ]
    readings: list[Reading] = []
    rejected: list[Rejected] = []
    for item in items:
        try:
            readings.extend(_element(item, topic_id, True, now, max_future_s))
        except _Reject as r:
            rejected.append(Rejected(r.reason, r.detail, _dump(item), topic_id))
    return readings, rejected


def parse_http_items(
    items: Any, now: float, max_future_s: float
) -> tuple[list[Reading], list[tuple[int, Rejected]]]:
    """Readings of an HTTP batch: a list of ``{"sensor_id": …, "ts": …, "value": …}`` (or
    ``"values"`` with ``"device_id"``), rejected items with their index."""
    if isinstance(items, Mapping) and "samples" in items:
        items = items["samples"]
    if not isinstance(items, list):
        raise ValueError('the body must be a JSON list of readings or {"samples": [...]}')
    if len(items) > MAX_BATCH:
        raise ValueError(f"{len(items)} readings in one request; at most {MAX_BATCH}")
    readings: list[Reading] = []
    rejected: list[tuple[int, Rejected]] = []
    for i, item in enumerate(items):
        ref = None
        try:
            if not isinstance(item, Mapping):
                raise _Reject("bad_structure", "each reading must be an object")
            ref = item.get("sensor_id") or item.get("device_id")
            if not isinstance(ref, str) or not ref:
                raise _Reject("missing_field", 'each reading needs "sensor_id" (or "device_id")')
            readings.extend(_element(item, ref, "device_id" in item, now, max_future_s))
        except _Reject as r:
            rejected.append((i, Rejected(r.reason, r.detail, _dump(item), ref)))
    return readings, rejected
