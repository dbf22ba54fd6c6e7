"""Fairness across subgroups (``region``, ``device``): per evaluation window and group,
the mean score, the positive rate at the serving threshold and, once labels are joined,
the online CTR; disparity is the ratio and the difference against the best-served group
(the highest positive rate). Thresholds are declared with the model (its registry
entry's ``fairness``), not added afterwards.

Group statistics come from the online evaluator's ``role = "group"`` records (``arm`` is
``"<attribute>=<group>"``), so CTR uses the same event-time label join as the model metrics.

>>> recs = [{"eval_window_start_ms": 0, "role": "group", "arm": "region=eu", "n": 400, "sum_score": 120.0,
...          "positives": 80, "above_threshold": 200},
...         {"eval_window_start_ms": 0, "role": "group", "arm": "region=us", "n": 400, "sum_score": 60.0,
...          "positives": 80, "above_threshold": 40}]
>>> rows = disparities(recs, FairnessPolicy())
>>> [(r["group"], round(r["positive_rate_ratio"], 2)) for r in rows]
[('eu', 1.0), ('us', 0.2)]
>>> [a["group"] for a in fairness_alerts(rows, FairnessPolicy())]
['us']
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

ATTRIBUTES = ("region", "device")


@dataclass(frozen=True)
class FairnessPolicy:
    """``serving_threshold``: a score at or above it is a positive decision;
    ``min_ratio``: a group's positive rate (and mean score) may fall to this fraction of
    the best-served group's; ``max_difference``: ... and at most this far below it in
    absolute terms; groups with fewer than ``min_count`` scores in a window are reported
    but never alerted on."""

    serving_threshold: float = 0.3
    min_ratio: float = 0.8
    max_difference: float = 0.2
    min_count: int = 100

    def __post_init__(self) -> None:
        if not 0.0 < self.serving_threshold < 1.0:
            raise ValueError("serving_threshold must be in (0, 1)")
        if not 0.0 < self.min_ratio <= 1.0 or not 0.0 <= self.max_difference <= 1.0:
            raise ValueError("min_ratio must be in (0, 1] and max_difference in [0, 1]")
        if self.min_count < 1:
            raise ValueError("min_count must be >= 1")

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None) -> FairnessPolicy:
        return cls(**{k: raw[k] for k in asdict(cls()) if k in raw}) if raw else cls()

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def group_arm(attribute: str, group: str) -> str:
    return f"{attribute}={group}"


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else 1.0


def disparities(records: Iterable[Mapping[str, Any]], policy: FairnessPolicy) -> list[dict[str, Any]]:
    """One row per (window, attribute, group) from ``role = "group"`` records: n, mean
    score, positive rate, CTR, and ratio/difference against the best-served group."""
    cells: dict[tuple[int, str, str], dict[str, float]] = {}
    for r in records:
        if r.get("role") != "group" or "=" not in str(r.get("arm", "")):
            continue
        attr, _, group = str(r["arm"]).partition("=")
        c = cells.setdefault((int(r["eval_window_start_ms"]), attr, group), {"n": 0, "s": 0.0, "pos": 0, "above": 0})
        c["n"] += int(r["n"])
        c["s"] += float(r["sum_score"])
        c["pos"] += int(r["positives"])
        c["above"] += int(r.get("above_threshold", 0))
    rows: list[dict[str, Any]] = []
    for (w, attr) in sorted({(w, a) for w, a, _ in cells}):
        groups = {g: c for (w2, a2, g), c in cells.items() if (w2, a2) == (w, attr) and c["n"] > 0}
        if not groups:
            continue
        stats = {g: {"n": int(c["n"]), "mean_score": c["s"] / c["n"], "positive_rate": c["above"] / c["n"],
                     "ctr": c["pos"] / c["n"]} for g, c in groups.items()}
        best = max(stats, key=lambda g: (stats[g]["positive_rate"], stats[g]["mean_score"], g))
        b = stats[best]
        for g in sorted(stats):
            s = stats[g]
            rows.append({"window_start_ms": w, "attribute": attr, "group": g, "best_group": best, **s,
                         "positive_rate_ratio": _ratio(s["positive_rate"], b["positive_rate"]),
                         "positive_rate_difference": b["positive_rate"] - s["positive_rate"],
                         "mean_score_ratio": _ratio(s["mean_score"], b["mean_score"]),
                         "mean_score_difference": b["mean_score"] - s["mean_score"],
                         "ctr_ratio": _ratio(s["ctr"], b["ctr"]),
                         "eligible": s["n"] >= policy.min_count and b["n"] >= policy.min_count})
    return rows


def fairness_alerts(rows: Sequence[Mapping[str, Any]], policy: FairnessPolicy) -> list[dict[str, Any]]:
    """The rows whose positive rate or mean score breach the policy against the
    best-served group (both groups with at least ``min_count`` scores)."""
    out = []
    for r in rows:
        if not r["eligible"] or r["group"] == r["best_group"]:
            continue
        breaches = [name for name, ratio, diff in (
            ("positive_rate", r["positive_rate_ratio"], r["positive_rate_difference"]),
            ("mean_score", r["mean_score_ratio"], r["mean_score_difference"]))
            if ratio < policy.min_ratio or diff > policy.max_difference]
        if breaches:
            out.append({**r, "breaches": breaches})
    return out
