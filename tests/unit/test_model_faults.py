"""Model faults never cause an outage: an active model whose artifact is corrupted,
deleted, truncated (sha256 updated, so only ONNX parsing can catch it) or has the wrong
input signature is refused at load; the service raises an alert, serves the known-good
fallback with the reason on every score, and keeps serving batch after batch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.baselines import wrong_width_model
from tests.unit.registry_fixtures import FS, N_FEATURES, const_onnx, entry_json
from transforms.registry import sha256_file
from transforms.serving import ListPublisher, ScoringService, ServingConfig


def _corrupt(path: Path, entry: dict) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def _delete(path: Path, entry: dict) -> None:
    path.unlink()


def _truncate(path: Path, entry: dict) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3])
    entry["sha256"] = sha256_file(path)  # the registry agrees: only loading the ONNX graph can tell


def _wrong_width(path: Path, entry: dict) -> None:
    path.write_bytes(wrong_width_model(N_FEATURES))
    entry["sha256"] = sha256_file(path)


FAULTS = {"corrupted": _corrupt, "deleted": _delete, "truncated": _truncate, "wrong_signature": _wrong_width}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_faulty_active_model_falls_back_with_an_alert_and_serving_continues(tmp_path, fault):
    (tmp_path / "artifacts").mkdir()
    active = entry_json(tmp_path, "active", "a1", "onnx", const_onnx([0.2, 0.8]), stage="active")
    known_good = entry_json(tmp_path, "good", "g1", "onnx", const_onnx([0.7, 0.3]), stage="fallback")
    FAULTS[fault](tmp_path / active["path"], active)
    reg = tmp_path / "registry.json"
    reg.write_text(json.dumps({"models": [active, known_good]}))

    svc = ScoringService(ServingConfig(str(reg), "", "", FS), ListPublisher(), clock=lambda: 100.0)
    alerts = [a for a in svc.publisher.alerts if a["model_version"] == "active:a1"]
    assert alerts and alerts[0]["kind"] == "model_load_error" and alerts[0]["message"]
    x = np.random.default_rng(0).normal(size=(50, N_FEATURES)).astype(np.float32)
    for step in range(3):  # service continues, batch after batch
        out = svc.score([f"u{i}" for i in range(50)], [10_000 * (step + 1)] * 50, x)
        np.testing.assert_allclose(out.scores, 0.3, rtol=1e-6)  # the known-good model's P(click)
        assert set(out.model_name) == {"good"}
        assert all(r.startswith("load_error") for r in out.fallback_reason), set(out.fallback_reason)
