"""Mergeable accumulators for the spec's aggregations (``create/add/merge/result``).

One accumulator serves a whole feature group: the reference implementation, the Beam
CombineFn and the plain-Python peer all use it, so none of them re-implements a feature.

>>> from transforms.spec import load_spec
>>> g = load_spec().group("user_tumble_10s")
>>> agg = GroupAggregator(g)
>>> acc = agg.create()
>>> agg.add(acc, {"event_type": "impression", "dwell_ms": 0.0, "item_id": "i1"}, 0)
>>> agg.add(acc, {"event_type": "click", "dwell_ms": 0.0, "item_id": "i1"}, 1)
>>> agg.result(acc)["ctr"]
1.0
"""

from __future__ import annotations

import math
from typing import Any

from transforms.spec import Feature, FeatureGroup

# Per-feature state, by aggregation:
#   count: [n]; sum: [n, s]; mean: [n, s]; min/max: [n, v]; stddev: [n, mean, m2]
#   (Welford updates, Chan merges: no cancellation, constant inputs give exactly 0);
#   last: [seq, v] (seq -1 when empty); distinct_count: set
Acc = list[Any]


def _new(f: Feature) -> Any:
    if f.agg == "count":
        return [0]
    if f.agg in ("sum", "mean"):
        return [0, 0.0]
    if f.agg in ("min", "max"):
        return [0, 0.0]
    if f.agg == "stddev":
        return [0, 0.0, 0.0]
    if f.agg == "last":
        return [-1, 0.0]
    if f.agg == "distinct_count":
        return set()
    raise ValueError(f"no accumulator for {f.agg}")


def _chan_merge(a: list[Any], b: list[Any]) -> list[Any]:
    """Merge two ``[n, mean, m2]`` states (Chan et al.)."""
    if b[0] == 0:
        return list(a)
    if a[0] == 0:
        return list(b)
    n = a[0] + b[0]
    d = b[1] - a[1]
    return [n, a[1] + d * b[0] / n, a[2] + b[2] + d * d * (a[0] * b[0] / n)]


class GroupAggregator:
    """Accumulates the non-ratio features of a group; ``result`` adds the ratios."""

    def __init__(self, group: FeatureGroup) -> None:
        self.group = group
        self._plain = tuple(f for f in group.features if f.agg != "ratio")
        self._ratios = tuple(f for f in group.features if f.agg == "ratio")

    def create(self) -> Acc:
        return [_new(f) for f in self._plain]

    def add(self, acc: Acc, event: dict[str, Any], seq: int) -> None:
        """Fold one event (``seq`` orders arrivals, for ``last``) into ``acc`` in place."""
        etype = event["event_type"]
        for f, st in zip(self._plain, acc, strict=False):
            if f.event_type is not None and etype != f.event_type:
                continue
            a = f.agg
            if a == "count":
                st[0] += 1
            elif a == "distinct_count":
                st.add(event[f.field])  # type: ignore[index]
            else:
                x = float(event[f.field])  # type: ignore[index]
                if a in ("sum", "mean"):
                    st[0] += 1
                    st[1] += x
                elif a == "min":
                    st[1] = x if st[0] == 0 else min(st[1], x)
                    st[0] += 1
                elif a == "max":
                    st[1] = x if st[0] == 0 else max(st[1], x)
                    st[0] += 1
                elif a == "stddev":
                    st[0] += 1
                    d = x - st[1]
                    st[1] += d / st[0]
                    st[2] += d * (x - st[1])
                elif a == "last" and seq >= st[0]:
                    st[0] = seq
                    st[1] = x

    def merge(self, a: Acc, b: Acc) -> Acc:
        """A new accumulator equal to having added both inputs' events."""
        out = self.create()
        for i, f in enumerate(self._plain):
            x, y = a[i], b[i]
            if f.agg == "distinct_count":
                out[i] = set(x) | set(y)
            elif f.agg in ("min", "max"):
                if x[0] == 0 or y[0] == 0:
                    out[i] = list(y if x[0] == 0 else x)
                else:
                    pick = min if f.agg == "min" else max
                    out[i] = [x[0] + y[0], pick(x[1], y[1])]
            elif f.agg == "last":
                out[i] = list(x if x[0] >= y[0] else y)
            elif f.agg == "stddev":
                out[i] = _chan_merge(x, y)
            else:
                out[i] = [p + q for p, q in zip(x, y, strict=False)]
        return out

    def result(self, acc: Acc) -> dict[str, float]:
        """Feature values in the group's declared order; empty aggregates give ``default``."""
        vals: dict[str, float] = {}
        for f, st in zip(self._plain, acc, strict=False):
            a = f.agg
            if a == "count":
                vals[f.name] = float(st[0])
            elif a == "distinct_count":
                vals[f.name] = float(len(st))
            elif a == "sum":
                vals[f.name] = float(st[1])
            elif a == "last":
                vals[f.name] = float(st[1]) if st[0] >= 0 else f.default
            elif st[0] == 0:
                vals[f.name] = f.default
            elif a == "mean":
                vals[f.name] = st[1] / st[0]
            elif a in ("min", "max"):
                vals[f.name] = float(st[1])
            else:  # stddev, population; the Flink job runs the same algorithm (StddevPop)
                vals[f.name] = math.sqrt(max(st[2] / st[0], 0.0))
        for f in self._ratios:
            den = vals[f.denominator]  # type: ignore[index]
            vals[f.name] = f.default if den == 0 else vals[f.numerator] / den  # type: ignore[index]
        return {name: vals[name] for name in self.group.feature_names}
