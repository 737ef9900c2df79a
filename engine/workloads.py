"""The stream shape the reference workloads share: event times, disorder, late events, duplicates.

A topology's workload generator draws its own entities and payloads and calls these for the
rest. Each function draws from the generator it is given, in a fixed order, so a workload that
calls them at the same points gives the same events for the same seed (for one numpy version).
Pure (numpy only); times are integer epoch milliseconds.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "DUPLICATE_WINDOW",
    "check_shares",
    "event_times",
    "pick_by_activity",
    "place_episode",
    "shift_times",
    "with_duplicates",
]

DUPLICATE_WINDOW = 500  # a duplicate follows its original within this many positions


def check_shares(duplicates: float, disorder: float, late: float, mean_gap_ms: float) -> None:
    """Raise ValueError unless each share is in [0, 1], disorder + late <= 1, mean_gap_ms > 0."""
    for name, share in (("duplicates", duplicates), ("disorder", disorder), ("late", late)):
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], not {share}")
    if disorder + late > 1.0:
        raise ValueError("disorder + late must be <= 1")
    if mean_gap_ms <= 0:
        raise ValueError("mean_gap_ms must be > 0")


def event_times(rng: np.random.Generator, n_events: int, duplicates: float, start_ms: int,
                mean_gap_ms: float) -> tuple[np.ndarray, int]:
    """The distinct events' times before any shift, and how many of `n_events` are duplicates.

    Times advance by exponential gaps of mean `mean_gap_ms`; the first is `start_ms` exactly.
    At least one produced record is distinct when `n_events` > 0.
    """
    n_dup = min(int(round(n_events * duplicates)), max(n_events - 1, 0))
    n_unique = n_events - n_dup
    t_ms = start_ms + np.floor(np.cumsum(rng.exponential(mean_gap_ms, n_unique))).astype(np.int64)
    if n_unique:
        t_ms -= t_ms[0] - start_ms
    return t_ms, n_dup


def pick_by_activity(rng: np.random.Generator, n_keys: int, size: int,
                     zipf_offset: float) -> np.ndarray:
    """`size` key indices in [0, n_keys), Zipf-like: the key of activity rank r is drawn with
    weight 1/(r + zipf_offset), and which key gets which rank is a random permutation."""
    weights = 1.0 / (np.arange(n_keys) + zipf_offset)
    ranked = rng.permutation(n_keys)
    return ranked[rng.choice(n_keys, size=size, p=weights / weights.sum())]


def place_episode(rng: np.random.Generator, t_ms: np.ndarray, first: int, size: int,
                  gap_mean_ms: float, taken: np.ndarray) -> list[int]:
    """The slots of one hidden episode (a fraud burst, an account takeover) of `size` events.

    Its events follow the time of slot `first` by exponential gaps of mean `gap_mean_ms`; each
    takes the first slot at or after its time that is not yet `taken` (a bool array, marked
    here). The episode ends early where the time line does.
    """
    n = len(t_ms)
    offsets = np.concatenate(([0.0], np.cumsum(rng.exponential(gap_mean_ms, size - 1))))
    slots: list[int] = []
    for s in np.searchsorted(t_ms, t_ms[first] + offsets.astype(np.int64)):
        s = int(s)
        while s < n and taken[s]:
            s += 1
        if s >= n:
            break
        taken[s] = True
        slots.append(s)
    return slots


def shift_times(rng: np.random.Generator, t_ms: np.ndarray, disorder: float, late: float, *,
                disorder_max_ms: int, late_min_ms: int, late_max_ms: int) -> np.ndarray:
    """Event times after shifting a `disorder` share back 1..`disorder_max_ms` and a `late`
    share back `late_min_ms`..`late_max_ms` (both ends included); never below 0."""
    n = len(t_ms)
    u = rng.random(n)
    is_late = u < late
    is_disordered = (u >= late) & (u < late + disorder)
    ts = t_ms.copy()
    ts[is_disordered] -= rng.integers(1, disorder_max_ms + 1, int(is_disordered.sum()))
    ts[is_late] -= rng.integers(late_min_ms, late_max_ms + 1, int(is_late.sum()))
    return np.maximum(ts, 0)


def with_duplicates(rng: np.random.Generator, unique: list[dict], n_dup: int,
                    window: int = DUPLICATE_WINDOW) -> list[dict]:
    """Production order: every event, and `n_dup` duplicates, each the very same dict as its
    original, re-sent 1..`window` positions after it (at the end at the latest)."""
    n = len(unique)
    if n_dup == 0 or n == 0:
        return list(unique)
    originals = rng.choice(n, size=n_dup, replace=n_dup > n)
    after = np.minimum(originals + rng.integers(1, window + 1, n_dup), n - 1)
    order = np.lexsort((np.arange(n_dup), after))
    resend: dict[int, list[int]] = {}
    for j in order:
        resend.setdefault(int(after[j]), []).append(int(originals[j]))
    out: list[dict] = []
    for i, ev in enumerate(unique):
        out.append(ev)
        for orig in resend.get(i, ()):
            out.append(unique[orig])
    return out
