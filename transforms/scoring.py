"""ONNX scoring (``load/predict``) with a fallback chain; the registry is ``transforms.registry``.

A whole-model failure (load error, inference error, wrong output shape, latency breach)
sends the whole batch down the chain. A row the model cannot score sends only that row:
a feature the model's input type cannot hold (NaN, +-inf, or beyond its range, such as
1e100 for float32) is ``feature_out_of_range: <feature>`` and never reaches the model;
a NaN/inf or out-of-[0, 1] output is ``primary_error: output has ...``. The other rows
keep the model's scores (the same as scoring them alone).

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
from typing import Any

import numpy as np

from transforms.registry import ModelEntry, Registry, RegistryError, sha256_file

__all__ = ["FEATURE_OUT_OF_RANGE", "OUTPUT_ERROR", "BatchScores", "ModelEntry", "ModelRouter", "OnnxScorer",
           "Registry", "RegistryError", "RowFallback", "RowScores", "ScoringError", "load_router", "score_rows",
           "sha256_file"]

FEATURE_OUT_OF_RANGE = "feature_out_of_range"  # reason of a row whose features the model's input cannot hold
OUTPUT_ERROR = "output has NaN/inf or values outside [0, 1]"
_INPUT_DTYPES: dict[str, type[np.floating[Any]]] = {"tensor(float)": np.float32, "tensor(double)": np.float64,
                                                    "tensor(float16)": np.float16}
_NO_ROWS = np.empty(0, dtype=np.int64)


class ScoringError(RuntimeError):
    """A model failed to produce valid scores for a batch."""


@dataclass(frozen=True)
class RowScores:
    """One model's P(click) per row of a batch. ``failed`` (ascending row indexes) are the
    rows it could not score (their ``scores`` are NaN), ``why`` their reasons, in order:
    ``feature_out_of_range: <feature>`` or ``OUTPUT_ERROR``."""

    scores: np.ndarray
    failed: np.ndarray
    why: np.ndarray  # object array of str, one per failed row

    @classmethod
    def all_scored(cls, scores: np.ndarray) -> RowScores:
        return cls(scores, _NO_ROWS, np.empty(0, dtype=object))


class OnnxScorer:
    """One verified ONNX session; ``predict`` returns P(click) for a feature matrix."""

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
        self.input_dtype = _INPUT_DTYPES.get(inputs[0].type, np.float32)
        self.input_limit = float(np.finfo(self.input_dtype).max)  # larger magnitudes overflow the cast
        names = list(entry.feature_names)
        self._range_why = np.array([f"{FEATURE_OUT_OF_RANGE}: {n}" for n in names] or [FEATURE_OUT_OF_RANGE],
                                   dtype=object)
        outs = [o.name for o in self.session.get_outputs()]
        self.prob_output = next((o for o in outs if "prob" in o.lower()), outs[-1])

    def _run(self, x: np.ndarray) -> np.ndarray:
        """P(click) of every row of ``x`` (already checked to fit the input type)."""
        try:
            (probs,) = self.session.run([self.prob_output], {self.input_name: x.astype(self.input_dtype, copy=False)})
        except Exception as exc:
            raise ScoringError(f"inference failed: {exc}") from exc
        probs = np.asarray(probs)
        if probs.ndim == 2 and probs.shape[1] == 2:
            probs = probs[:, 1]
        if probs.shape != (x.shape[0],):
            raise ScoringError(f"output shape {probs.shape}, expected ({x.shape[0]},)")
        return probs.astype(np.float64)

    def score_rows(self, x: np.ndarray) -> RowScores:
        """Score the rows the model can score: a row with a feature its input type cannot
        hold is left out of the call, a row with a NaN/inf or out-of-[0, 1] output is
        failed; each failed row has its reason. Raises ``ScoringError`` only when the
        model fails as a whole (inference error, wrong output shape or width)."""
        x = np.asarray(x)
        if x.ndim != 2:
            raise ScoringError(f"input shape {x.shape}, expected [n, {len(self.entry.feature_names)}]")
        fits = np.abs(x) <= self.input_limit  # False for NaN and +-inf too: no overflowing cast below
        row_fits = fits.all(axis=1)
        if row_fits.all():
            probs = self._run(x)
        else:
            probs = np.full(x.shape[0], np.nan)
            keep = np.flatnonzero(row_fits)
            if keep.size:
                probs[keep] = self._run(x[keep])
        bad = ~((probs >= 0.0) & (probs <= 1.0))  # NaN compares False: out-of-range inputs are here too
        if not bad.any():
            return RowScores.all_scored(probs)
        probs[bad] = np.nan
        failed = np.flatnonzero(bad)
        why = np.full(failed.size, OUTPUT_ERROR, dtype=object)
        out_of_range = ~row_fits[failed]
        if out_of_range.any():
            rows = failed[out_of_range]
            first = np.argmin(fits[rows], axis=1)  # the first feature that does not fit
            why[out_of_range] = self._range_why[np.minimum(first, self._range_why.size - 1)]
        return RowScores(probs, failed, why)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """P(click) of every row; ``ScoringError`` if any row cannot be scored."""
        res = self.score_rows(x)
        if res.failed.size:
            raise ScoringError(f"{res.why[0]} ({res.failed.size} of {res.scores.size} rows)")
        return res.scores


def score_rows(predictor: Any, x: np.ndarray) -> RowScores:
    """``predictor.score_rows(x)``; a predictor with only ``predict`` scores all rows or raises."""
    fn = getattr(predictor, "score_rows", None)
    if fn is not None:
        res: RowScores = fn(x)
        return res
    return RowScores.all_scored(np.asarray(predictor.predict(x), dtype=np.float64))


@dataclass(frozen=True)
class RowFallback:
    """Rows of a batch that a later link of the chain served: row indexes (ascending) and,
    per row, the model and the fallback reason."""

    rows: np.ndarray
    model_name: np.ndarray  # object arrays of str, one per row
    model_version: np.ndarray
    reason: np.ndarray


@dataclass
class BatchScores:
    scores: np.ndarray
    model_name: str  # the link that served the batch ...
    model_version: str
    fallback_reason: str  # "" when the primary model served
    row_fallback: RowFallback | None = None  # ... but for these rows, each with its own link and reason

    def per_row(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Model name, version and fallback reason of every row (object arrays)."""
        n = self.scores.shape[0]
        names, versions = np.full(n, self.model_name, dtype=object), np.full(n, self.model_version, dtype=object)
        reasons = np.full(n, self.fallback_reason, dtype=object)
        rf = self.row_fallback
        if rf is not None and rf.rows.size:
            names[rf.rows], versions[rf.rows], reasons[rf.rows] = rf.model_name, rf.model_version, rf.reason
        return names, versions, reasons


def _clip(reasons: np.ndarray) -> np.ndarray:
    """Reasons cut to 200 characters, like the batch's (object array of str)."""
    return reasons.astype("U200").astype(object) if reasons.size else reasons


class ModelRouter:
    """Primary model, then the known-good fallback, then a constant default score; for the
    whole batch on a whole-model failure, for single rows on a row the model cannot score."""

    def __init__(self, primary: OnnxScorer | None, fallback: OnnxScorer | None, default_score: float = 0.05,
                 latency_budget_ms: float = 1_000.0, primary_error: str = "") -> None:
        self.primary = primary
        self.fallback = fallback
        self.default_score = default_score
        self.latency_budget_ms = latency_budget_ms
        self.primary_error = primary_error

    def _down_chain(self, x: np.ndarray, rows: np.ndarray, reason: np.ndarray, scores: np.ndarray,
                    fallback: OnnxScorer | None) -> RowFallback:
        """Serve ``rows`` (failed by the link before, each with its ``reason``) by ``fallback``
        and, where it cannot (or is None), by the default score; fills ``scores[rows]``."""
        names = np.full(rows.size, "default", dtype=object)
        versions = np.full(rows.size, "default", dtype=object)
        scores[rows] = self.default_score
        if fallback is not None:
            try:
                res = score_rows(fallback, x[rows])
                ok = np.ones(rows.size, dtype=bool)
                ok[res.failed] = False
                scores[rows[ok]] = res.scores[ok]
                names[ok], versions[ok] = fallback.entry.name, fallback.entry.version
                reason = reason.copy()
                reason[res.failed] = reason[res.failed] + "; fallback_error: " + res.why
            except ScoringError as exc:
                reason = reason + f"; fallback_error: {exc}"
        return RowFallback(rows, names, versions, _clip(reason))

    def score(self, x: np.ndarray) -> BatchScores:
        reason = self.primary_error or ("no_model" if self.primary is None else "")
        if self.primary is not None:
            t0 = time.perf_counter()
            try:
                res = score_rows(self.primary, x)
                if (time.perf_counter() - t0) * 1000 <= self.latency_budget_ms:
                    entry = self.primary.entry
                    if not res.failed.size:
                        return BatchScores(res.scores, entry.name, entry.version, "")
                    why = np.where(res.why == OUTPUT_ERROR, f"primary_error: {OUTPUT_ERROR}", res.why).astype(object)
                    return BatchScores(res.scores, entry.name, entry.version, "",
                                       self._down_chain(x, res.failed, why, res.scores, self.fallback))
                reason = "latency_budget"
            except ScoringError as exc:
                reason = f"primary_error: {exc}"[:200]
        if self.fallback is not None:
            try:
                res = score_rows(self.fallback, x)
                rf = None
                if res.failed.size:  # rows the fallback cannot score either: the default score
                    rf = self._down_chain(x, res.failed, f"{reason}; fallback_error: " + res.why, res.scores, None)
                return BatchScores(res.scores, self.fallback.entry.name, self.fallback.entry.version, reason, rf)
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
