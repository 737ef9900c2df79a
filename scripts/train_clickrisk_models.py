#!/usr/bin/env python3
"""Train the clickrisk topology's two models, seeded and reproducible, and write them as ONNX.

The training rows are computed by the engine itself: the workload generator's events go through
`engine.testing.feed` (validate → dedup → event-time reorder → tumbling and hopping windows →
features), the same pipeline a live worker runs, with 4 partitions keyed by user, and each
distinct event's feature vector is read back from its decision. Rows with a missing feature
never reach a model in production (the fallback chain takes them), so they are dropped here
too. The split is by event time: the first 80% trains, the last 20% is held out.

Writes ``<out>/primary/1`` (gradient-boosted trees) and ``<out>/backup/1`` (standardised logistic
regression), each a ``model.onnx`` plus a ``model.json`` manifest for the model registry.
The ONNX conversion, checks and threshold choice are `train_fraud_models`'s.

    .venv/bin/python scripts/train_clickrisk_models.py [--events 150000] [--seed 11] [--out DIR]

Seed 7 is the reference workload used for evaluation elsewhere: do not train on it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import skl2onnx
import sklearn
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from train_fraud_models import (  # noqa: E402
    HOLDOUT_SHARE,
    INPUT_NAME,
    PARITY_TOL,
    TARGET_OPSET,
    check_onnx,
    rate_at,
    session,
    thresholds,
    to_onnx,
)

import topologies  # noqa: E402
from engine.testing import feed, records_of  # noqa: E402
from topologies.clickrisk.workload import generate  # noqa: E402

SCRIPT = "scripts/train_clickrisk_models.py"
TOPOLOGY = "topologies.clickrisk:TOPOLOGY"  # by module path: works before a reinstall too
PARTITIONS = 4


def feature_rows(n_events: int, seed: int) -> dict:
    """Run the workload through the engine's pipeline; one complete feature row per event."""
    topo = topologies.get(TOPOLOGY)
    names = topo.features.names
    w = generate(n_events, seed)
    out = feed(topo, records_of(topo, w.events, PARTITIONS), poll_records=2_000)
    seen: set[str] = set()
    rows: list[list[float]] = []
    labels: list[int] = []
    ts: list[int] = []
    dropped = 0
    for p in sorted(out.decisions):
        for body in out.decisions[p]:
            doc = orjson.loads(body)
            eid = doc["event_id"]
            if eid in seen:
                continue  # a duplicate re-emits its original's decision
            seen.add(eid)
            values = [doc["features"][n] for n in names]
            if any(v is None or not math.isfinite(v) for v in values):
                dropped += 1
                continue
            rows.append(values)
            labels.append(w.labels[eid])
            ts.append(doc["event_ts_ms"])
    # Every distinct event decided once (score_late; `feed` drains the reorder buffers).
    assert seen == set(w.labels), (len(seen), len(w.labels))
    x = np.asarray(rows, dtype=np.float32)  # what the engine feeds the model
    y = np.asarray(labels, dtype=np.int64)
    order = np.argsort(np.asarray(ts, dtype=np.int64), kind="stable")
    return {"x": x[order], "y": y[order], "names": names, "distinct": len(seen),
            "dropped": dropped, "feature_set": topo.features.versioned_name}


def make_models(seed: int) -> dict[str, tuple[object, object, str]]:
    """name -> (estimator to fit, its final classifier, description for the manifest)."""
    gbc = GradientBoostingClassifier(n_estimators=80, learning_rate=0.1, max_depth=3,
                                     min_samples_leaf=20, subsample=0.8, random_state=seed)
    lr = LogisticRegression(C=1.0, max_iter=2_000)
    backup = Pipeline([("scale", StandardScaler()), ("clf", lr)])
    return {
        "primary": (gbc, gbc, f"GradientBoostingClassifier(n_estimators=80, learning_rate=0.1, "
                              f"max_depth=3, min_samples_leaf=20, subsample=0.8, "
                              f"random_state={seed})"),
        "backup": (backup, lr, "Pipeline(StandardScaler, LogisticRegression(C=1.0, "
                               "solver=lbfgs, max_iter=2000))"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=150_000, help="produced records to generate")
    ap.add_argument("--seed", type=int, default=11, help="workload and model seed (not 7)")
    ap.add_argument("--out", type=Path, default=ROOT / "topologies" / "clickrisk" / "models",
                    help="model registry folder to write <name>/1/ into")
    args = ap.parse_args(argv)
    if args.seed == 7:
        print("warning: seed 7 is the evaluation workload", file=sys.stderr)

    t0 = time.perf_counter()
    data = feature_rows(args.events, args.seed)
    x, y, names = data["x"], data["y"], data["names"]
    n_hold = int(round(len(x) * HOLDOUT_SHARE))
    n_train = len(x) - n_hold
    x_tr, y_tr, x_ho, y_ho = x[:n_train], y[:n_train], x[n_train:], y[n_train:]
    print(f"features: {data['distinct']:,} distinct events, {len(x):,} complete rows, "
          f"{data['dropped']:,} dropped (missing features), positive rate {y.mean():.4f}; "
          f"train {n_train:,} / held out {n_hold:,} ({time.perf_counter() - t0:.1f}s)")

    print(f"\n{'model':8} {'AUC':>6} {'AP':>6} {'review':>8} {'decline':>8} {'P@dec':>6} "
          f"{'R@dec':>6} {'R@rev':>6} {'bytes':>9}")
    for name, (estimator, clf, description) in make_models(args.seed).items():
        # float64 copies of the float32 rows: sklearn sees exactly the values ONNX will
        estimator.fit(x_tr.astype(np.float64), y_tr)
        blob = to_onnx(estimator, clf, len(names), f"streamwise_clickrisk_{name}")
        out_name, column = check_onnx(blob, len(names))
        onnx_scores = session(blob).run([out_name], {INPUT_NAME: x_ho})[0][:, column]
        onnx_scores = onnx_scores.astype(np.float64)
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
                "partitions": PARTITIONS,
                "split": "by event time: first 80% train, last 20% held out",
                "sklearn": sklearn.__version__, "skl2onnx": skl2onnx.__version__,
                "numpy": np.__version__, "target_opset": TARGET_OPSET, "model": description,
            },
        }
        folder = args.out / name / "1"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.onnx").write_bytes(blob)
        (folder / "model.json").write_text(json.dumps(manifest, indent=2) + "\n")
        print(f"{name:8} {auc:6.4f} {ap_score:6.4f} {review:8.4f} {decline:8.4f} {p_dec:6.3f} "
              f"{r_dec:6.3f} {r_rev:6.3f} {len(blob):9,}")
    print(f"\nwrote {args.out} in {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
