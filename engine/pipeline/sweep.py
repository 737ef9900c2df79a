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
    deleted unless it was seen again since (its entry then holds a newer time)."""
    cutoff = state.dedup.cutoff(wm)
    if not state.dedup_sweep_pending and state.dedup_swept_to is not None \
            and cutoff - state.dedup_swept_to < DEDUP_SWEEP_EVERY_MS:
        return  # a store scan per minute of event time, not per batch
    lo, hi = layout.expiry_before(cutoff)
    store = state.store
    dedup = state.dedup
    for key, raw in store.items_between(lo, hi):
        if budget <= 0:
            state.dedup_sweep_pending = True
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
            state.dedup_sweep_pending = True
            return
    state.dedup_swept_to = cutoff
    state.dedup_sweep_pending = False
