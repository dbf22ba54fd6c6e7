"""The PyFlink adapter of the scorer (jobs/flink_udfs.py) on plain frames, without Flink:
columns in and out, the label rows, shadow columns, and the gauges of monitoring values."""

from __future__ import annotations

import numpy as np
import pandas as pd

from jobs.flink_udfs import N_ID_COLUMNS, SCORED_FIELDS, GaugingPublisher, ScoreBatch
from tests.unit.registry_fixtures import FS, N_FEATURES
from tests.unit.test_serving import EVAL, data, registry  # noqa: F401 (fixtures)
from transforms.serving import ListPublisher, ServingConfig


class NoMetrics:
    """A function context whose metric group is unavailable (metrics become no-ops)."""

    def get_metric_group(self):
        raise RuntimeError("no metric group here")


def frame(x: np.ndarray, kinds: list[str]) -> pd.DataFrame:
    n = len(kinds)
    cols = {"row_kind": kinds, "user_id": [f"u{i}" for i in range(n)], "window_start_ms": [0] * n,
            "window_end_ms": [10_000] * n, "fired_at_ms": [5] * n, "label_clicks": [1.0] * n,
            "region": ["eu"] * n, "device": ["mobile"] * n}
    df = pd.DataFrame(cols)
    feats = pd.DataFrame(np.where(np.array(kinds)[:, None] == "s", x[:n], np.nan), columns=[f"f{i}" for i in
                                                                                         range(N_FEATURES)])
    return pd.concat([df, feats], axis=1)


def test_eval_scores_model_rows_and_passes_label_rows(registry, data):  # noqa: F811
    x, _ = data
    fn = ScoreBatch(ServingConfig(str(registry), "", "", FS, eval=EVAL), N_FEATURES)
    fn.open(NoMetrics())
    kinds = ["s", "s", "l", "s"]
    out = fn.eval(frame(x, kinds))
    fn.close()
    assert list(out.columns) == [n for n, _ in SCORED_FIELDS] and len(out) == 4
    assert N_ID_COLUMNS == 8
    assert out["row_kind"].tolist() == kinds
    assert out.loc[out.row_kind == "s", "model_name"].tolist() == ["gbdt"] * 3
    assert out.loc[out.row_kind == "l", "model_name"].tolist() == [""]
    assert np.all((out.loc[out.row_kind == "s", "score"] > 0) & (out.loc[out.row_kind == "s", "score"] < 1))
    assert out["shadow_model_version"].tolist() == [""] * 4


def test_gauging_publisher_mirrors_drift_and_fairness_values():
    seen = []

    class Gauges:
        def gauge(self, name, labels, value):
            seen.append((name, dict(labels), value))

    inner = ListPublisher()
    pub = GaugingPublisher(inner, Gauges())
    pub.monitoring([{"kind": "drift", "values": {"psi.a": 0.2, "n": 5.0, "missing_delta.a": 0.0}},
                    {"kind": "fairness", "values": {"positive_rate_ratio.region=eu": 0.9, "n.region=eu": 3.0}}])
    pub.metrics([{"x": 1}])
    assert seen == [("psi", {"feature": "a"}, 0.2), ("positive_rate_ratio", {"attribute": "region", "group": "eu"}, 0.9)]
    assert len(inner.monitored) == 2 and inner.records == [{"x": 1}]


def test_eval_takes_one_series_per_column_too(registry, data):  # noqa: F811
    x, _ = data
    fn = ScoreBatch(ServingConfig(str(registry), "", "", FS), N_FEATURES)
    fn.open(NoMetrics())
    df = frame(x, ["s", "s", "s"])
    whole = fn.eval(df)
    split = fn.eval(*[df[c] for c in df.columns])
    fn.close()
    assert split["score"].tolist() == whole["score"].tolist() and split["model_name"].tolist() == ["gbdt"] * 3
