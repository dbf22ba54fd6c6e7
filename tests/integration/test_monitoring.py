"""Monitoring in the running job (real broker, real Flink, real ONNX): traffic whose dwell
times shift mid-run raises drift alerts for the dwell features only, severe drift falls
back, drift that persists asks for a retrain; sampled explanations; a subgroup given
biased scores raises a fairness alert."""

from __future__ import annotations

import os
import threading
from collections import Counter

import pytest

from jobs.generator import BASE_TS_MS, TrafficConfig, generate_events
from jobs.kafka_io import produce_event, producer, read_topic
from jobs.prometheus import scrape, select, total, unscale
from tests.integration.conftest import fresh_topics, job_env, run_job
from transforms.codecs import decode
from transforms.dead_letters import decode_dead_letter
from transforms.explain import sampled
from transforms.spec import load_spec

pytestmark = pytest.mark.integration

MONITOR_MS = 30_000
SHIFT_AT = BASE_TS_MS + 120_000  # dwell times x4 from here
END = BASE_TS_MS + 210_000
EXPLAIN_RATE = 0.02
PROMETHEUS_PORT = int(os.environ.get("STREAMSCORE_TEST_PROMETHEUS_PORT", "9277"))
OP = "flink_taskmanager_job_task_operator_"
DWELL = {n for n in load_spec().model_feature_names if "dwell" in n}


def _produce(bootstrap: str, topic: str, events) -> int:
    p = producer(bootstrap)
    n = 0
    for ev in events:
        produce_event(p, topic, ev)
        n += 1
        if n % 20_000 == 0:
            p.poll(0)
    assert p.flush(60) == 0
    return n


def _run(broker, registry_path, events, prometheus_port: int = 0, **extra):
    """Produce, run the bounded job (scraping its Prometheus endpoint every second while
    it runs, when a port is given), read every output topic."""
    topics = fresh_topics(broker.bootstrap)
    _produce(broker.bootstrap, topics["events"], events)
    scrapes: list[dict] = []
    done = threading.Event()

    def scrape_loop() -> None:
        while not done.is_set():
            try:
                scrapes.append(scrape(prometheus_port, timeout_s=2))
            except OSError:
                pass
            done.wait(1.0)

    poller = threading.Thread(target=scrape_loop, daemon=True)
    if prometheus_port:
        extra["STREAMSCORE_PROMETHEUS_PORT"] = str(prometheus_port)
        poller.start()
    try:
        run_job(job_env(broker.bootstrap, topics, STREAMSCORE_REGISTRY=str(registry_path),
                        STREAMSCORE_MONITOR_WINDOW_MS=str(MONITOR_MS), **extra))
    finally:
        done.set()

    def read(name, schema):
        dec = decode_dead_letter if schema == "dead_letter" else lambda b: decode(b, schema)
        return [v for _, v, _ in read_topic(broker.bootstrap, topics[name], dec)]

    return {"scores": read("scores", "scored_result"), "alerts": read("alerts", "alert"),
            "monitoring": read("model-monitoring", "monitoring"), "explanations": read("explanations", "explanation"),
            "dead_letters": read("dead-letters", "dead_letter"), "scrapes": scrapes}


@pytest.fixture(scope="module")
def drifted(broker, registry_path):
    cfg = TrafficConfig(seed=11, out_of_order_fraction=0.05)  # the training traffic: in distribution
    n = int(cfg.event_rate_per_s * (END - BASE_TS_MS) / 1000)

    def shifted():
        for ev in generate_events(n, cfg):
            if ev["ts_ms"] >= END:
                continue
            if ev["ts_ms"] >= SHIFT_AT and ev["event_type"] == "dwell":
                ev = dict(ev, dwell_ms=ev["dwell_ms"] * 4.0)
            yield ev

    return _run(broker, registry_path, shifted(), STREAMSCORE_RETRAIN_AFTER_WINDOWS="2",
                STREAMSCORE_EXPLAIN_RATE=str(EXPLAIN_RATE), STREAMSCORE_DRIFT_FALLBACK="true")


def test_drift_alerts_name_only_the_shifted_features_within_two_windows(drifted):
    drift = [a for a in drifted["alerts"] if a["kind"] == "drift"]
    start = {a["attributes"]["feature"]: int(a["attributes"]["window_start_ms"]) for a in reversed(drift)}
    before = [a for a in drift if BASE_TS_MS + 60_000 <= int(a["attributes"]["window_start_ms"]) < SHIFT_AT]
    assert not before, [a["message"] for a in before]  # in distribution once the 60 s windows are full
    after = [a for a in drift if int(a["attributes"]["window_start_ms"]) >= SHIFT_AT]
    alerted = {a["attributes"]["feature"] for a in after}
    assert alerted and alerted <= DWELL | {"prediction"}, alerted
    assert alerted & DWELL
    assert min(start[f] for f in alerted & DWELL) <= SHIFT_AT + 2 * MONITOR_MS
    windows = [m for m in drifted["monitoring"] if m["kind"] == "drift"]
    # 30 s windows from 60 s (the first minute is the cold start's warm-up) to the end
    assert sorted(m["window_start_ms"] - BASE_TS_MS for m in windows) == list(range(60_000, 240_000, 30_000))
    assert all(f"psi.{f}" in windows[0]["values"] for f in load_spec().model_feature_names)


def test_severe_drift_falls_back_and_persistent_drift_requests_a_retrain(drifted):
    rollback = [a for a in drifted["alerts"] if a["kind"] == "auto_rollback" and "severe drift" in a["message"]]
    assert rollback and rollback[0]["attributes"]["source"] == "drift"
    late = [s for s in drifted["scores"] if s["window_end_ms"] >= SHIFT_AT + 3 * MONITOR_MS]
    assert late and all(s["model_name"] == "mlp" and s["fallback_reason"].startswith("rolled_back: severe drift")
                        for s in late)
    early = [s for s in drifted["scores"] if s["window_end_ms"] < SHIFT_AT]
    assert Counter(s["model_name"] for s in early) == {"gbdt": len(early)}
    retrain = [m for m in drifted["monitoring"] if m["kind"] == "retrain"]
    assert retrain and retrain[0]["window_start_ms"] >= SHIFT_AT - MONITOR_MS
    assert set(retrain[0]["attributes"]["features"].split(",")) <= DWELL | {"prediction"}
    assert any(a["kind"] == "retrain" for a in drifted["alerts"])


def test_explanations_appear_at_the_sampled_rate(drifted):
    served = [s for s in drifted["scores"] if s["arm"] != "shadow" and not s["fallback_reason"]]
    want = {(s["user_id"], s["window_end_ms"]): s for s in served if sampled(s["user_id"], s["window_end_ms"],
                                                                              EXPLAIN_RATE)}
    assert 0.01 < len(want) / len(served) < 0.03
    by_method = Counter(e["method"] for e in drifted["explanations"])
    assert by_method == {"sensitivity": len(want), "tree_shap": len(want)}
    names = set(load_spec().model_feature_names)
    for e in drifted["explanations"]:
        s = want[(e["user_id"], e["window_end_ms"])]
        assert (e["model_name"], e["model_version"]) == (s["model_name"], s["model_version"])
        assert e["score"] == pytest.approx(s["score"])
        assert set(e["attributions"]) - {"bias"} == names


@pytest.fixture(scope="module")
def biased(broker, registry_path):
    """Users in latam never have their clicks seen: their scores fall."""
    cfg = TrafficConfig(seed=12, out_of_order_fraction=0.05, late_fraction=0.002)
    events = (e for e in generate_events(int(cfg.event_rate_per_s * 120), cfg)
              if not (e["region"] == "latam" and e["event_type"] == "click"))
    return _run(broker, registry_path, events, prometheus_port=PROMETHEUS_PORT, STREAMSCORE_EXPLAIN_RATE="0",
                STREAMSCORE_DRIFT_FALLBACK="false")


def test_biased_subgroup_raises_a_fairness_alert(biased):
    fair = [a for a in biased["alerts"] if a["kind"] == "fairness"]
    assert fair, [a["kind"] for a in biased["alerts"]]
    assert {(a["attributes"]["attribute"], a["attributes"]["group"]) for a in fair} == {("region", "latam")}
    assert float(fair[0]["attributes"]["positive_rate_ratio"]) < 0.8
    records = [m for m in biased["monitoring"] if m["kind"] == "fairness"]
    assert records and "positive_rate_ratio.region=latam" in records[0]["values"]
    assert not biased["explanations"]


def test_prometheus_endpoint_serves_the_listed_metrics(biased):
    """Scraped every second while the job ran. Counters only grow and a task's metrics
    vanish when it finishes (the bounded source first), so each metric's peak over the
    scrapes is a lower bound of what was produced."""
    scrapes = biased["scrapes"]
    assert scrapes, "the Prometheus endpoint never answered"
    names = {n for s in scrapes for n in s}

    def peak(name: str, **labels: str) -> float:
        return max(total(s, name, **labels) for s in scrapes)

    scores = [s for s in biased["scores"] if s["arm"] != "shadow"]
    scored = peak(OP + "streamscore_model_version_arm_fallback_scores")
    assert 0.5 * len(scores) <= scored <= len(scores)
    versions = {lab["model_version"] for s in scrapes
                for lab, _ in select(s, OP + "streamscore_model_version_arm_fallback_scores")}
    assert versions == {f"{s['model_name']}:{s['model_version']}" for s in scores}
    late = [d for d in biased["dead_letters"] if d["reason"] == "late"]
    assert late and 0 < peak(OP + "streamscore_reason_dead_letters", reason="late") <= len(late)
    assert peak(OP + "streamscore_rows_in") > 0
    assert peak(OP + "streamscore_latency_ms_count") > 0 and OP + "streamscore_latency_ms_le_bucket" in names
    assert peak(OP + "streamscore_batch_rows_count") > 0 and OP + "streamscore_inference_ms_sum" in names
    assert any(n.endswith("numRecordsInPerSecond") for n in names)
    assert any(n.endswith("numRecordsOutPerSecond") for n in names)
    ratios = [unscale(v) for s in scrapes for _, v in
              select(s, OP + "streamscore_attribute_group_positive_rate_ratio_ppm", attribute="region")]
    assert ratios and 0 <= min(ratios) <= max(ratios) <= 1.0
    assert any(select(s, OP + "streamscore_feature_psi_ppm") for s in scrapes)
