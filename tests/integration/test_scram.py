"""Authenticated Kafka: a local broker of its own with a SASL_PLAINTEXT / SCRAM-SHA-512
listener. The real Flink job with the right credentials produces scores and feature
snapshots; with a wrong password it exits at once with a clear error and writes
nothing; the password shows in none of its output."""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from jobs import job_runner, kafka_local
from jobs.kafka_io import end_offsets, read_topic
from jobs.kafka_security import KafkaAuthError, KafkaSecurity, check_connection
from jobs.outputs import read_outputs
from jobs.paths import ROOT
from tests.integration.pipeline_data import build, produce
from transforms.codecs import decode

pytestmark = pytest.mark.integration

PORT = int(os.environ.get("STREAMSCORE_TEST_SCRAM_PORT", "19392"))
OUTPUTS = ("scores", "feature-snapshots", "dead-letters", "alerts", "model-metrics", "model-monitoring",
           "explanations")


def creds(user: str, password: str) -> dict[str, str]:
    return {"STREAMSCORE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "STREAMSCORE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "STREAMSCORE_KAFKA_USERNAME": user, "STREAMSCORE_KAFKA_PASSWORD": password}


def flink_log() -> Path:
    import pyflink

    return Path(pyflink.__file__).parent / "log"


def run_job(env: dict[str, str], timeout_s: float) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    res = subprocess.run(job_runner.job_command(), env=env, cwd=ROOT, text=True, capture_output=True,
                         timeout=timeout_s)
    return res, time.monotonic() - t0


@pytest.fixture(scope="module")
def scram(tmp_path_factory, registry_path):
    admin_pw, alice_pw = f"adm-{secrets.token_hex(8)}", f"alice-{secrets.token_hex(8)}"
    wrong_pw = f"wrong-{secrets.token_hex(8)}"
    cfg = kafka_local.BrokerConfig(port=PORT, data_dir=tmp_path_factory.mktemp("kafka-scram"), heap_mb=512,
                                   scram_users=(("admin", admin_pw), ("alice", alice_pw)))
    mp = pytest.MonkeyPatch()
    kafka_local.start(cfg)
    try:
        for k, v in creds("alice", alice_pw).items():  # this process's clients authenticate as alice
            mp.setenv(k, v)
        sent = build(n_generated=4_000, malformed_every=400)
        good_topics = job_runner.fresh_topics(cfg.bootstrap, "scram-ok")
        bad_topics = job_runner.fresh_topics(cfg.bootstrap, "scram-bad")
        for topics in (good_topics, bad_topics):
            produce(cfg.bootstrap, topics["events"], sent)
        extra = {"STREAMSCORE_REGISTRY": str(registry_path), "STREAMSCORE_DRIFT_FALLBACK": "false",
                 "STREAMSCORE_EXPLAIN_RATE": "1.0"}  # explanations: written by the Python workers
        good, good_s = run_job(job_runner.job_env(cfg.bootstrap, good_topics, **extra), 900)
        bad, bad_s = run_job(job_runner.job_env(cfg.bootstrap, bad_topics, **extra,
                                                STREAMSCORE_KAFKA_PASSWORD=wrong_pw), 300)
        yield {"cfg": cfg, "sent": sent, "good_topics": good_topics, "bad_topics": bad_topics, "good": good,
               "good_s": good_s, "bad": bad, "bad_s": bad_s, "alice_pw": alice_pw, "admin_pw": admin_pw,
               "wrong_pw": wrong_pw}
    finally:
        mp.undo()
        kafka_local.stop(cfg)


def test_job_with_the_right_credentials_scores_and_snapshots(scram):
    res, topics, sent = scram["good"], scram["good_topics"], scram["sent"]
    assert res.returncode == 0, res.stderr[-6000:]
    bs = scram["cfg"].bootstrap
    out = read_outputs(bs, topics["scores"], topics["feature-snapshots"], topics["dead-letters"])
    assert out.scores and out.snapshots
    assert {"alice", "bob"} <= {v["entity_id"] for _, v, _ in out.snapshots}  # the hand-written users
    assert {v["user_id"] for _, v, _ in out.scores} <= {e["user_id"] for e in sent.good}
    reasons = out.dead_letter_reasons()
    for reason, n in Counter(r for _, r in sent.bad.values()).items():  # every malformed record
        assert reasons.get(reason, 0) >= n, (reason, reasons)
    # the Python workers (alerts, metrics, explanations producers) authenticated too
    assert read_topic(bs, topics["explanations"], lambda v: decode(v, "explanation"))


def test_wrong_password_fails_fast_clearly_and_writes_nothing(scram):
    res = scram["bad"]
    assert res.returncode != 0
    assert scram["bad_s"] < 60, f"took {scram['bad_s']:.0f}s"
    err = res.stderr
    assert "authentication failed" in err.lower(), err[-3000:]
    assert "user 'alice'" in err and "SCRAM-SHA-512" in err
    assert "Traceback" not in err  # one clear line, not a stack
    bs, topics = scram["cfg"].bootstrap, scram["bad_topics"]
    for name in OUTPUTS:  # not even aborted transactions: every output log is empty
        assert end_offsets(bs, topics[name]) == {0: 0}, name


def test_passwords_appear_in_no_output(scram):
    secrets_ = (scram["alice_pw"], scram["admin_pw"], scram["wrong_pw"])
    for res in (scram["good"], scram["bad"]):
        for text in (res.stdout, res.stderr):
            for pw in secrets_:
                assert pw not in text
    logs = [p for p in flink_log().glob("*.log")] if flink_log().exists() else []
    for p in logs:  # the embedded mini-cluster's Flink log (Kafka client configs are logged there)
        data = p.read_bytes()
        for pw in secrets_:
            assert pw.encode() not in data, p.name
    broker_logs = [scram["cfg"].data_dir / n for n in ("broker.log", "broker.out")]
    for p in broker_logs:
        for pw in secrets_:
            assert pw.encode() not in p.read_bytes(), p.name


def test_python_client_with_wrong_credentials_gets_a_clear_error(scram):
    bs = scram["cfg"].bootstrap
    wrong = KafkaSecurity("SASL_PLAINTEXT", "SCRAM-SHA-512", "alice", scram["wrong_pw"])
    t0 = time.monotonic()
    with pytest.raises(KafkaAuthError) as err:
        check_connection(bs, wrong)
    assert time.monotonic() - t0 < 8
    text = str(err.value)
    assert "authentication failed" in text and "user 'alice'" in text and "SCRAM-SHA-512" in text
    assert scram["wrong_pw"] not in text
    right = KafkaSecurity("SASL_PLAINTEXT", "SCRAM-SHA-512", "alice", scram["alice_pw"])
    assert check_connection(bs, right) >= len(OUTPUTS)
    mp = pytest.MonkeyPatch()
    try:  # a reader configured from the environment fails with the same clear error
        mp.setenv("STREAMSCORE_KAFKA_PASSWORD", scram["wrong_pw"])
        with pytest.raises(KafkaAuthError, match="authentication failed"):
            read_topic(bs, scram["good_topics"]["scores"], timeout_s=10)
    finally:
        mp.undo()
