"""Online experiment analysis on simulated traffic: labels y ~ Bernoulli(p_true), a good
model scoring close to p_true, a bad one noisy and miscalibrated; per-window model-metrics
records built with the real online-eval helpers."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pytest
from scipy import stats

from jobs import cli
from jobs import experiment as experiment_cli
from transforms.codecs import decode, encode
from transforms.experiment import (
    ExperimentError,
    aggregate,
    compare,
    fairness_table,
    metrics_record,
    report,
)
from transforms.online_eval import binned_auc, logloss_terms, score_histogram

ScoreFn = Callable[[np.random.Generator, np.ndarray], np.ndarray]
WINDOW_MS = 60_000


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def good(rng: np.random.Generator, logit: np.ndarray) -> np.ndarray:
    return _sigmoid(logit)


def slightly_noisy(rng: np.random.Generator, logit: np.ndarray) -> np.ndarray:
    return _sigmoid(logit + rng.normal(0.0, 0.4, logit.size))


def bad(rng: np.random.Generator, logit: np.ndarray) -> np.ndarray:
    return _sigmoid(0.5 * logit + rng.normal(0.0, 1.0, logit.size) + 0.8)


def window_record(arm: str, ref: str, start_ms: int, scores: np.ndarray, labels: np.ndarray,
                  role: str = "served", **extra: object) -> dict:
    """A model-metrics record from raw scores, with the real helpers."""
    ll = logloss_terms(scores, labels)
    pos, neg = score_histogram(scores, labels)
    name, _, version = ref.partition(":")
    rec = {
        "eval_window_start_ms": start_ms, "eval_window_end_ms": start_ms + WINDOW_MS, "arm": arm, "role": role,
        "model_name": name, "model_version": version, "feature_set_version": "v1", "n": int(scores.size),
        "positives": int(labels.sum()), "sum_score": float(scores.sum()), "sum_logloss": float(ll.sum()),
        "sum_logloss_sq": float((ll**2).sum()), "auc_bins_pos": pos.tolist(), "auc_bins_neg": neg.tolist(),
        "fallback_count": 0, "batch_count": 10, "batch_ms_p50": 1.0, "batch_ms_p99": 2.0,
        "unattributed_clicks": 0, "above_threshold": int((scores >= 0.3).sum()),
        "emitted_at_ms": start_ms + WINDOW_MS, "schema_version": 1,
    }
    rec.update(extra)
    return rec


def simulate(rng: np.random.Generator, arm: str, ref: str, score_fn: ScoreFn, windows: int = 10,
             per_window: int = 2000, raw: list | None = None, fallback_rate: float = 0.0,
             **extra: object) -> list[dict]:
    """Independent users per arm: logit(p_true) ~ N(-1.8, 1), y ~ Bernoulli(p_true)."""
    recs = []
    for w in range(windows):
        logit = rng.normal(-1.8, 1.0, per_window)
        y = (rng.random(per_window) < _sigmoid(logit)).astype(np.int64)
        s = score_fn(rng, logit)
        if raw is not None:
            raw.append((s, y))
        recs.append(window_record(arm, ref, w * WINDOW_MS, s, y,
                                  fallback_count=int(round(fallback_rate * per_window)), **extra))
    return recs


def expected_logloss(score_fn: ScoreFn, n: int = 2_000_000) -> float:
    """E[log loss] of a score function over the user population (no label noise)."""
    rng = np.random.default_rng(12345)
    logit = rng.normal(-1.8, 1.0, n)
    p, s = _sigmoid(logit), np.clip(score_fn(rng, logit), 1e-7, 1 - 1e-7)
    return float(np.mean(-(p * np.log(s) + (1 - p) * np.log1p(-s))))


def experiment(seed: int, control_fn: ScoreFn, treatment_fn: ScoreFn, **kw: object) -> list[dict]:
    rng = np.random.default_rng(seed)
    return simulate(rng, "control", "gbdt:v1", control_fn) + simulate(rng, "treatment", "gbdt:v2", treatment_fn, **kw)


# --- aggregation ---------------------------------------------------------------------------------------------


def test_merged_windows_equal_the_concatenated_data():
    rng = np.random.default_rng(1)
    raw: list = []
    recs = []
    for w, size in enumerate([50, 3000, 700, 1, 1200]):
        logit = rng.normal(-1.8, 1.0, size)
        y = (rng.random(size) < _sigmoid(logit)).astype(np.int64)
        s = bad(rng, logit)
        raw.append((s, y))
        recs.append(window_record("control", "gbdt:v1", w * WINDOW_MS, s, y))
    scores, labels = np.concatenate([r[0] for r in raw]), np.concatenate([r[1] for r in raw])
    ll = logloss_terms(scores, labels)
    for order in (recs, recs[::-1]):
        (st,) = aggregate(order).values()
        assert st.n == scores.size and st.windows == 5
        assert st.mean_logloss == pytest.approx(ll.mean(), rel=1e-12)
        assert st.logloss_var == pytest.approx(np.var(ll, ddof=1), rel=1e-9)
        assert st.auc == binned_auc(*score_histogram(scores, labels))
        assert st.ctr == pytest.approx(labels.mean()) and st.mean_score == pytest.approx(scores.mean())
        assert st.calibration == pytest.approx(scores.mean() / labels.mean())


def test_reference_record_builder_matches_and_fits_the_avro_schema():
    rng = np.random.default_rng(2)
    s, y = rng.random(500), (rng.random(500) < 0.3).astype(np.int64)
    rec = metrics_record("control", "served", "gbdt:v1", 0, s, y, batch_count=10)
    assert rec == window_record("control", "gbdt:v1", 0, s, y)
    assert decode(encode(rec, "model_metrics"), "model_metrics") == rec


def test_model_change_keeps_separate_stats_and_compares_the_latest_model():
    rng = np.random.default_rng(3)
    old = simulate(rng, "control", "gbdt:v1", bad, windows=4)
    new = [dict(r, eval_window_start_ms=r["eval_window_start_ms"] + 4 * WINDOW_MS)
           for r in simulate(rng, "control", "gbdt:v2", good, windows=4)]
    treat = simulate(rng, "treatment", "mlp:v1", good, windows=8)
    stats_by_key = aggregate(old + new + treat)
    assert set(stats_by_key) == {("control", "gbdt:v1", "served"), ("control", "gbdt:v2", "served"),
                                 ("treatment", "mlp:v1", "served")}
    rep = report(old + new + treat)
    assert rep.served["control"].model_ref == "gbdt:v2" and rep.served["control"].windows == 4
    assert [s.model_ref for s in rep.others] == ["gbdt:v1"]
    assert any("model changed" in n for n in rep.notes)


def test_repeated_records_count_once_and_late_increments_add_up():
    rng = np.random.default_rng(4)
    first = simulate(rng, "control", "gbdt:v1", good, windows=3)
    late = window_record("control", "gbdt:v1", WINDOW_MS, np.array([0.2, 0.9]), np.array([0, 1]),
                         emitted_at_ms=first[1]["emitted_at_ms"] + 5000, fallback_count=1, batch_count=0)
    (st,) = aggregate([*first, dict(first[1]), late]).values()  # a producer retry, and a late increment
    assert st.windows == 3 and st.n == sum(r["n"] for r in first) + 2 and st.fallback_count == 1
    assert st.batch_count == sum(r["batch_count"] for r in first)
    assert st.to_dict()["first_window_ms"] == 0 and st.to_dict()["last_window_ms"] == 2 * WINDOW_MS


def test_bad_records_raise_a_clear_error():
    rec = window_record("a", "m:v1", 0, np.array([0.2, 0.7]), np.array([0, 1]))
    with pytest.raises(ExperimentError, match="auc bins"):
        aggregate([dict(rec, auc_bins_pos=[1, 2, 3])])
    with pytest.raises(ExperimentError, match="bad model-metrics record"):
        aggregate([{k: v for k, v in rec.items() if k != "sum_logloss"}])


# --- the test and the verdict ----------------------------------------------------------------------------


def test_good_treatment_is_promoted_and_bad_treatment_rolled_back():
    up = report(experiment(10, bad, good)).comparisons["treatment"]
    assert up.significant and up.p_value < 1e-6 and up.lift > 0 and up.ci[0] > 0
    assert up.verdict == "promote"
    assert all(g.passed for g in up.guardrails)
    down = report(experiment(11, good, bad)).comparisons["treatment"]
    assert down.significant and down.lift < 0 and down.ci[1] < 0
    assert down.verdict == "rollback"


def test_sufficient_statistics_give_the_same_welch_test_as_the_raw_scores():
    rng = np.random.default_rng(5)
    raw_c: list = []
    raw_t: list = []
    recs = (simulate(rng, "control", "gbdt:v1", slightly_noisy, raw=raw_c)
            + simulate(rng, "treatment", "gbdt:v2", good, raw=raw_t))
    ll_c = np.concatenate([logloss_terms(s, y) for s, y in raw_c])
    ll_t = np.concatenate([logloss_terms(s, y) for s, y in raw_t])
    cmp = report(recs, alpha=0.1).comparisons["treatment"]
    ref = stats.ttest_ind(ll_c, ll_t, equal_var=False)
    assert cmp.p_value == pytest.approx(ref.pvalue, rel=1e-6)
    assert cmp.df == pytest.approx(ref.df, rel=1e-6)
    lo, hi = ref.confidence_interval(0.9)
    assert cmp.diff_ci == pytest.approx((lo, hi), rel=1e-6)
    assert cmp.lift == pytest.approx((ll_c.mean() - ll_t.mean()) / ll_c.mean(), rel=1e-9)


def test_a_a_runs_declare_nothing_at_the_nominal_false_positive_rate():
    # 100 A/A experiments (fixed seeds): 5 expected significant at alpha 0.05; a correct test
    # exceeds 10 with probability 1.1% (binomial), a test that ignores the variance far more often
    runs = [report(experiment(100 + seed, good, good)).comparisons["treatment"] for seed in range(100)]
    significant = [c.significant for c in runs]
    assert sum(significant) <= 10
    assert sum(c.significant for c in runs[:20]) <= 3
    for c in runs:
        assert (c.verdict == "keep") == (not c.significant)
        assert 0.0 <= c.p_value <= 1.0 and c.ci[0] < c.ci[1]
    assert runs[0].verdict == "keep" and not runs[0].significant
    assert any("not significant" in n for n in runs[0].notes)


def test_confidence_interval_covers_the_true_lift():
    l_c, l_t = expected_logloss(slightly_noisy), expected_logloss(good)
    true_lift = (l_c - l_t) / l_c
    assert 0.005 < true_lift < 0.1  # a small effect: the interval width matters
    cmps = [report(experiment(200 + seed, slightly_noisy, good)).comparisons["treatment"] for seed in range(20)]
    covered = [c.ci[0] <= true_lift <= c.ci[1] for c in cmps]
    assert covered[0]
    assert sum(covered) >= 16  # 95% nominal: expected 19 of 20
    assert np.mean([c.lift for c in cmps]) == pytest.approx(true_lift, abs=0.01)


def test_high_fallback_rate_fails_the_guardrail_and_rolls_back():
    cmp = report(experiment(12, bad, good, fallback_rate=0.05)).comparisons["treatment"]
    assert cmp.significant and cmp.lift > 0
    fb = next(g for g in cmp.guardrails if g.name == "fallback_rate")
    assert fb.passed is False and fb.change == pytest.approx(0.05)
    assert cmp.verdict == "rollback" and any("fallback_rate" in n for n in cmp.notes)


def test_latency_guardrail_is_relative_to_the_control_p99_beyond_the_budget():
    slow = report(experiment(13, bad, good, batch_ms_p99=3.0), latency_budget_ms=2.5).comparisons["treatment"]
    lat = next(g for g in slow.guardrails if g.name == "batch_p99_ms")
    assert lat.change == pytest.approx(0.5) and lat.passed is False and slow.verdict == "rollback"
    ok = report(experiment(13, bad, good, batch_ms_p99=2.2), latency_budget_ms=2.5).comparisons["treatment"]
    assert ok.verdict == "promote"
    # the default 50 ms budget: 3 ms against a 2 ms control is not a regression
    within = report(experiment(13, bad, good, batch_ms_p99=3.0)).comparisons["treatment"]
    assert within.verdict == "promote"


def test_too_little_data_or_zero_variance_is_keep_without_nans_raised():
    one = window_record("control", "m:v1", 0, np.array([0.3]), np.array([1]))
    other = window_record("treatment", "m:v2", 0, np.array([0.9]), np.array([1]))
    cmp = report([one, other]).comparisons["treatment"]
    assert cmp.verdict == "keep" and not cmp.significant
    assert any("not enough data" in n for n in cmp.notes)
    json.dumps(cmp.to_dict(), allow_nan=False)
    flat = [window_record(arm, "m:v1", 0, np.full(100, 0.1), np.zeros(100, np.int64)) for arm in ("a", "b")]
    rep = report(flat)
    assert rep.control == "a"
    cmp = rep.comparisons["b"]
    assert cmp.verdict == "keep" and any("zero variance" in n for n in cmp.notes)
    json.dumps(rep.to_dict(), allow_nan=False)


def test_compare_on_empty_stats_does_not_crash():
    (a,) = aggregate([window_record("a", "m:v1", 0, np.array([]), np.array([], np.int64))]).values()
    assert compare(a, a).verdict == "keep"


# --- the report ------------------------------------------------------------------------------------------


def test_report_picks_the_control_and_keeps_shadow_and_reference_apart():
    rng = np.random.default_rng(6)
    recs = (simulate(rng, "alpha", "gbdt:v1", bad, windows=3) + simulate(rng, "beta", "gbdt:v2", good, windows=3)
            + simulate(rng, "shadow", "mlp:v1", good, windows=3, role="shadow")
            + simulate(rng, "alpha", "gbdt:v0", good, windows=3, role="reference"))  # fallback on alpha's rows
    idle = window_record("beta", "gbdt:v2", 3 * WINDOW_MS, np.array([]), np.array([], np.int64), batch_count=4)
    rep = report(recs + [idle])  # a window with batch timings but no labels yet
    assert rep.control == "alpha" and list(rep.comparisons) == ["beta"]
    assert sorted((s.arm, s.role) for s in rep.others) == [("alpha", "reference"), ("shadow", "shadow")]
    assert rep.served["alpha"].model_ref == "gbdt:v1" and rep.served["beta"].windows == 4
    assert report(recs, control_arm="beta").comparisons["alpha"].verdict == "rollback"
    with pytest.raises(ExperimentError, match="not among the served arms"):
        report(recs, control_arm="nope")
    with pytest.raises(ExperimentError, match="no served records"):
        report([r for r in recs if r["role"] != "served"])
    series = rep.series["beta"]
    assert [p["window_start_ms"] for p in series] == [0, WINDOW_MS, 2 * WINDOW_MS, 3 * WINDOW_MS]
    beta = [r for r in recs if r["arm"] == "beta"]
    assert [p["mean_logloss"] for p in series[:3]] == pytest.approx([r["sum_logloss"] / r["n"] for r in beta])
    assert series[3]["n"] == 0 and series[3]["mean_logloss"] is None
    assert set(rep.series) == {"alpha", "beta", "shadow", "alpha/reference"}
    out = rep.to_dict()
    json.dumps(out, allow_nan=False)
    assert out["comparisons"]["beta"]["verdict"] == "promote"


def test_fairness_table_against_the_best_served_group():
    recs = [
        {"window_start_ms": 0, "attribute": "region", "group": "eu", "n": 100, "mean_score": 0.2,
         "positive_rate": 0.30, "ctr": 0.10},
        {"window_start_ms": 60_000, "attribute": "region", "group": "eu", "n": 300, "mean_score": 0.4,
         "positive_rate": 0.50, "ctr": 0.20},
        {"window_start_ms": 0, "attribute": "region", "group": "us", "n": 200, "mean_score": 0.3,
         "positive_rate": 0.40, "ctr": float("nan")},
        {"window_start_ms": 0, "attribute": "device", "group": "mobile", "n": 50, "mean_score": 0.1,
         "positive_rate": 0.2, "ctr": 0.1},
    ]
    rows = {(r["attribute"], r["group"]): r for r in fairness_table(recs)}
    eu, us = rows[("region", "eu")], rows[("region", "us")]
    assert eu["n"] == 400 and eu["mean_score"] == pytest.approx(0.35) and eu["positive_rate"] == pytest.approx(0.45)
    assert eu["ctr"] == pytest.approx(0.175) and us["ctr"] is None
    assert eu["best_group"] == us["best_group"] == "eu"
    assert us["positive_rate_ratio"] == pytest.approx(0.4 / 0.45) and us["positive_rate_diff"] == pytest.approx(-0.05)
    assert us["mean_score_ratio"] == pytest.approx(0.3 / 0.35) and eu["mean_score_ratio"] == pytest.approx(1.0)
    assert rows[("device", "mobile")]["best_group"] == "mobile"
    rep = report(experiment(14, bad, good), fairness_records=recs)
    assert rep.fairness is not None and len(rep.fairness) == 3
    assert report(experiment(14, bad, good)).fairness is None


# --- the command -----------------------------------------------------------------------------------------


def _write_jsonl(path, recs) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))


def test_cli_report_on_a_jsonl_file_writes_html_and_ends_with_json(tmp_path, capsys):
    rng = np.random.default_rng(7)
    recs = experiment(15, bad, good) + simulate(rng, "shadow", "mlp:v1", good, windows=3, role="shadow")
    src, fair, page = tmp_path / "m.jsonl", tmp_path / "f.jsonl", tmp_path / "out" / "e.html"
    _write_jsonl(src, recs)
    _write_jsonl(fair, [{"window_start_ms": 0, "attribute": "region", "group": g, "n": 10, "mean_score": 0.2,
                         "positive_rate": r, "ctr": 0.1} for g, r in (("eu", 0.3), ("us", 0.2))])
    rc = experiment_cli.main(["report", "--file", str(src), "--html", str(page), "--fairness", str(fair), "--json"])
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    last = json.loads(lines[-1])
    assert last["control"] == "control" and last["html"] == str(page)
    arm = last["arms"]["treatment"]
    assert arm["verdict"] == "promote" and arm["significant"] is True and arm["p_value"] < 0.05
    assert arm["ci"][0] <= arm["lift"] <= arm["ci"][1]
    assert json.loads(lines[-2])["comparisons"]["treatment"]["verdict"] == "promote"
    assert lines[0].split()[:3] == ["arm", "role", "model"]
    assert any(line.startswith("verdict treatment") and "PROMOTE" in line for line in lines)
    text = page.read_text()
    assert text.count("data:image/png;base64,") == 3 and "fairness" in text and "shadow" in text


def test_cli_reads_the_topic_and_skips_undecodable_records(tmp_path, capsys, monkeypatch):
    import jobs.kafka_io

    recs = experiment(16, bad, good)
    msgs = [(None, encode(r, "model_metrics"), 0) for r in recs] + [(None, b"\x00garbage", 0)]
    monkeypatch.setattr(jobs.kafka_io, "read_topic", lambda *a, **k: msgs)
    rc = experiment_cli.main(["report", "--html", str(tmp_path / "e.html")])
    captured = capsys.readouterr()
    assert rc == 0 and "1 undecodable" in captured.err
    assert json.loads(captured.out.strip().splitlines()[-1])["arms"]["treatment"]["verdict"] == "promote"


def test_cli_without_records_exits_2(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert experiment_cli.main(["report", "--file", str(empty), "--html", str(tmp_path / "e.html")]) == 2
    assert "no model-metrics records" in capsys.readouterr().err
    assert not (tmp_path / "e.html").exists()
    assert experiment_cli.main(["report", "--file", str(tmp_path / "missing.jsonl")]) == 2


def test_cli_help_and_registration(capsys):
    with pytest.raises(SystemExit) as exc:
        experiment_cli.main(["report", "--help"])
    assert exc.value.code == 0 and "--control" in capsys.readouterr().out
    assert cli.COMMANDS["experiment"][0] == "jobs.experiment"
