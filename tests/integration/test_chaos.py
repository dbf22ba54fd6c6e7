"""Exactly-once through failures: the real job on the real broker is SIGKILLed at random
moments, restarted from its last retained checkpoint each time, and a read_committed
consumer must see every expected score, snapshot and dead letter exactly once."""

from __future__ import annotations

import os

import pytest

from jobs.chaos import ChaosConfig, run_chaos

pytestmark = pytest.mark.integration


def _assert_exactly_once(summary: dict, kills: int) -> None:
    assert summary["kills"] == kills, summary
    assert summary["lost"] == 0 and summary["duplicated"] == 0 and summary["unexpected"] == 0, summary["examples"]
    assert summary["value_mismatches"] == 0, summary["examples"]
    for name in ("scores", "snapshots", "dead_letters"):
        part = summary["by_output"][name]
        assert part["expected"] > 0 and part["seen"] == part["expected"], (name, part)


def test_five_kills_lose_nothing_and_duplicate_nothing(broker, registry_path, tmp_path):
    summary = run_chaos(broker.bootstrap, ChaosConfig(kills=5, seed=13), tmp_path)
    _assert_exactly_once(summary, 5)


@pytest.mark.long
def test_many_kills(broker, registry_path, tmp_path):
    kills = int(os.environ.get("STREAMSCORE_CHAOS_KILLS", "20"))
    summary = run_chaos(broker.bootstrap, ChaosConfig(kills=kills, seed=29), tmp_path)
    _assert_exactly_once(summary, kills)
