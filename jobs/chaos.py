"""Fault injection (``streamscore chaos``): kill the Flink job at random moments, restart
it from its last retained checkpoint, and check record by record that a read_committed
consumer sees every expected score, feature snapshot and dead letter exactly once.

The expected records come from a run of the same job on the same events with no faults.
Each kill is a SIGKILL of the whole job process tree (driver, the mini-cluster's JVM,
the Python workers), at a random moment after the restarted job completed at least one
checkpoint, so every segment makes progress. The events have no late records: Flink
does not checkpoint watermarks, so a late decision could change across a restore.
The last JSON line is ``{"kills": N, "expected": E, "lost": L, "duplicated": D, ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs import kafka_local, proctree
from jobs.generator import TrafficConfig, generate_events
from jobs.job_runner import fresh_topics, job_env, run_job, start_job, stop_job
from jobs.kafka_io import produce_events
from jobs.outputs import Outputs, read_outputs
from jobs.paths import REGISTRY
from transforms.codecs import make_event
from transforms.delivery import (
    DeliveryReport,
    check,
    dead_letter_identity,
    score_identity,
    snapshot_identity,
    snapshot_values,
)


@dataclass(frozen=True)
class ChaosConfig:
    """One fault-injection run."""

    kills: int = 5
    # 0: enough that the job cannot finish before the last kill (each life of the job
    # makes progress only up to its last checkpoint before the kill)
    events: int = 0
    malformed_every: int = 2_000  # one bad record after every N events (dead-letter path)
    checkpoint_ms: int = 1_000
    max_kill_delay_s: float = 1.0  # kill within this long after the segment's first checkpoint
    seed: int = 13
    segment_timeout_s: float = 600.0
    # kill: SIGKILL the job process tree, restart from the last checkpoint; broker: stop the
    # Kafka broker for outage_s and start it again while the job runs on (it recovers itself)
    fault: str = "kill"
    outage_s: float = 5.0

    def __post_init__(self) -> None:
        if self.fault not in ("kill", "broker"):
            raise ValueError("fault must be kill or broker")
        if self.kills < 0 or self.events < 0 or self.checkpoint_ms < 100:
            raise ValueError("need kills >= 0, events >= 0, checkpoint_ms >= 100")
        if self.max_kill_delay_s < 0 or self.malformed_every < 0:
            raise ValueError("max_kill_delay_s and malformed_every must be >= 0")


    @property
    def n_events(self) -> int:
        return self.events or 60_000 * (self.kills + 1)


def _log(msg: str) -> None:
    print(f"[chaos] {msg}", file=sys.stderr, flush=True)


def kill_tree(pid: int) -> int:
    """SIGKILL a process, all its descendants and, when it leads a session of its own,
    every process of that session, at once; how many were signalled."""
    procs = set(proctree.tree(pid))
    try:
        if os.getsid(pid) == pid:
            procs |= set(proctree.session(pid))
    except ProcessLookupError:
        pass
    return len(proctree.signal_all(sorted(procs), signal.SIGKILL))


def completed_checkpoints(root: Path) -> list[Path]:
    """Completed checkpoints (a ``chk-N`` folder with ``_metadata``) under ``root``, oldest first."""
    done = [m.parent for m in root.glob("*/chk-*/_metadata")]
    return sorted(done, key=lambda p: (p.stat().st_mtime, int(p.name.split("-")[1])))


FLUSH = "__flush__"


def flush_event(last_ts_ms: int) -> dict[str, Any]:
    """One valid event an hour of event time after ``last_ts_ms``, of its own entity: its
    watermark fires every open window while the job runs, so no compared record depends
    on a draining stop (whose fired windows we saw go uncommitted on the session cluster
    and once after five restores here). Its own windows are left out of comparisons."""
    return make_event("flush", FLUSH, FLUSH, last_ts_ms + 3_600_000, "impression")


def without_flush(out: Outputs) -> Outputs:
    return Outputs([r for r in out.scores if r[1]["user_id"] != FLUSH],
                   [r for r in out.snapshots if r[1]["entity_id"] != FLUSH], out.dead_letters)


def delivery(expected: Outputs, seen: Outputs) -> dict[str, DeliveryReport]:
    """Per output topic: every expected record exactly once, snapshot values equal (the
    flush entity's records left out)."""
    expected, seen = without_flush(expected), without_flush(seen)
    return {
        "scores": check([v for _, v, _ in expected.scores], [v for _, v, _ in seen.scores], score_identity),
        "snapshots": check([v for _, v, _ in expected.snapshots], [v for _, v, _ in seen.snapshots],
                           snapshot_identity, snapshot_values),
        "dead_letters": check([v for _, v, _ in expected.dead_letters], [v for _, v, _ in seen.dead_letters],
                              dead_letter_identity),
    }


def summarize(reports: dict[str, DeliveryReport], **extra: Any) -> dict[str, Any]:
    total = DeliveryReport()
    for r in reports.values():
        total = total.add(r)
    return {**extra, "expected": total.expected, "seen": total.seen, "lost": total.lost,
            "duplicated": total.duplicated, "unexpected": total.unexpected,
            "value_mismatches": total.value_mismatches,
            "by_output": {k: {kk: vv for kk, vv in r.as_dict().items() if kk != "examples"} for k, r in reports.items()},
            "examples": total.examples}


class Segment:
    """One life of the job process, from start (or restore) to exit or kill."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log = open(log_path, "ab")
        self.started = time.time()
        self.proc = start_job(env, stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL)

    def wait_checkpoint(self, root: Path, timeout_s: float, since: float | None = None) -> bool:
        """True once a checkpoint completed after ``since`` (default: this segment's start);
        False if the job ended first."""
        since = self.started if since is None else since
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if any(p.stat().st_mtime > since for p in completed_checkpoints(root)):
                return True
            time.sleep(0.1)
        raise TimeoutError(f"no checkpoint within {timeout_s}s")

    def close(self) -> None:
        """Stop the job if it still runs and end whatever is left of its session."""
        try:
            stop_job(self.proc)
        finally:
            self.log.close()


def _broker_faults(seg: Segment, cfg: ChaosConfig, ckpt: Path, broker: kafka_local.BrokerConfig,
                   rng: random.Random) -> int:
    """Restart the broker ``cfg.kills`` times under the running job, each after the job
    completed a checkpoint since the last restart; the job must recover on its own."""
    restarts, since = 0, seg.started
    while restarts < cfg.kills and seg.wait_checkpoint(ckpt, cfg.segment_timeout_s, since):
        time.sleep(rng.uniform(0.0, cfg.max_kill_delay_s))
        if seg.proc.poll() is not None:
            break
        kafka_local.stop(broker)
        time.sleep(cfg.outage_s)
        kafka_local.start(broker)
        restarts += 1
        since = time.time()
        _log(f"broker restart {restarts}/{cfg.kills} ({cfg.outage_s:.0f}s outage) under the running job")
    return restarts


def run_chaos(bootstrap: str, cfg: ChaosConfig, work_dir: Path,
              broker: kafka_local.BrokerConfig | None = None) -> dict[str, Any]:
    """Produce events, run a fault-free baseline and a faulty run of the job (killed and
    restored, or through broker restarts: ``broker`` is then the broker to restart), and
    compare their committed outputs record by record."""
    if cfg.fault == "broker" and broker is None:
        raise ValueError("a broker fault needs the broker's config")
    rng = random.Random(cfg.seed)
    base = fresh_topics(bootstrap, "chaos-base")
    faulty = {**fresh_topics(bootstrap, "chaos-run"), "events": base["events"]}
    traffic = TrafficConfig(seed=cfg.seed, n_users=5_000, n_items=2_000, out_of_order_fraction=0.05,
                            late_fraction=0.0)
    _log(f"producing {cfg.n_events} events (+1 malformed every {cfg.malformed_every})")
    last_ts = [0]

    def tracked() -> Any:
        for ev in generate_events(cfg.n_events, traffic):
            last_ts[0] = max(last_ts[0], ev["ts_ms"])
            yield ev

    produce_events(bootstrap, base["events"], tracked(), total=cfg.n_events, malformed_every=cfg.malformed_every,
                   seed=cfg.seed)
    produce_events(bootstrap, base["events"], [flush_event(last_ts[0])], progress=False)
    common = {"STREAMSCORE_REGISTRY": str(REGISTRY), "STREAMSCORE_CHECKPOINT_MS": str(cfg.checkpoint_ms),
              "STREAMSCORE_DRIFT_FALLBACK": "false"}
    t0 = time.monotonic()
    _log("baseline run (no faults)")
    run_job(job_env(bootstrap, base, STREAMSCORE_CHECKPOINT_DIR=str(work_dir / "baseline-ckpt"), **common))
    baseline_s = time.monotonic() - t0

    ckpt = work_dir / "ckpt"
    env = job_env(bootstrap, faulty, STREAMSCORE_CHECKPOINT_DIR=str(ckpt),
                  STREAMSCORE_GROUP_ID=f"chaos-{uuid.uuid4().hex[:8]}", **common)
    kills, restores = 0, []
    t1 = time.monotonic()
    if cfg.fault == "broker" and broker is not None:
        seg = Segment(env, work_dir / "job.log")
        try:
            kills = _broker_faults(seg, cfg, ckpt, broker, rng)
            rc = seg.proc.wait(cfg.segment_timeout_s)
        finally:
            seg.close()
    while cfg.fault == "kill":
        seg = Segment({**env, "STREAMSCORE_RESTORE_FROM": restores[-1] if restores else ""}, work_dir / "job.log")
        try:
            if kills < cfg.kills and seg.wait_checkpoint(ckpt, cfg.segment_timeout_s):
                time.sleep(rng.uniform(0.0, cfg.max_kill_delay_s))
                if seg.proc.poll() is None:
                    n = kill_tree(seg.proc.pid)
                    seg.proc.wait()
                    kills += 1
                    latest = completed_checkpoints(ckpt)[-1]
                    restores.append(str(latest))
                    _log(f"kill {kills}/{cfg.kills}: {n} processes after {time.time() - seg.started:.1f}s; "
                         f"restoring from {latest.parent.name[:8]}/{latest.name}")
                    continue
            rc = seg.proc.wait(cfg.segment_timeout_s)
        finally:
            seg.close()
        break
    if rc != 0:
        tail = (work_dir / "job.log").read_text(errors="replace")[-4000:]
        raise RuntimeError(f"job failed ({rc}) after {kills} faults ({cfg.fault}):\n{tail}")
    faulty_s = time.monotonic() - t1
    _log(f"job finished after {kills} kills; reading committed outputs")
    want = read_outputs(bootstrap, base["scores"], base["feature-snapshots"], base["dead-letters"])
    got = read_outputs(bootstrap, faulty["scores"], faulty["feature-snapshots"], faulty["dead-letters"])
    return summarize(delivery(want, got), fault=cfg.fault, kills=kills, events=cfg.n_events, restores=len(restores),
                     baseline_s=round(baseline_s, 1), faulty_run_s=round(faulty_s, 1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="streamscore chaos", description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=5, help="job kills before the run may finish (default 5)")
    ap.add_argument("--events", type=int, default=0,
                    help="events to generate (default 0: 60000 x (kills + 1), so the job outlives the kills)")
    ap.add_argument("--checkpoint-ms", type=int, default=ChaosConfig.checkpoint_ms, help="checkpoint interval")
    ap.add_argument("--seed", type=int, default=ChaosConfig.seed, help="traffic and kill-moment seed")
    ap.add_argument("--fault", choices=["kill", "broker"], default="kill",
                    help="kill: SIGKILL the job and restore it (default); broker: restart the broker under it")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (checkpoints, job log)")
    args = ap.parse_args(argv)
    cfg = ChaosConfig(kills=args.kills, events=args.events, checkpoint_ms=args.checkpoint_ms, seed=args.seed,
                      fault=args.fault)
    broker = kafka_local.BrokerConfig.from_env()
    was_running = kafka_local.answers(broker.bootstrap)
    if was_running and args.fault == "broker" and kafka_local._read_pid(broker) is None:
        raise SystemExit(f"--fault broker restarts the broker, but {broker.bootstrap} was not started here")
    work = Path(tempfile.mkdtemp(prefix="streamscore-chaos-"))
    try:  # a broker this starts is stopped even when starting it is interrupted
        kafka_local.start(broker)
        summary = run_chaos(broker.bootstrap, cfg, work, broker)
    finally:
        if not was_running:
            kafka_local.stop(broker)
        if args.keep:
            _log(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(summary))
    ok = summary["kills"] == cfg.kills and summary["lost"] == summary["duplicated"] == summary["unexpected"] == 0
    return 0 if ok and summary["value_mismatches"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
