"""``streamscore bench`` (``make bench``): end-to-end throughput and latency of the Flink
job against the engine's ceiling and a plain-Python peer, on the same events and broker,
in one run. The last line printed is one JSON object; every run is appended to
``bench/results.jsonl`` and ``bench/history.html`` is redrawn.

Method
* Throughput: N generated events (5% out of order, no malformed) are pre-loaded into a
  fresh topic. Each contender runs until every event is consumed. ``events_per_s`` is
  N / (time from the job reaching RUNNING to its end); the warm-up before RUNNING
  (planning, deployment) is excluded. ``sustained_events_per_s`` maps each feature
  snapshot's broker append time to the events with an earlier event time and takes the
  rate between the 10% and 90% marks, so start-up and the final flush are excluded.
* CPU seconds per million events and peak RSS: sampled from /proc for the job's whole
  process tree (driver, JVM, Python workers) and the broker.
* ``events_per_cpu_s`` (the headline): events per CPU-second of that whole tree in
  steady state, between the same 10% and 90% progress marks (CPU interpolated between
  0.5 s samples); ``events_per_cpu_s_whole_run`` counts start-up and the final flush too.
* Latency: the job runs unbounded on fresh topics; once it has completed its first
  checkpoint (start-up left out), events are replayed at half the measured rate by a
  producer without linger, with event time = wall clock, and the first windows are a
  warm-up left out. A window [s, e) can close at the earliest
  when an event with time e + watermark delay arrives, i.e. at wall time e + delay; the
  latency of a score is its broker append time (``LogAppendTime``) minus that instant.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from jobs import kafka_local
from jobs.config import JobConfig
from jobs.generator import TrafficConfig, generate_events
from jobs.job_runner import fresh_topics, job_env, start_job, stop_job
from jobs.kafka_io import produce_events, read_topic
from jobs.outputs import read_outputs
from jobs.paths import REGISTRY, ROOT, git_commit
from jobs.procstats import TreeSampler
from transforms.codecs import decode
from transforms.spec import load_spec
from transforms.sql_compiler import source_watermark_ms

RESULTS = ROOT / "bench" / "results.jsonl"
HISTORY = ROOT / "bench" / "history.html"


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _run_job(env: dict[str, str], broker_pid: int, args: list[str]) -> tuple[dict[str, Any], Any]:
    proc = start_job(env, *args, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        with TreeSampler([proc.pid, broker_pid]) as sampler:
            out, err = proc.communicate()
    finally:
        stop_job(proc)  # on an interrupt too; after a normal end, whatever outlived the driver
    if proc.returncode != 0:
        raise RuntimeError(f"job failed ({proc.returncode}): {err[-4000:]}")
    return json.loads(out.strip().splitlines()[-1]), sampler.stats


def _progress_marks(event_ts: np.ndarray, snapshots: list[tuple[Any, dict[str, Any], int]], delay_ms: int
                    ) -> tuple[int, int, float, float] | None:
    """(events done, events done, wall s, wall s) at the 10% and 90% progress marks of the
    snapshot stream: each snapshot's broker append time, mapped to the events with an
    earlier event time than its window could fire on."""
    if len(snapshots) < 10:
        return None
    pts = sorted((ts, v["window_end_ms"]) for _, v, ts in snapshots)
    append = np.array([p[0] for p in pts], dtype=np.float64)
    progress = np.maximum.accumulate(np.array([p[1] for p in pts], dtype=np.int64))
    done = np.searchsorted(event_ts, progress + delay_ms)  # events needed before that window could fire
    lo, hi = np.searchsorted(done, 0.1 * event_ts.size), np.searchsorted(done, 0.9 * event_ts.size)
    hi = min(hi, len(done) - 1)
    if hi <= lo or append[hi] <= append[lo]:
        return None
    return int(done[lo]), int(done[hi]), append[lo] / 1000.0, append[hi] / 1000.0


def sustained_rate(marks: tuple[int, int, float, float] | None) -> float | None:
    """Events per second between the 10% and 90% progress marks of the snapshot stream."""
    if marks is None:
        return None
    e_lo, e_hi, t_lo, t_hi = marks
    return float((e_hi - e_lo) / (t_hi - t_lo))


def steady_events_per_cpu_s(marks: tuple[int, int, float, float] | None, stats: Any) -> float | None:
    """Events per CPU-second of the whole sampled tree (job and broker) between the 10% and
    90% progress marks: start-up, JIT warm-up and the final flush are left out."""
    if marks is None:
        return None
    e_lo, e_hi, t_lo, t_hi = marks
    c_lo, c_hi = stats.cpu_at(t_lo), stats.cpu_at(t_hi)
    if c_lo is None or c_hi is None or c_hi <= c_lo:
        return None
    return float((e_hi - e_lo) / (c_hi - c_lo))


def _commit_interval_ms() -> int:
    """How often an exactly-once job commits its sinks (its checkpoint interval; 0 otherwise)."""
    cfg = JobConfig.from_env()
    return cfg.checkpoint_interval_ms if cfg.delivery == "exactly-once" else 0


def _wait_first_checkpoint(checkpoint_uri: str, since: float, proc: Any, timeout_s: float = 300.0) -> None:
    """Block until a checkpoint written after ``since`` is complete (its ``_metadata``)."""
    from urllib.parse import urlparse

    root = Path(urlparse(checkpoint_uri).path)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"latency job ended before its first checkpoint ({proc.returncode})")
        if any(m.stat().st_mtime >= since for m in root.glob("*/chk-*/_metadata")):
            _log(f"latency phase: first checkpoint after {time.time() - since:.0f} s")
            return
        time.sleep(0.5)
    raise RuntimeError(f"no checkpoint in {root} within {timeout_s:.0f} s")


def _latency_phase(bootstrap: str, broker_pid: int, rate: float, seconds: float, spec_delay_ms: int,
                   registry: str, lag_ms: int | None = None, commit_interval_ms: int = 0) -> dict[str, Any]:
    """Scores' latency from the close of their window in the spec (``end + spec_delay_ms``:
    the scoring groups' watermark); the job fires ``lag_ms - spec_delay_ms`` later still
    (its source watermark lags by the spec's largest allowed lateness), which this counts."""
    import tempfile

    topics = fresh_topics(bootstrap, "lat")
    env = job_env(bootstrap, topics, STREAMSCORE_BOUNDED="false", STREAMSCORE_REGISTRY=registry)
    started = time.time()
    log = tempfile.TemporaryFile("w+")  # a pipe nobody reads would block the job once full
    proc = start_job(env, "--unbounded", text=True, stdout=subprocess.DEVNULL, stderr=log)
    log.close()  # the job holds its own descriptor
    try:
        # the replay starts once the job runs and has completed a checkpoint (start-up is
        # not measured); its first windows are a warm-up, left out below
        if commit_interval_ms:
            _wait_first_checkpoint(JobConfig.from_env().checkpoint_uri(), started, proc)
        now_ms = int(time.time() * 1000)
        n = int(rate * seconds)
        cfg = TrafficConfig(seed=99, base_ts_ms=now_ms + 20_000, event_rate_per_s=rate / 0.76,
                            out_of_order_fraction=0.05)
        events = list(generate_events(n, cfg))
        t0_wall = time.time() * 1000 + 20_000 - (events[0]["ts_ms"] - cfg.base_ts_ms)
        offset = cfg.base_ts_ms - t0_wall  # event time - wall time
        _log(f"latency phase: replaying {n} events at ~{rate:,.0f}/s with event time = wall clock")
        time.sleep(max(0.0, (events[0]["ts_ms"] - offset) / 1000 - time.time()))
        produce_events(bootstrap, topics["events"], _paced(events, offset), total=n, progress=False,
                       linger_ms=0)  # each event leaves when it is due
        # the last windows fire after the source lag; read_committed readers see their
        # scores only once the next checkpoint commits the sink transaction
        time.sleep(3 + (lag_ms if lag_ms is not None else spec_delay_ms) / 1000 + 2 * commit_interval_ms / 1000)
    finally:
        stop_job(proc)
    scores = read_topic(bootstrap, topics["scores"], lambda v: decode(v, "scored_result"))
    if not scores:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None, "latency_scores": 0}
    ends = np.array([v["window_end_ms"] for _, v, _ in scores])
    first_end = ends.min()
    keep = ends > first_end + 10_000  # skip the first windows (warm-up)
    if not keep.any():
        _log(f"latency phase: {len(scores)} scores, all from the first (warm-up) window; no latency figure")
        return {"p50_ms": None, "p99_ms": None, "max_ms": None, "latency_scores": 0}
    close_wall = ends - offset + spec_delay_ms
    lat = (np.array([ts for _, _, ts in scores]) - close_wall)[keep]
    fire = np.array([ts - v["fired_at_ms"] for _, v, ts in scores])[keep]
    actual_rate = len(events) / ((events[-1]["ts_ms"] - events[0]["ts_ms"]) / 1000)
    return {"p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)), "max_ms": float(lat.max()),
            "p99_fire_to_kafka_ms": float(np.percentile(fire, 99)), "latency_scores": int(keep.sum()),
            "latency_replay_events_per_s": round(actual_rate, 1)}


def _paced(events: list[dict[str, Any]], offset_ms: float) -> Any:
    """Yield each event no earlier than its event time, mapped onto wall time."""
    for ev in events:
        due = (ev["ts_ms"] - offset_ms) / 1000.0
        wait = due - time.time()
        if wait > 0.001:
            time.sleep(wait)
        yield ev


def _machine() -> str:
    model = ""
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{platform.node()} {os.cpu_count()} cores {model}".strip()


def _preload(bootstrap: str, events_topic: str, n_events: int) -> np.ndarray:
    """The benchmark's N generated events in ``events_topic`` (sorted event times). A topic
    that already holds exactly N records (an earlier run's, the same seed) is reused as it
    is, so runs of a pair read the same bytes from the same log."""
    from jobs.kafka_io import end_offsets

    traffic = TrafficConfig(seed=5, out_of_order_fraction=0.05)
    held = sum(end_offsets(bootstrap, events_topic).values())
    if held == n_events:
        _log(f"reusing the {n_events} events already in {events_topic}")
        return np.sort(np.fromiter((ev["ts_ms"] for ev in generate_events(n_events, traffic)), dtype=np.int64))
    if held:
        raise RuntimeError(f"{events_topic} holds {held} records, not {n_events}: use another --topic")
    _log(f"pre-loading {n_events} events into {events_topic}")
    ts: list[int] = []

    def tap() -> Any:
        for ev in generate_events(n_events, traffic):
            ts.append(ev["ts_ms"])
            yield ev

    produce_events(bootstrap, events_topic, tap(), total=n_events)
    return np.sort(np.array(ts, dtype=np.int64))


def _bench_topics(bootstrap: str, events_topic: str, partitions: int = 1) -> dict[str, str]:
    """Fresh output topics; the events topic is ``events_topic`` when given (created once,
    with ``partitions`` partitions), else a fresh one with that many partitions."""
    topics = fresh_topics(bootstrap, "bench")
    if events_topic or partitions != 1:
        name = events_topic or f"{topics['events']}-p{partitions}"
        kafka_local.create_topics(bootstrap, {name: (partitions, kafka_local.TOPICS["events"][1])})
        topics["events"] = name
    return topics


def bench(n_events: int, peer_events: int, latency_s: float, label: str, env_overrides: dict[str, str],
          events_topic: str = "", ceiling: bool = True, partitions: int = 1) -> dict[str, Any]:
    from jobs.peer import run_peer

    broker = kafka_local.BrokerConfig.from_env()
    was_running = kafka_local.answers(broker.bootstrap)
    saved_env = {k: os.environ.get(k) for k in env_overrides}
    try:  # a broker this starts is stopped even when starting it is interrupted
        broker_pid = kafka_local.start(broker)
        os.environ.update(env_overrides)
        spec = load_spec()
        if not REGISTRY.exists():
            subprocess.run([sys.executable, "-m", "models.train"], check=True, cwd=ROOT)
        topics = _bench_topics(broker.bootstrap, events_topic, partitions)
        event_ts = _preload(broker.bootstrap, topics["events"], n_events)
        env = job_env(broker.bootstrap, topics, STREAMSCORE_REGISTRY=str(REGISTRY))

        ceiling_rate, ceil_cpu_s = None, None
        if ceiling:
            _log("ceiling: bare Flink SQL aggregation into a blackhole")
            ceil_info, ceil_stats = _run_job(env, broker_pid, ["--ceiling"])
            ceiling_rate, ceil_cpu_s = n_events / ceil_info["running_s"], ceil_stats.total_cpu_s
            _log(f"ceiling {ceiling_rate:,.0f} events/s")

        _log("streamscore job: decode, windows, snapshots, ONNX scoring, Kafka sinks")
        env_job = job_env(broker.bootstrap, topics, STREAMSCORE_REGISTRY=str(REGISTRY))
        job_info, job_stats = _run_job(env_job, broker_pid, [])
        job_rate = n_events / job_info["running_s"]
        out = read_outputs(broker.bootstrap, topics["scores"], topics["feature-snapshots"], topics["dead-letters"])
        marks = _progress_marks(event_ts, out.snapshots, source_watermark_ms(spec))  # windows fire at that lag
        sustained = sustained_rate(marks)
        per_cpu = steady_events_per_cpu_s(marks, job_stats)
        _log(f"job {job_rate:,.0f} events/s (sustained {sustained or 0:,.0f}); {len(out.scores)} scores")

        peer_n = min(peer_events, n_events)
        peer, same, checked = None, 0, []
        if peer_n > 0:
            _log(f"peer: plain Python consumer/producer on the first {peer_n} events")
            peer_topics = fresh_topics(broker.bootstrap, "peer")
            peer = run_peer(broker.bootstrap, topics["events"], peer_topics, spec, REGISTRY, peer_n)
            flink_snaps = {(v["feature_group"], v["entity_id"], v["window_start_ms"]): v["features"]
                           for _, v, _ in out.snapshots}
            checked = [k for k in peer.sample if k in flink_snaps]
            same = sum(all(abs(flink_snaps[k][f] - x) <= 1e-6 * max(1.0, abs(x)) for f, x in peer.sample[k].items())
                       for k in checked)
            _log(f"peer {peer.events_per_s:,.0f} events/s; features equal on {same}/{len(checked)} sampled windows")
        peer_rate = peer.events_per_s if peer is not None else None

        lat = _latency_phase(broker.bootstrap, broker_pid, 0.5 * job_rate, latency_s,
                             spec.watermark_delay_ms + spec.scoring_lateness_ms, str(REGISTRY),
                             source_watermark_ms(spec), _commit_interval_ms()) if latency_s > 0 else {"p50_ms": None, "p99_ms": None}
        peak_rss = {**job_stats.peak_rss_by_process()}
        result = {
            "label": label, "commit": git_commit(), "machine": _machine(), "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "events": n_events,
            "events_per_cpu_s": round(per_cpu, 1) if per_cpu else None,
            "events_per_cpu_s_whole_run": round(n_events / job_stats.total_cpu_s, 1) if job_stats.total_cpu_s else None,
            "events_per_s": round(job_rate, 1), "sustained_events_per_s": round(sustained, 1) if sustained else None,
            "ceiling_events_per_s": round(ceiling_rate, 1) if ceiling_rate else None,
            "peer_events_per_s": round(peer_rate, 1) if peer_rate else None,
            "ratio_vs_ceiling": round(job_rate / ceiling_rate, 3) if ceiling_rate else None,
            "ratio_vs_peer": round(job_rate / peer_rate, 3) if peer_rate else None,
            "p50_ms": lat.get("p50_ms"), "p99_ms": lat.get("p99_ms"), "max_ms": lat.get("max_ms"),
            "p99_fire_to_kafka_ms": lat.get("p99_fire_to_kafka_ms"), "latency_replay_events_per_s": lat.get("latency_replay_events_per_s"),
            "cpu_s_per_million": round(job_stats.total_cpu_s / (n_events / 1e6), 2),
            "ceiling_cpu_s_per_million": round(ceil_cpu_s / (n_events / 1e6), 2) if ceil_cpu_s else None,
            "peak_rss_mb": round(max(job_stats.peak_rss_mb.values(), default=0.0), 1),
            "peak_rss_mb_by_process": peak_rss,
            "scores_out": len(out.scores), "snapshots_out": len(out.snapshots),
            "peer_events": peer.events if peer is not None else 0, "peer_feature_check": f"{same}/{len(checked)}",
            "settings": {k: v for k, v in os.environ.items() if k.startswith("STREAMSCORE_") and k in env_overrides},
            "events_topic": topics["events"], "events_partitions": partitions,
        }
        return result
    finally:
        for k, v in saved_env.items():  # a pair's next run starts from the same environment
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if not was_running:
            kafka_local.stop(broker)


def parse_arm(text: str) -> tuple[str, dict[str, str]]:
    """``LABEL`` or ``LABEL:STREAMSCORE_X=V,STREAMSCORE_Y=W`` (one arm of ``--pair``).

    >>> parse_arm("hashmap:STREAMSCORE_STATE_BACKEND=hashmap")
    ('hashmap', {'STREAMSCORE_STATE_BACKEND': 'hashmap'})
    >>> parse_arm("baseline")
    ('baseline', {})
    """
    label, _, rest = text.partition(":")
    settings = dict(kv.split("=", 1) for kv in rest.split(",") if kv)
    if not label or any(not k.startswith("STREAMSCORE_") for k in settings):
        raise ValueError(f"arm {text!r}: want LABEL[:STREAMSCORE_X=V,...]")
    return label, settings


def abba(arm_a: tuple[str, dict[str, str]], arm_b: tuple[str, dict[str, str]], n_events: int, peer_events: int,
         base: dict[str, str], record: bool = True, partitions: int = 1) -> list[dict[str, Any]]:
    """Runs A, B, B, A on one pre-loaded events topic (JIT-cold runs and drift in the
    machine fall on both arms alike); each run is recorded with its pair id and position.
    The first run also measures the peer, the outer two the ceiling."""
    import uuid

    pair_id = uuid.uuid4().hex[:8]
    topic = f"bench-pair-{pair_id}-events"
    results = []
    for pos, (label, settings) in enumerate((arm_a, arm_b, arm_b, arm_a)):
        _log(f"pair {pair_id}: run {pos + 1}/4 ({label})")
        res = bench(n_events, peer_events if pos == 0 else 0, 0.0, label, {**base, **settings}, topic,
                    ceiling=pos in (0, 3), partitions=partitions)
        res.update(pair=pair_id, pair_position="ABBA"[pos])
        if record:
            _record(res)
        results.append(res)
    return results


def pair_summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per arm: the mean of its runs' events per CPU-second, events per second and CPU."""
    out: dict[str, Any] = {"pair": results[0].get("pair") if results else None}
    for label in dict.fromkeys(r["label"] for r in results):
        runs = [r for r in results if r["label"] == label]
        for key in ("events_per_cpu_s", "events_per_s", "cpu_s_per_million"):
            vals = [r[key] for r in runs if r.get(key)]
            out[f"{label}.{key}"] = round(sum(vals) / len(vals), 1) if vals else None
    return out


def _record(result: dict[str, Any]) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as fh:
        fh.write(json.dumps(result) + "\n")
    write_history()


def write_history(results: Path = RESULTS, out: Path = HISTORY) -> None:
    """A small self-contained HTML chart (inline SVG) of events/s and p99 over the runs."""
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()] if results.exists() else []
    rows = [r for r in rows if r.get("kind", "bench") == "bench"]  # soak runs (``streamscore soak``) share the file
    w, h, pad = 760, 260, 40
    series = [("events_per_s", "#1f77b4"), ("ceiling_events_per_s", "#2ca02c"), ("peer_events_per_s", "#d62728")]
    top = max([r.get(k) or 0 for r in rows for k, _ in series] + [1])
    def xy(i: int, v: float) -> str:
        x = pad + (w - 2 * pad) * (i / max(len(rows) - 1, 1))
        return f"{x:.1f},{h - pad - (h - 2 * pad) * v / top:.1f}"
    lines = "".join(
        f'<polyline fill="none" stroke="{c}" stroke-width="2" points="{" ".join(xy(i, r.get(k) or 0) for i, r in enumerate(rows))}"/>'
        f'<text x="{w - pad + 4}" y="{20 + 16 * j}" fill="{c}" font-size="12">{k}</text>'
        for j, (k, c) in enumerate(series))
    table = "".join(f"<tr><td>{r.get('ts')}</td><td>{r.get('label')}</td><td>{r.get('commit')}</td>"
                    f"<td>{r.get('events_per_s')}</td><td>{r.get('ceiling_events_per_s')}</td>"
                    f"<td>{r.get('peer_events_per_s')}</td><td>{r.get('p99_ms')}</td>"
                    f"<td>{r.get('cpu_s_per_million')}</td></tr>" for r in rows)
    out.write_text(
        "<!doctype html><meta charset='utf-8'><title>streamscore bench history</title>"
        "<body style='font-family:sans-serif'><h1>streamscore bench history</h1>"
        f"<svg width='{w + 180}' height='{h}'><text x='4' y='14' font-size='12'>max {top:,.0f} events/s</text>{lines}</svg>"
        "<table border='1' cellpadding='4'><tr><th>time</th><th>label</th><th>commit</th><th>events/s</th>"
        f"<th>ceiling</th><th>peer</th><th>p99 ms</th><th>cpu s / M</th></tr>{table}</table></body>")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="streamscore bench", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--events", type=int, default=5_000_000, help="events to pre-load (default 5000000)")
    ap.add_argument("--peer-events", type=int, default=500_000, help="events the peer processes (default 500000)")
    ap.add_argument("--latency-seconds", type=float, default=40.0, help="replay length of the latency phase; 0 skips it")
    ap.add_argument("--label", default="", help="a name for this run in bench/results.jsonl")
    ap.add_argument("--set", action="append", default=[], metavar="STREAMSCORE_X=V",
                    help="job setting for this run (repeatable), e.g. STREAMSCORE_ARROW_BATCH=5000")
    ap.add_argument("--no-record", action="store_true", help="do not append to bench/results.jsonl")
    ap.add_argument("--topic", default="", help="events topic to pre-load once and reuse (runs with the same --events "
                    "read the same log; default: a fresh topic per run)")
    ap.add_argument("--pair", nargs=2, metavar="LABEL[:STREAMSCORE_X=V,...]",
                    help="an ABBA pair of two arms on one pre-loaded topic, without the latency phase (e.g. "
                    "--pair rocksdb hashmap:STREAMSCORE_STATE_BACKEND=hashmap); prints per-arm means last")
    ap.add_argument("--partitions", type=int, default=1,
                    help="partitions of the events topic (for STREAMSCORE_PARALLELISM > 1; default 1)")
    args = ap.parse_args(argv)
    if args.partitions < 1:
        ap.error("--partitions must be >= 1")
    overrides = dict(s.split("=", 1) for s in args.set)
    if args.pair:
        results = abba(parse_arm(args.pair[0]), parse_arm(args.pair[1]), args.events, args.peer_events, overrides,
                       record=not args.no_record, partitions=args.partitions)
        for r in results:
            print(json.dumps(r))
        print(json.dumps(pair_summary(results)))
        return 0
    result = bench(args.events, args.peer_events, args.latency_seconds, args.label, overrides, args.topic,
                   partitions=args.partitions)
    if not args.no_record:
        _record(result)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
