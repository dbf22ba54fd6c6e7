"""Avro codecs for every topic, and the event validation rules.

The Flink job decodes events in the JVM (``io.streamscore.udf.DecodeEvent``); this module
is the Python twin used by the generator, the Beam pipelines, the plain-Python peer and
the readers. Both apply the same rules, which tests check on the same bad records.

Schema evolution: an event's writer schema is ``schemas/event.v<N>.avsc``, named by the
Kafka header ``schema-version`` (ASCII decimal, e.g. ``b"2"``; absent = 1). The job reads
every writer with the newest event schema by Avro resolution; ``schema_compat`` proves at
start that it can. A header that is not a decimal version, or names a version with no
schema file, dead-letters the record as ``unknown_schema_version`` (checked before the
value is decoded).

Duplicates: event_id is not a deduplication key. The job does not deduplicate; each copy
of a repeated event_id is processed as its own event (counted in every feature). Producers
that need exactly-once counts must not resend.

>>> raw = encode_event(make_event("e1", "u1", "i1", 1000, "click"))
>>> decode_event(raw)["user_id"]
'u1'
>>> try_decode_event(b"\\x00")[1]
'undecodable'
"""

from __future__ import annotations

import enum
import io
import json
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import fastavro

from transforms.event_decoder import AvroDecodeError, RecordPlan, compile_plan

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
EVENT_TYPES = ("impression", "click", "dwell")
SCHEMA_VERSION_HEADER = "schema-version"  # Kafka header naming the event's writer schema version
MAX_VERSION_DIGITS = 9


# strings bounded like keys but allowed empty: item_category is part of an entity key,
# device and region are fairness attributes carried to scoring
BOUNDED_STRINGS = ("item_category", "device", "region")


class DeadLetterReason(enum.StrEnum):
    """Every reason a record can be dead-lettered; the ``reason`` field of dead-letters."""

    UNDECODABLE = "undecodable"  # not Avro of the event schema (transforms.event_decoder): cut, trailing
    # bytes, invalid UTF-8 in a string, bad enum/union index, over-long varint, negative length
    INVALID_KEY = "invalid_key"  # empty or over-long event_id / user_id / item_id; over-long
    # item_category / device / region
    INVALID_TIMESTAMP = "invalid_timestamp"  # ts_ms outside [min_ts_ms, max_ts_ms]
    INVALID_DWELL = "invalid_dwell"  # dwell_ms NaN or outside [min_dwell_ms, max_dwell_ms]
    LATE = "late"  # event time at or behind the watermark when it arrived
    UNKNOWN_SCHEMA_VERSION = "unknown_schema_version"  # schema-version header garbled or of no known schema


class CodecError(ValueError):
    """A record could not be encoded or decoded."""


@dataclass(frozen=True)
class ValidationLimits:
    """Bounds applied to decoded events (passed to the JVM decoder as literals).

    A key is accepted with 1 to ``max_key_bytes`` UTF-8 bytes, ``ts_ms`` within
    ``[min_ts_ms, max_ts_ms]`` and ``dwell_ms`` within ``[min_dwell_ms, max_dwell_ms]``
    (bounds included; NaN and infinities never are)."""

    max_key_bytes: int = 256
    min_ts_ms: int = 0
    max_ts_ms: int = 4_102_444_800_000  # 2100-01-01T00:00:00Z
    min_dwell_ms: float = 0.0
    max_dwell_ms: float = 86_400_000.0  # one day: a longer dwell is a client bug, not a reading

    def __post_init__(self) -> None:
        if self.max_key_bytes <= 0:
            raise ValueError("max_key_bytes must be positive")
        if self.min_ts_ms > self.max_ts_ms:
            raise ValueError("min_ts_ms must not exceed max_ts_ms")
        if not (math.isfinite(self.min_dwell_ms) and math.isfinite(self.max_dwell_ms)
                and self.min_dwell_ms <= self.max_dwell_ms):
            raise ValueError("min_dwell_ms and max_dwell_ms must be finite, min <= max")


@cache
def schema_path(name: str, version: int = 1) -> Path:
    """Path of ``schemas/<name>.v<version>.avsc``."""
    path = SCHEMA_DIR / f"{name}.v{version}.avsc"
    if not path.exists():
        raise FileNotFoundError(f"no schema {path.name} in {SCHEMA_DIR}")
    return path


@cache
def schema_json(name: str, version: int = 1) -> str:
    """The schema file's JSON text, compacted."""
    return json.dumps(json.loads(schema_path(name, version).read_text()))


@cache
def parsed_schema(name: str, version: int = 1) -> Any:
    return fastavro.parse_schema(json.loads(schema_path(name, version).read_text()))


def schema_versions(name: str, schema_dir: Path | None = None) -> tuple[int, ...]:
    """The versions N of every ``<name>.vN.avsc`` in the schemas folder, ascending."""
    out = []
    for path in (schema_dir or SCHEMA_DIR).glob(f"{name}.v*.avsc"):
        tail = path.name[len(name) + 2:-len(".avsc")]
        if tail.isdigit() and not tail.startswith("0"):
            out.append(int(tail))
    return tuple(sorted(out))


@cache
def known_versions(name: str) -> tuple[int, ...]:
    """``schema_versions`` of the project's schemas folder, read once per process."""
    return schema_versions(name)


def latest_version(name: str) -> int:
    """The newest schema version of ``name`` (the job's reader schema for events)."""
    versions = known_versions(name)
    if not versions:
        raise FileNotFoundError(f"no schema {name}.v*.avsc in {SCHEMA_DIR}")
    return versions[-1]


def parse_schema_version(header: bytes | None) -> int | None:
    """The writer version named by a ``schema-version`` header value: absent (None) is 1;
    1 to 9 ASCII digits without a leading zero give that number; anything else is None."""
    if header is None:
        return 1
    if not 0 < len(header) <= MAX_VERSION_DIGITS or header[:1] == b"0" or not all(0x30 <= b <= 0x39 for b in header):
        return None
    return int(header)


def header_schema_version(headers: Any) -> int | None:
    """``parse_schema_version`` of a Kafka message's headers (confluent-kafka's list of
    ``(key, value)`` pairs, a dict, or None); of repeated keys the last wins, as in the job."""
    if not headers:
        return 1
    pairs = headers.items() if isinstance(headers, dict) else headers
    value = None
    for key, val in pairs:
        if key == SCHEMA_VERSION_HEADER:
            value = val
    return parse_schema_version(value)


def make_event(
    event_id: str,
    user_id: str,
    item_id: str,
    ts_ms: int,
    event_type: str,
    dwell_ms: float = 0.0,
    device: str = "mobile",
    region: str = "eu",
) -> dict[str, Any]:
    """Build an event dict in schema field order."""
    return {
        "event_id": event_id,
        "user_id": user_id,
        "item_id": item_id,
        "ts_ms": int(ts_ms),
        "event_type": event_type,
        "dwell_ms": float(dwell_ms),
        "device": device,
        "region": region,
    }


def encode(record: dict[str, Any], name: str, version: int = 1) -> bytes:
    """Schemaless Avro encoding of ``record`` with ``schemas/<name>.v<version>.avsc``."""
    buf = io.BytesIO()
    try:
        fastavro.schemaless_writer(buf, parsed_schema(name, version), record)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
        raise CodecError(f"cannot encode {name}.v{version}: {exc}") from exc
    return buf.getvalue()


def decode(raw: bytes, name: str, version: int = 1, reader_version: int | None = None) -> Any:
    """Decode one schemaless Avro record; trailing bytes are an error."""
    buf = io.BytesIO(raw)
    reader = parsed_schema(name, reader_version) if reader_version is not None else None
    try:
        rec = fastavro.schemaless_reader(buf, parsed_schema(name, version), reader)
    except Exception as exc:  # fastavro raises many types on garbage input
        raise CodecError(f"undecodable {name}.v{version}: {type(exc).__name__}: {exc}") from exc
    if buf.tell() != len(raw):
        raise CodecError("trailing bytes after record")
    return rec


def encode_event(event: dict[str, Any], version: int = 1) -> bytes:
    return encode(event, "event", version)


def event_message(event: dict[str, Any]) -> tuple[bytes, list[tuple[str, bytes]] | None]:
    """Kafka value and headers of an event: event.v2 with a ``schema-version: 2`` header
    when it has an ``item_category`` key, else event.v1 and no header.

    >>> event_message({**make_event("e", "u", "i", 1, "click"), "item_category": "news"})[1]
    [('schema-version', b'2')]
    """
    if "item_category" in event:
        return encode_event(event, 2), [(SCHEMA_VERSION_HEADER, b"2")]
    return encode_event(event), None


@cache
def event_plan(version: int, reader_version: int | None = None) -> RecordPlan:
    """The strict decoder (``transforms.event_decoder``) of event.v<version> records read
    as event.v<reader_version> (None: as written)."""
    writer = json.loads(schema_path("event", version).read_text())
    reader = writer if reader_version is None else json.loads(schema_path("event", reader_version).read_text())
    return compile_plan(writer, reader)


def decode_event(raw: bytes, version: int = 1) -> dict[str, Any]:
    """One event under the strict rule, without validation; ``CodecError`` when undecodable."""
    try:
        return event_plan(version).decode(raw)
    except AvroDecodeError as exc:
        raise CodecError(f"undecodable event.v{version}: {exc}") from exc


def validate_event(event: dict[str, Any], limits: ValidationLimits = ValidationLimits()) -> tuple[DeadLetterReason, str] | None:
    """Return ``(reason, detail)`` for an invalid decoded event, ``None`` for a good one."""
    for key in ("event_id", "user_id", "item_id"):
        value = event.get(key)
        if not value:
            return DeadLetterReason.INVALID_KEY, f"{key} is empty"
        if len(str(value).encode("utf-8")) > limits.max_key_bytes:
            return DeadLetterReason.INVALID_KEY, f"{key} longer than {limits.max_key_bytes} bytes"
    for key in BOUNDED_STRINGS:  # may be empty (or null), never longer than a key
        value = event.get(key)
        if value and len(value.encode("utf-8")) > limits.max_key_bytes:
            return DeadLetterReason.INVALID_KEY, f"{key} longer than {limits.max_key_bytes} bytes"
    ts_ms = event["ts_ms"]
    if ts_ms < limits.min_ts_ms or ts_ms > limits.max_ts_ms:
        return DeadLetterReason.INVALID_TIMESTAMP, f"ts_ms {ts_ms} outside [{limits.min_ts_ms}, {limits.max_ts_ms}]"
    dwell = event["dwell_ms"]
    if not limits.min_dwell_ms <= dwell <= limits.max_dwell_ms:  # False for NaN
        return DeadLetterReason.INVALID_DWELL, f"dwell_ms {dwell} outside [{limits.min_dwell_ms}, {limits.max_dwell_ms}]"
    return None


def try_decode_event(
    raw: bytes | None,
    limits: ValidationLimits = ValidationLimits(),
    version: int | None = 1,
    reader_version: int | None = None,
) -> tuple[dict[str, Any] | None, str | None, str | None]:
    """Decode and validate: ``(event, None, None)`` or ``(None, reason, detail)``.

    ``version`` is the writer version (``header_schema_version`` of the message; None for a
    garbled header). ``reader_version`` reads by Avro resolution, as the job does with the
    newest; None reads with the writer schema itself, which gives the same reason for every
    writer that ``schema_compat`` admits."""
    known = known_versions("event")
    if version is None:
        return None, DeadLetterReason.UNKNOWN_SCHEMA_VERSION.value, "schema-version header is not a decimal version"
    if version not in known:
        return (None, DeadLetterReason.UNKNOWN_SCHEMA_VERSION.value,
                f"schema-version {version} is not a known event schema (known: {', '.join(map(str, known))})")
    if not raw:
        return None, DeadLetterReason.UNDECODABLE.value, "empty value"
    try:
        event = event_plan(version, reader_version).decode(raw)
    except AvroDecodeError as exc:
        return None, DeadLetterReason.UNDECODABLE.value, str(exc)
    problem = validate_event(event, limits)
    if problem is not None:
        return None, problem[0].value, problem[1]
    return event, None, None
