#!/usr/bin/env python3
"""Train the fraud topology's two models, seeded and reproducible, and write them as ONNX.

The training rows are computed by the engine itself: the workload generator's events go through
`PartitionPipeline` (validate → dedup → windows → features) exactly as the live worker computes
them, and each distinct event's feature vector is read back from its decision. Rows with a missing
feature never reach a model in production (the fallback chain takes them), so they are dropped
here too. The split is by event time: the first 80% trains, the last 20% is held out.

Writes ``<out>/primary/1`` (gradient-boosted trees) and ``<out>/backup/1`` (standardised logistic
regression), each a ``model.onnx`` plus a ``model.json`` manifest for the model registry.

    .venv/bin/python scripts/train_fraud_models.py [--events 200000] [--seed 11] [--out DIR]

Seed 7 is the reference workload used for evaluation elsewhere: do not train on it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import tempfile
import time
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import topologies  # noqa: E402
from engine.clock import ManualClock  # noqa: E402
from engine.pipeline import PartitionPipeline, Record  # noqa: E402
from engine.policy import RulesOnly  # noqa: E402
from engine.state import RocksStore  # noqa: E402
from topologies.fraud.workload import generate  # noqa: E402

SCRIPT = "scripts/train_fraud_models.py"
INPUT_NAME = "features"
OUTPUT_NAME = "probabilities"
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}  # IR 8: loads in onnxruntime >= 1.14 (and 1.32)
CHUNK = 2_000
HOLDOUT_SHARE = 0.2
DECLINE_PRECISION = 0.9    # decline where the held-out precision first reaches this...
DECLINE_TOP_SHARE = 0.005  # ...or, if it never does, at the top 0.5% of scores
REVIEW_RECALL = 0.8        # review where the held-out recall is still at least this...
REVIEW_RECALL_WIDE = 0.9   # ...or this, when the decline threshold already reaches 0.8
MIN_FLAGGED = 20           # a precision read off fewer flagged rows is noise
PARITY_TOL = 1e-4


# -- data -------------------------------------------------------------------------------------


def feature_rows(n_events: int, seed: int) -> dict:
    """Run the workload through the engine's pipeline; one complete feature row per event."""
    topo = topologies.get("fraud")
    names = topo.features.names
    w = generate(n_events, seed)
    records = [Record("fraud.payments", 0, i, e["card_id"].encode(), orjson.dumps(e), e["ts_ms"])
               for i, e in enumerate(w.events)]
    seen: set[str] = set()
    rows: list[list[float]] = []
    labels: list[int] = []
    ts: list[int] = []
    dropped = 0
    with tempfile.TemporaryDirectory(prefix="train-fraud-") as tmp:
        store = RocksStore(Path(tmp))
        try:
            pipe = PartitionPipeline(topo, 0, store,
                                     RulesOnly(topo.rules, topo.features.versioned_name),
                                     ManualClock(0))
            for i in range(0, len(records), CHUNK):
                result = pipe.process(records[i:i + CHUNK], w.profiles)
                store.apply(result.changes)
                for _key, body in result.decisions:
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
                    labels.append(w.labels[eid])
                    ts.append(doc["event_ts_ms"])
        finally:
            store.close()
    # Every distinct event must have been decided exactly once (score_late: late ones too).
    assert seen == set(w.labels), (len(seen), len(w.labels))
    x = np.asarray(rows, dtype=np.float32)  # what the engine feeds the model
    y = np.asarray(labels, dtype=np.int64)
    order = np.argsort(np.asarray(ts, dtype=np.int64), kind="stable")
    return {"x": x[order], "y": y[order], "names": names, "distinct": len(seen),
            "dropped": dropped, "feature_set": topo.features.versioned_name}


# -- models -----------------------------------------------------------------------------------


def make_models(seed: int) -> dict[str, tuple[object, object, str]]:
    """name -> (estimator to fit, its final classifier, description for the manifest)."""
    # Not HistGradientBoostingClassifier: skl2onnx 1.20's converter for it writes a Python bool
    # into an int attribute, which protobuf 7 rejects ("Expected an int, got a boolean").
    gbc = GradientBoostingClassifier(
        n_estimators=150, learning_rate=0.1, max_depth=4, min_samples_leaf=20, subsample=0.8,
        random_state=seed)
    lr = LogisticRegression(C=1.0, max_iter=2_000)
    backup = Pipeline([("scale", StandardScaler()), ("clf", lr)])
    return {
        "primary": (gbc, gbc, f"GradientBoostingClassifier(n_estimators=150, learning_rate=0.1, "
                              f"max_depth=4, min_samples_leaf=20, subsample=0.8, "
                              f"random_state={seed})"),
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
    """The [N, 2] probability output's name and the fraud column; raises if the graph is off."""
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


# -- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=200_000, help="produced records to generate")
    ap.add_argument("--seed", type=int, default=11, help="workload and model seed (not 7)")
    ap.add_argument("--out", type=Path, default=ROOT / "topologies" / "fraud" / "models",
                    help="model registry folder to write <name>/1/ into")
    ap.add_argument("--no-bench", action="store_true", help="skip the inference benchmark")
    args = ap.parse_args(argv)
    if args.seed == 7:
        print("warning: seed 7 is the evaluation workload", file=sys.stderr)

    t0 = time.perf_counter()
    data = feature_rows(args.events, args.seed)
    x, y, names = data["x"], data["y"], data["names"]
    n_hold = int(round(len(x) * HOLDOUT_SHARE))
    n_train = len(x) - n_hold
    x_tr, y_tr, x_ho, y_ho = x[:n_train], y[:n_train], x[n_train:], y[n_train:]
    t_features = time.perf_counter() - t0
    print(f"features: {data['distinct']:,} distinct events, {len(x):,} complete rows, "
          f"{data['dropped']:,} dropped (missing features), positive rate {y.mean():.4f}; "
          f"train {n_train:,} / held out {n_hold:,} ({t_features:.1f}s)")

    summary = []
    for name, (estimator, clf, description) in make_models(args.seed).items():
        t1 = time.perf_counter()
        # float64 copies of the float32 rows: sklearn sees exactly the values ONNX will
        estimator.fit(x_tr.astype(np.float64), y_tr)
        fit_s = time.perf_counter() - t1
        blob = to_onnx(estimator, clf, len(names), f"streamwise_fraud_{name}")
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
                "n_train": n_train, "n_holdout": n_hold,
                "positive_rate": round(float(y.mean()), 6),
                "positive_rate_holdout": round(float(y_ho.mean()), 6),
                "dropped_incomplete_rows": data["dropped"],
                "precision_at_decline": round(p_dec, 6), "recall_at_decline": round(r_dec, 6),
                "precision_at_review": round(p_rev, 6), "recall_at_review": round(r_rev, 6),
                "review_rule": how_review, "decline_rule": how_decline,
                "max_abs_diff_onnx_vs_sklearn": float(f"{parity:.3g}"),
            },
            "training": {
                "seed": args.seed, "n_events": args.events, "script": SCRIPT,
                "split": "by event time: first 80% train, last 20% held out",
                "sklearn": sklearn.__version__, "skl2onnx": skl2onnx.__version__,
                "numpy": np.__version__, "target_opset": TARGET_OPSET, "model": description,
            },
        }
        folder = args.out / name / "1"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.onnx").write_bytes(blob)
        (folder / "model.json").write_text(json.dumps(manifest, indent=2) + "\n")
        one, batched = (None, None) if args.no_bench else throughput(sess, x_ho)
        summary.append((name, auc, ap_score, review, decline, p_dec, r_dec, r_rev, len(blob),
                        fit_s, one, batched))

    print()
    print(f"{'model':8} {'AUC':>6} {'AP':>6} {'review':>8} {'decline':>8} {'P@dec':>6} "
          f"{'R@dec':>6} {'R@rev':>6} {'bytes':>9} {'fit s':>6} {'1-row/s':>8} {'1000-batch/s':>12}")
    for (name, auc, ap_score, review, decline, p_dec, r_dec, r_rev, size, fit_s, one,
         batched) in summary:
        bench = (f"{one:8.0f} {batched:12.0f}" if one is not None else f"{'-':>8} {'-':>12}")
        print(f"{name:8} {auc:6.4f} {ap_score:6.4f} {review:8.4f} {decline:8.4f} {p_dec:6.3f} "
              f"{r_dec:6.3f} {r_rev:6.3f} {size:9,} {fit_s:6.1f} {bench}")
    print(f"\nwrote {args.out} in {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
