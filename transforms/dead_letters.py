"""Bounded dead letters: one oversized input record cannot make a dead-letter too large to write.

A dead letter (``schemas/dead_letter.v2.avsc``) keeps at most the first ``max_raw_bytes``
bytes of the source value in ``raw``, plus ``raw_size`` (the whole value's length),
``raw_sha256`` (hex SHA-256 of the whole value) and ``raw_truncated`` (``raw`` is a strict
prefix). ``detail`` keeps at most ``MAX_DETAIL_CHARS`` characters. Every field but ``raw``
and ``detail`` is small and bounded, so an encoded dead letter never exceeds
``max_dead_letter_bytes(max_raw_bytes)``, far below the producers' request limit
(``jobs/kafka_limits.py``). The Flink job computes the same fields in the JVM
(``io.streamscore.udf.RawDigest``); the Python producers use ``dead_letter``.

>>> d = dead_letter("undecodable", "trailing bytes", "events", 0, 7, b"abcdef", 4)
>>> d["raw"], d["raw_size"], d["raw_truncated"], d["schema_version"]
(b'abcd', 6, True, 2)
>>> d["raw_sha256"] == hashlib.sha256(b"abcdef").hexdigest()
True
>>> decode_dead_letter(encode_dead_letter(d)) == d
True
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from transforms.codecs import CodecError, decode, encode, known_versions

DEAD_LETTER_SCHEMA_VERSION = 2  # the dead_letter.vN every producer writes (the newest)
DEFAULT_MAX_RAW_BYTES = 65_536  # raw bytes kept per dead letter unless configured
MAX_RAW_BYTES_LIMIT = 1_048_576  # the largest prefix the configuration accepts (1 MiB)
MAX_DETAIL_CHARS = 4_096  # detail is cut to this many characters
_FIXED_FIELDS_BYTES = 1_024  # reason, topic (<= 249), ints, digest, flag and Avro lengths, generously


@dataclass(frozen=True)
class BoundedRaw:
    """A source value cut to a prefix, with what identifies the whole value."""

    raw: bytes
    size: int
    sha256: str
    truncated: bool


def check_max_raw_bytes(max_raw_bytes: int) -> int:
    """``max_raw_bytes`` if it is in ``[0, MAX_RAW_BYTES_LIMIT]``, else ValueError.

    >>> check_max_raw_bytes(65_536)
    65536
    >>> check_max_raw_bytes(-1)
    Traceback (most recent call last):
    ...
    ValueError: dead-letter max raw bytes must be in [0, 1048576], got -1
    """
    if isinstance(max_raw_bytes, bool) or not isinstance(max_raw_bytes, int) \
            or not 0 <= max_raw_bytes <= MAX_RAW_BYTES_LIMIT:
        raise ValueError(f"dead-letter max raw bytes must be in [0, {MAX_RAW_BYTES_LIMIT}], got {max_raw_bytes!r}")
    return max_raw_bytes


def bound_raw(raw: bytes | None, max_raw_bytes: int) -> BoundedRaw:
    """The first ``max_raw_bytes`` bytes of ``raw`` (None is empty), its full size and digest.

    >>> bound_raw(b"", 4)
    BoundedRaw(raw=b'', size=0, sha256='e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855', truncated=False)
    >>> bound_raw(b"abc", 3).truncated, bound_raw(b"abcd", 3).truncated
    (False, True)
    """
    check_max_raw_bytes(max_raw_bytes)
    value = raw or b""
    return BoundedRaw(value[:max_raw_bytes], len(value), hashlib.sha256(value).hexdigest(),
                      len(value) > max_raw_bytes)


def bound_detail(detail: str | None) -> str:
    """``detail`` ('' for None) cut to ``MAX_DETAIL_CHARS`` characters.

    >>> len(bound_detail("x" * 10_000)), bound_detail(None)
    (4096, '')
    """
    return (detail or "")[:MAX_DETAIL_CHARS]


def dead_letter(reason: str, detail: str | None, topic: str, partition: int, offset: int, raw: bytes | None,
                max_raw_bytes: int = DEFAULT_MAX_RAW_BYTES) -> dict[str, Any]:
    """The bounded dead-letter record (``dead_letter.v2``) of one source record."""
    b = bound_raw(raw, max_raw_bytes)
    return {"reason": reason, "detail": bound_detail(detail), "source_topic": topic, "source_partition": partition,
            "source_offset": offset, "raw": b.raw, "schema_version": DEAD_LETTER_SCHEMA_VERSION,
            "raw_size": b.size, "raw_sha256": b.sha256, "raw_truncated": b.truncated}


def max_dead_letter_bytes(max_raw_bytes: int) -> int:
    """An upper bound of an encoded dead letter's size (detail at 4 UTF-8 bytes a character).

    >>> max_dead_letter_bytes(65_536)
    82944
    """
    return check_max_raw_bytes(max_raw_bytes) + 4 * MAX_DETAIL_CHARS + _FIXED_FIELDS_BYTES


def encode_dead_letter(record: dict[str, Any]) -> bytes:
    """Schemaless Avro of ``record`` with the newest dead-letter schema."""
    return encode(record, "dead_letter", DEAD_LETTER_SCHEMA_VERSION)


def decode_dead_letter(value: bytes) -> dict[str, Any]:
    """A dead letter of any version, as the newest schema reads it: tried as written by the
    newest first, then by each older one (resolved: a v1 record gets ``raw_size`` -1,
    ``raw_sha256`` '' and ``raw_truncated`` False). A newer record never decodes as an
    older one (its extra fields are trailing bytes), nor an older one as newer (it ends early).

    >>> v1 = {"reason": "late", "detail": "d", "source_topic": "t", "source_partition": 0,
    ...       "source_offset": 1, "raw": b"x", "schema_version": 1}
    >>> d = decode_dead_letter(encode(v1, "dead_letter", 1))
    >>> d["schema_version"], d["raw_size"], d["raw_sha256"], d["raw_truncated"]
    (1, -1, '', False)
    """
    newest = DEAD_LETTER_SCHEMA_VERSION
    errors = []
    for writer in sorted((v for v in known_versions("dead_letter") if v <= newest), reverse=True):
        try:
            rec = decode(value, "dead_letter", writer, newest)
        except CodecError as exc:
            errors.append(f"v{writer}: {exc}")
            continue
        if isinstance(rec, dict):
            return rec
    raise CodecError("not a dead letter of any known version: " + "; ".join(errors))
