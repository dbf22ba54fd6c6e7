"""Allowed lateness per group and the user x item-category entity, in the spec, the
reference, the streaming peer, the SQL compiler and the Beam streaming pipeline."""

from __future__ import annotations

import copy

import apache_beam as beam
import pytest
import yaml
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from jobs.beam_pipelines import StreamingFeatures, direct_options, reference_test_stream, run_features
from jobs.generator import TrafficConfig, generate_events
from transforms.codecs import make_event
from transforms.reference import compute_features, late_groups
from transforms.spec import DEFAULT_SPEC_PATH, SpecError, entity_key, load_spec, parse_spec
from transforms.sql_compiler import group_input_query, late_condition, source_watermark_ms
from transforms.windowing import StreamingFeatures as PeerFeatures

RAW = yaml.safe_load(DEFAULT_SPEC_PATH.read_text())

SPEC = parse_spec({
    "watermark_delay_ms": 2000, "scoring": {"entity": "user", "groups": ["strict"]},
    "groups": [
        {"name": "strict", "entity": "user", "window": {"kind": "tumbling", "size_ms": 10_000},
         "features": [{"name": "n", "agg": "count"}]},
        {"name": "lenient", "entity": "user", "window": {"kind": "tumbling", "size_ms": 10_000},
         "allowed_lateness_ms": 3_000, "features": [{"name": "n", "agg": "count"}]},
        {"name": "pair", "entity": "user_category", "window": {"kind": "tumbling", "size_ms": 10_000},
         "allowed_lateness_ms": 3_000, "features": [{"name": "n", "agg": "count"},
                                                    {"name": "items", "agg": "distinct_count", "field": "item_id"}]},
    ]})
B = 100_000
# the same, plus a session group with its own lateness, for the streaming engines
SESSION_SPEC = parse_spec({
    "watermark_delay_ms": 2000, "scoring": {"entity": "user", "groups": ["strict"]},
    "groups": [*[{"name": g.name, "entity": g.entity, "window": {"kind": "tumbling", "size_ms": 10_000},
                  "allowed_lateness_ms": g.allowed_lateness_ms,
                  "features": [{"name": "n", "agg": "count"}]} for g in SPEC.groups],
               {"name": "sess", "entity": "user", "window": {"kind": "session", "gap_ms": 3_000},
                "allowed_lateness_ms": 1_000, "features": [{"name": "n", "agg": "count"},
                                                           {"name": "items", "agg": "distinct_count",
                                                            "field": "item_id"}]}]})


def ev(eid, user, ts, category="news", item="i1"):
    return {**make_event(eid, user, item, B + ts, "impression"), "item_category": category}


EVENTS = [  # arrival order; spec watermark after each = max(ts) - 2000
    ev("a", "u1", 1_000),
    ev("b", "u1", 12_000),  # wm 110000
    ev("c", "u1", 9_000),  # 109000 <= wm 110000: late for strict, within lenient's 3 s
    ev("d", "u1", 6_000),  # 106000 <= 110000 - 3000: late for every group
    ev("e", "u1", 8_000, category=None),  # late for strict; no category: not in pair
    ev("g", "u1", 7_001, category="sport", item="i2"),  # 107001 > 110000 - 3000: within lenient
    ev("f", "u|x", 12_500, category="a|b"),  # composite key escaped; wm 110500
]


def test_lateness_is_per_group_and_events_count_where_they_are_not_late():
    out = compute_features(SPEC, EVENTS)
    assert out.groups["strict"] == {("u1", B): {"n": 1.0}, ("u1", B + 10_000): {"n": 1.0},
                                    ("u|x", B + 10_000): {"n": 1.0}}
    assert out.groups["lenient"] == {("u1", B): {"n": 4.0}, ("u1", B + 10_000): {"n": 1.0},
                                     ("u|x", B + 10_000): {"n": 1.0}}
    assert out.groups["pair"] == {("u1|news", B): {"n": 2.0, "items": 1.0}, ("u1|sport", B): {"n": 1.0, "items": 1.0},
                                  ("u1|news", B + 10_000): {"n": 1.0, "items": 1.0},
                                  ("u\\|x|a\\|b", B + 10_000): {"n": 1.0, "items": 1.0}}
    # dead-lettered: every event late for at least one group; accepted: late for none
    assert [e["event_id"] for e in out.late] == ["c", "d", "e", "g"]
    assert out.accepted == 3


def test_late_groups_rule_at_the_boundaries():
    assert late_groups(SPEC, 110_000, 110_001) == ()
    assert late_groups(SPEC, 110_000, 110_000) == ("strict",)
    assert late_groups(SPEC, 110_000, 107_001) == ("strict",)
    assert late_groups(SPEC, 110_000, 107_000) == ("strict", "lenient", "pair")
    assert late_groups(SPEC, None, -5) == ()


def test_streaming_peer_fires_lenient_windows_later_and_agrees_with_the_reference():
    peer = PeerFeatures(SPEC)
    fired = []
    for e in EVENTS:
        peer.add(e)
        fired += peer.fired()
    # wm 110000 reaches strict [100 s, 110 s) (end - 1 <= wm); lenient and pair wait for 113000
    assert {(f.group, f.window_end_ms) for f in fired} == {("strict", B + 10_000)}
    peer.add(ev("z", "u9", 15_000))  # wm 113000
    now = peer.fired()
    assert {(f.group, f.entity_id) for f in now} == {("lenient", "u1"), ("pair", "u1|news"), ("pair", "u1|sport")}
    fired = [*fired, *now, *peer.fired(final=True)]
    ref = compute_features(SPEC, [*EVENTS, ev("z", "u9", 15_000)])
    got = {name: {} for name in ref.groups}
    for f in fired:
        got[f.group][(f.entity_id, f.window_start_ms)] = f.features
    assert got == {name: dict(w) for name, w in ref.groups.items()}


def test_beam_batch_and_test_stream_match_the_reference_with_lateness():
    ref = compute_features(SPEC, EVENTS)
    batch = run_features(SPEC, EVENTS)
    assert batch.groups == ref.groups and batch.accepted == ref.accepted
    assert [e["event_id"] for e in batch.late] == [e["event_id"] for e in ref.late]
    with TestPipeline(options=direct_options(streaming=True)) as p:
        out = p | reference_test_stream(SPEC, EVENTS) | StreamingFeatures(SPEC)
        for name, windows in ref.groups.items():
            assert_that(out[name], equal_to(list(windows.items())), label=name)
        late = out["late"] | beam.Map(lambda d: (d["event"]["event_id"], tuple(d["groups"]), d["reason"]))
        assert_that(late, equal_to([("c", ("strict",), "late"), ("d", ("strict", "lenient", "pair"), "late"),
                                    ("e", ("strict",), "late"), ("g", ("strict",), "late")]), label="late")


def test_generated_traffic_with_tardy_events_exercises_lateness_in_every_engine():
    spec = load_spec()
    cfg = TrafficConfig(seed=4, n_users=300, n_items=200, out_of_order_fraction=0.05, tardy_fraction=0.05)
    events = list(generate_events(4_000, cfg))
    ref = compute_features(spec, events)
    strict_only = [e for e in ref.late if e["ts_ms"] > 0]
    assert len(ref.late) > 20 and strict_only
    lenient = {g.name for g in spec.groups if g.allowed_lateness_ms}
    assert lenient == {"item_tumble_10s", "user_category_tumble_30s"}
    # some late events still count in the lenient groups: fewer late than a 0-lateness spec drops
    raw = copy.deepcopy(RAW)
    for g in raw["groups"]:
        g.pop("allowed_lateness_ms", None)
    strict = compute_features(parse_spec(raw), events)
    assert len(strict.late) == len(ref.late)  # dead-lettered for the strict groups either way
    n_items = sum(v["impressions"] for v in ref.groups["item_tumble_10s"].values())
    assert n_items > sum(v["impressions"] for v in strict.groups["item_tumble_10s"].values())
    assert any(e.get("item_category") is None for e in events) and ref.groups["user_category_tumble_30s"]
    beam_out = run_features(spec, events)
    assert beam_out.groups.keys() == ref.groups.keys()
    for name, windows in ref.groups.items():
        assert list(beam_out.groups[name]) == list(windows), name
        for key, vals in windows.items():
            assert beam_out.groups[name][key] == pytest.approx(vals, rel=1e-9), (name, key)


def test_entity_keys_and_their_sql():
    assert entity_key("user", {"user_id": "u1"}) == "u1"
    assert entity_key("user_category", {"user_id": "u1"}) is None  # a v1 event: no category
    assert entity_key("user_category", {"user_id": "a|b", "item_category": "c"}) != \
        entity_key("user_category", {"user_id": "a", "item_category": "b|c"})
    assert entity_key("user_category", {"user_id": "a\\", "item_category": "|c"}) == "a\\\\|\\|c"
    spec = load_spec()
    sql = group_input_query(spec.group("user_category_tumble_30s"), spec, "src")
    assert "`item_category` IS NOT NULL" in sql and "AS `user_category`" in sql
    strict_sql = group_input_query(spec.group("user_tumble_10s"), spec, "src")
    assert "CURRENT_WATERMARK(ts) + INTERVAL '0 00:00:03.000'" in strict_sql
    assert group_input_query(spec.group("item_tumble_10s"), spec, "src") == "SELECT * FROM src"
    assert source_watermark_ms(spec) == 5_000
    assert "INTERVAL '0 00:00:03.000'" in late_condition(spec)


@pytest.mark.parametrize("mutate,message", [
    (lambda r: r["groups"][0].__setitem__("allowed_lateness_ms", -1), "'user_tumble_10s': allowed_lateness_ms -1"),
    (lambda r: r["groups"][0].__setitem__("allowed_lateness_ms", "3s"), "allowed_lateness_ms '3s'"),
    (lambda r: r["groups"][0].__setitem__("allowed_lateness_ms", 1000), "same allowed_lateness_ms"),
    (lambda r: r["groups"][0].__setitem__("lateness", 1000), "'user_tumble_10s': unknown keys \\['lateness'\\]"),
    (lambda r: r["groups"][4].__setitem__("entity", "category"), "entity 'category'"),
])
def test_invalid_lateness_and_entities_get_clear_errors(mutate, message):
    raw = copy.deepcopy(RAW)
    mutate(raw)
    with pytest.raises(SpecError, match=message):
        parse_spec(raw)


def test_lateness_is_part_of_the_fingerprint_but_zero_is_the_default():
    raw = copy.deepcopy(RAW)
    raw["groups"][2]["allowed_lateness_ms"] = 4_000
    assert parse_spec(raw).version != parse_spec(RAW).version
    raw = copy.deepcopy(RAW)
    raw["groups"][0]["allowed_lateness_ms"] = 0
    raw["groups"][1]["allowed_lateness_ms"] = 0
    assert parse_spec(raw).version == parse_spec(RAW).version


def test_session_group_with_lateness_in_the_peer_and_beam_streaming():
    events = [*EVENTS, ev("s1", "u1", 13_500), ev("s2", "u1", 11_000), ev("s3", "u2", 30_000)]
    ref = compute_features(SESSION_SPEC, events)
    sess = ref.groups["sess"]
    # c, e, g (ts <= 110000 - 1000) are late for sess; s2 (11000, wm 11500) is late for
    # strict only: within sess's 1 s it extends u1's session [12000, ...) back to 11000
    assert sess == {("u1", B + 1_000): {"n": 1.0, "items": 1.0}, ("u1", B + 11_000): {"n": 3.0, "items": 1.0},
                    ("u|x", B + 12_500): {"n": 1.0, "items": 1.0}, ("u2", B + 30_000): {"n": 1.0, "items": 1.0}}
    assert ref.session_ends["sess"][("u1", B + 11_000)] == B + 13_500 + 3_000
    assert [e["event_id"] for e in ref.late] == ["c", "d", "e", "g", "s2"]
    peer = PeerFeatures(SESSION_SPEC)
    fired = []
    for e in events:
        peer.add(e)
        fired += peer.fired()
    fired += peer.fired(final=True)
    assert {(f.entity_id, f.window_start_ms): f.features for f in fired if f.group == "sess"} == sess
    with TestPipeline(options=direct_options(streaming=True)) as p:
        out = p | reference_test_stream(SESSION_SPEC, events) | StreamingFeatures(SESSION_SPEC)
        for name, windows in ref.groups.items():
            assert_that(out[name], equal_to(list(windows.items())), label=name)
