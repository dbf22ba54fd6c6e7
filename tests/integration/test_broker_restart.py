"""Broker faults: the Kafka broker is stopped and started again while the real job runs;
the job recovers by itself and a read_committed consumer sees every expected record
exactly once (expected: the same job on the same events without a fault)."""

from __future__ import annotations

import pytest

from jobs import kafka_local
from jobs.chaos import ChaosConfig, run_chaos
from tests.integration.conftest import TEST_PORT

pytestmark = pytest.mark.integration


@pytest.fixture
def own_broker(tmp_path_factory):
    """A broker of this test alone (it is restarted under the job), on its own port."""
    cfg = kafka_local.BrokerConfig(port=TEST_PORT + 40, data_dir=tmp_path_factory.mktemp("kafka-restart"))
    kafka_local.start(cfg)
    yield cfg
    kafka_local.stop(cfg)


def test_job_survives_broker_restarts_without_loss(own_broker, registry_path, tmp_path):
    cfg = ChaosConfig(kills=2, events=300_000, seed=17, fault="broker", outage_s=5.0)
    summary = run_chaos(own_broker.bootstrap, cfg, tmp_path, own_broker)
    assert summary["kills"] == 2, summary  # two broker restarts happened while the job ran
    assert summary["lost"] == 0 and summary["duplicated"] == 0 and summary["unexpected"] == 0, summary["examples"]
    assert summary["value_mismatches"] == 0, summary["examples"]
    for name in ("scores", "snapshots", "dead_letters"):
        assert summary["by_output"][name]["expected"] > 0, (name, summary["by_output"])
