"""Integration fixtures: a real KRaft broker on its own port and data folder, started
for the test session and stopped after it; a trained model registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from jobs import kafka_local
from jobs.paths import REGISTRY, ROOT

TEST_PORT = int(os.environ.get("STREAMSCORE_TEST_KAFKA_PORT", "19092"))


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    cfg = kafka_local.BrokerConfig(port=TEST_PORT, data_dir=tmp_path_factory.mktemp("kafka"))
    kafka_local.start(cfg)
    yield cfg
    kafka_local.stop(cfg)


@pytest.fixture(scope="session")
def registry_path():
    if not REGISTRY.exists():
        subprocess.run([sys.executable, "-m", "models.train", "--if-missing"], check=True, cwd=ROOT)
    return REGISTRY


def fresh_topics(bootstrap: str) -> dict[str, str]:
    """Unique topic names for one job run, created like the real ones."""
    tag = uuid.uuid4().hex[:8]
    names = {"events": f"events-{tag}", "scores": f"scores-{tag}", "feature-snapshots": f"snapshots-{tag}",
             "dead-letters": f"dead-letters-{tag}"}
    kafka_local.create_topics(bootstrap, {v: kafka_local.TOPICS[k] for k, v in names.items()})
    return names


def job_env(bootstrap: str, topics: dict[str, str], **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "STREAMSCORE_BOOTSTRAP": bootstrap, "STREAMSCORE_EVENTS_TOPIC": topics["events"],
        "STREAMSCORE_SCORES_TOPIC": topics["scores"], "STREAMSCORE_SNAPSHOTS_TOPIC": topics["feature-snapshots"],
        "STREAMSCORE_DEAD_LETTERS_TOPIC": topics["dead-letters"], "STREAMSCORE_GROUP_ID": f"it-{uuid.uuid4().hex[:6]}",
        "STREAMSCORE_BOUNDED": "true",
    })
    env.update(extra)
    return env


def run_job(env: dict[str, str], timeout_s: float = 600) -> dict:
    """`python -m jobs.flink_job` on the embedded mini-cluster; returns its JSON line."""
    res = subprocess.run([sys.executable, "-m", "jobs.flink_job"], env=env, cwd=ROOT, text=True,
                         capture_output=True, timeout=timeout_s)
    if res.returncode != 0:
        raise AssertionError(f"job failed ({res.returncode}):\n{res.stderr[-6000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def unique_group() -> str:
    return f"it-{uuid.uuid4().hex[:6]}"
