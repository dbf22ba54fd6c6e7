"""PyFlink adapter of the scoring service: a vectorized (pandas) map function that scores
a whole Arrow batch of feature vectors with one ONNX call per arm. The logic lives in
``transforms.serving``; this module converts frames and wires Kafka (the model-control
watcher and the publisher of alerts and metrics) in ``open``."""

from __future__ import annotations

import time
from collections import Counter
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
        self.metrics: Any = None

    def open(self, function_context: FunctionContext) -> None:
        from jobs.metrics import UdfMetrics

        self.metrics = UdfMetrics(function_context)
        if self.bootstrap and any(self.topics):
            from jobs.model_control import KafkaPublisher

            inner: Any = KafkaPublisher(self.bootstrap, *self.topics)
        else:
            inner = ListPublisher(limit=1_000)  # topics off: keep only the newest, memory stays bounded
        self.publisher = GaugingPublisher(inner, self.metrics)
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

    def eval(self, *columns: pd.DataFrame | pd.Series) -> pd.DataFrame:
        # Table.map hands over one DataFrame, or one Series per column when the planner has
        # merged the projection before it into the Python operator
        frame = columns[0] if len(columns) == 1 and isinstance(columns[0], pd.DataFrame) else \
            pd.concat([pd.Series(c).reset_index(drop=True) for c in columns], axis=1)
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
        metrics = self.metrics
        metrics.rows_in(n)
        if rows.size:
            # float64 as SQL gives them: each model checks that a row fits its input type
            # before casting (an extreme row falls back on its own; no overflowing cast here)
            x = frame.iloc[rows, N_ID_COLUMNS:N_ID_COLUMNS + self.n_features].to_numpy(dtype=np.float64)
            groups = {a: frame.iloc[rows, 6 + i].astype(str).tolist() for i, a in enumerate(ATTRIBUTE_COLUMNS)}
            t0 = time.perf_counter()
            out = service.score(users[rows].tolist(), ends[rows].tolist(), x, groups)
            metrics.batch(int(rows.size), sum(out.arm_latency_ms.values()) or (time.perf_counter() - t0) * 1000)
            for (ref, arm_name, why), count in Counter(
                    (f"{m}:{v}", a, r.split(":", 1)[0].split(" ", 1)[0])
                    for m, v, a, r in zip(out.model_name, out.model_version, out.arm, out.fallback_reason,
                                          strict=True)).items():
                metrics.scores(ref, arm_name, why, count)
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
        scored_at = int(time.time() * 1000)
        if rows.size:  # window close (watermark passed its end) is at best its fire time
            metrics.latency_ms(scored_at - frame.iloc[rows, 4].astype("int64").to_numpy())
        return pd.DataFrame({
            "row_kind": kind, "user_id": users, "window_start_ms": starts, "window_end_ms": ends, "score": score,
            "model_name": name, "model_version": version, "arm": arm, "fallback_reason": reason,
            "fired_at_ms": frame.iloc[:, 4].astype("int64").to_numpy(),
            "scored_at_ms": np.full(n, scored_at, dtype=np.int64),
            "shadow_score": shadow, "shadow_model_name": shadow_name, "shadow_model_version": shadow_version,
        })


class GaugingPublisher:
    """Forwards everything to ``inner`` and mirrors drift and fairness values into
    Prometheus gauges (``streamscore_feature_psi_ppm{feature}``,
    ``streamscore_group_attribute_positive_rate_ratio_ppm{attribute, group}``)."""

    def __init__(self, inner: Any, udf_metrics: Any) -> None:
        self.inner, self.udf_metrics = inner, udf_metrics

    def __getattr__(self, name: str) -> Any:  # alert, metrics, control, explanations, close
        return getattr(self.inner, name)

    def monitoring(self, records: list[dict[str, Any]]) -> None:
        for r in records:
            for key, value in r["values"].items():
                stat, _, col = key.partition(".")
                if r["kind"] == "drift" and stat in ("psi", "ks"):
                    self.udf_metrics.gauge(stat, {"feature": col}, value)
                elif r["kind"] == "fairness" and stat in ("positive_rate_ratio", "mean_score_ratio"):
                    attr, _, group = col.partition("=")
                    self.udf_metrics.gauge(stat, {"attribute": attr, "group": group}, value)
        self.inner.monitoring(records)


def score_udf(fn: ScoreBatch) -> object:
    return udf(fn, result_type=DataTypes.ROW([DataTypes.FIELD(n, t) for n, t in SCORED_FIELDS]), func_type="pandas")
