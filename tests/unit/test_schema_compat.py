"""Schema evolution: every event.vN in schemas/ is readable by the newest, incompatible
changes are refused, and the job refuses to start on an unreadable schema folder."""

import copy
import json
import shutil
import zipfile
from pathlib import Path

import pytest

from jobs.flink_job import JobSetupError, check_event_schemas, check_udf_jar_schemas
from transforms.codecs import SCHEMA_DIR, latest_version, schema_versions
from transforms.schema_compat import check_compatibility, incompatible_writers, load

V1 = load(SCHEMA_DIR / "event.v1.avsc")


def _fields(schema):
    return {f["name"]: f for f in schema["fields"]}


def _with(schema, **changes):
    """A copy of ``schema`` with fields replaced (dict), added (dict under a new name) or removed (None)."""
    out = copy.deepcopy(schema)
    fields = _fields(out)
    for name, field in changes.items():
        if field is None:
            fields.pop(name)
        else:
            fields[name] = field
    out["fields"] = list(fields.values())
    return out


def test_every_event_schema_is_read_by_the_newest():
    versions = schema_versions("event")
    assert versions[0] == 1 and len(versions) >= 2 and versions == tuple(range(1, len(versions) + 1))
    reader = load(SCHEMA_DIR / f"event.v{latest_version('event')}.avsc")
    for v in versions:
        assert check_compatibility(reader, load(SCHEMA_DIR / f"event.v{v}.avsc")) == [], v
    assert incompatible_writers(SCHEMA_DIR) == {}
    assert check_event_schemas() == versions


def test_v2_adds_one_optional_field_and_aliases_the_v1_names():
    v2 = load(SCHEMA_DIR / "event.v2.avsc")
    new = set(_fields(v2)) - set(_fields(V1))
    assert new == {"item_category"}
    assert _fields(v2)["item_category"]["type"] == ["null", "string"] and _fields(v2)["item_category"]["default"] is None
    assert "io.streamscore.v1.InteractionEvent" in v2["aliases"]
    # without the aliases the renamed namespace is a name mismatch
    bare = copy.deepcopy(v2)
    del bare["aliases"]
    assert any("does not match" in p for p in check_compatibility(bare, V1))
    no_enum_alias = copy.deepcopy(v2)
    del _fields(no_enum_alias)["event_type"]["type"]["aliases"]
    assert any("EventType" in p for p in check_compatibility(no_enum_alias, V1))


LEGAL = {
    "optional field with default": _with(V1, item_category={"name": "item_category", "type": ["null", "string"],
                                                            "default": None}),
    "removed field (writer's is skipped)": _with(V1, region=None),
    "long -> double promotion": _with(V1, ts_ms={"name": "ts_ms", "type": "double"}),
    "renamed field with alias": _with(V1, device=None, platform={"name": "platform", "type": "string",
                                                                 "aliases": ["device"]}),
    "enum grows a symbol": _with(V1, event_type={"name": "event_type", "type": {
        "type": "enum", "name": "EventType", "symbols": ["impression", "click", "dwell", "share"]}}),
    "string widened to a union": _with(V1, region={"name": "region", "type": ["null", "string"]}),
}

ILLEGAL = {
    "new field without default": (_with(V1, item_category={"name": "item_category", "type": "string"}),
                                  "no default"),
    "double narrowed to long": (_with(V1, dwell_ms={"name": "dwell_ms", "type": "long"}), "cannot be read as long"),
    "string to long": (_with(V1, device={"name": "device", "type": "long"}), "cannot be read as long"),
    "removed enum symbol the writer uses": (_with(V1, event_type={"name": "event_type", "type": {
        "type": "enum", "name": "EventType", "symbols": ["impression", "click"]}}), "['dwell']"),
    "renamed field without alias": (_with(V1, device=None, platform={"name": "platform", "type": "string"}),
                                    "'platform'"),
    "record name mismatch": ({**V1, "name": "Interaction"}, "does not match"),
    "enum name mismatch": (_with(V1, event_type={"name": "event_type", "type": {
        "type": "enum", "name": "Kind", "symbols": ["impression", "click", "dwell"]}}), "does not match"),
    "union narrowed to its non-null branch": (None, "writer branch 0]: writer type null cannot be read as string"),
}


@pytest.mark.parametrize("case", sorted(LEGAL))
def test_legal_evolutions_are_accepted(case):
    assert check_compatibility(LEGAL[case], V1) == []


@pytest.mark.parametrize("case", sorted(ILLEGAL))
def test_incompatible_changes_are_refused(case):
    reader, needle = ILLEGAL[case]
    writer = V1
    if reader is None:  # writer may write null, reader only takes strings
        writer = _with(V1, region={"name": "region", "type": ["null", "string"]})
        reader = V1
    problems = check_compatibility(reader, writer)
    assert problems and any(needle in p for p in problems), problems


def test_enum_default_admits_unknown_symbols_and_fixed_sizes_must_agree():
    shrunk = {"type": "enum", "name": "EventType", "symbols": ["impression", "click"]}
    reader = _with(V1, event_type={"name": "event_type", "type": {**shrunk, "default": "click"}})
    assert check_compatibility(reader, V1) == []
    fixed = {"type": "record", "name": "R", "fields": [{"name": "h", "type": {"type": "fixed", "name": "H", "size": 16}}]}
    wider = copy.deepcopy(fixed)
    wider["fields"][0]["type"]["size"] = 32
    assert check_compatibility(fixed, fixed) == []
    assert any("size 32" in p for p in check_compatibility(fixed, wider))


def test_nested_and_recursive_named_types_resolve():
    node = {"type": "record", "name": "Node", "namespace": "t", "fields": [
        {"name": "v", "type": "int"}, {"name": "next", "type": ["null", "Node"], "default": None},
        {"name": "tags", "type": {"type": "map", "values": {"type": "array", "items": "string"}}}]}
    longer = copy.deepcopy(node)
    longer["fields"][0]["type"] = "long"
    assert check_compatibility(longer, node) == []
    assert check_compatibility(node, longer) == ["Node.v: writer type long cannot be read as int"]
    bytes_tags = copy.deepcopy(node)
    bytes_tags["fields"][2]["type"]["values"]["items"] = "int"
    assert check_compatibility(bytes_tags, node) == ["Node.tags[][]: writer type string cannot be read as int"]


def test_malformed_schema_is_a_problem_not_a_crash():
    reader = {**V1, "fields": [{"name": "event_id", "type": "Missing"}]}
    assert check_compatibility(reader, V1) == ["malformed schema: ValueError: unknown type name 'Missing'"]


def _folder(tmp_path: Path, extra: dict | None) -> Path:
    folder = tmp_path / "schemas"
    folder.mkdir()
    for v in schema_versions("event"):
        shutil.copy(SCHEMA_DIR / f"event.v{v}.avsc", folder)
    if extra is not None:
        (folder / f"event.v{max(schema_versions('event')) + 1}.avsc").write_text(json.dumps(extra))
    return folder


def test_job_refuses_a_schema_folder_its_reader_cannot_read(tmp_path):
    # a newest schema that adds a required field: it cannot read the older writers
    newest = copy.deepcopy(load(SCHEMA_DIR / f"event.v{latest_version('event')}.avsc"))
    newest["fields"].append({"name": "campaign", "type": "string"})
    folder = _folder(tmp_path, newest)
    with pytest.raises(JobSetupError) as exc:
        check_event_schemas(folder)
    msg = str(exc.value)
    assert "cannot read every event schema" in msg and "event.v1.avsc" in msg and "campaign" in msg
    assert set(incompatible_writers(folder)) == set(schema_versions("event"))
    with pytest.raises(JobSetupError, match="no schema event"):
        check_event_schemas(tmp_path)


def test_build_refuses_before_starting_flink(tmp_path, monkeypatch):
    import jobs.flink_job as fj
    from jobs.config import JobConfig

    bad = _with(V1, ts_ms={"name": "ts_ms", "type": "int"})  # long narrowed to int
    monkeypatch.setattr(fj, "SCHEMA_DIR", _folder(tmp_path, bad))
    with pytest.raises(JobSetupError, match=r"ts_ms: writer type long cannot be read as int"):
        fj.build(JobConfig())


def test_stale_udf_jar_is_refused(tmp_path):
    versions = schema_versions("event")
    jar = tmp_path / "udfs.jar"
    with zipfile.ZipFile(jar, "w") as zf:
        for v in versions:
            zf.writestr(f"schemas/event.v{v}.avsc", (SCHEMA_DIR / f"event.v{v}.avsc").read_bytes())
    check_udf_jar_schemas(jar, versions)
    with zipfile.ZipFile(jar, "w") as zf:
        zf.writestr("schemas/event.v1.avsc", (SCHEMA_DIR / "event.v1.avsc").read_bytes())
    with pytest.raises(JobSetupError, match=r"event.v2.avsc: run `make jars`"):
        check_udf_jar_schemas(jar, versions)


def test_schemas_check_command(tmp_path, capsys):
    from jobs import cli, schemas_cli

    assert cli.COMMANDS["schemas"][0] == "jobs.schemas_cli"
    assert schemas_cli.main(["check"]) == 0
    assert "event.v1.avsc -> read by v2: ok" in capsys.readouterr().out
    newest = copy.deepcopy(load(SCHEMA_DIR / f"event.v{latest_version('event')}.avsc"))
    newest["fields"].append({"name": "campaign", "type": "string"})
    assert schemas_cli.main(["check", "--dir", str(_folder(tmp_path, newest))]) == 1
    out = capsys.readouterr().out
    assert "event.v1.avsc -> read by v3: INCOMPATIBLE" in out and "campaign" in out
    assert schemas_cli.main(["check", "--dir", str(tmp_path / "nowhere")]) == 2
    with pytest.raises(SystemExit) as exc:
        schemas_cli.main(["check", "--help"])
    assert exc.value.code == 0
