"""Online evaluation (transforms.online_eval): binned metrics, mergeable window totals, the
event-time label join and the rollback decision."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import log_loss, roc_auc_score

from transforms.online_eval import (
    AUC_BIN_EDGES,
    EPS,
    N_AUC_BINS,
    EvalConfig,
    OnlineEvaluator,
    RollbackPolicy,
    WindowMetrics,
    binned_auc,
    logloss_terms,
    rollback_reason,
    score_bins,
    score_histogram,
)

# -- binned metrics ---------------------------------------------------------------------------


def test_bin_edges():
    assert AUC_BIN_EDGES[0] == 0.0 and AUC_BIN_EDGES[-1] == 1.0 and len(AUC_BIN_EDGES) == N_AUC_BINS + 1
    assert np.all(np.diff(AUC_BIN_EDGES) > 0)
    b = score_bins(np.array([0.0, 1e-9, 0.5, 1 - 1e-9, 1.0]))
    assert b[0] == 0 and b[-1] == N_AUC_BINS - 1 and np.all(np.diff(b) >= 0)
    assert b.min() >= 0 and b.max() < N_AUC_BINS


@pytest.mark.parametrize("seed,base_rate", [(0, 0.3), (1, 0.05), (2, 0.5)])
def test_binned_auc_close_to_sklearn(seed, base_rate):
    rng = np.random.default_rng(seed)
    y = (rng.random(5000) < base_rate).astype(int)
    scores = 1 / (1 + np.exp(-(rng.normal(-1.5, 1.0, 5000) + 1.2 * y)))
    got = binned_auc(*score_histogram(scores, y))
    want = roc_auc_score(y, scores)
    assert want > 0.7  # a discriminative model, so the comparison means something
    assert abs(got - want) < 0.01


def test_binned_auc_extremes():
    s = np.array([0.1, 0.2, 0.8, 0.9])
    assert binned_auc(*score_histogram(s, np.array([0, 0, 1, 1]))) == 1.0
    assert binned_auc(*score_histogram(s, np.array([1, 1, 0, 0]))) == 0.0
    assert math.isnan(binned_auc(*score_histogram(s, np.ones(4))))
    assert math.isnan(binned_auc(*score_histogram(s, np.zeros(4))))
    assert math.isnan(binned_auc(np.zeros(N_AUC_BINS), np.zeros(N_AUC_BINS)))
    pos, neg = score_histogram(s, np.array([0, 1, 0, 1]))
    assert pos.sum() == 2 and neg.sum() == 2 and pos.dtype == np.int64


def test_logloss_terms_equal_sklearn():
    rng = np.random.default_rng(3)
    p = rng.uniform(0.01, 0.99, 2000)
    y = (rng.random(2000) < p).astype(int)
    terms = logloss_terms(p, y)
    assert terms.shape == (2000,) and np.all(terms > 0)
    assert terms.sum() == pytest.approx(log_loss(y, p) * len(y), rel=1e-9)
    assert terms[0] == pytest.approx(-math.log(p[0]) if y[0] else -math.log(1 - p[0]), rel=1e-12)


def test_logloss_terms_clip():
    t = logloss_terms(np.array([0.0, 1.0, 0.0, 1.0]), np.array([1, 0, 0, 1]))
    assert np.all(np.isfinite(t))
    assert t[0] == pytest.approx(-math.log(EPS)) and t[1] == pytest.approx(-math.log(EPS))
    assert t[2] == pytest.approx(0.0, abs=1e-6) and t[3] == pytest.approx(0.0, abs=1e-6)


# -- WindowMetrics --------------------------------------------------------------------------------

def same_metrics(a: WindowMetrics, b: WindowMetrics) -> None:
    assert (a.n, a.positives, a.fallback_count) == (b.n, b.positives, b.fallback_count)
    assert a.sum_score == pytest.approx(b.sum_score, rel=1e-12, abs=1e-12)
    assert a.sum_logloss == pytest.approx(b.sum_logloss, rel=1e-12, abs=1e-12)
    assert a.sum_logloss_sq == pytest.approx(b.sum_logloss_sq, rel=1e-12, abs=1e-12)
    np.testing.assert_array_equal(a.pos, b.pos)
    np.testing.assert_array_equal(a.neg, b.neg)
    assert a.batch_ms == b.batch_ms


rows = st.lists(st.tuples(st.floats(0.0, 1.0), st.booleans()), min_size=0, max_size=40)


@settings(max_examples=150, deadline=None, database=None)
@given(rows, rows, st.integers(0, 5), st.integers(0, 5),
       st.lists(st.floats(0, 100), max_size=3), st.lists(st.floats(0, 100), max_size=3))
def test_merge_equals_sequential_adds(r1, r2, fb1, fb2, ms1, ms2):
    def arr(r):
        return np.array([s for s, _ in r], np.float64), np.array([int(y) for _, y in r], np.int64)

    a, b, seq = WindowMetrics(), WindowMetrics(), WindowMetrics()
    a.add(*arr(r1), fallbacks=fb1)
    a.batch_ms.extend(ms1)
    b.add(*arr(r2), fallbacks=fb2)
    b.batch_ms.extend(ms2)
    seq.add(*arr(r1), fallbacks=fb1)
    seq.add(*arr(r2), fallbacks=fb2)
    seq.batch_ms.extend(ms1 + ms2)
    a_before = pickle.loads(pickle.dumps(a))
    merged = a.merge(b)
    same_metrics(merged, seq)
    same_metrics(a, a_before)  # merge does not mutate its inputs
    same_metrics(merged.merge(WindowMetrics()), merged)
    assert merged.n == len(r1) + len(r2)
    assert merged.positives == sum(y for _, y in r1 + r2)


def test_window_metrics_pickle_round_trip():
    m = WindowMetrics()
    m.add(np.array([0.1, 0.7, 0.9]), np.array([0, 1, 1]), fallbacks=2)
    m.batch_ms.append(3.5)
    back = pickle.loads(pickle.dumps(m))
    same_metrics(back, m)
    assert back.auc == m.auc == 1.0
    assert back.mean_logloss == pytest.approx(logloss_terms(np.array([0.1, 0.7, 0.9]), np.array([0, 1, 1])).mean())


def test_window_metrics_empty():
    m = WindowMetrics()
    assert m.n == 0 and math.isnan(m.mean_logloss) and math.isnan(m.auc)
    m.add(np.array([]), np.array([]))
    assert m.n == 0 and m.sum_logloss == 0.0 and m.pos.sum() == 0


# -- EvalConfig ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [dict(step_ms=0), dict(attribution_ms=15_000), dict(attribution_ms=0),
                                    dict(eval_window_ms=25_000), dict(eval_window_ms=0), dict(grace_ms=-1)])
def test_eval_config_validation(kwargs):
    with pytest.raises(ValueError):
        EvalConfig(**kwargs)


def test_eval_config_accepts_multiples():
    EvalConfig(step_ms=5_000, attribution_ms=20_000, eval_window_ms=60_000, grace_ms=0)


# -- the label join ------------------------------------------------------------------------------

SERVED = ("served", "active", "m", "1")
SHADOW = ("shadow", "shadow", "s", "1")
CFG = EvalConfig(step_ms=10_000, attribution_ms=10_000, eval_window_ms=30_000, grace_ms=10_000)

# scored (user, window end): A and B at every end 10s..60s, C at 20s and 40s
SCORED = [(u, w) for w in range(10_000, 70_000, 10_000) for u in ("A", "B")] + [("C", 20_000), ("C", 40_000)]
# clicks in [W, W + 10s): D is never scored
CLICKS = {("A", 10_000): 1, ("B", 20_000): 2, ("C", 40_000): 1, ("A", 50_000): 1, ("D", 30_000): 3}
# the label of each score, by hand, per eval window [0, 30s), [30s, 60s), [60s, 90s)
LABELS = {
    0: {("A", 10_000): 1, ("B", 10_000): 0, ("A", 20_000): 0, ("B", 20_000): 1, ("C", 20_000): 0},
    30_000: {("A", 30_000): 0, ("B", 30_000): 0, ("A", 40_000): 0, ("B", 40_000): 0, ("C", 40_000): 1,
             ("A", 50_000): 1, ("B", 50_000): 0},
    60_000: {("A", 60_000): 0, ("B", 60_000): 0},
}


def served_score(u: str, w: int) -> float:
    return {"A": 0.1, "B": 0.2, "C": 0.3}[u] + w / 1e6


def shadow_score(u: str, w: int) -> float:
    return 0.5 if u != "B" else float("nan")  # the shadow did not score B's rows


def ll(p: float, y: int) -> float:
    return -math.log(p) if y else -math.log(1 - p)


def run_scenario():
    ev = OnlineEvaluator(CFG, "fs1", clock=lambda: 1234.5)
    emitted: list[tuple[str, int, dict]] = []  # (call, time, record)
    for t in range(10_000, 160_000, 10_000):
        users = [u for u, w in SCORED if w == t]
        if users:
            s = np.array([served_score(u, t) for u in users])
            sh = np.array([shadow_score(u, t) for u in users])
            fb = np.array([u == "B" for u in users])
            out = ev.add_scores(users, [t] * len(users), [(SERVED, s, fb), (SHADOW, sh, None)],
                                batch_ms={SERVED: t / 10_000})
            emitted += [("scores", t, r) for r in out]
        start = t - 10_000
        # A and B get a label row per window (0 or their clicks); C and D only when they click;
        # "tick" (never scored) keeps the label stream advancing
        lab = [(u, c) for (u, s0), c in CLICKS.items() if s0 == start and u in ("C", "D")]
        lab += [(u, CLICKS.get((u, start), 0)) for u in ("A", "B") if (u, start) in SCORED]
        lab.append(("tick", 0))
        out = ev.add_labels([u for u, _ in lab], [start] * len(lab), [c for _, c in lab])
        emitted += [("labels", start, r) for r in out]
    return ev, emitted


def test_label_join_matches_hand_computation():
    ev, emitted = run_scenario()
    recs = {(r["eval_window_start_ms"], r["role"]): r for _, _, r in emitted}
    assert len(recs) == len(emitted) == 6  # one record per (window, key), each emitted once
    for e0, labels in LABELS.items():
        served = recs[(e0, "served")]
        assert served["n"] == len(labels) and served["positives"] == sum(labels.values())
        assert served["sum_score"] == pytest.approx(sum(served_score(u, w) for u, w in labels))
        assert served["sum_logloss"] == pytest.approx(sum(ll(served_score(u, w), y) for (u, w), y in labels.items()))
        assert served["sum_logloss_sq"] == pytest.approx(
            sum(ll(served_score(u, w), y) ** 2 for (u, w), y in labels.items()))
        assert served["fallback_count"] == sum(1 for u, _ in labels if u == "B")
        assert sum(served["auc_bins_pos"]) == served["positives"]
        assert sum(served["auc_bins_neg"]) == served["n"] - served["positives"]
        shadow_rows = {k: y for k, y in labels.items() if k[0] != "B"}
        sh = recs[(e0, "shadow")]
        assert (sh["n"], sh["positives"]) == (len(shadow_rows), sum(shadow_rows.values()))
        assert sh["sum_logloss"] == pytest.approx(sum(ll(0.5, y) for y in shadow_rows.values()))
        assert (sh["model_name"], sh["model_version"], sh["arm"]) == ("s", "1", "shadow")
        assert sh["fallback_count"] == 0 and sh["batch_count"] == 0
        for r in (served, sh):
            assert r["eval_window_end_ms"] == e0 + 30_000 and r["feature_set_version"] == "fs1"
            assert r["emitted_at_ms"] == 1_234_500 and r["schema_version"] == 1
    assert recs[(0, "served")]["batch_count"] == 2  # batches at 10s and 20s
    assert recs[(0, "served")]["batch_ms_p50"] == pytest.approx(1.5)
    assert recs[(30_000, "served")]["batch_count"] == 3
    assert recs[(30_000, "served")]["batch_ms_p99"] == pytest.approx(4.98)
    # D's click (no score) is counted once, on the served record of its eval window
    assert [r["unattributed_clicks"] for _, _, r in emitted if r["role"] == "served"] == [0, 1, 0]
    assert ev.counters == {"scores": len(SCORED), "labelled": len(SCORED), "positives": 4,
                           "unattributed_clicks": 1, "emitted": 6}
    assert ev.pending == {} and ev.flush() == []


def test_records_emitted_only_once_complete():
    _, emitted = run_scenario()
    # window [0, 30s): its last score (20s) is labelled by [20s, 30s); + 10s grace -> once the
    # label window starting at 30s has been seen
    first = {}
    for call, t, r in emitted:
        first.setdefault(r["eval_window_start_ms"], (call, t))
    assert first == {0: ("labels", 30_000), 30_000: ("labels", 60_000), 60_000: ("labels", 90_000)}


def test_all_record_values_finite():
    _, emitted = run_scenario()
    for _, _, r in emitted:
        for k, v in r.items():
            if isinstance(v, float):
                assert math.isfinite(v), k


def test_click_window_before_its_score_is_unattributed_and_the_score_resolves_as_no_click():
    """The job delivers a score before the click window that labels it (per user); a click
    window with nothing pending is a click with no impression."""
    ev = OnlineEvaluator(EvalConfig(), "fs1")
    assert ev.add_labels(["u", "v"], [10_000, 10_000], [1, 0]) == []
    assert ev.add_scores(["u", "v"], [10_000, 10_000], [(SERVED, np.array([0.8, 0.3]), None)]) == []
    out = []
    for s in range(20_000, 200_000, 10_000):
        out += ev.add_labels(["tick"], [s], [0])
    assert len(out) == 1
    r = out[0]
    assert (r["eval_window_start_ms"], r["n"], r["positives"], r["unattributed_clicks"]) == (0, 2, 0, 1)
    assert r["sum_logloss"] == pytest.approx(ll(0.8, 0) + ll(0.3, 0))
    assert ev.counters["unattributed_clicks"] == 1


def test_score_after_its_label_window_passed_is_resolved_as_no_click():
    ev = OnlineEvaluator(EvalConfig(grace_ms=0, eval_window_ms=10_000), "fs1")
    ev.add_labels(["tick"], [100_000], [0])  # label stream at 110s
    out = ev.add_scores(["u"], [50_000], [(SERVED, np.array([0.2]), None)])
    assert ev.pending == {}
    assert [(r["n"], r["positives"]) for r in out] == [(1, 0)]


def test_unscored_clicks_are_counted_and_never_crash():
    ev = OnlineEvaluator(EvalConfig(), "fs1")
    recs = ev.add_labels(["x", "y", "z", "w", "q"], [0, 0, 10_000, 20_000, 20_000], [1, 5, float("nan"), -1, 1])
    for s in range(30_000, 300_000, 10_000):
        recs += ev.add_labels(["tick"], [s], [0])
    assert ev.counters["unattributed_clicks"] == 3  # NaN and negative counts are no click
    assert recs == [] and ev.flush() == []


def unscored_click_scenario(click_start: int):
    """Default config (60s eval windows, 20s grace): user "a" scored at every end of window [0, 60s),
    user "ghost" clicks in [click_start, +10s) but is never scored."""
    ev = OnlineEvaluator(EvalConfig(), "fs1")
    recs = []
    for w in range(0, 60_000, 10_000):
        recs += ev.add_scores(["a"], [w], [(SERVED, np.array([0.3]), None)])
    recs += ev.add_labels(["ghost"], [click_start], [2])
    for s in range(60_000, 400_000, 10_000):
        recs += ev.add_labels(["tick"], [s], [0])
    return ev, recs + ev.flush()


def test_unscored_click_early_in_a_window_is_on_its_record():
    ev, recs = unscored_click_scenario(0)
    assert ev.counters["unattributed_clicks"] == 1
    assert [(r["eval_window_start_ms"], r["n"], r["unattributed_clicks"]) for r in recs] == [(0, 6, 1)]


def test_unscored_click_late_in_a_window_is_on_its_record():
    ev, recs = unscored_click_scenario(50_000)
    assert ev.counters["unattributed_clicks"] == 1
    assert sum(r["unattributed_clicks"] for r in recs) == ev.counters["unattributed_clicks"]


def test_empty_input_gives_no_records():
    ev = OnlineEvaluator(EvalConfig(), "fs1")
    assert ev.add_scores([], [], []) == []
    assert ev.add_scores([], [], [(SERVED, np.array([]), None)], batch_ms={SERVED: 1.0}) == []
    assert ev.add_labels([], [], []) == []
    assert ev.flush() == []
    assert ev.counters["scores"] == 0 and ev.counters["emitted"] == 0


def test_flush_emits_open_windows_without_nan():
    ev = OnlineEvaluator(EvalConfig(), "fs1")
    # a row no key scored (all NaN) and a batch timing only
    ev.add_scores(["u"], [10_000], [(SERVED, np.array([np.nan]), None)], batch_ms={SERVED: 4.0})
    ev.add_scores(["v"], [20_000], [(SERVED, np.array([0.4]), None)])
    ev.add_labels(["v"], [20_000], [1])
    recs = ev.flush()
    assert len(recs) == 1
    r = recs[0]
    assert (r["n"], r["positives"], r["batch_count"], r["batch_ms_p50"]) == (1, 1, 1, 4.0)
    assert all(math.isfinite(v) for v in r.values() if isinstance(v, float))
    assert ("u", 10_000) in ev.pending  # pending scores stay unlabelled
    assert ev.flush() == []


def test_flush_of_a_window_with_only_unlabelled_scores():
    ev = OnlineEvaluator(EvalConfig(), "fs1")
    ev.add_scores(["u"], [10_000], [(SERVED, np.array([0.4]), None)], batch_ms={SERVED: 2.0})
    (r,) = ev.flush()
    assert r["n"] == 0 and r["sum_logloss"] == 0.0 and r["batch_count"] == 1
    assert all(math.isfinite(v) for v in r.values() if isinstance(v, float))


# -- rollback decision ----------------------------------------------------------------------------

def rec(role, name, version, n, mean_ll, arm="active", e0=0):
    return {"eval_window_start_ms": e0, "arm": arm, "role": role, "model_name": name, "model_version": version,
            "n": n, "sum_logloss": mean_ll * n}


POLICY = RollbackPolicy(min_labels=100, logloss_ratio=1.10)


def test_rollback_when_served_logloss_exceeds_reference():
    recs = [rec("served", "gbdt", "2", 200, 0.50), rec("reference", "mlp", "1", 200, 0.40)]
    reason = rollback_reason(recs, POLICY)
    assert reason is not None
    assert "gbdt:2" in reason and "arm active" in reason and "mlp:1" in reason and "0.5000" in reason


@pytest.mark.parametrize("recs", [
    [rec("served", "gbdt", "2", 200, 0.43), rec("reference", "mlp", "1", 200, 0.40)],  # within the ratio
    [rec("served", "gbdt", "2", 99, 0.90), rec("reference", "mlp", "1", 200, 0.40)],  # too few labels
    [rec("served", "gbdt", "2", 200, 0.90), rec("reference", "mlp", "1", 99, 0.40)],  # too few reference labels
    [rec("served", "mlp", "1", 200, 0.90), rec("reference", "mlp", "1", 200, 0.40)],  # same model
    [rec("served", "gbdt", "2", 200, 0.90), rec("reference", "mlp", "1", 200, 0.40, arm="other")],  # other arm
    [rec("served", "gbdt", "2", 200, 0.90), rec("reference", "mlp", "1", 200, 0.40, e0=60_000)],  # other window
    [rec("served", "gbdt", "2", 200, 0.90)],  # no reference
    [rec("shadow", "gbdt", "2", 200, 0.90), rec("reference", "mlp", "1", 200, 0.40)],  # a shadow never rolls back
    [],
], ids=["within_ratio", "few_served", "few_reference", "same_model", "other_arm", "other_window", "no_reference",
        "shadow", "empty"])
def test_no_rollback(recs):
    assert rollback_reason(recs, POLICY) is None


def test_ratio_zero_disables_rollback():
    recs = [rec("served", "gbdt", "2", 1000, 5.0), rec("reference", "mlp", "1", 1000, 0.1)]
    assert rollback_reason(recs, RollbackPolicy(min_labels=1, logloss_ratio=0)) is None
    assert rollback_reason(recs, RollbackPolicy(min_labels=1)) is not None


def test_rollback_checks_each_arm():
    recs = [rec("served", "gbdt", "1", 200, 0.40, arm="control"), rec("reference", "mlp", "1", 200, 0.40,
                                                                        arm="control"),
            rec("served", "gbdt", "2", 200, 0.80, arm="treatment"), rec("reference", "mlp", "1", 200, 0.40,
                                                                          arm="treatment")]
    reason = rollback_reason(recs, POLICY)
    assert reason is not None and "arm treatment" in reason and "gbdt:2" in reason


def test_rollback_policy_validation():
    with pytest.raises(ValueError):
        RollbackPolicy(min_labels=0)
    with pytest.raises(ValueError):
        RollbackPolicy(logloss_ratio=-1)


def test_rollback_from_evaluator_records():
    """End to end: a constant 0.95 served model against a calibrated reference on the same rows."""
    rng = np.random.default_rng(4)
    n = 400
    p = rng.uniform(0.02, 0.3, n)
    y = (rng.random(n) < p).astype(int)
    users = [f"u{i}" for i in range(n)]
    ref_key = ("reference", "active", "mlp", "1")
    bad_key = ("served", "active", "bad", "1")
    cfg = EvalConfig(step_ms=10_000, attribution_ms=10_000, eval_window_ms=10_000, grace_ms=0)
    ev = OnlineEvaluator(cfg, "fs1")
    assert ev.add_scores(users, [10_000] * n, [(bad_key, np.full(n, 0.95), None), (ref_key, p, None)]) == []
    recs = ev.add_labels(users, [10_000] * n, y)
    assert {(r["role"], r["n"]) for r in recs} == {("served", n), ("reference", n)}
    assert rollback_reason(recs, RollbackPolicy(min_labels=50)) is not None
    assert rollback_reason(recs, RollbackPolicy(min_labels=n + 1)) is None
