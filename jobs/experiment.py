"""``streamscore experiment report``: the online experiment's verdict from the
``model-metrics`` topic, or from a JSON-lines file of the same records (offline use).

For each treatment arm (served arms other than the control): lift of the mean log loss
over the control with its confidence interval, the Welch p-value, the guardrails
(calibration, batch p99 latency, fallback rate) and a verdict: promote, keep (nothing
declared) or rollback. The decision rule is documented in ``transforms.experiment``.

Prints a table and one verdict line per treatment arm; the last line is one JSON object
``{"control": ..., "arms": {arm: {"lift", "ci", "p_value", "significant", "verdict"}},
"html": path}``. Writes a self-contained HTML page (summary, mean log loss and CTR per
window per arm, calibration bars, fairness table when given). Exit 2 when there are no
records (or no served arm to compare), 1 when the topic cannot be read.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jobs.paths import ROOT
from transforms.codecs import CodecError, decode
from transforms.experiment import NAN, ExperimentError, ExperimentReport, report

DEFAULT_HTML = ROOT / "bench" / "out" / "experiment.html"
COLUMNS = ("arm", "role", "model", "n", "CTR", "AUC", "logloss", "lift % [CI]", "p-value", "calib", "fallback",
           "p99 ms", "verdict")


def _log(msg: str) -> None:
    print(f"[experiment] {msg}", file=sys.stderr, flush=True)


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file (blank lines skipped)."""
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ExperimentError(f"{path}:{i}: not JSON: {exc}") from exc
        if not isinstance(rec, dict):
            raise ExperimentError(f"{path}:{i}: not a JSON object")
        out.append(rec)
    return out


def fetch_records(bootstrap: str, topic: str, timeout_s: float) -> list[dict[str, Any]]:
    """Decoded ``model-metrics`` records of ``topic``; undecodable ones are skipped (counted)."""
    from jobs.kafka_io import read_topic

    out, bad = [], 0
    for _, raw, _ in read_topic(bootstrap, topic, None, timeout_s=timeout_s):
        try:
            out.append(decode(raw, "model_metrics"))
        except CodecError:
            bad += 1
    if bad:
        _log(f"{bad} undecodable records in {topic} skipped")
    return out


def _f(x: Any, spec: str = ".4f") -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def _p(p: float) -> str:
    return "<1e-16" if 0 <= p < 1e-16 else _f(p, ".3g")


def summary_rows(rep: ExperimentReport) -> list[dict[str, Any]]:
    """One row per arm and model: control, treatments, then shadow/reference/earlier models."""
    rows = []
    ctl = rep.served[rep.control]
    for s in [ctl, *(rep.served[a] for a in rep.comparisons), *rep.others]:
        cmp = rep.comparisons.get(s.arm) if rep.served.get(s.arm) is s else None
        rows.append({"arm": s.arm, "role": s.role, "model": s.model_ref, "n": s.n, "ctr": s.ctr, "auc": s.auc,
                     "mean_logloss": s.mean_logloss, "lift": cmp.lift if cmp else NAN,
                     "ci": cmp.ci if cmp else (NAN, NAN), "p_value": cmp.p_value if cmp else NAN,
                     "calibration": s.calibration, "fallback_rate": s.fallback_rate, "p99_ms": s.batch_ms_p99,
                     "verdict": "control" if s is ctl else cmp.verdict if cmp else "-"})
    return rows


def _cells(r: dict[str, Any]) -> list[str]:
    lift = "-" if not math.isfinite(r["lift"]) else (
        f"{100 * r['lift']:+.2f} [{_f(100 * r['ci'][0], '+.2f')}, {_f(100 * r['ci'][1], '+.2f')}]")
    return [r["arm"], r["role"], r["model"], str(r["n"]), _f(r["ctr"]), _f(r["auc"]), _f(r["mean_logloss"]), lift,
            _p(r["p_value"]), _f(r["calibration"], ".3f"), _f(r["fallback_rate"]), _f(r["p99_ms"], ".1f"),
            r["verdict"]]


def format_table(rows: list[dict[str, Any]]) -> str:
    cells = [list(COLUMNS), *(_cells(r) for r in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def verdict_lines(rep: ExperimentReport) -> list[str]:
    lines = []
    for arm, c in rep.comparisons.items():
        stat = (f"lift {100 * c.lift:+.2f}% [{100 * c.ci[0]:+.2f}, {100 * c.ci[1]:+.2f}], p={_p(c.p_value)}"
                if math.isfinite(c.p_value) else "no test")
        lines.append(f"verdict {arm} ({c.treatment.model_ref}) vs {rep.control} ({c.control.model_ref}): "
                     f"{c.verdict.upper()} ({stat}; {'; '.join(c.notes) or 'all guardrails passed'})")
    return lines or [f"verdict: nothing to compare (only the control arm {rep.control!r} is served)"]


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return "<img alt='figure' src='data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii") + "'>"


def _figures(rep: ExperimentReport) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    for metric, title in (("mean_logloss", "mean log loss per window"), ("ctr", "CTR per window")):
        fig, ax = plt.subplots(figsize=(9, 3.5))
        for label, pts in rep.series.items():
            dates: Any = [datetime.fromtimestamp(p["window_start_ms"] / 1000, UTC) for p in pts]
            ax.plot(dates, [NAN if p[metric] is None else p[metric] for p in pts], marker=".", label=label)
        ax.set_title(title)
        ax.set_xlabel("window start (UTC)")
        ax.legend(fontsize=8)
        fig.autofmt_xdate()
        out.append(_png(fig))
        plt.close(fig)
    arms = [*rep.served.values(), *rep.others]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(arms)), 3.5))
    xs = list(range(len(arms)))
    ax.bar([x - 0.2 for x in xs], [s.mean_score for s in arms], 0.4, label="mean score")
    ax.bar([x + 0.2 for x in xs], [s.ctr for s in arms], 0.4, label="CTR (observed)")
    ax.set_xticks(xs, [f"{s.arm}\n{s.model_ref}" for s in arms], fontsize=8)
    ax.set_title("calibration: mean score vs observed CTR")
    ax.legend(fontsize=8)
    out.append(_png(fig))
    plt.close(fig)
    return out


def _table(header: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table border='1' cellpadding='4' style='border-collapse:collapse'><tr>{th}</tr>{body}</table>"


def render_html(rep: ExperimentReport, path: Path) -> None:
    """Write the self-contained report page (figures inline as base64 PNG)."""
    parts = ["<!doctype html><meta charset='utf-8'><title>streamscore experiment</title>",
             "<body style='font-family:sans-serif'><h1>streamscore online experiment</h1>",
             f"<p>control arm: <b>{html.escape(rep.control)}</b>; alpha = {rep.alpha}</p>",
             _table(list(COLUMNS), [_cells(r) for r in summary_rows(rep)]),
             "<ul>" + "".join(f"<li>{html.escape(v)}</li>" for v in verdict_lines(rep) + rep.notes) + "</ul>"]
    for arm, c in rep.comparisons.items():
        parts.append(f"<h3>guardrails: {html.escape(arm)}</h3>")
        parts.append(_table(["guardrail", "control", "treatment", "worse by", "tolerance", "passed"],
                            [[g.name, _f(g.control), _f(g.treatment), _f(g.change), _f(g.tolerance),
                              "not evaluated" if g.passed is None else str(g.passed)] for g in c.guardrails]))
    parts += ["<h2>over time</h2>", *_figures(rep)]
    if rep.fairness is not None:
        cols = ["attribute", "group", "n", "mean_score", "positive_rate", "ctr", "best_group", "mean_score_ratio",
                "mean_score_diff", "positive_rate_ratio", "positive_rate_diff"]
        parts += ["<h2>fairness (vs the best-served group of each attribute)</h2>",
                  _table(cols, [[str(r[k]) if isinstance(r[k], str | int) else _f(r[k]) for k in cols]
                                for r in rep.fairness])]
    parts.append("</body>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))


def group_fairness(records: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """Fairness rows (per window, attribute and group) from ``role = group`` metrics, or
    None when there are none."""
    from transforms.fairness import FairnessPolicy, disparities

    rows = disparities(records, FairnessPolicy())
    return rows or None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="streamscore experiment", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = ap.add_subparsers(dest="action", required=True)
    rp = sub.add_parser("report", help="lift, confidence interval, significance and verdict per arm",
                        description="Compare every served arm with the control arm.")
    rp.add_argument("--bootstrap", default="127.0.0.1:9092", help="Kafka bootstrap servers (default 127.0.0.1:9092)")
    rp.add_argument("--topic", default="model-metrics", help="metrics topic (default model-metrics)")
    rp.add_argument("--file", type=Path, help="read the records from this JSON-lines file instead of Kafka")
    rp.add_argument("--fairness", type=Path, help="JSON-lines file of fairness records (attribute, group, ...)")
    rp.add_argument("--control", help="control arm (default: 'control' if served, else the first arm by name)")
    rp.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    rp.add_argument("--html", type=Path, default=DEFAULT_HTML, help="report page (default bench/out/experiment.html)")
    rp.add_argument("--json", action="store_true", help="also print the full report as one JSON object")
    rp.add_argument("--timeout", type=float, default=60.0, help="seconds to read the topic to its end (default 60)")
    args = ap.parse_args(argv)
    if not 0 < args.alpha < 1:
        ap.error("--alpha must be in (0, 1)")
    try:
        if args.file is not None:
            records = load_jsonl(args.file)
            source = str(args.file)
        else:
            records = fetch_records(args.bootstrap, args.topic, args.timeout)
            source = f"{args.topic}@{args.bootstrap}"
        fairness = load_jsonl(args.fairness) if args.fairness is not None else None
    except (OSError, ExperimentError) as exc:
        print(f"experiment: cannot read records: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the Kafka client raises its own types
        print(f"experiment: cannot read {args.topic} from {args.bootstrap}: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return 1
    if not records:
        print(f"experiment: no model-metrics records found in {source}", file=sys.stderr)
        return 2
    try:
        if fairness is None:  # the job's own subgroup rows (role = group) of the same topic
            fairness = group_fairness(records)
        rep = report(records, control_arm=args.control, alpha=args.alpha, fairness_records=fairness)
    except ExperimentError as exc:
        print(f"experiment: {exc}", file=sys.stderr)
        return 2
    _log(f"{len(records)} records from {source}")
    print(format_table(summary_rows(rep)))
    for line in [*verdict_lines(rep), *rep.notes]:
        print(line)
    render_html(rep, args.html)
    if args.json:
        print(json.dumps(rep.to_dict(), allow_nan=False))
    arms = {arm: {k: d[k] for k in ("model", "lift", "ci", "p_value", "significant", "verdict")}
            for arm, d in ((a, c.to_dict()) for a, c in rep.comparisons.items())}
    print(json.dumps({"control": rep.control, "arms": arms, "html": str(args.html)}, allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
