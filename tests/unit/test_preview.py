"""Online preview (engine/pipeline/preview.py) of several events in one call, by value: what
the decider is given (each row's entity, time, lateness and last stored decision), what each
event gets back (a stored decision for a duplicate, a fresh one otherwise, with the preview's
own stages and the request's time), and that an expired id is decided again."""

from __future__ import annotations

import orjson

from engine.clock import ManualClock
from engine.pipeline import PartitionPipeline, Record
from engine.policy import RulesOnly, ScoringRows, Verdict
from engine.schemas import EventDecoder
from engine.state import MemoryStore, layout
from topologies.fraud import TOPOLOGY

T0 = 1_767_225_600_000
DAY = 86_400_000
NOW = 1_800_000_000_000
DECODER = EventDecoder(TOPOLOGY.schema, ("card_id", "event_id"), TOPOLOGY.max_record_bytes)


class Recording(RulesOnly):
    """The rules, noting what each call was given."""

    def __init__(self) -> None:
        super().__init__(TOPOLOGY.rules, TOPOLOGY.features.versioned_name)
        self.calls: list[list[tuple]] = []

    def decide(self, rows: ScoringRows) -> list[Verdict]:
        self.calls.append([(rows.keys[i], rows.ts_ms[i], rows.late[i],
                            rows.last_decision(rows.keys[i])) for i in range(len(rows))])
        return super().decide(rows)


def _payment(eid: str, card: str, ts: int) -> bytes:
    return orjson.dumps({"event_id": eid, "card_id": card, "merchant_id": "m1", "amount": 25.0,
                         "currency": "USD", "country": "US", "ts_ms": ts})


def _stream(store: MemoryStore, values: list[bytes], sweep_ids: int = 4096) -> PartitionPipeline:
    pipe = PartitionPipeline(TOPOLOGY, 0, store,
                             RulesOnly(TOPOLOGY.rules, TOPOLOGY.features.versioned_name),
                             ManualClock(NOW))
    pipe.state.dedup_sweep_ids = sweep_ids
    for i, value in enumerate(values):
        card = orjson.loads(value)["card_id"].encode()
        store.apply(pipe.process([Record("fraud.events", 0, i, card, value, None)], {}).changes)
    return pipe


def test_a_preview_of_several_events_decides_each_as_the_stream_would_next() -> None:
    store = MemoryStore()
    pipe = _stream(store, [_payment("e1", "c1", T0), _payment("e2", "c2", T0 + 1_000)])
    stored_e1 = layout.unpack_seen(store.get(layout.seen_key("e1"))).decision
    last_c1, last_c2 = (layout.unpack_entity(store.get(layout.entity_key(c)))[1]
                        for c in (b"c1", b"c2"))
    assert last_c1 and last_c2
    before = dict(store.items_between(b"", b"\xff"))
    events = [DECODER.decode(v) for v in (
        _payment("e1", "c1", T0),                # decided before: its stored decision
        _payment("e3", "c1", T0 + 2_000),        # c1's second event
        _payment("e4", "c2", T0 - 600_000),      # 10 min behind: late
        _payment("e5", "c9", T0 + 3_000))]       # an entity never seen
    decider = Recording()
    out = pipe.preview(events, {}, decider)

    assert dict(store.items_between(b"", b"\xff")) == before  # changes nothing
    assert out[0].duplicate and out[0].decision == stored_e1
    assert not any(p.duplicate for p in out[1:])
    (call,) = decider.calls  # one decider call for every event that is not a duplicate
    assert call == [((0, "c1"), T0 + 2_000, False, last_c1),
                    ((0, "c2"), T0 - 600_000, True, last_c2),
                    ((0, "c9"), T0 + 3_000, False, None)]
    docs = [orjson.loads(p.decision) for p in out[1:]]
    assert [d["event_id"] for d in docs] == ["e3", "e4", "e5"]
    for d in docs:
        assert set(d["stage_ms"]) == {"validate_dedup_features", "inference"}
        assert d["decided_at_ms"] == NOW
    assert [d["reasons"][0] == "late_event" for d in docs] == [False, True, False]
    # each with itself folded in, but the late one (without itself: c2 has nothing that early)
    assert [d["features"]["count_10m"] for d in docs] == [2, 0, 1]


def test_an_id_past_its_ttl_is_decided_again_not_answered_from_the_store() -> None:
    store = MemoryStore()
    pipe = _stream(store, [_payment("e1", "c1", T0), _payment("e2", "c2", T0 + DAY + 120_000)],
                   sweep_ids=0)  # no sweep: e1's entry stays stored, expired all the same
    assert store.get(layout.seen_key("e1")) is not None
    (again,) = pipe.preview([DECODER.decode(_payment("e1", "c1", T0))], {}, Recording())
    assert not again.duplicate
    assert orjson.loads(again.decision)["reasons"][0] == "late_event"


def test_previews_of_several_partitions_make_one_decider_call() -> None:
    from engine.pipeline.preview import preview, preview_many

    stores = [MemoryStore(), MemoryStore()]
    pipes = [_stream(stores[0], [_payment("e1", "c1", T0)]),
             _stream(stores[1], [_payment("e2", "c2", T0 + 1_000)])]
    pipes[1].state.partition = 1  # the same topology's second partition
    asked = [[DECODER.decode(_payment("e1", "c1", T0)),                # a duplicate
              DECODER.decode(_payment("e3", "c1", T0 + 5_000))],
             [DECODER.decode(_payment("e4", "c2", T0 + 6_000))]]
    decider = Recording()
    many = preview_many([(p.state, ev) for p, ev in zip(pipes, asked, strict=True)], {},
                        decider, NOW)
    (call,) = decider.calls  # one call for both partitions' fresh events
    assert [row[0] for row in call] == [(0, "c1"), (1, "c2")]
    assert many[0][0].duplicate and not many[0][1].duplicate and not many[1][0].duplicate
    # the same decisions as one preview per partition
    alone = [preview(p.state, ev, {}, Recording(), NOW) for p, ev in zip(pipes, asked,
                                                                         strict=True)]
    strip = [[{k: v for k, v in orjson.loads(x.decision).items() if k != "stage_ms"}
              for x in got] for got in many]
    assert strip == [[{k: v for k, v in orjson.loads(x.decision).items() if k != "stage_ms"}
                      for x in got] for got in alone]
