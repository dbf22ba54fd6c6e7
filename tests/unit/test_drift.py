"""Drift statistics (transforms.drift) and the ``streamscore drift`` command (jobs.drift)."""

from __future__ import annotations

import hashlib
import json
import math
import pickle
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.stats import entropy, ks_2samp

from transforms.drift import (
    PREDICTION,
    PSI_EPSILON,
    DriftError,
    DriftMonitor,
    DriftThresholds,
    DriftWindow,
    build_reference,
    classify,
    drift_stats,
    offline_drift,
    psi,
)

NAMES = ["normal", "expo", "count", "const"]
W = 60_000


def sample(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Continuous, skewed, discrete (point masses) and constant features; scores independent of them."""
    rng = np.random.default_rng(seed)
    x = np.column_stack([rng.normal(10.0, 2.0, n), rng.exponential(3.0, n), rng.poisson(1.5, n).astype(float),
                         np.full(n, 7.0)]).astype(np.float32)
    return x, rng.beta(2.0, 5.0, n)


@pytest.fixture(scope="module")
def ref() -> dict[str, Any]:
    x, p = sample(20_000, 1)
    return build_reference(x, p, NAMES)


def finite_everywhere(obj: Any) -> bool:
    json.dumps(obj, allow_nan=False)  # raises on NaN/inf
    return True


def same(a: Any, b: Any) -> bool:
    """Equal records, floats to rounding (sums taken batch by batch differ in the last bits)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(u, v) for u, v in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15)
    return type(a) is type(b) and a == b


def alerted(rec: dict[str, Any]) -> set[str]:
    return {a["feature"] for a in rec["alerts"]}


# -- reference -----------------------------------------------------------------------------


def test_reference_is_json_with_quantile_bins(ref: dict[str, Any]) -> None:
    back = json.loads(json.dumps(ref, allow_nan=False))
    assert back == ref and back["schema"] == 1 and back["feature_names"] == NAMES
    for name in [*NAMES, PREDICTION]:
        c = ref["features"].get(name) or ref[PREDICTION]
        assert c["edges"][0] is None and c["edges"][-1] is None
        assert len(c["frequencies"]) == len(c["edges"]) - 1 and math.isclose(sum(c["frequencies"]), 1.0)
        assert len(c["quantiles"]) == 256 and c["n"] == 20_000 and c["missing_rate"] == 0.0
    normal = ref["features"]["normal"]
    assert len(normal["edges"]) == 11 and np.allclose(normal["frequencies"], 0.1, atol=1e-3)
    assert math.isclose(normal["mean"], 10.0, abs_tol=0.1) and math.isclose(normal["variance"], 4.0, rel_tol=0.05)
    assert ref["features"]["const"]["edges"] == [None, 7.0, None]  # duplicate quantile edges collapse
    assert ref["features"]["const"]["frequencies"] == [1.0, 0.0]
    assert len(ref["features"]["count"]["edges"]) < 11  # point masses share edges
    assert ref[PREDICTION]["binning"] == "fixed" and ref[PREDICTION]["edges"][1:-1] == pytest.approx(
        np.linspace(0.1, 0.9, 9))


def test_reference_missing_rate_and_bad_input() -> None:
    x, p = sample(1000, 2)
    x[:100, 1] = np.nan
    r = build_reference(x, p, NAMES)
    assert r["features"]["expo"]["missing_rate"] == pytest.approx(0.1) and r["features"]["expo"]["n_valid"] == 900
    with pytest.raises(DriftError):
        build_reference(x[:, :3], p, NAMES)
    with pytest.raises(DriftError):
        build_reference(x[:0], p[:0], NAMES)
    with pytest.raises(DriftError):
        DriftWindow({"schema": 99})


# -- statistics ----------------------------------------------------------------------------


def test_psi_equals_symmetrised_kl_of_smoothed_shares(ref: dict[str, Any]) -> None:
    a, b = np.array([0.0, 0.2, 0.3, 0.5]), np.array([0.25, 0.25, 0.5, 0.0])
    sa, sb = np.maximum(a, PSI_EPSILON), np.maximum(b, PSI_EPSILON)
    sa, sb = sa / sa.sum(), sb / sb.sum()
    explicit = float(np.sum((sa - sb) * np.log(sa / sb)))
    assert psi(a, b) == pytest.approx(explicit, rel=1e-12)
    assert psi(a, b) == pytest.approx(entropy(sa, sb) + entropy(sb, sa), rel=1e-12)
    assert psi(a, a) == 0.0
    # and the window statistic is the PSI of its bin shares against the reference frequencies
    x, p = sample(3000, 3)
    w = DriftWindow(ref).add(x * [1.0, 1.5, 1.0, 1.0], p)
    shares = w.counts[1] / w.n_valid[1]
    assert drift_stats(w, ref).features["expo"].psi == pytest.approx(psi(shares, ref["features"]["expo"]["frequencies"]))


def test_ks_is_scipy_ks_2samp_on_the_window_values(ref: dict[str, Any]) -> None:
    x, p = sample(1500, 4)
    x[:50, 0] = np.nan
    w = DriftWindow(ref).add(x[:700], p[:700]).add(x[700:], p[700:])
    rep = drift_stats(w, ref)
    values = x[:, 0][~np.isnan(x[:, 0])].astype(np.float64)
    assert np.array_equal(np.sort(w.samples[0]), np.sort(values))  # fewer values than the reservoir: all of them
    expect = ks_2samp(values, np.asarray(ref["features"]["normal"]["quantiles"]))
    assert rep.features["normal"].ks == pytest.approx(expect.statistic, abs=1e-12)
    assert rep.features["normal"].ks_pvalue == pytest.approx(expect.pvalue, rel=1e-9)
    expect_p = ks_2samp(p, np.asarray(ref[PREDICTION]["quantiles"]))
    assert rep.prediction.ks == pytest.approx(expect_p.statistic, abs=1e-12)
    # a bounded reservoir keeps sample_size of the window's own values
    small = DriftWindow(ref, sample_size=200).add(x, p)
    assert small.samples[1].size == 200 and np.isin(small.samples[1], x[:, 1].astype(np.float64)).all()


def test_same_distribution_has_small_drift(ref: dict[str, Any]) -> None:
    x, p = sample(5000, 5)
    rec = offline_drift(x, p, ref)
    for name, c in {**rec["features"], PREDICTION: rec[PREDICTION]}.items():
        assert c["psi"] < 0.05 and c["ks"] < 0.05, name
        assert abs(c["mean_shift_sd"]) < 0.1 and c["missing_delta"] == 0.0
    assert rec["alerts"] == [] and rec["severe"] is False
    assert rec["confidence"]["near_half_share"] == pytest.approx(rec["confidence"]["reference_near_half_share"],
                                                                 abs=0.03)


@pytest.mark.parametrize("how", ["mean+2sd", "scale3"])
def test_shifted_feature_is_the_only_alert(ref: dict[str, Any], how: str) -> None:
    x, p = sample(5000, 6)
    col = 0 if how == "mean+2sd" else 1
    x[:, col] = x[:, col] + 4.0 if how == "mean+2sd" else x[:, col] * 3.0
    rec = offline_drift(x, p, ref)
    name = NAMES[col]
    assert rec["features"][name]["psi"] > DriftThresholds().psi_severe
    assert alerted(rec) == {name} and rec["severe"] is True
    assert {(a["statistic"], a["severity"]) for a in rec["alerts"]} == {("psi", "critical"), ("ks", "critical")}
    if how == "mean+2sd":
        assert rec["features"][name]["mean_shift_sd"] == pytest.approx(2.0, abs=0.1)


def test_missing_rate_change_is_detected(ref: dict[str, Any]) -> None:
    x, p = sample(4000, 7)
    x[np.random.default_rng(0).random(4000) < 0.2, 2] = np.nan
    rec = offline_drift(x, p, ref)
    c = rec["features"]["count"]
    assert c["missing_delta"] == pytest.approx(0.2, abs=0.02) and c["psi"] < 0.05  # NaN is not a value
    assert rec["alerts"] == [{"feature": "count", "statistic": "missing_rate", "value": c["missing_delta"],
                              "threshold": 0.05, "severity": "warning"}]


def test_empty_and_small_windows_give_zeros_and_no_alerts(ref: dict[str, Any]) -> None:
    rep = DriftWindow(ref).result()
    assert rep.empty and rep.n == 0 and classify(rep) == []
    for c in rep.columns().values():
        assert (c.psi, c.ks, c.ks_pvalue, c.missing_delta, c.mean_shift_sd) == (0.0, 0.0, 1.0, 0.0, 0.0)
    assert rep.confidence["n"] == 0 and rep.confidence["mean_entropy"] == 0.0
    empty = offline_drift(np.empty((0, 4)), np.empty(0), ref)
    assert finite_everywhere(empty) and empty["empty"] and empty["alerts"] == []
    x, p = sample(150, 8)  # badly shifted but below min_count
    small = offline_drift(x * 3, p, ref)
    assert small["features"]["normal"]["psi"] > 1 and small["alerts"] == [] and finite_everywhere(small)
    x[:, 1] = np.nan  # an all-missing column
    allnan = offline_drift(x, p, ref, DriftThresholds(min_count=10))
    assert finite_everywhere(allnan) and allnan["features"]["expo"]["missing_delta"] == 1.0
    assert [(a["feature"], a["statistic"]) for a in allnan["alerts"]] == [("expo", "missing_rate")]


def test_thresholds_validate_and_higher_severity_wins(ref: dict[str, Any]) -> None:
    for bad in ({"psi_warn": 0.3}, {"ks_severe": 1.5}, {"missing_warn": -0.1}, {"min_count": -1},
                {"retrain_after_windows": 0}):
        with pytest.raises(ValueError):
            DriftThresholds(**bad)
    x, p = sample(3000, 9)
    x[:, 0] += 0.8  # 0.4 sd: a warning for PSI under defaults
    rep = DriftWindow(ref).add(x, p).result()
    value = rep.features["normal"].psi
    assert DriftThresholds().psi_warn < value < DriftThresholds().psi_severe
    assert [(a["statistic"], a["severity"]) for a in classify(rep) if a["feature"] == "normal"][0] == ("psi",
                                                                                                      "warning")
    strict = classify(rep, DriftThresholds(psi_warn=0.01, psi_severe=0.02))
    psi_alerts = [a for a in strict if a["statistic"] == "psi" and a["feature"] == "normal"]
    assert psi_alerts == [{"feature": "normal", "statistic": "psi", "value": value, "threshold": 0.02,
                           "severity": "critical"}]


# -- accumulator ---------------------------------------------------------------------------


def test_merge_equals_sequential_and_pickles(ref: dict[str, Any]) -> None:
    x, p = sample(3000, 10)
    x[::7, 3] = np.nan
    seq = DriftWindow(ref).add(x[:1200], p[:1200]).add(x[1200:], p[1200:])
    merged = DriftWindow(ref, seed=1).add(x[:1200], p[:1200]).merge(DriftWindow(ref, seed=2).add(x[1200:], p[1200:]))
    assert merged.n == seq.n == 3000 and np.array_equal(merged.n_valid, seq.n_valid)
    assert all(np.array_equal(a, b) for a, b in zip(merged.counts, seq.counts, strict=True))
    assert np.allclose(merged.sums, seq.sums) and np.allclose(merged.sumsq, seq.sumsq)
    assert (merged.n_conf, merged.near_half) == (seq.n_conf, seq.near_half)
    assert merged.entropy_sum == pytest.approx(seq.entropy_sum)
    assert all(np.array_equal(np.sort(a), np.sort(b)) for a, b in zip(merged.samples, seq.samples, strict=True))
    for a, b in zip(merged.result().columns().values(), seq.result().columns().values(), strict=True):
        assert (a.psi, a.ks, a.missing_delta) == (b.psi, b.ks, b.missing_delta) and a.mean == pytest.approx(b.mean)
    # pickled mid-stream, the copy continues exactly as the original (RNG state included)
    w = DriftWindow(ref, sample_size=300).add(x[:1000], p[:1000])
    copy = pickle.loads(pickle.dumps(w))
    w.add(x[1000:], p[1000:])
    copy.add(x[1000:], p[1000:])
    assert all(np.array_equal(a, b) for a, b in zip(w.samples, copy.samples, strict=True))
    assert w.result() == copy.result()
    with pytest.raises(DriftError):
        w.merge(DriftWindow(build_reference(*sample(500, 11), NAMES)))


# -- streaming monitor ---------------------------------------------------------------------


def test_monitor_emits_a_window_when_a_later_one_starts(ref: dict[str, Any]) -> None:
    x, p = sample(900, 12)
    m = DriftMonitor(ref, DriftThresholds(), W, "gbdt:v1")
    assert m.update(np.full(300, 10_000), x[:300], p[:300]) == []
    assert m.update(np.full(300, 59_999), x[300:600], p[300:600]) == []
    ends = np.array([59_000] * 100 + [60_000] * 200)  # the batch spans windows 0 and 1
    out = m.update(ends, x[600:], p[600:])
    assert [r["kind"] for r in out] == ["drift"]
    rec = out[0]
    assert (rec["window_start_ms"], rec["window_end_ms"], rec["model"], rec["n"]) == (0, W, "gbdt:v1", 700)
    assert set(rec["features"]) == set(NAMES) and {"psi", "ks", "missing_delta", "mean_shift_sd"} <= set(
        rec["features"]["normal"])
    assert rec["alerts"] == [] and rec["severe"] is False and finite_everywhere(rec)
    assert m.update(np.full(5, 1000), x[:5], p[:5]) == [] and m.late_rows == 5  # window 0 is complete
    (last,) = m.flush()
    assert (last["window_start_ms"], last["n"]) == (W, 200)
    assert m.flush() == []


def test_monitor_asks_for_retrain_once_per_streak(ref: dict[str, Any]) -> None:
    t = DriftThresholds(retrain_after_windows=3)
    m = DriftMonitor(ref, t, W, "gbdt:v1")
    records: list[dict[str, Any]] = []

    def window(k: int, shifted: bool, n: int = 400) -> None:
        x, p = sample(n, 100 + k)
        if shifted:
            x[:, 1] *= 3.0
        records.extend(m.update(np.full(n, k * W + 5), x, p))

    for k in range(5):
        window(k, True)
    window(5, True, n=50)  # too small to judge: neither extends nor ends the streak
    window(6, False)
    for k in range(7, 10):
        window(k, True)
    records.extend(m.flush())
    retrains = [r for r in records if r["kind"] == "retrain"]
    assert len([r for r in records if r["kind"] == "drift"]) == 10
    assert [(r["features"], r["from_ms"], r["to_ms"]) for r in retrains] == [(["expo"], 0, 3 * W),
                                                                              (["expo"], 7 * W, 10 * W)]
    assert retrains[0]["model"] == "gbdt:v1" and "expo" in retrains[0]["reason"]
    after = records.index(retrains[0])
    assert records[after - 1]["window_start_ms"] == 2 * W  # right after the third breached window


def test_monitor_without_reference_is_disabled() -> None:
    for reference in (None, {}, {"schema": 99}):
        m = DriftMonitor(reference, DriftThresholds(), W, "mlp:v2")
        (rec,) = m.update([1, 2], np.zeros((2, 4)), np.zeros(2))
        assert rec["kind"] == "monitoring_disabled" and rec["model"] == "mlp:v2"
        assert m.update([W * 5], np.zeros((1, 9)), np.zeros(3)) == [] and m.flush() == []
    assert rec["reason"].startswith("invalid reference")
    assert DriftMonitor(None, model_ref="m").update([], np.empty((0, 1)), [])[0]["reason"] == "no reference statistics"


def test_offline_equals_streaming_single_window(ref: dict[str, Any]) -> None:
    x, p = sample(3000, 13)
    x[::11, 2] = np.nan
    x[:, 0] += 1.0
    off = offline_drift(x, p, ref, DriftThresholds(), model_ref="gbdt:v1", sample_size=500)
    m = DriftMonitor(ref, DriftThresholds(), W, "gbdt:v1", sample_size=500)
    ends = np.full(3000, 2 * W + 1)
    assert m.update(ends[:1000], x[:1000], p[:1000]) == [] and m.update(ends[1000:], x[1000:], p[1000:]) == []
    (stream,) = m.flush()
    assert stream["window_start_ms"] == 2 * W and off["window_start_ms"] is None
    drop = ("window_start_ms", "window_end_ms")
    assert same({k: v for k, v in stream.items() if k not in drop}, {k: v for k, v in off.items() if k not in drop})
    assert off["alerts"] and stream["features"]["normal"]["ks"] == off["features"]["normal"]["ks"]  # same sample
    one = DriftMonitor(ref, DriftThresholds(), W, "gbdt:v1", sample_size=500)
    assert one.update(ends, x, p) == [] and one.flush()[0]["features"] == off["features"]  # one batch: exact


# -- CLI -----------------------------------------------------------------------------------


def _logistic_onnx(weights: np.ndarray, bias: float) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    f = weights.size
    init = [numpy_helper.from_array(weights.reshape(f, 1).astype(np.float32), "w"),
            numpy_helper.from_array(np.array([bias], np.float32), "b"),
            numpy_helper.from_array(np.array([1.0], np.float32), "one")]
    nodes = [helper.make_node("MatMul", ["features", "w"], ["z"]), helper.make_node("Add", ["z", "b"], ["zb"]),
             helper.make_node("Sigmoid", ["zb"], ["p1"]), helper.make_node("Sub", ["one", "p1"], ["p0"]),
             helper.make_node("Concat", ["p0", "p1"], ["probabilities"], axis=1)]
    graph = helper.make_graph(nodes, "logistic", [helper.make_tensor_value_info("features", TensorProto.FLOAT,
                                                                                [None, f])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2])], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from jobs.generator import TrafficConfig, generate_events
    from models.train import labelled_dataset
    from transforms.registry import ModelEntry
    from transforms.scoring import OnnxScorer
    from transforms.spec import load_spec

    spec = load_spec()
    names = spec.model_feature_names
    ds = labelled_dataset(spec, generate_events(8000, TrafficConfig(seed=21)))
    w = np.zeros(len(names))
    w[names.index("user_tumble_10s.ctr")] = 4.0  # the score depends on the ctr only
    root = tmp_path_factory.mktemp("drift_registry")
    blob = _logistic_onnx(w, -2.0)
    (root / "logit.onnx").write_bytes(blob)
    base = ModelEntry("logit", "v1", "onnx", "logit.onnx", hashlib.sha256(blob).hexdigest(), names, spec.version,
                      ds.fingerprint)
    scores = OnnxScorer(root / "logit.onnx", base).predict(ds.x)
    with_ref = replace(base, reference=build_reference(ds.x, scores, names))
    bare = replace(base, version="v0")
    (root / "registry.json").write_text(json.dumps({"models": [bare.to_json(), with_ref.to_json()]}))
    return root / "registry.json"


def test_cli_no_drift_on_the_training_distribution(registry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from jobs.drift import main

    assert main(["--model", "logit:v1", "--registry", str(registry), "--events", "8000", "--seed", "21",
                 "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    summary, full = json.loads(lines[-1]), json.loads(lines[-2])
    assert summary == {"model": "logit:v1", "rows": full["n"], "features": 11, "alerts": [], "severe": False}
    assert full["n"] > 500 and all(c["psi"] < 1e-9 and c["ks"] < 0.01 for c in full["features"].values())
    assert lines[0].split()[:3] == ["feature", "n", "psi"] and "user_hop_60s.ctr" in lines[1 + 8]


def test_cli_shift_alerts_the_shifted_feature(registry: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from jobs.drift import main

    page = tmp_path / "drift.html"
    assert main(["--model", "logit:v1", "--registry", str(registry), "--events", "8000", "--seed", "21",
                 "--shift", "user_tumble_10s.impressions=3", "--html", str(page)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-1])
    assert summary["severe"] is True and {a["feature"] for a in summary["alerts"]} == {"user_tumble_10s.impressions"}
    row = next(line for line in out if line.startswith("user_tumble_10s.impressions"))
    assert row.split()[-1] == "critical"
    assert "data:image/png;base64," in page.read_text()


def test_cli_errors(registry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from jobs.drift import main

    assert main(["--model", "logit:v0", "--registry", str(registry), "--events", "100"]) == 2
    assert "no reference statistics" in capsys.readouterr().err
    assert main(["--model", "nope", "--registry", str(registry), "--events", "100"]) == 1
    assert main(["--model", "logit:v1", "--registry", str(registry), "--events", "300", "--shift", "bogus=2"]) == 2
    assert "FEATURE=FACTOR" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["--model", "logit:v1", "--registry", str(registry)])  # needs --dataset or --events
    assert exc.value.code == 2


def test_drift_is_a_streamscore_command(capsys: pytest.CaptureFixture[str]) -> None:
    from jobs import cli

    assert cli.COMMANDS["drift"][0] == "jobs.drift"
    with pytest.raises(SystemExit) as exc:
        cli.main(["drift", "--help"])
    assert exc.value.code == 0 and "--shift FEATURE=FACTOR" in capsys.readouterr().out


def test_lagged_monitor_keeps_rows_that_arrive_after_the_next_window_began():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3000, 2))
    ref = build_reference(x, rng.uniform(size=3000), ["a", "b"])
    mon = DriftMonitor(ref, DriftThresholds(min_count=10), window_ms=10, model_ref="m", lag_windows=1)
    s = rng.uniform(size=100)
    assert mon.update([5] * 50, x[:50], s[:50]) == []
    assert mon.update([15] * 50, x[50:100], s[:50]) == []  # window 1 starts; window 0 stays open
    assert mon.update([7] * 20, x[100:120], s[:20]) == []  # a straggler of window 0 is kept
    out = mon.update([25] * 5, x[120:125], s[:5])  # window 2 starts: window 0 completes
    assert [(r["window_start_ms"], r["n"]) for r in out] == [(0, 70)] and mon.late_rows == 0
    eager = DriftMonitor(ref, DriftThresholds(min_count=10), window_ms=10, model_ref="m")
    eager.update([5] * 50, x[:50], s[:50])
    assert [r["n"] for r in eager.update([15] * 50, x[50:100], s[:50])] == [50]
    eager.update([7] * 20, x[100:120], s[:20])
    assert eager.late_rows == 20


def test_warmup_windows_after_a_cold_start_are_not_monitored():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(2000, 2))
    ref = build_reference(x, rng.uniform(size=2000), ["a", "b"])
    mon = DriftMonitor(ref, DriftThresholds(min_count=10), window_ms=10, model_ref="m", warmup_ms=20)
    s = rng.uniform(size=50)
    out = []
    for end in (3, 13, 23, 33, 43):  # windows 0 and 1 are within 20 ms of the first one
        out += mon.update([end] * 50, x[:50] + (5.0 if end < 20 else 0.0), s)
    assert [r["window_start_ms"] for r in out] == [20, 30]
    assert mon.warmup_rows == 100  # the shifted warm-up rows are in no window
    assert all(abs(r["features"]["a"]["mean_shift_sd"]) < 1.0 for r in out)
