#!/usr/bin/env python3
"""Rows/s of batched vs one-row-per-call inference for the fraud topology's models.

Loads the committed models through the engine's registry (same sessions, threads and checks as
the worker) and scores rows of real feature vectors (the reference workload through the
pipeline). Reports medians of --repeat runs; a measurement, not a test.
Usage: .venv/bin/python scripts/bench_inference.py [--rows 20000] [--batch 1000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import orjson

import topologies
from engine.clock import ManualClock
from engine.pipeline import PartitionPipeline, Record
from engine.policy import RulesOnly
from engine.scoring.registry import ModelRegistry
from engine.state import MemoryStore
from topologies.fraud.workload import generate


def feature_rows(n: int) -> np.ndarray:
    topo = topologies.get("fraud")
    w = generate(n * 2, seed=7)
    store = MemoryStore()
    pipe = PartitionPipeline(topo, 0, store, RulesOnly(topo.rules, topo.features.versioned_name), ManualClock(0))
    rows = []
    recs = [Record("t", 0, i, e["card_id"].encode(), orjson.dumps(e), 0)
            for i, e in enumerate(w.events)]
    for i in range(0, len(recs), 2000):
        res = pipe.process(recs[i:i + 2000], w.profiles)
        store.apply(res.changes)
        for _, raw in res.decisions:
            f = orjson.loads(raw)["features"]
            if all(v is not None for v in f.values()):
                rows.append(list(f.values()))
    return np.asarray(rows[:n], dtype=np.float32)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    topo = topologies.get("fraud")
    reg = ModelRegistry(topo.models_dir, topo.features.names, topo.features.versioned_name)
    reg.refresh()
    x = feature_rows(args.rows)
    print(f"{len(x):,} complete feature rows; median of {args.repeat} runs, 1 intra-op thread")
    print(f"{'model':<12}{'per-event rows/s':>18}{'batched rows/s':>18}{'ratio':>8}")
    for name in ("primary", "backup"):
        model = reg.get(name)
        single, batched = [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            for row in x[:2000]:
                model.score_many(row[None, :])
            single.append(2000 / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            for i in range(0, len(x), args.batch):
                model.score_many(x[i:i + args.batch])
            batched.append(len(x) / (time.perf_counter() - t0))
        s, b = statistics.median(single), statistics.median(batched)
        print(f"{model.ref:<12}{s:>18,.0f}{b:>18,.0f}{b / s:>7.1f}x")
    _cheap_first(topo, reg, x, args)
    return 0


def _cheap_first(topo, reg: ModelRegistry, x: np.ndarray, args) -> None:
    """Low-risk routing: the backup scores everything, the primary only what it flags."""
    from dataclasses import replace

    from engine.clock import SystemClock
    from engine.scoring.chain import CheapFirst, FallbackChain

    names = topo.features.names
    vectors = [dict(zip(names, map(float, row), strict=True)) for row in x]
    keys, ts, late = ["k"] * len(x), [0] * len(x), [False] * len(x)
    print(f"\nlow-risk routing over {len(x):,} rows (median of {args.repeat} runs, "
          f"batches of {args.batch}):")
    for label, cheap in (("primary only", None), ("cheap first, primary if >= 0.05",
                                                   CheapFirst(primary_above=0.05))):
        settings = replace(topo.scoring, cheap_first=cheap, timeout_ms=10_000)
        chain = FallbackChain(settings, topo.rules, topo.features.versioned_name, reg.get,
                              SystemClock())
        times = []
        for _ in range(args.repeat):
            chain.stats.primary_skipped = 0
            t0 = time.perf_counter()
            for i in range(0, len(x), args.batch):
                sl = slice(i, i + args.batch)
                chain.decide_many(keys[sl], vectors[sl], ts[sl], late[sl], lambda _: None)
            times.append(time.perf_counter() - t0)
        chain.close()
        skipped = chain.stats.primary_skipped / len(x)
        print(f"  {label:<34} {len(x) / statistics.median(times):>12,.0f} rows/s, "
              f"primary skipped for {skipped:.1%} of rows")


if __name__ == "__main__":
    raise SystemExit(main())
