"""``streamscore models``: list, show, register, promote and roll back registry models.

Promotion applies the gates of ``transforms.promotion`` against the active model and the
current feature spec; ``--force`` overrides them and the audit log records what it overrode.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from jobs.paths import REGISTRY
from transforms.promotion import PromotionGates, PromotionRefused, promote, rollback
from transforms.registry import ModelEntry, Registry, RegistryError, read_audit
from transforms.spec import SpecError, load_spec


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="streamscore models", description=__doc__.splitlines()[0])
    ap.add_argument("--registry", type=Path, default=Path(os.environ.get("STREAMSCORE_REGISTRY") or REGISTRY),
                    help="registry manifest (default $STREAMSCORE_REGISTRY or models/registry.json)")
    ap.add_argument("--spec", default=os.environ.get("STREAMSCORE_SPEC") or None,
                    help="feature spec YAML (default $STREAMSCORE_SPEC or the packaged default)")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("list", help="a table of the registered models",
                   description="Registered models with stage, metrics, latency and feature-set match.")
    p = sub.add_parser("show", help="one entry as JSON, with its audit records",
                       description="One registry entry as JSON, with its audit records.")
    p.add_argument("ref", help="name or name:version")
    p = sub.add_parser("register", help="evaluate an ONNX file and register it as a candidate",
                       description="Copy an ONNX model into the registry, evaluate it on a freshly generated "
                                   "point-in-time dataset, measure its latency, register it as a candidate.")
    p.add_argument("--onnx", type=Path, required=True, help="ONNX file taking the spec's model features")
    p.add_argument("--name", required=True, help="model name")
    p.add_argument("--version", help="model version (default: UTC timestamp)")
    p.add_argument("--kind", default="onnx", help="model kind (default onnx)")
    p.add_argument("--events", type=int, default=200_000, help="evaluation events to generate (default 200000)")
    p.add_argument("--seed", type=int, default=23, help="generator seed (default 23)")
    p.add_argument("--training-fingerprint", default="unknown",
                   help="fingerprint of the model's training dataset (default unknown)")
    p = sub.add_parser("promote", help="make a model active if it passes the promotion gates",
                       description="Promote a model to active: the active becomes the fallback, the fallback "
                                   "is retired. Refused (exit 1) when a gate fails, unless --force.")
    p.add_argument("ref", help="name or name:version")
    p.add_argument("--force", action="store_true", help="promote despite failed gates (recorded in the audit log)")
    p.add_argument("--reason", default="", help="reason recorded in the audit log")
    p.add_argument("--auc-margin", type=float, default=PromotionGates.auc_margin,
                   help=f"AUC may be this much below the active's (default {PromotionGates.auc_margin})")
    p.add_argument("--logloss-margin", type=float, default=PromotionGates.logloss_margin,
                   help=f"logloss may exceed the active's by this much (default {PromotionGates.logloss_margin})")
    p.add_argument("--latency-budget-ms", type=float, default=PromotionGates.latency_budget_ms,
                   help=f"maximum batch p99 latency (default {PromotionGates.latency_budget_ms})")
    p = sub.add_parser("rollback", help="swap the active model for the fallback",
                       description="The active model becomes a candidate, the fallback becomes active and the "
                                   "newest retired model on the same feature set becomes the fallback.")
    p.add_argument("--reason", default="manual rollback", help="reason recorded in the audit log")
    return ap


def _num(value: Any, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, int | float) else "-"


def _table(reg: Registry, spec_version: str) -> str:
    header = ("ref", "kind", "stage", "auc", "logloss", "p99_ms", "feature_set", "spec")
    rows = [header] + [(m.ref, m.kind, m.stage, _num(m.metrics.get("auc"), ".4f"),
                        _num(m.metrics.get("logloss"), ".4f"), _num(m.latency.get("p99_ms"), ".2f"),
                        m.feature_set_version, "match" if m.feature_set_version == spec_version else "mismatch")
                       for m in reg.entries]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _stages(reg: Registry) -> dict[str, str]:
    return {m.ref: m.stage for m in reg.entries}


def _print_changes(before: dict[str, str], reg: Registry) -> None:
    for ref, stage in _stages(reg).items():
        if before.get(ref) != stage:
            print(f"{ref}: {before.get(ref, '-')} -> {stage}")


def _register(args: argparse.Namespace, spec_path: str | None) -> ModelEntry:
    from jobs.generator import TrafficConfig, generate_events
    from models.registration import register_artifact
    from models.train import labelled_dataset

    if args.events < 1:
        raise ValueError(f"--events must be >= 1, got {args.events}")
    spec = load_spec(spec_path)
    Registry(args.registry)  # fail on an unreadable registry before generating data
    print(f"[models] evaluating on the point-in-time dataset of {args.events} events (seed {args.seed})",
          file=sys.stderr)
    ds = labelled_dataset(spec, generate_events(args.events, TrafficConfig(seed=args.seed, out_of_order_fraction=0.05)))
    version = args.version or time.strftime("%Y%m%d%H%M%S", time.gmtime())
    return register_artifact(args.registry, args.onnx, args.name, version, args.kind, spec, ds,
                             args.training_fingerprint)


def _run(args: argparse.Namespace) -> int:
    if args.command == "register":
        print(json.dumps(_register(args, args.spec).to_json(), indent=2))
        return 0
    reg = Registry(args.registry)
    if args.command == "list":
        print(_table(reg, load_spec(args.spec).version) if reg.entries else f"(no models in {reg.path})")
    elif args.command == "show":
        entry = reg.get(args.ref)
        audit = [r for r in read_audit(reg.path) if r.get("model") == entry.ref]
        print(json.dumps({"entry": entry.to_json(), "audit": audit}, indent=2))
    elif args.command == "promote":
        gates = PromotionGates(args.auc_margin, args.logloss_margin, args.latency_budget_ms)
        before = _stages(reg)
        try:
            overridden = promote(reg, args.ref, load_spec(args.spec).version, gates, force=args.force,
                                 reason=args.reason)
        except PromotionRefused as exc:
            print(f"streamscore models: promotion of {exc.ref} refused:", file=sys.stderr)
            for problem in exc.problems:
                print(f"  - {problem}", file=sys.stderr)
            print("  (pass --force to override; it is recorded in the audit log)", file=sys.stderr)
            return 1
        reg.save()
        for problem in overridden:
            print(f"streamscore models: --force overrode: {problem}", file=sys.stderr)
        _print_changes(before, reg)
    elif args.command == "rollback":
        before = _stages(reg)
        rolled_back, new_active = rollback(reg, args.reason)
        reg.save()
        _print_changes(before, reg)
        print(f"rolled back {rolled_back.ref}; active is now {new_active.ref} "
              f"(`streamscore models promote {rolled_back.ref}` reverses this)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except (RegistryError, SpecError, ValueError, OSError) as exc:
        print(f"streamscore models: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
