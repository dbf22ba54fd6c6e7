"""Contract tests for every aggregation: merge equals sequential, pickle round-trip,
and values against NumPy on the same samples."""

import pickle
import random

import numpy as np
import pytest

from transforms.aggregates import GroupAggregator
from transforms.spec import AGGS, parse_spec


def _group_with_every_agg():
    feats = [
        {"name": "n", "agg": "count"},
        {"name": "clicks", "agg": "count", "event_type": "click"},
        {"name": "imps", "agg": "count", "event_type": "impression"},
        {"name": "ctr", "agg": "ratio", "numerator": "clicks", "denominator": "imps", "default": -1.0},
        {"name": "dsum", "agg": "sum", "field": "dwell_ms", "event_type": "dwell"},
        {"name": "dmean", "agg": "mean", "field": "dwell_ms", "event_type": "dwell", "default": -2.0},
        {"name": "dmin", "agg": "min", "field": "dwell_ms", "event_type": "dwell", "default": -3.0},
        {"name": "dmax", "agg": "max", "field": "dwell_ms", "event_type": "dwell"},
        {"name": "dstd", "agg": "stddev", "field": "dwell_ms", "event_type": "dwell"},
        {"name": "dlast", "agg": "last", "field": "dwell_ms", "event_type": "dwell", "default": -4.0},
        {"name": "items", "agg": "distinct_count", "field": "item_id"},
    ]
    raw = {"groups": [{"name": "g", "entity": "user", "window": {"kind": "tumbling", "size_ms": 1000},
                       "features": feats}], "scoring": {"entity": "user", "groups": ["g"]}}
    spec = parse_spec(raw)
    assert {f.agg for f in spec.group("g").features} == set(AGGS)
    return spec.group("g")


GROUP = _group_with_every_agg()


def _events(n, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        et = rng.choice(["impression", "impression", "click", "dwell"])
        out.append({"event_type": et, "item_id": f"i{rng.randint(0, 9)}",
                    "dwell_ms": round(rng.uniform(100, 9000), 1) if et == "dwell" else 0.0})
    return out


def _fold(agg, events, start_seq=0):
    acc = agg.create()
    for i, e in enumerate(events):
        agg.add(acc, e, start_seq + i)
    return acc


@pytest.mark.parametrize("seed", range(8))
def test_merge_equals_sequential(seed):
    agg = GroupAggregator(GROUP)
    evs = _events(random.Random(seed).randint(0, 60), seed)
    cut = random.Random(seed + 100).randint(0, len(evs))
    whole = agg.result(_fold(agg, evs))
    merged = agg.result(agg.merge(_fold(agg, evs[:cut]), _fold(agg, evs[cut:], cut)))
    swapped = agg.result(agg.merge(_fold(agg, evs[cut:], cut), _fold(agg, evs[:cut])))
    for name in GROUP.feature_names:
        assert merged[name] == pytest.approx(whole[name], rel=1e-9, abs=1e-6), name
        assert swapped[name] == pytest.approx(whole[name], rel=1e-9, abs=1e-6), name


def test_pickle_round_trip_keeps_state():
    agg = GroupAggregator(GROUP)
    acc = _fold(agg, _events(40, 1))
    again = pickle.loads(pickle.dumps(acc))
    assert agg.result(again) == agg.result(acc)
    agg2 = pickle.loads(pickle.dumps(agg))
    assert agg2.result(acc) == agg.result(acc)


def test_values_match_numpy():
    agg = GroupAggregator(GROUP)
    evs = _events(200, 5)
    r = agg.result(_fold(agg, evs))
    d = np.array([e["dwell_ms"] for e in evs if e["event_type"] == "dwell"])
    clicks = sum(e["event_type"] == "click" for e in evs)
    imps = sum(e["event_type"] == "impression" for e in evs)
    assert r["n"] == len(evs)
    assert r["ctr"] == pytest.approx(clicks / imps)
    assert r["dsum"] == pytest.approx(d.sum())
    assert r["dmean"] == pytest.approx(d.mean())
    assert r["dmin"] == d.min() and r["dmax"] == d.max()
    assert r["dstd"] == pytest.approx(np.std(d), rel=1e-7)
    assert r["dlast"] == d[-1]
    assert r["items"] == len({e["item_id"] for e in evs})


def test_empty_aggregates_give_defaults():
    r = GroupAggregator(GROUP).result(GroupAggregator(GROUP).create())
    assert r["ctr"] == -1.0 and r["dmean"] == -2.0 and r["dmin"] == -3.0 and r["dlast"] == -4.0
    assert r["n"] == 0.0 and r["dsum"] == 0.0 and r["items"] == 0.0


def test_stddev_is_exactly_zero_on_constant_input_whatever_the_merge_order():
    agg = GroupAggregator(GROUP)
    evs = [{"event_type": "dwell", "item_id": "i1", "dwell_ms": 12345.6}] * 7
    whole = agg.result(_fold(agg, evs))["dstd"]
    parts = agg.merge(_fold(agg, evs[:3]), agg.merge(_fold(agg, evs[3:5], 3), _fold(agg, evs[5:], 5)))
    assert whole == 0.0 and agg.result(parts)["dstd"] == 0.0


def test_stddev_is_stable_for_large_offsets():
    agg = GroupAggregator(GROUP)
    values = [1e9 + v for v in (0.1, 0.2, 0.3, 0.4)]
    r = agg.result(_fold(agg, [{"event_type": "dwell", "item_id": "i", "dwell_ms": v} for v in values]))
    assert r["dstd"] == pytest.approx(np.std(np.array(values) - 1e9), rel=1e-6)
