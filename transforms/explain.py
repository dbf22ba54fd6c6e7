"""Explanations of sampled scores: a model-agnostic sensitivity analysis (each feature
replaced by its training reference mean, all rows and features in one batched call) and
TreeSHAP contributions from a LightGBM booster (``pred_contrib``).

>>> import numpy as np
>>> def predict(x):  # a linear "model": score = 0.1 * x0 + 0.2 * x1
...     return 0.1 * x[:, 0] + 0.2 * x[:, 1]
>>> [round(float(v), 3) for v in sensitivity(predict, np.array([[1.0, 2.0]]), np.zeros(2))[0]]
[0.1, 0.4]
>>> sampled("u1", 10_000, 1.0), sampled("u1", 10_000, 0.0)
(True, False)
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def sampled(user_id: str, window_end_ms: int, rate: float) -> bool:
    """Stable sampling of scores: the same (user, window) is chosen in every run."""
    if rate <= 0:
        return False
    if rate >= 1:
        return True
    h = hashlib.blake2b(f"{user_id}|{window_end_ms}".encode(), digest_size=8, person=b"streamscore-xpl").digest()
    return int.from_bytes(h, "big") / 2.0**64 < rate


def sensitivity(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, means: np.ndarray) -> np.ndarray:
    """``[k, f]`` attributions: score minus the score with feature j set to ``means[j]``;
    one ``predict`` call over ``k * (f + 1)`` rows."""
    k, f = x.shape
    batch = np.repeat(x[:, None, :], f + 1, axis=1)  # [k, f + 1, f]; slot 0 is the row itself
    idx = np.arange(f)
    batch[:, idx + 1, idx] = means[idx]
    scores = np.asarray(predict(batch.reshape(k * (f + 1), f).astype(np.float32))).reshape(k, f + 1)
    return scores[:, :1] - scores[:, 1:]


class TreeShap:
    """TreeSHAP contributions (log-odds, last column the expected value) of a LightGBM
    model saved as text; loaded only after its sha256 matches the registry."""

    def __init__(self, path: Path) -> None:
        import lightgbm as lgb

        self.booster = lgb.Booster(model_file=str(path))

    def contributions(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.booster.predict(x.astype(np.float64), pred_contrib=True))


def explanation_records(rows: list[tuple[str, int, str, str, str, float]], names: tuple[str, ...],
                        method: str, attributions: np.ndarray, feature_set_version: str,
                        now_ms: int) -> list[dict[str, Any]]:
    """``explanation.v1`` records; ``rows`` are ``(user, window_end, model_name,
    model_version, arm, score)``; TreeSHAP rows carry one more column, ``bias``."""
    out = []
    for (user, end, name, version, arm, score), attr in zip(rows, attributions, strict=True):
        values = {n: float(a) for n, a in zip(names, attr, strict=False)}
        if len(attr) == len(names) + 1:
            values["bias"] = float(attr[-1])
        out.append({"user_id": user, "window_end_ms": int(end), "model_name": name, "model_version": version,
                    "arm": arm, "score": float(score), "method": method, "attributions": values,
                    "feature_set_version": feature_set_version, "emitted_at_ms": now_ms, "schema_version": 1})
    return out
