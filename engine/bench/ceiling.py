"""The ceiling: the fastest plain-Python path through Kafka, no state and no model.

aiokafka `getmany`, orjson-parse each event, one small output record per event through the
producer's batch API (`create_batch`/`send_batch`), await the sends, commit the offsets: the
same consume → produce → commit order as the Streamwise worker, minus everything in between.
Run as its own process: ``python -m engine.bench.ceiling --broker B --source T --sink T
--group G --fetch-max-wait-ms MS`` (stops on SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time

import orjson
from aiokafka import TopicPartition

from engine.kafka_io import new_consumer, new_producer, send_records

__all__ = ["run"]


async def run(bootstrap: str, source: str, sink: str, group: str, fetch_max_wait_ms: int,
              max_records: int = 2000) -> None:
    """Consume `source`, produce one record per event to `sink` (same partition), commit."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Producer and consumer settings as the worker's, so only the work in between differs.
    producer = new_producer(bootstrap, acks="all", enable_idempotence=True,
                            max_batch_size=1 << 20, max_request_size=4 << 20, linger_ms=0)
    consumer = new_consumer(bootstrap, source, group_id=group,
                            enable_auto_commit=False, auto_offset_reset="earliest",
                            fetch_max_wait_ms=fetch_max_wait_ms,
                            max_partition_fetch_bytes=4 << 20)
    await producer.start()
    await consumer.start()
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=max_records)
            if not batches:
                continue
            consumed_ms = time.time() * 1000
            futures = []
            for tp, msgs in batches.items():
                out = []
                for m in msgs:
                    event = orjson.loads(m.value)
                    out.append((m.key, orjson.dumps({"event_id": event["event_id"],
                                                     "consumed_at_ms": consumed_ms}), []))
                futures += await send_records(producer, sink, tp.partition, out)
            await asyncio.gather(*(f for f, _ in futures))
            await consumer.commit({TopicPartition(tp.topic, tp.partition): msgs[-1].offset + 1
                                   for tp, msgs in batches.items() if msgs})
    finally:
        await consumer.stop()
        await producer.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--broker", required=True)
    ap.add_argument("--source", required=True)
    ap.add_argument("--sink", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--fetch-max-wait-ms", type=int, required=True)
    args = ap.parse_args()
    asyncio.run(run(args.broker, args.source, args.sink, args.group,
                    fetch_max_wait_ms=args.fetch_max_wait_ms))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
