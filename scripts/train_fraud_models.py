#!/usr/bin/env python3
"""Train the fraud topology's two models, seeded and reproducible, and write them as ONNX.

The training rows are computed by the engine itself: the workload generator's events go through
the pipeline (validate → dedup → windows → features, agents) exactly as the live worker computes
them, and each distinct event's feature vector is read back from its decision. Rows with a missing
feature never reach a model in production (the fallback chain takes them), so they are dropped
here too. The split is by event time: the first 80% trains, the last 20% is held out.

    .venv/bin/python scripts/train_fraud_models.py [--events 200000] [--seed 11] [--out DIR]
        [--topology topologies.fraud:WITH_MERCHANT_RISK]

The models (150 trees of depth 4 as the primary), what it writes and why not seed 7: see
`model_training`. `--no-bench` skips the inference benchmark.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import model_training as training  # noqa: E402

# scripts/cost_levers.py loads this script and reads these two here
from model_training import HOLDOUT_SHARE, thresholds  # noqa: E402, F401

import topologies  # noqa: E402
from engine import Topology  # noqa: E402
from engine.pipeline import Record  # noqa: E402
from engine.testing import feed  # noqa: E402
from topologies.fraud.workload import Workload, generate  # noqa: E402

SCRIPT = "scripts/train_fraud_models.py"
CHUNK = 2_000


def feature_rows(n_events: int, seed: int, topology: str = "fraud") -> dict:
    """Run the workload through the engine's pipeline; one complete feature row per event."""
    topo = topologies.get(topology)
    w = generate(n_events, seed)
    return training.rows_from_decisions(_decisions(topo, w), topo.features.names, w.labels,
                                        topo.features.versioned_name)


def _decisions(topo: Topology, w: Workload) -> Iterator[bytes]:
    """Every decision record, in order, of one partition's pipeline over the whole workload
    (`engine.testing.feed`: the live worker's polls and agents, the reported outcomes
    applied first; the merchant features count only reports made before a payment)."""
    records = [Record("fraud.payments", 0, i, e["card_id"].encode(), orjson.dumps(e), e["ts_ms"])
               for i, e in enumerate(w.events)]
    result = feed(topo, records, profiles=w.profiles, poll_records=CHUNK,
                  side={"outcomes": w.side.get("outcomes", [])})
    yield from result.decisions.get(0, [])


def main(argv: list[str] | None = None) -> int:
    ap = training.arg_parser(__doc__, events=200_000, out=None)
    ap.add_argument("--no-bench", action="store_true", help="skip the inference benchmark")
    ap.add_argument("--topology", default="fraud",
                    help="the fraud topology to train for (default fraud; "
                         "topologies.fraud:WITH_MERCHANT_RISK: with the merchant features); "
                         "--out defaults to its models folder")
    args = training.parse_args(ap, argv)
    if args.out is None:
        args.out = topologies.get(args.topology).models_dir

    t0 = time.perf_counter()
    data = feature_rows(args.events, args.seed, args.topology)
    rows = training.split(data, t0)
    recorded = {"seed": args.seed, "n_events": args.events, "script": SCRIPT}
    summary = []
    for name, model in training.make_models(args.seed, n_estimators=150, max_depth=4).items():
        m = training.fit_and_export(name, model, data, rows,
                                    graph_name=f"streamwise_fraud_{name}", out=args.out,
                                    training=recorded)
        one, batched = ((None, None) if args.no_bench
                        else training.throughput(m.session, rows.x_ho))
        summary.append((m, one, batched))

    print()
    print(f"{'model':8} {'AUC':>6} {'AP':>6} {'review':>8} {'decline':>8} {'P@dec':>6} "
          f"{'R@dec':>6} {'R@rev':>6} {'bytes':>9} {'fit s':>6} {'1-row/s':>8} {'1000-batch/s':>12}")
    for m, one, batched in summary:
        bench = (f"{one:8.0f} {batched:12.0f}" if one is not None else f"{'-':>8} {'-':>12}")
        print(f"{m.name:8} {m.auc:6.4f} {m.ap_score:6.4f} {m.review:8.4f} {m.decline:8.4f} "
              f"{m.p_dec:6.3f} {m.r_dec:6.3f} {m.r_rev:6.3f} {m.size_bytes:9,} {m.fit_s:6.1f} "
              f"{bench}")
    print(f"\nwrote {args.out} in {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
