"""The committed fraud models (scripts/train_fraud_models.py): files, manifests and sane scores."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import topologies
from engine.scoring.registry import load_model

TOPO = topologies.get("fraud")
NAMES = TOPO.features.names
MODELS = Path(topologies.__file__).parent / "fraud" / "models"
VERSIONS = [("primary", "1"), ("backup", "1")]

# One quiet payment: second of the hour at a usual merchant, home country, usual amount.
NORMAL = {"count_10m": 1, "sum_10m": 32.0, "max_10m": 32.0, "count_1h": 2, "sum_1h": 61.5,
          "mean_1h": 30.75, "distinct_merchants_1h": 2, "secs_since_last": 1_900.0,
          "amount_over_avg": 1.05, "is_foreign": 0, "amount": 32.0, "hour_of_day": 14}
# A burst on a compromised card: many payments in minutes, abroad, far above the usual amount.
RISKY = {"count_10m": 6, "sum_10m": 2_400.0, "max_10m": 900.0, "count_1h": 6,
         "sum_1h": 2_400.0, "mean_1h": 400.0, "distinct_merchants_1h": 6,
         "secs_since_last": 35.0, "amount_over_avg": 18.0, "is_foreign": 1, "amount": 900.0,
         "hour_of_day": 3}
# Corners of the feature space: first ever payment, a tiny card test, a huge one.
EDGES = [
    {**NORMAL, "count_10m": 1, "count_1h": 1, "distinct_merchants_1h": 1,
     "secs_since_last": -1.0},
    {**NORMAL, "amount": 1.0, "sum_10m": 1.0, "max_10m": 1.0, "sum_1h": 1.0, "mean_1h": 1.0,
     "amount_over_avg": 0.02, "is_foreign": 1},
    {**NORMAL, "amount": 50_000.0, "sum_10m": 50_000.0, "max_10m": 50_000.0,
     "sum_1h": 50_000.0, "mean_1h": 25_000.0, "amount_over_avg": 900.0},
]


def _row(values: dict) -> list[float]:
    return [float(values[n]) for n in NAMES]


def _manifest(name: str, version: str) -> dict:
    return json.loads((MODELS / name / version / "model.json").read_text())


def _session(name: str, version: str) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(MODELS / name / version / "model.onnx"), sess_options=opts,
                                providers=["CPUExecutionProvider"])


def _scores(name: str, version: str, rows: list[list[float]]) -> np.ndarray:
    m = _manifest(name, version)
    out = _session(name, version).run(
        [m["output"]["name"]], {m["input"]["name"]: np.asarray(rows, dtype=np.float32)})[0]
    return np.asarray(out)[:, m["output"]["index"]]


@pytest.mark.parametrize("name, version", VERSIONS)
def test_manifest_matches_file_and_feature_set(name, version):
    m = _manifest(name, version)
    blob = (MODELS / name / version / "model.onnx").read_bytes()
    assert hashlib.sha256(blob).hexdigest() == m["sha256"]
    assert len(blob) < 2 * 1024 * 1024
    assert (m["name"], m["version"]) == (name, version)
    assert m["feature_set"] == TOPO.features.versioned_name
    assert tuple(m["features"]) == NAMES
    assert m["input"] == {"name": "features", "dtype": "float32", "shape": [None, len(NAMES)]}
    t = m["thresholds"]
    assert 0 < t["review_at"] < t["decline_at"] < 1
    assert m["metrics"]["auc_holdout"] > 0.9
    assert m["training"]["seed"] != 7  # seed 7 is the evaluation workload


@pytest.mark.parametrize("name, version", VERSIONS)
def test_onnx_graph_has_the_declared_input_and_output(name, version):
    m = _manifest(name, version)
    sess = _session(name, version)
    inputs = sess.get_inputs()
    assert [i.name for i in inputs] == [m["input"]["name"]]
    assert inputs[0].type == "tensor(float)"
    assert len(inputs[0].shape) == 2 and inputs[0].shape[1] == len(NAMES)
    outputs = {o.name: o for o in sess.get_outputs()}
    assert m["output"]["name"] in outputs
    assert outputs[m["output"]["name"]].type == "tensor(float)"
    probs = sess.run([m["output"]["name"]],
                     {m["input"]["name"]: np.asarray([_row(NORMAL)] * 3, dtype=np.float32)})[0]
    assert probs.shape == (3, 2)
    assert m["output"]["index"] == 1
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("name, version", VERSIONS)
def test_scores_are_probabilities_and_a_burst_scores_above_a_quiet_payment(name, version):
    scores = _scores(name, version, [_row(r) for r in (NORMAL, RISKY, *EDGES)])
    assert np.all(np.isfinite(scores))
    assert np.all((scores >= 0) & (scores <= 1))
    normal, risky = scores[0], scores[1]
    assert risky > normal
    if name == "primary":
        t = _manifest(name, version)["thresholds"]
        assert normal < t["review_at"]
        assert risky >= t["decline_at"]


@pytest.mark.parametrize("name, version", VERSIONS)
def test_the_engine_registry_accepts_the_committed_models(name, version):
    model = load_model(MODELS / name / version, NAMES, TOPO.features.versioned_name)
    scores = model.score_many(np.asarray([_row(NORMAL), _row(RISKY)], dtype=np.float32))
    assert model.ref == f"{name}:{version}"
    assert scores.shape == (2,)
    assert scores[0] < scores[1]


@pytest.mark.parametrize("name, version", VERSIONS)
def test_the_merchant_risk_models_read_the_two_merchant_features(name, version):
    """`topologies.fraud:WITH_MERCHANT_RISK`'s own models: its 14 features, and a quiet payment
    at a merchant where frauds were reported scores above the same one at a merchant without."""
    m = topologies.get("topologies.fraud:WITH_MERCHANT_RISK")
    model = load_model(m.models_dir / name / version, m.features.names,
                       m.features.versioned_name)
    quiet = {**NORMAL, "merchant_amount_z": 0.0, "merchant_risk": 0.0}
    flagged = {**NORMAL, "merchant_amount_z": 0.0, "merchant_risk": 0.2}
    rows = [[float(v[n]) for n in m.features.names] for v in (quiet, flagged)]
    scores = model.score_many(np.asarray(rows, dtype=np.float32))
    assert scores[0] < scores[1]
