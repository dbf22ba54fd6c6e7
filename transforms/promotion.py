"""Promotion gates, promotion and rollback over the model registry (``transforms.registry``).

A candidate is promoted only when it is no worse than the active model (AUC within a
margin, logloss within a margin), fits the latency budget and was trained on the current
feature set; ``force`` overrides the gates and the audit log records what it overrode.
Promotion makes the old active the ``fallback`` and retires the old fallback; rollback
swaps them back and keeps the rolled-back model as a ``candidate`` so it can be promoted again.

>>> c = ModelEntry("m", "v2", "onnx", "a.onnx", "00", ("f",), "fs1", "d",
...                metrics={"auc": 0.70, "logloss": 0.40}, latency={"p99_ms": 3.0})
>>> a = ModelEntry("m", "v1", "onnx", "b.onnx", "00", ("f",), "fs1", "d",
...                metrics={"auc": 0.75, "logloss": 0.38}, stage="active")
>>> promotion_problems(c, None, "fs1", PromotionGates())
[]
>>> for p in promotion_problems(c, a, "fs2", PromotionGates(latency_budget_ms=2.0)):
...     print(p)
AUC 0.7000 is worse than the active model's 0.7500 by more than the margin 0.005
logloss 0.4000 is worse than the active model's 0.3800 by more than the margin 0
latency p99 3.00 ms is over the budget 2.00 ms
feature set fs1 differs from the current spec's fs2
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from transforms.registry import ModelEntry, Registry, RegistryError

__all__ = ["PromotionGates", "PromotionRefused", "promote", "promotion_problems", "rollback"]


@dataclass(frozen=True)
class PromotionGates:
    """``auc_margin``: how far the candidate's AUC may fall below the active's;
    ``logloss_margin``: how far its logloss may exceed the active's (absolute);
    ``latency_budget_ms``: the most its measured batch p99 may be.

    >>> PromotionGates(auc_margin=-0.1)
    Traceback (most recent call last):
    ...
    ValueError: promotion gate auc_margin must be a finite number >= 0, got -0.1
    """

    auc_margin: float = 0.005
    logloss_margin: float = 0.0
    latency_budget_ms: float = 50.0

    def __post_init__(self) -> None:
        for name in ("auc_margin", "logloss_margin"):
            value = getattr(self, name)
            if not _finite(value) or value < 0:
                raise ValueError(f"promotion gate {name} must be a finite number >= 0, got {value!r}")
        if not _finite(self.latency_budget_ms) or self.latency_budget_ms <= 0:
            raise ValueError(f"promotion gate latency_budget_ms must be a finite number > 0, "
                             f"got {self.latency_budget_ms!r}")


class PromotionRefused(RegistryError):
    """The candidate failed one or more promotion gates; ``problems`` lists them."""

    def __init__(self, ref: str, problems: list[str]) -> None:
        self.ref = ref
        self.problems = list(problems)
        super().__init__(f"promotion of {ref} refused: " + "; ".join(self.problems))


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _number(values: dict[str, Any], name: str) -> float | None:
    value = values.get(name)
    if isinstance(value, int | float) and _finite(value):
        return float(value)
    return None


def promotion_problems(candidate: ModelEntry, active: ModelEntry | None, spec_version: str,
                       gates: PromotionGates) -> list[str]:
    """One message per failed gate (empty when the candidate may be promoted).

    >>> c = ModelEntry("m", "v1", "onnx", "a.onnx", "00", ("f",), "fs1", "d", metrics={"auc": float("nan")})
    >>> for p in promotion_problems(c, None, "fs1", PromotionGates()):
    ...     print(p)
    metric auc is missing or not a finite number
    metric logloss is missing or not a finite number
    no latency p99 recorded (the latency budget is 50.00 ms)
    """
    problems: list[str] = []
    auc, logloss = _number(candidate.metrics, "auc"), _number(candidate.metrics, "logloss")
    for name, value in (("auc", auc), ("logloss", logloss)):
        if value is None:
            problems.append(f"metric {name} is missing or not a finite number")
    if active is not None:
        active_auc, active_logloss = _number(active.metrics, "auc"), _number(active.metrics, "logloss")
        if auc is not None and active_auc is not None and auc < active_auc - gates.auc_margin:
            problems.append(f"AUC {auc:.4f} is worse than the active model's {active_auc:.4f} "
                            f"by more than the margin {gates.auc_margin:g}")
        if logloss is not None and active_logloss is not None and logloss > active_logloss + gates.logloss_margin:
            problems.append(f"logloss {logloss:.4f} is worse than the active model's {active_logloss:.4f} "
                            f"by more than the margin {gates.logloss_margin:g}")
    p99 = _number(candidate.latency, "p99_ms")
    if p99 is None:
        problems.append(f"no latency p99 recorded (the latency budget is {gates.latency_budget_ms:.2f} ms)")
    elif p99 > gates.latency_budget_ms:
        problems.append(f"latency p99 {p99:.2f} ms is over the budget {gates.latency_budget_ms:.2f} ms")
    if candidate.feature_set_version != spec_version:
        problems.append(f"feature set {candidate.feature_set_version} differs from the current spec's {spec_version}")
    return problems


def promote(reg: Registry, ref: str, spec_version: str, gates: PromotionGates, *, force: bool = False,
            reason: str = "") -> list[str]:
    """Make ``ref`` the active model: the old active becomes the fallback and the old
    fallback is retired. Raises ``PromotionRefused`` when a gate fails and not ``force``;
    returns the problems overridden. The caller saves the registry."""
    candidate = reg.get(ref)
    if candidate.stage == "active":
        raise RegistryError(f"model {candidate.ref} is already the active model")
    actives = reg.by_stage("active")
    active = actives[-1] if actives else None
    problems = promotion_problems(candidate, active, spec_version, gates)
    if problems and not force:
        raise PromotionRefused(candidate.ref, problems)
    why = reason or f"promote {candidate.ref}"
    extra: dict[str, Any] = {"forced": force, "overridden": problems}
    for old in reg.by_stage("fallback"):
        if old.ref != candidate.ref:
            reg.set_stage(old.ref, "retired", why, **extra)
    for old in actives:
        reg.set_stage(old.ref, "fallback" if old.ref == actives[-1].ref else "retired", why, **extra)
    reg.set_stage(candidate.ref, "active", why, **extra)
    return problems


def rollback(reg: Registry, reason: str) -> tuple[ModelEntry, ModelEntry]:
    """Swap back to the fallback: the active model becomes a ``candidate`` (promote it to
    undo the rollback), the fallback becomes active, and the newest retired model on the
    same feature set, if any, becomes the new fallback. Returns ``(rolled_back, new_active)``."""
    active, fallback = reg.in_stage("active"), reg.in_stage("fallback")
    if active is None:
        raise RegistryError(f"no active model to roll back in {reg.path}")
    if fallback is None:
        raise RegistryError(f"no fallback model to roll back to in {reg.path}")
    why = reason or f"rollback {active.ref} -> {fallback.ref}"
    rolled_back = reg.set_stage(active.ref, "candidate", why)
    new_active = reg.set_stage(fallback.ref, "active", why)
    retired = [(m.registered_at_ms, i, m) for i, m in enumerate(reg.entries)
               if m.stage == "retired" and m.ref not in (active.ref, fallback.ref)
               and m.feature_set_version == new_active.feature_set_version]
    if retired:
        reg.set_stage(max(retired, key=lambda t: (t[0], t[1]))[2].ref, "fallback", why)
    return rolled_back, new_active
