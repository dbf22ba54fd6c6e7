"""The incremental windowing (used by the plain-Python peer) against the reference."""

import pytest

from jobs.generator import TrafficConfig, generate_events
from transforms.reference import compute_features, model_rows
from transforms.spec import load_spec
from transforms.windowing import StreamingFeatures, join_scoring


def test_streaming_windows_equal_reference_and_fire_in_watermark_order():
    spec = load_spec()
    events = list(generate_events(8_000, TrafficConfig(seed=9, n_users=300, out_of_order_fraction=0.1,
                                                        late_fraction=0.01)))
    w = StreamingFeatures(spec)
    fired, rows = [], []
    for i, ev in enumerate(events):
        w.add(ev)
        if i % 500 == 0:
            batch = w.fired()
            assert all(f.window_end_ms - 1 <= w.watermark for f in batch)
            fired += batch
            rows += join_scoring(spec, batch)
    last = w.fired(final=True)
    fired += last
    rows += join_scoring(spec, last)
    ref = compute_features(spec, events)
    assert w.late == len(ref.late) > 0
    got = {(f.group, f.entity_id, f.window_start_ms): f.features for f in fired}
    assert len(got) == len(fired)
    want = {(g, k, s): v for g, grp in ref.groups.items() for (k, s), v in grp.items()}
    assert got.keys() == want.keys()
    for key, vals in want.items():
        assert got[key] == pytest.approx(vals)
    assert sorted((r[0], r[2]) for r in rows) == sorted((r[0], r[2]) for r in model_rows(spec, ref))
