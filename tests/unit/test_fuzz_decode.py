"""Fuzzing the event decode and validation path: every input is either a valid event or
a dead-letter reason from the documented enum; nothing raises."""

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transforms.codecs import DeadLetterReason, encode_event, make_event, try_decode_event, validate_event

REASONS = {r.value for r in DeadLetterReason}
GOOD = make_event("e1", "u1", "i1", 1_767_225_600_000, "click", 0.0)


def _check(raw: bytes) -> None:
    event, reason, detail = try_decode_event(raw)
    if event is None:
        assert reason in REASONS and detail
    else:
        assert reason is None and validate_event(event) is None
        assert math.isfinite(event["dwell_ms"]) and event["user_id"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_random_bytes(raw):
    _check(raw)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_truncated_and_extended_avro(data):
    raw = encode_event(GOOD)
    cut = data.draw(st.integers(0, len(raw)))
    tail = data.draw(st.binary(max_size=8))
    _check(raw[:cut])
    _check(raw + tail)
    if tail:
        assert try_decode_event(raw + tail)[1] == "undecodable"


@settings(max_examples=300, deadline=None)
@given(
    user=st.text(max_size=300),
    ts=st.integers(-(2**63), 2**63 - 1),
    dwell=st.floats(allow_nan=True, allow_infinity=True),
    etype=st.sampled_from(["impression", "click", "dwell"]),
)
def test_field_values(user, ts, dwell, etype):
    raw = encode_event(make_event("e", user, "i", ts, etype, dwell))
    event, reason, _ = try_decode_event(raw)
    expected = validate_event(make_event("e", user, "i", ts, etype, dwell))
    assert (reason is None) == (expected is None)
    if expected is not None:
        assert reason == expected[0].value
    if not user:
        assert reason == "invalid_key"
    if math.isnan(dwell) or math.isinf(dwell) or dwell < 0:
        assert reason in ("invalid_dwell", "invalid_key", "invalid_timestamp")
