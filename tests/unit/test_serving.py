"""The scoring service (transforms.serving): hot swaps by model-control records, rejected
commands, experiments, shadow scoring, automatic rollback and fallback alerts, on a small
real registry."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from models.train import to_onnx, train_gbdt, train_mlp
from tests.unit.registry_fixtures import FS, N_FEATURES, const_onnx, entry_json
from transforms.deployment import Arm, command_record
from transforms.online_eval import EvalConfig, RollbackPolicy
from transforms.registry import ModelEntry
from transforms.scoring import OnnxScorer
from transforms.serving import ListPublisher, ScoringService, ServingConfig

EVAL = EvalConfig(step_ms=10_000, attribution_ms=10_000, eval_window_ms=10_000, grace_ms=0)






@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, (2000, N_FEATURES)).astype(np.float32)
    logit = 1.5 * x[:, 1] - x[:, 2] - 1
    y = (rng.random(2000) < 1 / (1 + np.exp(-logit))).astype(int)
    return x, y


@pytest.fixture(scope="module")
def registry(tmp_path_factory, data):
    """gbdt:t1 active, mlp:t1 fallback; gbdt:t2, bad:c1 (constant 0.95), nan:h1 and broken:t1
    (artifact changed after registration) are candidates."""
    x, y = data
    root = tmp_path_factory.mktemp("serving-registry")
    (root / "artifacts").mkdir()
    entries = [
        entry_json(root, "gbdt", "t1", "gbdt", to_onnx(train_gbdt(x, y, n_estimators=60), "gbdt", N_FEATURES),
                   stage="active"),
        entry_json(root, "mlp", "t1", "mlp", to_onnx(train_mlp(x, y), "mlp", N_FEATURES), stage="fallback"),
        entry_json(root, "gbdt", "t2", "gbdt", to_onnx(train_gbdt(x, y, n_estimators=10, seed=3), "gbdt",
                                                       N_FEATURES)),
        entry_json(root, "bad", "c1", "onnx", const_onnx([0.05, 0.95])),
        entry_json(root, "nan", "h1", "onnx", const_onnx([float("nan"), float("nan")])),
        entry_json(root, "broken", "t1", "onnx", const_onnx([0.5, 0.5])),
    ]
    broken = root / entries[-1]["path"]
    raw = bytearray(broken.read_bytes())
    raw[-5] ^= 0xFF
    broken.write_bytes(bytes(raw))
    (root / "registry.json").write_text(json.dumps({"models": entries}))
    return root / "registry.json"


def direct(registry: Path, ref: str) -> OnnxScorer:
    raw = json.loads(registry.read_text())["models"]
    e = ModelEntry.from_json(next(m for m in raw if f"{m['name']}:{m['version']}" == ref))
    return OnnxScorer(registry.parent / e.path, e)


def service(registry: Path, model: str = "", fallback: str = "", **kw) -> ScoringService:
    return ScoringService(ServingConfig(str(registry), model, fallback, FS, **kw), ListPublisher(), clock=lambda: 100.0)


def kinds(svc: ScoringService) -> list[str]:
    return [a["kind"] for a in svc.publisher.alerts]


USERS = [f"u{i}" for i in range(200)]


def batch(data, k: int, n: int = 200):
    x, y = data
    return x[k * n:(k + 1) * n], y[k * n:(k + 1) * n]


def test_starts_on_the_registry_stages(registry, data):
    svc = service(registry)
    dep = svc.serving.deployment
    assert dep.arms == (Arm("active", "gbdt:t1", 1.0),) and dep.fallback == "mlp:t1" and not dep.rolled_back
    assert svc.serving.errors == {} and svc.publisher.alerts == []
    x, _ = batch(data, 0)
    out = svc.score(USERS, [10_000] * 200, x)
    assert set(zip(out.model_name, out.model_version, strict=True)) == {("gbdt", "t1")}
    np.testing.assert_array_equal(out.scores, direct(registry, "gbdt:t1").predict(x))
    assert out.fallback_reason == [""] * 200 and out.reference_scores is None  # no evaluator, no reference
    assert svc.publisher.alerts == []


def test_configured_refs_override_the_stages(registry):
    svc = service(registry, model="gbdt", fallback="bad:c1")
    assert svc.serving.deployment.arms[0].model == "gbdt:t2" and svc.serving.deployment.fallback == "bad:c1"


def test_missing_registry_alerts_and_serves_the_default(tmp_path, data):
    svc = service(tmp_path / "none.json", model="gbdt:t1", fallback="mlp:t1", default_score=0.11)
    assert kinds(svc) == ["model_load_error", "model_load_error"]
    assert {a["model_version"] for a in svc.publisher.alerts} == {"gbdt:t1", "mlp:t1"}
    out = svc.score(USERS[:3], [0] * 3, batch(data, 0)[0][:3])
    assert out.scores.tolist() == [0.11] * 3 and out.fallback_reason[0].startswith("load_error")
    empty = service(tmp_path / "none.json")
    assert kinds(empty) == ["no_model"]


def test_hot_swap_changes_the_next_batch(registry, data):
    svc = service(registry)
    x, _ = batch(data, 1)
    before = svc.score(USERS, [10_000] * 200, x)
    mlp_session = svc.serving.predictors["mlp:t1"]
    assert svc.apply_control(*command_record("activate", model="gbdt:t2")) is True
    (alert,) = svc.publisher.alerts
    assert alert["kind"] == "control_applied" and alert["model_version"] == "gbdt:t2"
    assert alert["attributes"] == {"revision": "1"}
    assert json.loads(alert["message"])["arms"] == [{"name": "active", "model": "gbdt:t2", "weight": 1.0}]
    after = svc.score(USERS, [20_000] * 200, x)
    assert set(before.model_version) == {"t1"} and set(after.model_version) == {"t2"}
    np.testing.assert_array_equal(after.scores, direct(registry, "gbdt:t2").predict(x))
    assert svc.serving.predictors["mlp:t1"] is mlp_session  # what keeps serving is not reloaded


def test_a_name_alone_activates_its_newest_version(registry):
    svc = service(registry)
    assert svc.apply_control(*command_record("activate", model="gbdt"))
    assert svc.serving.deployment.arms == (Arm("active", "gbdt:t2", 1.0),)
    assert set(svc.serving.predictors) == {"gbdt:t2", "mlp:t1"}


BAD_COMMANDS = {
    "unknown_version": command_record("activate", model="gbdt:nope"),
    "unknown_model": command_record("shadow", model="xgb"),
    "weights_0.7_0.7": command_record("experiment", arms=[{"name": "a", "model": "gbdt:t1", "weight": 0.7},
                                                          {"name": "b", "model": "gbdt:t2", "weight": 0.7}]),
    "garbage_bytes": (b"arms", b"\x00\xffnot json at all\x80"),
    "empty_value": (b"arms", None),
    "corrupted_artifact": command_record("activate", model="broken:t1"),
    "corrupted_shadow": command_record("shadow", model="broken:t1"),
}


@pytest.mark.parametrize("record", list(BAD_COMMANDS.values()), ids=list(BAD_COMMANDS))
def test_bad_command_is_rejected_and_the_old_deployment_serves(registry, data, record):
    svc = service(registry)
    serving = svc.serving
    assert svc.apply_control(*record) is False
    assert svc.serving is serving
    (alert,) = svc.publisher.alerts
    assert alert["kind"] == "control_rejected" and alert["severity"] == "warning" and alert["message"]
    assert alert["attributes"]["key"] == record[0].decode()
    out = svc.score(USERS[:20], [10_000] * 20, batch(data, 0)[0][:20])
    assert set(out.model_version) == {"t1"} and out.fallback_reason == [""] * 20


def test_corrupted_artifact_rejection_names_the_sha_mismatch(registry):
    svc = service(registry)
    svc.apply_control(*command_record("activate", model="broken:t1"))
    assert "sha256 mismatch" in svc.publisher.alerts[-1]["message"]


def test_unhashable_command_is_rejected(registry):
    svc = service(registry)
    assert svc.apply_control(b"arms", b'{"command": ["activate"]}') is False
    assert kinds(svc) == ["control_rejected"]


def test_a_command_id_is_applied_once(registry):
    svc = service(registry)
    rec = command_record("activate", model="gbdt:t2", id="cmd-1")
    assert svc.apply_control(*rec) is True
    assert svc.apply_control(*rec) is False
    assert kinds(svc) == ["control_applied"] and svc.serving.deployment.revision == 1


def test_experiment_routes_users_stably(registry, data):
    svc = service(registry)
    arms = [{"name": "control", "model": "gbdt:t1", "weight": 0.5}, {"name": "treatment", "model": "gbdt:t2",
                                                                       "weight": 0.5}]
    assert svc.apply_control(*command_record("experiment", arms=arms))
    users = [f"user-{i}" for i in range(400)]
    x = data[0][:400]
    first = svc.score(users, [10_000] * 400, x)
    second = svc.score(users[::-1], [20_000] * 400, x[::-1])
    assert first.arm == second.arm[::-1]
    assert set(zip(first.arm, first.model_version, strict=True)) == {("control", "t1"), ("treatment", "t2")}
    assert 0.4 < first.arm.count("control") / 400 < 0.6
    for i, ref in enumerate(("gbdt:t1", "gbdt:t2")):
        rows = first.arm_index == i
        np.testing.assert_array_equal(first.scores[rows], direct(registry, ref).predict(x[rows]))


def test_shadow_rows(registry, data):
    svc = service(registry, eval=EVAL)
    assert svc.apply_control(*command_record("shadow", model="gbdt:t2"))
    x, y = batch(data, 0)
    out = svc.score(USERS, [10_000] * 200, x)
    assert out.shadow_ref == "gbdt:t2"
    np.testing.assert_array_equal(out.shadow_scores, direct(registry, "gbdt:t2").predict(x))
    assert set(out.model_version) == {"t1"} and "shadow" not in out.arm
    svc.labels(USERS, [10_000] * 200, y)
    by_role = {r["role"]: r for r in svc.publisher.records}
    assert set(by_role) == {"served", "shadow", "reference"}
    sh = by_role["shadow"]
    assert (sh["arm"], sh["model_name"], sh["model_version"], sh["n"]) == ("shadow", "gbdt", "t2", 200)
    assert sh["positives"] == by_role["served"]["positives"] == int(y.sum())
    assert svc.apply_control(*command_record("shadow", model=None))
    assert svc.score(USERS, [20_000] * 200, x).shadow_scores is None


def test_auto_rollback_and_promotion_again(registry, data):
    svc = service(registry, model="bad:c1", fallback="mlp:t1", eval=EVAL,
                  rollback=RollbackPolicy(min_labels=50, logloss_ratio=1.10))
    x, y = batch(data, 0)
    x1, y1 = batch(data, 1)
    out = svc.score(USERS, [10_000] * 200, x)
    assert set(out.model_name) == {"bad"} and np.allclose(out.scores, 0.95)
    svc.score(USERS, [20_000] * 200, x1)  # a second window scored by the bad model, labelled later
    assert "auto_rollback" not in kinds(svc) and svc.publisher.commands == []  # no labels yet
    svc.labels(USERS, [10_000] * 200, y)
    assert kinds(svc).count("auto_rollback") == 1
    roll = next(a for a in svc.publisher.alerts if a["kind"] == "auto_rollback")
    assert roll["severity"] == "critical" and "bad:c1" in roll["message"] and "mlp:t1" in roll["message"]
    (key, value), = svc.publisher.commands
    cmd = json.loads(value)
    assert key == b"rollback" and cmd["command"] == "rollback" and cmd["source"] == "auto" and cmd["id"]
    assert cmd["issued_at_ms"] == 100_000 and cmd["reason"] == roll["message"][:len(cmd["reason"])]
    dep = svc.serving.deployment
    assert dep.rolled_back and dep.arms[0].model == "bad:c1"
    recs = {r["role"]: r for r in svc.publisher.records}
    assert recs["served"]["n"] == recs["reference"]["n"] == 200
    assert recs["served"]["sum_logloss"] > 2 * recs["reference"]["sum_logloss"]
    # the second bad window completes after the rollback: no second rollback
    svc.labels(USERS, [20_000] * 200, y1)
    assert len(svc.publisher.records) == 4 and kinds(svc).count("auto_rollback") == 1
    assert len(svc.publisher.commands) == 1

    # the published record coming back from the topic is our own: ignored
    n_alerts = len(svc.publisher.alerts)
    assert svc.apply_control(key, value) is False and len(svc.publisher.alerts) == n_alerts

    x2, y2 = batch(data, 2)
    out = svc.score(USERS, [30_000] * 200, x2)
    assert set(zip(out.model_name, out.model_version, strict=True)) == {("mlp", "t1")}
    assert all(r.startswith("rolled_back") for r in out.fallback_reason)
    np.testing.assert_array_equal(out.scores, direct(registry, "mlp:t1").predict(x2))
    fb = svc.publisher.alerts[-1]
    assert fb["kind"] == "model_fallback" and fb["attributes"] == {"arm": "active", "reason": "rolled_back"}
    svc.labels(USERS, [30_000] * 200, y2)
    assert kinds(svc).count("auto_rollback") == 1 and len(svc.publisher.commands) == 1

    # promoting again reverses the rollback
    assert svc.apply_control(*command_record("activate", model="bad:c1")) is True
    assert not svc.serving.deployment.rolled_back and svc.serving.deployment.rollback_reason == ""
    out = svc.score(USERS, [40_000] * 200, batch(data, 3)[0])
    assert set(out.model_name) == {"bad"} and out.fallback_reason == [""] * 200


def test_no_rollback_for_a_good_model(registry, data):
    svc = service(registry, eval=EVAL, rollback=RollbackPolicy(min_labels=50, logloss_ratio=1.10))
    for k in range(3):
        x, y = batch(data, k)
        svc.score(USERS, [10_000 * (k + 1)] * 200, x)
        svc.labels(USERS, [10_000 * (k + 1)] * 200, y)
    assert len(svc.publisher.records) == 6  # served + reference per window
    for e0 in (10_000, 20_000, 30_000):
        served, ref = (next(r for r in svc.publisher.records if r["eval_window_start_ms"] == e0 and r["role"] == role)
                       for role in ("served", "reference"))
        assert served["model_name"] == "gbdt" and ref["model_name"] == "mlp" and served["n"] == ref["n"] == 200
        assert served["sum_logloss"] < 1.10 * ref["sum_logloss"]
    assert "auto_rollback" not in kinds(svc) and svc.publisher.commands == []
    assert not svc.serving.deployment.rolled_back


def test_operator_rollback_and_resume(registry, data):
    svc = service(registry)
    assert svc.rollback("operator says so", source="operator") is True
    assert kinds(svc) == ["control_applied", "rollback"]
    assert json.loads(svc.publisher.commands[0][1])["source"] == "operator"
    x = batch(data, 0)[0][:10]
    assert set(svc.score(USERS[:10], [0] * 10, x).model_name) == {"mlp"}
    assert svc.apply_control(*command_record("resume"))
    assert set(svc.score(USERS[:10], [0] * 10, x).model_name) == {"gbdt"}


def test_rollback_without_a_fallback_serves_the_default_score(registry, data):
    raw = json.loads(registry.read_text())
    no_fb = registry.parent / "no-fallback.json"
    no_fb.write_text(json.dumps({"models": [dict(m, stage="candidate") if m["stage"] == "fallback" else m
                                            for m in raw["models"]]}))
    svc = service(no_fb)
    assert svc.serving.deployment.fallback is None
    assert svc.rollback("x") is True
    assert kinds(svc)[-2:] == ["control_applied", "auto_rollback"] and len(svc.publisher.commands) == 1
    out = svc.score(USERS[:5], [0] * 5, batch(data, 0)[0][:5])
    assert out.model_name == ["default"] * 5 and all(r.startswith("rolled_back: x") for r in out.fallback_reason)


def test_fallback_and_recovered_alerts_on_transitions(registry, data):
    svc = service(registry)
    x = batch(data, 0)[0][:20]
    svc.score(USERS[:20], [0] * 20, x)
    assert svc.publisher.alerts == []
    svc.cfg = replace(svc.cfg, latency_budget_ms=1e-6)
    out = svc.score(USERS[:20], [0] * 20, x)
    assert set(out.model_name) == {"mlp"}
    assert kinds(svc) == ["model_fallback"]
    assert svc.publisher.alerts[0]["attributes"] == {"arm": "active", "reason": "latency_budget"}
    svc.score(USERS[:20], [0] * 20, x)
    assert kinds(svc) == ["model_fallback"]  # one alert per transition, not per batch
    svc.cfg = replace(svc.cfg, latency_budget_ms=10_000)
    svc.score(USERS[:20], [0] * 20, x)
    assert kinds(svc) == ["model_fallback", "model_recovered"]
    assert svc.publisher.alerts[-1]["attributes"] == {"arm": "active"}
    svc.score(USERS[:20], [0] * 20, x)
    assert len(svc.publisher.alerts) == 2


def test_nan_model_alerts_model_fallback(registry, data):
    svc = service(registry)
    assert svc.apply_control(*command_record("activate", model="nan:h1"))
    out = svc.score(USERS[:20], [0] * 20, batch(data, 0)[0][:20])
    assert set(out.model_name) == {"mlp"} and all("NaN" in r for r in out.fallback_reason)
    alert = svc.publisher.alerts[-1]
    assert alert["kind"] == "model_fallback" and alert["attributes"]["reason"] == "primary_error"
    assert "NaN" in alert["message"]


@pytest.mark.parametrize("fix", ["activate", "resume"])
def test_recovered_alert_after_a_fixing_command(registry, data, fix):
    svc = service(registry)
    if fix == "activate":
        svc.apply_control(*command_record("activate", model="nan:h1"))
    else:
        svc.rollback("test", source="operator")
    x = batch(data, 0)[0][:20]
    svc.score(USERS[:20], [0] * 20, x)
    assert kinds(svc)[-1] == "model_fallback"
    assert svc.apply_control(*(command_record("activate", model="gbdt:t1") if fix == "activate"
                               else command_record("resume")))
    out = svc.score(USERS[:20], [0] * 20, x)
    assert out.fallback_reason == [""] * 20
    assert kinds(svc)[-1] == "model_recovered"


def test_close_flushes_open_windows(registry, data):
    svc = service(registry, eval=EvalConfig())
    x, y = batch(data, 0)
    svc.score(USERS, [10_000] * 200, x)
    svc.labels(USERS, [10_000] * 200, y)
    assert svc.publisher.records == []  # the 60 s eval window is still open
    svc.close()
    assert {(r["role"], r["n"], r["positives"]) for r in svc.publisher.records} == {
        ("served", 200, int(y.sum())), ("reference", 200, int(y.sum()))}
