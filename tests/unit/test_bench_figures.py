"""The benchmark's headline figure: events per CPU-second in steady state, from the
snapshot stream's progress marks and the process tree's CPU series."""

import numpy as np
import pytest

from jobs.bench import _progress_marks, steady_events_per_cpu_s
from jobs.config import JobConfig
from jobs.procstats import TreeStats


def test_cpu_is_interpolated_between_samples():
    stats = TreeStats(series=[(10.0, 1.0), (12.0, 5.0), (14.0, 5.0)])
    assert stats.cpu_at(11.0) == pytest.approx(3.0)
    assert stats.cpu_at(13.5) == pytest.approx(5.0)
    assert stats.cpu_at(9.0) is None and stats.cpu_at(15.0) is None


def test_steady_state_leaves_out_startup_cpu():
    # 1,000 events, one per 10 ms of event time; one 1 s window per 100 events
    event_ts = np.arange(1_000, dtype=np.int64) * 10
    # the job fires window k (end (k+1)*1000 ms) at wall second 100 + k
    snapshots = [(None, {"window_end_ms": (k + 1) * 1000}, (100 + k) * 1000) for k in range(10)]
    marks = _progress_marks(event_ts, snapshots, delay_ms=0)
    assert marks is not None
    e_lo, e_hi, t_lo, t_hi = marks
    assert (e_lo, e_hi) == (100, 900) and (t_lo, t_hi) == (100.0, 108.0)
    # 50 CPU-s of start-up before wall second 100, then 2 CPU-s per wall second
    stats = TreeStats(series=[(0.0, 0.0), (100.0, 50.0), (110.0, 70.0)])
    assert steady_events_per_cpu_s(marks, stats) == pytest.approx(800 / 16.0)
    assert steady_events_per_cpu_s(None, stats) is None


def test_flink_conf_pass_through_is_validated():
    assert JobConfig(flink_conf="a.b=1;;c = two ").flink_settings() == {"a.b": "1", "c": "two"}
    with pytest.raises(ValueError, match="key=value"):
        JobConfig(flink_conf="state.backend.type")


class _Running:
    returncode = None

    def poll(self):
        return None


def test_latency_replay_waits_for_a_checkpoint_newer_than_the_job(tmp_path):
    import threading
    import time

    from jobs.bench import _wait_first_checkpoint

    old = tmp_path / "job-old" / "chk-3"
    old.mkdir(parents=True)
    (old / "_metadata").write_bytes(b"x")
    since = time.time() + 0.05  # a checkpoint of an earlier job does not count
    time.sleep(0.1)

    def later():
        time.sleep(0.6)
        new = tmp_path / "job-new" / "chk-1"
        new.mkdir(parents=True)
        (new / "_metadata").write_bytes(b"y")

    threading.Thread(target=later).start()
    t0 = time.time()
    _wait_first_checkpoint(tmp_path.as_uri(), since, _Running(), timeout_s=10)
    assert time.time() - t0 >= 0.5
    with pytest.raises(RuntimeError, match="no checkpoint"):
        _wait_first_checkpoint((tmp_path / "none").as_uri(), time.time(), _Running(), timeout_s=1)
