"""Baseline, batched: the same Faust app, the best idiomatic way to batch it.

`stream.take_events(1000, within=0.05)`; per batch one table read and one table write per
card, one onnxruntime call, then one `topic.send` per event (Faust has no batch send).
`take_events` fills its buffer from another task, so the agent's task has no current event;
each card's write is made under that card's last event (so the window and the changelog
partition are the card's, as in the per-event agent).
"""

from __future__ import annotations

import time
from typing import Any

import faust

from .baseline_model import FraudModel, features_1h

__all__ = ["batched_agent"]

BATCH_EVENTS = 1000
BATCH_WITHIN_S = 0.05


def batched_agent(app: faust.App, source: Any, sink: Any, table: Any,
                  model: FraudModel) -> None:
    @app.agent(source)
    async def score_batches(stream):
        async for events in stream.take_events(BATCH_EVENTS, within=BATCH_WITHIN_S):
            consumed_ms = time.time() * 1000
            aggs: dict[str, list] = {}
            last_event: dict[str, Any] = {}
            rows = []
            for event in events:
                p = event.value
                agg = aggs.get(p.card_id)
                if agg is None:
                    agg = list(table[p.card_id].current(event))
                count, total, peak = agg
                agg = aggs[p.card_id] = [count + 1, total + p.amount, max(peak, p.amount)]
                last_event[p.card_id] = event
                rows.append(features_1h(count + 1, total + p.amount, p.amount, p.ts_ms))
            for card, agg in aggs.items():
                stream._set_current_event(last_event[card])  # noqa: SLF001 (see docstring)
                table[card] = agg
            stream._set_current_event(None)  # noqa: SLF001
            scores = model.score_many(rows)
            for event, s in zip(events, scores, strict=True):
                p = event.value
                await sink.send(key=p.card_id.encode(), value={
                    "event_id": p.event_id, "score": s, "decision": model.decide(s),
                    "consumed_at_ms": consumed_ms})
