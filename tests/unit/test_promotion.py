"""Promotion gates, promote/rollback and artifact registration over real ONNX registries."""

import functools
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from models.registration import measure_latency, register_artifact
from models.train import Dataset, registry_is_current, to_onnx, train_and_register, train_gbdt
from transforms.promotion import PromotionGates, PromotionRefused, promote, promotion_problems, rollback
from transforms.registry import ModelEntry, Registry, RegistryError, read_audit, sha256_file
from transforms.scoring import OnnxScorer
from transforms.spec import load_spec

SPEC = load_spec()
N = len(SPEC.model_feature_names)


def synthetic(seed: int, n: int = 4000) -> Dataset:
    """A learnable dataset over the spec's features, with 8 window ends for the time split."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (n, N)).astype(np.float32)
    logit = 1.5 * x[:, 0] - x[:, 1] + 0.5 * x[:, 2] - 1
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    ends = np.repeat(np.arange(8, dtype=np.int64) * 10_000, n // 8)
    return Dataset(x, y, ends, SPEC.model_feature_names, f"synthetic-{seed}")


@functools.cache
def onnx_bytes() -> dict[str, bytes]:
    """``good``: trained on real labels; ``bad``: the same features, shuffled labels."""
    ds = synthetic(0)
    shuffled = np.random.default_rng(1).permutation(ds.y)
    return {"good": to_onnx(train_gbdt(ds.x, ds.y, n_estimators=30), "gbdt", N),
            "bad": to_onnx(train_gbdt(ds.x, shuffled, n_estimators=30), "gbdt", N)}


def make_registry(root: Path, models: list[tuple[str, str]]) -> Path:
    """A registry at ``root/registry.json`` with each ``(ref, good|bad)`` registered as a candidate."""
    path = root / "registry.json"
    path.write_text(json.dumps({"models": []}))
    src = root / "src"
    src.mkdir(exist_ok=True)
    for ref, which in models:
        name, version = ref.split(":")
        onnx = src / f"{which}.onnx"
        onnx.write_bytes(onnx_bytes()[which])
        register_artifact(path, onnx, name, version, "gbdt", SPEC, synthetic(2), "synthetic-0")
    return path


def stages(reg: Registry) -> dict[str, str]:
    return {m.ref: m.stage for m in reg.entries}


GATES = PromotionGates()


def entry(**kw) -> ModelEntry:
    base = dict(name="m", version="v1", kind="onnx", path="a.onnx", sha256="0", feature_names=("f",),
                feature_set_version=SPEC.version, training_data_fingerprint="d",
                metrics={"auc": 0.8, "logloss": 0.4}, latency={"batch_rows": 1024, "p50_ms": 1.0, "p99_ms": 2.0})
    return ModelEntry(**{**base, **kw})


@pytest.mark.parametrize("kw, match", [
    ({"auc_margin": -0.01}, "auc_margin"),
    ({"logloss_margin": float("nan")}, "logloss_margin"),
    ({"latency_budget_ms": 0.0}, "latency_budget_ms"),
    ({"latency_budget_ms": float("inf")}, "latency_budget_ms"),
])
def test_gates_validate(kw, match):
    with pytest.raises(ValueError, match=match):
        PromotionGates(**kw)


def test_gate_margins_are_inclusive_and_comparative_gates_need_an_active():
    active = entry(version="v0", metrics={"auc": 0.80, "logloss": 0.40})
    within = entry(metrics={"auc": 0.796, "logloss": 0.40})
    assert promotion_problems(within, active, SPEC.version, GATES) == []
    worse = entry(metrics={"auc": 0.79, "logloss": 0.41})
    assert len(promotion_problems(worse, active, SPEC.version, GATES)) == 2
    assert promotion_problems(worse, active, SPEC.version, PromotionGates(0.02, 0.02)) == []
    assert promotion_problems(worse, None, SPEC.version, GATES) == []
    no_latency = entry(latency={})
    assert [p for p in promotion_problems(no_latency, None, SPEC.version, GATES) if "latency" in p]


def test_good_model_promotes_and_worse_model_is_refused_by_auc_and_logloss(tmp_path):
    path = make_registry(tmp_path, [("gbdt:v1", "good"), ("gbdt:v2", "bad")])
    reg = Registry(path)
    good, bad = reg.get("gbdt:v1"), reg.get("gbdt:v2")
    assert good.metrics["auc"] > 0.7 and abs(bad.metrics["auc"] - 0.5) < 0.1
    assert promote(reg, "gbdt:v1", SPEC.version, GATES) == []
    reg.save()
    audit_before = len(read_audit(path))
    with pytest.raises(PromotionRefused) as info:
        promote(reg, "gbdt:v2", SPEC.version, GATES)
    problems = info.value.problems
    assert len(problems) == 2
    auc_msg = next(p for p in problems if p.startswith("AUC"))
    assert f"{bad.metrics['auc']:.4f}" in auc_msg and f"{good.metrics['auc']:.4f}" in auc_msg and "0.005" in auc_msg
    assert any(p.startswith("logloss") for p in problems)
    assert all(p in str(info.value) for p in problems)
    assert stages(reg) == {"gbdt:v1": "active", "gbdt:v2": "candidate"}
    assert len(read_audit(path)) == audit_before


def test_latency_and_feature_set_gates_refuse(tmp_path):
    reg = Registry(make_registry(tmp_path, [("gbdt:v1", "good")]))
    with pytest.raises(PromotionRefused, match="over the budget"):
        promote(reg, "gbdt:v1", SPEC.version, PromotionGates(latency_budget_ms=1e-6))
    with pytest.raises(PromotionRefused, match=f"feature set {SPEC.version} differs from the current spec's 0000"):
        promote(reg, "gbdt:v1", "0000", GATES)
    assert stages(reg) == {"gbdt:v1": "candidate"}


def test_force_overrides_and_the_audit_records_it(tmp_path):
    path = make_registry(tmp_path, [("gbdt:v1", "good"), ("gbdt:v2", "bad")])
    reg = Registry(path)
    promote(reg, "gbdt:v1", SPEC.version, GATES)
    n = len(read_audit(path))
    overridden = promote(reg, "gbdt:v2", SPEC.version, GATES, force=True, reason="incident 42")
    assert len(overridden) == 2
    assert stages(reg) == {"gbdt:v1": "fallback", "gbdt:v2": "active"}
    new = read_audit(path)[n:]
    assert [(r["model"], r["from"], r["to"]) for r in new] == [("gbdt:v1", "active", "fallback"),
                                                                ("gbdt:v2", "candidate", "active")]
    assert all(r["forced"] is True and r["overridden"] == overridden and r["reason"] == "incident 42" for r in new)
    assert read_audit(path)[n - 1]["forced"] is False


def test_promote_chain_rollback_and_re_promotion_reverses_it(tmp_path):
    path = make_registry(tmp_path, [("a:v1", "good"), ("a:v2", "good"), ("a:v3", "good")])
    reg = Registry(path)
    for ref in ("a:v1", "a:v2", "a:v3"):
        promote(reg, ref, SPEC.version, GATES)
    promoted = stages(reg)
    assert promoted == {"a:v1": "retired", "a:v2": "fallback", "a:v3": "active"}
    with pytest.raises(RegistryError, match="already the active"):
        promote(reg, "a:v3", SPEC.version, GATES)
    rolled_back, new_active = rollback(reg, "bad deploy")
    assert (rolled_back.ref, rolled_back.stage, new_active.ref, new_active.stage) == ("a:v3", "candidate",
                                                                                      "a:v2", "active")
    assert stages(reg) == {"a:v1": "fallback", "a:v2": "active", "a:v3": "candidate"}
    reg.save()
    reg = Registry(path)
    promote(reg, "a:v3", SPEC.version, GATES, reason="fixed")
    assert stages(reg) == promoted
    assert [r["reason"] for r in read_audit(path)[-3:]] == ["fixed"] * 3


def test_promoting_the_fallback_keeps_both_known_good_models(tmp_path):
    reg = Registry(make_registry(tmp_path, [("a:v1", "good"), ("a:v2", "good")]))
    promote(reg, "a:v1", SPEC.version, GATES)
    promote(reg, "a:v2", SPEC.version, GATES)
    promote(reg, "a:v1", SPEC.version, GATES)
    assert stages(reg) == {"a:v1": "active", "a:v2": "fallback"}


def test_rollback_needs_active_and_fallback_and_skips_other_feature_sets(tmp_path):
    reg = Registry(make_registry(tmp_path, [("a:v1", "good"), ("a:v2", "good"), ("a:v3", "good")]))
    with pytest.raises(RegistryError, match="no active"):
        rollback(reg, "x")
    promote(reg, "a:v1", SPEC.version, GATES)
    with pytest.raises(RegistryError, match="no fallback"):
        rollback(reg, "x")
    promote(reg, "a:v2", SPEC.version, GATES)
    promote(reg, "a:v3", SPEC.version, GATES)
    reg.entries = [replace(m, feature_set_version="old") if m.ref == "a:v1" else m for m in reg.entries]
    rollback(reg, "x")
    assert stages(reg) == {"a:v1": "retired", "a:v2": "active", "a:v3": "candidate"}


def test_registered_artifact_is_copied_hashed_measured_and_sha_checked(tmp_path):
    path = make_registry(tmp_path, [("gbdt:v1", "good")])
    reg = Registry(path)
    e = reg.get("gbdt:v1")
    art = reg.artifact(e)
    assert art == (tmp_path / "artifacts" / "gbdt-v1.onnx").resolve() and e.sha256 == sha256_file(art)
    assert (e.stage, e.feature_set_version, e.feature_names) == ("candidate", SPEC.version, SPEC.model_feature_names)
    assert e.metrics["rows"] == 1000 and e.registered_at_ms > 0
    assert e.latency["batch_rows"] == 1024 and 0 < e.latency["p50_ms"] <= e.latency["p99_ms"]
    assert read_audit(path)[0]["to"] == "candidate"
    art.write_bytes(onnx_bytes()["bad"])
    with pytest.raises(RegistryError, match="sha256 mismatch"):
        OnnxScorer(art, e)


def test_register_refuses_unloadable_and_duplicate_artifacts(tmp_path):
    path = make_registry(tmp_path, [("gbdt:v1", "good")])
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not an onnx model")
    with pytest.raises(RegistryError, match="cannot register m:v1"):
        register_artifact(path, junk, "m", "v1", "onnx", SPEC, synthetic(2), "f")
    assert not (tmp_path / "artifacts" / "m-v1.onnx").exists()
    original = (tmp_path / "artifacts" / "gbdt-v1.onnx").read_bytes()
    with pytest.raises(RegistryError, match="already registered"):
        register_artifact(path, junk, "gbdt", "v1", "onnx", SPEC, synthetic(2), "f")
    assert (tmp_path / "artifacts" / "gbdt-v1.onnx").read_bytes() == original
    assert [m.ref for m in Registry(path).entries] == ["gbdt:v1"]


def test_measure_latency_times_real_calls_after_a_warm_up():
    calls: list[tuple[int, ...]] = []

    class Counting:
        def predict(self, x):
            calls.append(x.shape)
            return np.zeros(x.shape[0])

    lat = measure_latency(Counting(), 5, batch_rows=64, runs=7)  # type: ignore[arg-type]
    assert calls == [(64, 5)] * 8
    assert lat["batch_rows"] == 64 and 0 <= lat["p50_ms"] <= lat["p99_ms"]
    with pytest.raises(ValueError):
        measure_latency(Counting(), 5, runs=0)  # type: ignore[arg-type]


def test_train_and_register_records_latency_time_and_audit(tmp_path):
    manifest = train_and_register(synthetic(3, n=2000), tmp_path, SPEC, n_estimators=10, version="t1",
                                  log=lambda _m: None)
    path = tmp_path / "registry.json"
    assert json.loads(path.read_text()) == manifest
    reg = Registry(path)
    assert stages(reg) == {"gbdt:t1": "active", "mlp:t1": "fallback", "prior:t1": "candidate"}
    for m in reg.entries:
        assert m.registered_at_ms > 0 and 0 < m.latency["p50_ms"] <= m.latency["p99_ms"]
        assert m.training_data_fingerprint == "synthetic-3"
    assert [(r["model"], r["from"], r["to"]) for r in read_audit(path)] == [("gbdt:t1", "", "active"),
                                                                          ("mlp:t1", "", "fallback"),
                                                                          ("prior:t1", "", "candidate")]
    assert registry_is_current(path, SPEC.version)
