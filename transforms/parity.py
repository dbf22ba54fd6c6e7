"""Feature parity between engines: same keys, same windows, same values (counts exact,
other features to a relative 1e-9).

>>> a = {"g": {("u1", 0): {"n": 1.0, "m": 0.5}}}
>>> compare(a, {"g": {("u1", 0): {"n": 1.0, "m": 0.5 + 1e-12}}}, {"g": {"n"}})["mismatches"]
0
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from typing import Any

Groups = dict[str, dict[tuple[str, int], dict[str, float]]]
REL_TOL = 1e-9
ABS_TOL = 1e-9


def snapshot_groups(snapshots: Iterable[tuple[Any, dict[str, Any], Any]]) -> Groups:
    """Feature snapshots read from Kafka (``(key, value, ts)``) as ``Groups``; a repeated
    (group, entity, window) keeps the last.

    >>> snapshot_groups([(b"k", {"feature_group": "g", "entity_id": "u1", "window_start_ms": 0,
    ...                          "features": {"n": 2.0}}, 5)])
    {'g': {('u1', 0): {'n': 2.0}}}
    """
    groups: Groups = {}
    for _, v, _ in snapshots:
        groups.setdefault(v["feature_group"], {})[(v["entity_id"], v["window_start_ms"])] = v["features"]
    return groups


def values_equal(want: float, got: float, exact: bool) -> bool:
    if exact:
        return want == got
    return math.isclose(want, got, rel_tol=REL_TOL, abs_tol=ABS_TOL)


def compare(want: Groups, got: Groups, exact_features: dict[str, set[str]]) -> dict[str, Any]:
    """Per-feature mismatch report of ``got`` against ``want`` (``exact_features``: per
    group, the features compared exactly, e.g. counts)."""
    per_feature: Counter[str] = Counter()
    missing: Counter[str] = Counter()
    extra: Counter[str] = Counter()
    examples: list[str] = []
    features = rows = 0
    for group in sorted(set(want) | set(got)):
        w, g = want.get(group, {}), got.get(group, {})
        missing[group] = len(w.keys() - g.keys())
        extra[group] = len(g.keys() - w.keys())
        for key in w.keys() & g.keys():
            rows += 1
            for name, value in w[key].items():
                features += 1
                other = g[key].get(name)
                if other is None or not values_equal(value, other, name in exact_features.get(group, set())):
                    per_feature[f"{group}.{name}"] += 1
                    if len(examples) < 10:
                        examples.append(f"{group}/{key[0]}/{key[1]}.{name}: want {value!r} got {other!r}")
    mismatches = sum(per_feature.values()) + sum(missing.values()) + sum(extra.values())
    return {"features": features, "rows": rows, "mismatches": mismatches,
            "per_feature": dict(per_feature), "missing_windows": {k: v for k, v in missing.items() if v},
            "extra_windows": {k: v for k, v in extra.items() if v}, "examples": examples}


def exact_features(spec: Any) -> dict[str, set[str]]:
    """Count-like features of each group (compared exactly)."""
    return {g.name: {f.name for f in g.features if f.agg in ("count", "distinct_count")} for g in spec.groups}
