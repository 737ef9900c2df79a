"""onnxruntime adapter: one validated session per model version."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from ..errors import ModelError

if TYPE_CHECKING:
    from .registry import ModelManifest

__all__ = ["OnnxModel"]


class OnnxModel:
    """A loaded, checked model: `score_many` maps an ``[N, F]`` float32 matrix to N scores."""

    def __init__(self, session: ort.InferenceSession, manifest: ModelManifest) -> None:
        self.session = session
        self.manifest = manifest
        self.name = manifest.name
        self.version = manifest.version
        self.ref = f"{manifest.name}:{manifest.version}"
        self._input = manifest.input.name
        self._output = manifest.output.name
        self._column = manifest.output.index

    @classmethod
    def from_bytes(cls, blob: bytes, manifest: ModelManifest,
                   intra_op_threads: int = 1) -> OnnxModel:
        where = f"{manifest.name}/{manifest.version}"
        opts = ort.SessionOptions()
        # Explicit threads: the worker's event loop and Kafka clients share 2 cores with us.
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        try:
            session = ort.InferenceSession(blob, sess_options=opts,
                                           providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own unrelated exception types
            raise ModelError(f"{where}: not a loadable ONNX model ({type(exc).__name__})") \
                from None
        inputs = session.get_inputs()
        n_features = len(manifest.features)
        if [i.name for i in inputs] != [manifest.input.name]:
            raise ModelError(f"{where}: inputs are {[i.name for i in inputs]}, manifest says "
                             f"[{manifest.input.name!r}]")
        inp = inputs[0]
        if inp.type != "tensor(float)":
            raise ModelError(f"{where}: input {inp.name} is {inp.type}, expected tensor(float)")
        if len(inp.shape) != 2 or inp.shape[1] != n_features:
            raise ModelError(f"{where}: input shape {inp.shape}, expected [N, {n_features}]")
        outputs = {o.name: o for o in session.get_outputs()}
        if manifest.output.name not in outputs:
            raise ModelError(f"{where}: no output {manifest.output.name!r} "
                             f"(has {sorted(outputs)})")
        model = cls(session, manifest)
        probe = model.score_many(np.zeros((2, n_features), dtype=np.float32))
        if probe.shape != (2,) or not np.all(np.isfinite(probe)):
            raise ModelError(f"{where}: output {manifest.output.name} does not give one finite "
                             "score per row")
        return model

    def score_many(self, rows: np.ndarray, run_options: ort.RunOptions | None = None
                   ) -> np.ndarray:
        """Scores (float64, one per row, input order) for a float32 ``[N, F]`` matrix."""
        out = self.session.run([self._output], {self._input: rows}, run_options)[0]
        out = np.asarray(out)
        if out.ndim == 2:
            if self._column >= out.shape[1]:
                raise ModelError(f"{self.ref}: output has {out.shape[1]} columns, manifest "
                                 f"reads column {self._column}")
            out = out[:, self._column]
        return out.astype(np.float64, copy=False).reshape(-1)

    @staticmethod
    def run_options() -> ort.RunOptions:
        """Fresh options for one call; set ``.terminate = True`` to abort it from a timer."""
        return ort.RunOptions()
