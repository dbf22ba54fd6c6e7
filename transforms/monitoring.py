"""Monitoring of the served model inside the scoring stage: feature and prediction drift
against the model's training reference, fairness across subgroups from the online
evaluation, and sampled explanations. Results become ``model-monitoring`` records,
``explanations`` records and alerts; severe drift asks the service to fall back.

>>> from transforms.drift import DriftThresholds
>>> MonitorConfig(window_ms=10_000).thresholds == DriftThresholds()
True
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from transforms.drift import DriftMonitor, DriftThresholds
from transforms.explain import TreeShap, explanation_records, sampled, sensitivity
from transforms.fairness import FairnessPolicy, disparities, fairness_alerts
from transforms.registry import ModelEntry, Registry, RegistryError, sha256_file
from transforms.router import Routed, Serving


@dataclass(frozen=True)
class MonitorConfig:
    """``window_ms``: drift monitoring window (of window ends); ``explain_rate``: share
    of scores explained; ``drift_fallback``: severe drift rolls traffic back to the
    fallback model."""

    window_ms: int = 60_000
    thresholds: DriftThresholds = field(default_factory=DriftThresholds)
    explain_rate: float = 0.01
    drift_fallback: bool = True
    lag_windows: int = 1  # a monitoring window completes once rows two windows later arrive
    warmup_ms: int = 0  # monitoring starts this long after the first window (the longest feature window)

    def __post_init__(self) -> None:
        if self.window_ms <= 0 or not 0.0 <= self.explain_rate <= 1.0:
            raise ValueError("window_ms must be > 0 and explain_rate in [0, 1]")


def monitoring_record(kind: str, model: str, start: int, end: int, values: dict[str, float],
                      attributes: dict[str, str], now_ms: int) -> dict[str, Any]:
    clean = {k: float(v) for k, v in values.items() if v is not None and np.isfinite(v)}
    return {"kind": kind, "model": model, "window_start_ms": int(start), "window_end_ms": int(end), "values": clean,
            "attributes": {k: str(v) for k, v in attributes.items()}, "emitted_at_ms": now_ms, "schema_version": 1}


def drift_values(rec: dict[str, Any]) -> dict[str, float]:
    """Flat ``<statistic>.<column>`` values of a drift record."""
    out: dict[str, float] = {"n": float(rec["n"])}
    for name, col in [*rec["features"].items(), ("prediction", rec["prediction"])]:
        for stat in ("psi", "ks", "missing_delta", "mean_shift_sd"):
            out[f"{stat}.{name}"] = float(col[stat])
    for k in ("near_half_share", "mean_entropy"):
        out[f"confidence.{k}"] = float(rec["confidence"][k])
    return out


class ModelMonitors:
    def __init__(self, registry_path: Path, cfg: MonitorConfig, feature_names: Sequence[str],
                 feature_set_version: str, publisher: Any, clock: Callable[[], float] = time.time) -> None:
        self.registry_path, self.cfg, self.publisher, self.clock = Path(registry_path), cfg, publisher, clock
        self.feature_names = tuple(feature_names)
        self.feature_set_version = feature_set_version
        self._entries: dict[str, ModelEntry | None] = {}
        self._drift: dict[str, DriftMonitor] = {}
        self._shap: dict[str, TreeShap | None] = {}
        self.explained = 0

    def entry(self, ref: str) -> ModelEntry | None:
        if ref not in self._entries:
            try:
                self._entries[ref] = Registry(self.registry_path).get(ref)
            except RegistryError:
                self._entries[ref] = None
        return self._entries[ref]

    def _now(self) -> int:
        return int(self.clock() * 1000)

    # -- drift -----------------------------------------------------------------------------
    def drift(self, model: str, window_end_ms: Sequence[int] | np.ndarray, x: np.ndarray,
              scores: np.ndarray) -> str | None:
        """Feed the monitor of ``model``; publish completed windows; the reason to fall
        back when a window's drift is severe."""
        mon = self._drift.get(model)
        if mon is None:
            entry = self.entry(model)
            mon = self._drift[model] = DriftMonitor(entry.reference if entry else None, self.cfg.thresholds,
                                                    self.cfg.window_ms, model, lag_windows=self.cfg.lag_windows,
                                                    warmup_ms=self.cfg.warmup_ms)
        severe: str | None = None
        for rec in mon.update(window_end_ms, x, scores):
            severe = self._publish_drift(rec) or severe
        self._expire_idle(mon)
        return severe

    def _expire_idle(self, latest: DriftMonitor) -> None:
        """Complete the open windows of models that got no rows while ``latest`` moved more
        than its lag past them (a model swapped out): event time has passed those windows,
        so their state goes (and no fallback follows from a model no longer served)."""
        if latest.current is None:
            return
        for mon in self._drift.values():
            if mon is not latest and mon.open and mon.current is not None \
                    and mon.current < latest.current - latest.lag_windows - 1:
                for rec in mon.flush():
                    self._publish_drift(rec)
                mon.current = latest.current  # rows of the completed windows now count as late

    def open_windows(self) -> int:
        """Monitoring windows held open, over every model (the state that expiry bounds)."""
        return sum(len(m.open) for m in self._drift.values())

    def flush(self) -> None:
        """Publish the open monitoring windows (at job end; no fallback then)."""
        for mon in self._drift.values():
            for rec in mon.flush():
                self._publish_drift(rec)

    def _publish_drift(self, rec: dict[str, Any]) -> str | None:
        pub, now, kind = self.publisher, self._now(), rec["kind"]
        if kind == "monitoring_disabled":
            pub.alert("monitoring_disabled", "warning", f"drift monitoring disabled for {rec['model']}: "
                      f"{rec['reason']}", rec["model"])
            pub.monitoring([monitoring_record(kind, rec["model"], 0, 0, {}, {"reason": rec["reason"]}, now)])
            return None
        if kind == "retrain":
            pub.alert("retrain", "warning", rec["reason"], rec["model"], from_ms=str(rec["from_ms"]),
                      to_ms=str(rec["to_ms"]), features=",".join(rec["features"]))
            pub.monitoring([monitoring_record(kind, rec["model"], rec["from_ms"], rec["to_ms"], {},
                                              {"features": ",".join(rec["features"]), "reason": rec["reason"]},
                                              now)])
            return None
        pub.monitoring([monitoring_record("drift", rec["model"], rec["window_start_ms"], rec["window_end_ms"],
                                          drift_values(rec), {"alerts": str(len(rec["alerts"])),
                                                              "severe": str(rec["severe"]).lower()}, now)])
        for a in rec["alerts"]:
            pub.alert("drift", a["severity"], f"{a['statistic']} of {a['feature']} is {a['value']:.4f} "
                      f"(threshold {a['threshold']}) in window {rec['window_start_ms']}", rec["model"],
                      feature=a["feature"], statistic=a["statistic"], value=f"{a['value']:.6f}",
                      threshold=str(a["threshold"]), window_start_ms=str(rec["window_start_ms"]),
                      window_end_ms=str(rec["window_end_ms"]))
        if rec["severe"] and self.cfg.drift_fallback:
            worst = [a for a in rec["alerts"] if a["severity"] == "critical"]
            return (f"severe drift of {rec['model']} in window {rec['window_start_ms']}: "
                    + ", ".join(f"{a['statistic']}({a['feature']})={a['value']:.3f}" for a in worst[:5]))
        return None

    # -- fairness ----------------------------------------------------------------------------
    def fairness(self, records: list[dict[str, Any]]) -> None:
        """Disparities of the ``role = "group"`` evaluation records; alert on breaches of
        the served model's declared policy."""
        by_model: dict[str, list[dict[str, Any]]] = {}
        for r in records:
            if r["role"] == "group":
                by_model.setdefault(f"{r['model_name']}:{r['model_version']}", []).append(r)
        for model, recs in by_model.items():
            entry = self.entry(model)
            policy = FairnessPolicy.from_json(entry.fairness if entry else None)
            rows = disparities(recs, policy)
            now = self._now()
            for w in sorted({r["window_start_ms"] for r in rows}):
                cells = [r for r in rows if r["window_start_ms"] == w]
                values = {f"{k}.{r['attribute']}={r['group']}": r[k] for r in cells
                          for k in ("n", "mean_score", "positive_rate", "ctr", "positive_rate_ratio",
                                    "positive_rate_difference", "mean_score_ratio", "mean_score_difference")}
                end = int(recs[0]["eval_window_end_ms"] - recs[0]["eval_window_start_ms"] + w)
                self.publisher.monitoring([monitoring_record("fairness", model, w, end, values,
                                                             {"policy": str(policy.to_json())}, now)])
            for a in fairness_alerts(rows, policy):
                self.publisher.alert(
                    "fairness", "warning",
                    f"{a['attribute']}={a['group']}: positive rate {a['positive_rate']:.3f} vs "
                    f"{a['best_group']} (ratio {a['positive_rate_ratio']:.2f}, difference "
                    f"{a['positive_rate_difference']:.3f}); mean score ratio {a['mean_score_ratio']:.2f} "
                    f"in window {a['window_start_ms']}", model, attribute=a["attribute"], group=a["group"],
                    breaches=",".join(a["breaches"]), positive_rate_ratio=f"{a['positive_rate_ratio']:.4f}",
                    mean_score_ratio=f"{a['mean_score_ratio']:.4f}", window_start_ms=str(a["window_start_ms"]))

    # -- explanations ------------------------------------------------------------------------
    def _tree_shap(self, ref: str) -> TreeShap | None:
        if ref not in self._shap:
            entry, explainer = self.entry(ref), None
            if entry is not None and entry.explainer.get("kind") == "lightgbm":
                try:
                    reg = Registry(self.registry_path)
                    path = reg.artifact(entry, entry.explainer["path"])
                    if sha256_file(path) != entry.explainer.get("sha256"):
                        raise RegistryError(f"explainer of {ref}: sha256 mismatch")
                    explainer = TreeShap(path)
                except (RegistryError, OSError, ValueError, KeyError) as exc:
                    self.publisher.alert("explainer_error", "warning", f"{ref}: {exc}"[:300], ref)
            self._shap[ref] = explainer
        return self._shap[ref]

    def explain(self, srv: Serving, out: Routed, user_ids: Sequence[str], window_end_ms: Sequence[int],
                x: np.ndarray) -> None:
        """Attributions for the sampled scores that an arm's own model served."""
        rate = self.cfg.explain_rate
        if rate <= 0:
            return
        pick = np.array([sampled(u, int(w), rate) and not out.fallback_reason[i]
                         for i, (u, w) in enumerate(zip(user_ids, window_end_ms, strict=True))], dtype=bool)
        if not pick.any():
            return
        arms = srv.deployment.arms
        now, records = self._now(), []
        for a_i, arm in enumerate(arms):
            rows = np.flatnonzero(pick & (out.arm_index == a_i))
            predictor, entry = srv.predictors.get(arm.model), self.entry(arm.model)
            if rows.size == 0 or predictor is None or entry is None or not entry.reference:
                continue
            meta = [(user_ids[i], int(window_end_ms[i]), out.model_name[i], out.model_version[i], arm.name,
                     float(out.scores[i])) for i in rows.tolist()]
            means = np.array([entry.reference["features"][n]["mean"] for n in self.feature_names])
            try:
                records += explanation_records(meta, self.feature_names, "sensitivity",
                                               sensitivity(predictor.predict, x[rows], means),
                                               self.feature_set_version, now)
                shap = self._tree_shap(arm.model)
                if shap is not None:
                    records += explanation_records(meta, self.feature_names, "tree_shap",
                                                   shap.contributions(x[rows]), self.feature_set_version, now)
            except Exception as exc:  # explanations never affect serving
                self.publisher.alert("explainer_error", "warning", f"{arm.model}: {exc}"[:300], arm.model)
        if records:
            self.explained += len(records)
            self.publisher.explanations(records)
