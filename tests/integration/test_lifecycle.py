"""Model lifecycle in the running job (real broker, real Flink mini-cluster, real ONNX):
one unbounded job, traffic in phases, and between phases a model-control command that
the job applies without a restart. Then the scores, alerts and online metrics of each
phase are checked."""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter, defaultdict

import pytest

from jobs import job_runner
from jobs.job_runner import stop_job
from jobs.kafka_io import produce_event, producer, read_topic
from jobs.model_control import send_command
from jobs.paths import REGISTRY, ROOT
from tests.integration.lifecycle_support import STEP_MS, Tail, lifecycle_registry, phase_events, phase_start
from transforms.codecs import decode
from transforms.deployment import arm_bucket
from transforms.experiment import report

pytestmark = pytest.mark.integration

# (name, event-time length, commands sent before the phase's traffic, alerts they must raise)
PHASES = [
    ("start_corrupt", 40_000, [], []),
    ("hot_swap", 40_000, [("activate", {"model": "gbdt"})], ["control_applied"]),
    ("ab", 80_000, [("experiment", {"arms": [{"name": "control", "model": "prior", "weight": 0.5},
                                             {"name": "treatment", "model": "gbdt", "weight": 0.5}]}),
                    ("shadow", {"model": "bad"})], ["control_applied", "control_applied"]),
    ("aa", 60_000, [("experiment", {"arms": [{"name": "a", "model": "gbdt", "weight": 0.5},
                                             {"name": "b", "model": "gbdt", "weight": 0.5}]}),
                    ("shadow", {"model": None})], ["control_applied", "control_applied"]),
    ("nan", 40_000, [("activate", {"model": "nan"})], ["control_applied"]),
    ("slow", 40_000, [("activate", {"model": "slow"})], ["control_applied"]),
    ("degraded", 60_000, [("activate", {"model": "bad"})], ["control_applied"]),
    ("promoted_again", 40_000, [("activate", {"model": "gbdt"})], ["control_applied"]),
]
LENGTHS = [p[1] for p in PHASES]
BAD_COMMANDS = [  # sent during hot_swap: each rejected, the job keeps serving gbdt
    ("experiment", {"arms": [{"name": "x", "model": "gbdt", "weight": 0.7}, {"name": "y", "model": "mlp",
                                                                              "weight": 0.7}]}),
    ("activate", {"model": "gbdt:no-such-version"}),
    ("activate", {"model": "corrupt"}),
]


def _resolve(cmd: dict, refs: dict) -> dict:
    out = dict(cmd)
    if out.get("model") in refs:
        out["model"] = refs[out["model"]]
    if "arms" in out:
        out["arms"] = [dict(a, model=refs.get(a["model"], a["model"])) for a in out["arms"]]
    return out


@pytest.fixture(scope="module")
def life(broker, registry_path, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lifecycle")
    refs = lifecycle_registry(REGISTRY, tmp / "registry")
    topics = job_runner.fresh_topics(broker.bootstrap, "life")
    env = job_runner.job_env(broker.bootstrap, topics, STREAMSCORE_BOUNDED="false",
                             STREAMSCORE_REGISTRY=str(tmp / "registry" / "registry.json"),
                             STREAMSCORE_FALLBACK_MODEL=refs["mlp"], STREAMSCORE_LATENCY_BUDGET_MS="100",
                             STREAMSCORE_EVAL_WINDOW_MS=str(STEP_MS), STREAMSCORE_EVAL_GRACE_MS=str(STEP_MS),
                             STREAMSCORE_ROLLBACK_MIN_LABELS="50", STREAMSCORE_ROLLBACK_LOGLOSS_RATIO="1.5",
                             STREAMSCORE_MONITOR="false")  # this traffic is not the training's: drift is tested apart
    log = open(tmp / "job.log", "w")
    proc = subprocess.Popen(job_runner.job_command("--unbounded"), env=env, cwd=ROOT, stdout=log, stderr=log)
    alerts = Tail(broker.bootstrap, topics["alerts"], lambda v: decode(v, "alert"))
    scores = Tail(broker.bootstrap, topics["scores"], lambda v: decode(v, "scored_result"))

    def alive() -> None:
        if proc.poll() is not None:
            raise RuntimeError(f"the job exited ({proc.returncode}):\n{(tmp / 'job.log').read_text()[-4000:]}")

    def kinds() -> list[str]:
        return [a["kind"] for _, a, _ in alerts.records]

    p = producer(broker.bootstrap)
    sent_at: dict[str, int] = {}
    try:
        for i, (name, length, commands, expect) in enumerate(PHASES):
            start = phase_start(i, LENGTHS)
            if i:  # every window but the phase's last has fired and been scored under the previous deployment
                last = start - STEP_MS
                scores.wait(lambda rs, last=last: any(s["window_end_ms"] >= last for s in rs), 300 if i == 1 else 120,
                            f"scores of window {last}", alive)
                time.sleep(1.0)
                scores.poll()
            before = len(kinds())
            for cmd, fields in commands:
                send_command(broker.bootstrap, topics["model-control"], cmd, **_resolve(fields, refs))
            if name == "hot_swap":
                for cmd, fields in BAD_COMMANDS:
                    send_command(broker.bootstrap, topics["model-control"], cmd, **_resolve(fields, refs))
                p.produce(topics["model-control"], key=b"arms", value=b"\x00not json")
                p.flush(10)
                expect = expect + ["control_rejected"] * (len(BAD_COMMANDS) + 1)
            alerts.wait(lambda rs, b=before, n=len(expect): len([a for a in rs[b:] if a["kind"].startswith("control_")])
                        >= n, 60, f"{name}: {expect}", alive)
            sent_at[name] = int(time.time() * 1000)
            for ev in phase_events(start, length):
                produce_event(p, topics["events"], ev)
                p.poll(0)
            p.flush(30)
        # advance the watermark past the last phase so its windows fire
        end = phase_start(len(PHASES), LENGTHS)
        for ev in phase_events(end + 60_000, 5_000):
            produce_event(p, topics["events"], ev)
        p.flush(30)
        scores.wait(lambda rs: any(s["window_end_ms"] >= end for s in rs), 180, "the last phase's scores", alive)
        time.sleep(5.0)  # the online metrics of the last windows
        alive()
    finally:
        stop_job(proc)
        log.close()
    scores.poll()
    alerts.poll()
    metrics = [v for _, v, _ in read_topic(broker.bootstrap, topics["model-metrics"],
                                           lambda v: decode(v, "model_metrics"))]
    control = read_topic(broker.bootstrap, topics["model-control"])
    out = {"refs": refs, "scores": [v for _, v, _ in scores.records], "alerts": [a for _, a, _ in alerts.records],
           "metrics": metrics, "control": control, "sent_at": sent_at}
    scores.close()
    alerts.close()
    return out


def in_phase(life: dict, name: str, arm_filter=lambda s: s["arm"] != "shadow") -> list[dict]:
    """Served scores of windows that fired wholly under the phase's deployment."""
    i = [p[0] for p in PHASES].index(name)
    lo, hi = phase_start(i, LENGTHS) + STEP_MS, phase_start(i + 1, LENGTHS) - STEP_MS
    rows = [s for s in life["scores"] if lo <= s["window_end_ms"] <= hi and arm_filter(s)]
    assert rows, f"no scores in phase {name}"
    return rows


def model_of(ref: str) -> tuple[str, str]:
    name, _, version = ref.partition(":")
    return name, version


def test_no_gap_and_no_restart_across_every_swap(life):
    ends = Counter(s["window_end_ms"] for s in life["scores"] if s["arm"] != "shadow"
                   and s["window_end_ms"] >= phase_start(0, LENGTHS) + STEP_MS)
    first, last = min(ends), phase_start(len(PHASES), LENGTHS)
    missing = [e for e in range(first, last + 1, STEP_MS) if ends[e] == 0]
    assert not missing, f"windows with no scores: {missing}"
    assert len({(s["user_id"], s["window_end_ms"]) for s in life["scores"] if s["arm"] != "shadow"}) == \
        sum(ends.values()) + sum(1 for s in life["scores"] if s["arm"] != "shadow"
                                 and s["window_end_ms"] < phase_start(0, LENGTHS) + STEP_MS)


def test_corrupted_model_at_start_falls_back_with_an_alert(life):
    rows = in_phase(life, "start_corrupt")
    assert {(s["model_name"], s["model_version"]) for s in rows} == {model_of(life["refs"]["mlp"])}
    assert all(s["fallback_reason"].startswith("load_error corrupt") and "sha256" in s["fallback_reason"]
               for s in rows)
    assert any(a["kind"] == "model_load_error" and "sha256" in a["message"] for a in life["alerts"])


def test_hot_swap_serves_the_new_model_and_bad_commands_are_rejected(life):
    rows = in_phase(life, "hot_swap")
    assert {(s["model_name"], s["model_version"], s["arm"], s["fallback_reason"]) for s in rows} == \
        {(*model_of(life["refs"]["gbdt"]), "active", "")}
    rejected = [a["message"] for a in life["alerts"] if a["kind"] == "control_rejected"]
    assert any("weights sum to 1.4" in m for m in rejected)
    assert any("no-such-version" in m for m in rejected)
    assert any("sha256" in m for m in rejected)
    assert any("not JSON" in m for m in rejected)


def test_ab_split_is_stable_per_user_and_shadow_scores_are_marked(life):
    rows = in_phase(life, "ab")
    arms = defaultdict(set)
    for s in rows:
        arms[s["user_id"]].add(s["arm"])
    assert all(len(a) == 1 for a in arms.values()), "a user changed arm"
    for user, (arm,) in arms.items():
        assert arm == ("control" if arm_bucket(user) < 0.5 else "treatment")
    share = sum(1 for a in arms.values() if a == {"control"}) / len(arms)
    assert 0.4 < share < 0.6 and len(arms) > 200
    by_arm = {s["arm"]: (s["model_name"], s["model_version"]) for s in rows}
    assert by_arm == {"control": model_of(life["refs"]["prior"]), "treatment": model_of(life["refs"]["gbdt"])}
    shadow = in_phase(life, "ab", lambda s: s["arm"] == "shadow")
    assert {(s["user_id"], s["window_end_ms"]) for s in shadow} == {(s["user_id"], s["window_end_ms"]) for s in rows}
    assert all(s["model_name"] == "bad" and s["score"] == pytest.approx(0.95) for s in shadow)
    assert not [s for s in in_phase(life, "aa", lambda s: True) if s["arm"] == "shadow"]


def test_experiment_report_declares_the_better_model_and_nothing_on_aa(life):
    def records(name):
        i = [p[0] for p in PHASES].index(name)
        lo, hi = phase_start(i, LENGTHS) + STEP_MS, phase_start(i + 1, LENGTHS) - 2 * STEP_MS
        return [m for m in life["metrics"] if lo <= m["eval_window_start_ms"] < hi]

    ab = report(records("ab"), control_arm="control").to_dict()
    assert ab["comparisons"]["treatment"]["significant"] is True, ab["comparisons"]
    assert ab["comparisons"]["treatment"]["verdict"] == "promote"
    assert ab["comparisons"]["treatment"]["lift"] > 0
    aa = report(records("aa"), control_arm="a").to_dict()
    assert aa["comparisons"]["b"]["significant"] is False, aa["comparisons"]
    assert aa["comparisons"]["b"]["verdict"] == "keep", aa["comparisons"]


@pytest.mark.parametrize("phase,reason", [("nan", "NaN"), ("slow", "latency_budget")])
def test_faulty_model_falls_back_to_known_good(life, phase, reason):
    rows = in_phase(life, phase)
    assert {(s["model_name"], s["model_version"]) for s in rows} == {model_of(life["refs"]["mlp"])}
    assert all(reason in s["fallback_reason"] for s in rows)
    assert any(a["kind"] == "model_fallback" and reason in a["message"] for a in life["alerts"])


def test_degraded_online_metrics_roll_back_automatically_and_promotion_reverses_it(life):
    rows = sorted(in_phase(life, "degraded"), key=lambda s: s["window_end_ms"])
    assert rows[0]["model_name"] == "bad" and rows[0]["fallback_reason"] == ""
    rolled = [s for s in rows if s["fallback_reason"].startswith("rolled_back")]
    assert rolled and all(s["model_name"] == "mlp" for s in rolled)
    first = min(s["window_end_ms"] for s in rolled)
    assert all(s["fallback_reason"].startswith("rolled_back") for s in rows if s["window_end_ms"] > first)
    auto = [a for a in life["alerts"] if a["kind"] == "auto_rollback"]
    assert len(auto) >= 1 and "online log loss of bad:t1" in auto[0]["message"]
    recorded = [json.loads(v) for k, v, _ in life["control"] if k == b"rollback"]
    assert recorded and recorded[0]["source"] == "auto"
    again = in_phase(life, "promoted_again")
    assert {(s["model_name"], s["fallback_reason"]) for s in again} == {("gbdt", "")}


def test_online_metrics_are_per_model_version_and_arm(life):
    served = [m for m in life["metrics"] if m["role"] == "served"]
    assert {m["arm"] for m in served} >= {"active", "control", "treatment", "a", "b"}
    assert all(m["n"] >= 0 and m["positives"] <= m["n"] for m in life["metrics"])
    assert sum(m["n"] for m in served) > 0.8 * sum(1 for s in life["scores"] if s["arm"] != "shadow")
    assert any(m["role"] == "shadow" and m["model_name"] == "bad" for m in life["metrics"])
