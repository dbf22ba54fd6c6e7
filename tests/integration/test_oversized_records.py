"""Oversized input end to end: values of 1 MiB, 5 MiB and the broker's maximum (a valid
event followed by random padding) among a few hundred good events, through the real job
on the real broker. Each is dead-lettered with a bounded prefix, its size and SHA-256;
the job finishes and every other output is complete (checked against the reference)."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

import pytest

from jobs import kafka_limits
from jobs.generator import TrafficConfig, generate_events
from jobs.outputs import read_outputs
from tests.integration.conftest import fresh_topics, job_env, run_job
from tests.integration.pipeline_data import dead_letter_event_id
from transforms.codecs import DeadLetterReason, encode_event, event_message
from transforms.dead_letters import DEFAULT_MAX_RAW_BYTES, dead_letter
from transforms.parity import compare, exact_features, snapshot_groups
from transforms.reference import compute_features, model_rows
from transforms.spec import load_spec

pytestmark = pytest.mark.integration

N_GOOD = 600
MIB = 1 << 20
BROKER_MAX = kafka_limits.max_value_bytes()  # null key, no headers, uncompressed
OVERSIZED = {100: MIB, 300: 5 * MIB, 500: BROKER_MAX}  # after this many good events -> value size
MAX_RAW = DEFAULT_MAX_RAW_BYTES  # the job runs with the default bound


@dataclass
class Sent:
    records: list[tuple[bytes | None, bytes, list[tuple[str, bytes]] | None]] = field(default_factory=list)
    good: list[dict] = field(default_factory=list)
    oversized: dict[int, bytes] = field(default_factory=dict)  # offset (from the delivery report) -> value
    probe_error: str = ""  # what the broker said to one byte more than its maximum


def oversized_value(ev: dict, size: int, rng: random.Random) -> bytes:
    """A valid event.v1 followed by incompressible padding, ``size`` bytes in all."""
    head = encode_event({k: v for k, v in ev.items() if k != "item_category"})
    return head + rng.randbytes(size - len(head))


def build() -> tuple[list[tuple[bytes | None, bytes, list | None]], list[dict]]:
    rng = random.Random(12)
    cfg = TrafficConfig(seed=41, n_users=40, n_items=60, event_rate_per_s=8.0, out_of_order_fraction=0.05,
                        late_fraction=0.02)
    records: list[tuple[bytes | None, bytes, list | None]] = []
    good: list[dict] = []
    pending = dict(OVERSIZED)
    for ev in generate_events(N_GOOD + len(OVERSIZED), cfg):
        size = pending.pop(len(good), None)
        if size is not None:  # this event becomes the head of an oversized value (null key)
            records.append((None, oversized_value(ev, size, rng), None))
        else:
            records.append((ev["user_id"].encode(), *event_message(ev)))
            good.append(ev)
    return records, good


def produce(bootstrap: str, topic: str) -> Sent:
    """Produce in order with the project's producer (uncompressed, so the sizes are the
    broker's to judge); offsets come from the delivery reports."""
    from confluent_kafka import KafkaError

    from jobs.kafka_io import producer

    records, good = build()
    sent = Sent(records, good)
    p = producer(bootstrap, **{"compression.type": "none"})
    failures: list[str] = []

    def report(err, msg) -> None:
        if err is not None:
            failures.append(err.name())
        elif msg.key() is None:
            sent.oversized[msg.offset()] = msg.value()

    probe_errors: list[KafkaError] = []
    p.produce(topic, value=b"\x00" * (BROKER_MAX + 1), on_delivery=lambda err, _msg: probe_errors.append(err))
    assert p.flush(60) == 0
    sent.probe_error = probe_errors[0].name() if probe_errors and probe_errors[0] else ""
    for key, value, headers in records:
        p.produce(topic, key=key, value=value, on_delivery=report, **({"headers": headers} if headers else {}))
        p.poll(0)
    assert p.flush(120) == 0 and not failures, failures
    return sent


@pytest.fixture(scope="module")
def run(broker, registry_path):
    topics = fresh_topics(broker.bootstrap)
    sent = produce(broker.bootstrap, topics["events"])
    info = run_job(job_env(broker.bootstrap, topics, STREAMSCORE_REGISTRY=str(registry_path)))
    out = read_outputs(broker.bootstrap, topics["scores"], topics["feature-snapshots"], topics["dead-letters"])
    spec = load_spec()
    return {"sent": sent, "out": out, "ref": compute_features(spec, sent.good), "spec": spec, "info": info,
            "topic": topics["events"]}


def test_the_broker_takes_its_maximum_and_refuses_one_byte_more(run):
    sent = run["sent"]
    assert sent.probe_error == "MSG_SIZE_TOO_LARGE"
    assert sorted(len(v) for v in sent.oversized.values()) == [MIB, 5 * MIB, BROKER_MAX]
    assert len(sent.records) == N_GOOD + len(OVERSIZED) and len(sent.good) == N_GOOD


def test_job_finished_normally(run):
    assert run["info"]["job_id"] and run["info"]["feature_set_version"] == run["spec"].version


def test_each_oversized_record_is_dead_lettered_with_a_bounded_prefix(run):
    sent, out = run["sent"], run["out"]
    bad = {d["source_offset"]: d for _, d, _ in out.dead_letters if d["reason"] != "late"}
    assert set(bad) == set(sent.oversized)
    for off, value in sent.oversized.items():
        d = bad[off]
        assert d["reason"] in {r.value for r in DeadLetterReason} - {"late"}, d["reason"]
        assert d["detail"] and d["source_topic"] == run["topic"] and d["source_partition"] == 0
        assert d["raw"] == value[:MAX_RAW] and len(d["raw"]) == MAX_RAW
        assert d["raw_size"] == len(value) and d["raw_truncated"] is True and d["schema_version"] == 2
        assert d["raw_sha256"] == hashlib.sha256(value).hexdigest()
    # the JVM's fields are the Python function's, byte for byte
    for off, value in sent.oversized.items():
        want = dead_letter("", "", run["topic"], 0, off, value, MAX_RAW)
        got = bad[off]
        assert {k: got[k] for k in want if k not in ("reason", "detail")} == \
            {k: v for k, v in want.items() if k not in ("reason", "detail")}


def test_late_events_keep_their_whole_value(run):
    out, ref = run["out"], run["ref"]
    late = [d for _, d, _ in out.dead_letters if d["reason"] == "late"]
    assert len(late) == len(ref.late) > 0
    assert sorted(dead_letter_event_id(d) for d in late) == sorted(e["event_id"] for e in ref.late)
    for d in late:
        assert not d["raw_truncated"] and d["raw_size"] == len(d["raw"]) > 0
        assert d["raw_sha256"] == hashlib.sha256(d["raw"]).hexdigest()


def test_every_good_event_is_counted(run):
    out, ref, spec = run["out"], run["ref"], run["spec"]
    assert len(out.dead_letters) == len(OVERSIZED) + len(ref.late)
    flink = snapshot_groups(out.snapshots)
    assert sum(len(g) for g in flink.values()) == len(out.snapshots), "duplicate snapshots"
    report = compare(ref.groups, flink, exact_features(spec))
    assert report["mismatches"] == 0, report
    assert report["rows"] == sum(len(g) for g in ref.groups.values()) > 100


def test_scores_are_complete(run):
    out, spec, ref = run["out"], run["spec"], run["ref"]
    rows = model_rows(spec, ref)
    assert len(out.scores) == len(rows) > 0
    assert {(v["user_id"], v["window_end_ms"]) for _, v, _ in out.scores} == {(r[0], r[2]) for r in rows}
