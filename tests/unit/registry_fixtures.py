"""Shared builders of small real registries for the unit tests: hand-made ONNX models and
registry entries with their sha256."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from transforms.registry import sha256_file

N_FEATURES = 6
FS = "fs1"


def const_onnx(bias: list[float], n_features: int = N_FEATURES) -> bytes:
    """``probabilities`` [n, 2] = ``bias`` for every row (x @ 0 + bias)."""
    x = helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, n_features])
    y = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2])
    w = numpy_helper.from_array(np.zeros((n_features, 2), np.float32), "W")
    b = numpy_helper.from_array(np.array(bias, np.float32), "B")
    graph = helper.make_graph([helper.make_node("MatMul", ["features", "W"], ["mm"]),
                               helper.make_node("Add", ["mm", "B"], ["probabilities"])],
                              "const", [x], [y], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)], ir_version=8)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def entry_json(root: Path, name: str, version: str, kind: str, data: bytes, stage: str = "candidate",
               fs: str = FS) -> dict:
    """Write ``data`` as ``artifacts/<name>-<version>.onnx`` under ``root``; its registry entry."""
    rel = f"artifacts/{name}-{version}.onnx"
    (root / rel).write_bytes(data)
    return {"name": name, "version": version, "kind": kind, "path": rel, "sha256": sha256_file(root / rel),
            "feature_names": [f"f{i}" for i in range(N_FEATURES)], "feature_set_version": fs,
            "training_data_fingerprint": "d1", "metrics": {}, "stage": stage}
