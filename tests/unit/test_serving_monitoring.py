"""Monitoring through the scoring service (transforms.serving + transforms.monitoring) on a
small real registry: reference statistics present or missing, drift alerts and the drift
fallback, fairness alerts from the online label join, sampled explanations."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.unit.test_serving import EVAL, FS, N_FEATURES, data, registry  # noqa: F401 (fixtures)
from transforms.drift import DriftThresholds, build_reference
from transforms.explain import sampled
from transforms.monitoring import MonitorConfig
from transforms.registry import Registry, RegistryError
from transforms.scoring import OnnxScorer, ScoringError
from transforms.serving import ListPublisher, ScoringService, ServingConfig

NAMES = tuple(f"f{i}" for i in range(N_FEATURES))


@pytest.fixture(scope="module")
def with_reference(registry, data, tmp_path_factory):  # noqa: F811
    """The same registry, every loadable model with reference statistics of the training
    data and of its own scores."""
    x, _ = data
    reg = Registry(registry)
    models = []
    for m in json.loads(registry.read_text())["models"]:
        entry = reg.get(f"{m['name']}:{m['version']}")
        try:
            scores = OnnxScorer(reg.artifact(entry), entry).predict(x)
        except (RegistryError, ScoringError):
            scores = np.full(len(x), 0.3)
        models.append(dict(m, reference=build_reference(x, scores, NAMES)))
    path = registry.parent / "with-reference.json"
    path.write_text(json.dumps({"models": models}))
    return path


def service(path, explain_rate=0.0, fallback=True):
    cfg = ServingConfig(str(path), "", "", FS, eval=EVAL, feature_names=NAMES,
                        monitor=MonitorConfig(10_000, DriftThresholds(min_count=50), explain_rate, fallback,
                                              lag_windows=0))
    return ScoringService(cfg, ListPublisher())


def users(n, prefix="u"):
    return [f"{prefix}{i}" for i in range(n)]


def test_missing_reference_disables_monitoring_with_an_alert_and_keeps_serving(registry, data):  # noqa: F811
    svc = service(registry)
    x, _ = data
    out = svc.score(users(100), [10_000] * 100, x[:100])
    assert out.model_name == ["gbdt"] * 100 and not any(out.fallback_reason)
    disabled = [a for a in svc.publisher.alerts if a["kind"] == "monitoring_disabled"]
    assert len(disabled) == 1 and "no reference statistics" in disabled[0]["message"]
    svc.score(users(100), [20_000] * 100, x[100:200])
    assert len([a for a in svc.publisher.alerts if a["kind"] == "monitoring_disabled"]) == 1


def test_drift_alerts_only_the_shifted_feature_and_severe_drift_falls_back(with_reference, data):  # noqa: F811
    svc = service(with_reference)
    x, _ = data
    svc.score(users(500), [10_000] * 500, x[:500])  # in distribution
    shifted = x[500:1000].copy()
    shifted[:, 2] += 3.0
    svc.score(users(500), [20_000] * 500, shifted)  # completes the first window
    assert not [a for a in svc.publisher.alerts if a["kind"] == "drift"]
    svc.score(users(10), [30_000] * 10, x[1000:1010])  # completes the shifted window
    drift = [a for a in svc.publisher.alerts if a["kind"] == "drift"]
    # the shifted input, and the scores it moves; no other feature
    assert drift and {a["attributes"]["feature"] for a in drift} - {"prediction"} == {"f2"}
    assert any(a["kind"] == "auto_rollback" and a["attributes"]["source"] == "drift" for a in svc.publisher.alerts)
    after = svc.score(users(5), [30_000] * 5, x[:5])
    assert after.model_name == ["mlp"] * 5 and all(r.startswith("rolled_back: severe drift") for r in
                                                   after.fallback_reason)
    windows = [m for m in svc.publisher.monitored if m["kind"] == "drift"]
    assert [m["window_start_ms"] for m in windows] == [10_000, 20_000]
    assert windows[1]["values"]["psi.f2"] > 0.25 > windows[0]["values"]["psi.f2"]


def test_drift_fallback_can_be_switched_off(with_reference, data):  # noqa: F811
    svc = service(with_reference, fallback=False)
    x, _ = data
    shifted = x[:500] + 3.0
    svc.score(users(500), [10_000] * 500, shifted)
    svc.score(users(10), [20_000] * 10, x[:10])
    assert [a for a in svc.publisher.alerts if a["kind"] == "drift"]
    assert not svc.serving.deployment.rolled_back


def test_fairness_alert_for_a_subgroup_scored_lower(with_reference, data):  # noqa: F811
    svc = service(with_reference)
    x, _ = data
    n = 400
    low = x[:n].copy()
    ids = users(n)
    out = svc.score(ids, [10_000] * n, low)
    # every score of region "b" is pushed down by serving a different row: make group b the rows with low scores
    order = np.argsort(out.scores)
    region = np.where(np.isin(np.arange(n), order[: n // 2]), "b", "a").tolist()
    svc2 = service(with_reference)
    svc2.score(ids, [10_000] * n, low, {"region": region, "device": ["m"] * n})
    svc2.labels(ids, [10_000] * n, [1.0] * n)
    svc2.labels(["tick"], [40_000], [0.0])  # the label stream moves on: the eval window completes
    fair = [a for a in svc2.publisher.alerts if a["kind"] == "fairness"]
    assert fair and {(a["attributes"]["attribute"], a["attributes"]["group"]) for a in fair} == {("region", "b")}
    recs = [m for m in svc2.publisher.monitored if m["kind"] == "fairness"]
    assert recs and recs[0]["values"]["positive_rate_ratio.region=a"] == 1.0
    assert recs[0]["values"]["ctr.region=b"] == 1.0


def test_explanations_for_sampled_scores_in_one_batched_call(with_reference, data):  # noqa: F811
    svc = service(with_reference, explain_rate=0.2)
    x, _ = data
    ids = users(300, "e")
    out = svc.score(ids, [10_000] * 300, x[:300])
    want = {u for u in ids if sampled(u, 10_000, 0.2)}
    got = [e for e in svc.publisher.explained if e["method"] == "sensitivity"]
    assert {e["user_id"] for e in got} == want and 30 < len(want) < 90
    scores = dict(zip(ids, out.scores, strict=True))
    for e in got:
        assert e["score"] == pytest.approx(scores[e["user_id"]]) and set(e["attributions"]) == set(NAMES)
        assert (e["model_name"], e["model_version"]) == ("gbdt", "t1")
