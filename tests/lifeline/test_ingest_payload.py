"""Payload parsing: the accepted shapes, and each bad input with its dead-letter reason."""

from __future__ import annotations

import json

import pytest

from cityops.lifeline.ingest.payload import (
    MAX_PAYLOAD_BYTES,
    Reading,
    parse_http_items,
    parse_message,
    parse_topic,
)

NOW = 1_780_000_000.0  # 2026-05-28 UTC
MS = int(NOW * 1000) - 60_000


def msg(obj: object) -> tuple[list[Reading], list]:
    return parse_message("S1", json.dumps(obj).encode(), NOW, 300)


def reasons(obj: object | bytes) -> list[str]:
    raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return [r.reason for r in parse_message("S1", raw, NOW, 300)[1]]


def test_single_reading_epoch_ms_and_iso() -> None:
    ok, bad = msg({"ts": MS, "value": 12.5})
    assert bad == [] and ok == [Reading("S1", MS / 1000, 12.5)]
    ok, _ = msg({"ts": "2026-05-28T08:00:00+08:00", "value": 3})
    assert ok[0].ts == 1779926400.0 and ok[0].value == 3.0
    ok, _ = msg({"ts": "2026-05-28T00:00:00Z", "value": -1.5e-3})
    assert ok[0].ts == 1779926400.0 and ok[0].value == -0.0015


def test_fast_path_agrees_with_the_general_parser() -> None:
    raw = b'{"ts":%d,"value":7.25}' % MS
    spaced = b' { "ts" : %d , "value" : 7.25 } ' % MS
    assert parse_message("S1", raw, NOW, 300) == parse_message("S1", spaced, NOW, 300)
    assert parse_message("S1", raw, NOW, 300)[0] == [Reading("S1", MS / 1000, 7.25)]


def test_values_object_and_batch_list() -> None:
    ok, bad = msg({"ts": MS, "values": {"ch4": 1.0, "S7": 2}})
    assert bad == []
    assert ok == [Reading("ch4", MS / 1000, 1.0, "S1"), Reading("S7", MS / 1000, 2.0, "S1")]
    ok, bad = msg(
        [{"ts": MS, "value": 1}, {"ts": MS + 1000, "value": "x"}, {"ts": MS + 2000, "value": 3}]
    )
    assert [r.value for r in ok] == [1.0, 3.0]
    assert [b.reason for b in bad] == ["bad_type"]
    assert json.loads(bad[0].payload) == {"ts": MS + 1000, "value": "x"}


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"ts": 1, "value": ', "malformed_json"),
        (b"\xff\xfe not utf-8", "malformed_json"),
        (b"", "malformed_json"),
        (b'{"ts": %d, "value": NaN}' % MS, "non_finite"),
        (b'{"ts": %d, "value": Infinity}' % MS, "non_finite"),
        (b'{"ts": %d, "value": -Infinity}' % MS, "non_finite"),
        (b'{"ts": %d, "value": 1e999}' % MS, "non_finite"),
        (b'{"ts": %d, "value": "12.5"}' % MS, "bad_type"),
        (b'{"ts": %d, "value": true}' % MS, "bad_type"),
        (b'{"ts": %d, "value": null}' % MS, "bad_type"),
        (b'{"ts": %d, "value": [1]}' % MS, "bad_type"),
        (b'{"ts": true, "value": 1}', "bad_type"),
        (b'{"ts": [1], "value": 1}', "bad_type"),
        (b'{"ts": "yesterday", "value": 1}', "bad_timestamp"),
        (b'{"ts": "2026-05-28T08:00:00", "value": 1}', "bad_timestamp"),  # no offset
        (b'{"ts": 1779926400, "value": 1}', "bad_timestamp"),  # seconds, not ms
        (b'{"ts": %d, "value": 1}' % (MS + 3_600_000), "future_timestamp"),
        (b'{"ts": "2030-01-01T00:00:00Z", "value": 1}', "future_timestamp"),
        (b'{"value": 1}', "missing_field"),
        (b'{"ts": %d}' % MS, "missing_field"),
        (b'{"ts": %d, "value": 1, "values": {"a": 1}}' % MS, "bad_structure"),
        (b'{"ts": %d, "values": {}}' % MS, "bad_structure"),
        (b'{"ts": %d, "values": [1, 2]}' % MS, "bad_structure"),
        (b"42", "bad_structure"),
        (b'"text"', "bad_structure"),
        (b"[1, 2]", "bad_structure"),
    ],
)
def test_bad_payloads_are_rejected_with_a_reason(payload: bytes, reason: str) -> None:
    ok, bad = parse_message("S1", payload, NOW, 300)
    assert ok == []
    assert [b.reason for b in bad] == [reason] * len(bad) and bad
    assert all(b.detail for b in bad)


def test_too_large_payload() -> None:
    big = b'{"ts": %d, "value": 1, "pad": "%s"}' % (MS, b"x" * MAX_PAYLOAD_BYTES)
    ok, bad = parse_message("S1", big, NOW, 300)
    assert ok == [] and bad[0].reason == "too_large" and len(bad[0].payload) < 5000


def test_small_clock_skew_is_accepted() -> None:
    ok, bad = msg({"ts": int((NOW + 120) * 1000), "value": 1})
    assert ok and not bad


def test_topic_scheme() -> None:
    assert parse_topic("cityops/hefei/lifeline/340104-SN000001") == "340104-SN000001"
    for bad in (
        "cityops/hefei/lifeline/",
        "cityops/hefei/other/x",
        "a/b",
        "cityops//lifeline/x",
        "cityops/hefei/lifeline/x/y",
    ):
        with pytest.raises(ValueError):
            parse_topic(bad)


def test_http_items() -> None:
    ok, bad = parse_http_items(
        {
            "samples": [
                {"sensor_id": "A", "ts": MS, "value": 1},
                {"ts": MS, "value": 1},
                {"device_id": "D1", "ts": MS, "values": {"ch": 2}},
                "junk",
            ]
        },
        NOW,
        300,
    )
    assert ok == [Reading("A", MS / 1000, 1.0), Reading("ch", MS / 1000, 2.0, "D1")]
    assert [(i, b.reason) for i, b in bad] == [(1, "missing_field"), (3, "bad_structure")]
    with pytest.raises(ValueError):
        parse_http_items({"nope": 1}, NOW, 300)
