"""Bounded dead letters (transforms/dead_letters.py, schemas/dead_letter.v2.avsc) and the
Kafka size limits they are bounded against (jobs/kafka_limits.py): no input record makes
a dead letter the sinks cannot write."""

from __future__ import annotations

import hashlib
import json

import pytest

from jobs import kafka_limits
from jobs.config import JobConfig
from jobs.flink_job import _kafka_sink, dead_letters_insert, source_ddl
from jobs.kafka_local import TOPICS, BrokerConfig, topics_for
from transforms.codecs import SCHEMA_DIR, CodecError, encode, schema_path
from transforms.dead_letters import (
    DEAD_LETTER_SCHEMA_VERSION,
    DEFAULT_MAX_RAW_BYTES,
    MAX_DETAIL_CHARS,
    MAX_RAW_BYTES_LIMIT,
    bound_raw,
    dead_letter,
    decode_dead_letter,
    encode_dead_letter,
    max_dead_letter_bytes,
)
from transforms.schema_compat import incompatible_writers
from transforms.spec import load_spec

# FIPS 180-2 / NIST test vectors
KNOWN_SHA256 = [
    (b"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
    (b"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
    (b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
     "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"),
    (b"a" * 1_000_000, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"),
]


@pytest.mark.parametrize("value,digest", KNOWN_SHA256, ids=["empty", "abc", "448-bit", "million-a"])
def test_digest_and_size_are_of_the_whole_value(value, digest):
    b = bound_raw(value, DEFAULT_MAX_RAW_BYTES)
    assert b.sha256 == digest and b.size == len(value)
    assert b.raw == value[:DEFAULT_MAX_RAW_BYTES]
    assert b.truncated == (len(value) > DEFAULT_MAX_RAW_BYTES)


@pytest.mark.parametrize("n,expect_truncated", [(0, False), (9, False), (10, False), (11, True), (5_000_000, True)])
def test_raw_is_the_exact_prefix_and_truncated_only_when_cut(n, expect_truncated):
    value = bytes(i % 251 for i in range(n))
    d = dead_letter("undecodable", "trailing bytes", "events", 3, 17, value, 10)
    assert d["raw"] == value[:10] and d["raw_size"] == n and d["raw_truncated"] is expect_truncated
    assert d["raw_sha256"] == hashlib.sha256(value).hexdigest()
    assert (d["source_topic"], d["source_partition"], d["source_offset"]) == ("events", 3, 17)
    assert d["schema_version"] == DEAD_LETTER_SCHEMA_VERSION == 2


def test_none_is_an_empty_value_and_zero_keeps_only_the_digest():
    assert dead_letter("undecodable", None, "t", 0, 0, None)["raw_size"] == 0
    d = dead_letter("undecodable", "x", "t", 0, 0, b"abc", 0)
    assert d["raw"] == b"" and d["raw_truncated"] and d["raw_sha256"] == KNOWN_SHA256[1][1]


@pytest.mark.parametrize("bad", [-1, MAX_RAW_BYTES_LIMIT + 1, True, 1.5])
def test_the_prefix_bound_is_validated(bad):
    with pytest.raises(ValueError, match="max raw bytes"):
        bound_raw(b"x", bad)


def test_an_encoded_dead_letter_stays_within_its_bound_however_large_the_input():
    worst_detail = "\U0001f600" * (MAX_DETAIL_CHARS * 3)  # 4 UTF-8 bytes a character, cut to MAX_DETAIL_CHARS
    for max_raw in (0, DEFAULT_MAX_RAW_BYTES, MAX_RAW_BYTES_LIMIT):
        d = dead_letter("unknown_schema_version", worst_detail, "t" * 249, 2**31 - 1, 2**63 - 1,
                        b"\xff" * (kafka_limits.MESSAGE_MAX_BYTES + 1), max_raw)
        assert len(d["detail"]) == MAX_DETAIL_CHARS
        assert len(encode_dead_letter(d)) <= max_dead_letter_bytes(max_raw) < kafka_limits.SINK_MAX_REQUEST_BYTES


def test_every_version_decodes_as_the_newest():
    d = dead_letter("late", "ts", "events", 0, 5, b"\x02\x04", 64)
    assert decode_dead_letter(encode_dead_letter(d)) == d
    v1 = {k: d[k] for k in ("reason", "detail", "source_topic", "source_partition", "source_offset", "raw")}
    got = decode_dead_letter(encode({**v1, "schema_version": 1}, "dead_letter", 1))
    assert got == {**v1, "schema_version": 1, "raw_size": -1, "raw_sha256": "", "raw_truncated": False}
    with pytest.raises(CodecError, match="not a dead letter"):
        decode_dead_letter(encode_dead_letter(d) + b"\x00")


def test_v2_adds_three_defaulted_fields_and_reads_v1():
    v1 = json.loads(schema_path("dead_letter", 1).read_text())
    v2 = json.loads(schema_path("dead_letter", 2).read_text())
    assert [f["name"] for f in v2["fields"]] == [f["name"] for f in v1["fields"]] + [
        "raw_size", "raw_sha256", "raw_truncated"]
    assert all("default" in f for f in v2["fields"][len(v1["fields"]):])
    assert incompatible_writers(SCHEMA_DIR, "dead_letter") == {}


def test_config_field_default_env_and_validation(monkeypatch):
    assert JobConfig().dead_letter_max_raw_bytes == DEFAULT_MAX_RAW_BYTES == 65_536
    monkeypatch.setenv("STREAMSCORE_DEAD_LETTER_MAX_RAW_BYTES", "1024")
    assert JobConfig.from_env().dead_letter_max_raw_bytes == 1024
    for bad in (-1, MAX_RAW_BYTES_LIMIT + 1):
        with pytest.raises(ValueError, match="max raw bytes"):
            JobConfig(dead_letter_max_raw_bytes=bad)


def test_the_job_bounds_both_dead_letter_branches():
    cfg = JobConfig(dead_letter_max_raw_bytes=4321)
    sql = dead_letters_insert(cfg, load_spec())
    assert sql.count("raw_digest(`raw_value`, 4321)") == 2  # decode failures and late events
    assert "`raw_value`" not in sql.replace("raw_digest(`raw_value`, 4321)", "")
    assert f"SUBSTRING(d.detail FROM 1 FOR {MAX_DETAIL_CHARS})" in sql
    ddl = _kafka_sink("dead_letters_sink", "dead-letters", "dead_letter", "", cfg)
    assert "`raw_size` BIGINT NOT NULL, `raw_sha256` STRING NOT NULL, `raw_truncated` BOOLEAN NOT NULL" in ddl


def test_limits_are_consistent():
    assert kafka_limits.max_value_bytes() == 10_485_686
    assert kafka_limits.batch_bytes(kafka_limits.max_value_bytes()) == kafka_limits.MESSAGE_MAX_BYTES
    assert kafka_limits.batch_bytes(kafka_limits.max_value_bytes() + 1) > kafka_limits.MESSAGE_MAX_BYTES
    assert kafka_limits.max_value_bytes(key_bytes=10) == 10_485_686 - 10
    for name, (_, conf) in {**TOPICS, **topics_for(BrokerConfig(events_partitions=2))}.items():
        assert conf["max.message.bytes"] == str(kafka_limits.MESSAGE_MAX_BYTES), name
    cfg = JobConfig()
    for schema, key in (("dead_letter", ""), ("scored_result", "key"), ("feature_snapshot", "key")):
        assert f"'properties.max.request.size'='{kafka_limits.SINK_MAX_REQUEST_BYTES}'" in _kafka_sink(
            "s", "t", schema, key, cfg)
    # the source fetches a largest batch whole (its setting lives in source_ddl)
    assert f"'properties.max.partition.fetch.bytes'='{kafka_limits.SOURCE_MAX_PARTITION_FETCH_BYTES}'" in source_ddl(
        cfg, load_spec())
    assert kafka_limits.SOURCE_MAX_PARTITION_FETCH_BYTES >= kafka_limits.MESSAGE_MAX_BYTES
    assert kafka_limits.PRODUCER_MESSAGE_MAX_BYTES >= kafka_limits.MESSAGE_MAX_BYTES
    assert max_dead_letter_bytes(MAX_RAW_BYTES_LIMIT) * 8 < kafka_limits.SINK_MAX_REQUEST_BYTES
