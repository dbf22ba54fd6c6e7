"""Support for the model-lifecycle integration test: a registry with fault models, phased
traffic, and a tail of the job's output topics while it runs."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from jobs.generator import BASE_TS_MS, TrafficConfig, generate_events
from models.baselines import constant_model, nan_model, slow_model
from transforms.registry import Registry, sha256_file

STEP_MS = 10_000


def lifecycle_registry(src: Path, dst: Path) -> dict[str, str]:
    """A copy of the trained registry plus the models the test deploys; the served model
    at start is ``corrupt`` (its artifact no longer matches its sha256). Returns the refs."""
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "artifacts").mkdir(exist_ok=True)
    reg = Registry(src)
    for e in reg.entries:
        shutil.copy(reg.artifact(e), dst / e.path)
    (dst / "registry.json").write_text(json.dumps({"models": [e.to_json() for e in reg.entries]}))
    out = Registry(dst / "registry.json")
    gbdt, mlp, prior = out.get("gbdt"), out.get("mlp"), out.get("prior")
    n = len(gbdt.feature_names)
    made = {"bad": constant_model(n, 0.95), "nan": nan_model(n), "slow": slow_model(n),
            "corrupt": (dst / gbdt.path).read_bytes()}
    for name, onx in made.items():
        rel = f"artifacts/{name}-t1.onnx"
        (dst / rel).write_bytes(onx)
        out.add(replace(gbdt, name=name, version="t1", kind="onnx", path=rel, sha256=sha256_file(dst / rel),
                        stage="candidate"))
    corrupt = dst / "artifacts/corrupt-t1.onnx"
    data = bytearray(corrupt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    out.entries = [replace(e, stage="retired") if e.stage == "active" else e for e in out.entries]
    out.entries = [replace(e, stage="active") if e.name == "corrupt" else e for e in out.entries]
    out.save()
    return {"gbdt": gbdt.ref, "mlp": mlp.ref, "prior": prior.ref, "bad": "bad:t1", "nan": "nan:t1",
            "slow": "slow:t1", "corrupt": "corrupt:t1"}


def phase_events(start_ms: int, length_ms: int, rate_per_s: float = 500.0) -> list[dict[str, Any]]:
    """Generated traffic in ``[start_ms, start_ms + length_ms)`` of event time (a little
    spills over the end; sessions are cut at the end)."""
    cfg = TrafficConfig(seed=11, n_users=1_500, n_items=300, event_rate_per_s=rate_per_s, base_ts_ms=start_ms)
    n = int(rate_per_s * length_ms / 1000)
    return [e for e in generate_events(n, cfg) if e["ts_ms"] < start_ms + length_ms]


def phase_start(i: int, lengths: list[int]) -> int:
    return BASE_TS_MS + sum(lengths[:i])


class Tail:
    """Reads a topic from the beginning and keeps everything it has seen."""

    def __init__(self, bootstrap: str, topic: str, decode: Callable[[bytes], Any]) -> None:
        from confluent_kafka import Consumer, TopicPartition

        from jobs.kafka_security import client_conf

        self.decode = decode
        self.records: list[tuple[bytes | None, Any, int]] = []
        self.consumer = Consumer(client_conf(bootstrap, {"group.id": f"tail-{time.time_ns()}", "enable.auto.commit": False,
                                                         "auto.offset.reset": "earliest", "log_level": 3}))
        self.consumer.assign([TopicPartition(topic, 0, 0)])

    def poll(self, timeout_s: float = 0.5) -> None:
        for msg in self.consumer.consume(10_000, timeout=timeout_s):
            if not msg.error():
                self.records.append((msg.key(), self.decode(msg.value()), msg.timestamp()[1]))

    def wait(self, pred: Callable[[list[Any]], bool], timeout_s: float, what: str,
             alive: Callable[[], None] | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        while not pred([v for _, v, _ in self.records]):
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
            if alive is not None:
                alive()
            self.poll()

    def close(self) -> None:
        self.consumer.close()
