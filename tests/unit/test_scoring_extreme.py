"""Extreme but finite feature values (issue 12, part 3): a row the model cannot score falls
back on its own, with its reason, and every other row of the batch keeps the model's score
(exactly the score of those rows scored alone). No cast overflows, and drift monitoring is
not poisoned by such a row."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
from onnx import TensorProto, helper, numpy_helper

from models.train import to_onnx, train_gbdt, train_mlp
from tests.unit.registry_fixtures import FS, N_FEATURES, entry_json
from transforms.deployment import Arm, Deployment
from transforms.drift import DriftWindow, build_reference
from transforms.router import Serving, load_predictors, route
from transforms.scoring import FEATURE_OUT_OF_RANGE, OUTPUT_ERROR, ModelRouter, OnnxScorer, ScoringError
from transforms.serving import ListPublisher, ScoringService, ServingConfig

EXTREME = [1e100, 1.797e308, -1e300]  # finite in float64, beyond float32
NON_FINITE = [float("nan"), float("inf"), float("-inf")]
N_ROWS = 200
BAD_ROW, BAD_COL = 37, 3


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(12)
    x = rng.normal(0, 1, (1500, N_FEATURES)).astype(np.float32)
    logit = 1.5 * x[:, 1] - x[:, 2] + 0.5 * x[:, 3] - 1
    y = (rng.random(1500) < 1 / (1 + np.exp(-logit))).astype(int)
    return x, y


def logistic_f64_onnx(weights: list[float], bias: float) -> bytes:
    """A model with a float64 (``tensor(double)``) input: ``probabilities`` = [1 - p, p],
    p = sigmoid(x @ weights + bias). It can take values beyond float32's range."""
    x = helper.make_tensor_value_info("features", TensorProto.DOUBLE, [None, len(weights)])
    y = helper.make_tensor_value_info("probabilities", TensorProto.DOUBLE, [None, 2])
    inits = [numpy_helper.from_array(np.array(weights, np.float64).reshape(-1, 1), "W"),
             numpy_helper.from_array(np.array([bias], np.float64), "B"),
             numpy_helper.from_array(np.array([1.0], np.float64), "One")]
    nodes = [helper.make_node("MatMul", ["features", "W"], ["z0"]),
             helper.make_node("Add", ["z0", "B"], ["z"]),
             helper.make_node("Sigmoid", ["z"], ["p"]),
             helper.make_node("Sub", ["One", "p"], ["q"]),
             helper.make_node("Concat", ["q", "p"], ["probabilities"], axis=1)]
    model = helper.make_model(helper.make_graph(nodes, "logistic64", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 15)], ir_version=8)
    onnx.checker.check_model(model)
    return model.SerializeToString()


@pytest.fixture(scope="module")
def registry(tmp_path_factory, data) -> Path:
    """gbdt:t1 active, mlp:t1 fallback (trained, float32 input), logit64:h1 (float64 input)."""
    x, y = data
    root = tmp_path_factory.mktemp("extreme-registry")
    (root / "artifacts").mkdir()
    entries = [
        entry_json(root, "gbdt", "t1", "gbdt", to_onnx(train_gbdt(x, y, n_estimators=20, seed=1), "gbdt",
                                                       N_FEATURES), stage="active"),
        entry_json(root, "mlp", "t1", "mlp", to_onnx(train_mlp(x, y), "mlp", N_FEATURES), stage="fallback"),
        entry_json(root, "logit64", "h1", "onnx", logistic_f64_onnx([0.0, 1.5, -1.0, 0.5, 0.0, 0.0], -1.0)),
    ]
    (root / "registry.json").write_text(json.dumps({"models": entries}))
    return root / "registry.json"


@pytest.fixture(scope="module")
def preds(registry) -> dict[str, OnnxScorer]:
    loaded, errors = load_predictors(registry, {"gbdt:t1", "mlp:t1", "logit64:h1"}, FS)
    assert not errors
    return loaded


@contextmanager
def no_runtime_warnings() -> Iterator[None]:
    """Any RuntimeWarning (``overflow encountered in cast``) fails the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        yield


def batch(data, value: float, row: int = BAD_ROW, col: int = BAD_COL) -> np.ndarray:
    x = data[0][:N_ROWS].astype(np.float64)  # float64, as the job hands features over
    x[row, col] = value
    return x


def assert_others_get_the_model_score(scores: np.ndarray, model: OnnxScorer, x: np.ndarray, row: int) -> None:
    """Every row but ``row`` has exactly the score ``model`` gives those rows scored alone."""
    alone = model.predict(np.delete(x, row, axis=0))
    np.testing.assert_array_equal(np.delete(scores, row), alone)


def expected_range_reason(col: int = BAD_COL) -> str:
    return f"{FEATURE_OUT_OF_RANGE}: f{col}"


# -- the scorer: row checks, no overflowing cast ------------------------------------------------
@pytest.mark.parametrize("value", EXTREME + NON_FINITE)
@pytest.mark.parametrize("ref", ["gbdt:t1", "mlp:t1"])
def test_scorer_leaves_out_the_row_its_input_type_cannot_hold(preds, data, ref, value):
    x = batch(data, value)
    with no_runtime_warnings():
        res = preds[ref].score_rows(x)
    assert res.failed.tolist() == [BAD_ROW] and res.why.tolist() == [expected_range_reason()]
    assert np.isnan(res.scores[BAD_ROW])
    assert_others_get_the_model_score(res.scores, preds[ref], x, BAD_ROW)
    with no_runtime_warnings(), pytest.raises(ScoringError, match=FEATURE_OUT_OF_RANGE):
        preds[ref].predict(x)  # the strict form refuses the batch instead of casting 1e100 to inf


def test_largest_float32_values_are_still_scored(preds, data):
    x = batch(data, float(np.finfo(np.float32).max))
    with no_runtime_warnings():
        res = preds["gbdt:t1"].score_rows(x)
    assert res.failed.size == 0 and np.all((res.scores >= 0) & (res.scores <= 1))


def test_a_float64_model_scores_values_beyond_float32(preds, data):
    x = batch(data, 1e100)
    with no_runtime_warnings():
        res = preds["logit64:h1"].score_rows(x)
    assert res.failed.size == 0 and res.scores[BAD_ROW] == 1.0  # sigmoid(0.5 * 1e100 + ...)


# -- the router: the row falls back alone, the batch is scored by the model ---------------------
@pytest.mark.parametrize("value", EXTREME + NON_FINITE)
@pytest.mark.parametrize("primary,fallback", [("gbdt:t1", "mlp:t1"), ("mlp:t1", "gbdt:t1")])
def test_one_extreme_row_falls_back_alone_to_the_default(preds, data, primary, fallback, value):
    x = batch(data, value)
    router = ModelRouter(preds[primary], preds[fallback], default_score=0.07, latency_budget_ms=60_000)
    with no_runtime_warnings():
        out = router.score(x)
    names, versions, reasons = out.per_row()
    p_name, p_version = primary.split(":")
    assert_others_get_the_model_score(out.scores, preds[primary], x, BAD_ROW)
    others = np.arange(N_ROWS) != BAD_ROW
    assert set(names[others]) == {p_name} and set(versions[others]) == {p_version}
    assert set(reasons[others]) == {""} and out.fallback_reason == ""
    # neither float32 model can hold the value: the documented default score, with the reason
    assert out.scores[BAD_ROW] == 0.07 and (names[BAD_ROW], versions[BAD_ROW]) == ("default", "default")
    assert reasons[BAD_ROW] == f"{expected_range_reason()}; fallback_error: {expected_range_reason()}"


@pytest.mark.parametrize("value", EXTREME)
def test_one_extreme_row_is_served_by_a_known_good_model_that_can_hold_it(preds, data, value):
    x = batch(data, value)
    router = ModelRouter(preds["gbdt:t1"], preds["logit64:h1"], latency_budget_ms=60_000)
    with no_runtime_warnings():
        out = router.score(x)
    names, versions, reasons = out.per_row()
    assert_others_get_the_model_score(out.scores, preds["gbdt:t1"], x, BAD_ROW)
    assert (names[BAD_ROW], versions[BAD_ROW], reasons[BAD_ROW]) == ("logit64", "h1", expected_range_reason())
    assert out.scores[BAD_ROW] == preds["logit64:h1"].predict(x[BAD_ROW:BAD_ROW + 1])[0]
    assert set(names[np.arange(N_ROWS) != BAD_ROW]) == {"gbdt"}


def test_a_row_whose_model_output_is_nan_falls_back_alone(preds, data):
    """Values float32 can hold, but the MLP's arithmetic overflows on them: NaN for that row."""
    x = batch(data, 3.4e38, col=1)
    x[BAD_ROW, 2] = -3.4e38
    mlp = preds["mlp:t1"]
    with no_runtime_warnings():
        assert mlp.score_rows(x).failed.tolist() == [BAD_ROW]  # the premise: only that row
        out = ModelRouter(mlp, preds["gbdt:t1"], latency_budget_ms=60_000).score(x)
    names, _, reasons = out.per_row()
    assert_others_get_the_model_score(out.scores, mlp, x, BAD_ROW)
    assert (names[BAD_ROW], reasons[BAD_ROW]) == ("gbdt", f"primary_error: {OUTPUT_ERROR}")
    assert out.scores[BAD_ROW] == preds["gbdt:t1"].predict(x[BAD_ROW:BAD_ROW + 1])[0]
    assert set(reasons[np.arange(N_ROWS) != BAD_ROW]) == {""}


def test_several_extreme_rows_each_fall_back_with_their_own_feature(preds, data):
    x = batch(data, 1e100, row=3, col=0)
    x[50, 5], x[51, 2], x[51, 4] = -1.797e308, float("nan"), 1e300
    with no_runtime_warnings():
        out = ModelRouter(preds["gbdt:t1"], preds["mlp:t1"], latency_budget_ms=60_000).score(x)
    _, _, reasons = out.per_row()
    bad = [3, 50, 51]
    assert [r.split(";")[0] for r in reasons[bad]] == [expected_range_reason(c) for c in (0, 5, 2)]
    alone = preds["gbdt:t1"].predict(np.delete(x, bad, axis=0))
    np.testing.assert_array_equal(np.delete(out.scores, bad), alone)


def test_whole_model_failures_still_send_the_whole_batch(preds, data):
    x = batch(data, 1e100)
    late = ModelRouter(preds["gbdt:t1"], preds["mlp:t1"], default_score=0.07, latency_budget_ms=-1.0)
    with no_runtime_warnings():
        out = late.score(x)
    names, _, reasons = out.per_row()
    assert out.model_name == "mlp" and out.fallback_reason == "latency_budget"
    others = np.arange(N_ROWS) != BAD_ROW
    assert set(names[others]) == {"mlp"} and set(reasons[others]) == {"latency_budget"}
    assert_others_get_the_model_score(out.scores, preds["mlp:t1"], x, BAD_ROW)
    assert (names[BAD_ROW], out.scores[BAD_ROW]) == ("default", 0.07)
    assert reasons[BAD_ROW] == f"latency_budget; fallback_error: {expected_range_reason()}"


# -- routing and the service ---------------------------------------------------------------------
@pytest.mark.parametrize("value", EXTREME)
def test_route_with_arms_and_shadow_keeps_every_other_row_on_its_model(preds, data, value):
    x = batch(data, value)
    users = [f"u{i}" for i in range(N_ROWS)]
    dep = Deployment(arms=(Arm("control", "gbdt:t1", 0.5), Arm("treatment", "mlp:t1", 0.5)), fallback="gbdt:t1",
                     shadow="mlp:t1")
    with no_runtime_warnings():
        out = route(Serving(dep, preds), users, x, default_score=0.07, latency_budget_ms=60_000,
                    with_reference=True)
    assert out.fallback_reason[BAD_ROW].startswith(expected_range_reason())
    assert out.model_name[BAD_ROW] == "default" and out.scores[BAD_ROW] == 0.07
    for i, ref in enumerate(("gbdt:t1", "mlp:t1")):
        rows = np.flatnonzero((out.arm_index == i) & (np.arange(N_ROWS) != BAD_ROW))
        assert rows.size
        np.testing.assert_array_equal(out.scores[rows], preds[ref].predict(x[rows]))
        assert {out.model_name[r] for r in rows} == {ref.split(":")[0]}
        assert {out.fallback_reason[r] for r in rows} == {""}
    assert out.shadow_ref == "mlp:t1" and out.shadow_scores is not None and out.reference_scores is not None
    assert np.isnan(out.shadow_scores[BAD_ROW]) and np.isnan(out.reference_scores[BAD_ROW])
    assert_others_get_the_model_score(out.shadow_scores, preds["mlp:t1"], x, BAD_ROW)


def test_service_scores_extreme_rows_without_a_fallback_alert(registry, data):
    svc = ScoringService(ServingConfig(str(registry), "gbdt:t1", "mlp:t1", FS), ListPublisher(),
                         clock=lambda: 100.0)
    users = [f"u{i}" for i in range(N_ROWS)]
    for step, value in enumerate(EXTREME):
        x = batch(data, value)
        with no_runtime_warnings():
            out = svc.score(users, [10_000 * (step + 1)] * N_ROWS, x)
        assert_others_get_the_model_score(out.scores, svc.serving.predictors["gbdt:t1"], x, BAD_ROW)
        assert out.fallback_reason[BAD_ROW].startswith(expected_range_reason())
        assert sum(bool(r) for r in out.fallback_reason) == 1
    # a row's own data is not a model failure: no model_fallback alert, no rollback
    assert not [a for a in svc.publisher.alerts if a["kind"] in ("model_fallback", "auto_rollback")]


# -- the Flink adapter: features reach the scorer as float64, no cast there ----------------------
def test_flink_score_batch_scores_an_extreme_row_on_its_own(registry, data):
    from jobs.flink_udfs import N_ID_COLUMNS, ScoreBatch

    class NoMetrics:
        def get_metric_group(self):
            raise RuntimeError("no metric group here")

    n = 40
    x = batch(data, 1.797e308)[:n]
    ids = pd.DataFrame({"row_kind": ["s"] * n, "user_id": [f"u{i}" for i in range(n)], "window_start_ms": [0] * n,
                        "window_end_ms": [10_000] * n, "fired_at_ms": [5] * n, "label_clicks": [0.0] * n,
                        "region": ["eu"] * n, "device": ["mobile"] * n})
    assert ids.shape[1] == N_ID_COLUMNS
    frame = pd.concat([ids, pd.DataFrame(x, columns=[f"f{i}" for i in range(N_FEATURES)])], axis=1)
    fn = ScoreBatch(ServingConfig(str(registry), "gbdt:t1", "mlp:t1", FS), N_FEATURES)
    fn.open(NoMetrics())
    try:
        with no_runtime_warnings():
            out = fn.eval(frame)
    finally:
        fn.close()
    gbdt = OnnxScorer(registry.parent / "artifacts/gbdt-t1.onnx",
                      fn.service.serving.predictors["gbdt:t1"].entry)  # type: ignore[union-attr]
    assert_others_get_the_model_score(out["score"].to_numpy(), gbdt, x, BAD_ROW)
    assert out["fallback_reason"][BAD_ROW].startswith(expected_range_reason())
    assert out["model_name"][BAD_ROW] == "default"
    assert set(out["model_name"].drop(index=BAD_ROW)) == {"gbdt"}


# -- drift: an extreme value is missing, never an overflowing sum -------------------------------
def test_drift_window_counts_extreme_values_as_missing(data):
    x, _ = data
    p = np.linspace(0.01, 0.99, x.shape[0])
    ref = build_reference(x, p, [f"f{i}" for i in range(N_FEATURES)])
    xb = x[:N_ROWS].astype(np.float64)
    xb[:3, BAD_COL] = [1.797e308, 1.797e308, -1e300]
    with no_runtime_warnings():
        report = DriftWindow(ref).add(xb, p[:N_ROWS]).result()
    col = report.features[f"f{BAD_COL}"]
    assert col.n == N_ROWS and col.n_valid == N_ROWS - 3
    values = [v for c in report.columns().values() for v in (c.psi, c.ks, c.mean, c.mean_shift_sd)]
    assert np.all(np.isfinite(values))
    clean = DriftWindow(ref).add(np.delete(xb, [0, 1, 2], axis=0), np.delete(p[:N_ROWS], [0, 1, 2])).result()
    assert col.mean == clean.features[f"f{BAD_COL}"].mean
