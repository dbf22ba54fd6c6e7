"""State of the scoring stage that lives across batches stays bounded at steady load:
everything keyed by window or user expires once event time passes it (the label join's
pending scores, the per-window metrics, the drift windows, the monitors of a model that
was swapped out, and what a publisher with the topics switched off keeps)."""

from __future__ import annotations

import numpy as np

from tests.unit.test_serving import EVAL, FS, N_FEATURES, data, registry  # noqa: F401 (fixtures)
from tests.unit.test_serving_monitoring import NAMES, with_reference  # noqa: F401 (fixture)
from transforms.drift import DriftMonitor, DriftThresholds, build_reference
from transforms.monitoring import ModelMonitors, MonitorConfig
from transforms.online_eval import EvalConfig, OnlineEvaluator
from transforms.serving import ListPublisher, ScoringService, ServingConfig

STEP = 10_000
N_WINDOWS = 1_000


def test_label_join_and_window_metrics_stay_bounded_over_many_windows():
    cfg = EvalConfig(step_ms=STEP, attribution_ms=STEP, eval_window_ms=6 * STEP, grace_ms=2 * STEP)
    ev = OnlineEvaluator(cfg, "fs", clock=lambda: 0.0)
    key = ("served", "active", "m", "1")
    users = [f"u{i}" for i in range(50)]
    peak = {"pending": 0, "acc": 0, "unattributed": 0}
    records = []
    for t in range(1, N_WINDOWS + 1):
        end = t * STEP
        scored = [u for i, u in enumerate(users) if (i + t) % 5]  # some users score nothing (unattributed clicks)
        s = np.full(len(scored), 0.2)
        records += ev.add_scores(scored, [end] * len(scored), [(key, s, None)])
        # every tenth user never gets a click window: its scores resolve as 0 by expiry
        labelled = [(i, u) for i, u in enumerate(users) if i % 10 != 9]
        records += ev.add_labels([u for _, u in labelled], [end - STEP] * len(labelled),
                                 [1.0 if (i * t) % 7 == 0 else 0.0 for i, _ in labelled])
        peak = {"pending": max(peak["pending"], len(ev.pending)), "acc": max(peak["acc"], len(ev.acc)),
                "unattributed": max(peak["unattributed"], len(ev.unattributed))}
    # scores wait at most attribution + grace (+ one step) of event time: a few windows' worth
    assert 0 < peak["pending"] <= len(users) * 4
    assert peak["acc"] <= 3 and peak["unattributed"] <= 3
    assert ev.counters["scores"] == 40 * N_WINDOWS
    # nothing was lost on the way: every score not pending was labelled and counted in a record
    assert ev.counters["labelled"] == ev.counters["scores"] - len(ev.pending)
    records += ev.flush()
    assert sum(r["n"] for r in records) == ev.counters["labelled"]
    assert len({r["eval_window_start_ms"] for r in records}) >= N_WINDOWS // 6


def _reference(n_features: int = 3) -> dict:
    rng = np.random.default_rng(0)
    return build_reference(rng.normal(size=(2000, n_features)), rng.uniform(size=2000),
                           [f"f{i}" for i in range(n_features)])


def test_drift_monitor_holds_at_most_lag_plus_one_windows():
    rng = np.random.default_rng(1)
    mon = DriftMonitor(_reference(), DriftThresholds(min_count=10), window_ms=STEP, model_ref="m", lag_windows=1)
    peak, out = 0, []
    for k in range(N_WINDOWS):
        ends = np.array([k * STEP + 1] * 20 + ([(k - 1) * STEP + 1] * 3 if k else []))  # some rows a window late
        out += mon.update(ends, rng.normal(size=(ends.size, 3)), rng.uniform(size=ends.size))
        peak = max(peak, len(mon.open))
    assert peak <= 2 and mon.late_rows == 0
    assert len([r for r in out if r["kind"] == "drift"]) == N_WINDOWS - 2  # all but the open ones, emitted
    assert len(mon.flush()) == 2 and not mon.open


def test_monitors_of_a_swapped_out_model_expire(with_reference, data):  # noqa: F811
    x, _ = data
    pub = ListPublisher()
    mons = ModelMonitors(with_reference, MonitorConfig(STEP, DriftThresholds(min_count=10), 0.0, False,
                                                       lag_windows=1), NAMES, FS, pub)
    models = ["gbdt:t1", "mlp:t1", "gbdt:t2", "bad:c1"]
    peak = 0
    for k in range(300):
        model = models[(k // 25) % len(models)]  # a swap every 25 windows
        rows = x[(k % 50) * 20:(k % 50) * 20 + 20]
        mons.drift(model, np.full(20, k * STEP + 1), rows, np.full(20, 0.3))
        peak = max(peak, mons.open_windows())
    # the served model's lag + 1 windows, and for two windows after a swap the previous
    # model's; without expiry every model once served would keep its last ones (8 here)
    assert peak <= 4
    assert [m for m, mon in mons._drift.items() if mon.open] == [models[(299 // 25) % len(models)]]
    drift = [(r["model"], r["window_start_ms"]) for r in pub.monitored if r["kind"] == "drift"]
    assert {m for m, _ in drift} == set(models)
    assert len(drift) == len(set(drift)) == 300 - 2  # each window once; the served model's last two open


def test_list_publisher_limit_keeps_the_newest():
    pub = ListPublisher(limit=10)
    for i in range(1_000):
        pub.alert("a", "info", f"m{i}")
        pub.metrics([{"i": i}, {"i": i}])
    assert 10 <= len(pub.alerts) <= 20 and pub.alerts[-1]["message"] == "m999"
    assert len(pub.records) <= 20 and pub.records[-1] == {"i": 999}
    assert len(ListPublisher().records) == 0  # no limit by default (tests read everything)


def test_scoring_service_state_is_bounded_at_steady_load(with_reference, data):  # noqa: F811
    x, _ = data
    cfg = ServingConfig(str(with_reference), "", "", FS, eval=EVAL, feature_names=NAMES,
                        monitor=MonitorConfig(STEP, DriftThresholds(min_count=10), 0.0, False, lag_windows=1))
    svc = ScoringService(cfg, ListPublisher(limit=50))
    evaluator, monitors = svc.evaluator, svc.monitors
    assert evaluator is not None and monitors is not None
    users = [f"u{i}" for i in range(30)]
    peak = {"pending": 0, "acc": 0, "drift": 0}
    for t in range(1, 301):
        rows = x[(t % 60) * 30:(t % 60) * 30 + 30]
        groups = {"region": ["eu" if i % 2 else "na" for i in range(30)]}
        svc.score(users, [t * STEP] * 30, rows, groups)
        svc.labels(users, [(t - 1) * STEP] * 30, [float(i % 4 == 0) for i in range(30)])
        peak = {"pending": max(peak["pending"], len(evaluator.pending)),
                "acc": max(peak["acc"], len(evaluator.acc)), "drift": max(peak["drift"], monitors.open_windows())}
    assert peak["pending"] <= 2 * len(users) and peak["acc"] <= 16 and peak["drift"] <= 2
    assert evaluator.counters["labelled"] >= 299 * len(users)
    pub = svc.publisher
    assert isinstance(pub, ListPublisher)
    assert len(pub.records) <= 100 and len(pub.monitored) <= 100 and len(pub.alerts) <= 100
    assert N_FEATURES == len(NAMES)
