"""Baseline: an idiomatic per-event faust-streaming agent, written the way the Faust docs teach.

Per event: read and update a tumbling 1 h window of (count, sum, max) amount per card in a
`rocksdb://` table (`table[key].current()`, then assignment: one changelog record per write),
one onnxruntime call for that one event with the primary fraud model, one `topic.send` of the
decision. Offsets are acked per event and committed by Faust (every `commit_interval`).

What it does *not* do, in its favour: no dedup, no lateness, no card profiles and no 10 min
window. The 12-feature vector carries count_1h, sum_1h, mean_1h, amount and hour_of_day;
the other 7 features are 0. Windows follow the message's broker timestamp (what `.current()`
uses), not the event's `ts_ms`: event-time windows would be expired against wall-clock time
(DESIGN §6).

Tuning: Faust's aiokafka driver hard-codes ``fetch_max_wait_ms=1500`` and has no setting for
it; `_tune_fetch_wait` sets the consumer's value to the worker's (`--fetch-max-wait-ms`, the
harness passes the worker's default) after Faust builds it.
The worker logs at INFO, as the docs run it (see `main`). Everything else is Faust's defaults.

Run: ``python -m engine.bench.faust_baseline --broker B --source T --sink T --app-id ID
--data-dir D --fetch-max-wait-ms MS [--batched]`` (stops on SIGTERM).
"""

from __future__ import annotations

import argparse
import time
from datetime import timedelta
from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka

from .baseline_model import FraudModel, features_1h

__all__ = ["Payment", "build_app", "main"]

WINDOW_S = 3600


class Payment(faust.Record, serializer="json"):
    event_id: str
    card_id: str
    merchant_id: str
    amount: float
    currency: str
    country: str
    ts_ms: int


def _tune_fetch_wait(fetch_max_wait_ms: int) -> None:
    original = faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer

    def create(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = fetch_max_wait_ms  # read by consumer.start()
        return consumer

    faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer = create


def build_app(args: argparse.Namespace) -> tuple[faust.App, Any, Any, Any]:
    """The app, its input and output topics and the windowed table."""
    app = faust.App(args.app_id, broker=f"kafka://{args.broker}", store="rocksdb://",
                    datadir=args.data_dir, web_enabled=False,
                    topic_partitions=args.partitions, topic_replication_factor=1,
                    consumer_auto_offset_reset="earliest")
    source = app.topic(args.source, key_serializer="raw", value_type=Payment)
    sink = app.topic(args.sink, key_serializer="raw", value_serializer="json")
    table = app.Table("card_amounts_1h", default=lambda: [0, 0.0, 0.0],
                      partitions=args.partitions).tumbling(
        WINDOW_S, expires=timedelta(seconds=2 * WINDOW_S))
    return app, source, sink, table


def per_event_agent(app: faust.App, source: Any, sink: Any, table: Any,
                    model: FraudModel) -> None:
    @app.agent(source)
    async def score(stream):
        async for payment in stream:
            consumed_ms = time.time() * 1000
            count, total, peak = table[payment.card_id].current()
            count, total, peak = count + 1, total + payment.amount, max(peak, payment.amount)
            table[payment.card_id] = [count, total, peak]
            s = model.score_many([features_1h(count, total, payment.amount, payment.ts_ms)])[0]
            await sink.send(key=payment.card_id.encode(), value={
                "event_id": payment.event_id, "score": s, "decision": model.decide(s),
                "consumed_at_ms": consumed_ms})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    for flag in ("--broker", "--source", "--sink", "--app-id", "--data-dir"):
        ap.add_argument(flag, required=True)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--fetch-max-wait-ms", type=int, required=True)
    ap.add_argument("--batched", action="store_true", help="take_events(1000, within=0.05)")
    args = ap.parse_args()
    _tune_fetch_wait(args.fetch_max_wait_ms)
    app, source, sink, table = build_app(args)
    model = FraudModel()
    if args.batched:
        from .faust_batched import batched_agent
        batched_agent(app, source, sink, table, model)
    else:
        per_event_agent(app, source, sink, table, model)
    # INFO, as the Faust docs run workers: at WARNING and above Faust turns its terminal
    # spinner on, which sets the root logger to DEBUG so every debug call builds a record.
    worker = faust.Worker(app, loglevel="INFO", quiet=True)
    worker.execute_from_commandline()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
