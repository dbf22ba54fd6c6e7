"""Savepoint upgrades and rescaling on a standalone session cluster of 2 TaskManagers:
parallelism 1 -> 2 -> 1 through stop-with-savepoint and restore; window state carries
over and the committed output equals a run that never stopped, record by record."""

from __future__ import annotations

import pytest

from jobs.rescale import RescaleConfig, run_rescale

pytestmark = pytest.mark.integration


def test_rescale_one_two_one_equals_an_unbroken_run(broker, registry_path, tmp_path):
    summary = run_rescale(broker.bootstrap, RescaleConfig(parallelisms=(1, 2, 1), events=30_000), tmp_path)
    assert [p["parallelism"] for p in summary["phases"]] == [1, 2, 1]
    assert all(p["savepoint"] for p in summary["phases"]), summary["phases"]
    assert summary["lost"] == 0 and summary["duplicated"] == 0 and summary["unexpected"] == 0, summary["examples"]
    assert summary["value_mismatches"] == 0, summary["examples"]
    for name in ("scores", "snapshots", "dead_letters"):
        part = summary["by_output"][name]
        assert part["expected"] > 0 and part["seen"] == part["expected"], (name, part)
