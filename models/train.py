"""Trains the click models on the project's own synthetic history (``streamscore train``).

Training data is the point-in-time dataset of ``transforms.pit`` (the rows and
fingerprint ``streamscore backfill`` writes for the same events; ``--dataset`` trains on
a backfill output folder directly). Features follow the feature spec (the logic the Flink
job compiles to SQL); the label of a row ``(user, window_end)`` is "the user clicks in
the next window" ``[window_end, window_end + step)``. The split is by time:
the last 25% of window ends are held out. Both models are exported to ONNX and
registered with sha256, feature names and order, the feature-set version, the training
data fingerprint, offline metrics and the measured batch latency; each registration is
recorded in ``audit.log`` beside the manifest.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from models.baselines import constant_model
from transforms.drift import build_reference
from transforms.fairness import FairnessPolicy
from transforms.registry import ModelEntry, Registry
from transforms.scoring import OnnxScorer, sha256_file
from transforms.spec import FeatureSpec, load_spec

MODELS_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Dataset:
    x: np.ndarray  # float32 [n, features]
    y: np.ndarray  # int [n]
    window_end_ms: np.ndarray
    feature_names: tuple[str, ...]
    fingerprint: str


def dataset_from_rows(spec: FeatureSpec, rows: list[dict[str, Any]], fingerprint: str | None = None) -> Dataset:
    """Model matrix from point-in-time rows (``transforms.pit`` / ``streamscore backfill``)."""
    from transforms.pit import dataset_fingerprint

    names = spec.model_feature_names
    x = np.array([[r[n] for n in names] for r in rows], dtype=np.float32).reshape(len(rows), len(names))
    y = np.array([int(r["label"]) for r in rows], dtype=np.int64)
    ends = np.array([int(r["window_end_ms"]) for r in rows], dtype=np.int64)
    return Dataset(x, y, ends, names, fingerprint or dataset_fingerprint(rows))


def labelled_dataset(spec: FeatureSpec, events: Iterable[dict[str, Any]]) -> Dataset:
    """The point-in-time dataset of ``events`` (arrival order): rows, labels, fingerprint
    exactly as ``streamscore backfill`` writes them for the same events."""
    from transforms.pit import pit_dataset

    return dataset_from_rows(spec, pit_dataset(spec, events))


def load_backfill(spec: FeatureSpec, folder: Path) -> Dataset:
    """A dataset written by ``streamscore backfill`` (Parquet), with its manifest's fingerprint."""
    import pyarrow.parquet as pq

    manifest = json.loads((folder / "manifest.json").read_text())
    if manifest["feature_set_version"] != spec.version:
        raise ValueError(f"dataset {folder} has feature set {manifest['feature_set_version']}, spec is {spec.version}")
    rows = pq.read_table(folder / manifest["path"]).to_pylist()
    return dataset_from_rows(spec, rows, manifest["fingerprint"])


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


def train_and_register(events: Iterable[dict[str, Any]] | Dataset, out_dir: Path = MODELS_DIR,
                       spec: FeatureSpec | None = None, n_estimators: int = 100, version: str | None = None,
                       log: Any = print) -> dict[str, Any]:
    """Train both models on a dataset (or on the point-in-time dataset of ``events``),
    export to ONNX under ``out_dir/artifacts`` and write ``out_dir/registry.json``: gbdt
    ``active``, mlp ``fallback`` and the base-rate ``prior`` baseline as a ``candidate``."""
    spec = spec or load_spec()
    t0 = time.monotonic()
    ds = events if isinstance(events, Dataset) else labelled_dataset(spec, events)
    log(f"[train] dataset {len(ds.y)} rows, positive rate {ds.y.mean():.3f}, "
        f"fingerprint {ds.fingerprint} ({time.monotonic() - t0:.1f}s)")
    tr, te = time_split(ds)
    from models.registration import measure_latency  # imports this module: import here, not at the top

    version = version or time.strftime("%Y%m%d%H%M%S", time.gmtime())
    (out_dir / "artifacts").mkdir(parents=True, exist_ok=True)
    entries: list[ModelEntry] = []
    # reference statistics come from steady-state rows only: until the longest scoring
    # window has filled, the start of a history has truncated windows that serving never sees
    warmup_ms = max(spec.group(g).window.size_ms for g in spec.scoring_groups)
    steady = ds.window_end_ms[tr] >= ds.window_end_ms.min() + warmup_ms
    if not steady.any():
        steady = np.ones(int(tr.sum()), dtype=bool)

    def fit(kind: str) -> tuple[bytes, np.ndarray, np.ndarray, Any]:
        """ONNX bytes, holdout and training predictions, and the native model of one kind."""
        if kind == "prior":  # the base-rate baseline every model must beat
            rate = float(ds.y[tr].mean())
            return constant_model(ds.x.shape[1], rate), np.full(int(te.sum()), rate), np.full(int(tr.sum()), rate), \
                None
        model = train_gbdt(ds.x[tr], ds.y[tr], n_estimators) if kind == "gbdt" else train_mlp(ds.x[tr], ds.y[tr])
        return (to_onnx(model, kind, ds.x.shape[1]), native_predict(model, ds.x[te]),
                native_predict(model, ds.x[tr]), model)

    for kind, stage in (("gbdt", "active"), ("mlp", "fallback"), ("prior", "candidate")):
        t1 = time.monotonic()
        onx, holdout_p, _, native = fit(kind)
        rel = f"artifacts/{kind}-{version}.onnx"
        (out_dir / rel).write_bytes(onx)
        metrics = offline_metrics(ds.y[te], holdout_p)
        explainer: dict[str, Any] = {}
        if kind == "gbdt":  # the native booster, for TreeSHAP explanations of sampled scores
            erel = f"artifacts/{kind}-{version}.lgb.txt"
            native.booster_.save_model(str(out_dir / erel))
            explainer = {"kind": "lightgbm", "path": erel, "sha256": sha256_file(out_dir / erel)}
        entry = ModelEntry(kind, version, kind, rel, sha256_file(out_dir / rel), tuple(ds.feature_names),
                           spec.version, ds.fingerprint, metrics, stage, registered_at_ms=int(time.time() * 1000),
                           fairness=FairnessPolicy().to_json(), explainer=explainer)
        served = OnnxScorer(out_dir / rel, entry)  # reference scores as serving computes them (float32 ONNX)
        entry = replace(entry, reference=reference_statistics(
            ds.x[tr][steady], served.predict(ds.x[tr][steady]), ds.x[te], served.predict(ds.x[te]),
            ds.feature_names))
        entry = replace(entry, latency=measure_latency(OnnxScorer(out_dir / rel, entry), len(ds.feature_names)))
        log(f"[train] {kind}: auc {metrics['auc']:.4f} logloss {metrics['logloss']:.4f} "
            f"p99 {entry.latency['p99_ms']:.2f} ms/{entry.latency['batch_rows']:.0f} rows "
            f"({time.monotonic() - t1:.1f}s)")
        entries.append(entry)
    manifest: dict[str, Any] = {"models": [e.to_json() for e in entries]}
    path = out_dir / "registry.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, path)
    reg = Registry(path)
    for e in entries:
        reg.audit(e.ref, "", e.stage, f"trained by streamscore train on dataset {ds.fingerprint}")
    return manifest


def reference_statistics(x_train: np.ndarray, p_train: np.ndarray, x_holdout: np.ndarray, p_holdout: np.ndarray,
                         names: tuple[str, ...]) -> dict[str, Any]:
    """Reference statistics of a model: features from its (steady-state) training rows,
    predicted scores from the holdout (in-sample scores of a tree model are more spread
    than anything it will serve)."""
    ref = build_reference(x_train, p_train, names)
    held = build_reference(x_holdout, p_holdout, names)
    ref["prediction"], ref["confidence"] = held["prediction"], held["confidence"]
    return ref


def registry_is_current(path: Path, feature_set_version: str) -> bool:
    """True when ``path`` exists, its artifacts exist, and every model was trained on
    ``feature_set_version`` (a changed spec makes the registry stale) and has its
    registration latency."""
    try:
        models = json.loads(path.read_text())["models"]
    except (OSError, ValueError, KeyError):
        return False
    return bool(models) and all(
        m.get("feature_set_version") == feature_set_version and (path.parent / m.get("path", "")).exists()
        and m.get("latency") for m in models)


def main(argv: list[str] | None = None) -> int:
    from jobs.generator import TrafficConfig, generate_events

    ap = argparse.ArgumentParser(prog="streamscore train", description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=600_000, help="history events to generate (default 600000)")
    ap.add_argument("--seed", type=int, default=11, help="generator seed (default 11)")
    ap.add_argument("--trees", type=int, default=100, help="LightGBM trees (default 100)")
    ap.add_argument("--out", type=Path, default=MODELS_DIR, help="registry folder (default models/)")
    ap.add_argument("--dataset", type=Path, help="train on a `streamscore backfill` output folder instead")
    ap.add_argument("--if-missing", action="store_true",
                    help="do nothing when registry.json exists and matches the feature spec")
    args = ap.parse_args(argv)
    if args.if_missing and registry_is_current(args.out / "registry.json", load_spec().version):
        print(f"[train] {args.out / 'registry.json'} is current; skipping", file=sys.stderr)
        return 0
    spec = load_spec()
    if args.dataset:
        source: Any = load_backfill(spec, args.dataset)
    else:
        source = generate_events(args.events, TrafficConfig(seed=args.seed, out_of_order_fraction=0.05))
    train_and_register(source, args.out, spec, n_estimators=args.trees, log=lambda m: print(m, file=sys.stderr))
    return 0


if __name__ == "__main__":
    sys.exit(main())
