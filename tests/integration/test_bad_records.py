"""Bad input and schema evolution end to end: 10,000 bad records of every kind, rotating,
interleaved with good v1 and v2 events (v2 with its schema-version header, some ids
duplicated), through the real job on the real broker."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

import pytest

from jobs.generator import (
    EXPECTED_REASON,
    HEADER_KINDS,
    MALFORMED_KINDS,
    TrafficConfig,
    as_v2,
    generate_events,
    malformed_message,
    v2_headers,
)
from jobs.outputs import read_outputs
from tests.integration.conftest import fresh_topics, job_env, run_job
from tests.integration.pipeline_data import dead_letter_event_id
from transforms.codecs import (
    DeadLetterReason,
    encode_event,
    header_schema_version,
    try_decode_event,
)
from transforms.parity import compare, exact_features, snapshot_groups
from transforms.reference import compute_features, model_rows
from transforms.spec import load_spec

pytestmark = pytest.mark.integration

N_GOOD = 12_000
N_BAD = 10_000
KINDS = MALFORMED_KINDS + HEADER_KINDS
KAFKA_KEYS = (b"bad", b"", None, b"k" * 50_000)  # the job ignores the Kafka key, however odd
DUPLICATE_EVERY = 97  # this good event is sent twice: both copies count


@dataclass
class Mixed:
    records: list[tuple[bytes | None, bytes, list[tuple[str, bytes]] | None]] = field(default_factory=list)
    good: list[dict] = field(default_factory=list)  # in arrival order, duplicates included
    bad: dict[int, tuple[bytes, str, str]] = field(default_factory=dict)  # offset -> (raw, reason, kind)
    by_version: Counter = field(default_factory=Counter)


def build() -> Mixed:
    sent = Mixed()
    rng = random.Random(5)
    cfg = TrafficConfig(seed=33, n_users=1_500, n_items=400, out_of_order_fraction=0.05, late_fraction=0.003)
    bad_every = N_GOOD / N_BAD

    def good(ev: dict, i: int) -> None:
        version = i % 3  # 0: v1 without header, 1: v1 with header "1", 2: v2 with header "2"
        if version == 2:
            ev = as_v2(ev)
            sent.records.append((ev["user_id"].encode(), encode_event(ev, 2), v2_headers()))
        else:  # a v1 record has no item_category: the reference must not see one either
            ev = {k: v for k, v in ev.items() if k != "item_category"}
            sent.records.append((ev["user_id"].encode(), encode_event(ev), v2_headers(b"1") if version else None))
        sent.good.append(ev)
        sent.by_version[max(version, 1)] += 1

    for i, ev in enumerate(generate_events(N_GOOD, cfg)):
        good(ev, i)
        if i % DUPLICATE_EVERY == 0:
            good(ev, i + 1)  # the same event_id again, under the other schema
        while len(sent.bad) < (i + 1) / bad_every:
            n = len(sent.bad)
            kind = KINDS[n % len(KINDS)]
            value, headers = malformed_message(kind, rng, ev)
            sent.bad[len(sent.records)] = (value, EXPECTED_REASON[kind], kind)  # offset: 1 partition
            sent.records.append((KAFKA_KEYS[n % len(KAFKA_KEYS)], value, headers))
    return sent


def produce(bootstrap: str, topic: str, sent: Mixed) -> None:
    from jobs.kafka_io import produce_one, producer

    p = producer(bootstrap)
    for key, value, headers in sent.records:
        produce_one(p, topic, key, value, headers)
        p.poll(0)
    assert p.flush(60) == 0


@pytest.fixture(scope="module")
def run(broker, registry_path):
    topics = fresh_topics(broker.bootstrap)
    sent = build()
    produce(broker.bootstrap, topics["events"], sent)
    info = run_job(job_env(broker.bootstrap, topics, STREAMSCORE_REGISTRY=str(registry_path)))
    out = read_outputs(broker.bootstrap, topics["scores"], topics["feature-snapshots"], topics["dead-letters"])
    spec = load_spec()
    return {"sent": sent, "out": out, "ref": compute_features(spec, sent.good), "spec": spec, "info": info}


def test_the_input_is_what_the_test_claims():
    sent = build()
    assert len(sent.bad) == N_BAD and len(sent.records) == N_BAD + len(sent.good)
    assert Counter(kind for _, _, kind in sent.bad.values()) == {k: N_BAD // len(KINDS) + (i < N_BAD % len(KINDS))
                                                                  for i, k in enumerate(KINDS)}
    assert set(r for _, r, _ in sent.bad.values()) == {r.value for r in DeadLetterReason} - {"late"}
    assert sent.by_version[2] >= N_GOOD // 3 and sent.by_version[1] >= 2 * N_GOOD // 3
    ids = Counter(e["event_id"] for e in sent.good)
    assert sum(1 for n in ids.values() if n == 2) == len(range(0, N_GOOD, DUPLICATE_EVERY))
    # the Python mirror gives every bad record its expected reason, every good one passes
    for off, (raw, reason, _) in sent.bad.items():
        assert try_decode_event(raw, version=header_schema_version(sent.records[off][2]), reader_version=2)[1] == reason
    good_offsets = [i for i in range(len(sent.records)) if i not in sent.bad]
    for off in good_offsets[::50]:
        _, raw, headers = sent.records[off]
        assert try_decode_event(raw, version=header_schema_version(headers), reader_version=2)[1] is None


def test_job_finished_normally(run):
    assert run["info"]["job_id"] and run["info"]["feature_set_version"] == run["spec"].version
    assert run["info"]["running_s"] > 0


def test_every_bad_record_is_dead_lettered_with_its_reason(run):
    sent, out = run["sent"], run["out"]
    got = {d["source_offset"]: d for _, d, _ in out.dead_letters if d["reason"] != "late"}
    assert len(got) == sum(1 for _, d, _ in out.dead_letters if d["reason"] != "late"), "duplicate dead letters"
    assert set(got) == set(sent.bad)
    wrong = {off: (kind, reason, got[off]["reason"], got[off]["detail"])
             for off, (_, reason, kind) in sent.bad.items() if got[off]["reason"] != reason}
    assert not wrong, list(wrong.items())[:10]
    assert all(got[off]["raw"] == raw for off, (raw, _, _) in sent.bad.items())
    assert all(d["detail"] and d["source_partition"] == 0 for d in got.values())
    assert {d["reason"] for _, d, _ in out.dead_letters} <= {r.value for r in DeadLetterReason}
    by_reason = Counter(d["reason"] for d in got.values())
    assert by_reason["unknown_schema_version"] == sum(1 for _, r, _ in sent.bad.values() if r == "unknown_schema_version")


def test_late_events_are_dead_lettered_and_nothing_else(run):
    out, ref, sent = run["out"], run["ref"], run["sent"]
    late = [d for _, d, _ in out.dead_letters if d["reason"] == "late"]
    assert len(late) == len(ref.late) > 0
    assert ref.accepted + len(ref.late) == len(sent.good)
    assert len(out.dead_letters) == len(sent.bad) + len(ref.late)
    late_ids = sorted(dead_letter_event_id(d) for d in late)
    assert late_ids == sorted(e["event_id"] for e in ref.late)


def test_every_good_event_is_counted(run):
    """Feature snapshots equal the reference over the good events: v1 and v2 alike, and
    both copies of a duplicated event_id."""
    out, ref, spec = run["out"], run["ref"], run["spec"]
    flink = snapshot_groups(out.snapshots)
    assert sum(len(g) for g in flink.values()) == len(out.snapshots), "duplicate snapshots"
    report = compare(ref.groups, flink, exact_features(spec))
    assert report["mismatches"] == 0, report
    assert report["rows"] == sum(len(g) for g in ref.groups.values()) > 1000


def test_scores_are_produced(run):
    out, spec, ref = run["out"], run["spec"], run["ref"]
    rows = model_rows(spec, ref)
    assert len(out.scores) == len(rows) > 0
    assert {(v["user_id"], v["window_end_ms"]) for _, v, _ in out.scores} == {(r[0], r[2]) for r in rows}
    assert all(v["feature_set_version"] == spec.version for _, v, _ in out.scores)
