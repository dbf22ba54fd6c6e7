"""``streamscore models``: list, show, register, promote, rollback through ``main``."""

import json
from dataclasses import replace

import pytest

from jobs import cli, models_cli
from tests.unit.test_promotion import SPEC, make_registry, onnx_bytes
from transforms.promotion import PromotionGates, promote
from transforms.registry import Registry, read_audit, sha256_file


@pytest.fixture
def registry(tmp_path):
    """good:v1 active, good:v2 fallback, bad:v1 candidate, old:v1 retired on another feature set."""
    path = make_registry(tmp_path, [("good:v1", "good"), ("good:v2", "good"), ("bad:v1", "bad"), ("old:v1", "good")])
    reg = Registry(path)
    promote(reg, "good:v2", SPEC.version, PromotionGates())
    promote(reg, "good:v1", SPEC.version, PromotionGates())
    reg.entries = [replace(m, stage="retired", feature_set_version="0123456789abcdef") if m.name == "old" else m
                   for m in reg.entries]
    reg.save()
    return path


def run(capsys, *argv):
    rc = models_cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def stages(path):
    return {m.ref: m.stage for m in Registry(path).entries}


def test_list_shows_stages_metrics_latency_and_spec_match(registry, capsys):
    rc, out, _ = run(capsys, "--registry", str(registry), "list")
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split() == ["ref", "kind", "stage", "auc", "logloss", "p99_ms", "feature_set", "spec"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["good:v1"][2] == "active" and rows["good:v1"][-1] == "match"
    assert rows["old:v1"][-1] == "mismatch" and rows["old:v1"][-2] == "0123456789abcdef"
    good = Registry(registry).get("good:v1")
    assert rows["good:v1"][3:6] == [f"{good.metrics['auc']:.4f}", f"{good.metrics['logloss']:.4f}",
                                    f"{good.latency['p99_ms']:.2f}"]


def test_list_defaults_to_the_registry_of_the_environment(registry, capsys, monkeypatch):
    monkeypatch.setenv("STREAMSCORE_REGISTRY", str(registry))
    rc, out, _ = run(capsys, "list")
    assert rc == 0 and "bad:v1" in out


def test_show_prints_entry_and_its_audit(registry, capsys):
    rc, out, _ = run(capsys, "--registry", str(registry), "show", "good:v2")
    assert rc == 0
    shown = json.loads(out)
    assert shown["entry"] == Registry(registry).get("good:v2").to_json()
    assert [(r["from"], r["to"]) for r in shown["audit"]] == [("", "candidate"), ("candidate", "active"),
                                                              ("active", "fallback")]
    assert {r["model"] for r in shown["audit"]} == {"good:v2"}


@pytest.mark.parametrize("argv, match", [
    (["show", "nope"], "no model nope"),
    (["promote", "nope:v9"], "no model nope:v9"),
    (["promote", "good:v1"], "already the active"),
    (["promote", "bad:v1", "--latency-budget-ms", "0"], "latency_budget_ms"),
])
def test_errors_are_one_line_and_exit_2(registry, capsys, argv, match):
    rc, _, err = run(capsys, "--registry", str(registry), *argv)
    assert rc == 2 and match in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_unreadable_registry_exits_2(tmp_path, capsys):
    bad = tmp_path / "registry.json"
    bad.write_text("{not json")
    rc, _, err = run(capsys, "--registry", str(bad), "list")
    assert rc == 2 and "cannot read registry" in err and len(err.strip().splitlines()) == 1


def test_promote_refused_prints_each_reason_and_changes_nothing(registry, capsys):
    before, audit = stages(registry), read_audit(registry)
    rc, out, err = run(capsys, "--registry", str(registry), "promote", "bad:v1")
    assert rc == 1 and out == ""
    assert "refused" in err and "- AUC" in err and "- logloss" in err
    assert stages(registry) == before and read_audit(registry) == audit


def test_force_promotes_says_so_and_is_audited(registry, capsys):
    rc, out, err = run(capsys, "--registry", str(registry), "promote", "bad:v1", "--force", "--reason", "drill")
    assert rc == 0
    assert err.count("--force overrode") == 2
    assert out.splitlines() == ["good:v1: active -> fallback", "good:v2: fallback -> retired",
                                "bad:v1: candidate -> active"]
    assert stages(registry)["bad:v1"] == "active"
    last = read_audit(registry)[-1]
    assert last["model"] == "bad:v1" and last["forced"] is True and len(last["overridden"]) == 2
    assert last["reason"] == "drill"


def test_promote_with_relaxed_gates_passes(registry, capsys):
    rc, _, err = run(capsys, "--registry", str(registry), "promote", "bad:v1", "--auc-margin", "1",
                     "--logloss-margin", "1")
    assert rc == 0 and "overrode" not in err and stages(registry)["bad:v1"] == "active"


def test_rollback_saves_prints_and_is_reversible(registry, capsys):
    rc, out, _ = run(capsys, "--registry", str(registry), "rollback", "--reason", "alert")
    assert rc == 0
    assert "good:v1: active -> candidate" in out and "good:v2: fallback -> active" in out
    after = stages(registry)
    assert after["good:v1"] == "candidate" and after["good:v2"] == "active" and after["old:v1"] == "retired"
    assert read_audit(registry)[-1]["reason"] == "alert"
    rc, _, err = run(capsys, "--registry", str(registry), "rollback")
    assert rc == 2 and "no fallback" in err
    rc, _, _ = run(capsys, "--registry", str(registry), "promote", "good:v1")
    assert rc == 0 and stages(registry)["good:v1"] == "active" and stages(registry)["good:v2"] == "fallback"


def test_register_evaluates_on_generated_data_as_a_candidate(registry, tmp_path, capsys):
    onnx = tmp_path / "new.onnx"
    onnx.write_bytes(onnx_bytes()["good"])
    rc, out, _ = run(capsys, "--registry", str(registry), "register", "--onnx", str(onnx), "--name", "new",
                     "--version", "r1", "--events", "20000", "--training-fingerprint", "fp9")
    assert rc == 0
    shown = json.loads(out)
    entry = Registry(registry).get("new:r1")
    assert (shown["name"], shown["version"], shown["sha256"], shown["path"]) == ("new", "r1", entry.sha256,
                                                                                "artifacts/new-r1.onnx")
    assert (entry.stage, entry.kind, entry.training_data_fingerprint) == ("candidate", "onnx", "fp9")
    assert entry.feature_set_version == SPEC.version and entry.metrics["rows"] > 0
    assert entry.latency["p99_ms"] > 0
    assert sha256_file(registry.parent / "artifacts" / "new-r1.onnx") == entry.sha256 == sha256_file(onnx)


def test_models_is_a_streamscore_command(capsys):
    assert "models" in cli.COMMANDS
    with pytest.raises(SystemExit) as info:
        cli.main(["models", "promote", "--help"])
    assert info.value.code == 0 and "--latency-budget-ms" in capsys.readouterr().out
