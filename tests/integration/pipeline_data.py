"""The known event set of the end-to-end tests: hand-written events with hand-computed
features, then generated traffic with out-of-order, late and malformed records."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from jobs.generator import (
    BASE_TS_MS,
    EXPECTED_REASON,
    MALFORMED_KINDS,
    TrafficConfig,
    generate_events,
    malformed_record,
)
from transforms.codecs import CodecError, decode_event, event_message, make_event

T0 = BASE_TS_MS - 3_600_000  # an hour before the generated traffic; a multiple of 60 s


def hand_events() -> list[dict]:
    e = make_event
    return [
        e("h1", "alice", "i1", T0 + 1_000, "impression"),
        e("h2", "alice", "i2", T0 + 2_000, "impression"),
        e("h5", "alice", "i3", T0 + 1_500, "impression"),  # out of order, within the delay
        e("h3", "alice", "i1", T0 + 2_500, "click"),
        e("h4", "alice", "i1", T0 + 4_000, "dwell", 3_000.0),
        # event.v2 with item_category: the user x category pair (the separator is escaped)
        {**e("h10", "carol", "i7", T0 + 3_000, "impression"), "item_category": "news"},
        {**e("h11", "carol", "i7", T0 + 4_000, "click"), "item_category": "news"},
        {**e("h12", "carol", "i8", T0 + 5_000, "impression"), "item_category": "a|b"},
        {**e("h13", "carol", "i9", T0 + 5_500, "impression"), "item_category": None},  # no pair
        e("h6", "bob", "i1", T0 + 6_000, "impression"),
        e("h7", "alice", "i1", T0 + 12_000, "dwell", 5_000.0),
        # 9000 <= watermark 12000 - 2000: late, but within item_tumble_10s's 3 s allowed lateness
        e("h8", "alice", "i2", T0 + 9_000, "impression"),
        e("h9", "bob", "i2", T0 + 25_000, "click"),
    ]


@dataclass
class Sent:
    records: list[tuple[bytes, bytes, list | None]] = field(default_factory=list)  # (key, value, headers) in order
    good: list[dict] = field(default_factory=list)  # decodable, valid events in order
    bad: dict[int, tuple[bytes, str]] = field(default_factory=dict)  # offset -> (raw, expected reason)


def build(n_generated: int = 20_000, malformed_every: int = 400) -> Sent:
    sent = Sent()
    rng = random.Random(11)
    for ev in hand_events():
        sent.records.append((ev["user_id"].encode(), *event_message(ev)))
        sent.good.append(ev)
    cfg = TrafficConfig(seed=21, n_users=2_000, n_items=500, out_of_order_fraction=0.05, late_fraction=0.003,
                        tardy_fraction=0.01)
    for i, ev in enumerate(generate_events(n_generated, cfg)):  # event.v2 (item_category), with header
        sent.records.append((ev["user_id"].encode(), *event_message(ev)))
        sent.good.append(ev)
        if (i + 1) % malformed_every == 0:
            kind = MALFORMED_KINDS[(i // malformed_every) % len(MALFORMED_KINDS)]
            raw = malformed_record(kind, rng, ev)
            sent.bad[len(sent.records)] = (raw, EXPECTED_REASON[kind])  # offset in a 1-partition topic
            sent.records.append((b"bad", raw, None))
    return sent


def dead_letter_event_id(dead_letter: dict) -> str:
    """The event_id of a dead-lettered good event, written as event.v1 or event.v2."""
    try:
        return decode_event(dead_letter["raw"])["event_id"]
    except CodecError:  # a v2 record: trailing bytes for the v1 schema
        return decode_event(dead_letter["raw"], 2)["event_id"]


def produce(bootstrap: str, topic: str, sent: Sent) -> None:
    from jobs.kafka_io import producer

    p = producer(bootstrap)
    for key, value, headers in sent.records:
        p.produce(topic, key=key, value=value, **({"headers": headers} if headers else {}))
        p.poll(0)
    assert p.flush(30) == 0
