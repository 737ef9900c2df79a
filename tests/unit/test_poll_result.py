"""What one poll reports besides its records: its stage timings (ms, every event of the poll
waited for all of them) and its new decisions counted by (path, decision)."""

from __future__ import annotations

import time
from collections import Counter

import orjson

from engine.clock import ManualClock
from engine.pipeline import Pipeline, Record
from engine.policy import RulesOnly, ScoringRows, Verdict
from engine.state import MemoryStore
from topologies.fraud import TOPOLOGY

T0 = 1_767_225_600_000
SLEEP_S = 0.02


class SlowRules(RulesOnly):
    """The rules, after a nap: the inference stage lasts at least `SLEEP_S`."""

    def decide(self, rows: ScoringRows) -> list[Verdict]:
        time.sleep(SLEEP_S)
        return super().decide(rows)


def _records(partition: int, n: int, amount: float) -> list[Record]:
    out = []
    for i in range(n):
        card = f"c{partition}-{i % 3}"
        value = orjson.dumps({"event_id": f"e{partition}-{i}", "card_id": card,
                              "merchant_id": "m1", "amount": amount, "currency": "USD",
                              "country": "US", "ts_ms": T0 + i * 1_000})
        out.append(Record("fraud.events", partition, i, card.encode(), value, None))
    return out


def test_a_poll_counts_its_decisions_and_times_every_stage() -> None:
    pipe = Pipeline(TOPOLOGY, SlowRules(TOPOLOGY.rules, TOPOLOGY.features.versioned_name),
                    ManualClock(0))
    for p in (0, 1):
        pipe.open(p, MemoryStore())
    batches = {0: _records(0, 5, 25.0), 1: _records(1, 4, 6_000.0)}  # 6,000: a rule declines
    batches[0].append(batches[0][0])  # a duplicate: re-emitted, not a new decision
    poll = pipe.process(batches, {})

    decided = Counter((d["path"], d["decision"])
                      for r in poll.partitions.values()
                      for d in (orjson.loads(b) for _, b in r.decisions))
    assert poll.outcomes == Counter({("fallback:rules", "approve"): 5,
                                     ("fallback:rules", "decline"): 4})
    assert sum(decided.values()) == 10 and decided - poll.outcomes == Counter(
        {("fallback:rules", "approve"): 1})  # the duplicate's copy is not counted again

    stages = poll.stage_ms
    assert set(stages) == {"validate", "dedup", "features", "inference", "policy", "total"}
    assert all(isinstance(v, float) and v >= 0.0 for v in stages.values())
    assert stages["inference"] >= SLEEP_S * 1000  # ms, and the decider's call is in it
    assert stages["total"] >= max(v for k, v in stages.items() if k != "total")
