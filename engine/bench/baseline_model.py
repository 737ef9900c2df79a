"""What the framework baselines share: the primary fraud model as a plain onnxruntime session
and the feature vector they can build from one 1 h window. No framework import here, so each
baseline process loads only its own framework."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

__all__ = ["MODEL_DIR", "FraudModel", "features_1h"]

MODEL_DIR = Path(__file__).resolve().parents[2] / "topologies" / "fraud" / "models" / "primary" / "1"


class FraudModel:
    """The primary fraud model, as a plain onnxruntime session (one thread, like the worker)."""

    def __init__(self, model_dir: Path = MODEL_DIR) -> None:
        manifest = json.loads((model_dir / "model.json").read_text())
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(model_dir / "model.onnx"), sess_options=opts,
                                            providers=["CPUExecutionProvider"])
        self.input = manifest["input"]["name"]
        self.output = manifest["output"]["name"]
        self.index = manifest["output"]["index"]
        self.review_at = manifest["thresholds"]["review_at"]
        self.decline_at = manifest["thresholds"]["decline_at"]

    def score_many(self, rows: list[list[float]]) -> list[float]:
        x = np.asarray(rows, dtype=np.float32)
        probs = self.session.run([self.output], {self.input: x})[0]
        return probs[:, self.index].tolist()

    def decide(self, score: float) -> str:
        if score >= self.decline_at:
            return "decline"
        return "review" if score >= self.review_at else "approve"


def features_1h(count: float, total: float, amount: float, ts_ms: int) -> list[float]:
    """The model's 12 features from a 1 h window's count and sum; 0 for what the baselines
    do not keep (10 min window, since-last, profile ratios)."""
    hour = (ts_ms // 3_600_000) % 24
    return [0.0, 0.0, 0.0, count, total, total / count, 0.0, 0.0, 0.0, 0.0, amount, hour]
