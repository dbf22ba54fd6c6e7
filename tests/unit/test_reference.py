import pytest

from transforms.codecs import make_event
from transforms.reference import compute_features, mark_late, model_rows, sessions, window_starts
from transforms.spec import Window, load_spec, parse_spec


def test_window_assignment():
    assert window_starts(Window("tumbling", 10_000), 19_999) == [10_000]
    assert window_starts(Window("tumbling", 10_000), 20_000) == [20_000]
    assert window_starts(Window("hopping", 60_000, 10_000), 65_000) == [10_000, 20_000, 30_000, 40_000, 50_000, 60_000]


def test_late_rule_uses_watermark_before_the_event():
    evs = [{"ts_ms": t} for t in (10_000, 9_000, 7_999, 8_000, 15_000, 13_001, 12_999)]
    flags = [late for _, late in mark_late(evs, 2_000)]
    # watermark 8000 after the first event: 7999 and 8000 are late (ts <= watermark);
    # 13000 after 15000: 13001 is on time, 12999 late
    assert flags == [False, False, True, True, False, False, True]


def test_hand_computed_features_and_model_rows():
    spec = load_spec()
    base = 1_000_000_000_000  # multiple of 10 s
    evs = [
        make_event("a", "u1", "i1", base + 1_000, "impression"),
        make_event("b", "u1", "i2", base + 2_000, "impression"),
        make_event("g", "u1", "i3", base + 1_500, "impression"),  # out of order, not late
        make_event("c", "u1", "i1", base + 3_000, "click"),
        make_event("d", "u1", "i1", base + 4_000, "dwell", 3_000.0),
        make_event("e", "u2", "i1", base + 5_000, "impression"),
        make_event("f", "u1", "i1", base + 12_000, "dwell", 5_000.0),
    ]
    out = compute_features(spec, evs)
    t = out.groups["user_tumble_10s"]
    assert t[("u1", base)] == {"impressions": 3.0, "clicks": 1.0, "ctr": pytest.approx(1 / 3),
                               "dwell_mean_ms": 3000.0, "dwell_max_ms": 3000.0, "distinct_items": 3.0}
    assert t[("u1", base + 10_000)]["dwell_mean_ms"] == 5000.0
    assert t[("u1", base + 10_000)]["ctr"] == 0.0  # no impressions: the declared default
    h = out.groups["user_hop_60s"][("u1", base - 40_000)]  # window [base-40s, base+20s)
    assert h["dwell_sum_ms"] == 8000.0 and h["dwell_std_ms"] == pytest.approx(1000.0)
    assert out.groups["item_tumble_10s"][("i1", base)]["impressions"] == 2.0
    rows = model_rows(spec, out)
    keys = [(r[0], r[2]) for r in rows]
    assert keys == [("u1", base + 10_000), ("u2", base + 10_000), ("u1", base + 20_000)]
    assert len(rows[0][3]) == len(spec.model_feature_names)
    assert out.late == [] and out.accepted == len(evs)


# --- session windows ---------------------------------------------------------------

SESSION_SPEC = parse_spec({
    "watermark_delay_ms": 2000, "scoring": {"entity": "user", "groups": ["t"]},
    "groups": [
        {"name": "t", "entity": "user", "window": {"kind": "tumbling", "size_ms": 10_000},
         "features": [{"name": "n", "agg": "count"}]},
        {"name": "s", "entity": "user", "window": {"kind": "session", "gap_ms": 30_000}, "features": [
            {"name": "n", "agg": "count"},
            {"name": "clicks", "agg": "count", "event_type": "click"},
            {"name": "imps", "agg": "count", "event_type": "impression"},
            {"name": "ctr", "agg": "ratio", "numerator": "clicks", "denominator": "imps", "default": -1.0},
            {"name": "dwell_mean", "agg": "mean", "field": "dwell_ms", "event_type": "dwell", "default": -2.0},
            {"name": "items", "agg": "distinct_count", "field": "item_id"}]}]})
B = 1_000_000_020_000
SESSION_EVENTS = [  # arrival order; watermark after each = max(ts) - 2000
    make_event("a", "u1", "i1", B, "impression"),
    make_event("h", "u2", "i1", B + 5_000, "impression"),
    make_event("b", "u1", "i1", B + 10_000, "click"),
    make_event("c", "u1", "i2", B + 41_000, "impression"),  # 31 s after b: a second session; wm B+39000
    make_event("d", "u1", "i1", B + 39_500, "dwell", 200.0),  # out of order: < gap from b and c, bridges them
    make_event("e", "u1", "i3", B + 100_000, "impression"),  # wm B+98000
    make_event("g", "u1", "i3", B + 75_000, "click"),  # late
    make_event("f", "u1", "i3", B + 130_000, "click"),  # exactly gap after e: a new session
]


def test_sessions_rule():
    assert sessions([], 30_000) == []
    assert sessions([5, 0], 10) == [(0, 15)]
    assert sessions([0, 10, 19, 30], 10) == [(0, 10), (10, 29), (30, 40)]  # touching sessions stay apart


def test_session_windows_hand_computed_with_bridging_event():
    before = compute_features(SESSION_SPEC, SESSION_EVENTS[:4])
    assert list(before.groups["s"]) == [("u1", B), ("u2", B + 5_000), ("u1", B + 41_000)]
    out = compute_features(SESSION_SPEC, SESSION_EVENTS)
    assert [e["event_id"] for e in out.late] == ["g"]
    s = out.groups["s"]
    assert list(s) == [("u1", B), ("u2", B + 5_000), ("u1", B + 100_000), ("u1", B + 130_000)]
    assert s[("u1", B)] == {"n": 4.0, "clicks": 1.0, "imps": 2.0, "ctr": 0.5, "dwell_mean": 200.0, "items": 2.0}
    assert s[("u2", B + 5_000)] == {"n": 1.0, "clicks": 0.0, "imps": 1.0, "ctr": 0.0, "dwell_mean": -2.0, "items": 1.0}
    assert s[("u1", B + 100_000)]["imps"] == 1.0 and s[("u1", B + 100_000)]["clicks"] == 0.0
    assert s[("u1", B + 130_000)] == {"n": 1.0, "clicks": 1.0, "imps": 0.0, "ctr": -1.0, "dwell_mean": -2.0,
                                      "items": 1.0}
    assert out.session_ends == {"s": {("u1", B): B + 71_000, ("u2", B + 5_000): B + 35_000,
                                      ("u1", B + 100_000): B + 130_000, ("u1", B + 130_000): B + 160_000}}
    assert model_rows(SESSION_SPEC, out)  # scoring (tumbling) groups unaffected


def test_session_windows_have_no_fixed_starts():
    with pytest.raises(ValueError, match="session windows have no fixed starts"):
        window_starts(Window("session", gap_ms=30_000), 1_000)
