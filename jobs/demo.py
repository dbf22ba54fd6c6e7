"""``streamscore demo``: start Kafka, generate traffic with malformed records, train the
models if missing, deploy an online experiment through ``model-control``, run the Flink
job on the embedded mini-cluster until the events are consumed, read the outputs back,
write the experiment report, stop what it started, and print a JSON summary."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from typing import Any

from jobs import kafka_local
from jobs.config import JobConfig
from jobs.generator import TrafficConfig, generate_events
from jobs.kafka_io import produce_events
from jobs.outputs import percentile, read_outputs
from jobs.paths import REGISTRY


def _log(msg: str) -> None:
    print(f"[demo] {msg}", file=sys.stderr, flush=True)


def reset_topics(bootstrap: str, names: list[str]) -> None:
    """Delete and recreate ``names`` so the demo counts only its own records."""
    from confluent_kafka.admin import AdminClient

    from jobs.kafka_security import client_conf

    admin = AdminClient(client_conf(bootstrap))
    existing = set(admin.list_topics(timeout=10).topics)
    doomed = [n for n in names if n in existing]
    if doomed:
        for fut in admin.delete_topics(doomed, operation_timeout=30).values():
            fut.result()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and set(doomed) & set(admin.list_topics(timeout=10).topics):
            time.sleep(0.3)
    for _ in range(20):  # deletion is asynchronous: retry creation until it takes
        try:
            kafka_local.create_topics(bootstrap, {n: kafka_local.TOPICS[n] for n in names})
            return
        except RuntimeError:
            time.sleep(0.5)
    kafka_local.create_topics(bootstrap, {n: kafka_local.TOPICS[n] for n in names})


EXPERIMENTS = {  # arms of the demo's online experiment (name -> [(arm, model, weight)])
    "ab": [("control", "prior", 0.5), ("treatment", "gbdt", 0.5)],  # the GBDT against the base-rate prior
    "aa": [("control", "gbdt", 0.5), ("treatment", "gbdt", 0.5)],  # the same model twice: nothing to find
}


def deploy_experiment(bootstrap: str, name: str) -> None:
    from jobs.model_control import send_command
    from transforms.router import resolve_ref

    if name == "none":
        return
    arms = [{"name": a, "model": resolve_ref(REGISTRY, m), "weight": w} for a, m, w in EXPERIMENTS[name]]
    send_command(bootstrap, "model-control", "experiment", arms=arms)
    _log(f"experiment {name}: " + ", ".join(f"{a['name']}={a['model']}@{a['weight']}" for a in arms))


def experiment_summary(bootstrap: str) -> dict[str, Any]:
    from jobs.experiment import fetch_records, group_fairness, render_html
    from jobs.paths import ROOT
    from transforms.experiment import ExperimentError, report

    records = fetch_records(bootstrap, "model-metrics", 60.0)
    try:
        rep = report(records, control_arm="control", fairness_records=group_fairness(records))
    except ExperimentError as exc:
        return {"error": str(exc), "records": len(records)}
    html = ROOT / "bench" / "out" / "experiment.html"
    render_html(rep, html)
    arms = {a: {k: c.to_dict()[k] for k in ("lift", "ci", "p_value", "significant", "verdict")}
            for a, c in rep.comparisons.items()}
    _log(f"experiment report: {html}")
    return {"records": len(records), "arms": arms, "html": str(html)}


def write_report(bootstrap: str) -> str | None:
    """``streamscore report`` over the demo's topics (its stdout goes to stderr here)."""
    import contextlib

    from jobs.paths import ROOT
    from jobs.report import main as report_main

    path = ROOT / "bench" / "out" / "report.html"
    with contextlib.redirect_stdout(sys.stderr):
        rc = report_main(["--bootstrap", bootstrap, "--out", str(path)])
    if rc != 0:
        return None
    _log(f"monitoring report: {path}")
    return str(path)


def demo(n_events: int, malformed_every: int, seed: int, experiment: str = "ab") -> dict[str, Any]:
    broker = kafka_local.BrokerConfig.from_env()
    was_running = kafka_local.answers(broker.bootstrap)
    try:  # a broker this starts is stopped even when starting it is interrupted
        kafka_local.start(broker)
        if not REGISTRY.exists():
            _log("no model registry: training")
            from models.train import main as train_main

            train_main([])
        reset_topics(broker.bootstrap, ["events", "scores", "feature-snapshots", "dead-letters", "alerts",
                                        "model-control", "model-metrics"])
        deploy_experiment(broker.bootstrap, experiment)
        traffic = TrafficConfig(seed=seed, out_of_order_fraction=0.05)
        _log(f"producing {n_events} events (5% out of order) + 1 malformed every {malformed_every}")
        rep = produce_events(broker.bootstrap, "events", generate_events(n_events, traffic), total=n_events,
                             malformed_every=malformed_every, seed=seed)
        cfg = JobConfig.from_env(bootstrap_servers=broker.bootstrap, bounded=True)
        _log("running the Flink job (embedded mini-cluster) until the events are consumed")
        from jobs.flink_job import run

        t0 = time.monotonic()
        info = run(cfg)  # in this process; its engine (gateway JVM, Python workers) has ended when it returns
        wall = time.monotonic() - t0
        _log(f"job finished in {wall:.1f}s; reading outputs")
        out = read_outputs(broker.bootstrap)
        lat = out.window_to_score_ms()
        span = out.processing_span_s()
        return {
            "events_in": rep.total,
            "events_valid": rep.events,
            "malformed_injected": rep.malformed,
            "scores_out": len(out.scores),
            "snapshots_out": len(out.snapshots),
            "dead_letters": len(out.dead_letters),
            "dead_letters_by_reason": out.dead_letter_reasons(),
            "job_wall_s": round(wall, 2),
            "processing_span_s": round(span, 2),
            "events_per_s": round(rep.total / span, 1) if span > 0 else None,
            "events_per_s_incl_startup": round(rep.total / wall, 1),
            "p50_window_to_score_ms": percentile(lat, 50),
            "p99_window_to_score_ms": percentile(lat, 99),
            "feature_set_version": info["feature_set_version"],
            "scores_by_arm": dict(sorted(Counter(v["arm"] for _, v, _ in out.scores).items())),
            "experiment": experiment_summary(broker.bootstrap) if experiment != "none" else None,
            "report_html": write_report(broker.bootstrap),
        }
    finally:
        if not was_running:
            kafka_local.stop(broker)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="streamscore demo", description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000, help="events to generate (default 1000000)")
    ap.add_argument("--malformed-every", type=int, default=10_000,
                    help="inject one malformed record after every N events (default 10000)")
    ap.add_argument("--seed", type=int, default=7, help="generator seed (default 7)")
    ap.add_argument("--experiment", choices=["ab", "aa", "none"], default="ab",
                    help="online experiment to run: ab = gbdt vs the base-rate prior (default), aa = gbdt vs "
                         "itself, none = serve the registry's active model")
    args = ap.parse_args(argv)
    summary = demo(args.events, args.malformed_every, args.seed, args.experiment)
    ok = summary["scores_out"] > 0 and summary["snapshots_out"] > 0 and \
        summary["dead_letters"] == summary["malformed_injected"]
    if not ok:
        _log("FAILED: expected scores, snapshots, and one dead letter per malformed record")
    print(json.dumps(summary))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
