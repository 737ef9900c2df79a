from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import topologies
from engine.errors import ModelError
from engine.scoring.registry import ModelRegistry, load_model
from tests.unit.onnx_factory import linear_model_bytes, write_model

TOPO = topologies.get("fraud")
NAMES = TOPO.features.names
FS = TOPO.features.versioned_name


def _registry(root: Path) -> ModelRegistry:
    return ModelRegistry(root, NAMES, FS)


def test_valid_model_loads_and_scores_in_input_order(tmp_path):
    folder = write_model(tmp_path, "primary", "1", NAMES, linear_model_bytes(12, [0.1] * 12))
    model = load_model(folder, NAMES, FS)
    rows = np.array([[0] * 12, [10] * 12], dtype=np.float32)
    scores = model.score_many(rows)
    assert scores.shape == (2,)
    assert scores[0] < scores[1]
    assert model.ref == "primary:1"


@pytest.mark.parametrize("breakage, message", [
    ("random_bytes", "checksum mismatch"),
    ("random_bytes_matching_sum", "not a loadable ONNX model"),
    ("other_inputs", "input shape"),
    ("other_input_name", "inputs are"),
    ("other_features", "expects features"),
    ("other_feature_set", "trained for feature set"),
    ("no_file", "model.onnx is missing"),
    ("no_manifest", "model.json is missing"),
])
def test_bad_models_are_rejected_with_a_clear_reason(tmp_path, breakage, message):
    folder = write_model(tmp_path, "primary", "1", NAMES)
    junk = os.urandom(4096)
    if breakage == "random_bytes":
        (folder / "model.onnx").write_bytes(junk)
    elif breakage == "random_bytes_matching_sum":
        folder = write_model(tmp_path, "primary", "2", NAMES, blob=junk)
    elif breakage == "other_inputs":
        folder = write_model(tmp_path, "primary", "2", NAMES, blob=linear_model_bytes(5))
    elif breakage == "other_input_name":
        folder = write_model(tmp_path, "primary", "2", NAMES,
                             blob=linear_model_bytes(12, input_name="x"))
    elif breakage == "other_features":
        folder = write_model(tmp_path, "primary", "2", tuple(reversed(NAMES)))
    elif breakage == "other_feature_set":
        folder = write_model(tmp_path, "primary", "2", NAMES, feature_set="fraud:v0")
    elif breakage == "no_file":
        (folder / "model.onnx").unlink()
    elif breakage == "no_manifest":
        (folder / "model.json").unlink()
    with pytest.raises(ModelError, match=message):
        load_model(folder, NAMES, FS)


def test_hot_reload_takes_newer_valid_versions_and_never_a_bad_one(tmp_path):
    reg = _registry(tmp_path)
    write_model(tmp_path, "primary", "1", NAMES)
    assert reg.refresh() == []
    first = reg.get("primary")
    assert first.version == "1"

    write_model(tmp_path, "primary", "2", NAMES, blob=linear_model_bytes(12, bias=-1.0))
    assert reg.refresh() == []
    assert reg.get("primary").version == "2"

    broken = write_model(tmp_path, "primary", "3", NAMES)
    (broken / "model.onnx").write_bytes(b"not onnx at all")
    errors = reg.refresh()
    assert len(errors) == 1 and "checksum" in errors[0]
    assert reg.get("primary").version == "2"
    assert reg.refresh() == []  # the same broken state is not re-tried (or re-reported)

    # The active version's file is corrupted on disk: the validated model in memory stays.
    active = tmp_path / "primary" / "2" / "model.onnx"
    active.write_bytes(b"garbage")
    reg.refresh()
    assert reg.get("primary").version == "2"
    assert reg.get("primary").score_many(np.zeros((1, 12), dtype=np.float32)).shape == (1,)


def test_missing_registry_or_model_means_no_model(tmp_path):
    reg = _registry(tmp_path / "nowhere")
    assert reg.refresh() == []
    assert reg.get("primary") is None


def test_pinned_version_is_used_even_when_newer_exists(tmp_path):
    write_model(tmp_path, "backup", "1", NAMES)
    write_model(tmp_path, "backup", "2", NAMES)
    reg = ModelRegistry(tmp_path, NAMES, FS, pinned={"backup": "1"})
    reg.refresh()
    assert reg.get("backup").version == "1"
