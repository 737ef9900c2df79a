#!/usr/bin/env python
"""Restore time of a worker's state from its changelog (#13 item 6), measured with the worker's
own code: `engine.worker.changelog.restore` into `RocksStore`s with the worker's checkpoints,
partition after partition as `Worker.on_assigned` does, against a real broker and RocksDB.

    .venv/bin/python scripts/bench_restore.py [--keys 1000000] [--partitions 8] [--broker H:P]

Without --broker a private broker is started (scripts/kafka-local.sh, free ports, stopped at
the end). The changelog holds `--keys` distinct keys in the state layout's proportions (tiles
of 48 bytes, entities and decided-event records of ~300 bytes), in batches of 2,000 records
with the worker's end markers. Three measurements:

1. full: every key from an empty directory (a new worker, a lost disk);
2. after a crash: a process restores them all (checkpointing as a worker does: every 100,000
   changes or 10 s), then is SIGKILLed; the restore that follows replays only the changelog
   written after its last checkpoint;
3. after a clean stop: nothing to replay.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiokafka import AIOKafkaProducer  # noqa: E402
from prometheus_client import CollectorRegistry, Counter, Gauge  # noqa: E402

from engine.kafka_io import TopicSpec, ensure_topics  # noqa: E402
from engine.state import Checkpoints, RocksStore  # noqa: E402
from engine.worker.changelog import changelog_records, restore  # noqa: E402

BATCH = 2_000
TOPIC = "bench-restore.changelog"


def _changes(keys: int, partitions: int, seed: int = 5):
    """(partition, {key: value}) batches: `keys` distinct keys, 60% tiles, 10% entities, 30%
    decided-event records."""
    rng = random.Random(seed)
    per = [[] for _ in range(partitions)]
    for i in range(keys):
        kind = rng.random()
        if kind < 0.6:
            key, value = b"t/velocity.v1.60000/\x00\x07c%06d%08d" % (i % 100_000, i), \
                rng.randbytes(48)
        elif kind < 0.7:
            key, value = b"e/\x00\x07c%06d-%d" % (i % 100_000, i), rng.randbytes(300)
        else:
            key, value = b"d/ev-%012d" % i, rng.randbytes(320)
        per[i % partitions].append((key, value))
    for p, items in enumerate(per):
        for lo in range(0, len(items), BATCH):
            yield p, dict(items[lo:lo + BATCH])


async def _produce(broker: str, keys: int, partitions: int) -> None:
    await ensure_topics(broker, [TopicSpec(TOPIC, partitions, {"cleanup.policy": "compact"})],
                        1, must_exist=())
    producer = AIOKafkaProducer(bootstrap_servers=broker, acks="all", linger_ms=20,
                                max_batch_size=1 << 20, max_request_size=4 << 20)
    await producer.start()
    try:
        futures = []
        for p, changes in _changes(keys, partitions):
            for key, value, headers in changelog_records(changes):
                futures.append(await producer.send(TOPIC, value, key=key, partition=p,
                                                   headers=headers))
            if len(futures) > 50_000:
                await asyncio.gather(*futures)
                futures = []
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def _restore_all(broker: str, data: Path, partitions: int,
                       crash: bool = False) -> tuple[float, int]:
    """Restore every partition in turn (as on_assigned does); seconds and records applied.
    `crash`: SIGKILL this process right after, without closing the stores."""
    registry = CollectorRegistry()
    restored = Counter("restored", "", registry=registry)
    restoring = Gauge("restoring", "", registry=registry)
    t0 = time.perf_counter()
    applied = 0
    stores = []
    for p in range(partitions):
        store = RocksStore(data / f"p{p:04d}", Checkpoints())
        stores.append(store)
        applied += await restore(broker, TOPIC, p, store, restored, restoring)
    seconds = time.perf_counter() - t0
    if crash:
        print(f"{seconds:.2f} {applied}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    for store in stores:
        store.close()
    return seconds, applied


def _child(broker: str, data: str, partitions: int) -> None:
    asyncio.run(_restore_all(broker, Path(data), partitions, crash=True))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--broker", help="an existing broker (default: start a private one)")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.child[0], args.child[1], args.partitions)
        return 0
    broker = None
    bootstrap = args.broker
    if bootstrap is None:
        from engine.bench.broker import LocalBroker
        broker = LocalBroker()
        bootstrap = broker.start()
    work = Path(tempfile.mkdtemp(prefix="streamwise-restore-"))
    try:
        t0 = time.perf_counter()
        asyncio.run(_produce(bootstrap, args.keys, args.partitions))
        print(f"changelog: {args.keys:,} keys in {args.partitions} partitions, written in "
              f"{time.perf_counter() - t0:.1f} s")
        seconds, applied = asyncio.run(_restore_all(bootstrap, work / "full", args.partitions))
        print(f"1. full restore (empty directory): {applied:,} records in {seconds:.1f} s "
              f"({applied / seconds:,.0f} records/s)")
        child = subprocess.run([sys.executable, __file__, "--partitions", str(args.partitions),
                                "--child", bootstrap, str(work / "crash")],
                               capture_output=True, text=True, timeout=3600, check=False)
        if child.returncode != -signal.SIGKILL:
            print(child.stderr, file=sys.stderr)
            return 1
        seconds, applied = asyncio.run(_restore_all(bootstrap, work / "crash",
                                                    args.partitions))
        print(f"2. restore after a SIGKILL (checkpoints every 100,000 changes or 10 s): "
              f"{applied:,} records replayed in {seconds:.1f} s")
        seconds, applied = asyncio.run(_restore_all(bootstrap, work / "crash",
                                                    args.partitions))
        print(f"3. restore after a clean stop: {applied:,} records replayed in "
              f"{seconds:.1f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if broker is not None:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
