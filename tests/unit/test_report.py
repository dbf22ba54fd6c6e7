"""Report chart series (transforms.report_data) and the ``streamscore report`` page (jobs.report)."""

from __future__ import annotations

import json
import math
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jobs import cli
from jobs import report as report_cli
from transforms.codecs import decode, encode
from transforms.drift import DriftThresholds
from transforms.report_data import (
    DEFAULT_SCORE_EDGES,
    TS_KEY,
    alerts_chart,
    build_report,
    choose_bucket_ms,
    fairness_chart,
    latency_chart,
    psi_chart,
    recent_alerts,
    score_distribution_charts,
    served_histogram,
    throughput_chart,
)

T0 = 1_796_000_000_000  # a whole second


# -- records of the topics' schemas ---------------------------------------------------------
def score_rec(ts: int, score: float = 0.3, *, fired: int | None = None, model: str = "gbdt:v1", arm: str = "control",
              broker: bool = True) -> dict[str, Any]:
    name, _, version = model.partition(":")
    rec: dict[str, Any] = {"user_id": "u1", "window_start_ms": ts - 10_000, "window_end_ms": ts - 1_000,
                           "score": score, "model_name": name, "model_version": version, "arm": arm,
                           "fallback_reason": "", "feature_set_version": "fs", "fired_at_ms": ts - 50 if fired is None
                           else fired, "scored_at_ms": ts - 10, "schema_version": 1}
    if broker:
        rec[TS_KEY] = ts
    return rec


def metrics_rec(start: int, arm: str, role: str = "served", *, n: int = 100, sum_score: float = 30.0,
                positives: int = 20, above: int = 0, model: str = "gbdt:v1") -> dict[str, Any]:
    name, _, version = model.partition(":")
    rec: dict[str, Any] = {
        "eval_window_start_ms": start, "eval_window_end_ms": start + 60_000, "arm": arm, "role": role,
        "model_name": name, "model_version": version, "feature_set_version": "fs", "n": n, "positives": positives,
        "sum_score": sum_score, "sum_logloss": 50.0, "sum_logloss_sq": 40.0, "auc_bins_pos": [1, 2],
        "auc_bins_neg": [2, 1], "fallback_count": 0, "batch_count": 3, "batch_ms_p50": 1.0, "batch_ms_p99": 2.0,
        "unattributed_clicks": 0, "above_threshold": above, "emitted_at_ms": start + 61_000, "schema_version": 1}
    return rec


def mon_rec(kind: str, end: int, values: dict[str, float], model: str = "gbdt:v1") -> dict[str, Any]:
    return {"kind": kind, "model": model, "window_start_ms": end - 60_000, "window_end_ms": end, "values": values,
            "attributes": {}, "emitted_at_ms": end + 1_000, "schema_version": 1}


def alert_rec(ts: int, severity: str = "warning", kind: str = "drift", message: str = "psi high") -> dict[str, Any]:
    return {"kind": kind, "severity": severity, "message": message, "model_version": "gbdt:v1", "ts_ms": ts,
            "attributes": {"feature": "a"}, "schema_version": 1}


PREDICTION_REF = {"edges": [None, 0.25, 0.5, 0.75, None], "frequencies": [0.4, 0.3, 0.2, 0.1], "n": 1000}


def registry_json(path: Path) -> Path:
    """A registry with gbdt:v1 (prediction reference) and gbdt:v2 (none)."""
    def entry(version: str, reference: dict[str, Any]) -> dict[str, Any]:
        return {"name": "gbdt", "version": version, "kind": "gbdt", "path": f"artifacts/gbdt-{version}.onnx",
                "sha256": "00", "feature_names": ["a", "b"], "feature_set_version": "fs",
                "training_data_fingerprint": "d", "stage": "active" if version == "v1" else "candidate",
                "reference": reference}
    path.write_text(json.dumps({"models": [entry("v1", {"prediction": PREDICTION_REF, "features": {}}),
                                           entry("v2", {})]}))
    return path


def synthetic_inputs(folder: Path, seed: int = 0) -> Path:
    """JSONL inputs in ``folder`` where every chart kind has data; returns a registry path."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    scores, events = [], []
    for i in range(900):  # 90 s at 10 scores/s
        ts = T0 + 100 * i
        model = "gbdt:v1" if i % 3 else "gbdt:v2"
        arm = "shadow" if i % 10 == 0 else ("treatment" if model == "gbdt:v2" else "control")
        scores.append(score_rec(ts, float(rng.beta(2, 5)), fired=ts - int(rng.integers(5, 200)), model=model,
                                arm=arm))
    for i in range(2700):
        events.append({"event_id": f"e{i}", "user_id": "u1", TS_KEY: T0 + 33 * i})
    metrics = [metrics_rec(T0, "control"), metrics_rec(T0, "region=eu", "group", above=40),
               metrics_rec(T0, "region=us", "group", sum_score=20.0, above=20)]
    features = ("a", "b", "prediction")
    monitoring = [mon_rec("drift", T0 + 60_000 * (k + 1),
                          {**{f"psi.{f}": 0.05 * (k + 1) * (j + 1) for j, f in enumerate(features)},
                           "ks.a": 0.1, "n": 500.0}) for k in range(4)]
    for k, (eu, us) in enumerate(((0.30, 0.20), (0.32, 0.18))):
        monitoring.append(mon_rec("fairness", T0 + 60_000 * (k + 1), {
            "n.region=eu": 400.0, "n.region=us": 380.0, "mean_score.region=eu": eu, "mean_score.region=us": us,
            "positive_rate.region=eu": 0.5, "positive_rate.region=us": 0.3, "positive_rate_ratio.region=eu": 1.0,
            "positive_rate_ratio.region=us": 0.6, "mean_score.device=mobile": 0.25,
            "positive_rate.device=mobile": 0.4, "positive_rate_ratio.device=mobile": 1.0}))
    alerts = [alert_rec(T0 + 10_000 * k, ("warning", "critical", "info")[k % 3], message=f"alert {k} <b>&</b>")
              for k in range(8)]
    for name, recs in (("scores", scores), ("metrics", metrics), ("monitoring", monitoring), ("alerts", alerts),
                       ("events", events)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return registry_json(folder / "registry.json")


class Page(HTMLParser):
    """The ``svg.chart`` elements of a page: attributes, classes of their descendants, and
    the page's scripts and external references."""

    def __init__(self) -> None:
        super().__init__()
        self.charts: list[dict[str, Any]] = []
        self.depth = 0  # nesting inside the current svg.chart
        self.scripts: list[dict[str, str | None]] = []
        self.external: list[str] = []
        self.body: dict[str, str | None] = {}
        self.summary_items = 0

    def _element(self, tag: str, attrs: list[tuple[str, str | None]], closes: bool) -> None:
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        for key in ("src", "href"):
            if a.get(key) and ("//" in str(a[key]) or not str(a[key]).startswith("#")):
                self.external.append(f"{tag} {key}={a[key]}")
        if tag == "script":
            self.scripts.append(a)
        if tag == "body":
            self.body = a
        if tag == "li" and "chart-count" in classes:
            self.summary_items += 1
        if self.depth:
            self.charts[-1]["elements"].append((tag, classes, a))
            if not closes:
                self.depth += 1
        elif tag == "svg" and "chart" in classes:
            self.charts.append({"attrs": a, "elements": []})
            self.depth = 0 if closes else 1

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._element(tag, attrs, closes=False)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._element(tag, attrs, closes=True)

    def handle_endtag(self, tag: str) -> None:
        if self.depth:
            self.depth -= 1

    def marks(self, chart: dict[str, Any]) -> list[str]:
        return [tag for tag, classes, _ in chart["elements"] if "mark" in classes]

    def thresholds(self, chart: dict[str, Any]) -> list[dict[str, Any]]:
        return [a for tag, classes, a in chart["elements"] if tag == "line" and "threshold" in classes]


def parse_page(text: str) -> Page:
    p = Page()
    p.feed(text)
    p.close()
    return p


# -- throughput -------------------------------------------------------------------------
def test_throughput_counts_per_second_per_bucket_with_gaps_and_inputs() -> None:
    recs = [score_rec(T0 + 100 * i) for i in range(10)] + [score_rec(T0 + 3_000 + 500 * i) for i in range(4)]
    inputs = [T0 + 250 * i for i in range(16)]  # 4 s at 4/s
    c = throughput_chart(recs, inputs, bucket_ms=1000)
    assert c.missing is None and c.bucket_ms == 1000
    scores, ins = c.series
    assert scores.name == "scores/s" and ins.name == "inputs/s"
    assert scores.points == ((T0, 10.0), (T0 + 1000, 0.0), (T0 + 2000, 0.0), (T0 + 3000, 2.0), (T0 + 4000, 2.0))
    assert ins.points == ((T0, 4.0), (T0 + 1000, 4.0), (T0 + 2000, 4.0), (T0 + 3000, 4.0), (T0 + 4000, 0.0))
    assert c.points == 10
    # a 2 s bucket halves the per-second rate of one full bucket
    assert throughput_chart(recs, bucket_ms=2000).series[0].points[0] == (T0, 5.0)


def test_throughput_uses_the_broker_timestamp_then_scored_at() -> None:
    broker = score_rec(T0 + 5_000)
    broker["scored_at_ms"] = T0  # ignored: the broker time wins
    no_broker = score_rec(T0 + 1_010, broker=False)  # scored_at_ms = T0 + 1000
    c = throughput_chart([broker, no_broker], bucket_ms=1000)
    pts = dict(c.series[0].points)
    assert pts[T0 + 5000] == 1.0 and pts[T0 + 1000] == 1.0 and T0 not in pts
    assert any("1 score records carry no broker timestamp" in n for n in c.notes)
    assert any("input counts not given" in n for n in c.notes)


def test_throughput_and_latency_missing_inputs() -> None:
    for chart in (throughput_chart([]), latency_chart([]), latency_chart([{"score": 0.1}])):
        assert chart.missing and chart.points == 0 and chart.series == ()
    only_inputs = throughput_chart([], [T0, T0 + 10], bucket_ms=1000)
    assert only_inputs.missing is None and [s.name for s in only_inputs.series] == ["inputs/s"]


def test_bucket_choice_bounds_the_number_of_buckets() -> None:
    for span in (0, 999, 59_000, 3_600_000, 86_400_000, 30 * 86_400_000, 10_000 * 86_400_000):
        for start in (T0, T0 + 999, T0 + 29_999):
            b = choose_bucket_ms(span, 120)
            assert (start + span) // b - start // b + 1 <= 120
    recs = [score_rec(T0 + 1_000 * i) for i in range(3_600)]  # 1/s for an hour, not aligned to minutes
    c = throughput_chart(recs)
    assert len(c.series[0].points) <= 120 and c.bucket_ms == 60_000
    assert all(math.isclose(y, 1.0) for _, y in c.series[0].points[1:-1])


# -- latency ----------------------------------------------------------------------------
def test_latency_p50_p99_per_bucket() -> None:
    recs = [score_rec(T0 + 10 * i, fired=T0 + 10 * i - (i + 1)) for i in range(100)]  # latencies 1..100 in bucket T0
    recs += [score_rec(T0 + 2_000, fired=T0 + 2_000 - 7)]  # one in bucket T0 + 2000; T0 + 1000 is empty
    c = latency_chart(recs, bucket_ms=1000)
    p50, p99 = c.series
    assert (p50.name, p99.name) == ("p50", "p99")
    assert [x for x, _ in p50.points] == [T0, T0 + 2000]  # empty buckets left out
    assert p50.points[0][1] == pytest.approx(np.percentile(np.arange(1, 101), 50)) == pytest.approx(50.5)
    assert p99.points[0][1] == pytest.approx(np.percentile(np.arange(1, 101), 99))
    assert p50.points[1] == (T0 + 2000, 7.0) and p99.points[1] == (T0 + 2000, 7.0)
    assert c.points == 4


# -- PSI --------------------------------------------------------------------------------
def test_psi_series_per_feature_with_thresholds() -> None:
    mon = [mon_rec("drift", T0 + 120_000, {"psi.a": 0.3, "psi.prediction": 0.01, "ks.a": 0.9, "n": 10.0}),
           mon_rec("drift", T0 + 60_000, {"psi.a": 0.05, "psi.b": float("nan")}),
           mon_rec("fairness", T0 + 60_000, {"psi.zzz": 1.0}),  # not a drift record
           {"kind": "monitoring_disabled", "model": "gbdt:v1"}]
    c = psi_chart(mon)
    assert c.missing is None
    assert {s.name: s.points for s in c.series} == {"a": ((T0 + 60_000, 0.05), (T0 + 120_000, 0.3)),
                                                     "prediction": ((T0 + 120_000, 0.01),)}
    assert c.thresholds == (("warn", 0.1), ("severe", 0.25))
    assert c.points == 3
    custom = psi_chart(mon, DriftThresholds(psi_warn=0.2, psi_severe=0.5))
    assert custom.thresholds == (("warn", 0.2), ("severe", 0.5))


def test_psi_names_series_by_model_when_several_and_missing() -> None:
    mon = [mon_rec("drift", T0, {"psi.a": 0.1}, model="gbdt:v1"), mon_rec("drift", T0, {"psi.a": 0.2}, model="mlp:v1")]
    assert sorted(s.name for s in psi_chart(mon).series) == ["a [gbdt:v1]", "a [mlp:v1]"]
    empty = psi_chart([mon_rec("drift", T0, {"ks.a": 0.1})])
    assert empty.missing and empty.points == 0 and empty.thresholds == (("warn", 0.1), ("severe", 0.25))


# -- score distributions ----------------------------------------------------------------
def test_served_histogram_is_right_closed() -> None:
    assert served_histogram([0.25, 0.2500001, 0.5, 0.9, float("nan")], [0.25, 0.5, 0.75]) == [0.25, 0.5, 0.0, 0.25]


def test_score_distribution_against_reference() -> None:
    scores = [score_rec(T0, s) for s in (0.1, 0.3, 0.6, 0.9)] + [score_rec(T0, 0.99, arm="shadow")]
    scores += [score_rec(T0, 0.55, model="gbdt:v2"), score_rec(T0, 0.3, model="mlp:v1")]
    refs = {"gbdt:v1": {"prediction": PREDICTION_REF}, "gbdt:v2": {}}
    charts = {c.name: c for c in score_distribution_charts(scores, refs)}
    assert list(charts) == ["score_distribution gbdt:v1", "score_distribution gbdt:v2", "score_distribution mlp:v1"]
    v1 = charts["score_distribution gbdt:v1"]
    served, ref = v1.series
    assert served.style == "bar" and served.name == "served (n=4)"  # the shadow score is not served
    assert [y for _, y in served.points] == [0.25, 0.25, 0.25, 0.25]
    assert [y for _, y in ref.points] == [0.4, 0.3, 0.2, 0.1]
    assert v1.categories == ("<=0.25", "(0.25,0.5]", "(0.5,0.75]", ">0.75") and v1.points == 8
    v2 = charts["score_distribution gbdt:v2"]
    assert len(v2.series) == 1 and len(v2.categories) == len(DEFAULT_SCORE_EDGES) + 1
    assert dict(v2.series[0].points)[5.0] == 1.0  # 0.55 in (0.5, 0.6]
    assert any("no (valid) reference" in n for n in v2.notes)
    assert any("not in the registry" in n for n in charts["score_distribution mlp:v1"].notes)


def test_score_distribution_malformed_reference_and_missing() -> None:
    bad_refs: list[Any] = [{"prediction": {"edges": [0.0, 0.5, None], "frequencies": [0.5, 0.5]}},
                           {"prediction": {"edges": [None, 0.5, None], "frequencies": [1.0]}},
                           {"prediction": {"edges": [None, 0.6, 0.4, None], "frequencies": [0.3, 0.3, 0.4]}},
                           {"prediction": "x"}, None]
    for ref in bad_refs:
        (c,) = score_distribution_charts([score_rec(T0, 0.2)], {"gbdt:v1": ref})
        assert len(c.series) == 1 and c.missing is None
    (only_shadow,) = score_distribution_charts([score_rec(T0, 0.2, arm="shadow")])
    assert only_shadow.missing and "shadow" in only_shadow.missing and only_shadow.points == 0
    (none,) = score_distribution_charts([])
    assert none.missing and none.name == "score_distribution"


# -- fairness ---------------------------------------------------------------------------
def test_fairness_from_latest_monitoring_window() -> None:
    mon = [mon_rec("fairness", T0 + 60_000, {"mean_score.region=eu": 0.9, "mean_score.region=us": 0.1}),
           mon_rec("fairness", T0 + 120_000, {"mean_score.region=eu": 0.3, "mean_score.region=us": 0.2,
                                              "positive_rate.region=eu": 0.5, "positive_rate_ratio.region=us": 0.6,
                                              "n.region=eu": 400.0, "bogus": 1.0, "ctr.region=eu": 0.1})]
    c = fairness_chart(mon, [metrics_rec(T0, "region=eu", "group", above=1)])
    assert c.missing is None and c.categories == ("region=eu", "region=us")
    got = {s.name: s.points for s in c.series}
    assert got == {"mean_score": ((0.0, 0.3), (1.0, 0.2)), "positive_rate": ((0.0, 0.5),),
                   "positive_rate_ratio": ((1.0, 0.6),)}
    assert any("monitoring" in n for n in c.notes)


def test_fairness_from_group_metrics_when_no_monitoring() -> None:
    metrics = [metrics_rec(T0, "region=eu", "group", n=100, sum_score=40.0, above=50),
               metrics_rec(T0, "region=us", "group", n=100, sum_score=20.0, above=25),
               metrics_rec(T0 - 60_000, "region=us", "group", n=100, sum_score=90.0, above=90),  # older window
               metrics_rec(T0, "control")]
    c = fairness_chart([], metrics)
    got = {s.name: dict(s.points) for s in c.series}
    assert c.categories == ("region=eu", "region=us")
    assert got["mean_score"] == {0.0: pytest.approx(0.4), 1.0: pytest.approx(0.2)}
    assert got["positive_rate"] == {0.0: pytest.approx(0.5), 1.0: pytest.approx(0.25)}
    assert got["positive_rate_ratio"] == {0.0: pytest.approx(1.0), 1.0: pytest.approx(0.5)}
    assert got["mean_score_ratio"][1.0] == pytest.approx(0.5)
    assert any("model-metrics" in n for n in c.notes)
    # records of an older writer (JSON lines without above_threshold): no positive rate
    plain = [metrics_rec(T0, a, "group", sum_score=s) for a, s in (("region=eu", 40.0), ("region=us", 20.0))]
    for r in plain:
        del r["above_threshold"]
    c2 = fairness_chart([], plain)
    assert [s.name for s in c2.series] == ["mean_score", "mean_score_ratio"]
    assert any("positive rate not shown" in n for n in c2.notes)


def test_fairness_missing() -> None:
    c = fairness_chart([mon_rec("drift", T0, {"psi.a": 0.1})], [metrics_rec(T0, "control")])
    assert c.missing and c.points == 0


def test_fairness_groups_are_per_model_when_several() -> None:
    metrics = [metrics_rec(T0, "region=eu", "group", above=50), metrics_rec(T0, "region=eu", "group", model="mlp:v1")]
    c = fairness_chart([], metrics)
    assert c.categories == ("gbdt:v1 region=eu", "mlp:v1 region=eu")
    mon = [mon_rec("fairness", T0, {"mean_score.region=eu": 0.3}, model="gbdt:v1"),
           mon_rec("fairness", T0 + 60_000, {"mean_score.region=eu": 0.4}, model="mlp:v1")]
    c = fairness_chart(mon)  # each model's own latest window
    assert dict(zip(c.categories, [y for _, y in c.series[0].points], strict=True)) == {
        "gbdt:v1 region=eu": 0.3, "mlp:v1 region=eu": 0.4}


# -- alerts -----------------------------------------------------------------------------
def test_recent_alerts_newest_first_and_alerts_chart() -> None:
    alerts = [alert_rec(T0 + 1_000 * k, ("warning", "critical")[k % 2]) for k in range(30)]
    recent = recent_alerts(alerts, 5)
    assert [a["ts_ms"] for a in recent] == [T0 + 1_000 * k for k in (29, 28, 27, 26, 25)]
    assert recent_alerts([], 5) == [] and recent_alerts(alerts, 0) == []
    c = alerts_chart(alerts, bucket_ms=10_000)
    assert [s.name for s in c.series] == ["critical", "warning"]
    assert dict(c.series[0].points) == {T0: 5.0, T0 + 10_000: 5.0, T0 + 20_000: 5.0}
    assert alerts_chart([]).missing


def test_build_report_with_nothing_says_so_everywhere() -> None:
    data = build_report()
    assert [c.name for c in data.charts] == ["throughput", "latency", "psi", "score_distribution", "fairness",
                                             "alerts"]
    assert all(c.missing and c.points == 0 for c in data.charts)
    assert data.alerts == ()


# -- the command ------------------------------------------------------------------------
def test_synthetic_records_match_the_schemas(tmp_path: Path) -> None:
    synthetic_inputs(tmp_path)
    for fname, schema in (("scores", "scored_result"), ("metrics", "model_metrics"), ("monitoring", "monitoring"),
                          ("alerts", "alert")):
        for line in (tmp_path / f"{fname}.jsonl").read_text().splitlines()[:50]:
            rec = json.loads(line)
            back = decode(encode(rec, schema), schema)
            assert {k: v for k, v in rec.items() if k in back} == back


def test_report_command_writes_one_self_contained_page(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reg = synthetic_inputs(tmp_path / "in")
    out = tmp_path / "out" / "report.html"
    assert report_cli.main(["--from-jsonl", str(tmp_path / "in"), "--out", str(out), "--registry", str(reg)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == str(out)
    summary = json.loads(lines[-1])
    assert summary["html"] == str(out)
    assert set(summary["charts"]) == {"throughput", "latency", "psi", "score_distribution gbdt:v1",
                                      "score_distribution gbdt:v2", "fairness", "alerts"}
    assert all(n > 0 for n in summary["charts"].values())
    text = out.read_text()
    assert "http://" not in text and "https://" not in text and "<link" not in text
    page = parse_page(text)
    assert page.external == [] and all("src" not in s for s in page.scripts) and len(page.scripts) == 1
    by_name = {c["attrs"]["data-name"]: c for c in page.charts}
    assert {k: int(c["attrs"]["data-points"]) for k, c in by_name.items()} == summary["charts"]
    for c in page.charts:
        assert page.marks(c), c["attrs"]
        tags = [t for t, _, _ in c["elements"]]
        assert "text" in tags and sum(1 for _, cl, _ in c["elements"] if "axis" in cl) == 2
        assert any("title" in cl for _, cl, _ in c["elements"])
    psi = by_name["psi"]
    assert sorted(float(t["data-value"]) for t in page.thresholds(psi)) == [0.1, 0.25]
    assert int(psi["attrs"]["data-points"]) == len([m for m in page.marks(psi) if m == "circle"]) == 12
    throughput = json.loads(lines[-1])["charts"]["throughput"]
    assert throughput == 2 * 90  # scores/s and inputs/s, 90 one-second buckets
    v1 = by_name["score_distribution gbdt:v1"]
    assert int(v1["attrs"]["data-points"]) == 4 + 4  # served bars + reference points on the 4 reference bins
    assert "alert 7 &lt;b&gt;&amp;&lt;/b&gt;" in text  # messages are escaped


def test_report_command_missing_inputs_are_reported_in_the_page(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "alerts.jsonl").write_text(json.dumps(alert_rec(T0)) + "\nnot json\n")
    out = tmp_path / "r.html"
    assert report_cli.main(["--from-jsonl", str(tmp_path), "--out", str(out),
                            "--registry", str(tmp_path / "nope.json")]) == 0
    charts = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["charts"]
    assert charts == {"throughput": 0, "latency": 0, "psi": 0, "score_distribution": 0, "fairness": 0, "alerts": 1}
    text = out.read_text()
    assert text.count("class='missing'") == 5
    assert "no such file" in text and "1 malformed lines skipped" in text and "no registry" in text
    assert len(parse_page(text).charts) == 1


def test_report_command_exit_2_without_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert report_cli.main(["--from-jsonl", str(tmp_path), "--out", str(tmp_path / "r.html")]) == 2
    assert "no records at all" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()
    assert report_cli.main(["--from-jsonl", str(tmp_path / "absent"), "--out", str(tmp_path / "r.html")]) == 2


def test_read_topics_decodes_avro_and_survives_unreadable_topics() -> None:
    rec = score_rec(T0, broker=False)
    raw = {"s": [(b"u1", encode(rec, "scored_result"), T0 + 7), (b"u1", b"\x00garbage", T0)],
           "a": [(None, encode(alert_rec(T0), "alert"), T0)]}

    def reader(bootstrap: str, topic: str, decode_fn: Any, timeout_s: float) -> list[tuple[bytes | None, Any, int]]:
        if topic not in raw:
            raise RuntimeError(f"topic {topic}: unknown topic")
        return raw[topic]

    recs, status = report_cli.read_topics("b:1", {"scores": "s", "metrics": "m", "monitoring": "x", "alerts": "a"},
                                          1.0, reader)
    assert [r[TS_KEY] for r in recs["scores"]] == [T0 + 7] and len(recs["alerts"]) == 1
    assert recs["metrics"] == [] and "cannot read" in status["metrics"] and "1 undecodable" in status["scores"]


def test_report_is_registered_in_the_cli() -> None:
    assert cli.COMMANDS["report"][0] == "jobs.report"
    assert "report" in cli.usage()
