"""Fuzzing the event decode and validation path: every input is either a valid event or
a dead-letter reason from the documented enum; nothing raises."""

import io
import math
import random
import re

import fastavro
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobs.generator import (
    EVENT_STRING_FIELDS,
    EXPECTED_REASON,
    HEADER_KINDS,
    INVALID_UTF8,
    MALFORMED_KINDS,
    as_v2,
    malformed_message,
    with_field,
    zigzag,
)
from transforms.codecs import (
    SCHEMA_DIR,
    DeadLetterReason,
    encode_event,
    header_schema_version,
    known_versions,
    latest_version,
    make_event,
    parse_schema_version,
    try_decode_event,
    validate_event,
)
from transforms.reference import compute_features
from transforms.schema_compat import check_compatibility, load
from transforms.spec import load_spec

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



# --- schema evolution, version headers, bad values under every writer, duplicates ---

LATEST = latest_version("event")
NEWEST = load(SCHEMA_DIR / f"event.v{LATEST}.avsc")
V1 = load(SCHEMA_DIR / "event.v1.avsc")
LIMIT_TS = 4_102_444_800_000


def _encode_with(schema: dict, record: dict) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), record)
    return buf.getvalue()


def _variant(base: dict, **types) -> dict:
    """``base`` with some fields' types replaced, as another (unknown) writer would have it."""
    return {**base, "fields": [{**f, "type": types.get(f["name"], f["type"])} for f in base["fields"]]}


def _outcome(raw: bytes, version: int | None):
    """The decode both ways the code base does it (writer alone, and the job's newest
    reader): the same reason, from the enum, with a detail; a good event passes validation."""
    alone = try_decode_event(raw, version=version)
    newest = try_decode_event(raw, version=version, reader_version=LATEST)
    for event, reason, detail in (alone, newest):
        if event is None:
            assert reason in REASONS and detail
        else:
            assert reason is None and validate_event(event) is None
            assert math.isfinite(event["dwell_ms"]) and event["user_id"] and event["event_id"]
    assert alone[1] == newest[1], (alone, newest)
    if newest[0] is not None:
        assert set(newest[0]) == {f["name"] for f in NEWEST["fields"]}
        assert {k: newest[0][k] for k in alone[0]} == alone[0]
    return newest


HEADERS = st.one_of(st.none(), st.sampled_from([b"1", b"2", b"3", b"0", b"01", b"", b"two", b"\xff"]),
                    st.binary(max_size=12))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.binary(max_size=300), header=HEADERS)
def test_random_bytes_under_any_version_header(raw, header):
    version = header_schema_version(None if header is None else [("schema-version", header)])
    event, reason, _ = _outcome(raw, version)
    if version is None or version not in known_versions("event"):
        assert reason == "unknown_schema_version"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=12))
def test_version_header_parsing(header):
    want = int(header) if re.fullmatch(rb"[1-9][0-9]{0,8}", header) else None
    assert parse_schema_version(header) == want
    assert header_schema_version([("other", b"x"), ("schema-version", header)]) == want
    assert header_schema_version({"schema-version": header}) == want
    assert header_schema_version([("schema-version", b"9"), ("schema-version", header)]) == want  # last wins
    assert header_schema_version(None) == header_schema_version([]) == header_schema_version([("k", b"2")]) == 1


KEYS = st.one_of(st.text(max_size=24), st.just(""), st.builds(lambda n: "k" * n, st.integers(250, 20_000)),
                 st.text(alphabet="é字🙂", min_size=60, max_size=100))  # multi-byte: bytes, not characters
TIMESTAMPS = st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(-(10**13), 10**13),
                       st.sampled_from([-1, 0, LIMIT_TS, LIMIT_TS + 1, 5_000_000_000_000, 2**63 - 1]))
DWELLS = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from([float("nan"), float("inf"), float("-inf"), -0.0, 0.0, -1e-300]))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(version=st.sampled_from(known_versions("event")), event_id=KEYS, user=KEYS, item=KEYS, ts=TIMESTAMPS,
       dwell=DWELLS, etype=st.sampled_from(["impression", "click", "dwell"]),
       category=st.one_of(st.none(), st.text(max_size=30)))
def test_every_writer_version_with_bad_values(version, event_id, user, item, ts, dwell, etype, category):
    ev = make_event(event_id, user, item, ts, etype, dwell)
    record = {**ev, "item_category": category} if version >= 2 else ev
    event, reason, _ = _outcome(encode_event(record, version), version)
    expected = validate_event(ev)
    assert (reason is None) == (expected is None)
    if expected is not None:
        assert reason == expected[0].value
    else:  # the newest reader gives the writer's values, and the default for fields it lacks
        assert event == {**ev, "item_category": category if version >= 2 else None}
    if not event_id or not user or not item or max(len(k.encode()) for k in (event_id, user, item)) > 256:
        assert reason == "invalid_key"
    # the same bytes under a header naming another known version never pass as the wrong schema
    for other in known_versions("event"):
        if other != version:
            assert _outcome(encode_event(record, version), other)[1] in REASONS


FUTURE = {**NEWEST, "fields": [*NEWEST["fields"], {"name": "campaign", "type": ["null", "string"], "default": None}]}


@settings(max_examples=200, deadline=None)
@given(campaign=st.one_of(st.none(), st.text(max_size=20)), header=st.sampled_from([None, b"1", b"2", b"3"]))
def test_newer_compatible_writer_not_yet_known(campaign, header):
    """A producer already on a v3 (v2 + an optional field) that this job does not know:
    compatible by resolution, but without its schema the job cannot read it."""
    assert check_compatibility(NEWEST, FUTURE) == []
    raw = _encode_with(FUTURE, {**as_v2(GOOD), "campaign": campaign})
    version = header_schema_version(None if header is None else [("schema-version", header)])
    reason = _outcome(raw, version)[1]
    assert reason == ("unknown_schema_version" if header == b"3" else "undecodable")


# writers whose schema no header names: incompatible ones, and two legal promotions
# (float -> double, int -> long) whose bytes still differ from the schema the header claims
OTHER_WRITERS = {
    "enum symbol v1 lacks": _variant(V1, event_type={"type": "enum", "name": "EventType",
                                                     "symbols": ["impression", "click", "dwell", "share"]}),
    "ts_ms as string": _variant(V1, ts_ms="string"),
    "dwell_ms as float": _variant(V1, dwell_ms="float"),
    "ts_ms as int": _variant(V1, ts_ms="int"),
    "keys as bytes-length longs": _variant(V1, event_id="long", user_id="long"),
    "optional device": _variant(V1, device=["null", "string"]),
}
PROMOTIONS = {"dwell_ms as float", "ts_ms as int"}


def _value_for(avro_type, base):
    if avro_type == "string":
        return str(base)
    if avro_type in ("long", "int"):
        return int(base) if isinstance(base, int | float) and math.isfinite(base) else len(str(base))
    if avro_type == "float":
        return float(base)
    return base


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.sampled_from(sorted(OTHER_WRITERS)), header=st.sampled_from([None, b"1", b"2"]),
       etype=st.sampled_from(["impression", "click", "dwell", "share"]), ts=st.integers(-(2**31), 2**31 - 1),
       dwell=st.floats(width=32, allow_nan=True), device=st.one_of(st.none(), st.text(max_size=10)))
def test_other_writers_are_dead_lettered_not_raised(case, header, etype, ts, dwell, device):
    schema = OTHER_WRITERS[case]
    assert bool(check_compatibility(NEWEST, schema)) == (case not in PROMOTIONS), case
    types = {f["name"]: f["type"] for f in schema["fields"]}
    ev = make_event("e1", "u1", "i1", ts, etype, dwell)
    ev["device"] = device
    record = {k: (_value_for(types[k], v) if isinstance(types[k], str) else v) for k, v in ev.items()}
    if not isinstance(types["event_type"], dict) or "share" not in types["event_type"]["symbols"]:
        record["event_type"] = "click" if etype == "share" else etype
    if types["device"] == "string" and record["device"] is None:
        record["device"] = ""
    raw = _encode_with(schema, record)
    version = header_schema_version(None if header is None else [("schema-version", header)])
    event, reason, _ = _outcome(raw, version)
    if case == "enum symbol v1 lacks" and etype == "share":
        assert reason == "undecodable"


@settings(max_examples=200, deadline=None)
@given(kind=st.sampled_from(MALFORMED_KINDS + HEADER_KINDS), seed=st.integers(0, 2**32))
def test_every_malformed_kind_gets_its_reason_from_both_readers(kind, seed):
    value, headers = malformed_message(kind, random.Random(seed), GOOD)
    assert _outcome(value, header_schema_version(headers))[1] == EXPECTED_REASON[kind]


def test_duplicate_event_ids_are_each_processed():
    """The job does not deduplicate: every copy of an event_id is its own event."""
    first = make_event("dup-1", "u1", "i1", GOOD["ts_ms"], "impression")
    copies = [(encode_event(first), 1), (encode_event(first), 1), (encode_event(as_v2(first), 2), 2)]
    decoded = [try_decode_event(raw, version=v, reader_version=LATEST) for raw, v in copies]
    assert all(reason is None for _, reason, _ in decoded)
    assert {ev["event_id"] for ev, _, _ in decoded} == {"dup-1"}
    spec = load_spec()
    ref = compute_features(spec, [ev for ev, _, _ in decoded])
    assert ref.accepted == 3 and not ref.late
    group = next(g for g in spec.groups if g.entity == "user" and "impressions" in g.feature_names)
    assert [f["impressions"] for f in ref.groups[group.name].values()] == [3.0]


# --- the strict rule's families (transforms/event_decoder.py), and both engines on fuzzed batches ---

def _not_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


BAD_UTF8 = st.one_of(
    st.sampled_from([seq for seqs in INVALID_UTF8.values() for seq in seqs]),
    st.binary(min_size=1, max_size=12).filter(_not_utf8),
    st.builds(lambda pre, seq, post: pre.encode() + seq + post.encode(), st.text(max_size=5),
              st.sampled_from([seq for seqs in INVALID_UTF8.values() for seq in seqs]), st.text(max_size=5)),
)


@settings(max_examples=300, deadline=None)
@given(seq=BAD_UTF8, field=st.sampled_from((*EVENT_STRING_FIELDS, "item_category")), v2=st.booleans())
def test_invalid_utf8_in_any_string_field_is_undecodable(seq, field, v2):
    version = 2 if v2 or field == "item_category" else 1
    ev = as_v2(GOOD) if version == 2 else GOOD
    enc = (b"\x02" if field == "item_category" else b"") + zigzag(len(seq)) + seq
    raw = with_field(ev, field, enc, version)
    event, reason, detail = _outcome(raw, version)
    assert (reason, detail) == ("undecodable", f"{field}: invalid UTF-8")


@settings(max_examples=300, deadline=None)
@given(idx=st.one_of(st.integers(-(2**31), -1), st.integers(3, 2**31 - 1)), v2=st.booleans())
def test_enum_index_outside_the_symbols_is_undecodable(idx, v2):
    ev = as_v2(GOOD) if v2 else GOOD
    raw = with_field(ev, "event_type", zigzag(idx), 2 if v2 else 1)
    assert _outcome(raw, 2 if v2 else 1)[1:] == ("undecodable", f"event_type: enum index {idx} outside [0, 3)")


@settings(max_examples=200, deadline=None)
@given(idx=st.one_of(st.integers(-(2**31), -1), st.integers(2, 2**31 - 1)))
def test_union_index_outside_the_branches_is_undecodable(idx):
    raw = with_field(as_v2(GOOD), "item_category", zigzag(idx), 2)
    assert _outcome(raw, 2)[1:] == ("undecodable", f"item_category: union index {idx} outside [0, 2)")


@settings(max_examples=300, deadline=None)
@given(extra=st.integers(1, 6), last=st.integers(0, 0x7F), field=st.sampled_from(("ts_ms", "user_id", "event_type")))
def test_overlong_varints_are_undecodable(extra, last, field):
    max_bytes = 5 if field == "event_type" else 10
    raw_varint = b"\x80" * (max_bytes - 1 + extra) + bytes([last])  # longer than the type allows
    raw = with_field(GOOD, field, raw_varint)
    kind = "int" if field == "event_type" else "long"
    assert _outcome(raw, 1)[1:] == ("undecodable", f"{field}: invalid {kind} encoding")


@settings(max_examples=300, deadline=None)
@given(n=st.integers(-(2**63), -1), field=st.sampled_from(EVENT_STRING_FIELDS))
def test_negative_lengths_are_undecodable(n, field):
    raw = with_field(GOOD, field, zigzag(n) + b"abc")
    assert _outcome(raw, 1)[1:] == ("undecodable", f"{field}: negative length {n}")


@settings(max_examples=200, deadline=None)
@given(data=st.data(), v2=st.booleans())
def test_every_cut_is_undecodable_naming_the_cut_field(data, v2):
    version = 2 if v2 else 1
    ev = as_v2(GOOD) if v2 else GOOD
    raw = encode_event(ev, version)
    cut = data.draw(st.integers(1, len(raw) - 1))
    _, reason, detail = _outcome(raw[:cut], version)
    assert reason == "undecodable" and detail.endswith(": truncated")


MUTATION = st.lists(st.tuples(st.sampled_from(("set", "insert", "delete")), st.integers(0, 200), st.integers(0, 255)),
                    min_size=1, max_size=4)


def _mutate(raw: bytes, ops) -> bytes:
    buf = bytearray(raw)
    for op, pos, byte in ops:
        pos = pos % (len(buf) + 1)
        if op == "insert":
            buf[pos:pos] = bytes([byte])
        elif buf:
            if op == "set":
                buf[min(pos, len(buf) - 1)] = byte
            else:
                del buf[min(pos, len(buf) - 1)]
    return bytes(buf)


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(batch=st.lists(st.tuples(st.sampled_from([(1, None), (1, b"1"), (2, b"2")]), MUTATION,
                                st.one_of(st.text(max_size=8), BAD_UTF8.map(lambda b: b.decode("latin-1")))),
                      min_size=150, max_size=150))
def test_fuzzed_batches_get_one_verdict_from_both_engines(batch):
    """Hypothesis batches of mutated records through the JVM decoder (one JVM per batch)
    and the Python decoder: identical verdicts, reasons, and details of undecodable ones."""
    from tests.unit.decode_corpus import Case, run_jvm

    cases = []
    for (version, header), ops, user in batch:
        ev = as_v2({**GOOD, "user_id": user}) if version == 2 else {**GOOD, "user_id": user}
        cases.append(Case("fuzz", _mutate(encode_event(ev, version), ops), header))
    for case, jvm in zip(cases, run_jvm(cases), strict=True):
        event, reason, detail = try_decode_event(case.value, version=header_schema_version(
            None if case.header is None else [("schema-version", case.header)]), reader_version=LATEST)
        assert jvm.get("reason") == reason, (case, jvm, detail)
        if reason == "undecodable":
            assert jvm["detail"] == detail, (case, jvm)
        if event is not None:
            assert jvm["event"]["user_id"] == event["user_id"]
