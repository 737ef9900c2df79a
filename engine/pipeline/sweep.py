"""Expiry in event time, spread over batches: dedup ids past their TTL and tiles past the
tables' retention. No batch does more than a bounded amount of it."""

from __future__ import annotations

from ..state import layout
from .partition import PartitionState

__all__ = ["DEDUP_SWEEP_EVERY_MS", "sweep"]

DEDUP_SWEEP_EVERY_MS = 60_000  # event time between dedup sweeps (an unfinished one goes on)


def sweep(state: PartitionState, changes: dict[bytes, bytes | None]) -> None:
    """Write the deletions of what has expired at the partition's watermark into `changes`."""
    wm = state.watermark.watermark_ms
    if wm is None:
        return
    horizon = state.tile_horizon()
    if horizon is not None and horizon != state.last_expiry_horizon:
        state.last_expiry_horizon = horizon
        for _tb, _prefix, kernel in state.tables:
            kernel.expire(horizon)
    state.seen.expire(wm)
    _sweep_dedup(state, wm, changes, state.dedup_sweep_ids)


def _sweep_dedup(state: PartitionState, wm: int, changes: dict[bytes, bytes | None],
                 budget: int) -> None:
    """Expiry records of batches whose newest event is past the TTL: each listed id is
    deleted unless it was seen again since (its entry then holds a newer time).

    A sweep starts once the cutoff is `DEDUP_SWEEP_EVERY_MS` past the last completed one's (a
    store scan per minute of event time, not per batch) and examines at most `budget` ids a
    batch; one that runs out goes on in the next batches, which the same test lets through
    (the cutoff never moves back, and the completed one's stays where it was)."""
    cutoff = state.dedup.cutoff(wm)
    if state.dedup_swept_to is not None and cutoff - state.dedup_swept_to < DEDUP_SWEEP_EVERY_MS:
        return
    lo, hi = layout.expiry_before(cutoff)
    store = state.store
    dedup = state.dedup
    for key, raw in store.items_between(lo, hi):
        if budget <= 0:
            return  # the rest in the next batches
        if key in changes:
            continue  # deleted by this batch already
        ids = layout.unpack_expiry(raw)
        if len(ids) > budget:  # a part now, the record keeps the rest for the next batches
            ids, rest = ids[:budget], ids[budget:]
        else:
            rest = []
        budget -= len(ids)
        for eid in ids:
            skey = layout.seen_key(eid)
            entry = changes[skey] if skey in changes else store.get(skey)
            if entry is not None and dedup.expired(layout.unpack_seen(entry).ts_ms, wm):
                changes[skey] = None
        changes[key] = layout.pack_expiry(rest) if rest else None
        if rest:
            return
    state.dedup_swept_to = cutoff
