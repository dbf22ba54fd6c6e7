"""End to end on the real broker and the real Flink job (embedded mini-cluster)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from jobs.outputs import read_outputs
from tests.integration.conftest import fresh_topics, job_env, run_job
from tests.integration.pipeline_data import T0, build, dead_letter_event_id, produce
from transforms.parity import compare, exact_features, snapshot_groups
from transforms.reference import compute_features, model_rows
from transforms.scoring import ModelEntry, OnnxScorer, Registry
from transforms.spec import AGGS, load_spec

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def run(broker, registry_path):
    topics = fresh_topics(broker.bootstrap)
    sent = build()
    produce(broker.bootstrap, topics["events"], sent)
    info = run_job(job_env(broker.bootstrap, topics, STREAMSCORE_REGISTRY=str(registry_path)))
    out = read_outputs(broker.bootstrap, topics["scores"], topics["feature-snapshots"], topics["dead-letters"])
    spec = load_spec()
    ref = compute_features(spec, sent.good)
    return {"sent": sent, "out": out, "ref": ref, "spec": spec, "info": info, "registry": registry_path}


def _snap(out, group, entity, start):
    hits = [v for _, v, _ in out.snapshots
            if v["feature_group"] == group and v["entity_id"] == entity and v["window_start_ms"] == start]
    assert len(hits) == 1, f"{len(hits)} snapshots for {group}/{entity}/{start}"
    return hits[0]


def test_exact_feature_values_for_hand_written_events(run):
    out = run["out"]
    a = _snap(out, "user_tumble_10s", "alice", T0)
    assert a["window_end_ms"] == T0 + 10_000
    assert a["features"] == {"impressions": 3.0, "clicks": 1.0, "ctr": pytest.approx(1 / 3), "dwell_mean_ms": 3000.0,
                             "dwell_max_ms": 3000.0, "distinct_items": 3.0}
    a2 = _snap(out, "user_tumble_10s", "alice", T0 + 10_000)
    assert a2["features"]["dwell_mean_ms"] == 5000.0 and a2["features"]["ctr"] == 0.0
    h = _snap(out, "user_hop_60s", "alice", T0 - 40_000)
    assert h["features"]["dwell_sum_ms"] == 8000.0
    assert h["features"]["dwell_std_ms"] == pytest.approx(1000.0)
    assert h["features"]["impressions"] == 3.0  # the late impression h8 is not counted
    i1 = _snap(out, "item_tumble_10s", "i1", T0)
    assert i1["features"]["impressions"] == 2.0 and i1["features"]["ctr"] == 0.5
    i2 = _snap(out, "item_tumble_10s", "i2", T0)  # h8, late for the user groups, counts here
    assert i2["features"]["impressions"] == 2.0
    news = _snap(out, "user_category_tumble_30s", "carol|news", T0)
    assert news["entity_type"] == "user_category" and news["window_end_ms"] == T0 + 30_000
    assert news["features"] == {"impressions": 1.0, "clicks": 1.0, "ctr": 1.0, "dwell_mean_ms": 0.0,
                                "distinct_items": 1.0}
    assert _snap(out, "user_category_tumble_30s", "carol|a\\|b", T0)["features"]["impressions"] == 1.0
    pairs = {v["entity_id"] for _, v, _ in out.snapshots if v["feature_group"] == "user_category_tumble_30s"}
    assert not any(p.startswith(("alice|", "bob|")) for p in pairs)  # v1 events: no category, no pair
    carol = _snap(out, "user_tumble_10s", "carol", T0)["features"]
    assert carol["impressions"] == 3.0  # h13 (no category) counts for the user
    assert h["window_end_ms"] == T0 + 20_000 and a2["window_end_ms"] == T0 + 20_000
    assert a["feature_set_version"] == run["spec"].version


def test_three_engines_agree_on_every_feature(run):
    """The skew test: Flink job snapshots, the Beam pipeline and the reference contain the
    same keys, windows and values (counts exact, the rest to a relative 1e-9)."""
    from jobs.beam_pipelines import run_features

    out, ref, spec = run["out"], run["ref"], run["spec"]
    flink = snapshot_groups(out.snapshots)
    assert sum(len(g) for g in flink.values()) == len(out.snapshots), "duplicate snapshots"
    exact = exact_features(spec)
    flink_report = compare(ref.groups, flink, exact)
    assert flink_report["mismatches"] == 0, flink_report
    assert flink_report["rows"] == sum(len(g) for g in ref.groups.values()) > 1000
    beam = run_features(spec, run["sent"].good)
    beam_report = compare(ref.groups, beam.groups, exact)
    assert beam_report["mismatches"] == 0, beam_report
    assert [e["event_id"] for e in beam.late] == [e["event_id"] for e in ref.late]
    aggs = {f.agg for g in spec.groups for f in g.features}
    kinds = {g.window.kind for g in spec.groups}
    assert kinds == {"tumbling", "hopping", "session"} and aggs == set(AGGS)


def test_every_event_is_accounted_for(run):
    sent, out, ref = run["sent"], run["out"], run["ref"]
    late = [d for _, d, _ in out.dead_letters if d["reason"] == "late"]
    assert len(late) == len(ref.late) > 0
    assert ref.accepted + len(ref.late) == len(sent.good)
    assert len(out.dead_letters) == len(sent.bad) + len(ref.late)
    late_ids = sorted(dead_letter_event_id(d) for d in late)
    assert late_ids == sorted(e["event_id"] for e in ref.late)


def test_every_malformed_record_is_dead_lettered_with_its_reason(run):
    sent, out = run["sent"], run["out"]
    got = {d["source_offset"]: d for _, d, _ in out.dead_letters if d["reason"] != "late"}
    assert set(got) == set(sent.bad)
    assert {off: (d["raw"], d["reason"]) for off, d in got.items()} == sent.bad
    assert all(d["detail"] and d["source_partition"] == 0 for d in got.values())
    assert set(Counter(r for _, r in sent.bad.values())) == {"undecodable", "invalid_dwell", "invalid_timestamp",
                                                               "invalid_key"}


def test_scores_match_onnx_on_reference_features(run):
    out, spec, ref = run["out"], run["spec"], run["ref"]
    rows = model_rows(spec, ref)
    assert len(out.scores) == len(rows) > 0
    reg = Registry(run["registry"])
    entry: ModelEntry = reg.get("gbdt")
    x = np.array([r[3] for r in rows], dtype=np.float32)
    want = dict(zip([(r[0], r[2]) for r in rows], OnnxScorer(reg.artifact(entry), entry).predict(x), strict=False))
    for _, v, ts in out.scores:
        assert v["model_name"] == "gbdt" and v["model_version"] == entry.version and v["fallback_reason"] == ""
        assert v["feature_set_version"] == spec.version
        assert v["score"] == pytest.approx(want[(v["user_id"], v["window_end_ms"])], abs=1e-5)
        assert ts >= v["fired_at_ms"] - 5  # appended after the window fired
