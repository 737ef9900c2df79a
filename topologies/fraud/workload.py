"""The reference fraud workload: card payments with skew, disorder, late events, duplicates, fraud.

Pure and deterministic (stdlib + numpy): the same arguments give the same events byte for byte
(for one numpy version). Time is integer epoch milliseconds.

Model of the stream, all drawn from one seeded generator:

* **Cards** ``c000000..``: activity is Zipf-like (weight ∝ 1/(rank + 100)), so a few cards are
  very busy and most are rare. Each card has a home country (and its currency), a typical
  log-normal amount and 2-8 favourite merchants; 95% have a batch profile
  ``{"avg_amount_90d", "home_country"}``.
* **Event time** advances by exponential gaps of mean `mean_gap_ms` from `start_ms`. A
  `disorder` share of events is shifted back by 1..2000 ms (never late); a `late` share by
  61..300 s (behind the 60 s lateness of the fraud topology).
* **Duplicates**: a `duplicates` share of the produced records are exact copies of an earlier
  event, re-sent 1..500 positions after the original. `n_events` counts them.
* **Fraud** (~1.5% of distinct events) comes from hidden *episodes*: a compromised card makes a
  burst of 3-10 payments a few tens of seconds apart, mostly abroad, at new merchants, often a
  small "card test" first and then amounts far above the card's usual. Labels come from this
  hidden state, never from computed features.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

from engine import workloads

from .anomaly import outcome_doc

__all__ = ["Workload", "bad_records", "generate"]

# (country, currency, weight as a home country)
_COUNTRIES: tuple[tuple[str, str, float], ...] = (
    ("US", "USD", 0.36), ("GB", "GBP", 0.12), ("DE", "EUR", 0.10), ("FR", "EUR", 0.08),
    ("ES", "EUR", 0.05), ("IT", "EUR", 0.05), ("NL", "EUR", 0.04), ("CA", "CAD", 0.05),
    ("AU", "AUD", 0.03), ("JP", "JPY", 0.03), ("SE", "SEK", 0.02), ("PL", "PLN", 0.02),
    ("MX", "MXN", 0.02), ("IN", "INR", 0.02), ("BR", "BRL", 0.01),
)
# Where stolen card data tends to be used (besides any foreign country).
_FRAUD_COUNTRIES: tuple[tuple[str, str], ...] = (
    ("NG", "NGN"), ("RU", "RUB"), ("BR", "BRL"), ("ID", "IDR"), ("VN", "VND"), ("RO", "RON"),
    ("UA", "UAH"), ("PH", "PHP"),
)
_CURRENCY = {c: cur for c, cur, _ in _COUNTRIES} | dict(_FRAUD_COUNTRIES)
_ALL_COUNTRIES = tuple(_CURRENCY)  # home countries first, in _COUNTRIES order
_FRAUD_COUNTRY_IDX = np.array([_ALL_COUNTRIES.index(c) for c, _ in _FRAUD_COUNTRIES])

_ZIPF_OFFSET = 100.0       # card activity ∝ 1/(rank + offset): the busiest ~0.2% of events
_MERCHANTS = 3_000
_RISKY_MERCHANTS = 150       # the last merchant ids: gift cards, electronics, crypto...
_FRAUD_SHARE = 0.015         # of distinct events
_PROFILE_SHARE = 0.95
_TRAVEL_SHARE = 0.03         # legitimate payments abroad
_FAVOURITE_SHARE = 0.8       # legitimate payments at one of the card's favourite merchants
_DISORDER_MAX_MS = 2_000
_LATE_MIN_MS, _LATE_MAX_MS = 61_000, 300_000
_BURST_GAP_MEAN_MS = 40_000  # between payments of one fraud episode


@dataclass(frozen=True)
class Workload:
    """A generated stream in production order, the card profiles and the fraud labels.

    `events` repeats the very same dict object for a duplicate (same event_id and payload).
    `labels` has one entry per distinct event id: 1 for fraud, else 0.
    """

    events: list[dict]
    profiles: dict[str, dict]
    labels: dict[str, int]
    side: dict[str, list[dict]] = field(default_factory=dict)
    """Records of the topology's side topics by topic (``outcomes``: confirmed frauds and
    chargebacks reported for the fraudulent payments, in report order)."""


def generate(n_events: int, seed: int = 7, *, cards: int = 10_000, duplicates: float = 0.02,
             disorder: float = 0.05, late: float = 0.005, start_ms: int = 1_767_225_600_000,
             mean_gap_ms: float = 20.0) -> Workload:
    """Generate `n_events` produced records (duplicates included) deterministically for `seed`.

    `duplicates`, `disorder` and `late` are shares in [0, 1] (disorder + late <= 1);
    `start_ms` is the event time of the first payment before any shift.
    """
    if n_events < 0 or cards < 1:
        raise ValueError("n_events must be >= 0 and cards >= 1")
    workloads.check_shares(duplicates, disorder, late, mean_gap_ms)
    rng = np.random.default_rng(seed)
    card = _cards(rng, cards)
    profiles = _profiles(rng, card)

    t_ms, n_dup = workloads.event_times(rng, n_events, duplicates, start_ms, mean_gap_ms)
    n_unique = len(t_ms)

    slot_card, slot_fraud, fraud_step = _fraud_slots(rng, t_ms, cards)
    legit = ~slot_fraud
    slot_card[legit] = workloads.pick_by_activity(rng, cards, int(legit.sum()), _ZIPF_OFFSET)

    merchant, country_idx, amount = _payments(rng, card, slot_card, slot_fraud, fraud_step)
    ts = workloads.shift_times(rng, t_ms, disorder, late, disorder_max_ms=_DISORDER_MAX_MS,
                               late_min_ms=_LATE_MIN_MS, late_max_ms=_LATE_MAX_MS)
    ids = _event_ids(rng, n_unique)

    # Python lists: indexing numpy scalars one by one is several times slower.
    cards_l, merch_l, amount_l = slot_card.tolist(), merchant.tolist(), amount.tolist()
    country_l, ts_l, fraud_l = country_idx.tolist(), ts.tolist(), slot_fraud.tolist()
    countries = _ALL_COUNTRIES
    unique: list[dict] = []
    labels: dict[str, int] = {}
    for i in range(n_unique):
        c = countries[country_l[i]]
        eid = ids[i]
        unique.append({"event_id": eid, "card_id": f"c{cards_l[i]:06d}",
                       "merchant_id": f"m{merch_l[i]:05d}", "amount": amount_l[i],
                       "currency": _CURRENCY[c], "country": c, "ts_ms": ts_l[i]})
        labels[eid] = int(fraud_l[i])
    events = workloads.with_duplicates(rng, unique, n_dup)
    return Workload(events=events, profiles=profiles, labels=labels,
                    side={"outcomes": _outcomes(np.random.default_rng([seed, 1]), unique, labels)})


def _outcomes(rng: np.random.Generator, unique: list[dict], labels: dict[str, int]
              ) -> list[dict]:
    """A report for most fraudulent payments, in report order: 70% confirmed frauds, 5 to 60
    minutes after the payment (the cardholder answers an alert), 30% chargebacks, 1 to 3
    days after. Its own generator: the payments do not change."""
    frauds = [e for e in unique if labels[e["event_id"]]]
    reported = rng.random(len(frauds)) < 0.9
    kinds = rng.random(len(frauds)) < 0.7
    delay = np.where(kinds, rng.integers(300_000, 3_600_000, len(frauds)),
                     rng.integers(86_400_000, 3 * 86_400_000, len(frauds)))
    docs = [outcome_doc(e, "confirmed_fraud" if k else "chargeback", e["ts_ms"] + int(d))
            for e, r, k, d in zip(frauds, reported.tolist(), kinds.tolist(), delay.tolist(),
                                  strict=True) if r]
    return sorted(docs, key=lambda o: (o["reported_ms"], o["event_id"]))


def bad_records() -> list[tuple[bytes | None, bytes, str]]:
    """One record per rejection reason: ``(kafka key, raw value, expected DLQ reason)``.

    Reasons are distinct: ``invalid_json``, ``schema``, ``oversized`` (exactly 2 MiB of
    otherwise valid JSON), ``not_utf8``, ``non_finite`` (the literal ``NaN``) and
    ``missing_key`` (empty card_id). Each carries its own event id ``bad-<reason>``.
    """

    def event(reason: str, card: str = "c999001", **over: object) -> dict:
        ev: dict = {"event_id": f"bad-{reason}", "card_id": card, "merchant_id": "m00001",
                    "amount": 12.5, "currency": "USD", "country": "US",
                    "ts_ms": 1_767_225_600_000}
        ev.update(over)
        return ev

    key = b"c999001"
    truncated = json.dumps(event("invalid_json")).encode()[:-20]
    wrong_type = json.dumps(event("schema", amount="abc")).encode()
    big = event("oversized", pad="")
    filler = 2 * 1024 * 1024 - len(json.dumps(big).encode())
    oversized = json.dumps(event("oversized", pad="x" * filler)).encode()
    not_utf8 = json.dumps(event("not_utf8", merchant_id="m-PLACEHOLDER")).encode().replace(
        b"PLACEHOLDER", b"\xff\xfe\xfa")
    nan = json.dumps(event("non_finite", amount=math.nan)).encode()  # json writes NaN
    no_card = json.dumps(event("missing_key", card="")).encode()
    assert len(oversized) == 2 * 1024 * 1024 and b"NaN" in nan
    return [
        (key, truncated, "invalid_json"),
        (key, wrong_type, "schema"),
        (key, oversized, "oversized"),
        (key, not_utf8, "not_utf8"),
        (key, nan, "non_finite"),
        (None, no_card, "missing_key"),
    ]


# -- hidden state ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Cards:
    home: np.ndarray          # index into _ALL_COUNTRIES
    mu: np.ndarray            # log of the typical amount
    sigma: np.ndarray         # log-normal spread of amounts
    favourites: np.ndarray    # (cards, 8) merchant ids; only the first n_fav are used
    n_fav: np.ndarray


def _cards(rng: np.random.Generator, n: int) -> _Cards:
    home_w = np.array([w for _, _, w in _COUNTRIES])
    home = rng.choice(len(_COUNTRIES), size=n, p=home_w / home_w.sum())
    mu = rng.normal(3.4, 0.7, n)           # median typical amount ~30
    sigma = rng.uniform(0.4, 0.9, n)
    popularity = 1.0 / (np.arange(_MERCHANTS - _RISKY_MERCHANTS) + 10.0)
    favourites = rng.choice(_MERCHANTS - _RISKY_MERCHANTS, size=(n, 8),
                            p=popularity / popularity.sum())
    n_fav = rng.integers(2, 9, n)
    return _Cards(home, mu, sigma, favourites, n_fav)


def _profiles(rng: np.random.Generator, card: _Cards) -> dict[str, dict]:
    n = len(card.home)
    has = rng.random(n) < _PROFILE_SHARE
    # the 90-day mean of a log-normal amount, seen through sampling noise
    avg = np.exp(card.mu + card.sigma ** 2 / 2) * rng.uniform(0.85, 1.15, n)
    return {f"c{i:06d}": {"avg_amount_90d": round(max(float(avg[i]), 0.01), 2),
                          "home_country": _ALL_COUNTRIES[card.home[i]]}
            for i in range(n) if has[i]}


def _fraud_slots(rng: np.random.Generator, t_ms: np.ndarray,
                 cards: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Place fraud episodes on the time line: per slot its card (fraud only), flag, burst step."""
    n = len(t_ms)
    slot_card = np.zeros(n, dtype=np.int64)
    slot_fraud = np.zeros(n, dtype=bool)
    fraud_step = np.full(n, -1, dtype=np.int64)
    target = int(round(n * _FRAUD_SHARE))
    placed = 0
    while placed < target:
        victim = int(rng.integers(cards))
        size = int(rng.integers(3, 11))
        first = int(rng.integers(n))
        burst = workloads.place_episode(rng, t_ms, first, size, _BURST_GAP_MEAN_MS, slot_fraud)
        for step, s in enumerate(burst):
            slot_card[s], fraud_step[s] = victim, step
            placed += 1
    return slot_card, slot_fraud, fraud_step


def _payments(rng: np.random.Generator, card: _Cards, slot_card: np.ndarray,
              slot_fraud: np.ndarray, fraud_step: np.ndarray,
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merchant, country index and amount (2 decimals, > 0) of every distinct event."""
    n = len(slot_card)
    home = card.home[slot_card]
    # legitimate: favourites mostly, home country mostly, the card's usual amounts
    fav_pick = (rng.random(n) * card.n_fav[slot_card]).astype(np.int64)
    merchant = card.favourites[slot_card, fav_pick]
    popularity = 1.0 / (np.arange(_MERCHANTS - _RISKY_MERCHANTS) + 10.0)
    elsewhere = rng.random(n) >= _FAVOURITE_SHARE
    merchant[elsewhere] = rng.choice(_MERCHANTS - _RISKY_MERCHANTS, size=int(elsewhere.sum()),
                                     p=popularity / popularity.sum())
    country = home.copy()
    travel = rng.random(n) < _TRAVEL_SHARE
    country[travel] = rng.integers(0, len(_COUNTRIES), int(travel.sum()))
    amount = np.exp(rng.normal(card.mu[slot_card], card.sigma[slot_card]))

    # fraud: new (often risky) merchants, mostly abroad, a small test then big amounts
    f = np.flatnonzero(slot_fraud)
    k = len(f)
    risky = rng.random(k) < 0.5
    merchant[f] = np.where(risky, rng.integers(_MERCHANTS - _RISKY_MERCHANTS, _MERCHANTS, k),
                           rng.integers(0, _MERCHANTS, k))
    abroad = rng.random(k) < 0.75
    fraud_country = _FRAUD_COUNTRY_IDX[rng.integers(0, len(_FRAUD_COUNTRIES), k)]
    country[f] = np.where(abroad, fraud_country, home[f])
    typical = np.exp(card.mu[slot_card[f]] + card.sigma[slot_card[f]] ** 2 / 2)
    test_charge = (fraud_step[f] == 0) & (rng.random(k) < 0.5)
    big = rng.random(k) < 0.7
    fraud_amount = np.where(big, typical * rng.uniform(4.0, 25.0, k),
                            typical * rng.uniform(0.8, 3.0, k))
    amount[f] = np.where(test_charge, rng.uniform(0.5, 5.0, k), fraud_amount)
    amount = np.maximum(np.round(np.minimum(amount, 50_000.0), 2), 0.01)
    return merchant, country, amount


def _event_ids(rng: np.random.Generator, n: int) -> list[str]:
    """Random-looking, unique, UUID-shaped ids (drawn from the seeded generator)."""
    raw = rng.bytes(16 * n).hex()
    ids = [f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
           for h in (raw[32 * i: 32 * i + 32] for i in range(n))]
    if len(set(ids)) != n:  # astronomically unlikely; keep ids unique anyway
        ids = [f"{eid}-{i}" for i, eid in enumerate(ids)]
    return ids
