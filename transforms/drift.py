"""Feature and prediction drift against the training reference (PSI, KS, missing rate,
mean shift, prediction confidence), offline or streaming per event-time window.

Reference (``build_reference``, JSON, stored in ``ModelEntry.reference``): per feature
and for the scores (key ``"prediction"``) ``edges`` (``[null, e1, .., ek, null]``: the
outer edges -inf/+inf are stored as ``null``; interior edges are training quantiles,
deduplicated by ``np.unique``, so a constant feature has one edge; scores use fixed
edges 0.1 .. 0.9), ``frequencies`` per bin, ``n`` (rows), ``n_valid``, ``missing_rate``,
``mean``, ``variance`` (population) and ``quantiles`` (``n_quantiles`` evenly spaced
quantiles of the non-missing values, the KS comparison sample). Bins are right-closed:
``(e_i, e_i+1]``, so a point mass at a quantile falls in the bin that quantile closes.
Missing means not a value a model input can hold: NaN, +-inf, or beyond float32's range
(``|v| > VALUE_LIMIT``, such as 1e100; scoring falls such rows back as
``feature_out_of_range``); bins, moments and samples use the rest, so one extreme value
never overflows a window's sums.

Statistics: PSI ``sum((a - b) ln(a / b))`` over bin shares, each floored at
``PSI_EPSILON`` and renormalised (empty bins would be infinite), computed as
``entropy(a, b) + entropy(b, a)`` (symmetrised Kullback-Leibler, ``scipy.stats``); KS is
``scipy.stats.ks_2samp(window sample, reference quantiles)`` (the p-value treats the
sketch as an ``n_quantiles`` sample, so it is conservative); ``missing_delta`` is the
window's missing rate minus the reference's; ``mean_shift_sd`` is the mean difference
in reference standard deviations (raw units when the reference is constant).
Confidence: the share of scores within 0.1 of 0.5 and the mean binary entropy (nats).

>>> rng = np.random.default_rng(0)
>>> x, p = rng.normal(size=(2000, 2)), rng.uniform(size=2000)
>>> ref = build_reference(x, p, ["a", "b"])
>>> shifted = x + [0.0, 2.0]
>>> [(a["feature"], a["statistic"], a["severity"]) for a in offline_drift(shifted, p, ref)["alerts"]]
[('b', 'psi', 'critical'), ('b', 'ks', 'critical')]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.special import entr
from scipy.stats import entropy, ks_2samp

SCHEMA = 1
PREDICTION = "prediction"
PSI_EPSILON = 1e-4  # floor of a bin share before renormalising (PSI of an empty bin)
VALUE_LIMIT = float(np.finfo(np.float32).max)  # larger magnitudes count as missing
SAMPLE_SIZE = 5000  # reservoir values kept per column and window for KS
NEAR_HALF = 0.1  # |p - 0.5| < NEAR_HALF counts as an unconfident score


class DriftError(ValueError):
    """Bad reference statistics or inputs of the wrong shape."""


def _present(v: np.ndarray) -> np.ndarray:
    """Not missing: finite and within ``VALUE_LIMIT`` (False for NaN and +-inf)."""
    return np.abs(v) <= VALUE_LIMIT


def _column_reference(v: np.ndarray, interior: np.ndarray | None, n_bins: int, n_quantiles: int) -> dict[str, Any]:
    ok = v[_present(v)]
    if interior is None:
        interior = np.unique(np.quantile(ok, np.linspace(0, 1, n_bins + 1)[1:-1])) if ok.size else np.empty(0)
    counts = np.bincount(np.searchsorted(interior, ok, side="left"), minlength=interior.size + 1)
    return {"edges": [None, *(float(e) for e in interior), None],
            "frequencies": (counts / max(ok.size, 1)).tolist(), "n": int(v.size), "n_valid": int(ok.size),
            "missing_rate": float(1 - ok.size / v.size) if v.size else 0.0,
            "mean": float(ok.mean()) if ok.size else 0.0, "variance": float(ok.var()) if ok.size else 0.0,
            "quantiles": np.quantile(ok, np.linspace(0, 1, n_quantiles)).tolist() if ok.size else []}


def _confidence(s: np.ndarray) -> tuple[int, int, float]:
    """(n, count near 0.5, sum of binary entropies) of the finite scores."""
    s = s[np.isfinite(s)]
    return int(s.size), int(np.count_nonzero(np.abs(s - 0.5) < NEAR_HALF)), float((entr(s) + entr(1 - s)).sum())


def _check_shapes(x: Any, scores: Any, n_features: int) -> tuple[np.ndarray, np.ndarray]:
    xa = np.asarray(x, dtype=np.float64)
    sa = np.asarray(scores, dtype=np.float64).reshape(-1)
    if xa.size == 0 and xa.ndim < 2:
        xa = xa.reshape(0, n_features)
    if xa.ndim != 2 or xa.shape[1] != n_features or xa.shape[0] != sa.size:
        raise DriftError(f"want x [n, {n_features}] and scores [n]; got {xa.shape} and {sa.shape}")
    return xa, sa


def build_reference(x: np.ndarray, scores: np.ndarray, feature_names: Sequence[str], n_bins: int = 10,
                    n_quantiles: int = 256) -> dict[str, Any]:
    """JSON-serialisable training reference of the columns of ``x`` and the ``scores``."""
    names = list(feature_names)
    if n_bins < 2 or n_quantiles < 2:
        raise DriftError("n_bins and n_quantiles must be >= 2")
    if len(set(names)) != len(names) or PREDICTION in names:
        raise DriftError(f"feature names must be unique and not {PREDICTION!r}")
    xa, sa = _check_shapes(x, scores, len(names))
    if not xa.shape[0]:
        raise DriftError("no rows to build a reference from")
    n, near, ent = _confidence(sa)
    return {"schema": SCHEMA, "n": int(xa.shape[0]), "n_bins": n_bins, "n_quantiles": n_quantiles,
            "feature_names": names,
            "features": {f: _column_reference(xa[:, j], None, n_bins, n_quantiles) for j, f in enumerate(names)},
            PREDICTION: {**_column_reference(sa, np.linspace(0, 1, n_bins + 1)[1:-1], n_bins, n_quantiles),
                         "binning": "fixed"},
            "confidence": {"near_half_share": near / n if n else 0.0, "mean_entropy": ent / n if n else 0.0}}


def _columns(reference: dict[str, Any]) -> list[dict[str, Any]]:
    """The reference columns, features then prediction, validated."""
    if not isinstance(reference, dict) or reference.get("schema") != SCHEMA:
        raise DriftError(f"reference statistics missing or not schema {SCHEMA}")
    try:
        cols = [reference["features"][f] for f in reference["feature_names"]] + [reference[PREDICTION]]
        for c in cols:
            if len(c["frequencies"]) != len(c["edges"]) - 1 or len(c["edges"]) < 2:
                raise DriftError("reference edges and frequencies disagree")
            if not all(isinstance(c[k], int | float) for k in ("mean", "variance", "missing_rate")):
                raise DriftError("reference mean, variance and missing_rate must be numbers")
            if not isinstance(c["quantiles"], list):
                raise DriftError("reference quantiles must be a list")
    except (KeyError, TypeError) as exc:
        raise DriftError(f"malformed reference statistics: missing {exc}") from exc
    return cols


class DriftWindow:
    """Mergeable accumulator of one window against a reference: per column (features,
    then the scores) bin counts, missing and valid counts, sum and sum of squares, a
    bounded uniform sample, and the confidence sums of the scores.

    The sample is bottom-k: each row draws a uniform key from the seeded generator and a
    column keeps its ``sample_size`` values with the smallest keys. That is a uniform
    sample without replacement, deterministic for a seed and the same ``add`` calls,
    and exactly the window's values while it holds at most ``sample_size``. ``merge``
    adds the counts and sums (equal to adding the rows in sequence) and keeps the
    smallest keys of both samples: a uniform sample of the union (equal to the
    sequential one while everything fits; otherwise drawn from other keys).
    """

    def __init__(self, reference: dict[str, Any], sample_size: int = SAMPLE_SIZE, seed: int = 0) -> None:
        cols = _columns(reference)
        if sample_size < 1:
            raise DriftError("sample_size must be >= 1")
        self.reference = reference
        self.feature_names: tuple[str, ...] = tuple(reference["feature_names"])
        self.sample_size = sample_size
        self.edges = [np.asarray(c["edges"][1:-1], dtype=np.float64) for c in cols]
        self.counts = [np.zeros(e.size + 1, dtype=np.int64) for e in self.edges]
        k = len(cols)
        self.n = 0
        self.n_valid = np.zeros(k, dtype=np.int64)
        self.sums = np.zeros(k)
        self.sumsq = np.zeros(k)
        self.sample_keys = [np.empty(0) for _ in range(k)]
        self.samples = [np.empty(0) for _ in range(k)]
        self.n_conf = self.near_half = 0
        self.entropy_sum = 0.0
        self._rng = np.random.default_rng(seed)

    def _keep(self, j: int, keys: np.ndarray, values: np.ndarray) -> None:
        keys, values = np.concatenate([self.sample_keys[j], keys]), np.concatenate([self.samples[j], values])
        if keys.size > self.sample_size:
            sel = np.argpartition(keys, self.sample_size - 1)[: self.sample_size]
            keys, values = keys[sel], values[sel]
        self.sample_keys[j], self.samples[j] = keys, values

    def add(self, x: np.ndarray, scores: np.ndarray) -> DriftWindow:
        xa, sa = _check_shapes(x, scores, len(self.feature_names))
        cols = np.column_stack([xa, sa])
        keys = self._rng.random(cols.shape[0])
        ok = _present(cols)
        self.n += cols.shape[0]
        self.n_valid += ok.sum(axis=0)
        for j, edges in enumerate(self.edges):
            v = cols[ok[:, j], j]
            self.counts[j] += np.bincount(np.searchsorted(edges, v, side="left"), minlength=edges.size + 1)
            self.sums[j] += v.sum()
            self.sumsq[j] += np.square(v).sum()
            self._keep(j, keys[ok[:, j]], v)
        n, near, ent = _confidence(sa)
        self.n_conf, self.near_half, self.entropy_sum = self.n_conf + n, self.near_half + near, self.entropy_sum + ent
        return self

    def merge(self, other: DriftWindow) -> DriftWindow:
        if other.feature_names != self.feature_names or any(
                a.shape != b.shape or not np.array_equal(a, b) for a, b in zip(self.edges, other.edges, strict=True)):
            raise DriftError("cannot merge drift windows of different references")
        self.n += other.n
        self.n_valid += other.n_valid
        self.sums += other.sums
        self.sumsq += other.sumsq
        for j in range(len(self.edges)):
            self.counts[j] += other.counts[j]
            self._keep(j, other.sample_keys[j], other.samples[j])
        self.n_conf += other.n_conf
        self.near_half += other.near_half
        self.entropy_sum += other.entropy_sum
        return self

    def result(self) -> DriftReport:
        return drift_stats(self, self.reference)


@dataclass(frozen=True)
class ColumnDrift:
    n: int
    n_valid: int
    psi: float
    ks: float
    ks_pvalue: float
    missing_rate: float
    missing_delta: float
    mean: float
    mean_shift_sd: float


@dataclass(frozen=True)
class DriftReport:
    n: int
    empty: bool  # no rows: every statistic is 0 (p-values 1)
    features: dict[str, ColumnDrift]
    prediction: ColumnDrift
    confidence: dict[str, float]

    def columns(self) -> dict[str, ColumnDrift]:
        return {**self.features, PREDICTION: self.prediction}


def psi(a: np.ndarray | Sequence[float], b: np.ndarray | Sequence[float], eps: float = PSI_EPSILON) -> float:
    """Population stability index of bin shares ``a`` vs ``b`` (floored at ``eps``, renormalised).

    >>> round(psi([0.5, 0.5], [0.9, 0.1]), 4)
    0.8789
    """
    pa, pb = np.maximum(np.asarray(a, dtype=np.float64), eps), np.maximum(np.asarray(b, dtype=np.float64), eps)
    pa, pb = pa / pa.sum(), pb / pb.sum()
    return float(entropy(pa, pb) + entropy(pb, pa))


def _column_drift(w: DriftWindow, j: int, ref: dict[str, Any]) -> ColumnDrift:
    n, nv = w.n, int(w.n_valid[j])
    missing_rate = 1 - nv / n if n else 0.0
    missing_delta = missing_rate - float(ref["missing_rate"]) if n else 0.0
    if not nv:
        return ColumnDrift(n, 0, 0.0, 0.0, 1.0, missing_rate, missing_delta, 0.0, 0.0)
    mean = float(w.sums[j] / nv)
    sd = float(np.sqrt(float(ref["variance"])))
    ks, p = 0.0, 1.0
    if ref["quantiles"]:
        res = ks_2samp(w.samples[j], np.asarray(ref["quantiles"], dtype=np.float64))
        ks, p = float(res.statistic), float(res.pvalue)
    return ColumnDrift(n, nv, psi(w.counts[j] / nv, ref["frequencies"]), ks, p, missing_rate, missing_delta,
                       mean, (mean - float(ref["mean"])) / (sd if sd > 0 else 1.0))


def drift_stats(window: DriftWindow, reference: dict[str, Any]) -> DriftReport:
    """The window's statistics against ``reference``; never NaN, all zeros when empty."""
    cols = _columns(reference)
    if len(cols) != len(window.edges) or any(len(c["edges"]) - 2 != e.size for c, e in zip(cols, window.edges,
                                                                                            strict=True)):
        raise DriftError("window and reference have different bins")
    drifts = [_column_drift(window, j, c) for j, c in enumerate(cols)]
    conf = reference.get("confidence", {})
    m = window.n_conf
    confidence = {"n": m, "near_half_share": window.near_half / m if m else 0.0,
                  "mean_entropy": window.entropy_sum / m if m else 0.0,
                  "reference_near_half_share": float(conf.get("near_half_share", 0.0)),
                  "reference_mean_entropy": float(conf.get("mean_entropy", 0.0))}
    return DriftReport(window.n, window.n == 0, dict(zip(window.feature_names, drifts[:-1], strict=True)),
                       drifts[-1], confidence)


@dataclass(frozen=True)
class DriftThresholds:
    """Alert when a statistic exceeds (``>``) a threshold; ``missing_warn`` bounds the
    absolute missing-rate change (warnings only). Columns with fewer than ``min_count``
    rows (non-missing values for PSI and KS) raise nothing; ``retrain_after_windows``
    consecutive breached windows of one column ask for a retrain."""

    psi_warn: float = 0.1
    psi_severe: float = 0.25
    ks_warn: float = 0.1
    ks_severe: float = 0.25
    missing_warn: float = 0.05
    min_count: int = 200
    retrain_after_windows: int = 3

    def __post_init__(self) -> None:
        if not 0 <= self.psi_warn <= self.psi_severe or not 0 <= self.ks_warn <= self.ks_severe <= 1:
            raise ValueError("need 0 <= psi_warn <= psi_severe and 0 <= ks_warn <= ks_severe <= 1")
        if not 0 <= self.missing_warn <= 1:
            raise ValueError("missing_warn must be in [0, 1]")
        if self.min_count < 0 or self.retrain_after_windows < 1:
            raise ValueError("min_count must be >= 0 and retrain_after_windows >= 1")


def classify(report: DriftReport, thresholds: DriftThresholds = DriftThresholds()) -> list[dict[str, Any]]:
    """One alert per breached statistic and column (``"prediction"`` for the scores)."""
    t, out = thresholds, []
    for name, c in report.columns().items():
        checks: list[tuple[str, float, float, float, float | None, int]] = [
            ("psi", c.psi, c.psi, t.psi_warn, t.psi_severe, c.n_valid),
            ("ks", c.ks, c.ks, t.ks_warn, t.ks_severe, c.n_valid),
            ("missing_rate", c.missing_delta, abs(c.missing_delta), t.missing_warn, None, c.n)]
        for stat, value, size, warn, severe, count in checks:
            if not count or count < t.min_count or size <= warn:
                continue
            crit = severe is not None and size > severe
            out.append({"feature": name, "statistic": stat, "value": value,
                        "threshold": severe if crit else warn, "severity": "critical" if crit else "warning"})
    return out


def _record(report: DriftReport, alerts: list[dict[str, Any]], start: int | None, end: int | None,
            model: str) -> dict[str, Any]:
    return {"kind": "drift", "window_start_ms": start, "window_end_ms": end, "model": model, "n": report.n,
            "empty": report.empty, "features": {f: asdict(c) for f, c in report.features.items()},
            "prediction": asdict(report.prediction), "confidence": dict(report.confidence), "alerts": alerts,
            "severe": any(a["severity"] == "critical" for a in alerts)}


def offline_drift(x: np.ndarray, scores: np.ndarray, reference: dict[str, Any],
                  thresholds: DriftThresholds = DriftThresholds(), model_ref: str = "",
                  sample_size: int = SAMPLE_SIZE, seed: int = 0) -> dict[str, Any]:
    """A drift record (``window_start_ms``/``window_end_ms`` null) for a whole dataset."""
    report = DriftWindow(reference, sample_size, seed).add(x, scores).result()
    return _record(report, classify(report, thresholds), None, None, model_ref)


class DriftMonitor:
    """Streaming drift per monitoring window ``[k * window_ms, (k + 1) * window_ms)`` of
    the rows' ``window_end_ms`` (``update/flush``).

    The monitoring windows within ``warmup_ms`` of the first row's window are skipped
    (counted in ``warmup_rows``): after a cold start the longest feature windows are
    still filling, which the training reference (steady state) never saw.

    A window completes when rows of a window more than ``lag_windows`` later arrive (or
    on ``flush``); the lag keeps rows that reach the operator out of window order (the
    job's outer join emits the rows without a click window a little later) in their
    window. Its record
    is the ``offline_drift`` record of its rows with its bounds and the model. Rows of a
    window that has already completed are late: dropped and counted in ``late_rows``.
    Windows without rows emit nothing. A column breached (any alert) in
    ``retrain_after_windows`` consecutive complete windows yields one ``retrain`` record
    per streak; a window where it is evaluated (``n >= min_count``) without an alert
    ends the streak, one too small to evaluate neither extends nor ends it. Without a
    (valid) reference the monitor is disabled: one ``monitoring_disabled`` record, then
    nothing, and it never raises.
    """

    def __init__(self, reference: dict[str, Any] | None, thresholds: DriftThresholds = DriftThresholds(),
                 window_ms: int = 60_000, model_ref: str = "", sample_size: int = SAMPLE_SIZE,
                 seed: int = 0, lag_windows: int = 0, warmup_ms: int = 0) -> None:
        if window_ms <= 0 or lag_windows < 0 or warmup_ms < 0:
            raise ValueError("window_ms must be > 0, lag_windows and warmup_ms >= 0")
        self.lag_windows = lag_windows
        self.warmup_ms = warmup_ms
        self.monitored_from: int | None = None  # the first monitoring window past the warm-up
        self.warmup_rows = 0
        self.reference: dict[str, Any] = reference or {}
        self.thresholds, self.window_ms, self.model_ref = thresholds, window_ms, model_ref
        self.sample_size, self.seed = sample_size, seed
        self.disabled_reason = "" if reference else "no reference statistics"
        if reference:
            try:
                _columns(reference)
            except DriftError as exc:
                self.disabled_reason = f"invalid reference statistics: {exc}"
        self._announced = False
        self.open: dict[int, DriftWindow] = {}
        self.current: int | None = None  # the latest monitoring window seen
        self.late_rows = 0
        self._streaks: dict[str, list[Any]] = {}  # column -> [count, first window start, retrain emitted]

    def update(self, window_end_ms: Sequence[int] | np.ndarray, x: np.ndarray,
               scores: np.ndarray) -> list[dict[str, Any]]:
        if self.disabled_reason:
            if self._announced:
                return []
            self._announced = True
            return [{"kind": "monitoring_disabled", "model": self.model_ref, "reason": self.disabled_reason}]
        ends = np.asarray(window_end_ms, dtype=np.int64).reshape(-1)
        ks = ends // self.window_ms
        xa, sa = _check_shapes(x, scores, len(self.reference["feature_names"]))
        if ks.size != sa.size:
            raise DriftError(f"{ks.size} window ends for {sa.size} rows")
        if self.monitored_from is None and ks.size:
            first = int(ends.min())
            self.monitored_from = (first - first % self.window_ms + self.warmup_ms) // self.window_ms
        for k in np.unique(ks).tolist():
            rows = ks == k
            if self.monitored_from is not None and k < self.monitored_from:
                self.warmup_rows += int(rows.sum())  # long windows still filling: not what serving looks like
                continue
            if self.current is not None and k < self.current - self.lag_windows:
                self.late_rows += int(rows.sum())
                continue
            if k not in self.open:
                self.open[k] = DriftWindow(self.reference, self.sample_size, self.seed)
            self.open[k].add(xa[rows], sa[rows])
            self.current = k if self.current is None else max(self.current, k)
        return self._complete([k for k in self.open if k < (self.current or 0) - self.lag_windows])

    def flush(self) -> list[dict[str, Any]]:
        """Complete the open window(s)."""
        return self._complete(list(self.open))

    def _complete(self, keys: list[int]) -> list[dict[str, Any]]:
        out = []
        for k in sorted(keys):
            report = self.open.pop(k).result()
            alerts = classify(report, self.thresholds)
            start, end = k * self.window_ms, (k + 1) * self.window_ms
            out.append(_record(report, alerts, start, end, self.model_ref))
            retrain = self._track(report, {a["feature"] for a in alerts}, start)
            if retrain:
                from_ms = min(self._streaks[f][1] for f in retrain)
                out.append({"kind": "retrain", "features": retrain, "from_ms": from_ms, "to_ms": end,
                            "model": self.model_ref,
                            "reason": f"drift alerts on {', '.join(retrain)} in "
                                      f"{self.thresholds.retrain_after_windows} consecutive windows"})
        return out

    def _track(self, report: DriftReport, breached: set[str], start: int) -> list[str]:
        due = []
        for name, c in report.columns().items():
            s = self._streaks.setdefault(name, [0, None, False])
            if name in breached:
                s[0], s[1] = s[0] + 1, start if s[0] == 0 else s[1]
                if s[0] >= self.thresholds.retrain_after_windows and not s[2]:
                    s[2] = True
                    due.append(name)
            elif c.n and c.n >= self.thresholds.min_count:
                self._streaks[name] = [0, None, False]
        return due
