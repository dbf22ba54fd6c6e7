import math
import random

import pytest

from jobs.generator import EXPECTED_REASON, MALFORMED_KINDS, malformed_record
from transforms.codecs import (
    CodecError,
    DeadLetterReason,
    ValidationLimits,
    decode,
    decode_event,
    encode,
    encode_event,
    make_event,
    try_decode_event,
)

GOOD = make_event("e1", "u1", "i9", 1_767_225_600_123, "dwell", 4321.5, "tablet", "apac")


def test_event_round_trip_is_exact():
    assert decode_event(encode_event(GOOD)) == GOOD


@pytest.mark.parametrize("name,record", [
    ("scored_result", {"user_id": "u1", "window_start_ms": 0, "window_end_ms": 10_000, "score": 0.25,
                       "model_name": "gbdt", "model_version": "v1", "arm": "active", "fallback_reason": "",
                       "feature_set_version": "abc", "fired_at_ms": 5, "scored_at_ms": 6, "schema_version": 1}),
    ("feature_snapshot", {"entity_type": "user", "entity_id": "u1", "feature_group": "g", "window_start_ms": 0,
                          "window_end_ms": 10_000, "features": {"a": 1.5, "b": 0.0}, "feature_set_version": "abc",
                          "schema_version": 1}),
    ("dead_letter", {"reason": "late", "detail": "x", "source_topic": "events", "source_partition": 0,
                     "source_offset": 42, "raw": b"\x00\x01", "schema_version": 1}),
    ("alert", {"kind": "drift", "severity": "warn", "message": "m", "model_version": "v1", "ts_ms": 1,
               "attributes": {"feature": "ctr"}, "schema_version": 1}),
])
def test_output_schemas_round_trip(name, record):
    assert decode(encode(record, name), name) == record


def test_encode_rejects_wrong_types():
    with pytest.raises(CodecError):
        encode_event({**GOOD, "ts_ms": "yesterday"})


@pytest.mark.parametrize("kind", MALFORMED_KINDS)
def test_each_malformed_kind_is_dead_lettered_with_its_reason(kind):
    raw = malformed_record(kind, random.Random(3), GOOD)
    event, reason, detail = try_decode_event(raw)
    assert event is None
    assert reason == EXPECTED_REASON[kind]
    assert detail
    assert reason in {r.value for r in DeadLetterReason}


def test_trailing_bytes_are_undecodable():
    with pytest.raises(CodecError, match="trailing"):
        decode_event(encode_event(GOOD) + b"\x00")


def test_limits_are_applied():
    limits = ValidationLimits(max_key_bytes=6, min_ts_ms=0, max_ts_ms=2_000_000_000_000, max_dwell_ms=5_000.0)
    assert try_decode_event(encode_event({**GOOD, "user_id": "u123456"}), limits)[1] == "invalid_key"
    assert try_decode_event(encode_event({**GOOD, "device": "phablet"}), limits)[1:] == (
        "invalid_key", "device longer than 6 bytes")
    ok, reason, _ = try_decode_event(encode_event(GOOD), limits)
    assert reason is None and ok == GOOD
    assert try_decode_event(encode_event({**GOOD, "dwell_ms": -1.0}))[1] == "invalid_dwell"
    assert try_decode_event(encode_event({**GOOD, "dwell_ms": 5_000.0}), limits)[1] is None  # inclusive
    assert try_decode_event(encode_event({**GOOD, "dwell_ms": 5_000.5}), limits)[1] == "invalid_dwell"
    assert try_decode_event(encode_event({**GOOD, "dwell_ms": 1e100}))[1] == "invalid_dwell"
    assert math.isnan(decode_event(encode_event({**GOOD, "dwell_ms": float("nan")}))["dwell_ms"])


def test_limits_validate_themselves():
    with pytest.raises(ValueError):
        ValidationLimits(max_key_bytes=0)
    with pytest.raises(ValueError):
        ValidationLimits(min_ts_ms=10, max_ts_ms=5)
