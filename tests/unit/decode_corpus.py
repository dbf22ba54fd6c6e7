"""One malformed corpus for every event decoder, and a runner for the JVM decoder.

``build_corpus`` gives labelled Kafka messages (value and schema-version header):
invalid UTF-8 of each kind in each string field under each writer, negative and
out-of-range enum and union indexes, over-long varints, negative and huge lengths, every
cut point of a v1 and a v2 record, version headers, seeded random mutations, and good
events with unusual but valid values. ``run_jvm`` decodes them with the Flink job's own
decoder class (``io.streamscore.udf.DecodeEvent``) in one JVM, outside Flink.
"""

from __future__ import annotations

import json
import random
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.generator import (
    EVENT_STRING_FIELDS,
    INVALID_UTF8,
    as_v2,
    with_field,
    zigzag,
)
from jobs.paths import FLINK_JARS, ROOT
from transforms.codecs import ValidationLimits, encode_event, make_event, schema_versions

LIMITS = ValidationLimits()
GOOD = make_event("e-1", "u-1", "i-14", 1_767_225_600_123, "dwell", 4321.5, "tablet", "apac")


@dataclass(frozen=True)
class Case:
    kind: str  # the corpus family, for counts
    value: bytes | None
    header: bytes | None  # the schema-version header, None: absent


def _string(raw: bytes) -> bytes:
    return zigzag(len(raw)) + raw


def _both(ev: dict[str, Any]) -> list[tuple[int, dict[str, Any], bytes | None]]:
    """The event under each writer: (version, record, header)."""
    return [(1, ev, None), (1, ev, b"1"), (2, as_v2(ev), b"2")]


def build_corpus(seed: int = 7, mutations: int = 6_000) -> list[Case]:
    rng = random.Random(seed)
    cases: list[Case] = []
    add = cases.append
    # invalid UTF-8: every kind, every string field, every writer
    for sub, seqs in INVALID_UTF8.items():
        for seq in seqs:
            for version, ev, header in _both(GOOD):
                for field in EVENT_STRING_FIELDS:
                    add(Case(f"invalid_utf8/{sub}", with_field(ev, field, _string(seq), version), header))
                if version == 2:
                    add(Case(f"invalid_utf8/{sub}", with_field(ev, "item_category", b"\x02" + _string(seq), 2),
                             header))
    # enum and union indexes
    for idx in (-1, -2, -(2**31), 3, 4, 100, 2**31 - 1):
        for version, ev, header in _both(GOOD):
            add(Case("enum_index_out_of_range", with_field(ev, "event_type", zigzag(idx), version), header))
    for idx in (-1, -5, 2, 3, 2**31 - 1, -(2**31)):
        add(Case("union_index_out_of_range", with_field(as_v2(GOOD), "item_category", zigzag(idx), 2), b"2"))
    # varints: over-long, beyond their type, non-minimal but in range
    overlong_longs = (b"\x80" * 10 + b"\x00", b"\xff" * 10 + b"\x01", b"\xff" * 9 + b"\x02", b"\x80" * 9 + b"\x7f",
                      b"\x80" * 12)
    in_range_longs = (b"\x80\x00", b"\xff" * 9 + b"\x01", b"\xfe" + b"\xff" * 8 + b"\x01", b"\x80" * 9 + b"\x00")
    for version, ev, header in _both(GOOD):
        for raw in overlong_longs:
            add(Case("overlong_varint", with_field(ev, "ts_ms", raw, version), header))
            add(Case("overlong_varint", with_field(ev, "user_id", raw, version), header))  # a length
        for raw in in_range_longs:
            add(Case("non_minimal_varint", with_field(ev, "ts_ms", raw, version), header))
        for raw in (b"\x80" * 5 + b"\x00", b"\xff" * 4 + b"\x10", b"\x80" * 4 + b"\x7f"):
            add(Case("overlong_varint", with_field(ev, "event_type", raw, version), header))
        for raw in (b"\x84\x80\x80\x80\x00", b"\xfe\xff\xff\xff\x0f", b"\x80\x80\x80\x80\x0f"):
            add(Case("non_minimal_varint", with_field(ev, "event_type", raw, version), header))
    for raw in (b"\x80" * 5 + b"\x00", b"\xff" * 4 + b"\x1f"):
        add(Case("overlong_varint", with_field(as_v2(GOOD), "item_category", raw, 2), b"2"))
    # lengths: negative, and past the end of the value
    for version, ev, header in _both(GOOD):
        for field in EVENT_STRING_FIELDS:
            for n in (-1, -2, -1000, -(2**62)):
                add(Case("negative_length", with_field(ev, field, zigzag(n), version), header))
            for n in (2**62, 2**31, 1000):
                add(Case("length_past_end", with_field(ev, field, zigzag(n) + b"abc", version), header))
    for n in (-1, -(2**40)):
        add(Case("negative_length", with_field(as_v2(GOOD), "item_category", b"\x02" + zigzag(n), 2), b"2"))
    # records cut mid-field: every cut point, both writers
    for version, ev, header in _both(GOOD):
        raw = encode_event(ev, version)
        for cut in range(1, len(raw)):
            add(Case("cut_mid_field", raw[:cut], header))
        add(Case("trailing_bytes", raw + b"\x00", header))
        add(Case("trailing_bytes", raw + raw, header))
    add(Case("empty", b"", None))
    add(Case("empty", b"", b"2"))
    add(Case("null_value", None, None))
    # version headers
    for header in (b"3", b"0", b"01", b"", b"two", b"\xff", b"1234567890", b" 2", b"2 "):
        add(Case("bad_version_header", encode_event(GOOD), header))
    add(Case("v1_bytes_under_v2_header", encode_event(GOOD), b"2"))
    add(Case("v2_bytes_without_header", encode_event(as_v2(GOOD), 2), None))
    # good events with unusual but valid values
    unusual = ["a", "é字🙂", "\x00", "k" * 256, "字" * 85, "🙂" * 64, "tab\tnew\nline", "\\|\"", "\U0010ffff",
               "\ud7ff\ue000\ufffd"]
    for i, key in enumerate(unusual):
        ev = make_event(key, key, key, i, "impression", 0.0, key, key)
        for version, rec, header in _both(ev):
            add(Case("valid_unusual", encode_event(rec, version), header))
    for dwell in (0.0, -0.0, LIMITS.max_dwell_ms, 1e-300, 5e-324):
        add(Case("valid_unusual", encode_event({**GOOD, "dwell_ms": dwell}), None))
    for ts in (LIMITS.min_ts_ms, LIMITS.max_ts_ms):
        add(Case("valid_unusual", encode_event({**GOOD, "ts_ms": ts}), None))
    # values just outside the validation bounds
    for dwell in (1e100, 1.797e308, LIMITS.max_dwell_ms * (1 + 1e-15), -1e-300, float("nan"), float("inf")):
        add(Case("dwell_out_of_range", encode_event({**GOOD, "dwell_ms": dwell}), None))
    for ts in (LIMITS.min_ts_ms - 1, LIMITS.max_ts_ms + 1, -(2**63), 2**63 - 1):
        add(Case("ts_out_of_range", encode_event({**GOOD, "ts_ms": ts}), None))
    for key in ("", "k" * 257, "字" * 86):
        add(Case("invalid_key", encode_event({**GOOD, "user_id": key}), None))
    for field in ("device", "region", "item_category"):
        for value in ("d" * 257, "字" * 86, "x" * 3_000_000):
            add(Case("invalid_key", encode_event({**as_v2(GOOD), field: value}, 2), b"2"))
        add(Case("valid_unusual", encode_event({**as_v2(GOOD), field: "d" * 256}, 2), b"2"))
        if field != "item_category":
            add(Case("valid_unusual", encode_event({**GOOD, field: ""}), None))
    # seeded random mutations of good records, and random bytes
    bases = [(encode_event(rec, v), h) for v, rec, h in _both(GOOD)]
    for _ in range(mutations):
        raw, header = rng.choice(bases)
        buf = bytearray(raw)
        for _ in range(rng.randint(1, 3)):
            op = rng.random()
            pos = rng.randrange(len(buf) + 1)
            if op < 0.5 and buf:
                buf[min(pos, len(buf) - 1)] = rng.getrandbits(8)
            elif op < 0.75:
                buf[pos:pos] = bytes([rng.getrandbits(8)])
            elif buf:
                del buf[min(pos, len(buf) - 1)]
        add(Case("random_mutation", bytes(buf), header))
    for _ in range(1_000):
        add(Case("random_bytes", bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 60))),
                 rng.choice((None, b"1", b"2"))))
    # dwell as raw doubles: every special bit pattern
    for bits in (0x7FF0000000000001, 0xFFF8000000000000, 0x8000000000000001, 0x7FEFFFFFFFFFFFFF):
        dbl = struct.pack("<Q", bits)
        add(Case("dwell_bit_pattern", with_field(GOOD, "dwell_ms", dbl), None))
    return cases


def _classpath() -> str:
    jars = sorted(FLINK_JARS.glob("streamscore-udfs*.jar")) + sorted(FLINK_JARS.glob("flink-sql-avro*.jar"))
    import pyflink

    lib = Path(pyflink.__file__).resolve().parent / "lib"
    jars += sorted(lib.glob("flink-table-api-java-uber*.jar")) + sorted(lib.glob("flink-dist*.jar"))
    return ":".join(str(j) for j in jars)


def run_jvm(cases: list[Case], limits: ValidationLimits = LIMITS) -> list[dict[str, Any]]:
    """Each case decoded by the job's ``DecodeEvent`` (newest reader, every writer)."""
    versions = schema_versions("event")
    writers = ",".join(f"{v}=event.v{v}.avsc" for v in versions)
    blob = bytearray()
    for case in cases:
        for block in (case.header, case.value):
            if block is None:
                blob += struct.pack(">i", -1)
            else:
                blob += struct.pack(">i", len(block)) + block
    cmd = ["java", "-cp", _classpath(), "io.streamscore.udf.DecodeCorpus", writers, f"event.v{max(versions)}.avsc",
           str(limits.max_key_bytes), str(limits.min_ts_ms), str(limits.max_ts_ms),
           repr(float(limits.min_dwell_ms)), repr(float(limits.max_dwell_ms))]
    res = subprocess.run(cmd, input=bytes(blob), capture_output=True, cwd=ROOT, timeout=300, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"DecodeCorpus failed ({res.returncode}): {res.stderr.decode()[-3000:]}")
    lines = res.stdout.decode().splitlines()
    if len(lines) != len(cases):
        raise RuntimeError(f"DecodeCorpus gave {len(lines)} lines for {len(cases)} cases")
    return [json.loads(line) for line in lines]

