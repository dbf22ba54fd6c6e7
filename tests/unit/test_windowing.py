"""The incremental windowing (used by the plain-Python peer) against the reference."""

import copy

import pytest
import yaml

from jobs.generator import TrafficConfig, generate_events
from transforms.codecs import make_event
from transforms.reference import compute_features, model_rows
from transforms.spec import DEFAULT_SPEC_PATH, load_spec, parse_spec
from transforms.windowing import StreamingFeatures, join_scoring


def with_session_group() -> dict:
    """The default spec plus a user session group (30 s gap)."""
    raw = copy.deepcopy(yaml.safe_load(DEFAULT_SPEC_PATH.read_text()))
    raw["groups"].append({"name": "user_session_30s", "entity": "user", "window": {"kind": "session", "gap_ms": 30_000},
                          "features": [{"name": "impressions", "agg": "count", "event_type": "impression"},
                                       {"name": "clicks", "agg": "count", "event_type": "click"},
                                       {"name": "ctr", "agg": "ratio", "numerator": "clicks",
                                        "denominator": "impressions"},
                                       {"name": "dwell_mean_ms", "agg": "mean", "field": "dwell_ms",
                                        "event_type": "dwell"},
                                       {"name": "dwell_max_ms", "agg": "max", "field": "dwell_ms"},
                                       {"name": "items", "agg": "distinct_count", "field": "item_id"}]})
    return raw


@pytest.mark.parametrize("spec", [load_spec(), parse_spec(with_session_group())], ids=["default", "session"])
def test_streaming_windows_equal_reference_and_fire_in_watermark_order(spec):
    events = list(generate_events(8_000, TrafficConfig(seed=9, n_users=300, out_of_order_fraction=0.1,
                                                        late_fraction=0.01)))
    w = StreamingFeatures(spec)
    fired, rows = [], []
    for i, ev in enumerate(events):
        w.add(ev)
        if i % 500 == 0:
            batch = w.fired()
            assert all(f.window_end_ms - 1 <= w.watermark for f in batch)
            fired += batch
            rows += join_scoring(spec, batch)
    last = w.fired(final=True)
    fired += last
    rows += join_scoring(spec, last)
    ref = compute_features(spec, events)
    assert w.late == len(ref.late) > 0
    got = {(f.group, f.entity_id, f.window_start_ms): f.features for f in fired}
    assert len(got) == len(fired)
    want = {(g, k, s): v for g, grp in ref.groups.items() for (k, s), v in grp.items()}
    assert got.keys() == want.keys()
    for key, vals in want.items():
        assert got[key] == pytest.approx(vals)
    assert sorted((r[0], r[2]) for r in rows) == sorted((r[0], r[2]) for r in model_rows(spec, ref))


def test_sessions_merge_incrementally_and_fire_at_the_watermark():
    spec = parse_spec({"watermark_delay_ms": 2000, "scoring": {"entity": "user", "groups": ["t"]}, "groups": [
        {"name": "t", "entity": "user", "window": {"kind": "tumbling", "size_ms": 10_000},
         "features": [{"name": "n", "agg": "count"}]},
        {"name": "s", "entity": "user", "window": {"kind": "session", "gap_ms": 30_000},
         "features": [{"name": "n", "agg": "count"}, {"name": "dwell", "agg": "sum", "field": "dwell_ms"}]}]})
    b = 1_000_000_020_000
    w = StreamingFeatures(spec)

    def fired():
        return [(f.entity_id, f.window_start_ms, f.window_end_ms, f.features) for f in w.fired() if f.group == "s"]

    for ts, dwell in ((0, 1.0), (10_000, 2.0), (41_000, 4.0)):
        w.add(make_event(f"e{ts}", "u1", "i1", b + ts, "dwell", dwell))
    assert len(w.sessions["s"]["u1"]) == 2 and fired() == []
    w.add(make_event("bridge", "u1", "i1", b + 39_500, "dwell", 8.0))  # wm b+39000: merges both sessions
    assert len(w.sessions["s"]["u1"]) == 1 and fired() == []
    w.add(make_event("u2", "u2", "i1", b + 72_999, "dwell", 16.0))  # wm b+70999: end-1 = b+70999 reached
    assert fired() == [("u1", b, b + 71_000, {"n": 4.0, "dwell": 15.0})]
    assert not w.add(make_event("late", "u1", "i1", b + 70_000, "dwell", 32.0))
    w.add(make_event("next", "u1", "i1", b + 71_500, "dwell", 64.0))  # after the fired session: a new one
    assert [f[:3] for f in fired()] == []
    final = [(f.entity_id, f.window_start_ms, f.window_end_ms) for f in w.fired(final=True) if f.group == "s"]
    assert final == [("u1", b + 71_500, b + 101_500), ("u2", b + 72_999, b + 102_999)]
    assert w.sessions["s"] == {} and w.timers == []
