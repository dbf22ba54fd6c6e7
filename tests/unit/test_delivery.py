"""The record-by-record delivery check and the chaos harness's checkpoint lookup."""

import os

from jobs.chaos import completed_checkpoints
from transforms.delivery import check, score_identity, snapshot_identity, snapshot_values


def _snap(entity, end, n=1.0):
    return {"feature_group": "g", "entity_id": entity, "window_start_ms": end - 10, "window_end_ms": end,
            "features": {"n": n}}


def test_lost_duplicated_unexpected_and_mismatched_are_counted_separately():
    want = [_snap("a", 10), _snap("b", 10), _snap("c", 10)]
    got = [_snap("a", 10), _snap("a", 10), _snap("a", 10), _snap("b", 10, n=2.0), _snap("z", 10)]
    r = check(want, got, snapshot_identity, snapshot_values)
    assert (r.expected, r.seen, r.lost, r.duplicated, r.unexpected, r.value_mismatches) == (3, 5, 1, 2, 1, 1)
    assert any("lost" in e and "'c'" in e for e in r.examples)


def test_exact_copy_passes_and_order_does_not_matter():
    want = [_snap(e, t) for e in "abc" for t in (10, 20)]
    r = check(want, list(reversed(want)), snapshot_identity, snapshot_values)
    assert (r.lost, r.duplicated, r.unexpected, r.value_mismatches) == (0, 0, 0, 0)
    assert r.expected == r.seen == 6


def test_score_identity_tells_arms_apart():
    s = {"user_id": "u", "window_start_ms": 0, "window_end_ms": 10, "arm": "a"}
    r = check([s, {**s, "arm": "shadow"}], [s], score_identity)
    assert r.lost == 1 and r.duplicated == 0


def test_latest_completed_checkpoint_ignores_unfinished_ones(tmp_path):
    for job, chk, done, mtime in (("j1", 1, True, 100), ("j1", 2, False, 300), ("j2", 4, True, 200)):
        d = tmp_path / job / f"chk-{chk}"
        d.mkdir(parents=True)
        if done:
            (d / "_metadata").write_bytes(b"x")
            os.utime(d, (mtime, mtime))
    found = completed_checkpoints(tmp_path)
    assert [p.name for p in found] == ["chk-1", "chk-4"]
