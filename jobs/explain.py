"""``streamscore explain``: global feature importance and ablation of a registered model on
a dataset (a freshly generated point-in-time dataset, or a ``streamscore backfill``
output). Importance is the mean absolute sensitivity attribution (each feature replaced by
its training reference mean, ``transforms.explain.sensitivity``) and, for a GBDT with its
LightGBM booster, the mean absolute TreeSHAP contribution; ablation is the change in AUC
and log loss when a feature is replaced by its reference mean for every row.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from jobs.paths import REGISTRY


def importance(entry: Any, registry: Any, x: np.ndarray, y: np.ndarray, max_rows: int = 2000) -> dict[str, Any]:
    """Per-feature importance and ablation of ``entry`` on ``(x, y)``."""
    from models.train import offline_metrics
    from transforms.explain import TreeShap, sensitivity
    from transforms.registry import RegistryError, sha256_file
    from transforms.scoring import OnnxScorer

    names = list(entry.feature_names)
    if not entry.reference:
        raise RegistryError(f"model {entry.ref} has no reference statistics (retrain with `streamscore train`)")
    means = np.array([entry.reference["features"][n]["mean"] for n in names])
    scorer = OnnxScorer(registry.artifact(entry), entry)
    rows = x[np.random.default_rng(0).choice(len(x), min(max_rows, len(x)), replace=False)]
    sens = np.abs(sensitivity(scorer.predict, rows, means)).mean(axis=0)
    shap = None
    if entry.explainer.get("kind") == "lightgbm":
        path = registry.artifact(entry, entry.explainer["path"])
        if sha256_file(path) != entry.explainer.get("sha256"):
            raise RegistryError(f"explainer of {entry.ref}: sha256 mismatch")
        shap = np.abs(TreeShap(path).contributions(rows)[:, :-1]).mean(axis=0)
    base = offline_metrics(y, scorer.predict(x))
    out = []
    for j, n in enumerate(names):
        xa = x.copy()
        xa[:, j] = means[j]
        m = offline_metrics(y, scorer.predict(xa))
        out.append({"feature": n, "sensitivity": float(sens[j]),
                    "tree_shap": float(shap[j]) if shap is not None else None,
                    "ablation_auc_drop": base["auc"] - m["auc"], "ablation_logloss_rise": m["logloss"] - base["logloss"]})
    out.sort(key=lambda r: -r["ablation_logloss_rise"])
    return {"model": entry.ref, "rows": int(len(x)), "base": {"auc": base["auc"], "logloss": base["logloss"]},
            "features": out}


def main(argv: list[str] | None = None) -> int:
    from jobs.generator import TrafficConfig, generate_events
    from models.train import labelled_dataset, load_backfill
    from transforms.registry import Registry, RegistryError
    from transforms.spec import load_spec

    ap = argparse.ArgumentParser(prog="streamscore explain", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gbdt", help="name or name:version (default gbdt)")
    ap.add_argument("--registry", type=Path, default=REGISTRY)
    ap.add_argument("--dataset", type=Path, help="a `streamscore backfill` output folder")
    ap.add_argument("--events", type=int, default=200_000, help="events to generate when no --dataset (200000)")
    ap.add_argument("--seed", type=int, default=23, help="generator seed (default 23)")
    ap.add_argument("--json", action="store_true", help="print only the JSON result")
    args = ap.parse_args(argv)
    spec = load_spec()
    try:
        reg = Registry(args.registry)
        entry = reg.get(args.model)
        if args.dataset:
            ds = load_backfill(spec, args.dataset)
        else:
            print(f"[explain] generating {args.events} events (seed {args.seed})", file=sys.stderr)
            ds = labelled_dataset(spec, generate_events(args.events, TrafficConfig(seed=args.seed,
                                                                                    out_of_order_fraction=0.05)))
        res = importance(entry, reg, ds.x, ds.y)
    except (RegistryError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.json:
        print(f"{'feature':<36} {'sensitivity':>11} {'tree_shap':>10} {'AUC drop':>9} {'logloss +':>10}")
        for r in res["features"]:
            shap = f"{r['tree_shap']:.4f}" if r["tree_shap"] is not None else "-"
            print(f"{r['feature']:<36} {r['sensitivity']:>11.4f} {shap:>10} {r['ablation_auc_drop']:>9.4f} "
                  f"{r['ablation_logloss_rise']:>10.4f}")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
