"""PyFlink adapter of the scorer: a vectorized (pandas) map function that scores a whole
Arrow batch of feature vectors with one ONNX call. The logic lives in
``transforms.scoring``; this module only converts frames."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
from pyflink.table import DataTypes
from pyflink.table.udf import FunctionContext, ScalarFunction, udf

from transforms.scoring import ModelRouter, load_router

SCORED_FIELDS = [
    ("user_id", DataTypes.STRING()),
    ("window_start_ms", DataTypes.BIGINT()),
    ("window_end_ms", DataTypes.BIGINT()),
    ("score", DataTypes.DOUBLE()),
    ("model_name", DataTypes.STRING()),
    ("model_version", DataTypes.STRING()),
    ("arm", DataTypes.STRING()),
    ("fallback_reason", DataTypes.STRING()),
    ("fired_at_ms", DataTypes.BIGINT()),
    ("scored_at_ms", DataTypes.BIGINT()),
]


class ScoreBatch(ScalarFunction):
    """``map`` function: frame of ``user_id, window_start_ms, window_end_ms, fired_at_ms``
    + model inputs in order -> scored frame."""

    def __init__(self, registry_path: str, model_name: str, fallback_name: str, feature_set_version: str,
                 n_features: int, default_score: float, latency_budget_ms: float) -> None:
        self.registry_path = registry_path
        self.model_name = model_name
        self.fallback_name = fallback_name
        self.feature_set_version = feature_set_version
        self.n_features = n_features
        self.default_score = default_score
        self.latency_budget_ms = latency_budget_ms
        self.router: ModelRouter | None = None

    def open(self, function_context: FunctionContext) -> None:
        self.router = load_router(Path(self.registry_path), self.model_name, self.fallback_name,
                                  self.feature_set_version, self.default_score, self.latency_budget_ms)

    def eval(self, frame: pd.DataFrame) -> pd.DataFrame:
        router = self.router
        if router is None:
            raise RuntimeError("ScoreBatch.open was not called")
        x = frame.iloc[:, 4:4 + self.n_features].to_numpy(dtype=np.float32)
        out = router.score(x)
        n = len(frame)
        return pd.DataFrame({
            "user_id": frame.iloc[:, 0].astype(str).to_numpy(),
            "window_start_ms": frame.iloc[:, 1].astype("int64").to_numpy(),
            "window_end_ms": frame.iloc[:, 2].astype("int64").to_numpy(),
            "score": out.scores,
            "model_name": [out.model_name] * n,
            "model_version": [out.model_version] * n,
            "arm": ["active" if not out.fallback_reason else "fallback"] * n,
            "fallback_reason": [out.fallback_reason] * n,
            "fired_at_ms": frame.iloc[:, 3].astype("int64").to_numpy(),
            "scored_at_ms": np.full(n, int(time.time() * 1000), dtype=np.int64),
        })


def score_udf(fn: ScoreBatch) -> object:
    return udf(fn, result_type=DataTypes.ROW([DataTypes.FIELD(n, t) for n, t in SCORED_FIELDS]), func_type="pandas")
