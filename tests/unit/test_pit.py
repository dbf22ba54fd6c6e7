"""Point-in-time training rows: consistency with training and no label leakage."""

import random

import numpy as np
import pytest

from jobs.generator import TrafficConfig, generate_events
from models.train import labelled_dataset
from transforms.codecs import make_event
from transforms.pit import accepted_events, dataset_fingerprint, pit_dataset, pit_rows
from transforms.spec import load_spec

SPEC = load_spec()
CFG = TrafficConfig(seed=21, n_users=120, n_items=200, event_rate_per_s=25.0,
                    out_of_order_fraction=0.05, late_fraction=0.01)


@pytest.fixture(scope="module")
def events():
    return list(generate_events(2500, CFG))


def _features(rows, upto):
    """Feature part of the rows with window_end_ms <= upto, keyed by (user, end)."""
    return {(r["user_id"], r["window_end_ms"]): {k: v for k, v in r.items() if k != "label"}
            for r in rows if r["window_end_ms"] <= upto}


def _mutate(ev, rng, users, keep_ts):
    out = dict(ev)
    out["event_type"] = rng.choice(("impression", "click", "dwell"))
    out["dwell_ms"] = round(rng.uniform(100, 50_000), 1) if out["event_type"] == "dwell" else 0.0
    out["item_id"] = f"i{rng.randrange(10_000)}"
    out["user_id"] = rng.choice(users)
    if not keep_ts:
        out["ts_ms"] = ev["ts_ms"] + rng.randrange(0, 30_000)  # stays at or after the cutoff
    return out


def _new_event(rng, users, cutoff, n):
    return make_event(f"new{n}", rng.choice(users), f"i{rng.randrange(10)}", cutoff + rng.randrange(0, 40_000),
                      rng.choice(("impression", "click", "dwell")), float(rng.randrange(1, 9_000)))


def test_rows_match_training_dataset(events):
    rows = pit_dataset(SPEC, events)
    ds = labelled_dataset(SPEC, events)
    assert len(rows) == len(ds.y) > 100
    assert 0 < sum(r["label"] for r in rows) < len(rows)
    x = np.array([[r[f] for f in SPEC.model_feature_names] for r in rows], dtype=np.float32)
    np.testing.assert_array_equal(x, ds.x)
    assert [r["label"] for r in rows] == ds.y.tolist()
    assert [r["window_end_ms"] for r in rows] == ds.window_end_ms.tolist()
    assert list(rows[0])[:3] == ["user_id", "window_end_ms", "label"]


def test_features_only_see_events_before_window_end(events):
    """Event-time part: any change to accepted events at or after W leaves rows ending <= W alone."""
    accepted = accepted_events(SPEC, events)
    base = pit_rows(SPEC, accepted)
    users = sorted({ev["user_id"] for _, ev in accepted})
    ends = sorted({r["window_end_ms"] for r in base})
    rng = random.Random(5)
    for cutoff in ends:
        changed = [(seq, _mutate(ev, rng, users, keep_ts=False) if ev["ts_ms"] >= cutoff else ev)
                   for seq, ev in accepted]
        for n in range(50):  # new events at or after the cutoff, anywhere in arrival order
            changed.insert(rng.randrange(len(changed) + 1), (len(events) + n, _new_event(rng, users, cutoff, n)))
        after = pit_rows(SPEC, changed)
        assert _features(after, cutoff) == _features(base, cutoff)
        assert after != base  # the mutations did change later rows or labels


def test_no_leakage_through_arrival_ordered_late_rule(events):
    """With the watermark rule: changing events at or after W (not their time) and adding
    new ones after the current arrivals never changes rows ending at or before W."""
    base = pit_dataset(SPEC, events)
    users = sorted({ev["user_id"] for ev in events})
    ends = sorted({r["window_end_ms"] for r in base})
    rng = random.Random(6)
    for cutoff in ends:
        changed = [_mutate(ev, rng, users, keep_ts=True) if ev["ts_ms"] >= cutoff else ev for ev in events]
        changed += [_new_event(rng, users, cutoff, n) for n in range(50)]
        after = pit_dataset(SPEC, changed)
        assert _features(after, cutoff) == _features(base, cutoff)
        assert after != base


def test_late_rule_is_serving_consistent():
    """The one way a later event reaches an earlier row: arriving first, it moves the
    watermark past an event that then arrives late, as the online job drops it."""
    b = 1_000_000_000_000
    evs = [make_event("a", "u1", "i1", b + 1_000, "impression"), make_event("b", "u1", "i2", b + 8_500, "impression")]
    row = pit_dataset(SPEC, evs)[0]
    assert (row["window_end_ms"], row["user_tumble_10s.impressions"]) == (b + 10_000, 2.0)
    ahead = [evs[0], make_event("x", "u9", "i9", b + 10_600, "click"), evs[1]]  # watermark 8600 >= 8500
    assert pit_dataset(SPEC, ahead)[0]["user_tumble_10s.impressions"] == 1.0


def test_labels_use_the_next_window_only():
    b = 1_000_000_000_000
    evs = [make_event("a", "u1", "i1", b + 1_000, "impression"),
           make_event("b", "u1", "i1", b + 9_999, "click"),  # in the row's window: a feature
           make_event("c", "u1", "i1", b + 10_000, "click"),  # at the row's end: its label only
           make_event("d", "u1", "i1", b + 20_000, "click")]
    rows = {r["window_end_ms"] - b: r for r in pit_dataset(SPEC, evs)}
    assert sorted(rows) == [10_000, 20_000, 30_000]
    assert (rows[10_000]["label"], rows[10_000]["user_tumble_10s.clicks"]) == (1, 1.0)
    assert (rows[20_000]["label"], rows[20_000]["user_tumble_10s.clicks"]) == (1, 1.0)
    assert (rows[30_000]["label"], rows[30_000]["user_hop_60s.clicks"]) == (0, 3.0)


def test_fingerprint_is_order_free_and_content_sensitive(events):
    rows = pit_dataset(SPEC, events[:800])
    fp = dataset_fingerprint(rows)
    assert len(fp) == 16 and int(fp, 16) >= 0
    shuffled = [dict(reversed(list(r.items()))) for r in reversed(rows)]
    assert dataset_fingerprint(shuffled) == fp
    nudged = [dict(r) for r in rows]
    nudged[3]["user_hop_60s.dwell_sum_ms"] = nudged[3]["user_hop_60s.dwell_sum_ms"] * (1 + 1e-15)
    assert dataset_fingerprint(nudged) == fp  # summation-order noise is not a change
    nudged[3]["label"] = 1 - nudged[3]["label"]
    assert dataset_fingerprint(nudged) != fp
