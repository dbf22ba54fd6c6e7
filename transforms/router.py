"""Routes a batch of feature vectors through the deployment: each user's stable arm, its
model through the fallback chain (arm model -> known-good fallback -> default score),
the shadow model on the same rows, and the fallback model as the evaluation reference.

>>> import numpy as np
>>> from transforms.deployment import Deployment
>>> srv = Serving(Deployment.single("m:1"), {}, {"m:1": "load_error m:1: missing"})
>>> out = route(srv, ["u1", "u2"], np.zeros((2, 3), np.float32), default_score=0.1, latency_budget_ms=50)
>>> out.scores.tolist(), out.model_version, out.fallback_reason[0][:10]
([0.1, 0.1], ['default', 'default'], 'load_error')
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from transforms.deployment import Deployment, assign_arms
from transforms.registry import ModelEntry, Registry, RegistryError
from transforms.scoring import ModelRouter, OnnxScorer, score_rows


class Predictor(Protocol):
    entry: ModelEntry

    def predict(self, x: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Serving:
    """A deployment with its loaded, verified sessions (``ref -> predictor``) and the load
    error of each model that could not be loaded. Replaced whole on a hot swap."""

    deployment: Deployment
    predictors: dict[str, Any]
    errors: dict[str, str] = field(default_factory=dict)


@dataclass
class Routed:
    scores: np.ndarray
    model_name: list[str]
    model_version: list[str]
    arm: list[str]
    fallback_reason: list[str]
    arm_index: np.ndarray
    arm_latency_ms: dict[str, float]
    shadow_ref: str = ""
    shadow_scores: np.ndarray | None = None
    reference_ref: str = ""
    reference_scores: np.ndarray | None = None


def _chain(srv: Serving, model: str | None, default_score: float, latency_budget_ms: float) -> ModelRouter:
    dep = srv.deployment
    fallback = srv.predictors.get(dep.fallback) if dep.fallback else None
    if dep.rolled_back:
        return ModelRouter(None, fallback, default_score, latency_budget_ms,
                           primary_error=f"rolled_back: {dep.rollback_reason}"[:200])
    primary = srv.predictors.get(model) if model else None
    error = "" if primary is not None else srv.errors.get(model or "", "no_model")
    return ModelRouter(primary, fallback if fallback is not primary else None, default_score, latency_budget_ms,
                       primary_error=error)


def route(srv: Serving, user_ids: Sequence[str], x: np.ndarray, *, default_score: float, latency_budget_ms: float,
          with_reference: bool = False) -> Routed:
    """Score ``x`` (rows of ``user_ids``) under ``srv``; every row says which model, arm
    and fallback reason produced its score (a row its model cannot score falls back on
    its own, the other rows keep the model's scores)."""
    n = len(user_ids)
    dep = srv.deployment
    arms = dep.arms
    idx = assign_arms(user_ids, arms)
    scores = np.full(n, default_score, dtype=np.float64)
    names = np.full(n, "default", dtype=object)
    versions = np.full(n, "default", dtype=object)
    reasons = np.full(n, "no_model", dtype=object)
    arm_names = [arms[i].name for i in idx] if arms else ["default"] * n
    latency: dict[str, float] = {}
    for a_i, arm in enumerate(arms or ()):
        rows = np.flatnonzero(idx == a_i)
        if rows.size == 0:
            continue
        t0 = time.perf_counter()
        out = _chain(srv, arm.model, default_score, latency_budget_ms).score(x[rows])
        latency[arm.name] = (time.perf_counter() - t0) * 1000.0
        scores[rows] = out.scores
        names[rows], versions[rows], reasons[rows] = out.per_row()
    if not arms:  # nothing deployed: the fallback chain alone
        out = _chain(srv, None, default_score, latency_budget_ms).score(x)
        scores[:] = out.scores
        names, versions, reasons = out.per_row()
        reasons[reasons == ""] = "no_model"
    res = Routed(scores, names.tolist(), versions.tolist(), arm_names, reasons.tolist(), idx, latency)
    shadow = srv.predictors.get(dep.shadow) if dep.shadow else None
    if shadow is not None and n:  # a failing shadow never affects served scores
        res.shadow_scores = _side_scores(shadow, x)
        res.shadow_ref = (dep.shadow or "") if res.shadow_scores is not None else ""
    fallback = srv.predictors.get(dep.fallback) if dep.fallback else None
    if with_reference and fallback is not None and n:
        res.reference_scores = _side_scores(fallback, x)
        res.reference_ref = (dep.fallback or "") if res.reference_scores is not None else ""
    return res


def _side_scores(predictor: Any, x: np.ndarray) -> np.ndarray | None:
    """Scores of a model that serves nothing (shadow, reference): NaN for the rows it
    cannot score; None when it fails as a whole or scores no row."""
    try:
        res = score_rows(predictor, x)
    except Exception:
        return None
    return None if res.failed.size == res.scores.size else res.scores


def load_predictors(registry_path: Path, refs: set[str], feature_set_version: str,
                    cache: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """Load and verify (sha256, input signature, feature-set version) each model; a model
    already in ``cache`` (same ``name:version``, same sha256) is reused, so a hot swap
    never reloads what is serving. Returns ``(predictors, errors)``."""
    cache = cache or {}
    out: dict[str, Any] = {}
    errors: dict[str, str] = {}
    try:
        reg = Registry(registry_path)
    except RegistryError as exc:
        return {}, {r: f"load_error {r}: {exc}"[:200] for r in refs}
    for ref in sorted(refs):
        try:
            entry = reg.get(ref)
            if entry.feature_set_version != feature_set_version:
                raise RegistryError(f"model {entry.ref} was trained on feature set {entry.feature_set_version}, "
                                    f"the job runs {feature_set_version}")
            hit = cache.get(ref) or cache.get(entry.ref)
            if hit is not None and hit.entry.ref == entry.ref and hit.entry.sha256 == entry.sha256:
                out[ref] = hit
            else:
                out[ref] = OnnxScorer(reg.artifact(entry), entry)
        except (RegistryError, OSError, ValueError) as exc:  # an unreadable path is a load error too
            errors[ref] = f"load_error {ref}: {exc}"[:200]
    return out, errors


def resolve_ref(registry_path: Path, ref: str) -> str:
    """``name`` or ``name:version`` -> the registered ``name:version`` (RegistryError if none)."""
    return Registry(registry_path).get(ref).ref


def initial_deployment(registry_path: Path, model: str, fallback: str) -> Deployment:
    """The deployment a job starts with: the configured refs, or else the registry's
    ``active`` and ``fallback`` stages; unknown refs stay as given (they fail to load and
    the chain serves)."""
    try:
        reg = Registry(registry_path)
    except RegistryError:
        return Deployment.single(model or None, fallback or None)

    def pick(ref: str, stage: str) -> str | None:
        if ref:
            try:
                return reg.get(ref).ref
            except RegistryError:
                return ref
        hit = reg.in_stage(stage)
        return hit.ref if hit else None

    return Deployment.single(pick(model, "active"), pick(fallback, "fallback"))
