"""Tiny real ONNX models built with onnx.helper (nothing downloaded), and registry folders."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def linear_model_bytes(n_features: int, weights: Sequence[float] | None = None,
                       bias: float = -2.0, input_name: str = "features") -> bytes:
    """p = sigmoid(x·w + b); output "probabilities" is [N, 2] = [1 - p, p]."""
    w = np.asarray(weights if weights is not None else [0.01] * n_features,
                   dtype=np.float32).reshape(n_features, 1)
    nodes = [
        helper.make_node("MatMul", [input_name, "w"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["p"]),
        helper.make_node("Sub", ["one", "p"], ["q"]),
        helper.make_node("Concat", ["q", "p"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "linear",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2])],
        initializer=[numpy_helper.from_array(w, "w"),
                     numpy_helper.from_array(np.array([bias], dtype=np.float32), "b"),
                     numpy_helper.from_array(np.array([1.0], dtype=np.float32), "one")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def write_model(root: Path, name: str, version: str, features: Sequence[str],
                blob: bytes | None = None, feature_set: str = "fraud:v1",
                sha256: str | None = None, thresholds: tuple[float, float] = (0.5, 0.9)) -> Path:
    """A registry folder root/name/version with model.onnx and a matching model.json."""
    folder = root / name / version
    folder.mkdir(parents=True, exist_ok=True)
    blob = blob if blob is not None else linear_model_bytes(len(features))
    (folder / "model.onnx").write_bytes(blob)
    manifest = {
        "name": name, "version": version, "feature_set": feature_set,
        "features": list(features),
        "input": {"name": "features", "dtype": "float32", "shape": [None, len(features)]},
        "output": {"name": "probabilities", "index": 1},
        "thresholds": {"review_at": thresholds[0], "decline_at": thresholds[1]},
        "sha256": sha256 or hashlib.sha256(blob).hexdigest(),
    }
    (folder / "model.json").write_text(json.dumps(manifest))
    return folder
