"""Deployment state and the model-control commands (transforms.deployment)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transforms.deployment import (
    SLOTS,
    Arm,
    ControlError,
    Deployment,
    apply_command,
    arm_bucket,
    assign_arms,
    command_record,
    parse_command,
)

KNOWN = {"gbdt": "gbdt:v2", "gbdt:v1": "gbdt:v1", "gbdt:v2": "gbdt:v2", "mlp": "mlp:v1", "mlp:v1": "mlp:v1"}
REPO = Path(__file__).resolve().parents[2]


def resolve(ref: str) -> str:
    try:
        return KNOWN[ref]
    except KeyError:
        raise ControlError(f"unknown model {ref!r}") from None


def apply(dep: Deployment, command: str, **fields) -> Deployment:
    return apply_command(dep, command_record(command, **fields)[1], resolve)


def exp(*arms: tuple[str, str, float]) -> bytes:
    return json.dumps({"command": "experiment",
                       "arms": [{"name": n, "model": m, "weight": w} for n, m, w in arms]}).encode()


BASE = Deployment.single("gbdt:v1", fallback="mlp:v1")


# -- every command kind --------------------------------------------------------------------

def test_single_and_models():
    d = Deployment.single("gbdt:v1", fallback="mlp:v1")
    assert d.arms == (Arm("active", "gbdt:v1", 1.0),) and d.fallback == "mlp:v1" and d.revision == 0
    assert d.models() == {"gbdt:v1", "mlp:v1"}
    assert Deployment.single(None).arms == () and Deployment.single(None).models() == set()
    assert replace(d, shadow="gbdt:v2").models() == {"gbdt:v1", "gbdt:v2", "mlp:v1"}


def test_activate_resolves_and_clears_rollback():
    d = apply(BASE, "rollback", reason="bad")
    assert d.rolled_back
    d2 = apply(d, "activate", model="gbdt")  # name alone resolves to the newest version
    assert d2.arms == (Arm("active", "gbdt:v2", 1.0),)
    assert not d2.rolled_back and d2.rollback_reason == ""
    assert d2.fallback == "mlp:v1" and d2.revision == d.revision + 1 == 2


def test_experiment_sets_arms_and_clears_rollback():
    d = apply(BASE, "rollback", reason="bad")
    d2 = apply_command(d, exp(("control", "gbdt:v1", 0.3), ("treatment", "gbdt", 0.7)), resolve)
    assert d2.arms == (Arm("control", "gbdt:v1", 0.3), Arm("treatment", "gbdt:v2", 0.7))
    assert not d2.rolled_back and d2.revision == 2
    one = apply_command(BASE, exp(("only", "mlp", 1)), resolve)
    assert one.arms == (Arm("only", "mlp:v1", 1.0),) and isinstance(one.arms[0].weight, float)


def test_shadow_set_and_clear():
    d = apply(BASE, "shadow", model="gbdt:v2")
    assert d.shadow == "gbdt:v2" and d.arms == BASE.arms
    assert apply(d, "shadow", model=None).shadow is None
    assert apply_command(d, b'{"command": "shadow"}', resolve).shadow is None


def test_fallback_and_rollback_and_resume():
    d = apply(Deployment.single("gbdt:v1"), "fallback", model="mlp")
    assert d.fallback == "mlp:v1"
    r = apply(d, "rollback", reason="online log loss too high")
    assert r.rolled_back and r.rollback_reason == "online log loss too high" and r.arms == d.arms
    assert apply(d, "rollback").rollback_reason == "operator rollback"
    assert len(apply(d, "rollback", reason="x" * 500).rollback_reason) == 200
    back = apply(r, "resume")
    assert not back.rolled_back and back.rollback_reason == "" and back.revision == 3
    assert back.arms == d.arms and back.fallback == d.fallback


def test_describe():
    d = apply(BASE, "shadow", model="gbdt:v2")
    assert d.describe() == {"arms": [{"name": "active", "model": "gbdt:v1", "weight": 1.0}], "shadow": "gbdt:v2",
                            "fallback": "mlp:v1", "rolled_back": False, "rollback_reason": "", "revision": 1}
    json.dumps(d.describe())


def test_command_record_keys_are_slots():
    assert command_record("activate", model="m")[0] == b"arms"
    assert command_record("experiment", arms=[])[0] == b"arms"
    assert command_record("shadow", model=None)[0] == b"shadow"
    assert command_record("fallback", model="m")[0] == b"fallback"
    assert command_record("rollback", reason="r")[0] == b"rollback"
    assert command_record("resume")[0] == b"rollback"
    key, value = command_record("rollback", reason="r", id="abc")
    assert parse_command(value) == {"command": "rollback", "reason": "r", "id": "abc"}
    with pytest.raises(ControlError):
        command_record("promote", model="m")


def test_parse_command_accepts_str_and_bytes():
    assert parse_command('{"command": "resume"}') == {"command": "resume"}
    assert parse_command(b'{"command": "resume", "id": 1}')["id"] == 1


# -- rejected commands leave the deployment as it was ---------------------------------------

BAD = {
    "weights_over_1": exp(("a", "gbdt:v1", 0.7), ("b", "gbdt:v2", 0.7)),
    "weights_under_1": exp(("a", "gbdt:v1", 0.3), ("b", "gbdt:v2", 0.3)),
    "unknown_model_activate": b'{"command": "activate", "model": "xgb:v9"}',
    "unknown_model_arm": exp(("a", "gbdt:v1", 0.5), ("b", "nope:v1", 0.5)),
    "unknown_model_shadow": b'{"command": "shadow", "model": "nope"}',
    "unknown_model_fallback": b'{"command": "fallback", "model": "nope"}',
    "activate_without_model": b'{"command": "activate"}',
    "activate_model_not_string": b'{"command": "activate", "model": 3}',
    "fallback_null": b'{"command": "fallback", "model": null}',
    "malformed_json": b'{"command": "activate", "model": ',
    "not_utf8": b"\xff\xfe\x00garbage\x80",
    "json_list": b'["activate"]',
    "json_string": b'"activate"',
    "empty": b"",
    "none": None,
    "unknown_command": b'{"command": "promote", "model": "gbdt:v1"}',
    "no_command": b'{"model": "gbdt:v1"}',
    "duplicate_arm_names": exp(("a", "gbdt:v1", 0.5), ("a", "gbdt:v2", 0.5)),
    "reserved_arm_shadow": exp(("shadow", "gbdt:v1", 0.5), ("b", "gbdt:v2", 0.5)),
    "empty_arm_name": exp(("", "gbdt:v1", 0.5), ("b", "gbdt:v2", 0.5)),
    "weight_zero": exp(("a", "gbdt:v1", 0.0), ("b", "gbdt:v2", 1.0)),
    "weight_negative": exp(("a", "gbdt:v1", -0.5), ("b", "gbdt:v2", 1.5)),
    "weight_over_1": exp(("a", "gbdt:v1", 1.5)),
    "weight_bool": exp(("a", "gbdt:v1", True)),
    "weight_string": exp(("a", "gbdt:v1", "1")),
    "weight_nan": b'{"command": "experiment", "arms": [{"name": "a", "model": "gbdt:v1", "weight": NaN}]}',
    "arms_empty": b'{"command": "experiment", "arms": []}',
    "arms_not_list": b'{"command": "experiment", "arms": {"a": 1}}',
    "arm_not_object": b'{"command": "experiment", "arms": ["gbdt:v1"]}',
}


@pytest.mark.parametrize("raw", list(BAD.values()), ids=list(BAD))
def test_bad_command_raises_and_leaves_input(raw):
    dep = apply(BASE, "shadow", model="gbdt:v2")
    before = dep.describe()
    with pytest.raises(ControlError):
        apply_command(dep, raw, resolve)
    assert dep.describe() == before


def test_rollback_without_fallback_is_accepted_and_the_default_score_serves():
    """Accepted whatever the fallback slot holds, so compaction cannot change the replayed state."""
    dep = apply(Deployment.single("gbdt:v1"), "rollback", reason="bad")
    assert dep.rolled_back and dep.fallback is None and dep.rollback_reason == "bad"


def test_resolve_error_propagates_as_control_error():
    calls = []

    def strict(ref):
        calls.append(ref)
        raise ControlError(f"unknown model {ref!r}")

    with pytest.raises(ControlError, match="unknown model 'gbdt:v1'"):
        apply_command(BASE, b'{"command": "activate", "model": "gbdt:v1"}', strict)
    assert calls == ["gbdt:v1"]


@pytest.mark.parametrize("raw", [b'{"command": []}', b'{"command": {"x": 1}}'])
def test_unhashable_command_is_a_control_error(raw):
    with pytest.raises(ControlError):
        parse_command(raw)


# -- compaction: the last record per slot replays to the same state --------------------------

MODELS = ["gbdt:v1", "gbdt:v2", "mlp:v1"]
SPLITS = [(0.5, 0.5), (0.1, 0.9), (0.25, 0.75), (0.6, 0.4)]

commands = st.one_of(
    st.builds(lambda m: command_record("activate", model=m), st.sampled_from(MODELS)),
    st.builds(lambda m1, m2, w: command_record("experiment", arms=[{"name": "control", "model": m1, "weight": w[0]},
                                                                   {"name": "treatment", "model": m2,
                                                                    "weight": w[1]}]),
              st.sampled_from(MODELS), st.sampled_from(MODELS), st.sampled_from(SPLITS)),
    st.builds(lambda m: command_record("shadow", model=m), st.sampled_from([*MODELS, None])),
    st.builds(lambda m: command_record("fallback", model=m), st.sampled_from(MODELS)),
    st.builds(lambda r: command_record("rollback", reason=r), st.sampled_from(["a", "b", "c"])),
    st.just(command_record("resume")),
)


def replay(dep: Deployment, records) -> Deployment:
    for _, value in records:
        dep = apply_command(dep, value, resolve)
    return dep


def compacted(records):
    last: dict[bytes, int] = {}
    for offset, (key, _) in enumerate(records):
        last[key] = offset
    return [records[o] for o in sorted(last.values())]


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(commands, min_size=0, max_size=25))
def test_compaction_replays_to_the_same_deployment(records):
    start = Deployment.single("gbdt:v1", fallback="mlp:v1")
    full = replay(start, records)
    comp = replay(start, compacted(records))
    assert replace(full, revision=0) == replace(comp, revision=0)
    assert full.revision == len(records) and comp.revision == len(compacted(records))


def test_compaction_with_no_initial_fallback():
    records = [command_record("fallback", model="mlp:v1"), command_record("rollback", reason="bad"),
               command_record("fallback", model="gbdt:v1")]
    start = Deployment.single("gbdt:v2")
    full = replay(start, records)
    assert full.rolled_back and full.fallback == "gbdt:v1"
    comp = start
    for _, value in compacted(records):
        try:
            comp = apply_command(comp, value, resolve)
        except ControlError:
            pass  # what a job does with a rejected record
    assert replace(comp, revision=0) == replace(full, revision=0)


def test_every_command_has_a_slot():
    assert set(SLOTS) == {"activate", "experiment", "shadow", "fallback", "rollback", "resume"}


# -- arm assignment -------------------------------------------------------------------------

USERS = [f"user-{i}" for i in range(20_000)]


def arms(*weights: float) -> tuple[Arm, ...]:
    return tuple(Arm(f"arm{i}", f"m:{i}", w) for i, w in enumerate(weights))


def test_arm_bucket_range_and_stability():
    b = [arm_bucket(u) for u in USERS[:2000]]
    assert all(0.0 <= v < 1.0 for v in b)
    assert b == [arm_bucket(u) for u in USERS[:2000]]
    assert len(set(b)) == 2000
    assert arm_bucket("alice") != arm_bucket("bob")


def test_arm_bucket_is_the_same_in_another_process():
    code = "from transforms.deployment import arm_bucket; print(repr([arm_bucket(u) for u in ('alice', 'u-7', '')]))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    got = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert got.stdout.strip() == repr([arm_bucket(u) for u in ("alice", "u-7", "")])


def test_arm_bucket_golden_values():
    # pinned: a changed hash would silently move every user of a running experiment to another arm
    assert arm_bucket("alice") == 0.920121829216943
    assert arm_bucket("user-1") == 0.1052756920874336


def test_assign_arms_stable_across_calls_and_orders():
    a = arms(0.5, 0.5)
    idx = assign_arms(USERS, a)
    assert np.array_equal(idx, assign_arms(USERS, a))
    rev = assign_arms(USERS[::-1], a)
    assert np.array_equal(idx, rev[::-1])
    # a user's arm does not depend on the batch it is in
    assert all(assign_arms([u], a)[0] == idx[i] for i, u in enumerate(USERS[:300]))


@pytest.mark.parametrize("weights", [(0.5, 0.5), (0.1, 0.9), (0.2, 0.3, 0.5)])
def test_assign_arms_split_matches_weights(weights):
    idx = assign_arms(USERS, arms(*weights))
    frac = np.bincount(idx, minlength=len(weights)) / len(USERS)
    np.testing.assert_allclose(frac, weights, atol=0.02)


def test_weight_change_moves_users_monotonically():
    before = assign_arms(USERS, arms(0.5, 0.5))
    after = assign_arms(USERS, arms(0.6, 0.4))
    moved = before != after
    assert moved.any()
    assert np.all(before[moved] == 1) and np.all(after[moved] == 0)
    assert 0.08 < moved.mean() < 0.12
    np.testing.assert_array_equal(after[before == 0], 0)


def test_assign_arms_edge_cases():
    assert assign_arms(USERS[:5], ()).tolist() == [0] * 5
    assert assign_arms(USERS[:50], arms(1.0)).tolist() == [0] * 50
    assert assign_arms([], arms(0.5, 0.5)).tolist() == []
    # weights that sum to 1 within the accepted tolerance never index past the last arm
    idx = assign_arms(USERS, arms(0.5, 0.4999995))
    assert idx.max() == 1 and idx.min() == 0
