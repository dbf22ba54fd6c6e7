import pytest

from transforms.codecs import make_event
from transforms.reference import compute_features, mark_late, model_rows, window_starts
from transforms.spec import Window, load_spec


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
