"""Kafka and Avro-file IO around the pure logic: producing generated traffic, writing
backfill files, and reading topics back (counts and decoded records)."""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastavro

from jobs.generator import EXPECTED_REASON, MALFORMED_KINDS, malformed_record
from jobs.kafka_limits import PRODUCER_MESSAGE_MAX_BYTES
from transforms.codecs import event_message, latest_version, parsed_schema


@dataclass
class ProduceReport:
    events: int = 0
    malformed: int = 0
    malformed_by_reason: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return self.events + self.malformed


def producer(bootstrap: str, **extra: Any) -> Any:
    from confluent_kafka import Producer

    from jobs.kafka_security import client_conf

    conf = client_conf(bootstrap, {"linger.ms": 20, "batch.size": 1_000_000,
                                   "queue.buffering.max.messages": 1_000_000, "compression.type": "lz4", "log_level": 3,
                                   # any value the broker accepts (librdkafka's default would refuse 1 MiB)
                                   "message.max.bytes": PRODUCER_MESSAGE_MAX_BYTES})
    conf.update(extra)
    return Producer(conf)


def produce_one(prod: Any, topic: str, key: bytes | None, value: bytes,
                headers: list[tuple[str, bytes]] | None = None) -> None:
    """``prod.produce`` that waits (serving delivery callbacks) while the queue is full;
    ``headers`` e.g. ``[("schema-version", b"2")]`` for an event.v2 value."""
    while True:
        try:
            prod.produce(topic, value=value, key=key, **({"headers": headers} if headers else {}))
            return
        except BufferError:
            prod.poll(0.05)


def produce_event(prod: Any, topic: str, event: dict[str, Any]) -> None:
    """Produce one event keyed by its user_id, as ``codecs.event_message`` encodes it."""
    produce_one(prod, topic, event["user_id"].encode(), *event_message(event))


def _progress(label: str, done: int, total: int | None, t0: float) -> None:
    rate = done / max(time.monotonic() - t0, 1e-9)
    of = f"/{total}" if total else ""
    print(f"\r[{label}] {done}{of} records, {rate:,.0f}/s", end="", file=sys.stderr, flush=True)


def produce_events(
    bootstrap: str,
    topic: str,
    events: Iterable[dict[str, Any]],
    *,
    total: int | None = None,
    rate_per_s: float | None = None,
    malformed_every: int = 0,
    seed: int = 7,
    progress: bool = True,
    linger_ms: int = 20,
) -> ProduceReport:
    """Produce events (key = user_id) to ``topic``; with ``malformed_every`` = k, one bad
    record of a rotating kind follows every k-th good one. ``rate_per_s`` paces the total;
    ``linger_ms`` is the producer's batching delay (0 for a paced replay)."""
    prod = producer(bootstrap, **{"linger.ms": linger_ms})
    rng = random.Random(seed)
    rep = ProduceReport()
    t0 = time.monotonic()
    sent = 0

    def send(key: bytes | None, value: bytes, headers: list[tuple[str, bytes]] | None = None) -> None:
        nonlocal sent
        produce_one(prod, topic, key, value, headers)
        sent += 1
        if rate_per_s:
            ahead = sent / rate_per_s - (time.monotonic() - t0)
            if ahead > 0.002:
                prod.poll(0)
                time.sleep(ahead)
        if sent % 50_000 == 0:
            prod.poll(0)
            if progress:
                _progress("produce", sent, total, t0)

    for ev in events:
        send(ev["user_id"].encode(), *event_message(ev))
        rep.events += 1
        if malformed_every and rep.events % malformed_every == 0:
            kind = MALFORMED_KINDS[rep.malformed % len(MALFORMED_KINDS)]
            send(b"bad", malformed_record(kind, rng, ev))
            rep.malformed += 1
            reason = EXPECTED_REASON[kind]
            rep.malformed_by_reason[reason] = rep.malformed_by_reason.get(reason, 0) + 1
    left = prod.flush(60)
    if left:
        raise RuntimeError(f"{left} records not delivered to {topic}")
    rep.seconds = time.monotonic() - t0
    if progress:
        _progress("produce", sent, total, t0)
        print(file=sys.stderr)
    return rep


def write_avro_file(path: Path, events: Iterable[dict[str, Any]], codec: str = "deflate") -> int:
    """Write events to an Avro object container file (for Beam backfills); return count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0

    def counted() -> Iterator[dict[str, Any]]:
        nonlocal n
        for ev in events:
            n += 1
            yield ev

    with open(path, "wb") as fh:  # the newest schema: v1 events (no item_category) get its null default
        fastavro.writer(fh, parsed_schema("event", latest_version("event")), counted(), codec=codec)
    return n


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    from jobs.kafka_security import check_connection, client_conf

    c = Consumer(client_conf(bootstrap, {"group.id": "streamscore-offsets", "log_level": 3}))
    try:
        try:
            md = c.list_topics(topic, timeout=10)
        except KafkaException:
            check_connection(bootstrap, timeout_s=5)  # KafkaAuthError when it is the credentials
            raise
        if md.topics[topic].error is not None:
            raise RuntimeError(f"topic {topic}: {md.topics[topic].error}")
        out = {}
        for p in md.topics[topic].partitions:
            lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            out[p] = hi
        return out
    finally:
        c.close()


def consume_until(c: Any, topic: str, ends: dict[int, int], timeout_s: float) -> Iterator[Any]:
    """Yield the good messages of an assigned consumer until every partition in ``ends``
    reaches its end offset (``ends`` is emptied as they do); TimeoutError otherwise.
    Transaction markers can occupy the last offsets, so the consumer position counts too."""
    from confluent_kafka import TopicPartition

    deadline = time.monotonic() + timeout_s
    while ends and time.monotonic() < deadline:
        for msg in c.consume(10_000, timeout=1.0):
            if msg.error():
                continue
            yield msg
            p = msg.partition()
            if p in ends and msg.offset() + 1 >= ends[p]:
                del ends[p]
        for tp in c.position([TopicPartition(topic, p) for p in list(ends)]):
            if tp.offset >= 0 and tp.offset >= ends.get(tp.partition, 0):
                ends.pop(tp.partition, None)
    if ends:
        raise TimeoutError(f"reading {topic}: partitions {sorted(ends)} not read to the end in {timeout_s}s")


def read_topic(
    bootstrap: str,
    topic: str,
    decode: Callable[[bytes], Any] | None = None,
    *,
    timeout_s: float = 60.0,
    read_committed: bool = True,
) -> list[tuple[bytes | None, Any, int]]:
    """Read ``topic`` from the beginning to its current end: ``(key, value, timestamp_ms)``
    with ``value`` decoded by ``decode`` when given."""
    from confluent_kafka import Consumer, TopicPartition

    from jobs.kafka_security import client_conf

    ends = end_offsets(bootstrap, topic)
    c = Consumer(client_conf(bootstrap, {
        "group.id": f"streamscore-reader-{time.time_ns()}",
        "enable.auto.commit": False, "auto.offset.reset": "earliest", "log_level": 3,
        "isolation.level": "read_committed" if read_committed else "read_uncommitted",
    }))
    out: list[tuple[bytes | None, Any, int]] = []
    try:
        todo = {p: hi for p, hi in ends.items() if hi > 0}
        c.assign([TopicPartition(topic, p, 0) for p in todo])
        for msg in consume_until(c, topic, todo, timeout_s):
            val = msg.value()
            out.append((msg.key(), decode(val) if decode else val, msg.timestamp()[1]))
    finally:
        c.close()
    return out


def committed_offsets(bootstrap: str, group_id: str, topic: str, partitions: Iterable[int]) -> dict[int, int]:
    """The offsets ``group_id`` committed on ``topic`` (-1 where none), without joining the group."""
    from confluent_kafka import Consumer, TopicPartition

    from jobs.kafka_security import client_conf

    c = Consumer(client_conf(bootstrap, {"group.id": group_id, "enable.auto.commit": False, "log_level": 3}))
    try:
        return {tp.partition: tp.offset for tp in c.committed([TopicPartition(topic, p) for p in partitions],
                                                              timeout=10)}
    finally:
        c.close()


def caught_up(bootstrap: str, group_id: str, topic: str, ends: dict[int, int]) -> bool:
    """Whether ``group_id`` has committed at least ``ends`` (partition -> offset) on ``topic``."""
    done = committed_offsets(bootstrap, group_id, topic, ends)
    return all(done.get(p, -1) >= hi for p, hi in ends.items())
