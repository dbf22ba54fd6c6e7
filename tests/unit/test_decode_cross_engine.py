"""One decode rule in every engine: the Flink job's JVM decoder and the Python decoder
(used by the Beam pipelines, the backfill and the plain-Python peer) give the same
verdict, reason and (for undecodable records) detail on one shared malformed corpus, and
the same values for the good records in it."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from tests.unit.decode_corpus import LIMITS, build_corpus, run_jvm
from transforms.codecs import header_schema_version, latest_version, try_decode_event

CORPUS = build_corpus()


@pytest.fixture(scope="module")
def jvm_results():
    return run_jvm(CORPUS)


def _python(case, reader_version):
    version = header_schema_version(None if case.header is None else [("schema-version", case.header)])
    return try_decode_event(case.value, LIMITS, version=version, reader_version=reader_version)


def _same_value(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    return a == b


def test_jvm_and_python_agree_on_every_record(jvm_results):
    newest = latest_version("event")
    mismatches = []
    verdicts: Counter[tuple[str, str]] = Counter()
    for case, jvm in zip(CORPUS, jvm_results, strict=True):
        event, reason, detail = _python(case, newest)
        alone = _python(case, None)  # the peer reads with the writer schema alone
        verdicts[case.kind, reason or "ok"] += 1
        if alone[1] != reason:
            mismatches.append((case, "writer-alone", alone[1], reason))
        if event is None:
            if jvm.get("reason") != reason:
                mismatches.append((case, "reason", jvm, reason, detail))
            elif reason == "undecodable" and jvm["detail"] != detail:
                mismatches.append((case, "detail", jvm["detail"], detail))
        else:
            got = jvm.get("event")
            if got is None or set(got) != set(event) or not all(_same_value(got[k], event[k]) for k in event):
                mismatches.append((case, "values", jvm, event))
    print("\ncross-engine corpus: kind / verdict / count")
    for (kind, verdict), n in sorted(verdicts.items()):
        print(f"  {kind:28s} {verdict:24s} {n}")
    assert not mismatches, f"{len(mismatches)} disagreements, first: {mismatches[:5]}"


def test_corpus_covers_every_required_family():
    kinds = Counter(c.kind for c in CORPUS)
    for family in ("invalid_utf8/lone_continuation", "invalid_utf8/overlong", "invalid_utf8/cesu8_surrogate",
                   "invalid_utf8/cut_sequence", "invalid_utf8/beyond_u10ffff", "enum_index_out_of_range",
                   "union_index_out_of_range", "overlong_varint", "negative_length", "cut_mid_field",
                   "valid_unusual", "random_mutation"):
        assert kinds[family] > 0, family


@pytest.mark.parametrize("family", ["invalid_utf8/lone_continuation", "invalid_utf8/overlong",
                                    "invalid_utf8/cesu8_surrogate", "invalid_utf8/cut_sequence",
                                    "invalid_utf8/beyond_u10ffff"])
def test_invalid_utf8_is_undecodable_and_names_the_field(family, jvm_results):
    results = [j for c, j in zip(CORPUS, jvm_results, strict=True) if c.kind == family]
    fields = set()
    for jvm in results:
        assert jvm["reason"] == "undecodable"
        field, _, problem = jvm["detail"].partition(": ")
        assert problem == "invalid UTF-8", jvm
        fields.add(field)
    assert fields == {"event_id", "user_id", "item_id", "device", "region", "item_category"}


def test_good_and_bad_both_present(jvm_results):
    """The corpus is not all rejects: the unusual-but-valid records decode in both."""
    valid = [j for c, j in zip(CORPUS, jvm_results, strict=True) if c.kind == "valid_unusual"]
    assert valid and all("event" in j for j in valid)
    assert any(j["event"]["user_id"] == "é字🙂" for j in valid)
