"""The job submitted with `flink run -py` to a standalone session cluster started from
the apache-flink wheel's scripts."""

from __future__ import annotations

import json

import pytest

from jobs import cluster
from jobs.outputs import read_outputs
from tests.integration.conftest import fresh_topics, job_env
from tests.integration.pipeline_data import build, produce
from transforms.reference import compute_features, model_rows
from transforms.spec import load_spec

pytestmark = pytest.mark.integration


def test_submitted_job_produces_the_reference_outputs(broker, registry_path):
    topics = fresh_topics(broker.bootstrap)
    sent = build(n_generated=5_000, malformed_every=250)
    produce(broker.bootstrap, topics["events"], sent)
    cluster.start(task_managers=1)
    try:
        env = job_env(broker.bootstrap, topics, STREAMSCORE_REGISTRY=str(registry_path))
        res = cluster.submit({k: v for k, v in env.items() if k.startswith("STREAMSCORE_")})
        assert res.returncode == 0, (res.stdout + res.stderr)[-12000:]
        info = json.loads(res.stdout.strip().splitlines()[-1])
        assert info["job_id"]
        assert cluster.rest(f"/jobs/{info['job_id']}")["state"] == "FINISHED"
    finally:
        cluster.stop()
    out = read_outputs(broker.bootstrap, topics["scores"], topics["feature-snapshots"], topics["dead-letters"])
    spec = load_spec()
    ref = compute_features(spec, sent.good)
    assert len(out.snapshots) == sum(len(rows) for rows in ref.groups.values())
    assert len(out.scores) == len(model_rows(spec, ref))
    assert len(out.dead_letters) == len(sent.bad) + len(ref.late)
