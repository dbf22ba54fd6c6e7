"""jobs.metrics without Flink: the Prometheus text parser, the reporter settings, the
mini-cluster class-path preparation, and UdfMetrics against a fake PyFlink metric group
that mimics how the Prometheus reporter names what PyFlink registers."""

from __future__ import annotations

import http.server
import math
import threading
from pathlib import Path

import numpy as np
import pytest

from jobs import metrics as M
from jobs import prometheus as P

SAMPLE = r'''# HELP flink_taskmanager_job_task_operator_numRecordsIn numRecordsIn (scope: taskmanager_job_task_operator)
# TYPE flink_taskmanager_job_task_operator_numRecordsIn gauge
flink_taskmanager_job_task_operator_numRecordsIn{job_id="c3b6",operator_name="PythonCalc[2]",subtask_index="0",} 400.0
flink_taskmanager_job_task_operator_numRecordsIn{job_id="c3b6",operator_name="snk[3]: Writer",subtask_index="0",} 400.0
flink_taskmanager_job_task_operator_numRecordsIn{job_id="c3b6",operator_name="Source: src[1]",subtask_index="0",} 0.0
# TYPE flink_taskmanager_job_task_operator_streamscore_model_version_arm_fallback_scores gauge
flink_taskmanager_job_task_operator_streamscore_model_version_arm_fallback_scores{model_version="v1.2",arm="a",fallback="none",subtask_index="0",} 970.0
flink_taskmanager_job_task_operator_streamscore_model_version_arm_fallback_scores{model_version="3",arm="b",fallback="model-error",subtask_index="0",} 30.0
flink_taskmanager_job_task_operator_streamscore_model_version_arm_fallback_scores{model_version="3",arm="b",fallback="model-error",subtask_index="1",} 12.0
# TYPE flink_taskmanager_job_task_mailboxLatencyMs summary
flink_taskmanager_job_task_mailboxLatencyMs_count{task_name="Source:_src_1_",} 1.0
flink_taskmanager_job_task_mailboxLatencyMs{task_name="Source:_src_1_",quantile="0.5",} 1.0
flink_taskmanager_job_task_busyTimeMsPerSecond{task_name="x",} NaN
flink_jobmanager_numRunningJobs 1.0
escaped{path="C:\\tmp",quote="say \"hi\"",nl="a\nb"} +Inf 1700000000000
neg -Inf
sci{le="+Inf"} 1.5e3
'''


# ------------------------------------------------------------------ parser


def test_parse_text_names_labels_values() -> None:
    got = P.parse_text(SAMPLE)
    recs = got["flink_taskmanager_job_task_operator_numRecordsIn"]
    assert len(recs) == 3
    assert recs[1] == ({"job_id": "c3b6", "operator_name": "snk[3]: Writer", "subtask_index": "0"}, 400.0)
    assert got["flink_taskmanager_job_task_mailboxLatencyMs_count"] == [({"task_name": "Source:_src_1_"}, 1.0)]
    assert got["flink_taskmanager_job_task_mailboxLatencyMs"][0][0]["quantile"] == "0.5"
    assert math.isnan(got["flink_taskmanager_job_task_busyTimeMsPerSecond"][0][1])
    assert got["flink_jobmanager_numRunningJobs"] == [({}, 1.0)]
    labels, value = got["escaped"][0]
    assert labels == {"path": "C:\\tmp", "quote": 'say "hi"', "nl": "a\nb"}
    assert value == math.inf  # the timestamp is dropped
    assert got["neg"] == [({}, -math.inf)]
    assert got["sci"] == [({"le": "+Inf"}, 1500.0)]
    assert not any(name.startswith("#") for name in got)


def test_select_and_total() -> None:
    got = P.parse_text(SAMPLE)
    name = M.UDF_PREFIX + "model_version_arm_fallback_scores"
    assert P.total(got, name) == 1012.0
    assert P.total(got, name, model_version="3") == 42.0
    assert P.total(got, name, model_version="3", subtask_index="1") == 12.0
    assert P.select(got, name, arm="zzz") == []
    assert P.total(got, "absent") == 0.0
    assert P.total(got, "flink_taskmanager_job_task_busyTimeMsPerSecond") == 0.0  # NaN ignored


@pytest.mark.parametrize("bad", ['x{a="1" 1', 'x{a=1} 2', "x{} ", "{a=\"1\"} 3", 'x{a="1} 2'])
def test_parse_text_rejects_malformed(bad: str) -> None:
    with pytest.raises(ValueError):
        P.parse_text(bad)


def test_scrape_over_http() -> None:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = SAMPLE.encode() if self.path == "/metrics" else b""
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        got = P.scrape(server.server_address[1], timeout_s=5)
        assert P.total(got, "flink_taskmanager_job_task_operator_numRecordsIn") == 800.0
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(OSError):
        P.scrape(server.server_address[1], timeout_s=1)


# ------------------------------------------------------------------ configuration


def test_reporter_settings() -> None:
    s = M.reporter_settings(9271)
    assert s == {
        "metrics.reporter.prom.factory.class": "org.apache.flink.metrics.prometheus.PrometheusReporterFactory",
        "metrics.reporter.prom.port": "9271",
        "metrics.reporter.prom.filterLabelValueCharacters": "false",
    }
    assert M.reporter_settings("9249-9259")["metrics.reporter.prom.port"] == "9249-9259"


def test_port_from_env() -> None:
    assert M.port_from_env({}) is None
    assert M.port_from_env({M.PROMETHEUS_PORT_ENV: ""}) is None
    assert M.port_from_env({M.PROMETHEUS_PORT_ENV: "0"}) is None
    assert M.port_from_env({M.PROMETHEUS_PORT_ENV: " 9271 "}) == 9271


def _fake_home(tmp_path: Path) -> Path:
    home = tmp_path / "flink"
    (home / "lib").mkdir(parents=True)
    (home / "plugins" / "metrics-prometheus").mkdir(parents=True)
    for name in ("flink-dist-2.3.0.jar", "log4j-api-2.25.3.jar"):
        (home / "lib" / name).write_bytes(b"jar")
    (home / "plugins" / "metrics-prometheus" / "flink-metrics-prometheus-2.3.0.jar").write_bytes(b"jar")
    return home


def test_prepare_environment_links_lib_and_reporter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = _fake_home(tmp_path)
    monkeypatch.setenv("FLINK_HOME", str(home))
    monkeypatch.delenv("FLINK_LIB_DIR", raising=False)
    monkeypatch.delenv("PYFLINK_GATEWAY_PORT", raising=False)
    monkeypatch.setattr(M, "_gateway_running", lambda: False)
    lib = tmp_path / "cache" / "lib"
    (lib.parent).mkdir()
    lib.mkdir()
    (lib / "stale.jar").symlink_to(home / "lib" / "flink-dist-2.3.0.jar")
    M.prepare_environment(9271, lib_dir=lib)
    import os

    assert os.environ["FLINK_HOME"] == str(home)
    assert os.environ["FLINK_LIB_DIR"] == str(lib)
    names = sorted(p.name for p in lib.iterdir())
    assert names == ["flink-dist-2.3.0.jar", "flink-metrics-prometheus-2.3.0.jar", "log4j-api-2.25.3.jar"]
    assert all(p.is_symlink() and p.resolve().is_file() for p in lib.iterdir())
    M.prepare_environment(9271, lib_dir=lib)  # again: FLINK_LIB_DIR now points at lib itself
    assert sorted(p.name for p in lib.iterdir()) == names


def test_prepare_environment_noops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = _fake_home(tmp_path)
    monkeypatch.setenv("FLINK_HOME", str(home))
    monkeypatch.setenv("FLINK_LIB_DIR", "/somewhere")
    lib = tmp_path / "lib"
    M.prepare_environment(None, lib_dir=lib)
    M.prepare_environment(0, lib_dir=lib)
    monkeypatch.setenv("PYFLINK_GATEWAY_PORT", "12345")  # under `flink run -py`
    M.prepare_environment(9271, lib_dir=lib)
    import os

    assert not lib.exists()
    assert os.environ["FLINK_LIB_DIR"] == "/somewhere"


def test_reporter_jar_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        M.reporter_jar(tmp_path)


# ------------------------------------------------------------------ UdfMetrics

OP = "flink_taskmanager_job_task_operator_"


class FakeCounter:
    def __init__(self) -> None:
        self.count = 0
        self.calls = 0

    def inc(self, n: int = 1) -> None:
        assert isinstance(n, int)
        self.calls += 1
        self.count += n


class FakeGroup:
    """Like PyFlink's GenericMetricGroup: add_group(name) is a generic group,
    add_group(key, value) a key group plus a value group (a label); subgroups are cached.
    ``registry`` maps the exposed Prometheus name and labels to the metric."""

    def __init__(self, registry: dict, path: tuple = (), labels: tuple = ()) -> None:
        self.registry = registry
        self.path = path
        self.labels = labels
        self.subgroups: dict = {}

    def add_group(self, name: str, extra: str | None = None) -> FakeGroup:
        key = (name, extra)
        if key not in self.subgroups:
            labels = self.labels if extra is None else (*self.labels, (name, extra))
            self.subgroups[key] = type(self)(self.registry, (*self.path, name), labels)
        return self.subgroups[key]

    def _register(self, name: str, metric: object) -> None:
        prom = OP + "_".join((*self.path, name))
        key = (prom, self.labels)
        assert key not in self.registry, f"registered twice: {key}"
        self.registry[key] = metric

    def counter(self, name: str) -> FakeCounter:
        c = FakeCounter()
        self._register(name, c)
        return c

    def gauge(self, name: str, obj) -> None:
        self._register(name, obj)

    def distribution(self, name: str):  # UdfMetrics must not rely on it (exported as 0)
        raise AssertionError("distribution used")


class FakeContext:
    def __init__(self, group: FakeGroup | None = None, error: Exception | None = None) -> None:
        self.group = group
        self.error = error

    def get_metric_group(self) -> FakeGroup:
        if self.error is not None:
            raise self.error
        assert self.group is not None
        return self.group


def _metrics() -> tuple[M.UdfMetrics, dict]:
    registry: dict = {}
    return M.UdfMetrics(FakeContext(FakeGroup(registry))), registry


def value(registry: dict, name: str, **labels: str) -> float:
    for (prom, labs), metric in registry.items():
        if prom == name and dict(labs) == labels:
            return metric() if callable(metric) else metric.count
    raise KeyError((name, labels))


def buckets(registry: dict, name: str) -> dict[str, int]:
    return {dict(labs)["le"]: m.count for (prom, labs), m in registry.items() if prom == name + "_le_bucket"}


def test_rows_in_and_scores_labels() -> None:
    m, reg = _metrics()
    assert m.enabled
    m.rows_in(100)
    m.rows_in(0)
    m.rows_in(5)
    assert value(reg, M.UDF_PREFIX + "rows_in") == 105
    m.scores("v1.2", "treatment", "", 97)
    m.scores("3", "control", "model-error", 3)
    m.scores("v1.2", "treatment", None, 3)  # same label set: same counter
    name = M.UDF_PREFIX + "model_version_arm_fallback_scores"
    assert value(reg, name, model_version="v1.2", arm="treatment", fallback="none") == 100
    assert value(reg, name, model_version="3", arm="control", fallback="model-error") == 3
    assert len([k for k in reg if k[0] == name]) == 2
    assert M.UDF_PREFIX == OP + "streamscore_"


def test_batch_histograms_and_gauges() -> None:
    m, reg = _metrics()
    m.batch(100, 1.5)
    m.batch(2000, 12.25)
    rows = M.UDF_PREFIX + "batch_rows"
    assert value(reg, rows + "_count") == 2
    assert value(reg, rows + "_sum") == 2100
    b = buckets(reg, rows)
    assert set(b) == {"1", "10", "100", "500", "1000", "5000", "10000", "50000", "+Inf"}
    assert b["10"] == 0 and b["100"] == 1 and b["1000"] == 1 and b["5000"] == 2 and b["+Inf"] == 2
    inf = M.UDF_PREFIX + "inference_ms"
    assert buckets(reg, inf)["0.5"] == 0 and buckets(reg, inf)["2"] == 1 and buckets(reg, inf)["20"] == 2
    assert value(reg, inf + "_sum") == 13  # 13.75 so far, remainder carried
    m.batch(1, 0.25)
    assert value(reg, inf + "_sum") == 14
    assert value(reg, M.UDF_PREFIX + "last_batch_rows") == 1
    assert value(reg, M.UDF_PREFIX + "last_inference_us") == 250
    m.batch(5, float("nan"))  # rows counted, NaN time dropped, last time kept
    assert value(reg, rows + "_count") == 4
    assert value(reg, inf + "_count") == 3
    assert value(reg, M.UDF_PREFIX + "last_inference_us") == 250


def test_latency_vectorized_matches_definition() -> None:
    m, reg = _metrics()
    rng = np.random.default_rng(7)
    values = np.concatenate([rng.exponential(400.0, size=5000), [np.nan, np.inf, 5.0, 0.0, 10.0]])
    m.latency_ms(values)
    m.latency_ms([])
    m.latency_ms(np.array([], dtype=float))
    name = M.UDF_PREFIX + "latency_ms"
    finite = values[np.isfinite(values)]
    b = buckets(reg, name)
    for bound in M.LATENCY_BUCKETS_MS:
        assert b[str(bound)] == int((finite <= bound).sum()), bound
    assert b["+Inf"] == finite.size == value(reg, name + "_count")
    assert abs(value(reg, name + "_sum") - finite.sum()) < 1.0
    # the per-batch cost is a counter increment per bucket, not per row
    counters = [mt for (prom, _), mt in reg.items() if prom.startswith(name)]
    assert max(c.calls for c in counters) <= 2


def test_gauge_scaled_per_label_set() -> None:
    m, reg = _metrics()
    m.gauge("psi", {"feature": "amount"}, 0.125)
    m.gauge("psi", {"feature": "amount"}, 0.25)  # same label set: registered once, latest wins
    m.gauge("psi", {"feature": "count"}, 1e-7)
    m.gauge("disparity_ratio", {"segment": "region", "group": "EU"}, 0.8)
    m.gauge("disparity_ratio", {"group": "US", "segment": "region"}, 1.25)  # keys sorted
    m.gauge("psi", {"feature": "nan"}, float("nan"))
    m.gauge("psi", {"feature": "amount"}, float("inf"))  # non-finite keeps the previous value
    m.gauge("huge", {}, 1e300)
    psi = M.UDF_PREFIX + "feature_psi_ppm"
    assert value(reg, psi, feature="amount") == 250_000
    assert P.unscale(value(reg, psi, feature="amount")) == 0.25
    assert value(reg, psi, feature="count") == 0
    assert value(reg, psi, feature="nan") == 0
    ratio = M.UDF_PREFIX + "group_segment_disparity_ratio_ppm"
    assert value(reg, ratio, group="EU", segment="region") == 800_000
    assert value(reg, ratio, group="US", segment="region") == 1_250_000
    assert isinstance(value(reg, M.UDF_PREFIX + "huge_ppm"), int)
    assert value(reg, M.UDF_PREFIX + "huge_ppm") < 2 ** 63
    assert len([k for k in reg if k[0] == psi]) == 3


def test_disabled_without_metric_group() -> None:
    m = M.UdfMetrics(FakeContext(error=RuntimeError("Metric has not been enabled")))
    assert not m.enabled
    m.rows_in(3)
    m.scores("1", "a", "", 1)
    m.batch(1, 1.0)
    m.latency_ms([1.0, 2.0])
    m.gauge("psi", {"feature": "x"}, 0.1)
    assert not M.UdfMetrics(None).enabled


def test_metric_errors_are_swallowed() -> None:
    class Boom(FakeCounter):
        def inc(self, n: int = 1) -> None:
            raise RuntimeError("boom")

    class BoomGroup(FakeGroup):
        def counter(self, name: str) -> FakeCounter:
            c = Boom()
            self._register(name, c)
            return c

    m = M.UdfMetrics(BoomGroup({}))  # a metric group works as the source too
    assert m.enabled
    m.rows_in(1)
    m.scores("1", "a", "", 1)
    m.batch(10, 1.0)
    m.latency_ms([1.0])
    assert m.errors == 4
