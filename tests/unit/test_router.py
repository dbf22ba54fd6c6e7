"""Per-arm routing through the fallback chain, shadow and reference scores, and model
loading/verification (transforms.router) on a small real registry."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from models.train import to_onnx, train_gbdt, train_mlp
from tests.unit.registry_fixtures import FS, N_FEATURES, const_onnx, entry_json
from transforms.deployment import Arm, Deployment, assign_arms
from transforms.registry import ModelEntry, RegistryError, sha256_file
from transforms.router import Serving, initial_deployment, load_predictors, resolve_ref, route
from transforms.scoring import OnnxScorer


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (1500, N_FEATURES)).astype(np.float32)
    logit = 1.5 * x[:, 1] - x[:, 2] - 1
    y = (rng.random(1500) < 1 / (1 + np.exp(-logit))).astype(int)
    return x, y


@pytest.fixture(scope="module")
def registry(tmp_path_factory, data):
    """gbdt:t1 (candidate), gbdt:t2 (active), mlp:t1 (fallback) and hand-built models."""
    x, y = data
    root = tmp_path_factory.mktemp("router-registry")
    (root / "artifacts").mkdir()
    g1, g2 = train_gbdt(x, y, n_estimators=20, seed=1), train_gbdt(x, y, n_estimators=8, seed=2)
    entries = [
        entry_json(root, "gbdt", "t1", "gbdt", to_onnx(g1, "gbdt", N_FEATURES)),
        entry_json(root, "gbdt", "t2", "gbdt", to_onnx(g2, "gbdt", N_FEATURES), stage="active"),
        entry_json(root, "mlp", "t1", "mlp", to_onnx(train_mlp(x, y), "mlp", N_FEATURES), stage="fallback"),
        entry_json(root, "nan", "h1", "onnx", const_onnx([float("nan"), float("nan")])),
        entry_json(root, "wide", "h1", "onnx", const_onnx([0.5, 0.5], n_features=4)),
        entry_json(root, "over", "h1", "onnx", const_onnx([-0.5, 1.5])),
        entry_json(root, "const", "h1", "onnx", const_onnx([0.05, 0.95])),
        entry_json(root, "old", "t1", "gbdt", to_onnx(g1, "gbdt", N_FEATURES), fs="fs0"),
    ]
    (root / "registry.json").write_text(json.dumps({"models": entries}))
    return root / "registry.json"


ALL_GOOD = {"gbdt:t1", "gbdt:t2", "mlp:t1", "nan:h1", "over:h1", "const:h1"}


@pytest.fixture(scope="module")
def loaded(registry):
    preds, errors = load_predictors(registry, ALL_GOOD | {"wide:h1"}, FS)
    assert set(preds) == ALL_GOOD
    return preds, errors


def scorer(registry: Path, ref: str) -> OnnxScorer:
    raw = json.loads(registry.read_text())["models"]
    e = ModelEntry.from_json(next(m for m in raw if f"{m['name']}:{m['version']}" == ref))
    return OnnxScorer(registry.parent / e.path, e)


def users_and_rows(data, n_users=120, per_user=3, seed=5):
    x, _ = data
    rng = np.random.default_rng(seed)
    users = [f"u{i}" for i in range(n_users) for _ in range(per_user)]
    order = rng.permutation(len(users))
    users = [users[i] for i in order]
    return users, x[: len(users)]


def experiment(a: str, b: str, fallback: str | None = "mlp:t1") -> Deployment:
    return Deployment(arms=(Arm("control", a, 0.5), Arm("treatment", b, 0.5)), fallback=fallback)


def test_each_user_goes_to_one_arm_and_its_model(registry, loaded, data):
    preds, _ = loaded
    users, x = users_and_rows(data)
    srv = Serving(experiment("gbdt:t1", "gbdt:t2"), preds)
    out = route(srv, users, x, default_score=0.05, latency_budget_ms=10_000)
    by_user: dict[str, set] = {}
    for u, arm, name, ver in zip(users, out.arm, out.model_name, out.model_version, strict=True):
        by_user.setdefault(u, set()).add((arm, name, ver))
    assert all(len(v) == 1 for v in by_user.values())
    served = {next(iter(v)) for v in by_user.values()}
    assert served == {("control", "gbdt", "t1"), ("treatment", "gbdt", "t2")}
    assert out.fallback_reason == [""] * len(users)
    np.testing.assert_array_equal(out.arm_index, assign_arms(users, srv.deployment.arms))
    for i, ref in enumerate(("gbdt:t1", "gbdt:t2")):
        rows = out.arm_index == i
        np.testing.assert_allclose(out.scores[rows], scorer(registry, ref).predict(x[rows]), rtol=0, atol=1e-7)
    assert set(out.arm_latency_ms) == {"control", "treatment"}
    assert out.shadow_scores is None and out.reference_scores is None


def test_nan_model_falls_back_to_the_fallback(registry, loaded, data):
    preds, _ = loaded
    users, x = users_and_rows(data)
    out = route(Serving(experiment("gbdt:t1", "nan:h1"), preds), users, x, default_score=0.05,
                latency_budget_ms=10_000)
    treat = out.arm_index == 1
    assert treat.any() and (~treat).any()
    for r in np.flatnonzero(treat):
        assert "NaN" in out.fallback_reason[r] and out.fallback_reason[r].startswith("primary_error")
        assert (out.model_name[r], out.model_version[r], out.arm[r]) == ("mlp", "t1", "treatment")
    np.testing.assert_allclose(out.scores[treat], scorer(registry, "mlp:t1").predict(x[treat]), atol=1e-7)
    assert all(out.model_name[r] == "gbdt" and out.fallback_reason[r] == "" for r in np.flatnonzero(~treat))
    assert np.all(np.isfinite(out.scores))


def test_out_of_range_model_falls_back(loaded, data):
    preds, _ = loaded
    users, x = users_and_rows(data, n_users=10)
    out = route(Serving(Deployment.single("over:h1", "mlp:t1"), preds), users, x, default_score=0.05,
                latency_budget_ms=10_000)
    assert set(out.model_name) == {"mlp"} and all("outside [0, 1]" in r for r in out.fallback_reason)
    assert out.scores.max() <= 1.0


def test_nan_model_without_fallback_serves_the_default(loaded, data):
    preds, _ = loaded
    users, x = users_and_rows(data, n_users=10)
    out = route(Serving(Deployment.single("nan:h1"), preds), users, x, default_score=0.07, latency_budget_ms=10_000)
    assert out.scores.tolist() == [0.07] * len(users)
    assert set(out.model_name) == {"default"} and all("NaN" in r for r in out.fallback_reason)


def test_load_error_of_an_arm_model_falls_back(registry, loaded, data):
    preds, errors = loaded
    assert "input signature" in errors["wide:h1"] and errors["wide:h1"].startswith("load_error wide:h1")
    users, x = users_and_rows(data, n_users=10)
    out = route(Serving(Deployment.single("wide:h1", "mlp:t1"), preds, errors), users, x, default_score=0.05,
                latency_budget_ms=10_000)
    assert set(out.model_name) == {"mlp"} and all(r.startswith("load_error wide:h1") for r in out.fallback_reason)
    np.testing.assert_allclose(out.scores, scorer(registry, "mlp:t1").predict(x), atol=1e-7)


def test_latency_budget_breach_falls_back(registry, loaded, data):
    preds, _ = loaded
    users, x = users_and_rows(data, n_users=20)
    out = route(Serving(Deployment.single("gbdt:t1", "mlp:t1"), preds), users, x, default_score=0.05,
                latency_budget_ms=1e-6)
    assert out.fallback_reason == ["latency_budget"] * len(users)
    assert set(zip(out.model_name, out.model_version, strict=True)) == {("mlp", "t1")}
    np.testing.assert_allclose(out.scores, scorer(registry, "mlp:t1").predict(x), atol=1e-7)


def test_rolled_back_serves_the_fallback_everywhere(registry, loaded, data):
    preds, _ = loaded
    users, x = users_and_rows(data)
    dep = replace(experiment("gbdt:t1", "gbdt:t2"), rolled_back=True, rollback_reason="log loss too high")
    out = route(Serving(dep, preds), users, x, default_score=0.05, latency_budget_ms=10_000)
    assert set(out.model_name) == {"mlp"} and set(out.model_version) == {"t1"}
    assert all(r.startswith("rolled_back") and "log loss too high" in r for r in out.fallback_reason)
    assert set(out.arm) == {"control", "treatment"}  # the arm is still reported
    np.testing.assert_allclose(out.scores, scorer(registry, "mlp:t1").predict(x), atol=1e-7)


def test_rolled_back_without_a_loaded_fallback_serves_the_default(loaded, data):
    preds, _ = loaded
    users, x = users_and_rows(data, n_users=5)
    dep = replace(Deployment.single("gbdt:t1", "missing:v1"), rolled_back=True, rollback_reason="r")
    out = route(Serving(dep, preds), users, x, default_score=0.2, latency_budget_ms=10_000)
    assert out.scores.tolist() == [0.2] * len(users) and set(out.model_name) == {"default"}
    assert all(r.startswith("rolled_back") for r in out.fallback_reason)


def test_shadow_scores_equal_a_direct_predict(registry, loaded, data):
    preds, _ = loaded
    users, x = users_and_rows(data)
    dep = replace(Deployment.single("gbdt:t1", "mlp:t1"), shadow="gbdt:t2")
    out = route(Serving(dep, preds), users, x, default_score=0.05, latency_budget_ms=10_000)
    assert out.shadow_ref == "gbdt:t2"
    np.testing.assert_array_equal(out.shadow_scores, scorer(registry, "gbdt:t2").predict(x))
    np.testing.assert_array_equal(out.scores, scorer(registry, "gbdt:t1").predict(x))
    assert not np.allclose(out.shadow_scores, out.scores)
    assert set(out.arm) == {"active"} and out.fallback_reason == [""] * len(users)


def test_failing_shadow_never_affects_served_scores(registry, loaded, data):
    preds, _ = loaded
    users, x = users_and_rows(data, n_users=20)
    dep = replace(Deployment.single("gbdt:t1", "mlp:t1"), shadow="nan:h1")
    out = route(Serving(dep, preds), users, x, default_score=0.05, latency_budget_ms=10_000)
    assert out.shadow_scores is None and out.shadow_ref == ""
    assert set(out.model_name) == {"gbdt"} and out.fallback_reason == [""] * len(users)


def test_reference_scores_are_the_fallback(registry, loaded, data):
    preds, _ = loaded
    users, x = users_and_rows(data, n_users=20)
    srv = Serving(Deployment.single("gbdt:t1", "mlp:t1"), preds)
    out = route(srv, users, x, default_score=0.05, latency_budget_ms=10_000, with_reference=True)
    assert out.reference_ref == "mlp:t1"
    np.testing.assert_array_equal(out.reference_scores, scorer(registry, "mlp:t1").predict(x))
    no_fb = route(Serving(Deployment.single("gbdt:t1"), preds), users, x, default_score=0.05,
                  latency_budget_ms=10_000, with_reference=True)
    assert no_fb.reference_scores is None and no_fb.reference_ref == ""


def test_no_arms_uses_the_fallback_chain(registry, loaded, data):
    preds, _ = loaded
    users, x = users_and_rows(data, n_users=4)
    out = route(Serving(Deployment.single(None, "mlp:t1"), preds), users, x, default_score=0.05,
                latency_budget_ms=10_000)
    assert set(out.model_name) == {"mlp"} and out.fallback_reason == ["no_model"] * len(users)
    assert out.arm == ["default"] * len(users)
    out = route(Serving(Deployment.single(None), {}), users, x, default_score=0.3, latency_budget_ms=10_000)
    assert out.scores.tolist() == [0.3] * len(users) and out.model_version == ["default"] * len(users)


def test_empty_batch(loaded):
    preds, _ = loaded
    out = route(Serving(experiment("gbdt:t1", "gbdt:t2"), preds), [], np.zeros((0, N_FEATURES), np.float32),
                default_score=0.05, latency_budget_ms=10_000, with_reference=True)
    assert out.scores.shape == (0,) and out.model_name == [] and out.arm_latency_ms == {}


# -- load_predictors: verification, errors as strings, cache -----------------------------------

@pytest.fixture
def reg_copy(registry, tmp_path):
    dst = tmp_path / "reg"
    shutil.copytree(registry.parent, dst)
    return dst / "registry.json"


def edit_entry(reg: Path, ref: str, **fields) -> dict:
    raw = json.loads(reg.read_text())
    for m in raw["models"]:
        if f"{m['name']}:{m['version']}" == ref:
            m.update(fields)
            found = m
    reg.write_text(json.dumps(raw))
    return found


def artifact_of(reg: Path, ref: str) -> Path:
    m = next(m for m in json.loads(reg.read_text())["models"] if f"{m['name']}:{m['version']}" == ref)
    return reg.parent / m["path"]


def test_load_predictors_loads_and_verifies(registry):
    preds, errors = load_predictors(registry, {"gbdt:t1", "mlp:t1"}, FS)
    assert errors == {} and set(preds) == {"gbdt:t1", "mlp:t1"}
    assert preds["gbdt:t1"].entry.ref == "gbdt:t1" and isinstance(preds["mlp:t1"], OnnxScorer)


def test_corrupted_file_is_refused(reg_copy):
    path = artifact_of(reg_copy, "gbdt:t1")
    raw = bytearray(path.read_bytes())
    for i in range(100, 110):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))
    preds, errors = load_predictors(reg_copy, {"gbdt:t1", "mlp:t1"}, FS)
    assert set(preds) == {"mlp:t1"}
    assert "sha256 mismatch" in errors["gbdt:t1"] and errors["gbdt:t1"].startswith("load_error gbdt:t1")


def test_deleted_file_is_refused(reg_copy):
    artifact_of(reg_copy, "gbdt:t1").unlink()
    preds, errors = load_predictors(reg_copy, {"gbdt:t1", "mlp:t1"}, FS)
    assert set(preds) == {"mlp:t1"} and "missing" in errors["gbdt:t1"]


def test_truncated_file_with_matching_sha_is_refused(reg_copy):
    path = artifact_of(reg_copy, "gbdt:t1")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    edit_entry(reg_copy, "gbdt:t1", sha256=sha256_file(path))
    preds, errors = load_predictors(reg_copy, {"gbdt:t1"}, FS)
    assert preds == {} and "cannot load" in errors["gbdt:t1"]


def test_wrong_feature_set_version_is_refused(registry):
    preds, errors = load_predictors(registry, {"old:t1", "gbdt:t1"}, FS)
    assert set(preds) == {"gbdt:t1"} and "feature set fs0" in errors["old:t1"]
    preds, errors = load_predictors(registry, {"gbdt:t1"}, "fs9")
    assert preds == {} and "fs9" in errors["gbdt:t1"]


@pytest.mark.parametrize("bad_path", ["../x.onnx", "artifacts/../../x.onnx", "/etc/passwd", "file:///x.onnx"])
def test_path_outside_the_registry_is_refused(reg_copy, bad_path):
    outside = reg_copy.parent.parent / "x.onnx"
    shutil.copy(artifact_of(reg_copy, "gbdt:t1"), outside)  # a loadable file is there
    edit_entry(reg_copy, "gbdt:t1", path=bad_path, sha256=sha256_file(outside))
    preds, errors = load_predictors(reg_copy, {"gbdt:t1", "mlp:t1"}, FS)
    assert set(preds) == {"mlp:t1"}
    assert "leaves the registry folder" in errors["gbdt:t1"] or "relative to the registry" in errors["gbdt:t1"]


def test_unknown_ref_and_missing_registry_are_errors(registry, tmp_path):
    preds, errors = load_predictors(registry, {"xgb:v1", "mlp:t1"}, FS)
    assert set(preds) == {"mlp:t1"} and "no model xgb:v1" in errors["xgb:v1"]
    preds, errors = load_predictors(tmp_path / "none.json", {"a:1", "b:2"}, FS)
    assert preds == {} and set(errors) == {"a:1", "b:2"} and all("cannot read registry" in e for e in errors.values())
    (tmp_path / "bad.json").write_text("{not json")
    preds, errors = load_predictors(tmp_path / "bad.json", {"a:1"}, FS)
    assert preds == {} and errors["a:1"].startswith("load_error a:1")


@pytest.mark.parametrize("bad_path", ["artifacts", "", "artifacts/a\u0000.onnx"])
def test_unreadable_artifact_path_is_an_error_string(reg_copy, bad_path):
    edit_entry(reg_copy, "gbdt:t1", path=bad_path)
    preds, errors = load_predictors(reg_copy, {"gbdt:t1", "mlp:t1"}, FS)
    assert set(preds) == {"mlp:t1"} and errors["gbdt:t1"].startswith("load_error gbdt:t1")


def test_cache_reuses_the_loaded_session(reg_copy, data):
    first, _ = load_predictors(reg_copy, {"gbdt:t1", "mlp:t1"}, FS)
    again, errors = load_predictors(reg_copy, {"gbdt:t1", "mlp:t1", "gbdt:t2"}, FS, cache=first)
    assert errors == {}
    assert again["gbdt:t1"] is first["gbdt:t1"] and again["mlp:t1"] is first["mlp:t1"]
    assert "gbdt:t2" not in first and isinstance(again["gbdt:t2"], OnnxScorer)
    # a cached session is not re-read from disk (a hot swap never reloads what serves) ...
    artifact_of(reg_copy, "mlp:t1").write_bytes(b"gone")
    third, errors = load_predictors(reg_copy, {"mlp:t1"}, FS, cache=first)
    assert errors == {} and third["mlp:t1"] is first["mlp:t1"]
    # ... but a re-registered artifact (new sha256 for the same ref) is loaded afresh
    path = artifact_of(reg_copy, "gbdt:t1")
    path.write_bytes(artifact_of(reg_copy, "gbdt:t2").read_bytes())
    edit_entry(reg_copy, "gbdt:t1", sha256=sha256_file(path))
    fresh, errors = load_predictors(reg_copy, {"gbdt:t1"}, FS, cache=first)
    assert errors == {} and fresh["gbdt:t1"] is not first["gbdt:t1"]
    x = data[0][:50]
    assert not np.allclose(fresh["gbdt:t1"].predict(x), first["gbdt:t1"].predict(x))


# -- resolve_ref and initial_deployment ---------------------------------------------------------

def test_resolve_ref(registry, tmp_path):
    assert resolve_ref(registry, "gbdt") == "gbdt:t2"  # the newest version
    assert resolve_ref(registry, "gbdt:t1") == "gbdt:t1"
    with pytest.raises(RegistryError):
        resolve_ref(registry, "gbdt:t9")
    with pytest.raises(RegistryError):
        resolve_ref(tmp_path / "missing.json", "gbdt")


def test_initial_deployment(registry, tmp_path):
    assert initial_deployment(registry, "", "") == Deployment.single("gbdt:t2", "mlp:t1")
    assert initial_deployment(registry, "gbdt:t1", "gbdt") == Deployment.single("gbdt:t1", "gbdt:t2")
    assert initial_deployment(registry, "mlp", "xgb:v1") == Deployment.single("mlp:t1", "xgb:v1")
    assert initial_deployment(tmp_path / "missing.json", "a:1", "") == Deployment.single("a:1")
    assert initial_deployment(tmp_path / "missing.json", "", "").arms == ()
    no_stages = tmp_path / "r.json"
    raw = json.loads(registry.read_text())
    no_stages.write_text(json.dumps({"models": [dict(m, stage="candidate") for m in raw["models"]]}))
    assert initial_deployment(no_stages, "", "") == Deployment.single(None, None)
