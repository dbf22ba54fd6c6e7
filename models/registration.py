"""Registering an ONNX artifact as a ``candidate``: copy it into the registry, verify it
loads, evaluate it on a point-in-time holdout and measure its batch latency."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from models.train import Dataset, offline_metrics, time_split
from transforms.registry import ModelEntry, Registry, RegistryError, sha256_file
from transforms.scoring import OnnxScorer, ScoringError
from transforms.spec import FeatureSpec


def measure_latency(scorer: OnnxScorer, n_features: int, batch_rows: int = 1024, runs: int = 30,
                    seed: int = 0) -> dict[str, float]:
    """Wall-clock ms of ``runs`` timed ``predict`` calls on a random float32 batch, after a
    warm-up call: ``{"batch_rows", "p50_ms", "p99_ms"}``."""
    if batch_rows < 1 or runs < 1 or n_features < 1:
        raise ValueError(f"batch_rows, runs and n_features must be >= 1 (got {batch_rows}, {runs}, {n_features})")
    x = np.random.default_rng(seed).normal(0.0, 1.0, (batch_rows, n_features)).astype(np.float32)
    scorer.predict(x)  # warm-up: first-call allocations
    times = np.empty(runs)
    for i in range(runs):
        t0 = time.perf_counter()
        scorer.predict(x)
        times[i] = (time.perf_counter() - t0) * 1000.0
    return {"batch_rows": batch_rows, "p50_ms": float(np.percentile(times, 50)),
            "p99_ms": float(np.percentile(times, 99))}


def register_artifact(registry_path: Path, onnx_path: Path, name: str, version: str, kind: str,
                      spec: FeatureSpec, dataset: Dataset, training_fingerprint: str) -> ModelEntry:
    """Copy ``onnx_path`` to ``<registry dir>/artifacts/<name>-<version>.onnx`` and add it
    as a ``candidate`` with its sha256, holdout metrics on ``dataset`` and latency; saves."""
    reg = Registry(Path(registry_path))
    ref = f"{name}:{version}"
    if any(m.ref == ref for m in reg.entries):
        raise RegistryError(f"model {ref} is already registered in {reg.path}")
    if tuple(dataset.feature_names) != tuple(spec.model_feature_names):
        raise RegistryError(f"dataset features {list(dataset.feature_names)} are not the spec's "
                            f"{list(spec.model_feature_names)}")
    if len(dataset.y) == 0:
        raise RegistryError("the evaluation dataset is empty")
    rel = f"artifacts/{name}-{version}.onnx"
    if any(m.path == rel for m in reg.entries):
        raise RegistryError(f"artifact {rel} already belongs to another model in {reg.path}")
    dest = reg.root / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".onnx.tmp")
    try:
        shutil.copyfile(onnx_path, tmp)
        os.replace(tmp, dest)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise RegistryError(f"cannot copy {onnx_path} into the registry: {exc}") from exc
    entry = ModelEntry(name, version, kind, rel, sha256_file(dest), tuple(spec.model_feature_names), spec.version,
                       training_fingerprint, registered_at_ms=int(time.time() * 1000))
    try:
        scorer = OnnxScorer(dest, entry)
        _, holdout = time_split(dataset)
        metrics = offline_metrics(dataset.y[holdout], scorer.predict(dataset.x[holdout]))
        latency = measure_latency(scorer, len(entry.feature_names))
    except (RegistryError, ScoringError) as exc:
        dest.unlink(missing_ok=True)
        raise RegistryError(f"cannot register {ref} from {onnx_path}: {exc}") from exc
    entry = replace(entry, metrics=metrics, latency=latency)
    reg.add(entry, reason=f"registered from {onnx_path}")
    reg.save()
    return entry
