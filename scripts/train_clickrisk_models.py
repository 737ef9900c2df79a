#!/usr/bin/env python3
"""Train the clickrisk topology's two models, seeded and reproducible, and write them as ONNX.

The training rows are computed by the engine itself: the workload generator's events go through
`engine.testing.feed` (validate → dedup → event-time reorder → tumbling and hopping windows →
features), the same pipeline a live worker runs, with 4 partitions keyed by user, and each
distinct event's feature vector is read back from its decision. Rows with a missing feature
never reach a model in production (the fallback chain takes them), so they are dropped here
too. The split is by event time: the first 80% trains, the last 20% is held out.

    .venv/bin/python scripts/train_clickrisk_models.py [--events 150000] [--seed 11] [--out DIR]

The models (80 trees of depth 3 as the primary; the manifests also record the partitions),
what it writes and why not seed 7: see `model_training`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import model_training as training  # noqa: E402

import topologies  # noqa: E402
from engine.testing import feed, records_of  # noqa: E402
from topologies.clickrisk.workload import generate  # noqa: E402

SCRIPT = "scripts/train_clickrisk_models.py"
TOPOLOGY = "topologies.clickrisk:TOPOLOGY"  # by module path: works before a reinstall too
PARTITIONS = 4


def feature_rows(n_events: int, seed: int) -> dict:
    """Run the workload through the engine's pipeline; one complete feature row per event."""
    topo = topologies.get(TOPOLOGY)
    w = generate(n_events, seed)
    # `feed` drains the reorder buffers: every distinct event is decided
    out = feed(topo, records_of(topo, w.events, PARTITIONS), poll_records=2_000)
    decisions = (body for p in sorted(out.decisions) for body in out.decisions[p])
    return training.rows_from_decisions(decisions, topo.features.names, w.labels,
                                        topo.features.versioned_name)


def main(argv: list[str] | None = None) -> int:
    ap = training.arg_parser(__doc__, events=150_000,
                             out=ROOT / "topologies" / "clickrisk" / "models")
    args = training.parse_args(ap, argv)

    t0 = time.perf_counter()
    data = feature_rows(args.events, args.seed)
    rows = training.split(data, t0)
    recorded = {"seed": args.seed, "n_events": args.events, "script": SCRIPT,
                "partitions": PARTITIONS}

    print(f"\n{'model':8} {'AUC':>6} {'AP':>6} {'review':>8} {'decline':>8} {'P@dec':>6} "
          f"{'R@dec':>6} {'R@rev':>6} {'bytes':>9}")
    for name, model in training.make_models(args.seed, n_estimators=80, max_depth=3).items():
        m = training.fit_and_export(name, model, data, rows,
                                    graph_name=f"streamwise_clickrisk_{name}", out=args.out,
                                    training=recorded)
        print(f"{name:8} {m.auc:6.4f} {m.ap_score:6.4f} {m.review:8.4f} {m.decline:8.4f} "
              f"{m.p_dec:6.3f} {m.r_dec:6.3f} {m.r_rev:6.3f} {m.size_bytes:9,}")
    print(f"\nwrote {args.out} in {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
