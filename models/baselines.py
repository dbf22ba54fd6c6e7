"""Hand-built ONNX models with the registry's input/output contract (``features``
float32 [n, f] -> ``probabilities`` float32 [n, 2]): the ``prior`` baseline, which
predicts the training base rate for everyone (the incumbent a ranking model must beat),
and the fault models the tests use (NaN output, slow, wrong signature).

>>> import onnxruntime as ort, numpy as np
>>> s = ort.InferenceSession(constant_model(3, 0.25))
>>> s.run(None, {"features": np.zeros((2, 3), np.float32)})[0][:, 1].tolist()
[0.25, 0.25]
"""

from __future__ import annotations

import numpy as np


def _graph(n_features: int, nodes: list, inits: list, width: int | None = None) -> bytes:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, width or n_features])
    y = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2])
    graph = helper.make_graph(nodes, "streamscore_baseline", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def _const(name: str, value: np.ndarray) -> object:
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def _probs_from_p1(p1_name: str) -> list:
    """Nodes turning a [n, 1] P(click) tensor into [n, 2] probabilities."""
    from onnx import helper

    return [helper.make_node("Sub", ["one", p1_name], ["p0"]),
            helper.make_node("Concat", ["p0", p1_name], ["probabilities"], axis=1)]


def constant_model(n_features: int, p: float) -> bytes:
    """P(click) = ``p`` for every row (``0 * x`` keeps the batch dimension)."""
    from onnx import helper

    nodes = [helper.make_node("MatMul", ["features", "zeros"], ["z"]),
             helper.make_node("Add", ["z", "p"], ["p1"]), *_probs_from_p1("p1")]
    inits = [_const("zeros", np.zeros((n_features, 1))), _const("p", [p]), _const("one", [1.0])]
    return _graph(n_features, nodes, inits)


def nan_model(n_features: int) -> bytes:
    """Valid shape, NaN scores (a model whose weights blew up)."""
    from onnx import helper

    nodes = [helper.make_node("MatMul", ["features", "zeros"], ["z"]),
             helper.make_node("Add", ["z", "nan"], ["p1"]), *_probs_from_p1("p1")]
    inits = [_const("zeros", np.zeros((n_features, 1))), _const("nan", [np.nan]), _const("one", [1.0])]
    return _graph(n_features, nodes, inits)


def slow_model(n_features: int, p: float = 0.3, size: int = 1024, layers: int = 12) -> bytes:
    """Scores ``p`` after ``layers`` [size x size] matrix products that depend on the
    input (so nothing is constant-folded): a fixed cost per batch, whatever its rows."""
    from onnx import helper

    nodes = [helper.make_node("ReduceSum", ["features"], ["s"], keepdims=1),  # [1, 1]
             helper.make_node("Mul", ["s", "ones"], ["h0"])]  # [size, size]
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [f"h{i}", "w"], [f"h{i + 1}"]))
    nodes += [helper.make_node("ReduceSum", [f"h{layers}"], ["t"], keepdims=1),
              helper.make_node("Mul", ["t", "zero"], ["t0"]),
              helper.make_node("MatMul", ["features", "zeros"], ["z"]),
              helper.make_node("Add", ["z", "t0"], ["z1"]),
              helper.make_node("Add", ["z1", "p"], ["p1"]), *_probs_from_p1("p1")]
    rng = np.random.default_rng(0)
    inits = [_const("ones", np.ones((size, size))), _const("w", rng.normal(0, 1e-3, (size, size))),
             _const("zero", [0.0]), _const("zeros", np.zeros((n_features, 1))), _const("p", [p]),
             _const("one", [1.0])]
    return _graph(n_features, nodes, inits)


def wrong_width_model(n_features: int) -> bytes:
    """A constant model that takes ``n_features + 3`` inputs (a wrong signature)."""
    from onnx import helper

    w = n_features + 3
    nodes = [helper.make_node("MatMul", ["features", "zeros"], ["z"]),
             helper.make_node("Add", ["z", "p"], ["p1"]), *_probs_from_p1("p1")]
    inits = [_const("zeros", np.zeros((w, 1))), _const("p", [0.3]), _const("one", [1.0])]
    return _graph(n_features, nodes, inits, width=w)
