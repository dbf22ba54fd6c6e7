"""``streamscore parity``: the skew check. The same events go through the reference
implementation, the Beam pipeline (DirectRunner) and the Flink job (real broker, embedded
mini-cluster); every feature snapshot is compared. Prints a per-feature mismatch report;
the last line is JSON ``{"features": N, "rows": R, "mismatches": M, ...}``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from jobs import kafka_local
from jobs.generator import TrafficConfig, generate_events
from jobs.job_runner import fresh_topics, job_env, run_job
from jobs.kafka_io import produce_events, read_topic
from jobs.paths import REGISTRY
from transforms.codecs import decode, validate_event
from transforms.parity import Groups, compare, exact_features, snapshot_groups
from transforms.reference import compute_features
from transforms.spec import FeatureSpec, load_spec


def _log(msg: str) -> None:
    print(f"[parity] {msg}", file=sys.stderr, flush=True)


def flink_features(bootstrap: str, events: list[dict[str, Any]], spec_path: str = "") -> Groups:
    """Run the real Flink job on ``events`` (fresh topics) and collect its snapshots."""
    topics = fresh_topics(bootstrap, "parity")
    produce_events(bootstrap, topics["events"], iter(events), total=len(events))
    run_job(job_env(bootstrap, topics, STREAMSCORE_SPEC=spec_path, STREAMSCORE_REGISTRY=str(REGISTRY)))
    return snapshot_groups(read_topic(bootstrap, topics["feature-snapshots"], lambda b: decode(b, "feature_snapshot")))


def run_parity(spec: FeatureSpec, events: list[dict[str, Any]], bootstrap: str | None, spec_path: str = "",
               engines: tuple[str, ...] = ("beam", "flink")) -> dict[str, Any]:
    t0 = time.monotonic()
    valid = [e for e in events if validate_event(e) is None]  # the rule every engine applies
    if len(valid) < len(events):
        _log(f"{len(events) - len(valid)} invalid events (dead letters in every engine) left out")
    ref = compute_features(spec, valid)
    _log(f"reference: {sum(len(g) for g in ref.groups.values())} windows, {len(ref.late)} late ({time.monotonic() - t0:.1f}s)")
    exact = exact_features(spec)
    reports: dict[str, Any] = {}
    if "beam" in engines:
        from jobs.beam_pipelines import run_features

        t1 = time.monotonic()
        beam = run_features(spec, valid)
        reports["beam"] = compare(ref.groups, beam.groups, exact)
        reports["beam"]["late_equal"] = len(beam.late) == len(ref.late)
        _log(f"beam: {reports['beam']['mismatches']} mismatches ({time.monotonic() - t1:.1f}s)")
    if "flink" in engines and bootstrap:
        t1 = time.monotonic()
        reports["flink"] = compare(ref.groups, flink_features(bootstrap, events, spec_path), exact)
        _log(f"flink: {reports['flink']['mismatches']} mismatches ({time.monotonic() - t1:.1f}s)")
    return {"events": len(events), "late": len(ref.late), "engines": reports,
            "features": max((r["features"] for r in reports.values()), default=0),
            "rows": max((r["rows"] for r in reports.values()), default=0),
            "mismatches": sum(r["mismatches"] for r in reports.values())}


def print_report(summary: dict[str, Any]) -> None:
    for engine, rep in summary["engines"].items():
        print(f"== {engine} vs reference: {rep['rows']} windows, {rep['features']} feature values, "
              f"{rep['mismatches']} mismatches")
        for name, n in sorted(rep["per_feature"].items()):
            print(f"   {name}: {n}")
        for group, n in rep["missing_windows"].items():
            print(f"   missing windows in {group}: {n}")
        for group, n in rep["extra_windows"].items():
            print(f"   extra windows in {group}: {n}")
        for ex in rep["examples"]:
            print(f"   e.g. {ex}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="streamscore parity", description=__doc__.splitlines()[0])
    ap.add_argument("--avro-file", type=Path, help="events file (Avro container); default: generate")
    ap.add_argument("--events", type=int, default=200_000, help="events to generate (default 200000)")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--spec", default="", help="feature spec YAML (default: packaged)")
    ap.add_argument("--engines", default="beam,flink", help="comma list of beam, flink (default both)")
    args = ap.parse_args(argv)
    spec = load_spec(args.spec or None)
    if args.avro_file:
        from jobs.backfill import read_avro_events

        events = list(read_avro_events(args.avro_file))
    else:
        cfg = TrafficConfig(seed=args.seed, out_of_order_fraction=0.05, late_fraction=0.005, tardy_fraction=0.01)
        events = list(generate_events(args.events, cfg))
    engines = tuple(e.strip() for e in args.engines.split(",") if e.strip())
    broker = kafka_local.BrokerConfig.from_env()
    started = False
    try:  # a broker this starts is stopped even when starting it is interrupted
        if "flink" in engines:
            started = not kafka_local.answers(broker.bootstrap)
            kafka_local.start(broker)
        summary = run_parity(spec, events, broker.bootstrap if "flink" in engines else None, args.spec, engines)
    finally:
        if started:
            kafka_local.stop(broker)
    print_report(summary)
    print(json.dumps({k: summary[k] for k in ("features", "rows", "mismatches", "events", "late")}
                     | {"by_engine": {e: r["mismatches"] for e, r in summary["engines"].items()}}))
    return 0 if summary["mismatches"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
