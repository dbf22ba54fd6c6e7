"""``streamscore drift``: offline drift of a dataset against a model's training reference.

Builds the dataset (a ``streamscore backfill`` folder, or the point-in-time dataset of
freshly generated events), optionally multiplies feature columns by a factor
(``--shift FEATURE=FACTOR``, to demonstrate drift), scores it with the model's ONNX
artifact and compares every feature and the scores with the ``reference`` statistics of
the registry entry (PSI, KS, missing-rate change, mean shift; ``transforms.drift``).

Prints a per-feature table; the last line is one JSON object ``{"model", "rows",
"features", "alerts", "severe"}``. ``--json`` also prints the full drift record (one JSON
line before it); ``--html PATH`` writes a small page with a PSI bar chart. Exit 2 when
the model has no reference statistics or the arguments are wrong, 1 when the model or
dataset cannot be loaded.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from jobs.paths import REGISTRY
from transforms.drift import PREDICTION, DriftThresholds, offline_drift
from transforms.registry import Registry, RegistryError

COLUMNS = ("feature", "n", "psi", "ks", "missing delta", "mean shift sd", "severity")


def _log(msg: str) -> None:
    print(f"[drift] {msg}", file=sys.stderr, flush=True)


def parse_shifts(items: list[str], names: tuple[str, ...]) -> dict[int, float]:
    """``["f=3"]`` -> ``{column of f: 3.0}``; unknown features and bad factors raise ValueError."""
    out: dict[int, float] = {}
    for item in items:
        name, sep, factor = item.partition("=")
        if not sep or name not in names:
            raise ValueError(f"--shift {item!r}: want FEATURE=FACTOR with FEATURE one of {', '.join(names)}")
        try:
            out[names.index(name)] = float(factor)
        except ValueError as exc:
            raise ValueError(f"--shift {item!r}: factor {factor!r} is not a number") from exc
    return out


def severities(rec: dict[str, Any]) -> dict[str, str]:
    """The worst alert severity per column (``ok`` when none)."""
    out = {name: "ok" for name in [*rec["features"], PREDICTION]}
    for a in rec["alerts"]:
        if out[a["feature"]] != "critical":
            out[a["feature"]] = a["severity"]
    return out


def table_rows(rec: dict[str, Any]) -> list[list[str]]:
    sev = severities(rec)
    cols = {**rec["features"], PREDICTION: rec[PREDICTION]}
    return [[name, str(c["n_valid"]), f"{c['psi']:.4f}", f"{c['ks']:.4f}", f"{c['missing_delta']:+.4f}",
             f"{c['mean_shift_sd']:+.3f}", sev[name]] for name, c in cols.items()]


def format_table(rows: list[list[str]]) -> str:
    cells = [list(COLUMNS), *rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


def render_html(rec: dict[str, Any], thresholds: DriftThresholds, path: Path) -> None:
    """A self-contained page: the table and a PSI bar chart (base64 PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = {**rec["features"], PREDICTION: rec[PREDICTION]}
    fig, ax = plt.subplots(figsize=(9, max(2.5, 0.35 * len(cols))))
    ax.barh(list(cols), [c["psi"] for c in cols.values()])
    for value, style, label in ((thresholds.psi_warn, "--", "warning"), (thresholds.psi_severe, "-", "critical")):
        ax.axvline(value, color="red", linestyle=style, label=f"{label} {value}")
    ax.invert_yaxis()
    ax.set_xlabel("PSI")
    ax.set_title(f"PSI vs training reference: {rec['model']}")
    ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    png = base64.b64encode(buf.getvalue()).decode("ascii")
    th = "".join(f"<th>{html.escape(h)}</th>" for h in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in table_rows(rec))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "<!doctype html><meta charset='utf-8'><title>streamscore drift</title><body style='font-family:sans-serif'>"
        f"<h1>drift: {html.escape(rec['model'])}</h1><p>{rec['n']} rows; severe: {rec['severe']}</p>"
        f"<table border='1' cellpadding='4' style='border-collapse:collapse'><tr>{th}</tr>{body}</table>"
        f"<img alt='PSI per feature' src='data:image/png;base64,{png}'></body>\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="streamscore drift", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--model", required=True, help="model reference, name or name:version")
    ap.add_argument("--registry", type=Path, default=REGISTRY, help=f"registry manifest (default {REGISTRY})")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", type=Path, help="a `streamscore backfill` output folder")
    src.add_argument("--events", type=int, help="generate this many events and use their point-in-time dataset")
    ap.add_argument("--seed", type=int, default=11, help="generator seed with --events (default 11)")
    ap.add_argument("--shift", action="append", default=[], metavar="FEATURE=FACTOR",
                    help="multiply a feature column by FACTOR before scoring (repeatable)")
    ap.add_argument("--json", action="store_true", help="also print the full drift record as one JSON line")
    ap.add_argument("--html", type=Path, help="write a small HTML report with a PSI bar chart here")
    args = ap.parse_args(argv)
    if args.events is not None and args.events < 1:
        ap.error("--events must be >= 1")

    from models.train import labelled_dataset, load_backfill
    from transforms.scoring import OnnxScorer, ScoringError
    from transforms.spec import load_spec

    try:
        registry = Registry(args.registry)
        entry = registry.get(args.model)
    except RegistryError as exc:
        _log(str(exc))
        return 1
    if not entry.reference:
        _log(f"model {entry.ref} has no reference statistics in {args.registry}: nothing to compare with "
             "(register a model trained with reference statistics)")
        return 2
    try:
        shifts = parse_shifts(args.shift, tuple(entry.feature_names))
    except ValueError as exc:
        _log(str(exc))
        return 2
    spec = load_spec()
    try:
        if args.dataset:
            ds = load_backfill(spec, args.dataset)
        else:
            from jobs.generator import TrafficConfig, generate_events

            ds = labelled_dataset(spec, generate_events(args.events, TrafficConfig(seed=args.seed)))
    except (OSError, ValueError, KeyError) as exc:
        _log(f"cannot load the dataset: {exc}")
        return 1
    if tuple(ds.feature_names) != tuple(entry.feature_names):
        _log(f"dataset features {list(ds.feature_names)} differ from model {entry.ref}'s {list(entry.feature_names)}")
        return 2
    x = np.array(ds.x, dtype=np.float32)
    for j, factor in shifts.items():
        x[:, j] *= factor
    try:
        scores = OnnxScorer(registry.artifact(entry), entry).predict(x)
    except (RegistryError, ScoringError) as exc:
        _log(f"cannot score with {entry.ref}: {exc}")
        return 1
    thresholds = DriftThresholds()
    try:
        rec = offline_drift(x, scores, entry.reference, thresholds, model_ref=entry.ref)
    except ValueError as exc:
        _log(f"model {entry.ref}: {exc}")
        return 2
    print(format_table(table_rows(rec)))
    if args.html:
        render_html(rec, thresholds, args.html)
        _log(f"wrote {args.html}")
    if args.json:
        print(json.dumps(rec, sort_keys=True))
    print(json.dumps({"model": entry.ref, "rows": int(x.shape[0]), "features": len(rec["features"]),
                      "alerts": rec["alerts"], "severe": rec["severe"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
