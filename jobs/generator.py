"""Seeded synthetic interaction traffic (``streamscore generate``).

Users and items are Zipf-distributed; users browse in sessions of impressions; a click
follows an impression with a probability set by a hidden user-item affinity (dot product
of latent vectors plus user and item biases), and a click is followed by a dwell whose
length also grows with affinity. Optional out-of-order (within the watermark delay) and
late (beyond it) events, and malformed records for the dead-letter path.

The same seed and config give the same events, in the same order.
"""

from __future__ import annotations

import math
import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from transforms.codecs import SCHEMA_VERSION_HEADER, encode_event

DEVICES = ("mobile", "desktop", "tablet")
DEVICE_P = (0.6, 0.3, 0.1)
REGIONS = ("eu", "na", "apac", "latam")
REGION_P = (0.35, 0.3, 0.25, 0.1)
BASE_TS_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MAX_SESSION_IMPRESSIONS = 40
MAX_DWELL_MS = 60_000.0


@dataclass(frozen=True)
class TrafficConfig:
    """Shape of the generated traffic."""

    seed: int = 7
    n_users: int = 20_000
    n_items: int = 5_000
    zipf_a: float = 1.1  # Zipf exponent of user activity and item popularity
    latent_dim: int = 8
    event_rate_per_s: float = 5_000.0  # events per second of event time
    mean_session_impressions: float = 8.0
    mean_gap_ms: float = 1_500.0  # between impressions in a session
    base_ts_ms: int = BASE_TS_MS
    out_of_order_fraction: float = 0.0  # displaced back in time, but within ooo_max_ms
    out_of_order_max_ms: int = 1_500  # keep below the spec's watermark_delay_ms
    late_fraction: float = 0.0  # displaced back by late_ms: late for the watermark
    late_ms: int = 120_000
    # displaced back by tardy_min_ms..tardy_max_ms: around the watermark, so some are on
    # time, some late but within a group's allowed lateness, some beyond it
    tardy_fraction: float = 0.0
    tardy_min_ms: int = 1_000
    tardy_max_ms: int = 7_000
    item_categories: bool = True  # events carry item_category (event.v2; null for every fifth item)

    def __post_init__(self) -> None:
        if self.n_users < 1 or self.n_items < 1:
            raise ValueError("n_users and n_items must be >= 1")
        if self.event_rate_per_s <= 0 or self.mean_session_impressions < 1:
            raise ValueError("event_rate_per_s must be > 0 and mean_session_impressions >= 1")
        for name in ("out_of_order_fraction", "late_fraction", "tardy_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1)")
        if self.out_of_order_fraction + self.late_fraction + self.tardy_fraction >= 1.0:
            raise ValueError("out_of_order_fraction + late_fraction + tardy_fraction must be < 1")
        if not 0 < self.tardy_min_ms <= self.tardy_max_ms:
            raise ValueError("need 0 < tardy_min_ms <= tardy_max_ms")


def _zipf_weights(n: int, a: float, rng: np.random.Generator) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** a
    rng.shuffle(w)
    return w / w.sum()


class TrafficModel:
    """The hidden world: latent vectors, biases and per-user device and region."""

    def __init__(self, cfg: TrafficConfig) -> None:
        rng = np.random.default_rng(cfg.seed)
        self.cfg = cfg
        self.user_p = _zipf_weights(cfg.n_users, cfg.zipf_a, rng)
        self.item_p = _zipf_weights(cfg.n_items, cfg.zipf_a, rng)
        self.user_vec = rng.normal(0, 1, (cfg.n_users, cfg.latent_dim)) / math.sqrt(cfg.latent_dim)
        self.item_vec = rng.normal(0, 1, (cfg.n_items, cfg.latent_dim)) / math.sqrt(cfg.latent_dim)
        self.user_bias = rng.normal(0, 1.0, cfg.n_users)
        self.item_bias = rng.normal(0, 0.5, cfg.n_items)
        self.user_device = rng.choice(len(DEVICES), cfg.n_users, p=DEVICE_P)
        self.user_region = rng.choice(len(REGIONS), cfg.n_users, p=REGION_P)

    def click_prob(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        aff = 2.5 * np.einsum("ij,ij->i", self.user_vec[users], self.item_vec[items])
        logit = aff + self.user_bias[users] + self.item_bias[items] - 2.6
        return 1.0 / (1.0 + np.exp(-logit))


def _session_block(model: TrafficModel, rng: np.random.Generator, n_sessions: int, t0_ms: float,
                   span_ms: float) -> dict[str, np.ndarray]:
    cfg = model.cfg
    users = rng.choice(cfg.n_users, n_sessions, p=model.user_p)
    starts = t0_ms + rng.uniform(0, span_ms, n_sessions)
    n_imp = np.minimum(rng.geometric(1.0 / cfg.mean_session_impressions, n_sessions), MAX_SESSION_IMPRESSIONS)
    sess = np.repeat(np.arange(n_sessions), n_imp)
    # impression times: session start + cumulative exponential gaps
    gaps = np.minimum(rng.exponential(cfg.mean_gap_ms, sess.size), 4 * cfg.mean_gap_ms)
    first = np.r_[0, np.cumsum(n_imp)[:-1]]
    cum = np.cumsum(gaps)
    offs = cum - np.repeat(cum[first] - gaps[first], n_imp)
    imp_ts = starts[sess] + offs  # first impression one gap after the session start
    imp_users = users[sess]
    imp_items = rng.choice(cfg.n_items, sess.size, p=model.item_p)
    p = model.click_prob(imp_users, imp_items)
    clicked = rng.random(sess.size) < p
    click_ts = imp_ts + rng.uniform(200, 2_000, sess.size)
    dwell_ms = np.exp(rng.normal(8.0 + 1.5 * p, 0.6, sess.size))  # ~3 s .. 20 s
    dwell_ms = np.minimum(dwell_ms, MAX_DWELL_MS)
    dwell_ts = click_ts + dwell_ms
    c = clicked
    ts = np.concatenate([imp_ts, click_ts[c], dwell_ts[c]])
    user = np.concatenate([imp_users, imp_users[c], imp_users[c]])
    item = np.concatenate([imp_items, imp_items[c], imp_items[c]])
    etype = np.concatenate([np.zeros(sess.size, np.int8), np.ones(c.sum(), np.int8), np.full(c.sum(), 2, np.int8)])
    dwell = np.concatenate([np.zeros(sess.size), np.zeros(c.sum()), np.round(dwell_ms[c], 1)])
    return {"ts": ts.astype(np.int64), "user": user, "item": item, "etype": etype, "dwell": dwell}


ETYPES = ("impression", "click", "dwell")


def _max_session_span_ms(cfg: TrafficConfig) -> float:
    """Longest time from a session's start to its last event (impressions, click, dwell)."""
    return MAX_SESSION_IMPRESSIONS * 4 * cfg.mean_gap_ms + 2_000 + MAX_DWELL_MS


def generate_events(n_events: int, cfg: TrafficConfig = TrafficConfig()) -> Iterator[dict[str, Any]]:
    """Yield ``n_events`` events in arrival order (sorted by event time, then displaced
    for out-of-order and late events)."""
    model = TrafficModel(cfg)
    rng = np.random.default_rng(cfg.seed + 1)
    perturb = random.Random(cfg.seed + 2)
    events_per_session = cfg.mean_session_impressions * 1.2  # impressions + clicks + dwells, roughly
    block_ms = 20_000.0
    sessions_per_block = max(1, int(cfg.event_rate_per_s * block_ms / 1000 / events_per_session))
    # sessions overlap blocks: hold events until no later session can precede them, so the
    # undisplaced stream is in event-time order and only injected events are late
    horizon = block_ms + _max_session_span_ms(cfg)
    pending: dict[str, np.ndarray] | None = None
    t0 = float(cfg.base_ts_ms)
    emitted = 0
    while emitted < n_events:
        blk = _session_block(model, rng, sessions_per_block, t0, block_ms)
        t0 += block_ms
        pending = blk if pending is None else {k: np.concatenate([pending[k], blk[k]]) for k in blk}
        order = np.argsort(pending["ts"], kind="stable")
        pending = {k: v[order] for k, v in pending.items()}
        cut = int(np.searchsorted(pending["ts"], t0 - horizon))
        ready = {k: v[:cut] for k, v in pending.items()}
        pending = {k: v[cut:] for k, v in pending.items()}
        for i in range(ready["ts"].size):
            if emitted >= n_events:
                return
            u, it = int(ready["user"][i]), int(ready["item"][i])
            ts = int(ready["ts"][i])
            r = perturb.random()
            if r < cfg.late_fraction:
                ts -= cfg.late_ms
            elif r < cfg.late_fraction + cfg.out_of_order_fraction:
                ts -= perturb.randint(1, cfg.out_of_order_max_ms)
            elif r < cfg.late_fraction + cfg.out_of_order_fraction + cfg.tardy_fraction:
                ts -= perturb.randint(cfg.tardy_min_ms, cfg.tardy_max_ms)
            ev = {
                "event_id": f"e{cfg.seed}-{emitted}",
                "user_id": f"u{u}",
                "item_id": f"i{it}",
                "ts_ms": ts,
                "event_type": ETYPES[ready["etype"][i]],
                "dwell_ms": float(ready["dwell"][i]),
                "device": DEVICES[model.user_device[u]],
                "region": REGIONS[model.user_region[u]],
            }
            yield as_v2(ev) if cfg.item_categories else ev
            emitted += 1


MALFORMED_KINDS = ("random_bytes", "truncated", "empty", "nan_dwell", "inf_dwell", "negative_ts",
                   "far_future_ts", "empty_user", "huge_key", "trailing_bytes", "wrong_types",
                   "incompatible_schema", "v2_without_header", "invalid_utf8", "bad_enum_index",
                   "overlong_varint", "negative_length", "huge_dwell")
# bad records that need a schema-version header (``malformed_message``)
HEADER_KINDS = ("unknown_version", "garbled_version", "v1_with_v2_header", "v2_negative_ts", "v2_huge_key",
                "v2_nan_dwell", "v2_bad_union_index", "v2_invalid_utf8_category")
# byte sequences that are not well-formed UTF-8, by kind (transforms/event_decoder.py)
INVALID_UTF8 = {
    "lone_continuation": (b"\x80", b"ab\xbfcd"),
    "overlong": (b"\xc0\xaf", b"\xc1\xbf", b"\xe0\x80\xaf", b"\xf0\x80\x80\xaf"),
    "cesu8_surrogate": (b"\xed\xa0\x80", b"\xed\xa0\xbd\xed\xb8\x80", b"x\xed\xbf\xbf"),
    "cut_sequence": (b"ab\xe2\x82", b"\xe2\x82ab", b"\xf0\x9f\x98", b"\xc3"),
    "beyond_u10ffff": (b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\xff", b"\xfe\xfe"),
}
EVENT_STRING_FIELDS = ("event_id", "user_id", "item_id", "device", "region")
ITEM_CATEGORIES = ("news", "sport", "music", "video", "shop")


def as_v2(event: dict[str, Any]) -> dict[str, Any]:
    """The event as an event.v2 record: item_category from the item id, null for every fifth item."""
    digits = "".join(ch for ch in event["item_id"] if ch.isdigit())
    n = int(digits) if digits else len(event["item_id"])
    return {**event, "item_category": None if n % 5 == 4 else ITEM_CATEGORIES[n % len(ITEM_CATEGORIES)]}


def v2_headers(version: bytes = b"2") -> list[tuple[str, bytes]]:
    return [(SCHEMA_VERSION_HEADER, version)]


# written with schemas the job must not read: the wrong field type, and an enum with a
# symbol v1 does not have (a removed symbol the writer still uses)
_WRONG_TYPES_SCHEMA = {
    "type": "record", "name": "InteractionEvent", "namespace": "io.streamscore.v1",
    "fields": [{"name": "event_id", "type": "string"}, {"name": "user_id", "type": "string"},
               {"name": "item_id", "type": "string"}, {"name": "ts_ms", "type": "string"}],
}
_INCOMPATIBLE_SCHEMA = {
    "type": "record", "name": "InteractionEvent", "namespace": "io.streamscore.v1",
    "fields": [{"name": "event_id", "type": "string"}, {"name": "user_id", "type": "string"},
               {"name": "item_id", "type": "string"}, {"name": "ts_ms", "type": "long"},
               {"name": "event_type", "type": {"type": "enum", "name": "EventType",
                                               "symbols": ["impression", "click", "dwell", "share"]}}],
}


def zigzag(n: int) -> bytes:
    """Avro's varint of ``n`` (zig-zag, minimal length).

    >>> zigzag(-1), zigzag(64)
    (b'\\x01', b'\\x80\\x01')
    """
    u = (n << 1) ^ (n >> 63) if n < 0 else n << 1
    out = bytearray()
    while u > 0x7F:
        out.append((u & 0x7F) | 0x80)
        u >>= 7
    out.append(u)
    return bytes(out)


def event_parts(event: dict[str, Any], version: int = 1) -> list[tuple[str, bytes]]:
    """The Avro encoding of an event, field by field, so a test can corrupt one field."""
    parts = [(f, zigzag(len(event[f].encode())) + event[f].encode()) for f in ("event_id", "user_id", "item_id")]
    parts.append(("ts_ms", zigzag(event["ts_ms"])))
    parts.append(("event_type", zigzag(ETYPES.index(event["event_type"]))))
    parts.append(("dwell_ms", struct.pack("<d", event["dwell_ms"])))
    parts += [(f, zigzag(len(event[f].encode())) + event[f].encode()) for f in ("device", "region")]
    if version >= 2:
        cat = event.get("item_category")
        parts.append(("item_category", b"\x00" if cat is None else b"\x02" + zigzag(len(cat.encode())) + cat.encode()))
    return parts


def with_field(event: dict[str, Any], field: str, encoded: bytes, version: int = 1) -> bytes:
    """The event's bytes with ``field`` replaced by ``encoded`` (raw Avro)."""
    return b"".join(encoded if name == field else raw for name, raw in event_parts(event, version))


def _encode_with(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    import io

    import fastavro

    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), record)
    return buf.getvalue()


def malformed_record(kind: str, rng: random.Random, good: dict[str, Any]) -> bytes:
    """One bad record of ``kind``; each is rejected by the decoder with a known reason."""
    if kind == "random_bytes":
        return bytes([0xFF]) + bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 40)))
    if kind == "empty":
        return b""
    if kind == "truncated":
        raw = encode_event(good)
        return raw[: rng.randint(1, len(raw) - 2)]
    if kind == "trailing_bytes":
        return encode_event(good) + b"\x00\x01"
    if kind == "wrong_types":  # ts_ms as an ISO string: its first character is no enum index
        return _encode_with(_WRONG_TYPES_SCHEMA, {**good, "ts_ms": "2026-01-01T00:00:00Z"})
    if kind == "incompatible_schema":  # enum symbol 3 ("share") is not in v1
        return _encode_with(_INCOMPATIBLE_SCHEMA, {**good, "event_type": "share"})
    if kind == "v2_without_header":  # read as v1: item_category is trailing bytes
        return encode_event(as_v2(good), 2)
    if kind == "invalid_utf8":  # a string field holding bytes that are not UTF-8
        bad_utf8 = rng.choice([b for seqs in INVALID_UTF8.values() for b in seqs])
        return with_field(good, rng.choice(EVENT_STRING_FIELDS), zigzag(len(bad_utf8)) + bad_utf8)
    if kind == "bad_enum_index":  # event_type index outside the 3 symbols, negative or too large
        return with_field(good, "event_type", zigzag(rng.choice((-1, -7, 3, 100, 2**31 - 1))))
    if kind == "overlong_varint":  # ts_ms in 11 bytes, or a 10th byte beyond 64 bits
        return with_field(good, "ts_ms", rng.choice((b"\x80" * 10 + b"\x00", b"\xff" * 9 + b"\x02")))
    if kind == "negative_length":
        return with_field(good, rng.choice(EVENT_STRING_FIELDS), zigzag(-rng.randint(1, 1000)))
    bad = dict(good)
    if kind == "nan_dwell":
        bad["dwell_ms"] = float("nan")
    elif kind == "inf_dwell":
        bad["dwell_ms"] = float("inf")
    elif kind == "negative_ts":
        bad["ts_ms"] = -rng.randint(1, 10**12)
    elif kind == "far_future_ts":
        bad["ts_ms"] = 5_000_000_000_000 + rng.randint(0, 10**9)
    elif kind == "empty_user":
        bad["user_id"] = ""
    elif kind == "huge_key":
        bad["user_id"] = "u" * 10_000
    elif kind == "huge_dwell":  # finite, but past the default max_dwell_ms
        bad["dwell_ms"] = rng.choice((1e100, 1.797e308, 1e12))
    else:
        raise ValueError(f"unknown malformed kind {kind!r}")
    return encode_event(bad)


GARBLED_VERSIONS = (b"", b"v2", b"\xff\xfe", b"02", b"0", b"-1", b" 2", b"1234567890", b"2.0")


def malformed_message(kind: str, rng: random.Random, good: dict[str, Any]) -> tuple[bytes, list[tuple[str, bytes]] | None]:
    """One bad Kafka message of any kind in ``MALFORMED_KINDS + HEADER_KINDS``: value and headers."""
    if kind in MALFORMED_KINDS:
        return malformed_record(kind, rng, good), None
    if kind == "unknown_version":
        return encode_event(good), v2_headers(str(rng.choice((3, 9, 10, 123_456_789))).encode())
    if kind == "garbled_version":
        return encode_event(good), v2_headers(rng.choice(GARBLED_VERSIONS))
    if kind == "v1_with_v2_header":  # v2 reads one field past the end of a v1 record
        return encode_event(good), v2_headers()
    if kind == "v2_negative_ts":
        return encode_event({**as_v2(good), "ts_ms": -rng.randint(1, 10**12)}, 2), v2_headers()
    if kind == "v2_huge_key":
        return encode_event({**as_v2(good), "item_id": "i" * rng.randint(257, 5_000)}, 2), v2_headers()
    if kind == "v2_nan_dwell":
        return encode_event({**as_v2(good), "dwell_ms": float("nan")}, 2), v2_headers()
    if kind == "v2_bad_union_index":  # item_category's union has 2 branches
        return with_field(as_v2(good), "item_category", zigzag(rng.choice((-1, 2, 9))), 2), v2_headers()
    if kind == "v2_invalid_utf8_category":
        return with_field(as_v2(good), "item_category", b"\x02\x04\xed\xa0\x80x", 2), v2_headers()
    raise ValueError(f"unknown malformed kind {kind!r}")


EXPECTED_REASON = {
    "random_bytes": "undecodable", "truncated": "undecodable", "empty": "undecodable",
    "trailing_bytes": "undecodable", "nan_dwell": "invalid_dwell", "inf_dwell": "invalid_dwell",
    "negative_ts": "invalid_timestamp", "far_future_ts": "invalid_timestamp", "empty_user": "invalid_key",
    "huge_key": "invalid_key", "wrong_types": "undecodable", "incompatible_schema": "undecodable",
    "v2_without_header": "undecodable", "unknown_version": "unknown_schema_version",
    "garbled_version": "unknown_schema_version", "v1_with_v2_header": "undecodable",
    "v2_negative_ts": "invalid_timestamp", "v2_huge_key": "invalid_key", "v2_nan_dwell": "invalid_dwell",
    "invalid_utf8": "undecodable", "bad_enum_index": "undecodable", "overlong_varint": "undecodable",
    "negative_length": "undecodable", "huge_dwell": "invalid_dwell", "v2_bad_union_index": "undecodable",
    "v2_invalid_utf8_category": "undecodable",
}
