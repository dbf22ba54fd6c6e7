"""``streamscore report``: one self-contained HTML page of the pipeline's state.

Reads the ``scores``, ``model-metrics``, ``model-monitoring`` and ``alerts`` topics (or,
with ``--from-jsonl DIR``, the files ``scores.jsonl``, ``metrics.jsonl``,
``monitoring.jsonl`` and ``alerts.jsonl`` of decoded records, one JSON object a line; a
score line may carry its broker timestamp as ``"_ts_ms"``; an optional ``events.jsonl``
gives input records whose ``_ts_ms`` or ``ts_ms`` feeds the input rate), and the model
registry (reference score distributions). Charts (``transforms.report_data``): throughput,
latency p50/p99, PSI per feature with the warn/severe thresholds, the served score
distribution of each model version against its reference, fairness per subgroup, alerts
over time, and a table of the most recent alerts.

The page has no external resources: each chart is an inline ``<svg class="chart"
data-points="N">`` drawn here (data marks carry class ``mark``, PSI thresholds are
``<line class="threshold">``); a chart without data says so instead. A little inline
JavaScript lists the charts' point counts and toggles each chart's data table.

Prints the page's path; the last line is one JSON object ``{"html": path, "charts":
{name: points}}``. Exit 2 when no records at all were found (or the arguments are wrong).
"""

from __future__ import annotations

import argparse
import html
import json
import math
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jobs.paths import REGISTRY, ROOT
from transforms.codecs import CodecError, decode
from transforms.drift import DriftThresholds
from transforms.registry import Registry, RegistryError
from transforms.report_data import TS_KEY, Chart, ReportData, build_report

DEFAULT_OUT = ROOT / "bench" / "out" / "report.html"
SOURCES = (  # (name, jsonl file, schema, topic option)
    ("scores", "scores.jsonl", "scored_result", "scores_topic"),
    ("metrics", "metrics.jsonl", "model_metrics", "metrics_topic"),
    ("monitoring", "monitoring.jsonl", "monitoring", "monitoring_topic"),
    ("alerts", "alerts.jsonl", "alert", "alerts_topic"),
)
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#393b79", "#637939")
SEVERITY_COLOURS = {"critical": "#d62728", "warning": "#ff7f0e", "info": "#1f77b4"}
W, H = 760, 300
ML, MR, MT, MB = 64, 180, 34, 62
MAX_DOTS = 400  # a line series with more points is drawn without per-point circles


def _log(msg: str) -> None:
    print(f"[report] {msg}", file=sys.stderr, flush=True)


# -- inputs ------------------------------------------------------------------------------
def load_jsonl(path: Path) -> tuple[list[dict[str, Any]], int]:
    """(the JSON objects of a JSON-lines file, the number of lines that were not one)."""
    out, bad = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(rec, dict):
            out.append(rec)
        else:
            bad += 1
    return out, bad


def _event_ts(e: dict[str, Any]) -> int | None:
    for key in (TS_KEY, "ts_ms"):
        v = e.get(key)
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            return int(v)
    return None


def read_jsonl_dir(folder: Path) -> tuple[dict[str, list[dict[str, Any]]], dict[str, str], list[int] | None]:
    """Records per source, a status line per source, input timestamps (``events.jsonl``)."""
    recs: dict[str, list[dict[str, Any]]] = {}
    status: dict[str, str] = {}
    for name, fname, _, _ in SOURCES:
        path = folder / fname
        if not path.exists():
            recs[name], status[name] = [], f"{path}: no such file"
            continue
        recs[name], bad = load_jsonl(path)
        status[name] = f"{path}: {len(recs[name])} records" + (f", {bad} malformed lines skipped" if bad else "")
    inputs = None
    events = folder / "events.jsonl"
    if events.exists():
        evs, _ = load_jsonl(events)
        inputs = [t for t in (_event_ts(e) for e in evs) if t is not None]
        status["inputs"] = f"{events}: {len(inputs)} input timestamps"
    return recs, status, inputs


def read_topics(bootstrap: str, topics: dict[str, str], timeout_s: float,
                reader: Callable[..., list[tuple[bytes | None, Any, int]]] | None = None,
                ) -> tuple[dict[str, list[dict[str, Any]]], dict[str, str]]:
    """Decoded records per source from Kafka; a topic that cannot be read is reported in
    its status line and yields no records (an unreachable broker skips the rest)."""
    if reader is None:
        from jobs.kafka_io import read_topic as reader
    recs: dict[str, list[dict[str, Any]]] = {}
    status: dict[str, str] = {}
    unreachable = ""
    for name, _, schema, _ in SOURCES:
        topic = topics[name]
        recs[name] = []
        if unreachable:
            status[name] = f"topic {topic}: not read ({unreachable})"
            continue
        try:
            msgs = reader(bootstrap, topic, None, timeout_s=timeout_s)
        except Exception as exc:  # missing topic, timeout, broker down: report and go on
            status[name] = f"topic {topic}: cannot read: {type(exc).__name__}: {exc}"
            if type(exc).__name__ == "KafkaException":
                unreachable = f"broker {bootstrap} unreachable"
            continue
        bad = 0
        for _, raw, ts in msgs:
            try:
                rec = decode(raw, schema)
            except CodecError:
                bad += 1
                continue
            if name == "scores":
                rec[TS_KEY] = int(ts)
            recs[name].append(rec)
        status[name] = f"topic {topic}: {len(recs[name])} records" + (f", {bad} undecodable skipped" if bad else "")
    return recs, status


def load_references(path: Path) -> tuple[dict[str, Any], str]:
    """{name:version: the entry's reference dict} of the registry, and a status line."""
    try:
        reg = Registry(path)
    except RegistryError as exc:
        return {}, f"no registry: {exc}"
    refs = {e.ref: e.reference for e in reg.entries}
    with_pred = sum(1 for r in refs.values() if isinstance(r, dict) and r.get("prediction"))
    return refs, f"{path}: {len(refs)} models, {with_pred} with a reference prediction distribution"


# -- SVG ---------------------------------------------------------------------------------
def _e(s: Any) -> str:
    return html.escape(str(s), quote=True)


def _num(v: float) -> str:
    return f"{v:.1f}"


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    out, v = [], first
    while v <= hi + step * 1e-9:
        out.append(0.0 if abs(v) < step * 1e-9 else v)
        v += step
    return out


def _fmt_tick(v: float) -> str:
    return f"{v:.4g}"


def _fmt_time(ms: float, span_ms: float) -> str:
    d = datetime.fromtimestamp(ms / 1000, UTC)
    return d.strftime("%m-%d %H:%M" if span_ms > 86_400_000 else "%H:%M:%S")


def _fmt_value(chart: Chart, x: float, y: float) -> str:
    if chart.x_kind == "category":
        label = chart.categories[int(x)] if 0 <= int(x) < len(chart.categories) else str(x)
    else:
        label = datetime.fromtimestamp(x / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{label}: {y:.4g}"


def _ranges(chart: Chart) -> tuple[float, float, float, float]:
    xs = [p[0] for s in chart.series for p in s.points]
    ys = [p[1] for s in chart.series for p in s.points] + [t for _, t in chart.thresholds]
    if chart.x_kind == "category":
        xlo, xhi = -0.5, max(len(chart.categories), 1) - 0.5
    else:
        xlo, xhi = min(xs), max(xs)
        if xhi <= xlo:
            pad = (chart.bucket_ms or 1000) / 2
            xlo, xhi = xlo - pad, xhi + pad
    ylo, yhi = min([0.0, *ys]), max([0.0, *ys])
    if yhi <= ylo:
        yhi = ylo + 1.0
    yhi += 0.08 * (yhi - ylo)
    return xlo, xhi, ylo, yhi


def svg_chart(chart: Chart) -> str:
    """The chart as an inline SVG (``class="chart"``, ``data-points``)."""
    x0, x1, y0, y1 = ML, W - MR, MT, H - MB
    xlo, xhi, ylo, yhi = _ranges(chart)

    def sx(x: float) -> float:
        return x0 + (x - xlo) / (xhi - xlo) * (x1 - x0)

    def sy(y: float) -> float:
        return y1 - (y - ylo) / (yhi - ylo) * (y1 - y0)

    out = [f'<svg class="chart" data-name="{_e(chart.name)}" data-points="{chart.points}" width="{W}" height="{H}" '
           f'viewBox="0 0 {W} {H}" role="img" aria-label="{_e(chart.title)}">',
           f'<text class="title" x="{W / 2 - MR / 2:.0f}" y="20" text-anchor="middle">{_e(chart.title)}</text>']
    # axes, ticks, grid
    out.append(f'<line class="axis x-axis" x1="{x0}" y1="{y1}" x2="{x1}" y2="{y1}" stroke="#333"/>')
    out.append(f'<line class="axis y-axis" x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="#333"/>')
    for t in nice_ticks(ylo, yhi):
        y = sy(t)
        out.append(f'<line class="grid" x1="{x0}" y1="{_num(y)}" x2="{x1}" y2="{_num(y)}" stroke="#eee"/>')
        out.append(f'<text class="tick y-tick" x="{x0 - 6}" y="{_num(y + 4)}" text-anchor="end">{_fmt_tick(t)}</text>')
    if chart.x_kind == "category":
        rotate = len(chart.categories) > 6 or max((len(c) for c in chart.categories), default=0) > 12
        for i, c in enumerate(chart.categories):
            x = sx(i)
            anchor = ' text-anchor="end"' if rotate else ' text-anchor="middle"'
            tr = f' transform="rotate(-30 {_num(x)} {y1 + 14})"' if rotate else ""
            out.append(f'<text class="tick x-tick" x="{_num(x)}" y="{y1 + 14}"{anchor}{tr}>{_e(c)}</text>')
    else:
        n = 5
        for i in range(n + 1):
            xv = xlo + (xhi - xlo) * i / n
            out.append(f'<line class="tick-mark" x1="{_num(sx(xv))}" y1="{y1}" x2="{_num(sx(xv))}" y2="{y1 + 4}" '
                       f'stroke="#333"/>')
            out.append(f'<text class="tick x-tick" x="{_num(sx(xv))}" y="{y1 + 16}" text-anchor="middle">'
                       f'{_e(_fmt_time(xv, xhi - xlo))}</text>')
    out.append(f'<text class="axis-label x-label" x="{(x0 + x1) / 2:.0f}" y="{H - 8}" text-anchor="middle">'
               f'{_e(chart.x_label)}</text>')
    out.append(f'<text class="axis-label y-label" x="14" y="{(y0 + y1) / 2:.0f}" text-anchor="middle" '
               f'transform="rotate(-90 14 {(y0 + y1) / 2:.0f})">{_e(chart.y_label)}</text>')
    # thresholds
    for label, t in chart.thresholds:
        colour = "#d62728" if label == "severe" else "#ff7f0e"
        out.append(f'<line class="threshold" data-label="{_e(label)}" data-value="{t:g}" x1="{x0}" y1="{_num(sy(t))}" '
                   f'x2="{x1}" y2="{_num(sy(t))}" stroke="{colour}" stroke-dasharray="6 4"/>')
        out.append(f'<text class="threshold-label" x="{x1 - 4}" y="{_num(sy(t) - 4)}" text-anchor="end" '
                   f'fill="{colour}">{_e(label)} {t:g}</text>')
    # marks
    bars = [s for s in chart.series if s.style == "bar"]
    slot = 0.8 / max(len(bars), 1)
    for k, s in enumerate(chart.series):
        colour = SEVERITY_COLOURS.get(s.name, PALETTE[k % len(PALETTE)]) if chart.name == "alerts" \
            else PALETTE[k % len(PALETTE)]
        out.append(f'<g class="series" data-series="{_e(s.name)}">')
        if s.style == "bar":
            j = bars.index(s)
            base = sy(min(max(0.0, ylo), yhi))
            for x, y in s.points:
                left = sx(x - 0.4 + j * slot)
                right = sx(x - 0.4 + (j + 1) * slot)
                top = sy(y)
                out.append(f'<rect class="mark bar" x="{_num(left)}" y="{_num(min(top, base))}" '
                           f'width="{_num(max(right - left - 1, 1))}" height="{_num(max(abs(base - top), 0.5))}" '
                           f'fill="{colour}"><title>{_e(s.name)} {_e(_fmt_value(chart, x, y))}</title></rect>')
        else:
            pts = " ".join(f"{_num(sx(x))},{_num(sy(y))}" for x, y in s.points)
            out.append(f'<polyline class="mark line" points="{pts}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
            if len(s.points) <= MAX_DOTS:
                for x, y in s.points:
                    out.append(f'<circle class="mark dot" cx="{_num(sx(x))}" cy="{_num(sy(y))}" r="2.5" '
                               f'fill="{colour}"><title>{_e(s.name)} {_e(_fmt_value(chart, x, y))}</title></circle>')
        out.append("</g>")
    # legend
    lx = x1 + 14
    for k, s in enumerate(chart.series[:16]):
        colour = SEVERITY_COLOURS.get(s.name, PALETTE[k % len(PALETTE)]) if chart.name == "alerts" \
            else PALETTE[k % len(PALETTE)]
        ly = y0 + 14 * k
        out.append(f'<rect class="legend-swatch" x="{lx}" y="{ly}" width="10" height="10" fill="{colour}"/>')
        out.append(f'<text class="legend" x="{lx + 14}" y="{ly + 9}">{_e(s.name[:26])}</text>')
    if len(chart.series) > 16:
        out.append(f'<text class="legend" x="{lx}" y="{y0 + 14 * 16 + 9}">+{len(chart.series) - 16} more</text>')
    out.append("</svg>")
    return "\n".join(out)


def _data_table(chart: Chart, table_id: str) -> str:
    rows = []
    for s in chart.series:
        for x, y in s.points:
            label = _fmt_value(chart, x, y).rsplit(": ", 1)[0]
            rows.append(f"<tr><td>{_e(s.name)}</td><td>{_e(label)}</td><td>{y:.6g}</td></tr>")
    return (f'<table class="data" id="{table_id}" hidden><tr><th>series</th><th>x</th><th>y</th></tr>'
            + "".join(rows) + "</table>")


# -- page --------------------------------------------------------------------------------
STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
section.chart-section { margin: 1.2em 0; padding: 0.6em; border: 1px solid #ddd; border-radius: 4px; }
svg.chart text { font-size: 11px; } svg.chart text.title { font-size: 14px; font-weight: bold; }
p.missing { color: #a33; font-style: italic; } ul.notes { color: #555; font-size: 0.9em; margin: 0.2em 0; }
table { border-collapse: collapse; font-size: 0.9em; } td, th { border: 1px solid #ccc; padding: 2px 6px; }
tr.critical td { background: #fde0e0; } tr.warning td { background: #fff1db; }
"""

SCRIPT = """
(function () {
  var charts = document.querySelectorAll('svg.chart');
  var list = document.getElementById('chart-summary');
  var total = 0;
  charts.forEach(function (svg) {
    var n = parseInt(svg.getAttribute('data-points'), 10) || 0;
    var marks = svg.querySelectorAll('.mark').length;
    total += n;
    var li = document.createElement('li');
    li.className = 'chart-count';
    li.textContent = svg.getAttribute('data-name') + ': ' + n + ' points, ' + marks + ' marks';
    list.appendChild(li);
  });
  document.getElementById('chart-total').textContent = charts.length + ' charts, ' + total + ' points';
  document.querySelectorAll('button.toggle').forEach(function (b) {
    b.addEventListener('click', function () {
      var t = document.getElementById(b.getAttribute('data-target'));
      t.hidden = !t.hidden;
      b.textContent = t.hidden ? 'show data' : 'hide data';
    });
  });
  document.body.setAttribute('data-js', 'ok');
})();
"""


def render_html(data: ReportData, sources: dict[str, str], title: str = "streamscore report") -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    parts = ["<!doctype html>", "<html lang='en'><head><meta charset='utf-8'>", f"<title>{_e(title)}</title>",
             f"<style>{STYLE}</style></head><body>", f"<h1>{_e(title)}</h1>", f"<p>generated {now}</p>",
             "<h2>sources</h2><ul class='sources'>"]
    parts += [f"<li><b>{_e(k)}</b>: {_e(v)}</li>" for k, v in sources.items()]
    parts += ["</ul>", "<h2>charts</h2><p id='chart-total'>charts not counted (JavaScript did not run)</p>",
              "<ul id='chart-summary'></ul>"]
    for i, c in enumerate(data.charts):
        parts.append(f"<section class='chart-section' id='chart-{i}' data-name='{_e(c.name)}'>")
        if c.missing:
            parts.append(f"<h3>{_e(c.title)}</h3><p class='missing'>no data: {_e(c.missing)}</p>")
        else:
            parts.append(svg_chart(c))
        if c.notes:
            parts.append("<ul class='notes'>" + "".join(f"<li>{_e(n)}</li>" for n in c.notes) + "</ul>")
        if not c.missing:
            parts.append(f"<button type='button' class='toggle' data-target='data-{i}'>show data</button>")
            parts.append(_data_table(c, f"data-{i}"))
        parts.append("</section>")
    parts.append(f"<h2>most recent alerts ({len(data.alerts)})</h2>")
    if data.alerts:
        cols = ("time (UTC)", "severity", "kind", "model_version", "message", "attributes")
        parts.append("<table class='alerts'><tr>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>")
        for a in data.alerts:
            ts = datetime.fromtimestamp(a["ts_ms"] / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
            attrs = ", ".join(f"{k}={v}" for k, v in sorted((a.get("attributes") or {}).items()))
            cells = (ts, a.get("severity", ""), a.get("kind", ""), a.get("model_version", ""), a.get("message", ""),
                     attrs)
            parts.append(f"<tr class='{_e(a.get('severity', ''))}'>" + "".join(f"<td>{_e(x)}</td>" for x in cells)
                         + "</tr>")
        parts.append("</table>")
    else:
        parts.append("<p class='missing'>no data: no alerts</p>")
    parts += [f"<script>{SCRIPT}</script>", "</body></html>"]
    return "\n".join(parts) + "\n"


def chart_points(charts: Sequence[Chart]) -> dict[str, int]:
    return {c.name: c.points for c in charts}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="streamscore report", description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap", default="127.0.0.1:9092")
    ap.add_argument("--scores-topic", default="scores")
    ap.add_argument("--metrics-topic", default="model-metrics")
    ap.add_argument("--monitoring-topic", default="model-monitoring")
    ap.add_argument("--alerts-topic", default="alerts")
    ap.add_argument("--registry", type=Path, default=REGISTRY, help="model registry (reference score distributions)")
    ap.add_argument("--from-jsonl", type=Path, metavar="DIR",
                    help="read scores.jsonl, metrics.jsonl, monitoring.jsonl, alerts.jsonl from DIR instead of Kafka")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--timeout-s", type=float, default=60.0, help="per-topic read timeout")
    ap.add_argument("--alerts", type=int, default=20, metavar="N", help="most recent alerts listed")
    args = ap.parse_args(argv)

    inputs: list[int] | None = None
    if args.from_jsonl is not None:
        if not args.from_jsonl.is_dir():
            print(f"error: --from-jsonl {args.from_jsonl}: not a folder", file=sys.stderr)
            return 2
        recs, status, inputs = read_jsonl_dir(args.from_jsonl)
    else:
        topics = {name: getattr(args, opt) for name, _, _, opt in SOURCES}
        recs, status = read_topics(args.bootstrap, topics, args.timeout_s)
    for name, line in status.items():
        _log(f"{name}: {line}")
    if not any(recs.values()):
        where = str(args.from_jsonl) if args.from_jsonl is not None else f"Kafka at {args.bootstrap}"
        print(f"error: no records at all in {where}:\n  " + "\n  ".join(status.values()), file=sys.stderr)
        return 2
    refs, reg_status = load_references(args.registry)
    status["registry"] = reg_status
    _log(f"registry: {reg_status}")
    data = build_report(recs["scores"], recs["metrics"], recs["monitoring"], recs["alerts"], refs, inputs,
                        DriftThresholds(), args.alerts)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render_html(data, status))
    path = str(args.out)
    print(path)
    print(json.dumps({"html": path, "charts": chart_points(data.charts)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
