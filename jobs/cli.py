"""The ``streamscore`` command: one entry point, a subcommand per task."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "kafka": ("jobs.kafka_local", "start/stop/status/reset the local KRaft broker"),
    "generate": ("jobs.generate", "synthetic traffic to Kafka or an Avro file"),
    "train": ("models.train", "train and register the GBDT and MLP models (ONNX)"),
    "models": ("jobs.models_cli", "model registry: list, show, register, promote, rollback"),
    "run": ("jobs.flink_job", "run the Flink job on the embedded mini-cluster"),
    "cluster": ("jobs.cluster", "start/stop a standalone Flink session cluster, submit the job"),
    "demo": ("jobs.demo", "the whole pipeline end to end, with a JSON summary"),
    "parity": ("jobs.parity", "feature parity: reference vs Beam vs the Flink job"),
    "bench": ("jobs.bench", "throughput and latency vs the bare-SQL ceiling and a plain-Python peer"),
    "control": ("jobs.model_control", "send a model-control command (activate, experiment, shadow, rollback)"),
    "backfill": ("jobs.backfill", "point-in-time training dataset from Avro or Kafka offsets (Beam)"),
    "explain": ("jobs.explain", "global feature importance (sensitivity, TreeSHAP) and ablation of a model"),
    "experiment": ("jobs.experiment", "online experiment report: lift, confidence interval, significance, verdict"),
    "drift": ("jobs.drift", "offline drift of a dataset against a model's training reference"),
    "schemas": ("jobs.schemas_cli", "schema compatibility: the newest event schema reads every older one"),
    "chaos": ("jobs.chaos", "fault injection: kill the job N times, check exactly-once output record by record"),
    "soak": ("jobs.soak", "memory soak: the job at a steady load, RSS growth per process over M minutes"),
    "rescale": ("jobs.rescale", "savepoint + rescale 1 -> 2 -> 1 on a 2-TaskManager session cluster, checked record by record"),
    "report": ("jobs.report", "one self-contained HTML page: throughput, latency, drift, score distributions, fairness, alerts"),
}


def usage() -> str:
    lines = ["usage: streamscore <command> [--help] [args]", "", "commands:"]
    lines += [f"  {name:<10} {desc}" for name, (_, desc) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if args[0] not in COMMANDS:
        print(f"unknown command {args[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    from jobs.proctree import exit_on_signals

    exit_on_signals()  # SIGTERM/SIGHUP run the command's finally blocks, which end what it started
    module = importlib.import_module(COMMANDS[args[0]][0])
    return int(module.main(args[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
