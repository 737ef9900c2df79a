"""The reference clickstream workload: user sessions with skew, disorder, late events,
duplicates, account takeovers and scraping bots.

Pure and deterministic (stdlib + numpy): the same arguments give the same events byte for byte
(for one numpy version). Time is integer epoch milliseconds.

Model of the stream, all drawn from one seeded generator:

* **Users** ``u000000..``: activity is Zipf-like (weight ∝ 1/(rank + 50)). Each user has a home
  country and 1-3 devices. A legitimate action is a view, search, cart, checkout or login
  (rarely a mistyped password), from home (97%) on one of the user's devices, with a
  log-normal dwell of ~6 s; sessions are the user's half hours.
* **Event time** advances by exponential gaps of mean `mean_gap_ms` from `start_ms`. A
  `disorder` share of events is shifted back by 1..4000 ms (within the topology's 5 s
  out-of-orderness); a `late` share by 30..300 s (behind its 5 + 10 s).
* **Duplicates**: a `duplicates` share of the produced records are exact copies of an earlier
  event, re-sent 1..500 positions after the original. `n_events` counts them.
* **Attacks** (~2.5% of distinct events) come from hidden *episodes*: an **account takeover**
  (a burst of 6-16 actions a few seconds apart from a new device, mostly abroad: failed logins,
  a login, often a password reset, then carts and checkouts far above the user's usual), or a
  **scraping bot** (15-40 views and searches under a second apart, dwell of a few hundred ms).
  Labels come from this hidden state, never from computed features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine import workloads

__all__ = ["Workload", "generate"]

_HOME_COUNTRIES: tuple[tuple[str, float], ...] = (
    ("US", 0.36), ("GB", 0.12), ("DE", 0.10), ("FR", 0.08), ("ES", 0.05), ("IT", 0.05),
    ("NL", 0.04), ("CA", 0.05), ("AU", 0.03), ("JP", 0.03), ("SE", 0.02), ("PL", 0.02),
    ("MX", 0.02), ("IN", 0.02), ("BR", 0.01),
)
_RISKY_COUNTRIES: tuple[str, ...] = ("NG", "RU", "VN", "RO", "UA", "PH", "ID", "KP")
_COUNTRIES = tuple(c for c, _ in _HOME_COUNTRIES) + _RISKY_COUNTRIES
_RISKY_IDX = np.array([_COUNTRIES.index(c) for c in _RISKY_COUNTRIES])
# Legitimate actions and their shares (same order as the contract's Literal).
_ACTIONS: tuple[str, ...] = ("view", "search", "login", "login_failed", "add_to_cart",
                             "checkout", "password_reset")
_LEGIT_P = np.array([0.55, 0.2, 0.08, 0.015, 0.1, 0.05, 0.005])
_VIEW, _SEARCH, _LOGIN, _FAILED, _CART, _CHECKOUT, _RESET = range(7)

_ZIPF_OFFSET = 50.0
_ATTACK_SHARE = 0.025        # of distinct events
_TAKEOVER_SHARE = 0.6        # of attack episodes; the rest are scraping bots
_TRAVEL_SHARE = 0.03
_NEW_DEVICE_SHARE = 0.02
_SESSION_MS = 1_800_000
_DISORDER_MAX_MS = 4_000
_LATE_MIN_MS, _LATE_MAX_MS = 30_000, 300_000
_TAKEOVER_GAP_MEAN_MS = 4_000.0
_BOT_GAP_MEAN_MS = 700.0


@dataclass(frozen=True)
class Workload:
    """A generated stream in production order, and the attack labels.

    `events` repeats the very same dict object for a duplicate (same event_id and payload).
    `labels` has one entry per distinct event id: 1 for an attack's action, else 0.
    `profiles` is empty: the topology has none.
    """

    events: list[dict]
    profiles: dict[str, dict]
    labels: dict[str, int]


def generate(n_events: int, seed: int = 7, *, users: int = 5_000, duplicates: float = 0.02,
             disorder: float = 0.05, late: float = 0.005, start_ms: int = 1_767_225_600_000,
             mean_gap_ms: float = 20.0) -> Workload:
    """Generate `n_events` produced records (duplicates included) deterministically for `seed`.

    `duplicates`, `disorder` and `late` are shares in [0, 1] (disorder + late <= 1);
    `start_ms` is the event time of the first action before any shift (epoch ms).
    """
    if n_events < 0 or users < 1:
        raise ValueError("n_events must be >= 0 and users >= 1")
    workloads.check_shares(duplicates, disorder, late, mean_gap_ms)
    rng = np.random.default_rng(seed)
    home_w = np.array([w for _, w in _HOME_COUNTRIES])
    home = rng.choice(len(_HOME_COUNTRIES), size=users, p=home_w / home_w.sum())
    n_devices = rng.integers(1, 4, users)
    basket = rng.normal(3.8, 0.6, users)  # log of the user's typical basket (~45)

    t_ms, n_dup = workloads.event_times(rng, n_events, duplicates, start_ms, mean_gap_ms)
    n_unique = len(t_ms)

    slot_user, kind, step, episode = _attack_slots(rng, t_ms, users)
    legit = kind == 0
    slot_user[legit] = workloads.pick_by_activity(rng, users, int(legit.sum()), _ZIPF_OFFSET)

    action, country, device, dwell, value = _actions(rng, slot_user, kind, step, episode, home,
                                                      n_devices, basket)
    ts = workloads.shift_times(rng, t_ms, disorder, late, disorder_max_ms=_DISORDER_MAX_MS,
                               late_min_ms=_LATE_MIN_MS, late_max_ms=_LATE_MAX_MS)
    ids = _event_ids(rng, n_unique)

    user_l, action_l, country_l = slot_user.tolist(), action.tolist(), country.tolist()
    device_l, dwell_l, value_l = device.tolist(), dwell.tolist(), value.tolist()
    ts_l, t_l, kind_l, ep_l = ts.tolist(), t_ms.tolist(), kind.tolist(), episode.tolist()
    unique: list[dict] = []
    labels: dict[str, int] = {}
    for i in range(n_unique):
        u = user_l[i]
        session = (f"s{u:06d}-{t_l[i] // _SESSION_MS}" if kind_l[i] == 0
                   else f"x{ep_l[i]:06d}")
        dev = device_l[i]
        eid = ids[i]
        unique.append({"event_id": eid, "user_id": f"u{u:06d}", "session_id": session,
                       "action": _ACTIONS[action_l[i]], "ip_country": _COUNTRIES[country_l[i]],
                       "device_id": f"d{u:06d}-{dev}" if dev >= 0 else f"x{-dev:06d}",
                       "dwell_ms": dwell_l[i], "value": value_l[i], "ts_ms": ts_l[i]})
        labels[eid] = int(kind_l[i] != 0)
    events = workloads.with_duplicates(rng, unique, n_dup)
    return Workload(events=events, profiles={}, labels=labels)


# -- hidden state ---------------------------------------------------------------------------


def _attack_slots(rng: np.random.Generator, t_ms: np.ndarray, users: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Place attack episodes on the time line: per slot its user (attacks only), kind
    (0 legitimate, 1 takeover, 2 bot), step within its episode and episode number."""
    n = len(t_ms)
    slot_user = np.zeros(n, dtype=np.int64)
    kind = np.zeros(n, dtype=np.int64)
    step = np.full(n, -1, dtype=np.int64)
    episode = np.full(n, -1, dtype=np.int64)
    taken = np.zeros(n, dtype=bool)  # kind != 0
    target = int(round(n * _ATTACK_SHARE))
    placed = number = 0
    while placed < target and number < 10 * target + 100:  # bounded even when slots run out
        victim = int(rng.integers(users))
        takeover = rng.random() < _TAKEOVER_SHARE
        size = int(rng.integers(6, 17)) if takeover else int(rng.integers(15, 41))
        gap = _TAKEOVER_GAP_MEAN_MS if takeover else _BOT_GAP_MEAN_MS
        first = int(rng.integers(n))
        number += 1
        for k, s in enumerate(workloads.place_episode(rng, t_ms, first, size, gap, taken)):
            slot_user[s], kind[s], step[s], episode[s] = victim, 1 if takeover else 2, k, number
            placed += 1
    return slot_user, kind, step, episode


def _actions(rng: np.random.Generator, slot_user: np.ndarray, kind: np.ndarray,
             step: np.ndarray, episode: np.ndarray, home: np.ndarray, n_devices: np.ndarray, basket: np.ndarray,
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Action index, country index, device (>= 0: the user's own; < 0: an attack episode's,
    minus its number), dwell ms and basket value (2 decimals; 0 unless a cart or checkout)."""
    n = len(slot_user)
    action = rng.choice(len(_ACTIONS), size=n, p=_LEGIT_P / _LEGIT_P.sum())
    country = home[slot_user].copy()
    travel = rng.random(n) < _TRAVEL_SHARE
    country[travel] = rng.integers(0, len(_HOME_COUNTRIES), int(travel.sum()))
    device = (rng.random(n) * n_devices[slot_user]).astype(np.int64)
    device[rng.random(n) < _NEW_DEVICE_SHARE] = 3  # a device the user rarely uses
    dwell = np.exp(rng.normal(8.7, 1.0, n))  # median ~6 s
    value = np.exp(rng.normal(basket[slot_user], 0.5))

    # Per episode: how many failed logins open a takeover, whether it resets the password,
    # where it comes from. The attacker's device is the episode's own (-episode).
    n_ep = int(episode.max()) + 1 if n else 1
    failures = rng.integers(2, 6, n_ep)
    resets = rng.random(n_ep) < 0.6
    abroad = rng.random(n_ep) < 0.85
    origin = _RISKY_IDX[rng.integers(0, len(_RISKY_IDX), n_ep)]

    # takeovers: failed logins, a login, often a reset, then big carts and checkouts
    t = np.flatnonzero(kind == 1)
    k = len(t)
    ep, s = episode[t], step[t]
    after = s - failures[ep]
    tail = rng.choice([_VIEW, _CART, _CHECKOUT], size=k, p=[0.4, 0.3, 0.3])
    action[t] = np.where(s < failures[ep], _FAILED,
                         np.where(after == 0, _LOGIN,
                                  np.where((after == 1) & resets[ep], _RESET, tail)))
    country[t] = np.where(abroad[ep], origin[ep], home[slot_user[t]])
    device[t] = -ep
    dwell[t] = np.exp(rng.normal(7.0, 0.8, k))  # ~1.1 s
    value[t] = np.exp(basket[slot_user[t]]) * rng.uniform(5.0, 20.0, k)

    # scraping bots: views and searches, a few hundred ms apart, from one country each
    b = np.flatnonzero(kind == 2)
    m = len(b)
    action[b] = np.where(rng.random(m) < 0.7, _VIEW, _SEARCH)
    country[b] = origin[episode[b]]
    device[b] = -episode[b]
    dwell[b] = rng.uniform(80.0, 600.0, m)

    commerce = (action == _CART) | (action == _CHECKOUT)
    value = np.where(commerce, np.maximum(np.round(np.minimum(value, 100_000.0), 2), 0.01), 0.0)
    dwell = np.minimum(dwell, 3_600_000.0).astype(np.int64)
    return action, country, device, dwell, value


def _event_ids(rng: np.random.Generator, n: int) -> list[str]:
    """Random-looking, unique ids (drawn from the seeded generator)."""
    raw = rng.bytes(12 * n).hex()
    ids = [f"c-{raw[24 * i: 24 * i + 24]}" for i in range(n)]
    if len(set(ids)) != n:  # astronomically unlikely; keep ids unique anyway
        ids = [f"{eid}-{i}" for i, eid in enumerate(ids)]
    return ids
