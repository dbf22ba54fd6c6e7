"""Online experiment analysis over ``model-metrics`` records (schemas/model_metrics.v1.avsc).

A record holds sufficient statistics of one model in one arm over one evaluation window
(counts, sums of scores, of per-score log loss and of its square, binned AUC counts), so
windows merge by adding them, exactly as if computed on the concatenated scores.

Decision rule of ``compare`` (control vs treatment):

* primary metric: mean log loss, lower is better; ``lift = (control - treatment) /
  control``. Welch's t test on the per-score log loss from the sufficient statistics
  (``scipy.stats.ttest_ind_from_stats``, equal_var=False); the (1 - alpha) interval is the
  difference's (Welch-Satterthwaite df) divided by the control mean, whose own, much
  smaller, uncertainty is ignored.
* guardrails, treatment not worse than control by more than a tolerance: ``|calibration
  - 1|`` (absolute), batch p99 latency (relative, unless within ``latency_budget_ms``), fallback rate
  (absolute); the estimated ones fail only when the excess over the tolerance is
  significant (one-sided, at ``alpha``); one whose inputs are missing is not evaluated
  (``passed is None``) and fails nothing.
* verdict: ``promote`` if significantly better (p < alpha, lift > 0) and no guardrail
  failed; ``rollback`` if significantly worse or a guardrail failed; else ``keep`` (not
  significant: nothing declared). n < 2 in an arm or zero variance: ``keep``, note "not
  enough data". Several treatments are each tested at ``alpha`` (no multiplicity fix).

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> p = rng.uniform(0.05, 0.5, 4000)
>>> y = rng.random(4000) < p
>>> good = metrics_record("treatment", "served", "gbdt:v2", 0, p, y)
>>> bad = metrics_record("control", "served", "gbdt:v1", 0, np.full(4000, 0.6), y)
>>> rep = report([good, bad])
>>> rep.control, rep.comparisons["treatment"].verdict
('control', 'promote')
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from transforms.online_eval import N_AUC_BINS, binned_auc, logloss_terms, score_histogram

NAN = float("nan")
Key = tuple[str, str, str]  # (arm, model_ref, role)
_COUNTS = ("n", "positives", "fallback_count", "unattributed_clicks")  # the last two optional
_SUMS = ("sum_score", "sum_logloss", "sum_logloss_sq")


class ExperimentError(ValueError):
    """Records that cannot be analysed (missing keys, bad bins, no served arm, ...)."""


def model_ref(rec: Mapping[str, Any]) -> str:
    """``name:version``, the registry's model reference."""
    return f"{rec['model_name']}:{rec['model_version']}"


def _div(a: float, b: float) -> float:
    return a / b if b and math.isfinite(b) else NAN


@dataclass
class ArmStats:
    """Merged totals of every window of one (arm, model ref, role). ``batch_ms_p99`` is the
    batch-count-weighted mean of the per-window p99s (what the latency guardrail uses: one
    slow window does not decide it); ``batch_ms_p99_max`` is the worst window's p99."""

    arm: str
    model_ref: str
    role: str
    n: int = 0
    positives: int = 0
    sum_score: float = 0.0
    sum_logloss: float = 0.0
    sum_logloss_sq: float = 0.0
    auc_bins_pos: np.ndarray = field(default_factory=lambda: np.zeros(N_AUC_BINS, np.int64))
    auc_bins_neg: np.ndarray = field(default_factory=lambda: np.zeros(N_AUC_BINS, np.int64))
    fallback_count: int = 0
    batch_count: int = 0
    p99_weighted_sum: float = 0.0
    batch_ms_p99_max: float = NAN
    unattributed_clicks: int = 0
    window_starts: set[int] = field(default_factory=set)

    def add(self, rec: Mapping[str, Any]) -> None:
        """Add one ``model-metrics`` record (one window)."""
        try:
            pos, neg = (np.asarray(rec[k], dtype=np.int64) for k in ("auc_bins_pos", "auc_bins_neg"))
            counts = [int(rec[k] if i < 2 else rec.get(k, 0)) for i, k in enumerate(_COUNTS)]
            sums = [float(rec[k]) for k in _SUMS]
            batches, p99 = int(rec.get("batch_count", 0)), float(rec.get("batch_ms_p99", NAN))
            start = int(rec["eval_window_start_ms"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ExperimentError(f"bad model-metrics record: {type(exc).__name__}: {exc}") from exc
        if pos.shape != (N_AUC_BINS,) or neg.shape != (N_AUC_BINS,):
            raise ExperimentError(f"auc bins of shape {pos.shape}/{neg.shape}, want ({N_AUC_BINS},) "
                                  "(transforms.online_eval.AUC_BIN_EDGES)")
        if not 0 <= counts[1] <= counts[0]:
            raise ExperimentError(f"bad model-metrics record: n={counts[0]}, positives={counts[1]}")
        self.auc_bins_pos = self.auc_bins_pos + pos
        self.auc_bins_neg = self.auc_bins_neg + neg
        for k, v in zip(_COUNTS + _SUMS, counts + sums, strict=True):
            setattr(self, k, getattr(self, k) + v)
        if batches > 0 and math.isfinite(p99):
            self.batch_count += batches
            self.p99_weighted_sum += batches * p99
            self.batch_ms_p99_max = p99 if math.isnan(self.batch_ms_p99_max) else max(self.batch_ms_p99_max, p99)
        self.window_starts.add(start)

    @property
    def windows(self) -> int:
        return len(self.window_starts)

    @property
    def ctr(self) -> float:
        return _div(self.positives, self.n)

    @property
    def mean_score(self) -> float:
        return _div(self.sum_score, self.n)

    @property
    def calibration(self) -> float:
        """Mean score / CTR (1 is calibrated); NaN without positives."""
        return _div(self.mean_score, self.ctr) if math.isfinite(self.ctr) else NAN

    @property
    def mean_logloss(self) -> float:
        return _div(self.sum_logloss, self.n)

    @property
    def logloss_var(self) -> float:
        """Sample variance (n - 1) of the per-score log loss; NaN for n < 2."""
        if self.n < 2:
            return NAN
        return max((self.sum_logloss_sq - self.sum_logloss**2 / self.n) / (self.n - 1), 0.0)

    @property
    def auc(self) -> float:
        return binned_auc(self.auc_bins_pos, self.auc_bins_neg)

    @property
    def fallback_rate(self) -> float:
        return _div(self.fallback_count, self.n)

    @property
    def batch_ms_p99(self) -> float:
        return _div(self.p99_weighted_sum, self.batch_count)

    def to_dict(self) -> dict[str, Any]:
        names = ("arm", "model_ref", "role", "n", "positives", "windows", "ctr", "auc", "mean_score", "calibration",
                 "mean_logloss", "logloss_var", "fallback_rate", "batch_ms_p99", "batch_ms_p99_max")
        return _clean({"model" if k == "model_ref" else k: getattr(self, k) for k in names}
                      | {"first_window_ms": min(self.window_starts, default=None),
                         "last_window_ms": max(self.window_starts, default=None)})


def dedupe(records: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Drop exact repeats of a record (same topic key, role, ``emitted_at_ms`` and sums:
    a producer retry of the at-least-once metrics output). Distinct records of one key
    are kept and added up: the evaluator emits late scores of an already emitted window
    as a further record of that window."""
    seen: set[tuple[Any, ...]] = set()
    out = []
    try:
        for rec in records:
            k = (str(rec["arm"]), model_ref(rec), str(rec.get("role", "served")), int(rec["eval_window_start_ms"]),
                 rec.get("emitted_at_ms"), int(rec["n"]), float(rec["sum_logloss"]), float(rec["sum_score"]),
                 int(rec.get("batch_count", 0)), int(rec.get("fallback_count", 0)))
            if k not in seen:
                seen.add(k)
                out.append(rec)
    except (KeyError, TypeError, ValueError) as exc:
        raise ExperimentError(f"bad model-metrics record: {type(exc).__name__}: {exc}") from exc
    return out


def aggregate(records: Iterable[Mapping[str, Any]]) -> dict[Key, ArmStats]:
    """Merged stats keyed by ``(arm, model_ref, role)``: an arm whose model changed during
    the experiment keeps one entry per model. Records are first ``dedupe``d."""
    out: dict[Key, ArmStats] = {}
    for rec in dedupe(records):
        key = (str(rec["arm"]), model_ref(rec), str(rec.get("role", "served")))
        if key not in out:
            out[key] = ArmStats(*key)
        out[key].add(rec)
    return out


@dataclass
class Guardrail:
    """``change`` is how much worse the treatment is (positive = worse)."""

    name: str
    control: float
    treatment: float
    change: float
    tolerance: float
    passed: bool | None  # None: not evaluated (missing data)

    def to_dict(self) -> dict[str, Any]:
        return _clean(dict(self.__dict__))


@dataclass
class Comparison:
    control: ArmStats
    treatment: ArmStats
    alpha: float
    diff: float  # control - treatment mean log loss: positive = treatment better
    diff_ci: tuple[float, float]
    lift: float
    ci: tuple[float, float]
    t_stat: float
    df: float
    p_value: float
    significant: bool
    verdict: str
    guardrails: list[Guardrail] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        c, t = self.control, self.treatment
        out = {k: getattr(self, k) for k in ("alpha", "diff", "diff_ci", "lift", "ci", "t_stat", "df", "p_value",
                                             "significant", "verdict", "notes")}
        return _clean({"control": c.arm, "treatment": t.arm, "model": t.model_ref, "control_model": c.model_ref,
                       **out, "ctr": {"control": c.ctr, "treatment": t.ctr},
                       "auc": {"control": c.auc, "treatment": t.auc},
                       "guardrails": [g.to_dict() for g in self.guardrails]})


def _calibration_se(a: ArmStats) -> float:
    """Standard error of mean score / CTR (delta method; the CTR's binomial error dominates)."""
    if a.n < 2 or not a.ctr > 0:
        return NAN
    return abs(a.calibration) * math.sqrt((1 - a.ctr) / (a.ctr * a.n))


def _rate_se(rate: float, n: int) -> float:
    return math.sqrt(rate * (1 - rate) / n) if n > 0 and math.isfinite(rate) else NAN


def _guardrails(c: ArmStats, t: ArmStats, cal_tol: float, lat_tol: float, fb_tol: float,
                lat_budget_ms: float = 50.0, alpha: float = 0.05) -> list[Guardrail]:
    """A guardrail fails when the treatment is worse by more than its tolerance; for the
    estimated ones (calibration, fallback rate) only when that excess is significant at
    one-sided ``alpha`` (noise in a small arm is not a regression)."""
    z = float(stats.norm.ppf(1 - alpha))

    def rail(name: str, cv: float, tv: float, change: float, tol: float, se: float = 0.0) -> Guardrail:
        margin = z * se if math.isfinite(se) else 0.0
        ok = None if not math.isfinite(change) else bool(change <= tol + margin)
        return Guardrail(name, cv, tv, change, tol, ok)

    cal_c, cal_t = abs(c.calibration - 1), abs(t.calibration - 1)
    lat_c, lat_t = c.batch_ms_p99, t.batch_ms_p99
    cal_se = math.hypot(_calibration_se(c), _calibration_se(t))
    fb_se = math.hypot(_rate_se(c.fallback_rate, c.n), _rate_se(t.fallback_rate, t.n))
    return [
        rail("calibration", c.calibration, t.calibration, cal_t - cal_c, cal_tol, cal_se),
        # relative, but a treatment within the latency budget never fails (a better model may
        # well be slower than a trivial control)
        rail("batch_p99_ms", lat_c, lat_t, _div(lat_t - lat_c, lat_c) if lat_c > 0 else NAN,
             max(lat_tol, _div(lat_budget_ms - lat_c, lat_c)) if lat_c > 0 else lat_tol),
        rail("fallback_rate", c.fallback_rate, t.fallback_rate, t.fallback_rate - c.fallback_rate, fb_tol, fb_se),
    ]


def compare(control: ArmStats, treatment: ArmStats, alpha: float = 0.05, calibration_tolerance: float = 0.1,
            latency_tolerance: float = 0.2, fallback_tolerance: float = 0.01,
            latency_budget_ms: float = 50.0) -> Comparison:
    """Welch test of the mean log loss, guardrails and verdict (see the module doc)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    c, t = control, treatment
    rails = _guardrails(c, t, calibration_tolerance, latency_tolerance, fallback_tolerance, latency_budget_ms, alpha)
    notes = [f"guardrail {g.name} not evaluated (missing data)" for g in rails if g.passed is None]
    diff = c.mean_logloss - t.mean_logloss if c.n and t.n else NAN
    lift = _div(diff, c.mean_logloss)
    vc, vt = c.logloss_var, t.logloss_var
    se2 = vc / c.n + vt / t.n if c.n >= 2 and t.n >= 2 else NAN
    nan2 = (NAN, NAN)
    if not (math.isfinite(se2) and se2 > 0 and math.isfinite(lift)):
        why = "n < 2 in an arm" if not (c.n >= 2 and t.n >= 2) else "zero variance" if se2 == 0 else "zero control loss"
        return Comparison(c, t, alpha, diff, nan2, lift, nan2, NAN, NAN, NAN, False, "keep", rails,
                          [f"not enough data ({why})", *notes])
    df = se2**2 / ((vc / c.n) ** 2 / (c.n - 1) + (vt / t.n) ** 2 / (t.n - 1))
    res = stats.ttest_ind_from_stats(c.mean_logloss, math.sqrt(vc), c.n, t.mean_logloss, math.sqrt(vt), t.n,
                                     equal_var=False)
    t_stat, p = float(res.statistic), float(res.pvalue)
    half = float(stats.t.ppf(1 - alpha / 2, df)) * math.sqrt(se2)
    diff_ci = (diff - half, diff + half)
    ci = (diff_ci[0] / c.mean_logloss, diff_ci[1] / c.mean_logloss)
    significant = bool(p < alpha)
    failed = [g.name for g in rails if g.passed is False]
    if failed:
        verdict = "rollback"
        notes.append("guardrail failed: " + ", ".join(failed))
    elif significant:
        verdict = "promote" if lift > 0 else "rollback"
    else:
        verdict = "keep"
        notes.append("not significant: no difference declared")
    if significant and lift < 0:
        notes.append("treatment log loss significantly worse")
    return Comparison(c, t, alpha, diff, diff_ci, lift, ci, t_stat, float(df), p, significant, verdict, rails, notes)


def window_series(records: Iterable[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per arm (label ``arm``, or ``arm/role`` for an arm outside its usual role), per
    window start: n, mean log loss, CTR and mean score (models of one window merged)."""
    acc: dict[str, dict[int, np.ndarray]] = {}
    for rec in records:
        arm, role = str(rec["arm"]), str(rec.get("role", "served"))
        label = arm if role in ("served", arm) else f"{arm}/{role}"
        s = acc.setdefault(label, {}).setdefault(int(rec["eval_window_start_ms"]), np.zeros(4))
        s += [float(rec[k]) for k in ("n", "sum_logloss", "positives", "sum_score")]
    return {label: [_clean({"window_start_ms": w, "n": int(v[0]), "mean_logloss": _div(v[1], v[0]),
                            "ctr": _div(v[2], v[0]), "mean_score": _div(v[3], v[0])})
                    for w, v in sorted(by_w.items())]
            for label, by_w in sorted(acc.items())}


def fairness_table(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per (attribute, group), n-weighted mean_score, positive_rate and ctr over the
    windows, with the ratio and difference of mean_score and positive_rate against the
    best-served group of the attribute (highest positive_rate, then largest n)."""
    acc: dict[tuple[str, str], np.ndarray] = {}
    try:
        for r in records:
            n, ctr = float(r["n"]), float(NAN if r.get("ctr") is None else r["ctr"])
            nc = n if math.isfinite(ctr) else 0.0  # windows without labels carry no CTR
            a = acc.setdefault((str(r["attribute"]), str(r["group"])), np.zeros(6))
            a += [n, n * float(r["mean_score"]), n * float(r["positive_rate"]), nc * np.nan_to_num(ctr), nc, 1]
    except (KeyError, TypeError, ValueError) as exc:
        raise ExperimentError(f"bad fairness record: {type(exc).__name__}: {exc}") from exc
    rows: list[dict[str, Any]] = [
        {"attribute": k[0], "group": k[1], "n": int(a[0]), "windows": int(a[5]), "mean_score": _div(a[1], a[0]),
         "positive_rate": _div(a[2], a[0]), "ctr": _div(a[3], a[4])} for k, a in sorted(acc.items())]
    for attr in sorted({r["attribute"] for r in rows}):
        group = [r for r in rows if r["attribute"] == attr]
        best = max(group, key=lambda r: (np.nan_to_num(r["positive_rate"], nan=-1.0), r["n"]))
        for r in group:
            r["best_group"] = best["group"]
            for m in ("mean_score", "positive_rate"):
                r[f"{m}_ratio"] = _div(r[m], best[m])
                r[f"{m}_diff"] = r[m] - best[m]
    return [_clean(r) for r in rows]


@dataclass
class ExperimentReport:
    control: str
    alpha: float
    served: dict[str, ArmStats]  # arm -> stats of the arm's latest model
    comparisons: dict[str, Comparison]  # treatment arm -> comparison with the control
    others: list[ArmStats]  # shadow, reference, and earlier models of served arms
    series: dict[str, list[dict[str, Any]]]
    fairness: list[dict[str, Any]] | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return _clean({"control": self.control, "alpha": self.alpha,
                       "served": {a: s.to_dict() for a, s in self.served.items()},
                       "comparisons": {a: c.to_dict() for a, c in self.comparisons.items()},
                       "others": [s.to_dict() for s in self.others], "series": self.series,
                       "fairness": self.fairness, "notes": self.notes})


def report(records: Iterable[Mapping[str, Any]], control_arm: str | None = None, alpha: float = 0.05,
           fairness_records: list[dict[str, Any]] | None = None, **tolerances: float) -> ExperimentReport:
    """Compare every served arm with the control: ``control_arm``, else the arm named
    "control", else the first served arm alphabetically. An arm whose model changed is
    represented by its latest model (latest window); earlier ones go to ``others``.
    ``tolerances`` are passed on to ``compare``."""
    recs = dedupe(records)
    by_key = aggregate(recs)
    notes: list[str] = []
    served: dict[str, ArmStats] = {}
    others: list[ArmStats] = []
    for key in sorted(by_key, key=lambda k: (k[0], max(by_key[k].window_starts, default=0))):
        s = by_key[key]
        if s.role != "served":
            others.append(s)
            continue
        if s.arm in served:
            others.append(served[s.arm])
            notes.append(f"arm {s.arm}: model changed from {served[s.arm].model_ref} to {s.model_ref}; "
                         f"compared on {s.model_ref} only")
        served[s.arm] = s
    if not served:
        raise ExperimentError("no served records (role == 'served') to compare")
    control = control_arm or ("control" if "control" in served else sorted(served)[0])
    if control not in served:
        raise ExperimentError(f"control arm {control!r} not among the served arms {sorted(served)}")
    comparisons = {arm: compare(served[control], s, alpha=alpha, **tolerances)
                   for arm, s in sorted(served.items()) if arm != control}
    if not comparisons:
        notes.append("only one served arm: nothing to compare")
    fair = fairness_table(fairness_records) if fairness_records is not None else None
    return ExperimentReport(control, alpha, served, comparisons, others, window_series(recs), fair, notes)


def metrics_record(arm: str, role: str, ref: str, window_start_ms: int, scores: np.ndarray, labels: np.ndarray,
                   window_ms: int = 60_000, threshold: float = 0.3, **extra: Any) -> dict[str, Any]:
    """A ``model-metrics`` record computed from raw scores and labels (the reference
    computation; ``extra`` overrides fields such as fallback_count or batch_ms_p99)."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(np.int64)
    ll = logloss_terms(s, y)
    pos, neg = score_histogram(s, y)
    name, _, version = ref.partition(":")
    rec: dict[str, Any] = {
        "eval_window_start_ms": int(window_start_ms), "eval_window_end_ms": int(window_start_ms + window_ms),
        "arm": arm, "role": role, "model_name": name, "model_version": version, "feature_set_version": "v1",
        "n": int(s.size), "positives": int(y.sum()), "sum_score": float(s.sum()), "sum_logloss": float(ll.sum()),
        "sum_logloss_sq": float((ll**2).sum()), "auc_bins_pos": pos.tolist(), "auc_bins_neg": neg.tolist(),
        "fallback_count": 0, "batch_count": 1, "batch_ms_p50": 1.0, "batch_ms_p99": 2.0,
        "unattributed_clicks": 0, "above_threshold": int(np.count_nonzero(s >= threshold)),
        "emitted_at_ms": int(window_start_ms + window_ms), "schema_version": 1,
    }
    rec.update(extra)
    return rec


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN/inf -> None, tuples -> lists, numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
