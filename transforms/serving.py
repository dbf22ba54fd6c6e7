"""The scoring service behind the job's Python operator: the current deployment (hot
swapped by ``model-control`` commands), routing, online evaluation and automatic
rollback. Engine-free; alerts, metrics and control records leave through an injected
``Publisher`` (Kafka in the job, a list in tests).

>>> svc = ScoringService(ServingConfig("missing/registry.json", "", "", "fs1"), ListPublisher())
>>> import numpy as np
>>> out = svc.score(["u1"], [10_000], np.zeros((1, 2), np.float32))
>>> out.model_name, svc.publisher.alerts[0]["kind"]
(['default'], 'no_model')
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from transforms.deployment import ControlError, apply_command, command_record, parse_command
from transforms.monitoring import ModelMonitors, MonitorConfig
from transforms.online_eval import EvalConfig, Key, OnlineEvaluator, RollbackPolicy, rollback_reason
from transforms.registry import RegistryError, split_ref
from transforms.router import Routed, Serving, initial_deployment, load_predictors, resolve_ref, route
from transforms.scoring import FEATURE_OUT_OF_RANGE

ROW_DATA_REASONS = frozenset({FEATURE_OUT_OF_RANGE})  # fallback kinds caused by a row's data, not its model


class Publisher(Protocol):
    def alert(self, kind: str, severity: str, message: str, model_version: str = "", **attributes: str) -> None: ...

    def metrics(self, records: list[dict[str, Any]]) -> None: ...

    def control(self, key: bytes, value: bytes) -> None: ...

    def monitoring(self, records: list[dict[str, Any]]) -> None: ...

    def explanations(self, records: list[dict[str, Any]]) -> None: ...


@dataclass
class ListPublisher:
    """Keeps what would be published (tests, and jobs with the topics switched off). With
    ``limit`` each list keeps only its newest ``limit`` to ``2 * limit`` entries, so a
    long-running job's memory stays bounded."""

    alerts: list[dict[str, Any]] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    commands: list[tuple[bytes, bytes]] = field(default_factory=list)
    monitored: list[dict[str, Any]] = field(default_factory=list)
    explained: list[dict[str, Any]] = field(default_factory=list)
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit must be >= 1 (or None for no limit)")

    def _keep(self, items: list[Any], new: Sequence[Any]) -> None:
        items.extend(new)
        if self.limit is not None and len(items) > 2 * self.limit:
            del items[: len(items) - self.limit]  # amortised: trims once per ``limit`` appends

    def alert(self, kind: str, severity: str, message: str, model_version: str = "", **attributes: str) -> None:
        self._keep(self.alerts, [{"kind": kind, "severity": severity, "message": message,
                                  "model_version": model_version, "attributes": attributes}])

    def metrics(self, records: list[dict[str, Any]]) -> None:
        self._keep(self.records, records)

    def control(self, key: bytes, value: bytes) -> None:
        self._keep(self.commands, [(key, value)])

    def monitoring(self, records: list[dict[str, Any]]) -> None:
        self._keep(self.monitored, records)

    def explanations(self, records: list[dict[str, Any]]) -> None:
        self._keep(self.explained, records)


@dataclass(frozen=True)
class ServingConfig:
    registry_path: str
    model: str  # ref of the served model ("" = the registry's active stage)
    fallback: str  # ref of the known-good fallback ("" = the registry's fallback stage)
    feature_set_version: str
    default_score: float = 0.05
    latency_budget_ms: float = 250.0
    eval: EvalConfig | None = None
    rollback: RollbackPolicy = field(default_factory=RollbackPolicy)
    monitor: MonitorConfig | None = None  # drift, fairness, explanations (None: off)
    feature_names: tuple[str, ...] = ()  # model input names, in order (drift and explanations)


def _kind(reason: str) -> str:
    """The kind of a fallback reason: ``primary_error: ...`` -> ``primary_error``."""
    return reason.split(":", 1)[0].split(" ", 1)[0]


def _split(ref: str) -> tuple[str, str]:
    name, version = split_ref(ref) if ref else ("default", None)
    return name, version or ""


class ScoringService:
    def __init__(self, cfg: ServingConfig, publisher: Publisher, clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.publisher = publisher
        self.clock = clock
        self.registry = Path(cfg.registry_path)
        dep = initial_deployment(self.registry, cfg.model, cfg.fallback)
        preds, errors = load_predictors(self.registry, dep.models(), cfg.feature_set_version)
        self.serving = Serving(dep, preds, errors)
        self._lock = threading.Lock()
        self._applied_ids: set[str] = set()
        self._last_reason: dict[str, str] = {}
        self.evaluator = OnlineEvaluator(cfg.eval, cfg.feature_set_version, clock) if cfg.eval else None
        self.monitors = ModelMonitors(self.registry, cfg.monitor, cfg.feature_names, cfg.feature_set_version,
                                      publisher, clock) if cfg.monitor else None
        for ref, err in sorted(errors.items()):
            publisher.alert("model_load_error", "critical", err, ref)
        if not dep.arms:
            publisher.alert("no_model", "critical", "no model is deployed; the fallback chain serves")

    # -- model-control ---------------------------------------------------------------------
    def _resolve(self, ref: str) -> str:
        try:
            return resolve_ref(self.registry, ref)
        except RegistryError as exc:
            raise ControlError(f"unknown model {ref!r}: {exc}") from exc

    def apply_control(self, key: bytes | None, value: bytes | None) -> bool:
        """Apply one control record: load and verify every model it needs, then swap the
        deployment in one step (the old one serves until then). A bad command leaves the
        deployment as it was and raises a ``control_rejected`` alert."""
        with self._lock:
            cur = self.serving
            try:
                cmd_id = str(parse_command(value).get("id", ""))
                if cmd_id and cmd_id in self._applied_ids:
                    return False  # our own record coming back from the topic
                dep = apply_command(cur.deployment, value, self._resolve)
                preds, errors = load_predictors(self.registry, dep.models(), self.cfg.feature_set_version,
                                                cache=cur.predictors)
                new = {r: e for r, e in errors.items() if r not in cur.errors}  # already failing: chain serves
                if new:
                    raise ControlError("; ".join(new[r] for r in sorted(new)))
            except ControlError as exc:
                self.publisher.alert("control_rejected", "warning", str(exc)[:500],
                                     key=(key or b"").decode("utf-8", "replace"))
                return False
            if cmd_id:
                self._applied_ids.add(cmd_id)
            self.serving = Serving(dep, preds, errors)
            self.publisher.alert("control_applied", "info", json.dumps(dep.describe(), sort_keys=True),
                                 ",".join(a.model for a in dep.arms), revision=str(dep.revision))
            return True

    def rollback(self, reason: str, source: str = "auto") -> bool:
        key, value = command_record("rollback", reason=reason, source=source, id=uuid.uuid4().hex,
                                    issued_at_ms=int(self.clock() * 1000))
        if not self.apply_control(key, value):
            return False
        self.publisher.control(key, value)  # persists the decision; other subtasks and restarts follow it
        self.publisher.alert("rollback" if source == "operator" else "auto_rollback", "critical", reason,
                             ",".join(a.model for a in self.serving.deployment.arms), source=source)
        return True

    # -- scoring ---------------------------------------------------------------------------
    def score(self, user_ids: Sequence[str], window_end_ms: Sequence[int], x: np.ndarray,
              groups: dict[str, Sequence[str]] | None = None) -> Routed:
        """Score one batch; ``groups`` maps a subgroup attribute (region, device) to each
        row's value, for the fairness metrics."""
        srv = self.serving
        out = route(srv, user_ids, x, default_score=self.cfg.default_score,
                    latency_budget_ms=self.cfg.latency_budget_ms, with_reference=self.evaluator is not None)
        self._fallback_alerts(out)
        if self.evaluator is not None and len(user_ids):
            entries, batch_ms = self._eval_entries(srv, out, groups)
            self._emit(self.evaluator.add_scores(user_ids, window_end_ms, entries, batch_ms))
        if self.monitors is not None and len(user_ids):
            self._monitor(srv, out, user_ids, window_end_ms, x)
        return out

    def _monitor(self, srv: Serving, out: Routed, user_ids: Sequence[str], window_end_ms: Sequence[int],
                 x: np.ndarray) -> None:
        monitors = self.monitors
        if monitors is None:
            return
        dep = srv.deployment
        ends = np.asarray(window_end_ms)
        for i, arm in enumerate(dep.arms):  # each arm's model against its own reference, on its rows
            rows = np.flatnonzero(out.arm_index == i)
            if rows.size == 0:
                continue
            severe = monitors.drift(arm.model, ends[rows], x[rows], out.scores[rows])
            if severe and not self.serving.deployment.rolled_back and dep.fallback and dep.fallback != arm.model:
                self.rollback(severe, source="drift")
        monitors.explain(srv, out, user_ids, window_end_ms, x)

    def labels(self, user_ids: Sequence[str], window_start_ms: Sequence[int], clicks: Sequence[float]) -> None:
        if self.evaluator is not None and len(user_ids):
            self._emit(self.evaluator.add_labels(user_ids, window_start_ms, clicks))

    def close(self) -> None:
        if self.evaluator is not None:
            self._emit(self.evaluator.flush())
        if self.monitors is not None:
            self.monitors.flush()

    def _eval_entries(self, srv: Serving, out: Routed, groups: dict[str, Sequence[str]] | None = None
                      ) -> tuple[list[tuple[Key, np.ndarray, np.ndarray | None]], dict[Key, float]]:
        dep = srv.deployment
        entries: list[tuple[Key, np.ndarray, np.ndarray | None]] = []
        batch_ms: dict[Key, float] = {}
        fallback_mask = np.array([bool(r) for r in out.fallback_reason])
        arms = dep.arms or ()
        for i, arm in enumerate(arms):
            mask = out.arm_index == i
            if not mask.any():
                continue
            key: Key = ("served", arm.name, *_split(arm.model))
            entries.append((key, np.where(mask, out.scores, np.nan), fallback_mask))
            batch_ms[key] = out.arm_latency_ms.get(arm.name, 0.0)
            if out.reference_scores is not None:
                entries.append((("reference", arm.name, *_split(out.reference_ref)),
                                np.where(mask, out.reference_scores, np.nan), None))
        if not arms:
            entries.append((("served", "default", "default", ""), out.scores, fallback_mask))
        if out.shadow_scores is not None:
            entries.append((("shadow", "shadow", *_split(out.shadow_ref)), out.shadow_scores, None))
        if groups and arms:  # fairness: the served scores per subgroup, under the first arm's model
            name, version = _split(arms[0].model)
            for attr, values in groups.items():
                col = np.asarray(values, dtype=object)
                for g in sorted({str(v) for v in values if v}):
                    entries.append((("group", f"{attr}={g}", name, version),
                                    np.where(col == g, out.scores, np.nan), None))
        return entries, batch_ms

    def _emit(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        self.publisher.metrics(records)
        if self.monitors is not None:
            self.monitors.fairness(records)
        if not self.serving.deployment.rolled_back:
            reason = rollback_reason(records, self.cfg.rollback)
            if reason:
                self.rollback(reason, source="auto")

    def _fallback_alerts(self, out: Routed) -> None:
        """One alert when an arm starts falling back (or its reason changes), one when it recovers.
        Rows that fell back for their own data (``feature_out_of_range``) say nothing about
        the model: they are counted in the scores' reasons, not alerted."""
        seen: dict[str, str] = {}
        for arm, reason in zip(out.arm, out.fallback_reason, strict=True):
            if arm not in seen or (not seen[arm] and _kind(reason) not in ROW_DATA_REASONS):
                seen[arm] = "" if _kind(reason) in ROW_DATA_REASONS else reason
        for arm, reason in seen.items():
            kind = _kind(reason)
            before = self._last_reason.get(arm, "")
            if kind != before:
                self._last_reason[arm] = kind
                if kind:
                    self.publisher.alert("model_fallback", "warning", reason, arm=arm, reason=kind)
                else:
                    self.publisher.alert("model_recovered", "info", f"arm {arm} served by its model again", arm=arm)
