"""The soak command's pure parts (jobs.soak): growth from smoothed samples, per-kind
totals, the warm-up cut, the plot page and the config checks. The soak itself runs the
real job for minutes and is never timed in a unit test."""

from __future__ import annotations

import json

import pytest

from jobs import bench, cli, soak
from jobs.soak import SoakConfig, growth, soak_html, summarize_samples


def test_growth_uses_medians_of_the_first_and_last_samples():
    g = growth([100, 300, 100, 100, 100, 120, 40, 120], 3)  # a spike and a dip, smoothed away
    assert g == {"start_mb": 100.0, "end_mb": 120.0, "peak_mb": 300.0, "growth_pct": 20.0}
    assert growth([200, 190], 5)["growth_pct"] == -5.0  # fewer samples than 2 x smooth: one each
    assert growth([], 3) == {"start_mb": None, "end_mb": None, "peak_mb": None, "growth_pct": None}
    assert growth([0.0, 5.0], 1)["growth_pct"] is None


def _samples(n: int, jvm: float, jvm_step: float, warm: int = 0) -> list[soak.Sample]:
    out = []
    for i in range(n):
        boot = 500.0 if i < warm else 0.0  # warm-up spike
        out.append((i * 5.0, {"driver:1": 150.0, "jvm:2": jvm + i * jvm_step + boot, "python_worker:3": 200.0,
                              "python_worker:4": 100.0 + (i % 2)}))
    return out


def test_summary_leaves_out_the_warm_up_and_sums_each_kind():
    samples = _samples(40, 1000.0, 0.0, warm=12)  # 12 samples at t < 60 s
    s = summarize_samples(samples, 60.0, 5, 10.0, [(t, {"broker:9": 600.0}) for t, _ in samples])
    assert s["samples"] == 28
    assert s["job"]["start_mb"] == pytest.approx(1450.0, abs=1) and s["job"]["peak_mb"] == pytest.approx(1451.0)
    assert abs(s["growth_pct"]) < 0.1 and s["within_limit"]
    assert s["by_kind"]["python_worker"]["start_mb"] == pytest.approx(300.0, abs=1)
    assert list(s["by_kind"]) == ["driver", "jvm", "python_worker"]
    assert s["broker"]["end_mb"] == 600.0


def test_summary_flags_growth_beyond_the_limit():
    s = summarize_samples(_samples(60, 1000.0, 5.0), 0.0, 5, 10.0)  # the JVM grows 5 MB a sample
    assert s["by_kind"]["jvm"]["growth_pct"] == pytest.approx(275 / 1010 * 100, rel=1e-3)
    assert s["growth_pct"] > 10.0 and not s["within_limit"]
    assert not summarize_samples([], 0.0, 5, 10.0)["within_limit"]


def test_html_plots_every_process_and_the_total():
    samples = _samples(20, 1000.0, 1.0)
    broker = [(t, {"broker:9": 600.0}) for t, _ in samples]
    summary = {"minutes": 1.0, "rate_per_s": 5000.0, "warmup_s": 10.0, **summarize_samples(samples, 10.0, 3, 10.0,
                                                                                            broker)}
    page = soak_html(samples, broker, summary)
    assert page.count("<polyline") == 6  # total, 4 job processes, the broker
    for label in ("job total", "jvm:2", "python_worker:4", "broker:9"):
        assert label in page
    assert "within 10%" in page


def test_config_is_validated():
    assert SoakConfig().minutes == 10.0 and SoakConfig().rate_per_s == 5_000.0
    for bad in ({"minutes": 0}, {"rate_per_s": -1}, {"smooth": 0}, {"minutes": 0.5, "sample_s": 10.0, "smooth": 5},
                {"limit_pct": 0}):
        with pytest.raises(ValueError):
            SoakConfig(**bad)
    with pytest.raises(AttributeError):
        SoakConfig().minutes = 3  # type: ignore[misc]


def test_help_and_cli_entry(capsys):
    with pytest.raises(SystemExit) as exc:
        soak.main(["--help"])
    assert exc.value.code == 0 and "--minutes" in capsys.readouterr().out
    assert cli.COMMANDS["soak"][0] == "jobs.soak"


def test_bench_history_ignores_soak_rows(tmp_path):
    results = tmp_path / "results.jsonl"
    results.write_text(json.dumps({"label": "b1", "events_per_s": 1000.0}) + "\n"
                       + json.dumps({"kind": "soak", "growth_pct": 3.0, "label": "soak-row"}) + "\n")
    out = tmp_path / "history.html"
    bench.write_history(results, out)
    page = out.read_text()
    assert "<td>b1</td>" in page and "soak-row" not in page


def test_jstat_figures_and_the_jvm_heap_setting():
    out = ("S0C    S1C    S0U    S1U      EC       EU        OC         OU       MC     MU    CCSC   CCSU   YGC  YGCT\n"
           "0.0  2048.0  0.0  2048.0  51200.0  10240.0  1048576.0  524288.0  65536.0  61440.0  8192.0  7168.0  12  0.1\n")
    assert soak.parse_jstat_gc(out) == {"heap_committed_mb": 1076.0, "heap_used_mb": 524.0, "old_used_mb": 512.0,
                                        "metaspace_used_mb": 60.0}
    assert soak.parse_jstat_gc("12345 not found") is None and soak.parse_jstat_gc("") is None
    assert SoakConfig(jvm_heap_mb=1024).jvm_args() == "-Xms1024m -Xmx1024m -XX:+AlwaysPreTouch"
    assert SoakConfig(jvm_heap_mb=0).jvm_args() == ""
    with pytest.raises(ValueError):
        SoakConfig(jvm_heap_mb=100)
    heap = [(t, {"heap_committed_mb": 1536.0, "heap_used_mb": 400.0 + t, "old_used_mb": 300.0,
                 "metaspace_used_mb": 60.0}) for t in range(0, 100, 5)]
    s = summarize_samples(_samples(20, 1000.0, 0.0), 10.0, 3, 10.0, heap=heap)
    assert s["jvm_heap"]["heap_used_mb"]["start_mb"] == 415.0 and s["jvm_heap"]["old_used_mb"]["growth_pct"] == 0.0
