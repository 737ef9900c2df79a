"""What the topologies' training scripts share: rows from decisions, the two models, ONNX export.

`scripts/train_fraud_models.py` and `scripts/train_clickrisk_models.py` each compute their
topology's feature rows through the engine's pipeline, then call these: `rows_from_decisions`
turns the decisions into a time-ordered training matrix, `split` holds out the newest 20%,
`make_models` builds the gradient-boosted primary and the logistic-regression backup, and
`fit_and_export` fits one, converts it with skl2onnx, checks the ONNX graph against sklearn,
chooses its thresholds on the held-out rows and writes ``<out>/<name>/1/model.{onnx,json}``.

Each script writes ``<out>/primary/1`` (gradient-boosted trees) and ``<out>/backup/1``
(standardised logistic regression), each a ``model.onnx`` plus a ``model.json`` manifest for the
model registry. Seed 7 is the reference workload used for evaluation elsewhere: do not train on
it (`parse_args` warns).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson
import skl2onnx
import sklearn
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

__all__ = [
    "HOLDOUT_SHARE",
    "INPUT_NAME",
    "Split",
    "Trained",
    "arg_parser",
    "check_onnx",
    "fit_and_export",
    "make_models",
    "parse_args",
    "rate_at",
    "rows_from_decisions",
    "session",
    "split",
    "thresholds",
    "throughput",
    "to_onnx",
]

INPUT_NAME = "features"
OUTPUT_NAME = "probabilities"
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}  # IR 8: loads in onnxruntime >= 1.14 (and 1.32)
HOLDOUT_SHARE = 0.2
DECLINE_PRECISION = 0.9    # decline where the held-out precision first reaches this...
DECLINE_TOP_SHARE = 0.005  # ...or, if it never does, at the top 0.5% of scores
REVIEW_RECALL = 0.8        # review where the held-out recall is still at least this...
REVIEW_RECALL_WIDE = 0.9   # ...or this, when the decline threshold already reaches 0.8
MIN_FLAGGED = 20           # a precision read off fewer flagged rows is noise
PARITY_TOL = 1e-4


# -- data -------------------------------------------------------------------------------------


def parse_args(ap: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """`ap`'s arguments (it has --seed), with a warning when the seed is the evaluation one."""
    args = ap.parse_args(argv)
    if args.seed == 7:
        print("warning: seed 7 is the evaluation workload", file=sys.stderr)
    return args


def arg_parser(doc: str, *, events: int, out: Path | None) -> argparse.ArgumentParser:
    """--events, --seed and --out, with this script's defaults; the first paragraph of `doc`
    describes it."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=events, help="produced records to generate")
    ap.add_argument("--seed", type=int, default=11, help="workload and model seed (not 7)")
    ap.add_argument("--out", type=Path, default=out,
                    help="model registry folder to write <name>/1/ into")
    return ap


def rows_from_decisions(decisions: Iterable[bytes], names: tuple[str, ...],
                        labels: Mapping[str, int], feature_set: str) -> dict:
    """One complete feature row per distinct event, in event-time order.

    `decisions` are decision records (JSON bytes) in the order the engine emitted them; a
    duplicate re-emits its original's decision and is skipped. Rows with a missing or
    non-finite feature never reach a model in production (the fallback chain takes them), so
    they are dropped and counted. Every event in `labels` must have been decided.
    """
    seen: set[str] = set()
    rows: list[list[float]] = []
    ys: list[int] = []
    ts: list[int] = []
    dropped = 0
    for body in decisions:
        doc = orjson.loads(body)
        eid = doc["event_id"]
        if eid in seen:
            continue  # a duplicate re-emits its original's decision
        seen.add(eid)
        vec = doc["features"]
        values = [vec[n] for n in names]
        if any(v is None or not math.isfinite(v) for v in values):
            dropped += 1
            continue
        rows.append(values)
        ys.append(labels[eid])
        ts.append(doc["event_ts_ms"])
    # Every distinct event decided once (score_late: late ones too).
    assert seen == set(labels), (len(seen), len(labels))
    x = np.asarray(rows, dtype=np.float32)  # what the engine feeds the model
    y = np.asarray(ys, dtype=np.int64)
    order = np.argsort(np.asarray(ts, dtype=np.int64), kind="stable")
    return {"x": x[order], "y": y[order], "names": names, "distinct": len(seen),
            "dropped": dropped, "feature_set": feature_set}


@dataclass(frozen=True)
class Split:
    """The time-ordered rows cut by event time: the first 80% train, the last 20% held out."""

    x_tr: np.ndarray
    y_tr: np.ndarray
    x_ho: np.ndarray
    y_ho: np.ndarray
    y: np.ndarray  # every row's label

    @property
    def n_train(self) -> int:
        return len(self.x_tr)

    @property
    def n_hold(self) -> int:
        return len(self.x_ho)


def split(data: dict, started: float) -> Split:
    """Cut `rows_from_decisions`' rows and print what they are (`started`: perf_counter)."""
    x, y = data["x"], data["y"]
    n_hold = int(round(len(x) * HOLDOUT_SHARE))
    n_train = len(x) - n_hold
    print(f"features: {data['distinct']:,} distinct events, {len(x):,} complete rows, "
          f"{data['dropped']:,} dropped (missing features), positive rate {y.mean():.4f}; "
          f"train {n_train:,} / held out {n_hold:,} ({time.perf_counter() - started:.1f}s)")
    return Split(x[:n_train], y[:n_train], x[n_train:], y[n_train:], y)


# -- models -----------------------------------------------------------------------------------


def make_models(seed: int, *, n_estimators: int, max_depth: int,
                ) -> dict[str, tuple[object, object, str]]:
    """name -> (estimator to fit, its final classifier, description for the manifest)."""
    # Not HistGradientBoostingClassifier: skl2onnx 1.20's converter for it writes a Python bool
    # into an int attribute, which protobuf 7 rejects ("Expected an int, got a boolean").
    gbc = GradientBoostingClassifier(
        n_estimators=n_estimators, learning_rate=0.1, max_depth=max_depth, min_samples_leaf=20,
        subsample=0.8, random_state=seed)
    lr = LogisticRegression(C=1.0, max_iter=2_000)
    backup = Pipeline([("scale", StandardScaler()), ("clf", lr)])
    return {
        "primary": (gbc, gbc, f"GradientBoostingClassifier(n_estimators={n_estimators}, "
                              f"learning_rate=0.1, max_depth={max_depth}, min_samples_leaf=20, "
                              f"subsample=0.8, random_state={seed})"),
        "backup": (backup, lr, "Pipeline(StandardScaler, LogisticRegression(C=1.0, "
                               "solver=lbfgs, max_iter=2000))"),
    }


def to_onnx(estimator: object, clf: object, n_features: int, graph_name: str) -> bytes:
    """ONNX bytes; a fixed graph name (skl2onnx's default is a random uuid) keeps them stable."""
    onx = convert_sklearn(
        estimator, initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
        options={id(clf): {"zipmap": False}}, target_opset=TARGET_OPSET, name=graph_name)
    return onx.SerializeToString()


def session(blob: bytes) -> ort.InferenceSession:
    """A session configured like the engine's (`engine.scoring.onnx.OnnxModel`)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return ort.InferenceSession(blob, sess_options=opts, providers=["CPUExecutionProvider"])


def check_onnx(blob: bytes, n_features: int) -> tuple[str, int]:
    """The [N, 2] probability output's name and the positive column; raises if the graph is off."""
    sess = session(blob)
    inputs = sess.get_inputs()
    assert [i.name for i in inputs] == [INPUT_NAME], inputs
    assert inputs[0].type == "tensor(float)" and inputs[0].shape[1] == n_features, inputs[0]
    outputs = {o.name: o for o in sess.get_outputs()}
    assert OUTPUT_NAME in outputs, sorted(outputs)
    assert outputs[OUTPUT_NAME].type == "tensor(float)", outputs[OUTPUT_NAME].type
    return OUTPUT_NAME, 1


def thresholds(y: np.ndarray, s: np.ndarray) -> tuple[float, float, str, str]:
    """(review_at, decline_at, how each was chosen) from held-out labels and scores.

    decline_at: the lowest threshold whose precision reaches DECLINE_PRECISION (with at least
    MIN_FLAGGED rows flagged), else the top DECLINE_TOP_SHARE of scores. review_at: the highest
    threshold whose recall is still REVIEW_RECALL; when decline_at already catches that much,
    the review band catches the next slice, up to REVIEW_RECALL_WIDE.
    """
    precision, recall, cut = precision_recall_curve(y, s)
    precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
    flagged = len(s) - np.searchsorted(np.sort(s), cut, side="left")
    ok = np.flatnonzero((precision >= DECLINE_PRECISION) & (flagged >= MIN_FLAGGED))
    if len(ok):
        decline, how_decline = float(cut[ok[0]]), f"precision>={DECLINE_PRECISION}"
    else:
        decline = float(np.quantile(s, 1 - DECLINE_TOP_SHARE))
        how_decline = f"top {DECLINE_TOP_SHARE} of scores"
    review, how_review = decline / 2, "decline_at/2"
    for target in (REVIEW_RECALL, REVIEW_RECALL_WIDE):
        reach = np.flatnonzero(recall >= target)
        if len(reach) and cut[reach[-1]] < decline:
            review, how_review = float(cut[reach[-1]]), f"recall>={target}"
            break
    eps = 1e-6
    review = min(max(review, eps), 1 - 2 * eps)
    decline = min(max(decline, review + eps), 1 - eps)
    return review, decline, how_review, how_decline


def rate_at(y: np.ndarray, s: np.ndarray, t: float) -> tuple[float, float]:
    """(precision, recall) of flagging ``score >= t``."""
    hit = s >= t
    tp = int((hit & (y == 1)).sum())
    return (tp / int(hit.sum()) if hit.any() else 0.0), tp / max(int(y.sum()), 1)


def throughput(sess: ort.InferenceSession, x: np.ndarray) -> tuple[float, float]:
    """Rows/s scoring one row per call, and 1000 rows per call (one thread; best of 3)."""
    single = [np.ascontiguousarray(x[i:i + 1]) for i in range(min(len(x), 2_000))]
    batch = np.ascontiguousarray(np.resize(x, (1_000, x.shape[1])))
    run = sess.run
    for r in single[:200]:
        run([OUTPUT_NAME], {INPUT_NAME: r})
    one = batched = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        for r in single:
            run([OUTPUT_NAME], {INPUT_NAME: r})
        one = max(one, len(single) / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        for _ in range(20):
            run([OUTPUT_NAME], {INPUT_NAME: batch})
        batched = max(batched, 20 * 1_000 / (time.perf_counter() - t0))
    return one, batched


@dataclass(frozen=True)
class Trained:
    """One model fitted, exported and written: what the scripts print about it."""

    name: str
    auc: float
    ap_score: float
    review: float
    decline: float
    p_dec: float
    r_dec: float
    r_rev: float
    size_bytes: int
    fit_s: float
    session: ort.InferenceSession


def fit_and_export(name: str, model: tuple[object, object, str], data: dict, rows: Split, *,
                   graph_name: str, out: Path, training: dict) -> Trained:
    """Fit `model` (a `make_models` value) on the training rows, convert it to ONNX, check the
    graph scores the held-out rows as sklearn does (within PARITY_TOL, else SystemExit), choose
    its thresholds and write ``<out>/<name>/1/model.onnx`` and its ``model.json`` manifest.

    `training` opens the manifest's ``training`` section (seed, n_events, script, and anything
    else the script records); the versions, split and model description follow it.
    """
    estimator, clf, description = model
    names = data["names"]
    x_ho, y_ho, y = rows.x_ho, rows.y_ho, rows.y
    t1 = time.perf_counter()
    # float64 copies of the float32 rows: sklearn sees exactly the values ONNX will
    estimator.fit(rows.x_tr.astype(np.float64), rows.y_tr)
    fit_s = time.perf_counter() - t1
    blob = to_onnx(estimator, clf, len(names), graph_name)
    out_name, column = check_onnx(blob, len(names))
    sess = session(blob)
    onnx_scores = sess.run([out_name], {INPUT_NAME: x_ho})[0][:, column].astype(np.float64)
    skl_scores = estimator.predict_proba(x_ho.astype(np.float64))[:, 1]
    parity = float(np.max(np.abs(onnx_scores - skl_scores)))
    if parity > PARITY_TOL:
        raise SystemExit(f"{name}: ONNX and sklearn disagree by {parity:.2e} > {PARITY_TOL}")
    auc = float(roc_auc_score(y_ho, onnx_scores))
    ap_score = float(average_precision_score(y_ho, onnx_scores))
    review, decline, how_review, how_decline = thresholds(y_ho, onnx_scores)
    p_dec, r_dec = rate_at(y_ho, onnx_scores, decline)
    p_rev, r_rev = rate_at(y_ho, onnx_scores, review)
    manifest = {
        "name": name, "version": "1", "feature_set": data["feature_set"],
        "features": list(names),
        "input": {"name": INPUT_NAME, "dtype": "float32", "shape": [None, len(names)]},
        "output": {"name": out_name, "index": column},
        "thresholds": {"review_at": review, "decline_at": decline},
        "sha256": hashlib.sha256(blob).hexdigest(),
        "metrics": {
            "auc_holdout": round(auc, 6), "average_precision_holdout": round(ap_score, 6),
            "n_train": rows.n_train, "n_holdout": rows.n_hold,
            "positive_rate": round(float(y.mean()), 6),
            "positive_rate_holdout": round(float(y_ho.mean()), 6),
            "dropped_incomplete_rows": data["dropped"],
            "precision_at_decline": round(p_dec, 6), "recall_at_decline": round(r_dec, 6),
            "precision_at_review": round(p_rev, 6), "recall_at_review": round(r_rev, 6),
            "review_rule": how_review, "decline_rule": how_decline,
            "max_abs_diff_onnx_vs_sklearn": float(f"{parity:.3g}"),
        },
        "training": {
            **training,
            "split": "by event time: first 80% train, last 20% held out",
            "sklearn": sklearn.__version__, "skl2onnx": skl2onnx.__version__,
            "numpy": np.__version__, "target_opset": TARGET_OPSET, "model": description,
        },
    }
    folder = out / name / "1"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(blob)
    (folder / "model.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return Trained(name, auc, ap_score, review, decline, p_dec, r_dec, r_rev, len(blob), fit_s,
                   sess)
