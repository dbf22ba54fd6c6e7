import copy

import pytest
import yaml

from transforms.spec import DEFAULT_SPEC_PATH, SpecError, load_spec, parse_spec

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
