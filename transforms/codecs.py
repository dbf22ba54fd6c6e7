"""Avro codecs for every topic, and the event validation rules.

The Flink job decodes events in the JVM (``io.streamscore.udf.DecodeEvent``); this module
is the Python twin used by the generator, the Beam pipelines, the plain-Python peer and
the readers. Both apply the same rules, which tests check on the same bad records.

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

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
EVENT_TYPES = ("impression", "click", "dwell")


class DeadLetterReason(enum.StrEnum):
    """Every reason a record can be dead-lettered; the ``reason`` field of dead-letters."""

    UNDECODABLE = "undecodable"  # not Avro of the event schema, truncated, trailing bytes
    INVALID_KEY = "invalid_key"  # empty or over-long event_id / user_id / item_id
    INVALID_TIMESTAMP = "invalid_timestamp"  # ts_ms outside the configured bounds
    INVALID_DWELL = "invalid_dwell"  # NaN, infinite or negative dwell_ms
    LATE = "late"  # event time at or behind the watermark when it arrived


class CodecError(ValueError):
    """A record could not be encoded or decoded."""


@dataclass(frozen=True)
class ValidationLimits:
    """Bounds applied to decoded events (mirrored by the JVM decoder's job parameters)."""

    max_key_bytes: int = 256
    min_ts_ms: int = 0
    max_ts_ms: int = 4_102_444_800_000  # 2100-01-01T00:00:00Z

    def __post_init__(self) -> None:
        if self.max_key_bytes <= 0:
            raise ValueError("max_key_bytes must be positive")
        if self.min_ts_ms > self.max_ts_ms:
            raise ValueError("min_ts_ms must not exceed max_ts_ms")


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


def decode_event(raw: bytes, version: int = 1) -> dict[str, Any]:
    rec = decode(raw, "event", version)
    if not isinstance(rec, dict):
        raise CodecError("event is not a record")
    return rec


def validate_event(event: dict[str, Any], limits: ValidationLimits = ValidationLimits()) -> tuple[DeadLetterReason, str] | None:
    """Return ``(reason, detail)`` for an invalid decoded event, ``None`` for a good one."""
    for key in ("event_id", "user_id", "item_id"):
        value = event.get(key)
        if not value:
            return DeadLetterReason.INVALID_KEY, f"{key} is empty"
        if len(str(value).encode("utf-8")) > limits.max_key_bytes:
            return DeadLetterReason.INVALID_KEY, f"{key} longer than {limits.max_key_bytes} bytes"
    ts_ms = event["ts_ms"]
    if ts_ms < limits.min_ts_ms or ts_ms > limits.max_ts_ms:
        return DeadLetterReason.INVALID_TIMESTAMP, f"ts_ms {ts_ms} outside [{limits.min_ts_ms}, {limits.max_ts_ms}]"
    dwell = event["dwell_ms"]
    if math.isnan(dwell) or math.isinf(dwell) or dwell < 0:
        return DeadLetterReason.INVALID_DWELL, f"dwell_ms {dwell}"
    return None


def try_decode_event(
    raw: bytes | None, limits: ValidationLimits = ValidationLimits(), version: int = 1
) -> tuple[dict[str, Any] | None, str | None, str | None]:
    """Decode and validate: ``(event, None, None)`` or ``(None, reason, detail)``."""
    if not raw:
        return None, DeadLetterReason.UNDECODABLE.value, "empty value"
    try:
        event = decode_event(raw, version)
    except CodecError as exc:
        return None, DeadLetterReason.UNDECODABLE.value, str(exc)
    problem = validate_event(event, limits)
    if problem is not None:
        return None, problem[0].value, problem[1]
    return event, None, None
