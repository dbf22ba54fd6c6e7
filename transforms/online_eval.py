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

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

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


# -- the label join and the per-window accumulators -------------------------------------

ROLES = ("served", "shadow", "reference")


@dataclass(frozen=True)
class EvalConfig:
    """``step_ms``: the scoring windows' step (window ends are multiples of it);
    ``attribution_ms``: a score at window end W is labelled 1 when the user clicks in
    ``[W, W + attribution_ms)`` (the training label, for the default of one step);
    ``eval_window_ms``: metrics are emitted per this span of window ends; ``grace_ms``:
    event time the label stream must pass a label window's end by before a score with no
    click is resolved as 0 (covers reordering between the two inputs)."""

    step_ms: int = 10_000
    attribution_ms: int = 10_000
    eval_window_ms: int = 60_000
    grace_ms: int = 20_000
    serving_threshold: float = 0.3  # a score at or above it is a positive decision (fairness)

    def __post_init__(self) -> None:
        if self.step_ms <= 0:
            raise ValueError("step_ms must be positive")
        if self.attribution_ms <= 0 or self.attribution_ms % self.step_ms:
            raise ValueError(f"attribution_ms {self.attribution_ms} must be a positive multiple of the scoring step "
                             f"{self.step_ms}")
        if self.eval_window_ms <= 0 or self.eval_window_ms % self.step_ms:
            raise ValueError(f"eval_window_ms {self.eval_window_ms} must be a positive multiple of {self.step_ms}")
        if self.grace_ms < 0:
            raise ValueError("grace_ms must be >= 0")
        if not 0.0 < self.serving_threshold < 1.0:
            raise ValueError("serving_threshold must be in (0, 1)")


@dataclass
class WindowMetrics:
    """Mergeable totals of one (eval window, role, arm, model)."""

    n: int = 0
    positives: int = 0
    sum_score: float = 0.0
    sum_logloss: float = 0.0
    sum_logloss_sq: float = 0.0
    pos: np.ndarray = field(default_factory=lambda: np.zeros(N_AUC_BINS, np.int64))
    neg: np.ndarray = field(default_factory=lambda: np.zeros(N_AUC_BINS, np.int64))
    fallback_count: int = 0
    batch_ms: list[float] = field(default_factory=list)
    above_threshold: int = 0

    def add(self, scores: np.ndarray, labels: np.ndarray, fallbacks: int = 0, threshold: float = 0.3) -> None:
        ll = logloss_terms(scores, labels)
        p, q = score_histogram(scores, labels)
        self.n += int(scores.size)
        self.positives += int(np.asarray(labels).sum())
        self.sum_score += float(np.sum(scores))
        self.sum_logloss += float(ll.sum())
        self.sum_logloss_sq += float((ll * ll).sum())
        self.pos += p
        self.neg += q
        self.fallback_count += fallbacks
        self.above_threshold += int(np.count_nonzero(np.asarray(scores) >= threshold))

    def merge(self, other: WindowMetrics) -> WindowMetrics:
        out = WindowMetrics(self.n + other.n, self.positives + other.positives, self.sum_score + other.sum_score,
                            self.sum_logloss + other.sum_logloss, self.sum_logloss_sq + other.sum_logloss_sq,
                            self.pos + other.pos, self.neg + other.neg, self.fallback_count + other.fallback_count,
                            self.batch_ms + other.batch_ms, self.above_threshold + other.above_threshold)
        return out

    @property
    def mean_logloss(self) -> float:
        return self.sum_logloss / self.n if self.n else float("nan")

    @property
    def auc(self) -> float:
        return binned_auc(self.pos, self.neg)


Key = tuple[str, str, str, str]  # role, arm, model_name, model_version


class OnlineEvaluator:
    """Joins scores with later click windows in event time and accumulates metrics per
    evaluation window. ``add_scores`` takes one scored batch; ``add_labels`` one batch of
    click windows ``[window_start, window_start + attribution_ms)`` with click counts.
    Both return the metric records of evaluation windows that became complete.

    Order contract (the job's full outer join keeps it per user): a score arrives before
    the click window that labels it; a click window with no pending score is a click with
    no impression, counted in ``unattributed_clicks`` and not joined."""

    def __init__(self, cfg: EvalConfig, feature_set_version: str, clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.feature_set_version = feature_set_version
        self.clock = clock
        self.pending: dict[tuple[str, int], list[tuple[Key, float, bool]]] = {}
        self.progress_ms = -(2**62)  # max end of the label windows seen
        self.acc: dict[tuple[int, Key], WindowMetrics] = {}
        self.unattributed: dict[int, int] = {}
        self.counters = {"scores": 0, "labelled": 0, "positives": 0, "unattributed_clicks": 0, "emitted": 0}

    def _eval_start(self, window_end_ms: int) -> int:
        return window_end_ms - window_end_ms % self.cfg.eval_window_ms

    def add_scores(self, user_ids: Sequence[str], window_end_ms: Sequence[int],
                   entries: Sequence[tuple[Key, np.ndarray, np.ndarray | None]],
                   batch_ms: dict[Key, float] | None = None) -> list[dict[str, Any]]:
        """``entries``: ``(key, scores, fallback_mask or None)`` per role/arm/model, each
        over all rows (NaN where that key did not score the row)."""
        ends = [int(w) for w in window_end_ms]
        if ends and batch_ms:
            e0 = self._eval_start(ends[0])
            for key, ms in batch_ms.items():
                self.acc.setdefault((e0, key), WindowMetrics()).batch_ms.append(float(ms))
        cols = [(key, np.asarray(s, np.float64), fb) for key, s, fb in entries]
        for i, (u, w) in enumerate(zip(user_ids, ends, strict=True)):
            row = [(key, float(s[i]), bool(fb[i]) if fb is not None else False) for key, s, fb in cols
                   if not math.isnan(s[i])]
            self.counters["scores"] += 1
            if w + self.cfg.attribution_ms + self.cfg.grace_ms <= self.progress_ms:
                self._resolve(w, row, False)  # the label window has passed with no click
            else:
                self.pending.setdefault((u, w), []).extend(row)
        return self._complete()

    def add_labels(self, user_ids: Sequence[str], window_start_ms: Sequence[int],
                   clicks: Sequence[float]) -> list[dict[str, Any]]:
        for u, s, c in zip(user_ids, window_start_ms, clicks, strict=True):
            s = int(s)
            clicked = bool(c and c > 0)
            row = self.pending.pop((u, s), None)
            if row is not None:
                self._resolve(s, row, clicked)
            elif clicked:  # no score to join: counted, not joined
                e0 = self._eval_start(s)
                self.unattributed[e0] = self.unattributed.get(e0, 0) + 1
                self.counters["unattributed_clicks"] += 1
            self.progress_ms = max(self.progress_ms, s + self.cfg.attribution_ms)
        self._expire()
        return self._complete()

    def _resolve(self, window_end_ms: int, row: list[tuple[Key, float, bool]], label: bool) -> None:
        e0 = self._eval_start(window_end_ms)
        y = np.array([int(label)])
        self.counters["labelled"] += 1
        self.counters["positives"] += int(label)
        for key, score, fb in row:
            self.acc.setdefault((e0, key), WindowMetrics()).add(np.array([score]), y, int(fb),
                                                                self.cfg.serving_threshold)

    def _expire(self) -> None:
        cut = self.progress_ms - self.cfg.attribution_ms - self.cfg.grace_ms
        for k in [k for k in self.pending if k[1] <= cut]:
            self._resolve(k[1], self.pending.pop(k), False)

    def _complete(self, flush: bool = False) -> list[dict[str, Any]]:
        c = self.cfg
        done_before = self.progress_ms - c.attribution_ms - c.grace_ms + c.step_ms - c.eval_window_ms
        starts = sorted({e0 for e0, _ in self.acc if flush or e0 <= done_before})
        out: list[dict[str, Any]] = []
        for e0 in starts:
            keys = sorted(k for s, k in self.acc if s == e0)
            first_served = next((k for k in keys if k[0] == "served"), None)
            for key in keys:
                m = self.acc.pop((e0, key))
                if m.n == 0 and not m.batch_ms:
                    continue
                extra = sum(self.unattributed.pop(w) for w in [w for w in self.unattributed if w <= e0]) \
                    if key == first_served else 0
                out.append(self._record(e0, key, m, extra))
        self.counters["emitted"] += len(out)
        return out

    def flush(self) -> list[dict[str, Any]]:
        """Records of every open window (at job end); pending scores stay unlabelled."""
        return self._complete(flush=True)

    def _record(self, e0: int, key: Key, m: WindowMetrics, unattributed: int) -> dict[str, Any]:
        role, arm, name, version = key
        ms = np.array(m.batch_ms) if m.batch_ms else np.zeros(1)
        return {
            "eval_window_start_ms": e0, "eval_window_end_ms": e0 + self.cfg.eval_window_ms, "arm": arm,
            "role": role, "model_name": name, "model_version": version,
            "feature_set_version": self.feature_set_version, "n": m.n, "positives": m.positives,
            "sum_score": m.sum_score, "sum_logloss": m.sum_logloss, "sum_logloss_sq": m.sum_logloss_sq,
            "auc_bins_pos": m.pos.tolist(), "auc_bins_neg": m.neg.tolist(), "fallback_count": m.fallback_count,
            "batch_count": len(m.batch_ms), "batch_ms_p50": float(np.percentile(ms, 50)),
            "batch_ms_p99": float(np.percentile(ms, 99)), "unattributed_clicks": unattributed,
            "above_threshold": m.above_threshold,
            "emitted_at_ms": int(self.clock() * 1000), "schema_version": 1,
        }


@dataclass(frozen=True)
class RollbackPolicy:
    """Roll back when, in one evaluation window with at least ``min_labels`` labelled
    scores, an arm's served log loss exceeds the fallback's on the same rows by more than
    ``logloss_ratio`` (0 disables)."""

    min_labels: int = 300
    logloss_ratio: float = 1.25

    def __post_init__(self) -> None:
        if self.min_labels < 1 or self.logloss_ratio < 0:
            raise ValueError("min_labels must be >= 1 and logloss_ratio >= 0")


def rollback_reason(records: Sequence[dict[str, Any]], policy: RollbackPolicy) -> str | None:
    """Why the records call for a rollback, or None.

    >>> base = {"eval_window_start_ms": 0, "arm": "active", "model_name": "m", "n": 400}
    >>> recs = [dict(base, role="served", model_version="2", sum_logloss=400.0),
    ...         dict(base, role="reference", model_name="fb", model_version="1", sum_logloss=200.0)]
    >>> rollback_reason(recs, RollbackPolicy())[:36]
    'online log loss of m:2 in arm active'
    """
    if policy.logloss_ratio <= 0:
        return None
    ref = {(r["eval_window_start_ms"], r["arm"]): r for r in records if r["role"] == "reference"}
    for r in records:
        if r["role"] != "served" or r["n"] < policy.min_labels:
            continue
        b = ref.get((r["eval_window_start_ms"], r["arm"]))
        if b is None or b["n"] < policy.min_labels or f"{b['model_name']}:{b['model_version']}" == \
                f"{r['model_name']}:{r['model_version']}":
            continue
        ll, ll_ref = r["sum_logloss"] / r["n"], b["sum_logloss"] / b["n"]
        if ll > ll_ref * policy.logloss_ratio:
            return (f"online log loss of {r['model_name']}:{r['model_version']} in arm {r['arm']} is {ll:.4f}, "
                    f"fallback {b['model_name']}:{b['model_version']} {ll_ref:.4f} on the same {r['n']} scores "
                    f"(ratio limit {policy.logloss_ratio}) in eval window from {r['eval_window_start_ms']}")
    return None
