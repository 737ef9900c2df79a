#!/usr/bin/env python3
"""Cost levers of the fraud primary, each re-checked like any candidate (#16 item 6).

Writes two candidate versions of `primary` into --out (a registry folder you can point
`streamwise rollout fraud validate --models-dir` at, or copy into the real one):

* ``primary/2``: int8-quantized. onnxruntime's quantizer has no int8 kernel for the tree
  ensemble op (TreeEnsembleClassifier), so the trees are first compiled to tensor form
  (Hummingbird's GEMM strategy: a gather of each node's feature, one comparison, a per-tree
  MatMul from node decisions to the leaf reached, a MatMul to the leaf values), checked equal
  to the original, then `quantize_dynamic` makes both MatMuls int8. Thresholds: the primary's.
* ``primary/3``: distilled. A 30-tree, depth-3 regressor fit to the primary's logit on the
  training rows (soft targets, no labels), sigmoid on top; thresholds re-derived on the
  training script's held-out split with the same rule as the primary's.

Then both go through the same offline validation as any candidate (the held-out set replayed
from the reference generator, seed 13) and a table compares them with the primary: rows/s
(1,000-row batches, one thread), AUC, ECE, decision-rate changes.

    .venv/bin/python scripts/cost_levers.py [--events 100000] [--out build/levers]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import topologies  # noqa: E402
from engine.rollout.validate import build_holdout, validate  # noqa: E402

TOPO = topologies.get("fraud")
PRIMARY = TOPO.models_dir / "primary" / "1"
OPSET = 17


def _train_module():
    spec = importlib.util.spec_from_file_location("train", ROOT / "scripts" /
                                                  "train_fraud_models.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _trees(model: onnx.ModelProto):
    node = next(n for n in model.graph.node if n.op_type == "TreeEnsembleClassifier")
    a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
    assert a["post_transform"] == b"LOGISTIC" and set(a["class_ids"]) == {0}
    assert set(a["nodes_modes"]) <= {b"BRANCH_LEQ", b"LEAF"}
    trees: dict[int, dict] = {}
    for i, t in enumerate(a["nodes_treeids"]):
        trees.setdefault(t, {})[a["nodes_nodeids"][i]] = (
            a["nodes_modes"][i], a["nodes_featureids"][i], a["nodes_values"][i],
            a["nodes_truenodeids"][i], a["nodes_falsenodeids"][i])
    leaf_w: dict[tuple[int, int], float] = {}
    for t, n, w in zip(a["class_treeids"], a["class_nodeids"], a["class_weights"], strict=True):
        leaf_w[(t, n)] = leaf_w.get((t, n), 0.0) + w
    return trees, leaf_w, float(a["base_values"][0])


def gemm_trees(model: onnx.ModelProto, n_features: int) -> onnx.ModelProto:
    """The tree ensemble as tensors: the same scores (float32 sums in another order)."""
    trees, leaf_w, base = _trees(model)
    ids = sorted(trees)
    internal = {t: sorted(n for n, v in trees[t].items() if v[0] != b"LEAF") for t in ids}
    leaves = {t: sorted(n for n, v in trees[t].items() if v[0] == b"LEAF") for t in ids}
    n_t, n_i, n_l = len(ids), max(map(len, internal.values())), max(map(len, leaves.values()))
    feat = np.zeros((n_t, n_i), dtype=np.int64)
    thr = np.zeros((n_t, n_i), dtype=np.float32)
    c = np.zeros((n_t, n_i, n_l), dtype=np.float32)
    d = np.full((n_t, 1, n_l), 1e6, dtype=np.float32)  # padded leaves are never reached
    e = np.zeros((n_t, n_l, 1), dtype=np.float32)
    for ti, t in enumerate(ids):
        nodes = trees[t]
        col = {n: j for j, n in enumerate(internal[t])}
        for j, n in enumerate(internal[t]):
            feat[ti, j], thr[ti, j] = nodes[n][1], nodes[n][2]
        for k, leaf in enumerate(leaves[t]):
            e[ti, k, 0] = leaf_w.get((t, leaf), 0.0)
        # walk down from the root: +1 under a node's true branch, -1 under its false one
        stack = [(0, [])]
        while stack:
            n, path = stack.pop()
            mode, _, _, true_id, false_id = nodes[n]
            if mode == b"LEAF":
                k = leaves[t].index(n)
                for node, sign in path:
                    c[ti, col[node], k] = sign
                d[ti, 0, k] = sum(1 for _, sign in path if sign > 0) - 0.5
                continue
            stack += [(true_id, [*path, (n, 1.0)]), (false_id, [*path, (n, -1.0)])]
    inits = [numpy_helper.from_array(feat.reshape(-1), "feat"),
             numpy_helper.from_array(thr.reshape(-1), "thr"),
             numpy_helper.from_array(np.array([-1, n_t, n_i], dtype=np.int64), "shape"),
             numpy_helper.from_array(c, "C"), numpy_helper.from_array(d, "D"),
             numpy_helper.from_array(e, "E"),
             numpy_helper.from_array(np.array([0], dtype=np.int64), "axis0"),
             numpy_helper.from_array(np.array([base], dtype=np.float32), "base"),
             numpy_helper.from_array(np.array([1.0], dtype=np.float32), "one")]
    nodes = [
        helper.make_node("Gather", ["features", "feat"], ["g"], axis=1),
        helper.make_node("LessOrEqual", ["g", "thr"], ["le"]),
        helper.make_node("Cast", ["le"], ["lef"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["lef", "shape"], ["r"]),
        helper.make_node("Transpose", ["r"], ["rt"], perm=[1, 0, 2]),
        helper.make_node("MatMul", ["rt", "C"], ["m"]),
        helper.make_node("Greater", ["m", "D"], ["hit"]),
        helper.make_node("Cast", ["hit"], ["hitf"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["hitf", "E"], ["s"]),
        helper.make_node("ReduceSum", ["s", "axis0"], ["sum"], keepdims=0),
        helper.make_node("Add", ["sum", "base"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["p"]),
        helper.make_node("Sub", ["one", "p"], ["q"]),
        helper.make_node("Concat", ["q", "p"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "streamwise_fraud_primary_gemm",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2])],
        initializer=inits)
    out = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    out.ir_version = 8
    onnx.checker.check_model(out)
    return out


def _session(blob: bytes):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(blob, sess_options=opts, providers=["CPUExecutionProvider"])


def _scores(blob: bytes, x: np.ndarray) -> np.ndarray:
    sess = _session(blob)
    return np.concatenate([sess.run(["probabilities"], {"features": x[i:i + 1000]})[0][:, 1]
                           for i in range(0, len(x), 1000)])


def _write(out: Path, version: str, blob: bytes, thresholds: dict, note: dict) -> None:
    folder = out / "primary" / version
    folder.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((PRIMARY / "model.json").read_text())
    manifest.update(version=version, sha256=hashlib.sha256(blob).hexdigest(),
                    thresholds=thresholds, metrics={}, lever=note)
    (folder / "model.onnx").write_bytes(blob)
    (folder / "model.json").write_text(json.dumps(manifest, indent=2) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=100_000, help="training events (seed 11)")
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "levers")
    args = ap.parse_args()
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.ensemble import GradientBoostingRegressor

    train = _train_module()
    names = TOPO.features.names
    primary_blob = (PRIMARY / "model.onnx").read_bytes()
    primary_t = json.loads((PRIMARY / "model.json").read_text())["thresholds"]
    if args.out.exists():
        shutil.rmtree(args.out)
    shutil.copytree(TOPO.models_dir, args.out)
    data = train.feature_rows(args.events, 11)
    x, y = data["x"], data["y"]
    n_tr = len(x) - int(round(len(x) * train.HOLDOUT_SHARE))
    teacher = _scores(primary_blob, x)

    # int8: trees -> tensors (checked equal) -> dynamic int8 quantization of the MatMuls
    gemm = gemm_trees(onnx.load_from_string(primary_blob), len(names))
    gemm_blob = gemm.SerializeToString()
    parity = float(np.max(np.abs(_scores(gemm_blob, x[:20_000]) - teacher[:20_000])))
    assert parity < 1e-5, f"tensor form differs from the trees by {parity}"
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "gemm.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(gemm_blob)
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
        int8_blob = dst.read_bytes()
    q = onnx.load_from_string(int8_blob)
    ops = sorted({n.op_type for n in q.graph.node})
    _write(args.out, "2", int8_blob, primary_t,
           {"kind": "int8 (onnxruntime quantize_dynamic, trees compiled to GEMM first)",
            "ops": ops, "tensor_form_max_abs_diff": parity})

    # distilled: a small regressor on the teacher's logit
    logit = np.log(np.clip(teacher, 1e-7, 1 - 1e-7) / np.clip(1 - teacher, 1e-7, 1))
    student = GradientBoostingRegressor(n_estimators=30, max_depth=3, learning_rate=0.3,
                                        random_state=11)
    student.fit(x[:n_tr].astype(np.float64), logit[:n_tr])
    onx = convert_sklearn(student, initial_types=[("features", FloatTensorType([None,
                                                                                len(names)]))],
                          target_opset={"": OPSET, "ai.onnx.ml": 3}, name="distilled")
    g = onx.graph
    out_name = g.output[0].name
    g.initializer.append(numpy_helper.from_array(np.array([1.0], dtype=np.float32), "one_"))
    g.node.extend([helper.make_node("Sigmoid", [out_name], ["p_"]),
                   helper.make_node("Sub", ["one_", "p_"], ["q_"]),
                   helper.make_node("Concat", ["q_", "p_"], ["probabilities"], axis=1)])
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("probabilities", TensorProto.FLOAT,
                                                  [None, 2]))
    distilled_blob = onx.SerializeToString()
    s_ho = _scores(distilled_blob, x[n_tr:])
    review, decline, how_r, how_d = train.thresholds(y[n_tr:], s_ho)
    _write(args.out, "3", distilled_blob, {"review_at": review, "decline_at": decline},
           {"kind": "distilled: GradientBoostingRegressor(30 trees, depth 3) on the primary's "
                    "logit", "thresholds": f"re-derived: {how_r}, {how_d}",
            "teacher_thresholds": primary_t})

    with tempfile.TemporaryDirectory() as tmp:
        holdout = build_holdout(TOPO, Path(tmp) / "holdout.parquet")
        results = {v: validate(TOPO, args.out, "primary", v, "1", holdout)
                   for v in ("1", "2", "3")}
    base = results["1"].report
    print(f"\n{'model':28} {'rows/s':>10} {'us/row':>7} {'AUC':>7} {'ECE':>7} "
          f"{'approve':>8} {'review':>8} {'decline':>8}  validate")
    for v, label in (("1", "primary (trees)"), ("2", "int8 (GEMM, quantized)"),
                     ("3", "distilled (30 trees)")):
        r = results[v].report
        dr = {k: r.decision_rates[k] - base.decision_rates[k] for k in r.decision_rates}
        print(f"{label:28} {r.rows_per_s_batched:10,.0f} {r.us_per_row_single:7.0f} "
              f"{r.auc:7.4f} {r.ece:7.4f} {dr['approve']:+8.4f} {dr['review']:+8.4f} "
              f"{dr['decline']:+8.4f}  {'passed' if results[v].ok else 'REJECTED: ' + '; '.join(results[v].failures)}")
    print(f"\nheld-out rows {results['1'].rows:,} ({results['1'].positives} positive); "
          f"int8 graph ops {ops}; models in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
