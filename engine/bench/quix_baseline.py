"""Baseline: an idiomatic Quix Streams application, written the way the Quix Streams docs teach.

An `Application` and a `StreamingDataFrame`: the input topic with a timestamp extractor (the
event's `ts_ms` is its event time), a tumbling 1 h window per card (the message key) with
`.agg(count=Count(), total=Sum("amount"), peak=Max("amount"), event=Last())` emitted per
message with `.current()` (`Last()` carries the event itself through the window, as the docs
propagate a field with `Latest`), one onnxruntime call per event with the primary fraud
model in `.apply()`, then `.to_topic()` of the decision. State is Quix's RocksDB store with
its changelog topic; offsets and state are committed by Quix's checkpoints (every 5 s).

The same work as the Faust baselines: one window of (count, sum, max) per card, the model's
12-feature vector with count_1h, sum_1h, mean_1h, amount and hour_of_day real and the other
7 features 0, one output record per decided event. Unlike Faust's `.current()` (broker
timestamp) the window here follows event time, Quix's own semantics: per card, an event that
falls in a window the card's newest event time has already closed (grace 0, Quix's default)
is skipped with a warning and gets no output (the harness then waits for the group's
committed offsets, not for one output per input).

Set against Quix's defaults, and why:
- `consumer_extra_config={"fetch.wait.max.ms": ...}`: the worker's fetch wait (the harness
  passes the worker's default; librdkafka's is 500 ms), as for every other row;
- `auto_offset_reset="earliest"`: the backlog is produced before the app starts;
- `state_dir`: the harness's per-run directory;
- `set_timestamp(now)` before `to_topic`: a window result carries the window start as its
  timestamp, and the harness reads the output record's timestamp as the decision time (the
  other rows' producers stamp records at send). The docs show this very call.
Everything else (at-least-once, commit interval, producer settings, RocksDB options, INFO
logging) is Quix's default.

Run: ``python -m engine.bench.quix_baseline --broker B --source T --sink T --group G
--state-dir D --fetch-max-wait-ms MS`` (stops on SIGTERM).
"""

from __future__ import annotations

import argparse
import time
from datetime import timedelta
from typing import Any

from quixstreams import Application
from quixstreams.dataframe.windows import Count, Last, Max, Sum

from .baseline_model import FraudModel, features_1h

__all__ = ["build_app", "main"]


def event_time(value: Any, headers: Any, timestamp: float, timestamp_type: Any) -> int:
    """Timestamp extractor: windows follow the event's own time, not the broker's."""
    return value["ts_ms"]


def build_app(args: argparse.Namespace, model: FraudModel) -> Application:
    """The application with its whole dataframe pipeline declared."""
    app = Application(broker_address=args.broker, consumer_group=args.group,
                      auto_offset_reset="earliest", state_dir=args.state_dir,
                      consumer_extra_config={"fetch.wait.max.ms": args.fetch_max_wait_ms})
    payments = app.topic(args.source, timestamp_extractor=event_time)
    decisions = app.topic(args.sink)

    def decide(window: dict) -> dict:
        event = window["event"]
        score = model.score_many([features_1h(window["count"], window["total"],
                                              event["amount"], event["ts_ms"])])[0]
        return {"event_id": event["event_id"], "score": score,
                "decision": model.decide(score), "consumed_at_ms": event["consumed_at_ms"]}

    sdf = app.dataframe(payments)
    sdf["consumed_at_ms"] = sdf.apply(lambda _: time.time() * 1000)
    sdf = (
        sdf.tumbling_window(timedelta(hours=1))
        .agg(count=Count(), total=Sum("amount"), peak=Max("amount"), event=Last())
        .current()
    )
    sdf = sdf.apply(decide)
    sdf = sdf.set_timestamp(lambda value, key, timestamp, headers: int(time.time() * 1000))
    sdf.to_topic(decisions)
    return app


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    for flag in ("--broker", "--source", "--sink", "--group", "--state-dir"):
        ap.add_argument(flag, required=True)
    ap.add_argument("--fetch-max-wait-ms", type=int, required=True)
    args = ap.parse_args()
    build_app(args, FraudModel()).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
