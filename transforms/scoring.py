"""ONNX scoring (``load/predict``) with a fallback chain; the registry is ``transforms.registry``.

>>> import numpy as np
>>> r = ModelRouter(None, None, default_score=0.1)
>>> out = r.score(np.zeros((2, 3), dtype=np.float32))
>>> out.scores.tolist(), out.model_version, out.fallback_reason
([0.1, 0.1], 'default', 'no_model')
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transforms.registry import ModelEntry, Registry, RegistryError, sha256_file

__all__ = ["BatchScores", "ModelEntry", "ModelRouter", "OnnxScorer", "Registry", "RegistryError", "ScoringError",
           "load_router", "sha256_file"]


class ScoringError(RuntimeError):
    """A model failed to produce valid scores for a batch."""


class OnnxScorer:
    """One verified ONNX session; ``predict`` returns P(click) for a float32 matrix."""

    def __init__(self, path: Path, entry: ModelEntry, intra_op_threads: int = 1) -> None:
        import onnxruntime as ort

        if not Path(path).exists():
            raise RegistryError(f"model artifact {path} is missing")
        digest = sha256_file(Path(path))
        if digest != entry.sha256:
            raise RegistryError(f"sha256 mismatch for {path}: registry {entry.sha256[:12]}, file {digest[:12]}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise RegistryError(f"cannot load {path}: {exc}") from exc
        self.entry = entry
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or inputs[0].shape[-1] not in (len(entry.feature_names), None, "None"):
            raise RegistryError(f"{path}: input signature {[(i.name, i.shape) for i in inputs]} does not take "
                                f"{len(entry.feature_names)} features")
        self.input_name = inputs[0].name
        outs = [o.name for o in self.session.get_outputs()]
        self.prob_output = next((o for o in outs if "prob" in o.lower()), outs[-1])

    def predict(self, x: np.ndarray) -> np.ndarray:
        try:
            (probs,) = self.session.run([self.prob_output], {self.input_name: x.astype(np.float32, copy=False)})
        except Exception as exc:
            raise ScoringError(f"inference failed: {exc}") from exc
        probs = np.asarray(probs)
        if probs.ndim == 2 and probs.shape[1] == 2:
            probs = probs[:, 1]
        if probs.shape != (x.shape[0],):
            raise ScoringError(f"output shape {probs.shape}, expected ({x.shape[0]},)")
        if not np.all(np.isfinite(probs)) or probs.min(initial=0.0) < 0.0 or probs.max(initial=0.0) > 1.0:
            raise ScoringError("output has NaN/inf or values outside [0, 1]")
        return probs.astype(np.float64)


@dataclass
class BatchScores:
    scores: np.ndarray
    model_name: str
    model_version: str
    fallback_reason: str  # "" when the primary model served


class ModelRouter:
    """Primary model, then the known-good fallback, then a constant default score."""

    def __init__(self, primary: OnnxScorer | None, fallback: OnnxScorer | None, default_score: float = 0.05,
                 latency_budget_ms: float = 1_000.0, primary_error: str = "") -> None:
        self.primary = primary
        self.fallback = fallback
        self.default_score = default_score
        self.latency_budget_ms = latency_budget_ms
        self.primary_error = primary_error

    def score(self, x: np.ndarray) -> BatchScores:
        reason = self.primary_error or ("no_model" if self.primary is None else "")
        if self.primary is not None:
            t0 = time.perf_counter()
            try:
                s = self.primary.predict(x)
                if (time.perf_counter() - t0) * 1000 <= self.latency_budget_ms:
                    return BatchScores(s, self.primary.entry.name, self.primary.entry.version, "")
                reason = "latency_budget"
            except ScoringError as exc:
                reason = f"primary_error: {exc}"[:200]
        if self.fallback is not None:
            try:
                s = self.fallback.predict(x)
                return BatchScores(s, self.fallback.entry.name, self.fallback.entry.version, reason)
            except ScoringError as exc:
                reason = f"{reason}; fallback_error: {exc}"[:200]
        return BatchScores(np.full(x.shape[0], self.default_score), "default", "default", reason or "no_model")


def load_router(registry_path: Path, model_name: str, fallback_name: str | None, feature_set_version: str,
                default_score: float = 0.05, latency_budget_ms: float = 1_000.0) -> ModelRouter:
    """Build a router from the registry; a model that fails to load is replaced by the
    next link of the chain, and the reason is carried on every score."""
    errors: list[str] = []

    def load(name: str | None) -> OnnxScorer | None:
        if not name:
            return None
        try:
            reg = Registry(registry_path)
            entry = reg.get(name)
            if entry.feature_set_version != feature_set_version:
                raise RegistryError(f"model {name}:{entry.version} was trained on feature set "
                                    f"{entry.feature_set_version}, the job runs {feature_set_version}")
            return OnnxScorer(reg.artifact(entry), entry)
        except RegistryError as exc:
            errors.append(f"load_error {name}: {exc}"[:200])
            return None

    primary = load(model_name)
    fallback = load(fallback_name) if fallback_name and fallback_name != model_name else None
    return ModelRouter(primary, fallback, default_score, latency_budget_ms,
                       primary_error=errors[0] if primary is None and errors else "")
