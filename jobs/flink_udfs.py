"""PyFlink adapter of the scoring service: a vectorized (pandas) map function that scores
a whole Arrow batch of feature vectors with one ONNX call per arm. The logic lives in
``transforms.serving``; this module converts frames and wires Kafka (the model-control
watcher and the publisher of alerts and metrics) in ``open``."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
from pyflink.table import DataTypes
from pyflink.table.udf import FunctionContext, ScalarFunction, udf

from transforms.serving import ListPublisher, ScoringService, ServingConfig

SCORED_FIELDS = [
    ("row_kind", DataTypes.STRING()),
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
    ("shadow_score", DataTypes.DOUBLE()),
    ("shadow_model_name", DataTypes.STRING()),
    ("shadow_model_version", DataTypes.STRING()),
]
ATTRIBUTE_COLUMNS = ("region", "device")  # transforms.fairness.ATTRIBUTES, in the scoring input's order
N_ID_COLUMNS = 6 + len(ATTRIBUTE_COLUMNS)  # row_kind, user_id, window_start_ms, window_end_ms, fired_at_ms,
# label_clicks, the attributes


class ScoreBatch(ScalarFunction):
    """``map`` function over ``transforms.sql_compiler.scoring_input_query`` rows: 's'
    rows are scored; every row's ``label_clicks`` (clicks in ``[end - attribution, end)``)
    labels that user's score at ``end - attribution`` in the online evaluation."""

    def __init__(self, serving: ServingConfig, n_features: int, bootstrap: str = "", alerts_topic: str = "",
                 metrics_topic: str = "", control_topic: str = "", monitoring_topic: str = "",
                 explanations_topic: str = "") -> None:
        self.serving_cfg = serving
        self.n_features = n_features
        self.bootstrap = bootstrap
        self.topics = (alerts_topic, metrics_topic, control_topic, monitoring_topic, explanations_topic)
        self.service: ScoringService | None = None
        self.publisher: Any = None
        self.watcher: Any = None

    def open(self, function_context: FunctionContext) -> None:
        if self.bootstrap and any(self.topics):
            from jobs.model_control import KafkaPublisher

            self.publisher = KafkaPublisher(self.bootstrap, *self.topics)
        else:
            self.publisher = ListPublisher()
        self.service = ScoringService(self.serving_cfg, self.publisher)
        control_topic = self.topics[2]
        if self.bootstrap and control_topic:
            from jobs.model_control import ControlWatcher

            self.watcher = ControlWatcher(self.bootstrap, control_topic, self.service.apply_control)
            self.watcher.start()
        dep = self.service.serving.deployment
        from jobs.model_control import worker_log

        worker_log(f"serving {dep.describe()}")

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        if self.service is not None:
            self.service.close()
        if self.publisher is not None and hasattr(self.publisher, "close"):
            self.publisher.close()

    def eval(self, frame: pd.DataFrame) -> pd.DataFrame:
        service = self.service
        if service is None:
            raise RuntimeError("ScoreBatch.open was not called")
        n = len(frame)
        kind = frame.iloc[:, 0].astype(str).to_numpy()
        users = frame.iloc[:, 1].astype(str).to_numpy()
        starts = frame.iloc[:, 2].astype("int64").to_numpy()
        ends = frame.iloc[:, 3].astype("int64").to_numpy()
        score = np.zeros(n)
        name, version, arm, reason = ([""] * n for _ in range(4))
        shadow = np.full(n, np.nan)
        shadow_name, shadow_version = [""] * n, [""] * n
        rows = np.flatnonzero(kind == "s")
        if rows.size:
            x = frame.iloc[rows, N_ID_COLUMNS:N_ID_COLUMNS + self.n_features].to_numpy(dtype=np.float32)
            groups = {a: frame.iloc[rows, 6 + i].astype(str).tolist() for i, a in enumerate(ATTRIBUTE_COLUMNS)}
            out = service.score(users[rows].tolist(), ends[rows].tolist(), x, groups)
            score[rows] = out.scores
            for j, r in enumerate(rows.tolist()):
                name[r], version[r], arm[r], reason[r] = (out.model_name[j], out.model_version[j], out.arm[j],
                                                          out.fallback_reason[j])
            if out.shadow_scores is not None:
                shadow[rows] = out.shadow_scores
                s_name, _, s_version = out.shadow_ref.partition(":")
                for r in rows.tolist():
                    shadow_name[r], shadow_version[r] = s_name, s_version
        eval_cfg = service.cfg.eval
        if eval_cfg is not None and n:  # every row carries the clicks of [end - attribution, end)
            service.labels(users.tolist(), (ends - eval_cfg.attribution_ms).tolist(),
                           frame.iloc[:, 5].astype("float64").fillna(0.0).tolist())
        return pd.DataFrame({
            "row_kind": kind, "user_id": users, "window_start_ms": starts, "window_end_ms": ends, "score": score,
            "model_name": name, "model_version": version, "arm": arm, "fallback_reason": reason,
            "fired_at_ms": frame.iloc[:, 4].astype("int64").to_numpy(),
            "scored_at_ms": np.full(n, int(time.time() * 1000), dtype=np.int64),
            "shadow_score": shadow, "shadow_model_name": shadow_name, "shadow_model_version": shadow_version,
        })


def score_udf(fn: ScoreBatch) -> object:
    return udf(fn, result_type=DataTypes.ROW([DataTypes.FIELD(n, t) for n, t in SCORED_FIELDS]), func_type="pandas")
