"""The model registry: a JSON manifest of model versions, their stages and an audit log.

Each entry records the ONNX artifact and its sha256, the feature names and order, the
feature-set version, the training-dataset fingerprint, offline metrics (``auc``,
``logloss``, ``calibration``), the batch latency measured at registration and a stage:
``candidate``, ``active``, ``fallback`` or ``retired``. A model is referred to as
``name:version``, or by ``name`` alone for its newest version.

>>> e = ModelEntry("gbdt", "v1", "gbdt", "artifacts/a.onnx", "00", ("f",), "fs", "d")
>>> e.ref, e.stage
('gbdt:v1', 'candidate')
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

STAGES = ("candidate", "active", "fallback", "retired")


class RegistryError(ValueError):
    """The registry manifest or an artifact is missing or inconsistent."""


@dataclass(frozen=True)
class ModelEntry:
    name: str
    version: str
    kind: str  # gbdt | mlp | onnx
    path: str  # relative to the registry folder
    sha256: str
    feature_names: tuple[str, ...]
    feature_set_version: str
    training_data_fingerprint: str
    metrics: dict[str, float] = field(default_factory=dict)
    stage: str = "candidate"
    # batch latency measured at registration: {"batch_rows", "p50_ms", "p99_ms"}
    latency: dict[str, float] = field(default_factory=dict)
    registered_at_ms: int = 0
    # per-feature and prediction reference statistics recorded at training time
    # (transforms.drift.build_reference); empty: monitoring is disabled for this model
    reference: dict[str, Any] = field(default_factory=dict)
    # fairness thresholds declared with the model (transforms.fairness.FairnessPolicy)
    fairness: dict[str, Any] = field(default_factory=dict)
    # a native explainer next to the ONNX artifact: {"kind": "lightgbm", "path", "sha256"}
    explainer: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise RegistryError(f"model {self.name}:{self.version}: unknown stage {self.stage!r} (one of {STAGES})")
        if not self.name or ":" in self.name or not self.version or ":" in self.version:
            raise RegistryError(f"bad model name/version {self.name!r}:{self.version!r}")

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ModelEntry:
        try:
            return cls(raw["name"], raw["version"], raw["kind"], raw["path"], raw["sha256"],
                       tuple(raw["feature_names"]), raw["feature_set_version"],
                       raw["training_data_fingerprint"], dict(raw.get("metrics", {})), raw.get("stage", "candidate"),
                       dict(raw.get("latency", {})), int(raw.get("registered_at_ms", 0)),
                       dict(raw.get("reference", {})), dict(raw.get("fairness", {})),
                       dict(raw.get("explainer", {})))
        except (KeyError, TypeError) as exc:
            raise RegistryError(f"registry entry missing or malformed field {exc}") from exc

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["feature_names"] = list(self.feature_names)
        return d


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def split_ref(ref: str) -> tuple[str, str | None]:
    """``"gbdt:v1"`` -> ``("gbdt", "v1")``; ``"gbdt"`` -> ``("gbdt", None)``.

    >>> split_ref("gbdt:v1"), split_ref("mlp")
    (('gbdt', 'v1'), ('mlp', None))
    """
    name, _, version = ref.partition(":")
    if not name:
        raise RegistryError(f"bad model reference {ref!r} (want name or name:version)")
    return name, version or None


class Registry:
    """Reads (and, through ``save``, writes) ``models/registry.json``; stage changes are
    appended to ``audit.log`` beside it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            raw = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            raise RegistryError(f"cannot read registry {self.path}: {exc}") from exc
        if not isinstance(raw, dict) or not isinstance(raw.get("models", []), list):
            raise RegistryError(f"registry {self.path} is not an object with a 'models' list")
        self.entries = [ModelEntry.from_json(m) for m in raw.get("models", [])]

    @property
    def root(self) -> Path:
        return self.path.parent

    @property
    def audit_path(self) -> Path:
        return self.root / "audit.log"

    def get(self, ref: str, version: str | None = None) -> ModelEntry:
        name, v = split_ref(ref)
        v = version or v
        hits = [m for m in self.entries if m.name == name and (v is None or m.version == v)]
        if not hits:
            raise RegistryError(f"no model {name}:{v or '*'} in {self.path}")
        return hits[-1]

    def by_stage(self, stage: str) -> list[ModelEntry]:
        return [m for m in self.entries if m.stage == stage]

    def in_stage(self, stage: str) -> ModelEntry | None:
        """The newest entry in ``stage`` (``active`` and ``fallback`` hold one at a time)."""
        hits = self.by_stage(stage)
        return hits[-1] if hits else None

    def artifact(self, entry: ModelEntry, rel: str | None = None) -> Path:
        """The artifact path (or ``rel``, another file of the entry), confined to the
        registry folder (no traversal, no absolute paths, no URLs)."""
        rel = entry.path if rel is None else rel
        if "://" in rel or os.path.isabs(rel):
            raise RegistryError(f"model {entry.ref}: artifact path {rel!r} must be relative to the registry")
        root = self.root.resolve()
        try:
            path = (root / rel).resolve()
        except (OSError, ValueError) as exc:
            raise RegistryError(f"model {entry.ref}: bad artifact path {rel!r}: {exc}") from exc
        if not path.is_relative_to(root):
            raise RegistryError(f"model {entry.ref}: artifact path {rel!r} leaves the registry folder")
        return path

    # -- writing ---------------------------------------------------------------------
    def save(self) -> None:
        """Atomic rewrite of the manifest."""
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"models": [m.to_json() for m in self.entries]}, indent=2) + "\n")
        os.replace(tmp, self.path)

    def add(self, entry: ModelEntry, reason: str = "registered") -> None:
        if any(m.ref == entry.ref for m in self.entries):
            raise RegistryError(f"model {entry.ref} is already registered")
        self.entries.append(entry)
        self.audit(entry.ref, "", entry.stage, reason)

    def set_stage(self, ref: str, stage: str, reason: str, **extra: Any) -> ModelEntry:
        entry = self.get(ref)
        new = replace(entry, stage=stage)  # validates the stage
        self.entries = [new if m.ref == entry.ref else m for m in self.entries]
        self.audit(entry.ref, entry.stage, stage, reason, **extra)
        return new

    def audit(self, ref: str, from_stage: str, to_stage: str, reason: str, **extra: Any) -> None:
        rec = {"ts_ms": int(time.time() * 1000), "model": ref, "from": from_stage, "to": to_stage,
               "reason": reason, **extra}
        with open(self.audit_path, "a") as fh:
            fh.write(json.dumps(rec, sort_keys=True) + "\n")


def read_audit(registry_path: Path) -> list[dict[str, Any]]:
    """The audit log beside a registry manifest, oldest first (empty when none)."""
    path = Path(registry_path).parent / "audit.log"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
