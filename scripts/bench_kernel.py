#!/usr/bin/env python
"""The tile kernel, compiled vs the Python reference, on the fraud topology's windows.

    python scripts/bench_kernel.py [--events 200000] [--batch 2000] [--seed 7]

Stream: `topologies.fraud.workload.generate(events, seed)` without its duplicates (dedup drops
them before the kernel), entity = card_id, value = amount, distinct = merchant_id; per batch
each missing card is loaded empty, then one `fold_read` and `expire`, and the changed tiles
become store writes (compiled: `drain_packed`; reference: `drain` packed by
`engine.state.layout`, as the pipeline does it). An event older
than the newest time seen less the topology's lateness (60 s) is late: not folded, its horizon
(and every batch's expiry) the newest time less lateness and the 1 h retention.

Printed per implementation (each in a process of its own): µs/event of `fold_read` over the
first and the last tenth of the batches (windows filling; windows full), µs/event of the whole
batch (load, fold_read, expire, store writes), the entities and tiles held at the end, the peak
memory the kernel's state took: a second, untimed pass under tracemalloc (Python objects the
kernel allocated) plus, for the compiled kernel, its C++ bytes (`memory_bytes`) at their peak.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import tracemalloc

import numpy as np

MINUTE, HOUR = 60_000, 3_600_000
NO_TS = -(1 << 63)


def batches(n_events: int, seed: int, batch: int, lateness_ms: int, retain_ms: int) -> list:
    from topologies.fraud.workload import generate

    events, seen = [], set()
    for e in generate(n_events, seed=seed).events:
        if e["event_id"] not in seen:
            seen.add(e["event_id"])
            events.append(e)
    out, max_ts = [], NO_TS
    for lo in range(0, len(events), batch):
        chunk = events[lo:lo + batch]
        horizon = np.full(len(chunk), NO_TS, dtype=np.int64)
        fold = np.ones(len(chunk), dtype=bool)
        for i, e in enumerate(chunk):
            if e["ts_ms"] < max_ts - lateness_ms:
                fold[i] = False
                horizon[i] = max_ts - lateness_ms - retain_ms
            max_ts = max(max_ts, e["ts_ms"])
        out.append(([e["card_id"] for e in chunk],
                    np.array([e["ts_ms"] for e in chunk], dtype=np.int64),
                    np.array([e["amount"] for e in chunk], dtype=np.float64),
                    [e["merchant_id"] for e in chunk], fold, horizon,
                    max_ts - lateness_ms - retain_ms))
    return out


def run_one(impl: str, n_events: int, seed: int, batch: int) -> dict:
    from engine.kernel import ReferenceTileState, TileState
    from engine.kernel.specs import window_specs
    from engine.state import layout
    from topologies.fraud import TOPOLOGY, VELOCITY

    lateness = TOPOLOGY.time.max_out_of_orderness_ms + TOPOLOGY.time.allowed_lateness_ms
    stream = batches(n_events, seed, batch, lateness, VELOCITY.retain_ms)
    make = TileState if impl == "compiled" else ReferenceTileState
    windows = window_specs(TOPOLOGY, VELOCITY)
    prefix = layout.table_prefix(VELOCITY.name, 1, VELOCITY.tile_ms)

    def writes(k) -> list:
        if impl == "compiled":
            return k.drain_packed(prefix)
        return [(layout.tile_key(prefix, e.encode(), s), None if t is None else layout.pack_tile(t))
                for e, s, t in k.drain()]

    def run(timed: bool):
        k = make(VELOCITY.tile_ms, windows, VELOCITY.distinct_field is not None)
        fold_ns, batch_ns, cxx_peak = [], [], 0
        for ents, ts, amounts, merchants, fold, horizon, expiry in stream:
            n = len(ents)
            out = np.empty((n, k.width))
            prev = np.empty(n, dtype=np.int64)
            t0 = time.perf_counter_ns()
            for e in k.missing(ents):
                k.load(e, None, ())
            t1 = time.perf_counter_ns()
            k.fold_read(ents, ts, amounts, merchants, fold, horizon, out, prev)
            t2 = time.perf_counter_ns()
            k.expire(expiry)
            writes(k)
            t3 = time.perf_counter_ns()
            fold_ns.append(t2 - t1)
            batch_ns.append(t3 - t0)
            if not timed and hasattr(k, "memory_bytes"):
                cxx_peak = max(cxx_peak, k.memory_bytes())
        return k, fold_ns, batch_ns, cxx_peak

    k, fold_ns, batch_ns, _ = run(timed=True)
    del k
    tracemalloc.start()
    k, _, _, cxx_peak = run(timed=False)
    py_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    sizes = [len(b[0]) for b in stream]
    late = sum(int((~b[4]).sum()) for b in stream)
    tenth = max(1, len(sizes) // 10)

    def us_per_event(ns: list[int], part: slice) -> float:
        return round(sum(ns[part]) / 1e3 / sum(sizes[part]), 3)

    tiles = sum(len(k.snapshot(e)[1]) for e in {e for b in stream for e in b[0]} if e in k)
    result = {
        "impl": impl, "events": sum(sizes), "late": late, "batches": len(sizes),
        "fold_read_us_start": us_per_event(fold_ns, slice(0, tenth)),
        "fold_read_us_end": us_per_event(fold_ns, slice(-tenth, None)),
        "fold_read_us_all": us_per_event(fold_ns, slice(None)),
        "batch_us_start": us_per_event(batch_ns, slice(0, tenth)),
        "batch_us_end": us_per_event(batch_ns, slice(-tenth, None)),
        "entities_end": len(k), "tiles_end": tiles,
        "peak_mb": round((py_peak + cxx_peak) / 2 ** 20, 1),
    }
    if hasattr(k, "memory_bytes"):
        result["kernel_bytes_per_tile"] = round(k.memory_bytes() / max(tiles, 1), 1)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=2_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--impl", choices=["compiled", "reference"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.impl:  # a child: one implementation, a JSON line out
        print(json.dumps(run_one(args.impl, args.events, args.seed, args.batch)))
        return
    rows = []
    for impl in ("compiled", "reference"):
        child = subprocess.run(
            [sys.executable, __file__, "--impl", impl, "--events", str(args.events),
             "--batch", str(args.batch), "--seed", str(args.seed)],
            capture_output=True, text=True)
        if child.returncode:
            sys.exit(f"bench_kernel: the {impl} run failed:\n{child.stderr}")
        rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
    c, r = rows
    print(f"fraud windows (sliding 10 min, sliding 1 h + distinct merchants; 60 s tiles): "
          f"{c['events']:,} events, {c['late']:,} late, batches of {args.batch:,}")
    print(f"{'':<30}{'compiled':>12}{'reference':>12}{'speed-up':>10}")
    for key, label in [("fold_read_us_start", "fold_read µs/event, start"),
                       ("fold_read_us_end", "fold_read µs/event, full"),
                       ("fold_read_us_all", "fold_read µs/event, all"),
                       ("batch_us_start", "whole batch µs/event, start"),
                       ("batch_us_end", "whole batch µs/event, full")]:
        print(f"{label:<30}{c[key]:>12.3f}{r[key]:>12.3f}{r[key] / c[key]:>9.0f}x")
    for key, label in [("entities_end", "entities held at the end"),
                       ("tiles_end", "tiles held at the end"),
                       ("peak_mb", "peak memory, MiB")]:
        print(f"{label:<30}{c[key]:>12,}{r[key]:>12,}")
    print(f"{'kernel bytes per tile':<30}{c['kernel_bytes_per_tile']:>12}"
          f"{'':>12}  (C++ side: tiles, spare room, expiry index)")


if __name__ == "__main__":
    main()
