"""Savepoint upgrades and rescaling (``streamscore rescale``): on a standalone session
cluster of 2 TaskManagers, run the job with parallelism 1, stop it with a savepoint,
restart it from that savepoint with parallelism 2, again with 1, and compare the
committed output record by record with a run of the same job on the same events that
never stopped.

Events arrive in one batch per phase, so window state is open at every savepoint and
must carry over. The last phase ends with one flush event an hour of event time later
(entity ``FLUSH``), whose watermark fires every open window; the flush entity's own
windows, which only the bounded baseline closes, are left out of the comparison. (A
draining stop-with-savepoint on the session cluster committed none of the windows it
fired in our runs, so the harness does not rely on it; see the README.) The last JSON
line gives the phases, the savepoints, and ``expected``/``lost``/``duplicated``/
``value_mismatches``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs import cluster, kafka_local
from jobs.chaos import delivery, flush_event, summarize
from jobs.generator import TrafficConfig, generate_events
from jobs.job_runner import fresh_topics, job_env, run_job
from jobs.kafka_io import caught_up, end_offsets, produce_events
from jobs.outputs import read_outputs
from jobs.paths import REGISTRY


@dataclass(frozen=True)
class RescaleConfig:
    parallelisms: tuple[int, ...] = (1, 2, 1)
    events: int = 60_000  # split evenly over the phases
    checkpoint_ms: int = 2_000
    seed: int = 23
    phase_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        if len(self.parallelisms) < 2 or min(self.parallelisms) < 1:
            raise ValueError("need at least two phases, each with parallelism >= 1")
        if self.events < len(self.parallelisms) or self.checkpoint_ms < 100:
            raise ValueError("need at least one event per phase and checkpoint_ms >= 100")


def _log(msg: str) -> None:
    print(f"[rescale] {msg}", file=sys.stderr, flush=True)


def _job_id(res: Any) -> str:
    text = res.stdout + res.stderr
    if res.returncode != 0:
        raise RuntimeError(f"flink run failed ({res.returncode}):\n{text[-6000:]}")
    m = re.search(r"JobID ([0-9a-f]{32})", text) or re.search(r'"job_id": "([0-9a-f]{32})"', text)
    if m is None:
        raise RuntimeError(f"no job id in the output of flink run:\n{text[-3000:]}")
    return m.group(1)


def wait_consumed(bootstrap: str, group: str, topic: str, timeout_s: float) -> None:
    """Until ``group`` committed the end offsets of ``topic`` (the source commits on checkpoints)."""
    ends = {p: hi for p, hi in end_offsets(bootstrap, topic).items() if hi > 0}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if caught_up(bootstrap, group, topic, ends):
            return
        time.sleep(1.0)
    raise TimeoutError(f"group {group} did not consume {topic} to {ends} within {timeout_s}s")


def window_progress(job_id: str) -> dict[str, Any]:
    """Per job vertex: its lowest input watermark and the late records its window
    operators dropped (Flink REST), for the phase log."""
    out: dict[str, Any] = {}
    for v in (cluster.rest(f"/jobs/{job_id}") or {}).get("vertices", []):
        name = re.sub(r"\[\d+\]", "", v["name"])[:40]
        marks = cluster.rest(f"/jobs/{job_id}/vertices/{v['id']}/watermarks") or []
        names = [m["id"] for m in cluster.rest(f"/jobs/{job_id}/vertices/{v['id']}/metrics") or []
                 if "LateRecordsDropped" in m["id"]]
        late = cluster.rest(f"/jobs/{job_id}/vertices/{v['id']}/metrics?get={','.join(names)}") if names else []
        out[name] = {"watermark": min((int(float(m["value"])) for m in marks), default=None),
                     "late_dropped": sum(int(float(m["value"])) for m in late or [])}
    return out


def run_rescale(bootstrap: str, cfg: RescaleConfig, work_dir: Path) -> dict[str, Any]:
    base = fresh_topics(bootstrap, "rescale-base")
    moved = {**fresh_topics(bootstrap, "rescale-run"), "events": base["events"]}
    traffic = TrafficConfig(seed=cfg.seed, n_users=3_000, n_items=1_000, out_of_order_fraction=0.05,
                            late_fraction=0.0)
    events = list(generate_events(cfg.events, traffic))
    per = -(-len(events) // len(cfg.parallelisms))
    group = f"rescale-{uuid.uuid4().hex[:8]}"
    env = job_env(bootstrap, moved, STREAMSCORE_REGISTRY=str(REGISTRY), STREAMSCORE_BOUNDED="false",
                  STREAMSCORE_CHECKPOINT_MS=str(cfg.checkpoint_ms), STREAMSCORE_GROUP_ID=group,
                  STREAMSCORE_CHECKPOINT_DIR=str(work_dir / "ckpt"), STREAMSCORE_DRIFT_FALLBACK="false")
    env = {k: v for k, v in env.items() if k.startswith("STREAMSCORE_")}
    savepoint, phases = "", []
    cluster.start(task_managers=2)
    try:
        for i, par in enumerate(cfg.parallelisms):
            chunk = events[i * per:(i + 1) * per]
            last = i == len(cfg.parallelisms) - 1
            if last:
                chunk = [*chunk, flush_event(max(e["ts_ms"] for e in events))]
            produce_events(bootstrap, base["events"], chunk, total=len(chunk), malformed_every=500, seed=cfg.seed + i)
            t0 = time.monotonic()
            job = _job_id(cluster.submit({**env, "STREAMSCORE_RESTORE_FROM": savepoint}, detached=True,
                                         savepoint=savepoint, parallelism=par))
            cluster.wait_state(job, ("RUNNING",), cfg.phase_timeout_s)
            wait_consumed(bootstrap, group, base["events"], cfg.phase_timeout_s)
            _log(f"phase {i + 1} progress: {json.dumps(window_progress(job))}")
            savepoint = cluster.stop_with_savepoint(job, (work_dir / "savepoints").as_uri(), drain=False,
                                                    timeout_s=cfg.phase_timeout_s)
            cluster.wait_state(job, ("FINISHED", "CANCELED", "FAILED"), cfg.phase_timeout_s)
            phases.append({"parallelism": par, "events": len(chunk), "job_id": job, "savepoint": savepoint,
                           "seconds": round(time.monotonic() - t0, 1)})
            _log(f"phase {i + 1}: parallelism {par}, {len(chunk)} events, stopped with savepoint {savepoint}")
    finally:
        cluster.stop()
    _log("baseline: the same events in one run that never stops (embedded mini-cluster)")
    run_job(job_env(bootstrap, base, STREAMSCORE_REGISTRY=str(REGISTRY), STREAMSCORE_DRIFT_FALLBACK="false",
                    STREAMSCORE_CHECKPOINT_DIR=str(work_dir / "baseline-ckpt")))
    want = read_outputs(bootstrap, base["scores"], base["feature-snapshots"], base["dead-letters"])
    got = read_outputs(bootstrap, moved["scores"], moved["feature-snapshots"], moved["dead-letters"])
    return summarize(delivery(want, got), parallelisms=list(cfg.parallelisms), phases=phases)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="streamscore rescale", description=__doc__.splitlines()[0])
    ap.add_argument("--parallelisms", default="1,2,1", help="parallelism of each phase (default 1,2,1)")
    ap.add_argument("--events", type=int, default=RescaleConfig.events, help="events over all phases")
    args = ap.parse_args(argv)
    cfg = RescaleConfig(parallelisms=tuple(int(p) for p in args.parallelisms.split(",")), events=args.events)
    broker = kafka_local.BrokerConfig.from_env()
    was_running = kafka_local.answers(broker.bootstrap)
    kafka_local.start(broker)
    work = Path(tempfile.mkdtemp(prefix="streamscore-rescale-"))
    try:
        summary = run_rescale(broker.bootstrap, cfg, work)
    finally:
        if not was_running:
            kafka_local.stop(broker)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(summary))
    return 0 if summary["lost"] == summary["duplicated"] == summary["unexpected"] == summary["value_mismatches"] == 0 \
        else 1


if __name__ == "__main__":
    sys.exit(main())
