"""ONNX scorer against the models' native predictions, and the fallback chain."""

import json

import numpy as np
import pytest

from models.train import native_predict, to_onnx, train_gbdt, train_mlp
from transforms.scoring import (
    ModelEntry,
    ModelRouter,
    OnnxScorer,
    RegistryError,
    ScoringError,
    load_router,
    sha256_file,
)

N_FEATURES = 6


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (3000, N_FEATURES)).astype(np.float32)
    x[:, 0] = rng.poisson(3, 3000)
    logit = 1.5 * x[:, 1] - x[:, 2] + 0.3 * x[:, 0] - 1
    y = (rng.random(3000) < 1 / (1 + np.exp(-logit))).astype(int)
    return x, y


@pytest.fixture(scope="module")
def registry(tmp_path_factory, data):
    x, y = data
    root = tmp_path_factory.mktemp("registry")
    (root / "artifacts").mkdir()
    models, entries = {}, []
    for kind in ("gbdt", "mlp"):
        m = train_gbdt(x, y, n_estimators=40) if kind == "gbdt" else train_mlp(x, y)
        models[kind] = m
        path = root / "artifacts" / f"{kind}.onnx"
        path.write_bytes(to_onnx(m, kind, N_FEATURES))
        entries.append({"name": kind, "version": "t1", "kind": kind, "path": f"artifacts/{kind}.onnx",
                        "sha256": sha256_file(path), "feature_names": [f"f{i}" for i in range(N_FEATURES)],
                        "feature_set_version": "fs1", "training_data_fingerprint": "d1", "metrics": {}})
    (root / "registry.json").write_text(json.dumps({"models": entries}))
    return root, models, entries


@pytest.mark.parametrize("kind", ["gbdt", "mlp"])
def test_onnx_matches_native_predictions(registry, data, kind):
    root, models, entries = registry
    x, _ = data
    entry = ModelEntry.from_json(next(e for e in entries if e["name"] == kind))
    scorer = OnnxScorer(root / entry.path, entry)
    got = scorer.predict(x)
    want = native_predict(models[kind], x)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert 0.0 < got.min() and got.max() < 1.0


def test_sha_mismatch_is_refused(registry, tmp_path):
    root, _, entries = registry
    entry = ModelEntry.from_json({**entries[0], "sha256": "0" * 64})
    with pytest.raises(RegistryError, match="sha256 mismatch"):
        OnnxScorer(root / entry.path, entry)


def test_router_falls_back_to_known_good_then_default(registry, data, tmp_path):
    root, _, entries = registry
    x, _ = data
    good = tmp_path / "registry.json"
    (tmp_path / "artifacts").mkdir()
    (tmp_path / entries[1]["path"]).write_bytes((root / entries[1]["path"]).read_bytes())
    bad = [dict(entries[0], path="artifacts/missing.onnx"), entries[1]]
    good.write_text(json.dumps({"models": bad}))
    router = load_router(good, "gbdt", "mlp", "fs1")
    out = router.score(x[:10])
    assert out.model_name == "mlp" and "load_error gbdt" in out.fallback_reason
    assert out.scores.shape == (10,)
    router.fallback = None
    out = router.score(x[:10])
    assert out.model_name == "default" and np.all(out.scores == router.default_score)


def test_feature_set_mismatch_is_a_load_error(registry, data):
    root, _, _ = registry
    router = load_router(root / "registry.json", "gbdt", "mlp", "another-feature-set")
    out = router.score(data[0][:3])
    assert out.model_name == "default"
    assert "feature set" in out.fallback_reason


class _Broken:
    def __init__(self, entry, result=None, exc=None):
        self.entry, self.result, self.exc = entry, result, exc

    def predict(self, x):
        if self.exc:
            raise self.exc
        return self.result


def test_router_reason_for_bad_outputs(registry):
    _, _, entries = registry
    e = ModelEntry.from_json(entries[0])
    ok = _Broken(ModelEntry.from_json(entries[1]), result=np.full(4, 0.5))
    r = ModelRouter(_Broken(e, exc=ScoringError("output has NaN")), ok)
    out = r.score(np.zeros((4, N_FEATURES), np.float32))
    assert out.model_name == "mlp" and "NaN" in out.fallback_reason


def test_predict_rejects_wrong_width(registry, data):
    root, _, entries = registry
    entry = ModelEntry.from_json(entries[0])
    scorer = OnnxScorer(root / entry.path, entry)
    with pytest.raises(ScoringError):
        scorer.predict(data[0][:, :3])
