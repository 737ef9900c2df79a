"""The batch pipeline: a poll of several partitions in, decisions, side records and each
partition's state changes out.

Framework-free. The live worker, replay, `engine.testing` and the online path all run events
through a `Pipeline`: one per worker, holding a `PartitionState` per assigned partition. A poll
is one batch: each partition's records are admitted in offset order (decode, dedup, lateness,
reorder), folded into their tables, then every row of the poll is scored in one decider call,
and each partition's decisions and state changes come back separately, so the adapter writes
them with one RocksDB write batch and one changelog flush per partition.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..agents import positions, progress_doc, run_decision_agents
from ..clock import Clock
from ..kernel import TileState
from ..policy import Verdict
from ..schemas import EventDecoder
from ..state import layout
from ..topology import Topology
from .admit import Admitted, admit
from .decide import Decider, encode_rows, scoring_rows, unscored_changes
from .fold import FeatureColumns, fold
from .partition import PartitionState, Row, Store
from .records import FORWARDED, BatchResult, InputRecord, PollResult
from .sweep import sweep

__all__ = ["Pipeline"]

STAGES = ("validate", "dedup", "features", "inference", "policy", "total")


class Pipeline:
    """The pipeline of one worker (or replay): its topology, decider and partitions."""

    def __init__(self, topology: Topology, decider: Decider, clock: Clock,
                 kernel: type[TileState] | None = None, topic: str = "",
                 route: Callable[[bytes], int] | None = None) -> None:
        self.topology = topology
        self.decider = decider
        self.clock = clock
        self.topic = topic  # named in dead-letter and late records
        self.route = route  # entity key -> its partition: others' records are forwarded
        self._kernel = kernel
        self.decoder = EventDecoder(topology.schema, (topology.key_field, topology.event_id_field),
                                    topology.max_record_bytes)
        self.partitions: dict[int, PartitionState] = {}
        # What a poll records for replay when decisions read agent tables: the agents
        # read from Kafka (their positions); the decisions' agents are fed after each poll.
        self._progress = [a for a in topology.agents if not a.in_process] \
            if topology.reads_agent_tables else None
        self.decision_agents = [a for a in topology.agents if a.in_process]

    # -- partitions -----------------------------------------------------------------------

    def open(self, partition: int, store: Store) -> PartitionState:
        """Start deciding `partition` over its (restored) store."""
        state = PartitionState(self.topology, partition, store, self._kernel)
        self.partitions[partition] = state
        return state

    def close(self, partition: int) -> None:
        self.partitions.pop(partition, None)

    def feed_agents(self, partition: int, made: Sequence[tuple[int, bytes, bytes]],
                    changes: dict[bytes, bytes | None]) -> None:
        """Feed decisions `made` on `partition` (a poll's `BatchResult.made`) to the
        topology's in-process agents; their changes go into `changes`, which must be written
        to the store before the next poll (whose table features then see them)."""
        if self.decision_agents and made:
            run_decision_agents(self.decision_agents, partition,
                                self.partitions[partition].store, changes, made, self.route)

    def feed_poll(self, result: PollResult) -> None:
        """`feed_agents` for each partition of a poll, into the poll's own change sets."""
        for p, out in result.partitions.items():
            if out.made and p in self.partitions:
                self.feed_agents(p, out.made, out.changes)

    # -- the batch ------------------------------------------------------------------------

    def process(self, batches: Mapping[int, Sequence[InputRecord]],
                profiles: Mapping[str, Mapping[str, Any]]) -> PollResult:
        """Run one poll: each partition's records in order, those forwarded to it (positions
        above `FORWARDED`, in position order) before its own (in offset order). Partitions not
        open here (revoked while the poll was in flight) are skipped."""
        clock = time.perf_counter
        t0 = clock()
        result = PollResult()
        decoded: dict[int, list] = {}
        decode = self.decoder.decode
        for p, records in batches.items():
            if p in self.partitions and records:
                decoded[p] = [decode(r.value) for r in records]
        t1 = clock()
        admitted: dict[int, Admitted] = {}
        now_ms = self.clock.now_ms
        for p, events in decoded.items():
            out = result.partitions[p] = BatchResult()
            if self._progress is not None:
                at = next((r.offset for r in batches[p] if r.offset < FORWARDED), None)
                if at is not None:
                    out.progress = progress_doc(
                        at, positions(self.partitions[p].store, self._progress))
            admitted[p] = admit(self.partitions[p], batches[p], events, self.topic, now_ms, out,
                                self.route)
        t2 = clock()
        self._decide(admitted, profiles, result, {"validate": _ms(t1 - t0),
                                                  "dedup": _ms(t2 - t1)}, t0)
        for p, records in batches.items():
            if p in result.partitions:
                self._commit_offsets(self.partitions[p], records, result.partitions[p])
        return result

    @staticmethod
    def _commit_offsets(state: PartitionState, records: Sequence[InputRecord],
                        out: BatchResult) -> None:
        """Where the partition's own input, and its forwarded input, may be committed: after
        the batch's last record of each, or at the oldest one the reorder buffer holds."""
        reorder = state.reorder
        last = records[-1].offset
        if last < FORWARDED:
            held = reorder.min_offset_in(0, FORWARDED) if reorder is not None else None
            out.commit_offset = last + 1 if held is None else min(last + 1, held)
        if records[0].offset >= FORWARDED:
            i = 0
            while i < len(records) and records[i].offset >= FORWARDED:
                i += 1
            end = records[i - 1].offset + 1
            lane = (end - 1) // FORWARDED * FORWARDED  # the source's range of positions
            held = reorder.min_offset_in(lane, lane + FORWARDED) if reorder is not None \
                else None
            out.forwarded_commit = (end if held is None else min(end, held)) - lane

    def flush(self, profiles: Mapping[str, Mapping[str, Any]]) -> PollResult:
        """End of the input (a replay's last batch): decide every event the reorder buffers
        still hold, oldest first, as if the watermark had passed them all. Live workers never
        call it: there, held events wait for later input. Arrival ordering: nothing to do."""
        t0 = time.perf_counter()
        result = PollResult()
        admitted: dict[int, Admitted] = {}
        for p, state in self.partitions.items():
            if state.reorder is not None and len(state.reorder):
                rows = state.reorder.drain()
                for r in rows:
                    del state.buffered[r.eid]
                admitted[p] = Admitted(rows=rows, emits=list(rows))
                result.partitions[p] = BatchResult()
        if admitted:
            self._decide(admitted, profiles, result,
                         {"validate": 0.0, "dedup": _ms(time.perf_counter() - t0)}, t0)
        return result

    def _decide(self, admitted: Mapping[int, Admitted],
                profiles: Mapping[str, Mapping[str, Any]], result: PollResult,
                stage: dict[str, float], t0: float) -> None:
        """Features, one scoring call for the whole poll, decisions, state, sweeps."""
        clock = time.perf_counter
        t2 = clock()
        if not admitted:
            result.stage_ms = stage
            return
        plan = self.partitions[next(iter(admitted))].plan
        rows: list[Row] = []
        spans: dict[int, tuple[int, int]] = {}
        for p, adm in admitted.items():
            spans[p] = (len(rows), len(rows) + len(adm.rows))
            rows += adm.rows
        n = len(rows)
        columns = FeatureColumns(plan, np.empty((n, len(plan.names))),
                                 [[None] * n for _ in plan.functions])
        fold([(self.partitions[p], lo, hi) for p, (lo, hi) in spans.items()], plan, rows,
             profiles, columns.matrix, columns.values)
        t3 = clock()

        verdicts: list[Verdict] = self.decider.decide(
            scoring_rows(rows, columns, self._last_decision)) if n else []
        t4 = clock()
        stage["features"], stage["inference"] = _ms(t3 - t2), _ms(t4 - t3)
        fs = self.decider.feature_set
        now_ms = self.clock.now_ms()
        last_ts = []
        changes = []
        for p, (lo, hi) in spans.items():
            kernel = self.partitions[p].tables[0][2]
            held = {r.key: kernel.last_ts(r.key) for r in rows[lo:hi]}
            last_ts += [held[r.key] for r in rows[lo:hi]]
            changes += [result.partitions[p].changes] * (hi - lo)
        for v in verdicts:
            result.outcomes[(v.path, v.decision)] += 1
        t5 = clock()
        stage["policy"] = _ms(t5 - t4)
        stage["total"] = _ms(t5 - t0)
        result.stage_ms = stage
        encode_rows(rows, verdicts, columns, fs, stage, now_ms, last_ts, changes,
                    self.topology.decision_context)

        for p, adm in admitted.items():
            state = self.partitions[p]
            out = result.partitions[p]
            lo, hi = spans[p]
            self._emit(adm, out)
            unscored_changes(adm.unscored, out.changes)
            self._write_partition_state(state, [*rows[lo:hi], *adm.unscored], out.changes)

    def _emit(self, adm: Admitted, out: BatchResult) -> None:
        """The partition's decisions in output order (input order; release order for
        event_time), duplicates re-emitting their original's bytes; the ones made now go to
        `out.made` too when agents are fed them."""
        decisions = out.decisions
        made = out.made if self.decision_agents else None
        for e in adm.emits:  # input order (event_time mode: release order)
            if type(e) is Row:
                decisions.append((e.kb, e.decision))
                if made is not None:
                    made.append((e.offset, e.kb, e.decision))
                # duplicates that arrived while this event sat in the reorder buffer
                decisions.extend((e.kb, e.decision) for _ in range(e.waiting_duplicates))
            else:
                key, original = e
                body = original.decision if type(original) is Row else original
                if body:  # b"" or None: a late event that was not scored
                    decisions.append((key, body))
                    out.reemitted.append(body)

    def _write_partition_state(self, state: PartitionState, seen: Sequence[Row],
                               changes: dict[bytes, bytes | None]) -> None:
        for _tb, prefix, kernel in state.tables:
            changes.update(kernel.drain_packed(prefix))
        if seen:  # one expiry record per batch lists the ids it marked seen
            state.seen.add([r.eid for r in seen], np.fromiter((r.ts_ms for r in seen), np.int64,
                                                              len(seen)))
            first = min(r.offset for r in seen)
            changes[layout.expiry_key(max(r.ts_ms for r in seen), first)] = \
                layout.pack_expiry(r.eid for r in seen)
        wm = state.watermark
        if wm.max_ts_ms != state.persisted_max_ts:
            changes[layout.WATERMARK_KEY] = str(wm.max_ts_ms).encode()
            state.persisted_max_ts = wm.max_ts_ms
        sweep(state, changes)

    def _last_decision(self, key: tuple[int, str]) -> bytes | None:
        """The entity's last decision as stored before this poll (the chain adds this
        poll's own rows in order)."""
        raw = self.partitions[key[0]].store.get(layout.entity_key(key[1].encode()))
        return None if raw is None else layout.unpack_entity(raw)[1] or None


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)
