"""Trains the click models on the project's own synthetic history (``streamscore train``).

Features come from the reference implementation of the feature spec (the same logic the
Flink job compiles to SQL); the label of a row ``(user, window_end)`` is "the user
clicks in the next window" ``[window_end, window_end + step)``. The split is by time:
the last 25% of window ends are held out. Both models are exported to ONNX and
registered with sha256, feature names and order, the feature-set version, the training
data fingerprint and offline metrics.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from transforms.reference import compute_features, model_rows
from transforms.scoring import sha256_file
from transforms.spec import FeatureSpec, load_spec

MODELS_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Dataset:
    x: np.ndarray  # float32 [n, features]
    y: np.ndarray  # int [n]
    window_end_ms: np.ndarray
    feature_names: tuple[str, ...]
    fingerprint: str


def labelled_dataset(spec: FeatureSpec, events: Iterable[dict[str, Any]]) -> Dataset:
    """Model rows with next-window click labels, from decoded events in arrival order."""
    evs = list(events)
    out = compute_features(spec, evs)
    rows = model_rows(spec, out)
    step = spec.group(spec.scoring_groups[0]).window.step_ms
    late_ids = {id(e) for e in out.late}
    clicks: dict[str, list[int]] = defaultdict(list)
    for e in evs:
        if e["event_type"] == "click" and id(e) not in late_ids:
            clicks[e[spec.group(spec.scoring_groups[0]).key_field]].append(e["ts_ms"])
    for ts in clicks.values():
        ts.sort()
    y = np.zeros(len(rows), dtype=np.int64)
    for i, (key, _start, end, _vec) in enumerate(rows):
        ts = clicks.get(key)
        if ts:
            j = int(np.searchsorted(ts, end))
            y[i] = int(j < len(ts) and ts[j] < end + step)
    x = np.array([r[3] for r in rows], dtype=np.float32).reshape(len(rows), len(spec.model_feature_names))
    ends = np.array([r[2] for r in rows], dtype=np.int64)
    h = hashlib.sha256()
    h.update(spec.version.encode())
    h.update(np.ascontiguousarray(x).tobytes())
    h.update(y.tobytes())
    return Dataset(x, y, ends, spec.model_feature_names, h.hexdigest()[:16])


def time_split(ds: Dataset, holdout: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    cut = np.quantile(ds.window_end_ms, 1.0 - holdout)
    return ds.window_end_ms < cut, ds.window_end_ms >= cut


def train_gbdt(x: np.ndarray, y: np.ndarray, n_estimators: int = 100, seed: int = 7) -> Any:
    import lightgbm as lgb

    model = lgb.LGBMClassifier(n_estimators=n_estimators, num_leaves=31, learning_rate=0.05,
                               subsample=0.8, subsample_freq=1, colsample_bytree=0.9,
                               random_state=seed, n_jobs=1, verbose=-1)
    model.fit(x, y)
    return model


def train_mlp(x: np.ndarray, y: np.ndarray, seed: int = 7) -> Any:
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(64, 32), max_iter=60,
                                                          early_stopping=True, random_state=seed))
    model.fit(x, y)
    return model


def to_onnx(model: Any, kind: str, n_features: int) -> bytes:
    """ONNX bytes whose ``probabilities`` output is a float tensor [n, 2]."""
    if kind == "gbdt":
        import onnxmltools
        from onnxmltools.convert.common.data_types import FloatTensorType as MLFloat

        onx = onnxmltools.convert_lightgbm(model, initial_types=[("features", MLFloat([None, n_features]))],
                                           zipmap=False, target_opset=15)
    else:
        from skl2onnx import to_onnx as skl_to_onnx
        from skl2onnx.common.data_types import FloatTensorType

        onx = skl_to_onnx(model, initial_types=[("features", FloatTensorType([None, n_features]))],
                          options={id(model): {"zipmap": False}}, target_opset=15)
    return onx.SerializeToString()


def offline_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import log_loss, roc_auc_score

    p = np.clip(p, 1e-7, 1 - 1e-7)
    return {
        "auc": float(roc_auc_score(y, p)) if len(set(y.tolist())) == 2 else float("nan"),
        "logloss": float(log_loss(y, p, labels=[0, 1])),
        "calibration": float(p.mean() / max(y.mean(), 1e-9)),
        "positive_rate": float(y.mean()),
        "rows": float(len(y)),
    }


def native_predict(model: Any, x: np.ndarray) -> np.ndarray:
    return np.asarray(model.predict_proba(x))[:, 1]


def train_and_register(events: Iterable[dict[str, Any]], out_dir: Path = MODELS_DIR, spec: FeatureSpec | None = None,
                       n_estimators: int = 100, version: str | None = None, log: Any = print) -> dict[str, Any]:
    """Train both models, export to ONNX under ``out_dir/artifacts`` and write
    ``out_dir/registry.json``; returns the manifest."""
    spec = spec or load_spec()
    t0 = time.monotonic()
    ds = labelled_dataset(spec, events)
    log(f"[train] dataset {len(ds.y)} rows, positive rate {ds.y.mean():.3f}, "
        f"fingerprint {ds.fingerprint} ({time.monotonic() - t0:.1f}s)")
    tr, te = time_split(ds)
    version = version or time.strftime("%Y%m%d%H%M%S", time.gmtime())
    (out_dir / "artifacts").mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {"models": []}
    for kind, stage in (("gbdt", "active"), ("mlp", "fallback")):
        t1 = time.monotonic()
        model = train_gbdt(ds.x[tr], ds.y[tr], n_estimators) if kind == "gbdt" else train_mlp(ds.x[tr], ds.y[tr])
        onx = to_onnx(model, kind, ds.x.shape[1])
        rel = f"artifacts/{kind}-{version}.onnx"
        (out_dir / rel).write_bytes(onx)
        metrics = offline_metrics(ds.y[te], native_predict(model, ds.x[te]))
        log(f"[train] {kind}: auc {metrics['auc']:.4f} logloss {metrics['logloss']:.4f} "
            f"({time.monotonic() - t1:.1f}s)")
        manifest["models"].append({
            "name": kind, "version": version, "kind": kind, "path": rel, "sha256": sha256_file(out_dir / rel),
            "feature_names": list(ds.feature_names), "feature_set_version": spec.version,
            "training_data_fingerprint": ds.fingerprint, "metrics": metrics, "stage": stage,
        })
    (out_dir / "registry.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    from jobs.generator import TrafficConfig, generate_events

    ap = argparse.ArgumentParser(prog="streamscore train", description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=600_000, help="history events to generate (default 600000)")
    ap.add_argument("--seed", type=int, default=11, help="generator seed (default 11)")
    ap.add_argument("--trees", type=int, default=100, help="LightGBM trees (default 100)")
    ap.add_argument("--out", type=Path, default=MODELS_DIR, help="registry folder (default models/)")
    ap.add_argument("--if-missing", action="store_true", help="do nothing when registry.json exists")
    args = ap.parse_args(argv)
    if args.if_missing and (args.out / "registry.json").exists():
        print(f"[train] {args.out / 'registry.json'} exists; skipping", file=sys.stderr)
        return 0
    cfg = TrafficConfig(seed=args.seed, out_of_order_fraction=0.05)
    train_and_register(generate_events(args.events, cfg), args.out, n_estimators=args.trees,
                       log=lambda m: print(m, file=sys.stderr))
    return 0


if __name__ == "__main__":
    sys.exit(main())
