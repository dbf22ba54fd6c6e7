"""Running the Flink job as a subprocess on fresh topics: shared by the benchmark, the
parity command and the integration tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from typing import Any

from jobs import kafka_local
from jobs.paths import ROOT


def fresh_topics(bootstrap: str, prefix: str) -> dict[str, str]:
    """Unique copies of every topic of ``kafka_local.TOPICS``, created with the same
    settings as the real ones."""
    tag = f"{prefix}-{uuid.uuid4().hex[:8]}"
    names = {"events": f"{tag}-events", "scores": f"{tag}-scores", "feature-snapshots": f"{tag}-snapshots",
             "dead-letters": f"{tag}-dead-letters", "alerts": f"{tag}-alerts", "model-control": f"{tag}-control",
             "model-metrics": f"{tag}-metrics", "model-monitoring": f"{tag}-monitoring",
             "explanations": f"{tag}-explanations"}
    kafka_local.create_topics(bootstrap, {v: kafka_local.TOPICS[k] for k, v in names.items()})
    return names


def job_env(bootstrap: str, topics: dict[str, str], **extra: str) -> dict[str, str]:
    """The current environment plus the STREAMSCORE_* settings pointing the job at
    ``topics``, a fresh consumer group, bounded mode, and ``extra``."""
    env = dict(os.environ)
    env.update({
        "STREAMSCORE_BOOTSTRAP": bootstrap, "STREAMSCORE_EVENTS_TOPIC": topics["events"],
        "STREAMSCORE_SCORES_TOPIC": topics["scores"], "STREAMSCORE_SNAPSHOTS_TOPIC": topics["feature-snapshots"],
        "STREAMSCORE_DEAD_LETTERS_TOPIC": topics["dead-letters"],
        "STREAMSCORE_ALERTS_TOPIC": topics.get("alerts", ""), "STREAMSCORE_CONTROL_TOPIC": topics.get("model-control", ""),
        "STREAMSCORE_METRICS_TOPIC": topics.get("model-metrics", ""),
        "STREAMSCORE_MONITORING_TOPIC": topics.get("model-monitoring", ""),
        "STREAMSCORE_EXPLANATIONS_TOPIC": topics.get("explanations", ""),
        "STREAMSCORE_GROUP_ID": f"run-{uuid.uuid4().hex[:8]}", "STREAMSCORE_BOUNDED": "true",
    })
    env.update(extra)
    return env


def job_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "jobs.flink_job", *args]


def stop_job(proc: subprocess.Popen, grace_s: float = 30) -> None:
    """Terminate a job subprocess, killing it when it does not end within ``grace_s``;
    then kill what is left of its tree (the mini-cluster JVM and Python workers outlive
    a terminated driver)."""
    from jobs.procstats import descendants

    tree = descendants(proc.pid)
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for pid in tree[1:]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_job(env: dict[str, str], *args: str, timeout_s: float = 900) -> dict[str, Any]:
    """``python -m jobs.flink_job`` on the embedded mini-cluster; its JSON summary line."""
    res = subprocess.run(job_command(*args), env=env, cwd=ROOT, text=True, capture_output=True, timeout=timeout_s)
    if res.returncode != 0:
        raise RuntimeError(f"Flink job failed ({res.returncode}):\n{res.stderr[-6000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])
