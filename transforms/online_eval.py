"""Online evaluation: scores joined with their delayed labels in event time, and the
per-window metrics of each model and arm (``update/get``).

Binned metrics use fixed score bins, so windows merge by adding counts:

>>> import numpy as np
>>> pos, neg = score_histogram(np.array([0.9, 0.8, 0.2, 0.1]), np.array([1, 1, 0, 0]))
>>> binned_auc(pos, neg)
1.0
>>> binned_auc(*score_histogram(np.array([0.5, 0.5]), np.array([1, 0])))
0.5
"""

from __future__ import annotations

import numpy as np

# Score bins for the binned AUC: logit-spaced, so the many scores near a small base rate
# still fall into distinct bins. len(edges) - 1 bins; edges[0] = 0 and edges[-1] = 1.
_LOGITS = np.linspace(-9.0, 9.0, 127)
AUC_BIN_EDGES: np.ndarray = np.concatenate([[0.0], 1.0 / (1.0 + np.exp(-_LOGITS)), [1.0]])
N_AUC_BINS = len(AUC_BIN_EDGES) - 1
EPS = 1e-7


def score_bins(scores: np.ndarray) -> np.ndarray:
    """Bin index of each score in ``AUC_BIN_EDGES`` (0 .. N_AUC_BINS - 1)."""
    idx = np.searchsorted(AUC_BIN_EDGES, np.asarray(scores, dtype=np.float64), side="right") - 1
    return np.clip(idx, 0, N_AUC_BINS - 1)


def score_histogram(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Counts of positives and negatives per score bin."""
    b = score_bins(scores)
    y = np.asarray(labels).astype(bool)
    pos = np.bincount(b[y], minlength=N_AUC_BINS).astype(np.int64)
    neg = np.bincount(b[~y], minlength=N_AUC_BINS).astype(np.int64)
    return pos, neg


def binned_auc(pos: np.ndarray | list[int], neg: np.ndarray | list[int]) -> float:
    """ROC AUC from per-bin counts (pairs in the same bin count one half); NaN when a
    class is empty."""
    p = np.asarray(pos, dtype=np.float64)
    n = np.asarray(neg, dtype=np.float64)
    n_pos, n_neg = p.sum(), n.sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    neg_below = np.concatenate([[0.0], np.cumsum(n)[:-1]])
    return float(((p * neg_below).sum() + 0.5 * (p * n).sum()) / (n_pos * n_neg))


def logloss_terms(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-score log loss (natural log), scores clipped to ``[EPS, 1 - EPS]``."""
    p = np.clip(np.asarray(scores, dtype=np.float64), EPS, 1 - EPS)
    y = np.asarray(labels, dtype=np.float64)
    return -(y * np.log(p) + (1 - y) * np.log1p(-p))
