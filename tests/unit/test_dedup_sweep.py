"""The dedup sweep (engine/pipeline/sweep.py), pinned by the exact state changes of each batch:
which seen-id entries and expiry records a batch deletes or rewrites, under its id budget, at
most once a minute of event time, and never an id seen again since its record was written."""

from __future__ import annotations

import orjson

from engine.clock import ManualClock
from engine.pipeline import PartitionPipeline, Record
from engine.pipeline.sweep import DEDUP_SWEEP_EVERY_MS
from engine.policy import RulesOnly
from engine.state import MemoryStore, layout
from topologies.fraud import TOPOLOGY

T0 = 1_767_225_600_000
DAY = 86_400_000  # the fraud topology's dedup TTL
assert TOPOLOGY.dedup_ttl_ms == DAY


class Partition:
    """One partition's pipeline over a memory store; each `poll` is one batch."""

    def __init__(self) -> None:
        self.store = MemoryStore()
        self.pipe = PartitionPipeline(TOPOLOGY, 0, self.store,
                                      RulesOnly(TOPOLOGY.rules, TOPOLOGY.features.versioned_name),
                                      ManualClock(0))
        self.offset = 0

    def poll(self, events: list[tuple[str, int]], budget: int = 4096) -> dict:
        """(event id, event time ms) each on its own card; returns the batch's changes to
        seen ids and expiry records."""
        self.pipe.state.dedup_sweep_ids = budget
        recs = []
        for eid, ts in events:
            value = orjson.dumps({"event_id": eid, "card_id": f"c-{eid}", "merchant_id": "m1",
                                  "amount": 10.0, "currency": "EUR", "country": "FR",
                                  "ts_ms": ts})
            recs.append(Record("fraud.events", 0, self.offset, f"c-{eid}".encode(), value, ts))
            self.offset += 1
        result = self.pipe.process(recs, {})
        self.store.apply(result.changes)
        return {k: v for k, v in result.changes.items()
                if k.startswith((layout.SEEN, layout.EXPIRY))}

    def cutoff(self) -> int:
        return self.pipe.state.dedup.cutoff(self.pipe.watermark.watermark_ms)

    def seen(self) -> set[str]:
        return {k[len(layout.SEEN):].decode()
                for k, _ in self.store.items_between(layout.SEEN, layout.SEEN + b"\xff")}

    def expiry(self) -> dict[bytes, list[str]]:
        return {k: layout.unpack_expiry(v)
                for k, v in self.store.items_between(layout.EXPIRY, layout.EXPIRY + b"\xff")}


def _batches(p: Partition, name: str, n: int, size: int, t: int) -> list[bytes]:
    """`n` batches of `size` ids, one second apart from `t`; their expiry record keys."""
    keys = []
    for b in range(n):
        before = set(p.expiry())
        p.poll([(f"{name}{b}-{i}", t + b * 1_000) for i in range(size)])
        (key,) = set(p.expiry()) - before
        keys.append(key)
    return keys


def _only_sweep(changes: dict, *new_ids: str) -> dict:
    """The changes without the batch's own new entries (the ids it decided, its record)."""
    own = {layout.seen_key(e) for e in new_ids}
    return {k: v for k, v in changes.items() if k not in own
            and not (k.startswith(layout.EXPIRY) and v is not None
                     and set(layout.unpack_expiry(v)) <= set(new_ids))}


def test_a_sweep_deletes_the_oldest_expired_ids_up_to_its_budget_and_goes_on_next_batch():
    p = Partition()
    keys = _batches(p, "a", n=4, size=5, t=T0)
    far = T0 + DAY + 120_000  # every "a" id is past the TTL at this watermark
    # budget 7: the first record whole, 2 ids of the second, whose record keeps the other 3
    got = _only_sweep(p.poll([("n1", far)], budget=7), "n1")
    assert got == {**{layout.seen_key(f"a0-{i}"): None for i in range(5)}, keys[0]: None,
                   layout.seen_key("a1-0"): None, layout.seen_key("a1-1"): None,
                   keys[1]: layout.pack_expiry(["a1-2", "a1-3", "a1-4"])}
    # one second later: under a minute past nothing completed yet, the sweep goes on. Budget
    # 8: the 3 left of the second record and the whole third (exactly the budget), and the
    # fourth is not touched (not even rewritten as it is)
    got = _only_sweep(p.poll([("n2", far + 1_000)], budget=8), "n2")
    assert got == {**{layout.seen_key(f"a1-{i}"): None for i in (2, 3, 4)}, keys[1]: None,
                   **{layout.seen_key(f"a2-{i}"): None for i in range(5)}, keys[2]: None}
    # budget 6: the last record whole, with one id of budget to spare, and the sweep is done
    got = _only_sweep(p.poll([("n3", far + 2_000)], budget=6), "n3")
    assert got == {**{layout.seen_key(f"a3-{i}"): None for i in range(5)}, keys[3]: None}
    assert p.seen() == {"n1", "n2", "n3"}
    assert all(set(ids) <= {"n1", "n2", "n3"} for ids in p.expiry().values())


def test_a_budget_of_one_id_still_makes_progress():
    p = Partition()
    keys = _batches(p, "a", n=1, size=3, t=T0)
    far = T0 + DAY + 120_000
    for i in range(3):
        got = _only_sweep(p.poll([(f"n{i}", far + i)], budget=1), f"n{i}")
        rest = [f"a0-{j}" for j in range(i + 1, 3)]
        assert got == {layout.seen_key(f"a0-{i}"): None,
                       keys[0]: layout.pack_expiry(rest) if rest else None}


def test_after_a_completed_sweep_the_next_starts_a_minute_of_event_time_later():
    p = Partition()
    _batches(p, "a", n=1, size=2, t=T0)
    far = T0 + DAY + 120_000
    p.poll([("n0", far)])  # sweeps "a" completely
    assert p.seen() == {"n0"}
    done_at = p.cutoff()
    # ids whose record expires just after that sweep's cutoff
    (key,) = _batches(p, "b", n=1, size=2, t=done_at + 1_000)
    # the watermark moves so that the cutoff passes them, but by less than a minute: no sweep
    wm_ts = done_at + 5_000 + DAY + (far - p.cutoff() - DAY)  # the event time giving that cutoff
    got = _only_sweep(p.poll([("n1", wm_ts)]), "n1")
    assert p.cutoff() - done_at < DEDUP_SWEEP_EVERY_MS
    assert got == {} and {"b0-0", "b0-1"} <= p.seen()
    # exactly a minute past the completed sweep's cutoff: this batch sweeps them
    got = _only_sweep(p.poll([("n2", wm_ts + DEDUP_SWEEP_EVERY_MS - 5_000)]), "n2")
    assert p.cutoff() - done_at == DEDUP_SWEEP_EVERY_MS
    assert got == {layout.seen_key("b0-0"): None, layout.seen_key("b0-1"): None, key: None}


def test_an_id_decided_again_after_its_ttl_keeps_its_new_entry_when_its_old_record_is_swept():
    far = T0 + DAY + 120_000  # past the TTL of T0
    # decided again in the very batch that sweeps its old record (the new entry is a change
    # of that batch, the store still holds the old one)
    p = Partition()
    (key,) = _batches(p, "a", n=1, size=2, t=T0)
    got = _only_sweep(p.poll([("n0", far), ("a0-0", far)]), "n0", "a0-0")
    assert got == {layout.seen_key("a0-1"): None, key: None}
    assert layout.unpack_seen(p.store.get(layout.seen_key("a0-0"))).ts_ms == far
    # decided again in an earlier batch than the sweep (a budget of 0 sweeps nothing)
    p = Partition()
    (key,) = _batches(p, "a", n=1, size=2, t=T0)
    assert _only_sweep(p.poll([("n0", far), ("a0-0", far)], budget=0), "n0", "a0-0") == {}
    got = _only_sweep(p.poll([("n1", far + 1)]), "n1")
    assert got == {layout.seen_key("a0-1"): None, key: None}
    assert layout.unpack_seen(p.store.get(layout.seen_key("a0-0"))).ts_ms == far
