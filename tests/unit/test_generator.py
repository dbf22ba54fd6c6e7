from collections import Counter

import numpy as np
import pytest

from jobs.generator import TrafficConfig, TrafficModel, generate_events
from transforms.reference import mark_late


def test_same_seed_same_events_and_other_seed_differs():
    a = list(generate_events(3000, TrafficConfig(seed=1, out_of_order_fraction=0.1)))
    b = list(generate_events(3000, TrafficConfig(seed=1, out_of_order_fraction=0.1)))
    c = list(generate_events(3000, TrafficConfig(seed=2, out_of_order_fraction=0.1)))
    assert a == b
    assert a != c


def test_users_are_skewed_and_types_plausible():
    evs = list(generate_events(40_000, TrafficConfig(seed=3)))
    users = Counter(e["user_id"] for e in evs)
    top = sum(n for _, n in users.most_common(len(users) // 100 or 1))
    assert top / len(evs) > 0.1  # top 1% of users produce >10% of traffic (Zipf)
    types = Counter(e["event_type"] for e in evs)
    assert types["impression"] > types["click"] > 0 and types["dwell"] == types["click"] or types["dwell"] > 0
    assert all(e["dwell_ms"] > 0 for e in evs if e["event_type"] == "dwell")


def test_clicks_follow_hidden_affinity():
    cfg = TrafficConfig(seed=4)
    model = TrafficModel(cfg)
    evs = list(generate_events(60_000, cfg))
    imps = [(int(e["user_id"][1:]), int(e["item_id"][1:]), e["ts_ms"]) for e in evs if e["event_type"] == "impression"]
    clicks = [(int(e["user_id"][1:]), int(e["item_id"][1:])) for e in evs if e["event_type"] == "click"]
    p_imp = model.click_prob(np.array([u for u, _, _ in imps]), np.array([i for _, i, _ in imps]))
    p_click = model.click_prob(np.array([u for u, _ in clicks]), np.array([i for _, i in clicks]))
    # clicked pairs have a much higher hidden affinity than shown pairs, and the overall
    # click-through rate is what the affinity model predicts
    assert p_click.mean() > 1.5 * p_imp.mean()
    assert len(clicks) / len(imps) == pytest.approx(p_imp.mean(), rel=0.1)


def test_only_injected_events_are_late():
    clean = list(generate_events(30_000, TrafficConfig(seed=5, out_of_order_fraction=0.2)))
    assert not any(late for _, late in mark_late(clean, 2_000))
    ts = [e["ts_ms"] for e in clean]
    assert any(b < a for a, b in zip(ts, ts[1:], strict=False))  # out-of-order events exist
    dirty = list(generate_events(30_000, TrafficConfig(seed=5, late_fraction=0.01)))
    n_late = sum(late for _, late in mark_late(dirty, 2_000))
    assert 200 < n_late < 400  # ~1% of 30,000
