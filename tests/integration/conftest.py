"""Integration fixtures: a real KRaft broker on its own port and data folder, started
for the test session and stopped after it; a trained model registry."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from jobs import job_runner, kafka_local
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
    # trains only when the registry is missing or was trained on another feature spec
    subprocess.run([sys.executable, "-m", "models.train", "--if-missing"], check=True, cwd=ROOT)
    return REGISTRY


def fresh_topics(bootstrap: str) -> dict[str, str]:
    return job_runner.fresh_topics(bootstrap, "it")


def job_env(bootstrap: str, topics: dict[str, str], **extra: str) -> dict[str, str]:
    """The job's environment for a test; drift only alerts (no fallback) unless a test asks,
    since most tests' traffic is nothing like the training traffic (test_monitoring's is)."""
    return job_runner.job_env(bootstrap, topics, **{"STREAMSCORE_DRIFT_FALLBACK": "false", **extra})


def run_job(env: dict[str, str], timeout_s: float = 600) -> dict:
    """`python -m jobs.flink_job` on the embedded mini-cluster; returns its JSON line."""
    return job_runner.run_job(env, timeout_s=timeout_s)
