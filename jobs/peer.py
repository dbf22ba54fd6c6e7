"""The plain-Python peer of the benchmark: what a user would write instead of the Flink
job. A confluent-kafka consumer in batches, strict Avro decode (transforms/event_decoder.py) + validation, the same
windowing and features in dicts (``transforms.windowing``), one ONNX call per batch of
fired windows, and a producer for snapshots, scores and dead letters."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jobs.kafka_io import produce_one
from jobs.kafka_limits import PRODUCER_MESSAGE_MAX_BYTES
from transforms.codecs import encode, header_schema_version, try_decode_event
from transforms.dead_letters import DEFAULT_MAX_RAW_BYTES, dead_letter, encode_dead_letter
from transforms.scoring import load_router
from transforms.spec import FeatureSpec
from transforms.windowing import FiredWindow, StreamingFeatures, join_scoring


@dataclass
class PeerResult:
    events: int
    seconds: float
    snapshots: int
    scores: int
    dead_letters: int
    sample: dict[tuple[str, str, int], dict[str, float]]  # (group, entity, start) -> features

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def run_peer(bootstrap: str, events_topic: str, out_topics: dict[str, str], spec: FeatureSpec, registry: Path,
             max_events: int, sample_every: int = 97, dead_letter_max_raw_bytes: int = DEFAULT_MAX_RAW_BYTES
             ) -> PeerResult:
    """Process the first ``max_events`` records of ``events_topic`` (partition 0 onward);
    dead letters keep at most ``dead_letter_max_raw_bytes`` of each value, as the job's do."""
    from confluent_kafka import Consumer, Producer

    from jobs.kafka_security import client_conf

    router = load_router(registry, "gbdt", "mlp", spec.version)
    c = Consumer(client_conf(bootstrap, {"group.id": f"peer-{time.time_ns()}", "auto.offset.reset": "earliest",
                                         "enable.auto.commit": False, "fetch.max.bytes": 52_428_800, "log_level": 3}))
    p = Producer(client_conf(bootstrap, {"linger.ms": 5, "batch.size": 1_000_000, "compression.type": "lz4",
                                         "queue.buffering.max.messages": 2_000_000, "log_level": 3,
                                         # the broker's limit; dead letters stay far below it
                                         "message.max.bytes": PRODUCER_MESSAGE_MAX_BYTES}))
    c.subscribe([events_topic])
    w = StreamingFeatures(spec)
    n = snaps = scores = dls = 0
    sample: dict[tuple[str, str, int], dict[str, float]] = {}
    t0: float | None = None

    def emit(fired: list[FiredWindow], final: bool = False) -> None:
        nonlocal snaps, scores
        for f in fired:
            rec = {"entity_type": spec.group(f.group).entity, "entity_id": f.entity_id, "feature_group": f.group,
                   "window_start_ms": f.window_start_ms, "window_end_ms": f.window_end_ms, "features": f.features,
                   "feature_set_version": spec.version, "schema_version": 1}
            produce_one(p, out_topics["feature-snapshots"], f"{f.group}|{f.entity_id}".encode(), encode(rec, "feature_snapshot"))
            snaps += 1
            if snaps % sample_every == 0 and not final:  # final flushes hold partial windows
                sample[(f.group, f.entity_id, f.window_start_ms)] = f.features
        rows = join_scoring(spec, fired)
        if rows:
            x = np.array([r[3] for r in rows], dtype=np.float64)  # each model casts (and checks) itself
            out = router.score(x)
            names, versions, reasons = out.per_row()  # a row the model cannot score falls back alone
            now = int(time.time() * 1000)
            for (key, start, end, _), s, name, version, reason in zip(rows, out.scores, names, versions, reasons,
                                                                      strict=True):
                rec = {"user_id": key, "window_start_ms": start, "window_end_ms": end, "score": float(s),
                       "model_name": name, "model_version": version,
                       "arm": "active" if not reason else "fallback",
                       "fallback_reason": reason, "feature_set_version": spec.version,
                       "fired_at_ms": now, "scored_at_ms": now, "schema_version": 1}
                produce_one(p, out_topics["scores"], key.encode(), encode(rec, "scored_result"))
            scores += len(rows)

    while n < max_events:
        msgs = c.consume(5000, timeout=5.0)
        if not msgs:
            break
        if t0 is None:
            t0 = time.monotonic()
        for m in msgs[: max_events - n]:
            if m.error():
                continue
            n += 1
            # the header names the writer; read with the writer schema itself (same verdicts as the
            # job's resolution to the newest, which would halve this loop's decode rate)
            ev, reason, detail = try_decode_event(m.value(), version=header_schema_version(m.headers()))
            if ev is None or not w.add(ev):
                dls += 1
                rec = dead_letter(reason or "late", detail, events_topic, m.partition() or 0, m.offset() or 0,
                                  m.value(), dead_letter_max_raw_bytes)
                produce_one(p, out_topics["dead-letters"], None, encode_dead_letter(rec))
        emit(w.fired())
        p.poll(0)
    emit(w.fired(final=True), final=True)
    p.flush(60)
    seconds = time.monotonic() - (t0 or time.monotonic())
    c.close()
    return PeerResult(n, seconds, snaps, scores, dls, sample)
