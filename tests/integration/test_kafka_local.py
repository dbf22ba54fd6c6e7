"""The local broker script: idempotent start, clean stop, restart after a crash."""

from __future__ import annotations

import os
import signal
import time

import pytest

from jobs import kafka_local

pytestmark = pytest.mark.integration


def test_start_twice_then_recover_from_a_crash(tmp_path):
    cfg = kafka_local.BrokerConfig(port=19192, data_dir=tmp_path / "kafka")
    try:
        pid = kafka_local.start(cfg)
        assert kafka_local.start(cfg) == pid  # second start finds the running broker
        from confluent_kafka.admin import AdminClient

        topics = AdminClient({"bootstrap.servers": cfg.bootstrap}).list_topics(timeout=10).topics
        assert set(kafka_local.TOPICS) <= set(topics)
        os.kill(pid, signal.SIGKILL)  # crash
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and kafka_local.answers(cfg.bootstrap, 0.5):
            time.sleep(0.2)
        new_pid = kafka_local.start(cfg)  # stale pid file, unclean log: must come back
        topics = AdminClient({"bootstrap.servers": cfg.bootstrap}).list_topics(timeout=10).topics
        assert set(kafka_local.TOPICS) <= set(topics)  # data survived the crash
        assert new_pid != pid
        assert kafka_local.answers(cfg.bootstrap)
    finally:
        kafka_local.stop(cfg)
    assert not kafka_local.answers(cfg.bootstrap, 1.0)
    assert not cfg.pid_file.exists()
