"""Memory soak (``streamscore soak``): the Flink job runs unbounded under a steady generated
load while the resident memory (RSS) of every process of its tree (driver, the
mini-cluster's JVM, the Python workers) and of the broker is sampled.

Method
* Fresh topics; the job starts as a subprocess, unbounded; a producer sends generated
  events (5% out of order, 0.1% late) at ``--rate`` events/s, with event time following
  the wall clock, so windows keep closing and expiring for the whole run.
* RSS is sampled every ``--sample-s`` seconds. Samples of the warm-up (``--warmup-s``
  from the moment the job's Python worker is up, i.e. the scoring stage runs: class
  loading, the first windows and checkpoints) are plotted but left out of the figures. ``start_mb`` / ``end_mb`` are the medians of the first and last
  ``--smooth`` samples after the warm-up (GC and allocator noise), and
  ``growth_pct = (end - start) / start * 100``, for the job tree in total and per kind.
* The mini-cluster's JVM gets a fixed, pre-touched heap (``--jvm-heap-mb``, as a
  TaskManager with a fixed process size has), so the JVM growing its heap towards the
  default maximum (a quarter of RAM) does not read as growth; ``--jvm-heap-mb 0`` keeps
  the JVM defaults. ``jvm_heap`` gives the heap's use from ``jstat -gc`` beside RSS.
* The last line printed is one JSON object (``"kind": "soak"``); it is also appended to
  ``bench/results.jsonl`` (unless ``--no-record``) and ``bench/out/soak.html`` plots RSS
  over time per process. Target: job-tree growth within 10% over 10 minutes.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs import kafka_local
from jobs.generator import TrafficConfig, generate_events
from jobs.job_runner import fresh_topics, job_env, start_job, stop_job
from jobs.kafka_io import produce_events, read_topic
from jobs.paths import REGISTRY, ROOT, git_commit
from jobs.procstats import descendants, rss_mb

RESULTS = ROOT / "bench" / "results.jsonl"
HTML_OUT = ROOT / "bench" / "out" / "soak.html"
KINDS = ("driver", "jvm", "python_worker", "other")
# generate_events' event_rate_per_s overshoots the events it makes per second of event time
# by about this factor (sessions are shorter than it assumes); the bench corrects the same way
EVENT_RATE_FACTOR = 0.76


@dataclass(frozen=True)
class SoakConfig:
    """One soak run."""

    minutes: float = 10.0  # measured time, after the warm-up
    rate_per_s: float = 5_000.0  # produced events per second (the job manages ~15-20k on 2 cores)
    warmup_s: float = 60.0  # from the scoring stage's start (its Python worker); plotted, not counted
    sample_s: float = 5.0
    smooth: int = 5  # samples whose median gives the start and the end figures
    limit_pct: float = 10.0
    seed: int = 21
    n_users: int = 20_000
    stop_grace_s: float = 30.0
    start_timeout_s: float = 300.0  # the warm-up starts then at the latest, Python worker or not
    jvm_heap_mb: int = 1536  # 0: the JVM's defaults

    def __post_init__(self) -> None:
        if self.minutes <= 0 or self.rate_per_s <= 0:
            raise ValueError("minutes and rate_per_s must be > 0")
        if self.warmup_s < 0 or self.sample_s <= 0 or self.smooth < 1:
            raise ValueError("need warmup_s >= 0, sample_s > 0 and smooth >= 1")
        if self.minutes * 60 < 2 * self.smooth * self.sample_s:
            raise ValueError(f"{self.minutes} minutes hold fewer than 2 x {self.smooth} samples every {self.sample_s}s")
        if self.limit_pct <= 0 or self.n_users < 1 or self.stop_grace_s < 0 or self.start_timeout_s <= 0:
            raise ValueError("need limit_pct > 0, n_users >= 1, stop_grace_s >= 0 and start_timeout_s > 0")
        if self.jvm_heap_mb != 0 and self.jvm_heap_mb < 256:
            raise ValueError("jvm_heap_mb must be 0 (JVM defaults) or >= 256")

    def jvm_args(self) -> str:
        """``JVM_ARGS`` of the job's mini-cluster JVM (read by PyFlink's gateway launcher)."""
        m = self.jvm_heap_mb
        return f"-Xms{m}m -Xmx{m}m -XX:+AlwaysPreTouch" if m else ""


# -- the pure part: samples -> figures --------------------------------------------------------

Sample = tuple[float, dict[str, float]]  # (seconds since the job's start, {"<kind>:<pid>": MiB})


def growth(values: Sequence[float], smooth: int) -> dict[str, float | None]:
    """Start (median of the first ``smooth`` values), end (median of the last ``smooth``),
    peak and growth in percent of the start; None figures when there are no values.

    >>> growth([100, 101, 99, 150, 110, 111, 109], 3)
    {'start_mb': 100.0, 'end_mb': 110.0, 'peak_mb': 150.0, 'growth_pct': 10.0}
    """
    if not values:
        return {"start_mb": None, "end_mb": None, "peak_mb": None, "growth_pct": None}
    k = max(1, min(smooth, len(values) // 2 or 1))
    start, end = float(statistics.median(values[:k])), float(statistics.median(values[-k:]))
    return {"start_mb": round(start, 1), "end_mb": round(end, 1), "peak_mb": round(float(max(values)), 1),
            "growth_pct": round((end - start) / start * 100, 2) if start > 0 else None}


def parse_jstat_gc(text: str) -> dict[str, float] | None:
    """Heap figures (MiB) from ``jstat -gc`` output: committed, used, old generation used
    and metaspace used; None when it is not that output.

    >>> parse_jstat_gc("S0C S1C S0U S1U EC EU OC OU MC MU\\n0.0 1024.0 0.0 512.0 2048.0 1024.0 4096.0 2048.0 512.0 256.0")
    {'heap_committed_mb': 7.0, 'heap_used_mb': 3.5, 'old_used_mb': 2.0, 'metaspace_used_mb': 0.25}
    """
    lines = [ln.split() for ln in text.strip().splitlines() if ln.strip()]
    if len(lines) < 2 or len(lines[0]) != len(lines[-1]):
        return None
    try:
        row = dict(zip(lines[0], (float(v) for v in lines[-1]), strict=True))
        kb = {"heap_committed_mb": row["S0C"] + row["S1C"] + row["EC"] + row["OC"],
              "heap_used_mb": row["S0U"] + row["S1U"] + row["EU"] + row["OU"], "old_used_mb": row["OU"],
              "metaspace_used_mb": row["MU"]}
    except (KeyError, ValueError):
        return None
    return {k: round(v / 1024, 2) for k, v in kb.items()}


def kind_of(label: str) -> str:
    return label.split(":", 1)[0]


def summarize_samples(samples: Sequence[Sample], warmup_s: float, smooth: int, limit_pct: float,
                      broker: Sequence[Sample] = (), heap: Sequence[Sample] = ()) -> dict[str, Any]:
    """Growth of the job tree's total RSS and of each process kind's total, from the
    samples after ``warmup_s``; ``within_limit`` when the total grew at most ``limit_pct``.
    ``heap``: the JVM's ``parse_jstat_gc`` figures over time (reported, not judged)."""
    kept = [(t, procs) for t, procs in samples if t >= warmup_s]
    total = growth([sum(procs.values()) for _, procs in kept], smooth)
    kinds = sorted({kind_of(label) for _, procs in kept for label in procs}, key=lambda k: (k not in KINDS, k))
    by_kind = {k: growth([sum(v for label, v in procs.items() if kind_of(label) == k) for _, procs in kept], smooth)
               for k in kinds}
    pct = total["growth_pct"]
    heap_kept = [h for t, h in heap if t >= warmup_s]
    jvm_heap = {k: growth([h[k] for h in heap_kept if k in h], smooth)
                for k in ("heap_committed_mb", "heap_used_mb", "old_used_mb", "metaspace_used_mb")} if heap_kept else None
    return {"samples": len(kept), "job": total, "by_kind": by_kind,
            "broker": growth([sum(p.values()) for t, p in broker if t >= warmup_s], smooth), "jvm_heap": jvm_heap,
            "growth_pct": pct, "limit_pct": limit_pct, "within_limit": pct is not None and pct <= limit_pct}


# -- sampling, the load and the run ---------------------------------------------------------


def _log(msg: str) -> None:
    print(f"[soak] {msg}", file=sys.stderr, flush=True)


def job_tree_rss(root: int) -> dict[str, float]:
    """``"<kind>:<pid>" -> MiB`` of the job's process tree: the root is the driver."""
    out = {}
    for pid, (name, mb) in rss_mb(descendants(root)).items():
        kind = "driver" if pid == root else "jvm" if name == "java" else \
            "python_worker" if name.startswith("python") else "other"
        out[f"{kind}:{pid}"] = round(mb, 1)
    return out


def jvm_heap(pids: Sequence[int]) -> dict[str, float]:
    """``jstat -gc`` figures of the first pid that answers; empty without jstat."""
    jstat = shutil.which("jstat")
    for pid in pids:
        if jstat is None:
            break
        try:
            res = subprocess.run([jstat, "-gc", str(pid)], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        figures = parse_jstat_gc(res.stdout) if res.returncode == 0 else None
        if figures:
            return figures
    return {}


class Load:
    """Generated events produced at a steady rate by a background thread until stopped."""

    def __init__(self, bootstrap: str, topic: str, cfg: SoakConfig) -> None:
        self.bootstrap, self.topic, self.cfg = bootstrap, topic, cfg
        self.sent = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.started = 0.0

    def _events(self) -> Iterator[dict[str, Any]]:
        cfg = self.cfg
        horizon_s = cfg.start_timeout_s + cfg.warmup_s + cfg.minutes * 60 + 600  # far more than is needed: stopped by the flag
        traffic = TrafficConfig(seed=cfg.seed, n_users=cfg.n_users, base_ts_ms=int(time.time() * 1000),
                                event_rate_per_s=cfg.rate_per_s / EVENT_RATE_FACTOR, out_of_order_fraction=0.05,
                                late_fraction=0.001)
        for ev in generate_events(int(cfg.rate_per_s * horizon_s), traffic):
            if self._stop.is_set():
                return
            self.sent += 1
            yield ev

    def _run(self) -> None:
        try:
            produce_events(self.bootstrap, self.topic, self._events(), rate_per_s=self.cfg.rate_per_s,
                           seed=self.cfg.seed, progress=False)
        except BaseException as exc:  # reported by the main thread
            self.error = exc

    def start(self) -> None:
        self.started = time.monotonic()
        self._thread.start()

    def stop(self) -> float:
        """Stop producing; the achieved rate."""
        self._stop.set()
        self._thread.join(120)
        return self.sent / max(time.monotonic() - self.started, 1e-9)


def _kill_leftovers(pids: Sequence[int]) -> int:
    """SIGKILL the processes of the job's tree that outlived its driver."""
    n = 0
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            n += 1
        except (ProcessLookupError, PermissionError):
            pass
    return n


def run_soak(broker: kafka_local.BrokerConfig, broker_pid: int, cfg: SoakConfig, work: Path
             ) -> tuple[dict[str, Any], list[Sample], list[Sample]]:
    """Run the job under load for the warm-up plus ``cfg.minutes``; the summary and the
    samples of the job tree and of the broker."""
    bootstrap = broker.bootstrap
    topics = fresh_topics(bootstrap, "soak")
    env = job_env(bootstrap, topics, STREAMSCORE_BOUNDED="false", STREAMSCORE_REGISTRY=str(REGISTRY),
                  STREAMSCORE_CHECKPOINT_DIR=str(work / "ckpt"))
    if cfg.jvm_args():
        env["JVM_ARGS"] = f"{env.get('JVM_ARGS', '')} {cfg.jvm_args()}".strip()
    log_path = work / "job.log"
    samples: list[Sample] = []
    broker_samples: list[Sample] = []
    heap_samples: list[Sample] = []
    with open(log_path, "ab") as log:
        proc = start_job(env, "--unbounded", stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    t0 = time.monotonic()
    load = Load(bootstrap, topics["events"], cfg)
    load.start()
    _log(f"job pid {proc.pid} on {topics['events']}; {cfg.rate_per_s:,.0f} events/s for {cfg.warmup_s:.0f}s "
         f"warm-up + {cfg.minutes:g} min")
    tree: list[int] = []
    rate = 0.0
    measure_from: float | None = None  # seconds after t0: the scoring stage's start + the warm-up
    try:
        while True:
            now = time.monotonic()
            if proc.poll() is not None:
                raise RuntimeError(f"job exited ({proc.returncode}) after {now - t0:.0f}s:\n"
                                   + log_path.read_text(errors="replace")[-4000:])
            if load.error is not None:
                raise RuntimeError(f"producer failed: {load.error}") from load.error
            tree = descendants(proc.pid)
            procs = job_tree_rss(proc.pid)
            if measure_from is None and (any(kind_of(lab) == "python_worker" for lab in procs)
                                         or now - t0 >= cfg.start_timeout_s):
                measure_from = round(now - t0, 1) + cfg.warmup_s
                _log(f"scoring stage up after {now - t0:.0f}s; measuring from {measure_from:.0f}s")
            samples.append((round(now - t0, 1), procs))
            broker_samples.append((round(now - t0, 1), {f"broker:{broker_pid}": mb for _, mb in
                                                        rss_mb([broker_pid]).values()}))
            heap = jvm_heap([int(lab.split(":")[1]) for lab in procs if kind_of(lab) == "jvm"])
            if heap:
                heap_samples.append((round(now - t0, 1), heap))
            phase = "warm-up" if measure_from is None or now - t0 < measure_from else \
                f"{(now - t0 - measure_from) / 60:.1f}/{cfg.minutes:g} min"
            kinds = {k: sum(v for lab, v in procs.items() if kind_of(lab) == k) for k in KINDS}
            _log(f"{phase}: job {sum(procs.values()):,.0f} MB (" + ", ".join(
                f"{k} {v:,.0f}" for k, v in kinds.items() if v) + f"), broker "
                f"{sum(broker_samples[-1][1].values()):,.0f} MB, {load.sent:,} events sent"
                + (f"; JVM heap used {heap['heap_used_mb']:,.0f} MB, old {heap['old_used_mb']:,.0f} MB" if heap else ""))
            end = t0 + (measure_from if measure_from is not None else cfg.start_timeout_s) + cfg.minutes * 60
            if measure_from is not None and now >= end - 0.5:
                break
            time.sleep(max(0.0, min(cfg.sample_s - (time.monotonic() - now), end - time.monotonic())))
    finally:
        rate = load.stop()
        tree = sorted(set(tree) | set(descendants(proc.pid)))
        stop_job(proc, cfg.stop_grace_s)
        left = _kill_leftovers([p for p in tree if p != proc.pid])
        if left:
            _log(f"killed {left} processes of the job that outlived its driver")
    scores = len(read_topic(bootstrap, topics["scores"], lambda _v: None, timeout_s=120))
    cut = measure_from if measure_from is not None else cfg.start_timeout_s
    summary = summarize_samples(samples, cut, cfg.smooth, cfg.limit_pct, broker_samples, heap_samples)
    return ({"minutes": cfg.minutes, "rate_per_s": cfg.rate_per_s, "achieved_rate_per_s": round(rate, 1),
             "jvm_heap_mb": cfg.jvm_heap_mb or None,
             "warmup_s": cfg.warmup_s, "measured_from_s": cut, "sample_s": cfg.sample_s, "events_produced": load.sent, "scores_seen": scores,
             **summary}, samples, broker_samples)


# -- output -------------------------------------------------------------------------------------

_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")


def soak_html(samples: Sequence[Sample], broker: Sequence[Sample], summary: dict[str, Any]) -> str:
    """A self-contained page: RSS over time per process and the job tree's total (inline SVG)."""
    series: dict[str, list[tuple[float, float]]] = {}
    for t, procs in samples:
        series.setdefault("job total", []).append((t, sum(procs.values())))
        for label, mb in procs.items():
            series.setdefault(label, []).append((t, mb))
    for t, procs in broker:
        for label, mb in procs.items():
            series.setdefault(label, []).append((t, mb))
    w, h, pad, legend = 820, 360, 50, 200
    t_max = max([t for pts in series.values() for t, _ in pts] + [1.0])
    top = max([v for pts in series.values() for _, v in pts] + [1.0]) * 1.05

    def x(t: float) -> float:
        return pad + (w - 2 * pad) * t / t_max

    def y(v: float) -> float:
        return h - pad - (h - 2 * pad) * v / top

    warm = float(summary.get("measured_from_s", summary.get("warmup_s")) or 0.0)
    parts = [f'<rect x="{x(0):.1f}" y="{pad}" width="{x(min(warm, t_max)) - x(0):.1f}" height="{h - 2 * pad}" '
             'fill="#eee"/>',
             f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="#000"/>',
             f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="#000"/>',
             f'<text x="{pad}" y="{pad - 8}" font-size="12">{top:,.0f} MB</text>',
             f'<text x="{w - pad}" y="{h - pad + 16}" font-size="12" text-anchor="end">{t_max / 60:.1f} min</text>',
             f'<text x="{x(0) + 4}" y="{pad + 14}" font-size="11" fill="#666">warm-up</text>']
    for i, (label, pts) in enumerate(sorted(series.items(), key=lambda kv: (kv[0] != "job total", kv[0]))):
        color = _COLORS[i % len(_COLORS)]
        poly = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in pts)
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="{3 if i == 0 else 1.5}" points="{poly}"/>')
        parts.append(f'<text x="{w + 4}" y="{pad + 16 * i}" font-size="12" fill="{color}">{html.escape(label)} '
                     f'({pts[-1][1]:,.0f} MB)</text>')
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v['start_mb']}</td><td>{v['end_mb']}</td><td>{v['peak_mb']}</td>"
                   f"<td>{v['growth_pct']}</td></tr>"
                   for k, v in [("job total", summary["job"]), *summary["by_kind"].items(), ("broker", summary["broker"])])
    verdict = "within" if summary["within_limit"] else "NOT within"
    return ("<!doctype html><meta charset='utf-8'><title>streamscore soak</title>"
            "<body style='font-family:sans-serif'><h1>streamscore memory soak</h1>"
            f"<p>{summary['minutes']:g} min at {summary['rate_per_s']:,.0f} events/s from {warm:.0f}s after the "
            f"job's start (warm-up shaded); "
            f"job tree RSS growth {summary['growth_pct']}% ({verdict} {summary['limit_pct']:g}%)</p>"
            f"<svg width='{w + legend}' height='{h}'>{''.join(parts)}</svg>"
            "<table border='1' cellpadding='4'><tr><th>processes</th><th>start MB</th><th>end MB</th><th>peak MB</th>"
            f"<th>growth %</th></tr>{rows}</table></body>")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="streamscore soak", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    d = SoakConfig()
    ap.add_argument("--minutes", type=float, default=d.minutes, help=f"measured minutes (default {d.minutes:g})")
    ap.add_argument("--rate", type=float, default=d.rate_per_s, help=f"events per second (default {d.rate_per_s:g})")
    ap.add_argument("--warmup-s", type=float, default=d.warmup_s, help=f"warm-up left out (default {d.warmup_s:g})")
    ap.add_argument("--sample-s", type=float, default=d.sample_s, help=f"sampling interval (default {d.sample_s:g})")
    ap.add_argument("--smooth", type=int, default=d.smooth, help=f"samples per start/end median (default {d.smooth})")
    ap.add_argument("--limit-pct", type=float, default=d.limit_pct, help=f"growth target (default {d.limit_pct:g})")
    ap.add_argument("--seed", type=int, default=d.seed, help="traffic seed")
    ap.add_argument("--jvm-heap-mb", type=int, default=d.jvm_heap_mb,
                    help=f"fixed, pre-touched heap of the job's JVM (default {d.jvm_heap_mb}; 0: JVM defaults)")
    ap.add_argument("--html", type=Path, default=HTML_OUT, help=f"plot page (default {HTML_OUT.relative_to(ROOT)})")
    ap.add_argument("--no-record", action="store_true", help="do not append to bench/results.jsonl")
    args = ap.parse_args(argv)
    try:
        cfg = SoakConfig(minutes=args.minutes, rate_per_s=args.rate, warmup_s=args.warmup_s, sample_s=args.sample_s,
                         smooth=args.smooth, limit_pct=args.limit_pct, seed=args.seed, jvm_heap_mb=args.jvm_heap_mb)
    except ValueError as exc:
        ap.error(str(exc))
    if not REGISTRY.exists():
        raise SystemExit(f"no model registry at {REGISTRY}: run `streamscore train` first")
    broker = kafka_local.BrokerConfig.from_env()
    was_running = kafka_local.answers(broker.bootstrap)
    broker_pid = kafka_local.start(broker)
    work = Path(tempfile.mkdtemp(prefix="streamscore-soak-"))
    try:
        summary, samples, broker_samples = run_soak(broker, broker_pid, cfg, work)
    finally:
        if not was_running:
            kafka_local.stop(broker)
        shutil.rmtree(work, ignore_errors=True)
    result = {"kind": "soak", "commit": git_commit(), "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              **summary, "html": str(args.html)}
    args.html.parent.mkdir(parents=True, exist_ok=True)
    args.html.write_text(soak_html(samples, broker_samples, result))
    if not args.no_record:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with open(RESULTS, "a") as fh:
            fh.write(json.dumps(result) + "\n")
    _log(f"plot: {args.html}")
    print(json.dumps(result))
    return 0 if result["within_limit"] else 1


if __name__ == "__main__":
    sys.exit(main())
