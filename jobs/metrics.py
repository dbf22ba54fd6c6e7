"""Prometheus metrics of the job: Flink's ``metrics-prometheus`` reporter and the scoring
UDF's own metrics (reading an endpoint back: ``jobs/prometheus.py``).

How the reporter gets loaded (checked on apache-flink 2.3.0):

* Session cluster (``jobs/cluster.py``): the JobManager and TaskManager entrypoints load
  reporters as plugins from ``$FLINK_PLUGINS_DIR`` (``<wheel>/plugins``, which ships
  ``metrics-prometheus``); ``flink-conf/local/config.yaml`` names the reporter, on the port
  range 9249-9259 (one port per process: JobManager first, then each TaskManager).
* Embedded mini-cluster (``streamscore run`` / ``python -m jobs.flink_job``): the
  MiniCluster that PyFlink's local executor starts has *no* plugin manager, so
  ``FLINK_PLUGINS_DIR`` is ignored; reporter factories are found only on the gateway JVM's
  class path. Adding the jar at run time (``pipeline.jars``/``pipeline.classpaths``, which
  PyFlink puts on a context class loader) finds the factory but then fails with
  ``NoClassDefFoundError: io/prometheus/client/Collector``. What works is putting the jar
  on the JVM's class path when the gateway is launched: :func:`prepare_environment` points
  ``FLINK_LIB_DIR`` at a folder of links to the wheel's ``lib/*.jar`` plus the reporter jar
  (and sets ``FLINK_HOME``, since without it ``pyflink.find_flink_home`` overwrites
  ``FLINK_LIB_DIR``). It must run before the first PyFlink call that starts the gateway
  (``Configuration()``, ``TableEnvironment.create``...), and the ``metrics.reporter.*``
  options (:func:`reporter_settings`) must be in the configuration the environment is
  created with (``EnvironmentSettings...with_configuration``), which is what the
  MiniCluster is started from. The reporter's HTTP server lives as long as the
  mini-cluster, i.e. until the job ends.

What PyFlink user metrics look like in Prometheus (all exposed with ``# TYPE ... gauge``,
Flink counters included):

* ``metric_group.counter("x")`` -> ``flink_taskmanager_job_task_operator_x``; a generic
  group ``add_group("g")`` adds ``g_`` to the name; a key-value group
  ``add_group("k", "v")`` adds ``k_`` to the name and the label ``k="v"``.
  Labels also carry Flink's scope variables (job_id, job_name, task_name, operator_name,
  subtask_index, tm_id, ...).
* Python gauges and distributions go through Beam's *int64* cells: a gauge's value is
  truncated to an integer (0.25 -> 0), and a distribution reaches the JVM as a gauge of a
  ``DistributionResult``, which the Prometheus reporter exports as ``0``. Hence
  :class:`UdfMetrics` builds histograms out of counters (Prometheus ``le`` buckets) and
  publishes float gauges scaled by :data:`GAUGE_SCALE` (name suffix ``_ppm``).
* Python gauges are read at the end of each bundle, counters are shipped to the JVM per
  bundle: values lag by at most one bundle (``python.fn-execution.bundle.time``).
"""

from __future__ import annotations

import bisect
import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

PROMETHEUS_PORT_ENV = "STREAMSCORE_PROMETHEUS_PORT"
REPORTER_NAME = "prom"
REPORTER_FACTORY = "org.apache.flink.metrics.prometheus.PrometheusReporterFactory"
SESSION_CLUSTER_PORTS = "9249-9259"  # flink-conf/local/config.yaml: JobManager, then TaskManagers

# Name prefix of every metric registered by UdfMetrics, as exposed by the reporter.
OPERATOR_PREFIX = "flink_taskmanager_job_task_operator_"
GROUP = "streamscore"
UDF_PREFIX = f"{OPERATOR_PREFIX}{GROUP}_"

GAUGE_SCALE = 1_000_000  # float gauges are published as round(value * GAUGE_SCALE)
GAUGE_SUFFIX = "_ppm"
_INT64_LIMIT = 2 ** 62  # keep scaled values well inside Beam's int64 cells

# Histogram bucket upper bounds (cumulative, Prometheus ``le`` semantics; "+Inf" is added).
LATENCY_BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000)
INFERENCE_BUCKETS_MS = (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
BATCH_ROWS_BUCKETS = (1, 10, 100, 500, 1000, 5000, 10000, 50000)


# ------------------------------------------------------------------ configuration


def port_from_env(environ: Mapping[str, str] | None = None) -> int | None:
    """The Prometheus port asked for with ``STREAMSCORE_PROMETHEUS_PORT`` (unset, empty or
    ``0``: no reporter)."""
    raw = (os.environ if environ is None else environ).get(PROMETHEUS_PORT_ENV, "").strip()
    if not raw:
        return None
    port = int(raw)
    return port or None


def reporter_settings(port: int | str) -> dict[str, str]:
    """Flink options that start the Prometheus reporter on ``port`` (an int, or a range
    such as ``"9249-9259"``: each process takes the first free port).

    ``filterLabelValueCharacters: false`` keeps label values as they are (``v1.2``,
    ``+Inf``; the reporter's default replaces everything outside ``[a-zA-Z0-9:_]`` by
    ``_``); the Prometheus client escapes them in the text format."""
    prefix = f"metrics.reporter.{REPORTER_NAME}."
    return {
        prefix + "factory.class": REPORTER_FACTORY,
        prefix + "port": str(port),
        prefix + "filterLabelValueCharacters": "false",
    }


def _flink_home() -> Path:
    home = os.environ.get("FLINK_HOME")
    if home:
        return Path(home)
    import pyflink  # the wheel is a Flink home (bin/, lib/, opt/, plugins/)

    return Path(pyflink.__file__).resolve().parent


def reporter_jar(home: Path | None = None) -> Path:
    home = home or _flink_home()
    for folder in ("plugins/metrics-prometheus", "opt", "lib"):
        hits = sorted((home / folder).glob("flink-metrics-prometheus*.jar"))
        if hits:
            return hits[-1]
    raise FileNotFoundError(f"flink-metrics-prometheus*.jar not found under {home}")


def _gateway_running() -> bool:
    if os.environ.get("PYFLINK_GATEWAY_PORT"):  # `flink run -py`: the CLI's JVM is the gateway
        return True
    mod = sys.modules.get("pyflink.java_gateway")
    return getattr(mod, "_gateway", None) is not None


def prepare_environment(port: int | str | None, lib_dir: Path | None = None) -> None:
    """Put the Prometheus reporter jar on the class path of the JVM that PyFlink launches
    for the embedded mini-cluster (see the module docstring for why the class path and not
    the plugins folder); call it before the first PyFlink call of the process.

    Sets ``FLINK_HOME`` (to the wheel, as ``pyflink.find_flink_home`` would) and
    ``FLINK_LIB_DIR`` (a git-ignored folder of links: ``$FLINK_HOME/lib/*.jar`` and the
    reporter jar). No-op without a port, or when the gateway runs already (then a
    warning: the reporter will not load there); under ``flink run -py`` the cluster's
    configuration decides."""
    if not port:
        return
    if _gateway_running():
        if not os.environ.get("PYFLINK_GATEWAY_PORT"):
            print("[metrics] warning: the PyFlink gateway is already running; the Prometheus reporter "
                  "jar cannot be added to its class path", file=sys.stderr)
        return
    home = _flink_home()
    jar = reporter_jar(home)
    if lib_dir is None:
        from jobs.paths import CACHE

        lib_dir = CACHE / "flink-lib-local"
    src_lib = Path(os.environ.get("FLINK_LIB_DIR") or home / "lib")
    if src_lib.resolve() == lib_dir.resolve():  # prepared before in this process
        src_lib = home / "lib"
    lib_dir.mkdir(parents=True, exist_ok=True)
    wanted = {p.name: p.resolve() for p in src_lib.glob("*.jar")}
    wanted[jar.name] = jar.resolve()
    for old in lib_dir.iterdir():
        if old.name not in wanted and old.is_symlink():
            old.unlink()
    for name, target in wanted.items():
        link = lib_dir / name
        if link.is_symlink() and Path(os.readlink(link)) == target:
            continue
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
    os.environ["FLINK_HOME"] = str(home)
    os.environ["FLINK_LIB_DIR"] = str(lib_dir)


# ------------------------------------------------------------------ UDF metrics


class _Noop:
    def inc(self, n: int = 1) -> None:
        pass


def _label(value: Any) -> str:
    s = "" if value is None else str(value)
    return s if s else "none"


def _bound_label(b: float) -> str:
    return str(int(b)) if float(b).is_integer() else repr(float(b))


class _CounterHistogram:
    """A Prometheus histogram made of Flink counters (PyFlink distributions do not reach
    Prometheus): ``<name>_le_bucket{le="..."}`` (cumulative, with ``le="+Inf"``),
    ``<name>_count`` and ``<name>_sum``."""

    def __init__(self, group: Any, name: str, bounds: Iterable[float]) -> None:
        self.bounds = sorted(float(b) for b in bounds)
        g = group.add_group(name)
        self.buckets = [g.add_group("le", _bound_label(b)).counter("bucket") for b in self.bounds]
        self.buckets.append(g.add_group("le", "+Inf").counter("bucket"))
        self.count = g.counter("count")
        self.sum = g.counter("sum")
        self._sum_rest = 0.0  # sub-unit remainder carried so the integer sum stays exact
        self._primed = False

    def _prime(self) -> None:
        """Touch every counter once (inside ``eval``, where Beam has a metrics container):
        a counter that was never incremented is never shipped to the JVM, and a missing
        bucket would skew ``histogram_quantile``."""
        self._primed = True
        for c in (*self.buckets, self.count, self.sum):
            c.inc(0)

    def _add_sum(self, s: float) -> None:
        acc = self._sum_rest + s
        whole = math.floor(acc)
        self._sum_rest = acc - whole
        if whole:
            self.sum.inc(int(whole))

    def observe(self, value: float) -> None:
        if not self._primed:
            self._prime()
        v = float(value)
        if not math.isfinite(v):
            return
        first = bisect.bisect_left(self.bounds, v)  # value <= bounds[first]
        for c in self.buckets[first:]:
            c.inc(1)
        self.count.inc(1)
        self._add_sum(v)

    def observe_many(self, values: Any) -> None:
        import numpy as np

        if not self._primed:
            self._prime()
        arr = np.asarray(values, dtype=np.float64).ravel()
        arr = arr[np.isfinite(arr)]
        if arr.size == 0:
            return
        idx = np.searchsorted(np.asarray(self.bounds), arr, side="left")
        per_bucket = np.bincount(idx, minlength=len(self.buckets))
        cumulative = np.cumsum(per_bucket)
        for c, n in zip(self.buckets, cumulative.tolist(), strict=True):
            if n:
                c.inc(int(n))
        self.count.inc(int(arr.size))
        self._add_sum(float(arr.sum()))


class UdfMetrics:
    """Metrics of the scoring UDF, registered on its operator's metric group under the
    generic group ``streamscore``. Build it in ``open(function_context)``::

        self.metrics = UdfMetrics(function_context)

    Every method is cheap per batch (a few counter increments; ``latency_ms`` is
    vectorized) and never raises: without a metric group (``python.metric.enabled``
    false, or a test) it is a no-op, and an error inside a metric call is swallowed.

    Exposed as (each with Flink's scope labels: job_name, operator_name, subtask_index...):

    * ``flink_taskmanager_job_task_operator_streamscore_rows_in``
    * ``..._streamscore_model_version_arm_fallback_scores{model_version,arm,fallback}``
    * ``..._streamscore_batch_rows_le_bucket{le}``, ``..._batch_rows_count`` (batches),
      ``..._batch_rows_sum`` (rows), same for ``inference_ms`` (sum in whole ms)
    * ``..._streamscore_last_batch_rows``, ``..._streamscore_last_inference_us`` (gauges)
    * ``..._streamscore_latency_ms_le_bucket{le}``, ``..._latency_ms_count``,
      ``..._latency_ms_sum``
    * ``gauge("psi", {"feature": "f1"}, 0.12)`` ->
      ``..._streamscore_feature_psi_ppm{feature="f1"}`` = 120000 (value x 1e6)
    """

    def __init__(self, source: Any, group_name: str = GROUP) -> None:
        self.errors = 0
        self._group: Any = None
        self._scores: dict[tuple[str, str, str], Any] = {}
        self._gauges: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}
        self._ints: dict[str, int] = {}
        try:
            base = source.get_metric_group() if hasattr(source, "get_metric_group") else source
            if base is None:
                return
            self._group = base.add_group(group_name)
            self._rows_in = self._group.counter("rows_in")
            self._batch_rows = _CounterHistogram(self._group, "batch_rows", BATCH_ROWS_BUCKETS)
            self._inference = _CounterHistogram(self._group, "inference_ms", INFERENCE_BUCKETS_MS)
            self._latency = _CounterHistogram(self._group, "latency_ms", LATENCY_BUCKETS_MS)
            self._int_gauge("last_batch_rows")
            self._int_gauge("last_inference_us")
        except Exception as exc:  # RuntimeError when python.metric.enabled is false
            self._disable(exc)

    @property
    def enabled(self) -> bool:
        return self._group is not None

    def _disable(self, exc: BaseException) -> None:
        self.errors += 1
        self._group = None
        print(f"[metrics] UDF metrics disabled: {type(exc).__name__}: {exc}", file=sys.stderr)

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        if self.errors <= 3:
            print(f"[metrics] metric update failed: {type(exc).__name__}: {exc}", file=sys.stderr)

    def _int_gauge(self, name: str) -> None:
        self._ints[name] = 0
        ints = self._ints
        self._group.gauge(name, lambda: ints[name])

    # -------------------------------------------------------------- public API

    def rows_in(self, n: int) -> None:
        if self._group is None or not n:
            return
        try:
            self._rows_in.inc(int(n))
        except Exception as exc:
            self._failed(exc)

    def scores(self, model_version: str, arm: str, fallback_reason_kind: str, n: int = 1) -> None:
        """Count ``n`` scores served by ``model_version`` on ``arm`` with the fallback
        reason kind (``""``/None -> ``none``)."""
        if self._group is None or not n:
            return
        try:
            key = (_label(model_version), _label(arm), _label(fallback_reason_kind))
            counter = self._scores.get(key)
            if counter is None:
                counter = (self._group.add_group("model_version", key[0]).add_group("arm", key[1])
                           .add_group("fallback", key[2]).counter("scores"))
                self._scores[key] = counter
            counter.inc(int(n))
        except Exception as exc:
            self._failed(exc)

    def batch(self, rows: int, inference_ms: float) -> None:
        """One scored batch: its size and the model's inference time."""
        if self._group is None:
            return
        try:
            self._batch_rows.observe(rows)
            self._inference.observe(inference_ms)
            self._ints["last_batch_rows"] = int(rows)
            if math.isfinite(inference_ms):
                self._ints["last_inference_us"] = int(round(inference_ms * 1000.0))
        except Exception as exc:
            self._failed(exc)

    def latency_ms(self, values: Any) -> None:
        """End-to-end latencies (window close -> score), an array-like of ms."""
        if self._group is None:
            return
        try:
            self._latency.observe_many(values)
        except Exception as exc:
            self._failed(exc)

    def gauge(self, name: str, labels: Mapping[str, Any], value: float) -> None:
        """Set a float gauge (drift statistics, fairness ratios) per label set; published as
        ``<label keys...>_<name>_ppm`` = round(value x 1e6). A non-finite value keeps the
        previous one (0 before the first). Label keys are sorted (they are part of the
        Flink metric name)."""
        if self._group is None:
            return
        try:
            items = tuple(sorted((str(k), _label(v)) for k, v in labels.items()))
            key = (name, items)
            v = float(value)
            if key not in self._gauges:
                self._gauges[key] = 0
                group = self._group
                for k, lv in items:
                    group = group.add_group(k, lv)
                gauges = self._gauges
                group.gauge(name + GAUGE_SUFFIX, _reader(gauges, key))
            if math.isfinite(v):
                scaled = int(round(v * GAUGE_SCALE))
                self._gauges[key] = max(-_INT64_LIMIT, min(_INT64_LIMIT, scaled))
        except Exception as exc:
            self._failed(exc)


def _reader(values: dict, key: Any) -> Callable[[], int]:
    return lambda: values[key]
