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
from transforms.codecs import encode_event, make_event

T0 = BASE_TS_MS - 3_600_000  # an hour before the generated traffic; a multiple of 60 s


def hand_events() -> list[dict]:
    e = make_event
    return [
        e("h1", "alice", "i1", T0 + 1_000, "impression"),
        e("h2", "alice", "i2", T0 + 2_000, "impression"),
        e("h5", "alice", "i3", T0 + 1_500, "impression"),  # out of order, within the delay
        e("h3", "alice", "i1", T0 + 2_500, "click"),
        e("h4", "alice", "i1", T0 + 4_000, "dwell", 3_000.0),
        e("h6", "bob", "i1", T0 + 6_000, "impression"),
        e("h7", "alice", "i1", T0 + 12_000, "dwell", 5_000.0),
        e("h8", "alice", "i2", T0 + 9_000, "impression"),  # 9000 <= watermark 12000 - 2000: late
        e("h9", "bob", "i2", T0 + 25_000, "click"),
    ]


@dataclass
class Sent:
    records: list[tuple[bytes, bytes]] = field(default_factory=list)  # (key, value) in order
    good: list[dict] = field(default_factory=list)  # decodable, valid events in order
    bad: dict[int, tuple[bytes, str]] = field(default_factory=dict)  # offset -> (raw, expected reason)


def build(n_generated: int = 20_000, malformed_every: int = 400) -> Sent:
    sent = Sent()
    rng = random.Random(11)
    for ev in hand_events():
        sent.records.append((ev["user_id"].encode(), encode_event(ev)))
        sent.good.append(ev)
    cfg = TrafficConfig(seed=21, n_users=2_000, n_items=500, out_of_order_fraction=0.05, late_fraction=0.003)
    for i, ev in enumerate(generate_events(n_generated, cfg)):
        sent.records.append((ev["user_id"].encode(), encode_event(ev)))
        sent.good.append(ev)
        if (i + 1) % malformed_every == 0:
            kind = MALFORMED_KINDS[(i // malformed_every) % len(MALFORMED_KINDS)]
            raw = malformed_record(kind, rng, ev)
            sent.bad[len(sent.records)] = (raw, EXPECTED_REASON[kind])  # offset in a 1-partition topic
            sent.records.append((b"bad", raw))
    return sent


def produce(bootstrap: str, topic: str, sent: Sent) -> None:
    from jobs.kafka_io import producer

    p = producer(bootstrap)
    for key, value in sent.records:
        p.produce(topic, key=key, value=value)
        p.poll(0)
    assert p.flush(30) == 0
