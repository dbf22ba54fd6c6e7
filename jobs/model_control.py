"""Kafka side of the scoring service: the ``model-control`` watcher (a thread in the
Python worker that applies deployment commands without a restart) and the publisher of
alerts, online metrics and automatic control records; ``streamscore control`` sends
commands.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from transforms.codecs import encode
from transforms.deployment import ControlError, command_record


def worker_log(msg: str) -> None:
    """A line on the Python worker's stderr (PyFlink replaces ``print`` in cluster workers
    with a function that takes no ``flush``)."""
    sys.stderr.write(f"[scoring] {msg}\n")
    sys.stderr.flush()


class KafkaPublisher:
    """Alerts (``alerts``, Avro alert.v1), metrics (``model-metrics``, model_metrics.v1),
    monitoring records (``model-monitoring``, monitoring.v1), explanations
    (``explanations``, explanation.v1) and control records, from the Python worker. Monitoring output:
    at-least-once, outside the job's checkpoints. An empty topic name switches that
    output off."""

    def __init__(self, bootstrap: str, alerts_topic: str, metrics_topic: str, control_topic: str,
                 monitoring_topic: str = "", explanations_topic: str = "",
                 clock: Callable[[], float] = time.time) -> None:
        from jobs.kafka_io import producer

        self.alerts_topic, self.metrics_topic, self.control_topic = alerts_topic, metrics_topic, control_topic
        self.monitoring_topic, self.explanations_topic = monitoring_topic, explanations_topic
        self.clock = clock
        self.producer = producer(bootstrap, **{"linger.ms": 20, "compression.type": "none"})

    def alert(self, kind: str, severity: str, message: str, model_version: str = "", **attributes: str) -> None:
        worker_log(f"alert {severity} {kind}: {message[:300]}")
        if not self.alerts_topic:
            return
        rec = {"kind": kind, "severity": severity, "message": message, "model_version": model_version,
               "ts_ms": int(self.clock() * 1000), "attributes": {k: str(v) for k, v in attributes.items()},
               "schema_version": 1}
        self._send(self.alerts_topic, kind.encode(), encode(rec, "alert"))

    def metrics(self, records: list[dict[str, Any]]) -> None:
        if not self.metrics_topic:
            return
        for r in records:
            key = f"{r['arm']}|{r['model_name']}:{r['model_version']}|{r['eval_window_start_ms']}".encode()
            self._send(self.metrics_topic, key, encode(r, "model_metrics"))

    def monitoring(self, records: list[dict[str, Any]]) -> None:
        if not self.monitoring_topic:
            return
        for r in records:
            key = f"{r['kind']}|{r['model']}|{r['window_start_ms']}".encode()
            self._send(self.monitoring_topic, key, encode(r, "monitoring"))

    def explanations(self, records: list[dict[str, Any]]) -> None:
        if not self.explanations_topic:
            return
        for r in records:
            self._send(self.explanations_topic, r["user_id"].encode(), encode(r, "explanation"))

    def control(self, key: bytes, value: bytes) -> None:
        if self.control_topic:
            self._send(self.control_topic, key, value)
            self.producer.flush(10)

    def _send(self, topic: str, key: bytes, value: bytes) -> None:
        from jobs.kafka_io import produce_one

        produce_one(self.producer, topic, key, value)
        self.producer.poll(0)

    def close(self) -> None:
        self.producer.flush(10)


class ControlWatcher:
    """Reads every partition of the compacted control topic from the beginning and hands
    each record to ``apply`` (in offset order): first synchronously up to the current end
    (so a restarted job serves the last deployment from its first batch), then in a
    daemon thread."""

    def __init__(self, bootstrap: str, topic: str, apply: Callable[[bytes | None, bytes | None], Any],
                 poll_s: float = 0.2) -> None:
        from confluent_kafka import Consumer

        from jobs.kafka_security import client_conf

        self.bootstrap, self.topic, self.apply, self.poll_s = bootstrap, topic, apply, poll_s
        self.consumer = Consumer(client_conf(bootstrap, {
            "group.id": f"streamscore-control-{uuid.uuid4().hex}", "enable.auto.commit": False,
            "auto.offset.reset": "earliest", "log_level": 3, "isolation.level": "read_committed"}))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.applied = 0

    def start(self, catch_up_timeout_s: float = 20.0) -> None:
        from confluent_kafka import TopicPartition

        from jobs.kafka_io import consume_until, end_offsets

        try:
            ends = end_offsets(self.bootstrap, self.topic)
        except RuntimeError as exc:
            worker_log(f"control topic {self.topic} unavailable ({exc}); watching anyway")
            ends = {}
        self.consumer.assign([TopicPartition(self.topic, p, 0) for p in (ends or {0: 0})])
        todo = {p: hi for p, hi in ends.items() if hi > 0}
        try:
            for msg in consume_until(self.consumer, self.topic, todo, catch_up_timeout_s):
                self._handle(msg)
        except TimeoutError as exc:
            worker_log(f"control catch-up incomplete: {exc}")
        self._thread = threading.Thread(target=self._run, name="model-control", daemon=True)
        self._thread.start()

    def _handle(self, msg: Any) -> None:
        if msg.error():
            return
        self.apply(msg.key(), msg.value())
        self.applied += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for msg in self.consumer.consume(100, timeout=self.poll_s):
                    self._handle(msg)
            except Exception as exc:  # the watcher must outlive broker hiccups
                worker_log(f"control watcher: {type(exc).__name__}: {exc}")
                time.sleep(1.0)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.consumer.close()


def send_command(bootstrap: str, topic: str, command: str, **fields: Any) -> tuple[bytes, bytes]:
    from jobs.kafka_io import producer

    key, value = command_record(command, id=uuid.uuid4().hex, issued_at_ms=int(time.time() * 1000),
                                **{k: v for k, v in fields.items() if v is not None or k == "model"})
    p = producer(bootstrap)
    p.produce(topic, key=key, value=value)
    if p.flush(15):
        raise RuntimeError(f"control record not delivered to {topic}")
    return key, value


def _arm(text: str) -> dict[str, Any]:
    name, _, rest = text.partition("=")
    model, _, weight_text = rest.rpartition("@")
    try:
        weight = float(weight_text)
        if not name or not model:
            raise ValueError("empty name or model")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"arm {text!r}: want NAME=MODEL@WEIGHT, e.g. control=gbdt:v1@0.5") from exc
    return {"name": name, "model": model, "weight": weight}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="streamscore control", description="Send a deployment command to the "
                                 "model-control topic; a running job applies it without a restart.")
    ap.add_argument("--bootstrap", default="127.0.0.1:9092")
    ap.add_argument("--topic", default="model-control")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("activate", help="serve one model for all traffic")
    p.add_argument("model", help="name or name:version")
    p = sub.add_parser("experiment", help="A/B split by a stable hash of user_id")
    p.add_argument("--arm", action="append", type=_arm, required=True, help="NAME=MODEL@WEIGHT (repeat)")
    p = sub.add_parser("shadow", help="score the same rows with a shadow model (scores marked arm=shadow)")
    p.add_argument("model", nargs="?", help="name or name:version; omit to clear")
    p = sub.add_parser("fallback", help="set the known-good fallback model")
    p.add_argument("model")
    p = sub.add_parser("rollback", help="serve every arm from the fallback until resume/activate")
    p.add_argument("--reason", default="operator rollback")
    sub.add_parser("resume", help="undo a rollback")
    args = ap.parse_args(argv)
    fields: dict[str, Any] = {}
    if args.command in ("activate", "shadow", "fallback"):
        fields["model"] = args.model
    elif args.command == "experiment":
        fields["arms"] = args.arm
    elif args.command == "rollback":
        fields["reason"] = args.reason
    try:
        key, value = send_command(args.bootstrap, args.topic, args.command, **fields)
    except (ControlError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"topic": args.topic, "key": key.decode(), "value": json.loads(value)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
