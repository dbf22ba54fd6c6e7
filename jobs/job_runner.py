"""Running the Flink job as a subprocess on fresh topics: shared by the benchmark, the
parity command and the integration tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from typing import Any

from jobs import kafka_local, proctree
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


def start_job(env: dict[str, str], *args: str, **popen: Any) -> subprocess.Popen:
    """``python -m jobs.flink_job`` in a session of its own: every process of its tree,
    re-parented ones too, can be found and ended by :func:`stop_job`. ``popen``: further
    ``subprocess.Popen`` arguments (stdout, stderr, text, ...)."""
    return subprocess.Popen(job_command(*args), env=env, cwd=ROOT, start_new_session=True, **popen)


def _wait(proc: subprocess.Popen, timeout_s: float) -> None:
    if proc.stdout is not None or proc.stderr is not None:
        proc.communicate(timeout=timeout_s)  # drained: a job blocked on a full pipe cannot stop
    else:
        proc.wait(timeout_s)


def stop_job(proc: subprocess.Popen, grace_s: float = 30) -> None:
    """Terminate a job subprocess if it still runs (SIGTERM: the driver ends its engine),
    killing it when it does not end within ``grace_s``; then end what is left of its tree
    and, when it was started in a session of its own (:func:`start_job`), of that session:
    processes re-parented to init included. Safe to call on a job that has exited."""
    if proc.poll() is not None:  # reaped: its pid may name another process by now
        tree = []
    else:
        tree = proctree.tree(proc.pid)
        proc.terminate()
        try:
            _wait(proc, grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            _wait(proc, grace_s)
    proctree.terminate(tree, grace_s=5.0)
    if proc.pid != os.getsid(0):  # a session outlives its leader while a member runs
        proctree.end_session(proc.pid)


def run_job(env: dict[str, str], *args: str, timeout_s: float = 900) -> dict[str, Any]:
    """``python -m jobs.flink_job`` on the embedded mini-cluster; its JSON summary line.
    Whether it returns, fails, times out or is interrupted, no process of the job is left."""
    proc = start_job(env, *args, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    finally:
        stop_job(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"Flink job failed ({proc.returncode}):\n{err[-6000:]}")
    return json.loads(out.strip().splitlines()[-1])
