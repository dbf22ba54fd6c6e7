"""Session windows end to end: the Flink job (SESSION window TVF) on the real broker
against the reference, for a spec of the default groups plus a user session group."""

from __future__ import annotations

import copy

import pytest
import yaml

from jobs.generator import BASE_TS_MS, TrafficConfig, generate_events
from jobs.outputs import read_outputs
from tests.integration.conftest import fresh_topics, job_env, run_job
from transforms.codecs import make_event
from transforms.parity import compare, exact_features
from transforms.reference import compute_features, model_rows
from transforms.spec import DEFAULT_SPEC_PATH, load_spec

pytestmark = pytest.mark.integration

GAP = 30_000
SESSION_GROUP = {
    "name": "user_session_30s", "entity": "user", "window": {"kind": "session", "gap_ms": GAP},
    "features": [
        {"name": "impressions", "agg": "count", "event_type": "impression"},
        {"name": "clicks", "agg": "count", "event_type": "click"},
        {"name": "ctr", "agg": "ratio", "numerator": "clicks", "denominator": "impressions", "default": 0.0},
        {"name": "dwell_mean_ms", "agg": "mean", "field": "dwell_ms", "event_type": "dwell", "default": 0.0},
    ],
}
T = BASE_TS_MS - 3_600_000  # an hour before the generated traffic


def hand_events() -> list[dict]:
    """Session edge cases, in arrival order (watermark = max ts - 2000 over all users)."""
    e = make_event
    return [
        e("x1", "s_exact", "i1", T, "impression"),
        e("x2", "s_exact", "i1", T + GAP, "click"),  # exactly gap after, first session open: a new session
        e("m1", "s_minus1", "i1", T + 30_001, "impression"),
        e("m2", "s_minus1", "i2", T + 60_000, "click"),  # gap - 1 after: the same session
        e("b1", "s_bridge", "i1", T + 61_000, "impression"),
        e("b2", "s_bridge", "i1", T + 92_000, "click"),  # 31 s after b1: a second session; wm T+90000
        e("b3", "s_bridge", "i3", T + 90_500, "dwell", 1_000.0),  # out of order, bridges b1 and b2
        e("b4", "s_bridge", "i1", T + 60_000, "impression"),  # late
    ]


@pytest.fixture(scope="module")
def run(broker, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("session")
    raw = copy.deepcopy(yaml.safe_load(DEFAULT_SPEC_PATH.read_text()))
    raw["groups"].append(SESSION_GROUP)
    spec_path = tmp / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(raw))
    spec = load_spec(spec_path)
    cfg = TrafficConfig(seed=17, n_users=200, n_items=300, out_of_order_fraction=0.05, late_fraction=0.01)
    events = hand_events() + list(generate_events(3_000, cfg))

    from jobs.kafka_io import produce_event, producer

    topics = fresh_topics(broker.bootstrap)
    p = producer(broker.bootstrap)
    for ev in events:
        produce_event(p, topics["events"], ev)
        p.poll(0)
    assert p.flush(30) == 0
    # no registry: the job only warns (the models were trained on the default spec) and
    # scores come from the default-score fallback
    info = run_job(job_env(broker.bootstrap, topics, STREAMSCORE_SPEC=str(spec_path),
                           STREAMSCORE_REGISTRY=str(tmp / "no-registry.json")))
    out = read_outputs(broker.bootstrap, topics["scores"], topics["feature-snapshots"], topics["dead-letters"])
    flink: dict = {}
    ends: dict = {}
    for _, v, _ in out.snapshots:
        key = (v["entity_id"], v["window_start_ms"])
        flink.setdefault(v["feature_group"], {})[key] = v["features"]
        ends.setdefault(v["feature_group"], {})[key] = v["window_end_ms"]
    return {"spec": spec, "events": events, "info": info, "out": out, "flink": flink, "ends": ends,
            "ref": compute_features(spec, events)}


def test_every_group_equals_the_reference(run):
    spec, ref, flink, out = run["spec"], run["ref"], run["flink"], run["out"]
    assert run["info"]["feature_set_version"] == spec.version
    assert sum(len(g) for g in flink.values()) == len(out.snapshots), "duplicate snapshots"
    report = compare(ref.groups, flink, exact_features(spec))
    assert report["mismatches"] == 0, report
    assert report["rows"] == sum(len(g) for g in ref.groups.values())
    sessions = ref.groups["user_session_30s"]
    assert len(sessions) > 100
    assert sum(e - s > GAP for (_, s), e in ref.session_ends["user_session_30s"].items()) > 50  # multi-event
    assert run["ends"]["user_session_30s"] == ref.session_ends["user_session_30s"]
    assert all(v["feature_set_version"] == spec.version for _, v, _ in out.snapshots)


def test_session_edge_cases(run):
    got, ends = run["flink"]["user_session_30s"], run["ends"]["user_session_30s"]
    mine = {k: v for k, v in got.items() if k[0].startswith("s_")}
    assert {k: ends[k] for k in mine} == {
        ("s_exact", T): T + GAP, ("s_exact", T + GAP): T + 2 * GAP,
        ("s_minus1", T + 30_001): T + 60_000 + GAP,
        ("s_bridge", T + 61_000): T + 92_000 + GAP,
    }
    assert mine[("s_exact", T)]["impressions"] == 1.0 and mine[("s_exact", T + GAP)]["clicks"] == 1.0
    assert mine[("s_minus1", T + 30_001)]["ctr"] == 1.0
    assert mine[("s_bridge", T + 61_000)] == {"impressions": 1.0, "clicks": 1.0, "ctr": 1.0, "dwell_mean_ms": 1000.0}


def test_late_events_and_fallback_scores(run):
    out, ref, spec = run["out"], run["ref"], run["spec"]
    late = [d for _, d, _ in out.dead_letters if d["reason"] == "late"]
    assert len(late) == len(ref.late) > 1 and len(out.dead_letters) == len(late)
    assert "b4" in {e["event_id"] for e in ref.late}
    rows = model_rows(spec, ref)
    assert len(out.scores) == len(rows) > 0
    assert all(v["fallback_reason"] and v["score"] == pytest.approx(0.05) for _, v, _ in out.scores)
