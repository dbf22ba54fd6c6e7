import copy
import json

import pytest
import yaml

from transforms.spec import DEFAULT_SPEC_PATH, SpecError, canonical, load_spec, parse_spec

RAW = yaml.safe_load(DEFAULT_SPEC_PATH.read_text())


def test_default_spec_loads_with_model_features_in_order():
    spec = load_spec()
    names = spec.model_feature_names
    assert names[0] == "user_tumble_10s.impressions"
    assert len(names) == sum(len(spec.group(g).features) for g in spec.scoring_groups)


def test_fingerprint_ignores_key_and_group_order():
    raw = copy.deepcopy(RAW)
    raw["groups"] = list(reversed(raw["groups"]))
    raw["groups"][0] = dict(reversed(list(raw["groups"][0].items())))
    raw["groups"][0]["features"] = [dict(reversed(list(f.items()))) for f in raw["groups"][0]["features"]]
    assert parse_spec(raw).version == parse_spec(RAW).version


@pytest.mark.parametrize("mutate", [
    lambda r: r["groups"][2]["window"].__setitem__("size_ms", 20000),
    lambda r: r["groups"][1]["features"][0].__setitem__("event_type", "click"),
    lambda r: r["groups"][2]["features"][3].__setitem__("agg", "max"),
    lambda r: r.__setitem__("watermark_delay_ms", 3000),
])
def test_fingerprint_changes_with_definition(mutate):
    raw = copy.deepcopy(RAW)
    mutate(raw)
    assert parse_spec(raw).version != parse_spec(RAW).version


@pytest.mark.parametrize("mutate,message", [
    (lambda r: r["groups"][0]["window"].__setitem__("kind", "sliding"), "window kind"),
    (lambda r: r["groups"][1]["window"].__setitem__("slide_ms", 7000), "multiple"),
    (lambda r: r["groups"][0]["features"][0].__setitem__("agg", "median"), "agg"),
    (lambda r: r["groups"][0]["features"][2].__setitem__("numerator", "nope"), "ratio"),
    (lambda r: r["groups"][0]["features"][3].__setitem__("field", "user_id"), "numeric field"),
    (lambda r: r["groups"][0].__setitem__("entity", "session"), "entity"),
    (lambda r: r["scoring"].__setitem__("groups", ["user_tumble_10s", "item_tumble_10s"]), "keyed by"),
    (lambda r: r["groups"][0]["features"].append({"name": "clicks", "agg": "count"}), "duplicate"),
    (lambda r: r["groups"][0]["features"][0].__setitem__("colour", "red"), "unknown keys"),
])
def test_invalid_specs_get_clear_errors(mutate, message):
    raw = copy.deepcopy(RAW)
    mutate(raw)
    with pytest.raises(SpecError, match=message):
        parse_spec(raw)


# --- session windows ---------------------------------------------------------------

SESSION = {"name": "user_session_30s", "entity": "user", "window": {"kind": "session", "gap_ms": 30000},
           "features": [{"name": "impressions", "agg": "count", "event_type": "impression"},
                        {"name": "clicks", "agg": "count", "event_type": "click"},
                        {"name": "ctr", "agg": "ratio", "numerator": "clicks", "denominator": "impressions"}]}


# the default spec without its session groups: the baseline these tests add one to
NO_SESSION = {**RAW, "groups": [g for g in RAW["groups"] if g["window"]["kind"] != "session"]}


def _with_session(**window):
    raw = copy.deepcopy(NO_SESSION)
    group = copy.deepcopy(SESSION)
    group["window"].update(window)
    group["window"] = {k: v for k, v in group["window"].items() if v is not None}
    raw["groups"].append(group)
    return raw


def test_session_group_parses_and_is_versioned():
    spec = parse_spec(_with_session())
    w = spec.group("user_session_30s").window
    assert (w.kind, w.gap_ms, w.aligned) == ("session", 30000, False)
    assert spec.version != parse_spec(NO_SESSION).version
    assert parse_spec(_with_session(gap_ms=60000)).version != spec.version
    assert parse_spec(_with_session()).version == spec.version
    assert '"gap_ms"' in canonical(spec) and '"gap_ms"' not in canonical(parse_spec(NO_SESSION))


def test_tumbling_and_hopping_fingerprints_are_unchanged():
    """Adding gap_ms to Window must not re-version existing specs (the model registry
    records their version): their canonical windows keep exactly the old keys."""
    body = json.loads(canonical(parse_spec(NO_SESSION)))
    assert [sorted(g["window"]) for g in body["groups"]] == [["kind", "size_ms", "slide_ms"]] * len(body["groups"])


@pytest.mark.parametrize("window,message", [
    ({"gap_ms": None}, "gap_ms None must be a positive multiple of 1000"),
    ({"gap_ms": 1500}, "gap_ms 1500 must be a positive multiple of 1000"),
    ({"gap_ms": -30000}, "positive multiple"),
    ({"gap_ms": 0}, "positive multiple"),
    ({"size_ms": 30000}, "takes only gap_ms"),
    ({"slide_ms": 10000}, "takes only gap_ms"),
    ({"gap_ms": "soon"}, "bad window"),
])
def test_invalid_session_windows_name_the_group(window, message):
    with pytest.raises(SpecError, match=message) as exc:
        parse_spec(_with_session(**window))
    assert "'user_session_30s'" in str(exc.value)


def test_gap_ms_on_tumbling_window_is_rejected():
    raw = copy.deepcopy(RAW)
    raw["groups"][0]["window"]["gap_ms"] = 30000
    with pytest.raises(SpecError, match="'user_tumble_10s': tumbling window takes no gap_ms"):
        parse_spec(raw)


def test_session_group_cannot_be_scored():
    raw = _with_session()
    raw["scoring"]["groups"] = ["user_tumble_10s", "user_session_30s"]
    with pytest.raises(SpecError, match="scoring group 'user_session_30s' has session windows"):
        parse_spec(raw)


def test_session_group_rejects_last():
    raw = _with_session()
    raw["groups"][-1]["features"].append({"name": "dwell_last", "agg": "last", "field": "dwell_ms"})
    with pytest.raises(SpecError, match="group 'user_session_30s' feature 'dwell_last': agg last"):
        parse_spec(raw)
