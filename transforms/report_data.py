"""Chart series for ``streamscore report``, from lists of decoded records (no Kafka).

Every builder returns a :class:`Chart`: named series of ``(x, y)`` points, optional
threshold lines and category labels, notes for the reader, and ``missing`` (why there is
nothing to draw) when the inputs hold no data for it. ``Chart.points`` is the number of
plotted data values (threshold lines are not data).

Inputs, as decoded from the topics (``schemas/*.avsc``):

- scores (``scored_result``): the broker append time of a record is read from its
  ``"_ts_ms"`` key (:data:`TS_KEY`, set by the reader); a record without one falls back to
  ``scored_at_ms`` (and a note says how many did). Shadow scores (``arm == "shadow"``)
  count for throughput and latency, not for the served-score distributions.
- model metrics (``model_metrics``; ``role = "group"`` rows feed fairness when the
  monitoring topic has no fairness records), monitoring (``monitoring``: ``drift`` and
  ``fairness`` kinds) and alerts (``alert``).

Time buckets are chosen so that a chart has at most ``max_buckets`` of them
(:func:`choose_bucket_ms`); a bucket's x is its start (epoch ms).

>>> recs = [{"_ts_ms": 1_000 + 100 * i, "fired_at_ms": 900 + 100 * i, "arm": "a"} for i in range(20)]
>>> c = throughput_chart(recs, bucket_ms=1000)
>>> c.series[0].points
((1000.0, 10.0), (2000.0, 10.0))
>>> latency_chart(recs, bucket_ms=1000).series[1].points[0]
(1000.0, 100.0)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import numpy as np

from transforms.drift import DriftThresholds
from transforms.fairness import FairnessPolicy, disparities

TS_KEY = "_ts_ms"  # broker append time of a score record (set by the reader)
SHADOW_ARM = "shadow"
DEFAULT_SCORE_EDGES = tuple(round(0.1 * i, 1) for i in range(1, 10))  # the drift reference's fixed score edges
NICE_BUCKETS_MS = (1_000, 2_000, 5_000, 10_000, 15_000, 30_000, 60_000, 120_000, 300_000, 600_000, 900_000,
                   1_800_000, 3_600_000, 7_200_000, 21_600_000, 43_200_000, 86_400_000)
FAIRNESS_STATS = ("mean_score", "positive_rate", "mean_score_ratio", "positive_rate_ratio")
SEVERITIES = ("critical", "warning", "info")


@dataclass(frozen=True)
class Series:
    name: str
    points: tuple[tuple[float, float], ...]
    style: str = "line"  # line (polyline and dots) | bar


@dataclass(frozen=True)
class Chart:
    name: str  # stable identifier (the JSON summary's key)
    title: str
    x_label: str
    y_label: str
    series: tuple[Series, ...] = ()
    x_kind: str = "time"  # time (epoch ms) | category (x is an index into categories)
    categories: tuple[str, ...] = ()
    thresholds: tuple[tuple[str, float], ...] = ()  # (label, y)
    notes: tuple[str, ...] = ()
    missing: str | None = None  # why there is nothing to plot
    bucket_ms: int | None = None

    @property
    def points(self) -> int:
        return 0 if self.missing else sum(len(s.points) for s in self.series)


def _missing(name: str, title: str, x_label: str, y_label: str, reason: str, **kw: Any) -> Chart:
    return Chart(name, title, x_label, y_label, missing=reason, **kw)


def _finite(x: Any) -> TypeGuard[int | float]:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def choose_bucket_ms(span_ms: float, max_buckets: int = 120) -> int:
    """The smallest round bucket (1 s .. 1 day, then whole days) giving at most
    ``max_buckets`` buckets over ``span_ms``, wherever the span starts.

    >>> choose_bucket_ms(30_000), choose_bucket_ms(600_000), choose_bucket_ms(3_600_000)
    (1000, 10000, 60000)
    """
    if max_buckets < 3:
        raise ValueError("max_buckets must be >= 3")
    for b in NICE_BUCKETS_MS:
        if span_ms // b + 2 <= max_buckets:  # unaligned, a span of k buckets touches k + 2 of them
            return b
    day = 86_400_000
    return max(1, math.ceil(span_ms / max(max_buckets - 2, 1) / day)) * day


def score_time(rec: Mapping[str, Any]) -> int | None:
    """The broker timestamp of a score record, else its ``scored_at_ms`` (None if neither)."""
    for key in (TS_KEY, "scored_at_ms"):
        v = rec.get(key)
        if _finite(v) and v > 0:
            return int(v)
    return None


def _bucket_of(ts: int, bucket_ms: int) -> int:
    return ts // bucket_ms * bucket_ms


def _resolve_bucket(times: Sequence[int], bucket_ms: int | None, max_buckets: int) -> int:
    if bucket_ms is not None:
        if bucket_ms <= 0:
            raise ValueError("bucket_ms must be positive")
        return bucket_ms
    return choose_bucket_ms(max(times) - min(times) if times else 0, max_buckets)


def _rate_points(times: Sequence[int], bucket_ms: int, lo: int, hi: int) -> tuple[tuple[float, float], ...]:
    counts: dict[int, int] = {}
    for t in times:
        b = _bucket_of(t, bucket_ms)
        counts[b] = counts.get(b, 0) + 1
    per_s = bucket_ms / 1000.0
    return tuple((float(b), counts.get(b, 0) / per_s) for b in range(lo, hi + 1, bucket_ms))


def _fallback_note(records: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    n = sum(1 for r in records if not (_finite(r.get(TS_KEY)) and r[TS_KEY] > 0))
    return (f"{n} score records carry no broker timestamp: scored_at_ms used",) if n else ()


def throughput_chart(scores: Sequence[Mapping[str, Any]], inputs_ts: Sequence[int] | None = None,
                     bucket_ms: int | None = None, max_buckets: int = 120) -> Chart:
    """Scores per second per time bucket (broker timestamp), and input records per second
    when ``inputs_ts`` (their timestamps) is given. Empty buckets between the first and
    the last count as 0; the first and last buckets may be partly covered."""
    title, xl, yl = "throughput", "broker time (UTC)", "records / s"
    st = [t for t in (score_time(r) for r in scores) if t is not None]
    it = [int(t) for t in (inputs_ts or ()) if _finite(t)]
    if not st and not it:
        return _missing("throughput", title, xl, yl, "no score records")
    allt = st + it
    b = _resolve_bucket(allt, bucket_ms, max_buckets)
    lo, hi = _bucket_of(min(allt), b), _bucket_of(max(allt), b)
    series = []
    if st:
        series.append(Series("scores/s", _rate_points(st, b, lo, hi)))
    if it:
        series.append(Series("inputs/s", _rate_points(it, b, lo, hi)))
    notes = list(_fallback_note(scores))
    if not st:
        notes.append("no score records: inputs only")
    if inputs_ts is None:
        notes.append("input counts not given: scores only")
    notes.append(f"{len(st)} scores" + (f", {len(it)} inputs" if it else "") + f"; bucket {b / 1000:g} s")
    return Chart("throughput", title, xl, yl, tuple(series), notes=tuple(notes), bucket_ms=b)


def latency_chart(scores: Sequence[Mapping[str, Any]], bucket_ms: int | None = None,
                  max_buckets: int = 120) -> Chart:
    """p50 and p99 of (broker timestamp - ``fired_at_ms``) in ms per time bucket (buckets
    without scores are left out; records without ``fired_at_ms`` are skipped)."""
    title, xl, yl = "latency (window fired -> score on the topic)", "broker time (UTC)", "ms"
    pairs = []
    for r in scores:
        t, f = score_time(r), r.get("fired_at_ms")
        if t is not None and _finite(f) and f > 0:
            pairs.append((t, float(t - f)))
    if not pairs:
        return _missing("latency", title, xl, yl, "no score records with fired_at_ms")
    b = _resolve_bucket([t for t, _ in pairs], bucket_ms, max_buckets)
    cells: dict[int, list[float]] = {}
    for t, lat in pairs:
        cells.setdefault(_bucket_of(t, b), []).append(lat)
    keys = sorted(cells)
    p50 = tuple((float(k), float(np.percentile(cells[k], 50))) for k in keys)
    p99 = tuple((float(k), float(np.percentile(cells[k], 99))) for k in keys)
    notes = (*_fallback_note(scores), f"{len(pairs)} scores; bucket {b / 1000:g} s")
    return Chart("latency", title, xl, yl, (Series("p50", p50), Series("p99", p99)), notes=notes, bucket_ms=b)


def psi_chart(monitoring: Sequence[Mapping[str, Any]], thresholds: DriftThresholds = DriftThresholds()) -> Chart:
    """PSI per feature (``psi.<feature>`` values of ``kind = "drift"`` records, the scores
    as ``prediction``) at each window end, with the warn/severe thresholds. Series are
    named by feature, and by ``feature [model]`` when records of several models are given."""
    title, xl, yl = "drift: PSI per feature", "window end (UTC)", "PSI"
    ths = (("warn", float(thresholds.psi_warn)), ("severe", float(thresholds.psi_severe)))
    drift = [r for r in monitoring if r.get("kind") == "drift" and isinstance(r.get("values"), Mapping)]
    models = {str(r.get("model", "")) for r in drift}
    cells: dict[str, dict[float, float]] = {}
    for r in drift:
        x = r.get("window_end_ms")
        if not _finite(x):
            continue
        for key, v in r["values"].items():
            if not str(key).startswith("psi.") or not _finite(v):
                continue
            name = str(key)[4:] + (f" [{r.get('model', '')}]" if len(models) > 1 else "")
            cells.setdefault(name, {})[float(x)] = float(v)
    if not cells:
        return _missing("psi", title, xl, yl, "no drift monitoring records with PSI values", thresholds=ths)
    series = tuple(Series(n, tuple(sorted(cells[n].items()))) for n in sorted(cells))
    worst = max((v, n) for n in cells for v in cells[n].values())
    notes = (f"{len(drift)} drift records; thresholds warn {thresholds.psi_warn:g}, severe {thresholds.psi_severe:g}",
             f"highest PSI {worst[0]:.3g} ({worst[1]})")
    return Chart("psi", title, xl, yl, series, thresholds=ths, notes=notes)


def _reference_prediction(ref: Any) -> tuple[list[float], list[float]] | None:
    """(interior edges, frequencies) of a registry entry's ``reference["prediction"]``, None
    when absent or malformed."""
    if not isinstance(ref, Mapping):
        return None
    pred = ref.get("prediction", ref if "edges" in ref else None)
    if not isinstance(pred, Mapping):
        return None
    edges, freqs = pred.get("edges"), pred.get("frequencies")
    if not isinstance(edges, list) or not isinstance(freqs, list) or len(edges) < 2:
        return None
    interior = edges[1:-1]
    if edges[0] is not None or edges[-1] is not None or not all(_finite(e) for e in interior):
        return None
    if any(b <= a for a, b in zip(interior, interior[1:], strict=False)) or len(freqs) != len(edges) - 1:
        return None
    if not all(_finite(f) and f >= 0 for f in freqs):
        return None
    return [float(e) for e in interior], [float(f) for f in freqs]


def bin_labels(interior: Sequence[float]) -> tuple[str, ...]:
    """Labels of right-closed bins over ``interior`` edges.

    >>> bin_labels([0.1, 0.5])
    ('<=0.1', '(0.1,0.5]', '>0.5')
    """
    if not interior:
        return ("all",)
    mid = [f"({a:g},{b:g}]" for a, b in zip(interior, interior[1:], strict=False)]
    return (f"<={interior[0]:g}", *mid, f">{interior[-1]:g}")


def served_histogram(scores: Iterable[float], interior: Sequence[float]) -> list[float]:
    """Share of ``scores`` per right-closed bin ``(e_i, e_i+1]`` (as the drift reference bins).

    >>> served_histogram([0.05, 0.1, 0.3, 0.7], [0.1, 0.5])
    [0.5, 0.25, 0.25]
    """
    s = np.asarray([x for x in scores if _finite(x)], dtype=np.float64)
    counts = np.bincount(np.searchsorted(np.asarray(interior, dtype=np.float64), s, side="left"),
                         minlength=len(interior) + 1)
    return (counts / max(s.size, 1)).tolist()


def model_ref(rec: Mapping[str, Any]) -> str:
    return f"{rec.get('model_name', '')}:{rec.get('model_version', '')}"


def score_distribution_charts(scores: Sequence[Mapping[str, Any]], references: Mapping[str, Any] | None = None,
                              ) -> list[Chart]:
    """One chart per ``model_name:model_version`` of the served scores (shadow excluded):
    the share of scores per bin, against the model's reference prediction distribution
    (``references[ref]``: a registry entry's ``reference`` dict, or its ``prediction``)
    when there is one, binned on the reference's edges (else 0.1 .. 0.9)."""
    xl, yl = "score bin", "share of scores"
    refs = references or {}
    by_model: dict[str, list[float]] = {}
    shadow = 0
    for r in scores:
        if r.get("arm") == SHADOW_ARM:
            shadow += 1
            continue
        by_model.setdefault(model_ref(r), []).append(r.get("score"))  # type: ignore[arg-type]
    if not by_model:
        reason = "no served score records" + (f" ({shadow} shadow scores only)" if shadow else "")
        return [_missing("score_distribution", "score distribution", xl, yl, reason, x_kind="category")]
    out = []
    for ref in sorted(by_model):
        vals = [v for v in by_model[ref] if _finite(v)]
        name, title = f"score_distribution {ref}", f"served score distribution: {ref}"
        if not vals:
            out.append(_missing(name, title, xl, yl, f"no finite scores of {ref}", x_kind="category"))
            continue
        pred = _reference_prediction(refs.get(ref))
        interior = pred[0] if pred else list(DEFAULT_SCORE_EDGES)
        served = served_histogram(vals, interior)
        series = [Series(f"served (n={len(vals)})", tuple((float(i), s) for i, s in enumerate(served)), "bar")]
        notes = []
        if pred:
            series.append(Series("reference", tuple((float(i), f) for i, f in enumerate(pred[1])), "line"))
        elif ref in refs:
            notes.append(f"the registry entry of {ref} has no (valid) reference prediction distribution")
        else:
            notes.append(f"{ref} is not in the registry: no reference distribution")
        notes.append(f"{len(vals)} served scores, mean {float(np.mean(vals)):.4f}")
        out.append(Chart(name, title, xl, yl, tuple(series), x_kind="category",
                         categories=bin_labels(interior), notes=tuple(notes)))
    return out


def _latest_fairness_monitoring(monitoring: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """{model: {"attr=group": {stat: value}}} from each model's latest fairness window."""
    fair = [r for r in monitoring if r.get("kind") == "fairness" and isinstance(r.get("values"), Mapping)
            and _finite(r.get("window_end_ms"))]
    latest: dict[str, float] = {}
    for r in fair:
        m = str(r.get("model", ""))
        latest[m] = max(latest.get(m, -math.inf), float(r["window_end_ms"]))
    out: dict[str, dict[str, dict[str, float]]] = {}
    for r in fair:
        m = str(r.get("model", ""))
        if float(r["window_end_ms"]) != latest[m]:
            continue
        for key, v in r["values"].items():
            stat, _, cell = str(key).partition(".")
            if "=" not in cell or stat not in FAIRNESS_STATS or not _finite(v):
                continue
            out.setdefault(m, {}).setdefault(cell, {})[stat] = float(v)
    return {m: cells for m, cells in out.items() if cells}


def _latest_fairness_metrics(metrics: Sequence[Mapping[str, Any]], policy: FairnessPolicy,
                             ) -> tuple[dict[str, dict[str, dict[str, float]]], bool]:
    """({model: {"attr=group": {stat: value}}} of each model's and attribute's latest
    evaluation window, whether the records carry ``above_threshold`` (without it, as from
    an older writer, there is no positive rate))."""
    group = [r for r in metrics if r.get("role") == "group" and "=" in str(r.get("arm", ""))
             and _finite(r.get("eval_window_start_ms")) and _finite(r.get("n"))]
    has_pos = any("above_threshold" in r for r in group)
    stats = FAIRNESS_STATS if has_pos else ("mean_score", "mean_score_ratio")
    by_model: dict[str, list[Mapping[str, Any]]] = {}
    for r in group:
        by_model.setdefault(model_ref(r), []).append(r)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for m, recs in by_model.items():
        try:
            rows = disparities(recs, policy)
        except (KeyError, TypeError, ValueError):
            continue
        latest: dict[str, int] = {}
        for row in rows:
            latest[row["attribute"]] = max(latest.get(row["attribute"], row["window_start_ms"]),
                                           row["window_start_ms"])
        for row in rows:
            if row["window_start_ms"] == latest[row["attribute"]]:
                cell = {st: float(row[st]) for st in stats if _finite(row[st])}
                if cell:
                    out.setdefault(m, {})[f"{row['attribute']}={row['group']}"] = cell
    return out, has_pos


def fairness_chart(monitoring: Sequence[Mapping[str, Any]], metrics: Sequence[Mapping[str, Any]] = (),
                   policy: FairnessPolicy = FairnessPolicy()) -> Chart:
    """Mean score, positive rate and their ratios to the best-served group, per
    ``attribute=group``, from the latest ``kind = "fairness"`` monitoring window of each
    model; when there are none, from the latest ``role = "group"`` model-metrics window
    of each model and attribute (``transforms.fairness.disparities``). Groups are
    prefixed by the model when there are several models."""
    title, xl, yl = "fairness per subgroup (latest window)", "attribute=group", "value"
    notes: list[str] = []
    by_model = _latest_fairness_monitoring(monitoring)
    if by_model:
        notes.append(f"from fairness monitoring records of {', '.join(sorted(by_model))}")
    else:
        by_model, has_pos = _latest_fairness_metrics(metrics, policy)
        if by_model:
            notes.append(f"from role=group model-metrics records of {', '.join(sorted(by_model))} "
                         "(no fairness monitoring records)")
            if not has_pos:
                notes.append("the metrics records carry no above_threshold count: positive rate not shown")
    cells = {f"{m} {cell}" if len(by_model) > 1 else cell: st for m in by_model for cell, st in by_model[m].items()}
    if not cells:
        return _missing("fairness", title, xl, yl, "no fairness monitoring records and no role=group model metrics",
                        x_kind="category")
    cats = tuple(sorted(cells))
    series = []
    for stat in FAIRNESS_STATS:
        pts = tuple((float(i), cells[c][stat]) for i, c in enumerate(cats) if stat in cells[c])
        if pts:
            series.append(Series(stat, pts, "bar"))
    return Chart("fairness", title, xl, yl, tuple(series), x_kind="category", categories=cats,
                 thresholds=(("min ratio", float(policy.min_ratio)),), notes=tuple(notes))


def recent_alerts(alerts: Sequence[Mapping[str, Any]], n: int = 20) -> list[dict[str, Any]]:
    """The ``n`` most recent alerts (by ``ts_ms``), newest first."""
    ok = [dict(a) for a in alerts if _finite(a.get("ts_ms"))]
    return sorted(ok, key=lambda a: -a["ts_ms"])[:max(n, 0)]


def alerts_chart(alerts: Sequence[Mapping[str, Any]], bucket_ms: int | None = None, max_buckets: int = 60) -> Chart:
    """Alerts per time bucket, one series per severity (buckets with none are left out)."""
    title, xl, yl = "alerts over time", "alert time (UTC)", "alerts per bucket"
    ok = [a for a in alerts if _finite(a.get("ts_ms"))]
    if not ok:
        return _missing("alerts", title, xl, yl, "no alerts")
    b = _resolve_bucket([int(a["ts_ms"]) for a in ok], bucket_ms, max_buckets)
    cells: dict[str, dict[int, int]] = {}
    for a in ok:
        sev = str(a.get("severity") or "unknown")
        k = _bucket_of(int(a["ts_ms"]), b)
        cells.setdefault(sev, {})[k] = cells.setdefault(sev, {}).get(k, 0) + 1
    order = [s for s in SEVERITIES if s in cells] + sorted(s for s in cells if s not in SEVERITIES)
    series = tuple(Series(s, tuple((float(k), float(v)) for k, v in sorted(cells[s].items()))) for s in order)
    return Chart("alerts", title, xl, yl, series, notes=(f"{len(ok)} alerts; bucket {b / 1000:g} s",), bucket_ms=b)


@dataclass(frozen=True)
class ReportData:
    charts: tuple[Chart, ...]
    alerts: tuple[dict[str, Any], ...] = ()
    counts: dict[str, int] = field(default_factory=dict)


def build_report(scores: Sequence[Mapping[str, Any]] = (), metrics: Sequence[Mapping[str, Any]] = (),
                 monitoring: Sequence[Mapping[str, Any]] = (), alerts: Sequence[Mapping[str, Any]] = (),
                 references: Mapping[str, Any] | None = None, inputs_ts: Sequence[int] | None = None,
                 thresholds: DriftThresholds = DriftThresholds(), n_alerts: int = 20) -> ReportData:
    """Every chart of the report, in page order, and the most recent ``n_alerts`` alerts."""
    charts = [throughput_chart(scores, inputs_ts), latency_chart(scores), psi_chart(monitoring, thresholds),
              *score_distribution_charts(scores, references), fairness_chart(monitoring, metrics),
              alerts_chart(alerts)]
    counts = {"scores": len(scores), "metrics": len(metrics), "monitoring": len(monitoring), "alerts": len(alerts)}
    if inputs_ts is not None:
        counts["inputs"] = len(inputs_ts)
    return ReportData(tuple(charts), tuple(recent_alerts(alerts, n_alerts)), counts)
