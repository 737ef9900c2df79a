"""Post-transaction anomaly updates: agents over the decisions and the confirmed outcomes.

Both topics are keyed by card (co-partitioned with the payments), so each agent keeps per-card
rows on the partition that decides the card:

- ``card_risk`` (from ``fraud.decisions``): how the card's payments were decided, an EWMA of
  their scores and the card's anomaly flags;
- ``card_outcomes`` (from ``fraud.outcomes``, produced by ``streamwise produce fraud
  --outcomes``): confirmed frauds and chargebacks reported for the card.

Per merchant, two *local* tables (each partition keeps its own row for a merchant, over the
payments of the cards it decides: no repartition, and a decision reads them without leaving
its partition), which the features ``merchant_amount_z`` and ``merchant_risk`` read:

- ``merchant_stats`` (from the decisions, fed in process): EWMAs of the log amount, of its
  variance and of the decline share, and the newest payment time (``as_of_ms``);
- ``merchant_reports`` (from ``fraud.outcomes``): when frauds and chargebacks were reported
  at the merchant, over the last `REPORT_WINDOW_MS`.

A decision or outcome seen again changes nothing. Decisions come again when the stream
re-emits a stored one (for a duplicate or re-delivered payment; byte for byte the same, so with
the time it was first decided) or decides a re-delivered payment again (same decision id): a
row remembers the last `RECENT_IDS` ids it counted (their first 12 hex digits: 48 bits, so
two of one card's last 16 decisions share them about once in 10^13), and a decision first made more than
`REEMIT_MS` before the newest one counted is an old one re-emitted. Outcomes are remembered by
id, the last `RECENT_IDS` of the card.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable
from typing import Any

from engine.agents import AgentBatch, AgentTable

__all__ = ["EWMA_ALPHA", "card_decisions", "card_outcomes", "merchant_amount_z",
           "merchant_decisions", "merchant_risk", "outcome_doc"]

EWMA_ALPHA = 0.2  # weight of the newest score in the card's score EWMA
RECENT_IDS = 16  # ids a row remembers (a card seldom pays 16 times a minute)
ID_DIGITS = 12
REEMIT_MS = 60_000  # a decision made this long before the card's newest is a re-emitted one
SPIKE_SCORE, SPIKE_BASELINE = 0.5, 0.2  # a score this high on a card whose EWMA was this low
REPEATED_DECLINES = 2  # consecutive declines that flag a card
OUTCOME_KINDS = ("confirmed_fraud", "chargeback")
MERCHANT_ALPHA = 0.05  # weight of the newest payment in a merchant's EWMAs (~20 payments)
MIN_PAYMENTS = 5  # a merchant's amount statistics mean something from this many payments on
DAY_MS = 86_400_000
REPORT_WINDOW_MS = 7 * DAY_MS  # what a merchant's risk counts: reports and payments of a week
MAX_REPORTS = 256  # report times a merchant row keeps
RISK_PRIOR_PAYMENTS = 20  # the risk of a merchant seen this many times without a report: 0


def _remember(row: dict[str, Any], ident: str) -> bool:
    """Add `ident` to the row's last `RECENT_IDS` ids; False when it was there already."""
    recent: list[str] = row.setdefault("recent_ids", [])
    if ident in recent:
        return False
    recent.append(ident)
    del recent[:-RECENT_IDS]
    return True


def update_card_risk(row: dict[str, Any] | None, d: dict[str, Any]) -> dict[str, Any] | None:
    """`row` after decision `d` (a decision message); None when `d` changes nothing."""
    row = dict(row) if row else {"decisions": 0, "approve": 0, "review": 0, "decline": 0,
                                 "score_ewma": None, "consecutive_declines": 0, "flags": []}
    decided_at = int(d["decided_at_ms"])
    if decided_at < row.get("last_decided_at_ms", decided_at) - REEMIT_MS or \
            not _remember(row, d["decision_id"][:ID_DIGITS]):
        return None
    row["last_decided_at_ms"] = max(decided_at, row.get("last_decided_at_ms", decided_at))
    outcome, score = d["decision"], float(d["score"])
    before = row["score_ewma"]
    row["decisions"] += 1
    row[outcome] = row.get(outcome, 0) + 1
    row["score_ewma"] = score if before is None else \
        EWMA_ALPHA * score + (1 - EWMA_ALPHA) * before
    row["consecutive_declines"] = row["consecutive_declines"] + 1 if outcome == "decline" else 0
    flags = set(row["flags"])
    if score >= SPIKE_SCORE and before is not None and before < SPIKE_BASELINE:
        flags.add("score_spike")
    if row["consecutive_declines"] >= REPEATED_DECLINES:
        flags.add("repeated_declines")
    row["flags"] = sorted(flags)
    row["last_decision"] = outcome
    row["last_score"] = score
    row["last_event_ts_ms"] = max(int(d["event_ts_ms"]), row.get("last_event_ts_ms", 0))
    return row


def update_card_outcomes(row: dict[str, Any] | None, o: dict[str, Any]) -> dict[str, Any] | None:
    """`row` after outcome `o`; None when `o` changes nothing (seen, or of an unknown kind)."""
    kind = o.get("kind")
    if kind not in OUTCOME_KINDS:
        return None
    row = dict(row) if row else {"confirmed_fraud": 0, "chargeback": 0, "chargeback_amount": 0.0,
                                 "compromised": False}
    if not _remember(row, f"{kind}:{o['event_id']}"):
        return None
    row[kind] += 1
    if kind == "chargeback":
        row["chargeback_amount"] += float(o.get("amount", 0.0))
    row["compromised"] = row["confirmed_fraud"] > 0
    row["last_reported_ms"] = max(int(o["reported_ms"]), row.get("last_reported_ms", 0))
    return row


def _fold(table: AgentTable, docs: Iterable[tuple[str, dict[str, Any]]],
          update: Callable[[dict[str, Any] | None, dict[str, Any]], dict[str, Any] | None]
          ) -> None:
    """Apply `update` to each card's row for each ``(card, doc)``, then store each changed
    row once."""
    rows: dict[str, dict[str, Any]] = {}
    for card, doc in docs:
        updated = update(rows[card] if card in rows else table.get(card), doc)
        if updated is not None:
            rows[card] = updated
    for card, row in rows.items():
        table.set(card, row)


async def card_decisions(batch: AgentBatch) -> None:
    """Fold each decision of the batch into its card's ``card_risk`` row."""
    _fold(batch.table("card_risk"),
          ((d["key"], d) for d in (r.value for r in batch)
           if isinstance(d, dict) and isinstance(d.get("key"), str) and "decision" in d),
          update_card_risk)


async def card_outcomes(batch: AgentBatch) -> None:
    """Fold each reported outcome of the batch into its card's ``card_outcomes`` row, and
    each newly counted one into its merchant's ``merchant_reports`` row."""
    outcomes = (o for o in (r.value for r in batch)
                if isinstance(o, dict) and isinstance(o.get("card_id"), str)
                and isinstance(o.get("event_id"), str) and isinstance(o.get("reported_ms"), int))
    cards, merchants = batch.table("card_outcomes"), batch.table("merchant_reports")
    card_rows: dict[str, dict[str, Any]] = {}
    counted = []
    for o in outcomes:
        card = o["card_id"]
        updated = update_card_outcomes(card_rows[card] if card in card_rows else cards.get(card),
                                       o)
        if updated is not None:  # new for the card: count it for its merchant too
            card_rows[card] = updated
            if isinstance(o.get("merchant_id"), str):
                counted.append((o["merchant_id"], o))
    for card, row in card_rows.items():
        cards.set(card, row)
    _fold(merchants, counted, update_merchant_reports)


def update_merchant_reports(row: dict[str, Any] | None, o: dict[str, Any]
                            ) -> dict[str, Any] | None:
    """`row` with outcome `o`'s report time (epoch ms) among its sorted ``reports``: those
    more than `REPORT_WINDOW_MS` before the newest are dropped, and at most `MAX_REPORTS`
    kept (a merchant with more in a week is risky already)."""
    reports = sorted([*(row["reports"] if row else ()), int(o["reported_ms"])])
    lo = bisect.bisect_left(reports, reports[-1] - REPORT_WINDOW_MS)
    return {"reports": reports[max(lo, len(reports) - MAX_REPORTS):]}


def update_merchant_stats(row: dict[str, Any] | None, d: dict[str, Any]
                          ) -> dict[str, Any] | None:
    """`row` (updated in place: rows come fresh from the table) after decision `d`: EWMAs
    (weight `MERCHANT_ALPHA`) of ln(1 + amount), of its variance and of the decline share;
    payments per UTC day of the last `REPORT_WINDOW_MS`; `as_of_ms` the newest payment's
    event time."""
    amount = (d.get("features") or {}).get("amount")
    if not isinstance(amount, int | float):
        return None
    x = math.log1p(max(float(amount), 0.0))
    declined = 1.0 if d.get("decision") == "decline" else 0.0
    ts = int(d["event_ts_ms"])
    day = ts // DAY_MS
    if row is None:
        row = {"payments": 0, "log_amount_mean": x, "log_amount_var": 0.0,
               "decline_share": declined, "as_of_ms": ts, "days": {}}
    a = MERCHANT_ALPHA
    diff = x - row["log_amount_mean"]
    step = a * diff
    row["payments"] += 1
    row["log_amount_mean"] += step
    row["log_amount_var"] = (1 - a) * (row["log_amount_var"] + diff * step)
    row["decline_share"] += a * (declined - row["decline_share"])
    row["as_of_ms"] = max(ts, row["as_of_ms"])
    days = row["days"]
    days[str(day)] = days.get(str(day), 0) + 1
    if len(days) > REPORT_WINDOW_MS // DAY_MS + 1:
        for old in [k for k in days if int(k) < day - REPORT_WINDOW_MS // DAY_MS]:
            del days[old]
    return row


async def merchant_decisions(batch: AgentBatch) -> None:
    """Fold each decision (fed in process, each once) into its merchant's
    ``merchant_stats`` row of this partition."""
    _fold(batch.table("merchant_stats"),
          ((d["context"]["merchant_id"], d) for d in (r.value for r in batch)
           if isinstance(d, dict) and isinstance(d.get("context"), dict)
           and isinstance(d["context"].get("merchant_id"), str)),
          update_merchant_stats)


def merchant_amount_z(payment: Any, stats: dict[str, Any] | None) -> float:
    """How unusual the payment's amount is at its merchant: (ln(1 + amount) - EWMA mean) over
    the EWMA standard deviation (floored at 0.1), rounded to 4 decimals; 0.0 without fresh
    statistics of at least `MIN_PAYMENTS` payments."""
    if stats is None or stats["payments"] < MIN_PAYMENTS:
        return 0.0
    sd = max(math.sqrt(max(stats["log_amount_var"], 0.0)), 0.1)
    return round((math.log1p(max(payment.amount, 0.0)) - stats["log_amount_mean"]) / sd, 4)


def merchant_risk(payment: Any, stats: dict[str, Any] | None,
                  reports: dict[str, Any] | None) -> float:
    """Frauds and chargebacks reported at the payment's merchant in the `REPORT_WINDOW_MS`
    before the payment (a report made after it never counts), per payment the merchant had
    in that time, smoothed by `RISK_PRIOR_PAYMENTS` payments without a report; rounded to 5
    decimals. Both counts are of the payments of the partition's cards: a share, so the
    same whatever the partition count."""
    ts = payment.ts_ms
    n = 0
    if reports is not None:
        r = reports["reports"]
        n = bisect.bisect_left(r, ts) - bisect.bisect_left(r, ts - REPORT_WINDOW_MS)
    seen = 0
    if stats is not None:
        first = (ts - REPORT_WINDOW_MS) // DAY_MS
        seen = sum(v for k, v in stats["days"].items() if int(k) >= first)
    return round(n / (seen + RISK_PRIOR_PAYMENTS), 5)


def outcome_doc(event: dict[str, Any], kind: str, reported_ms: int) -> dict[str, Any]:
    """An outcome message: `kind` reported at `reported_ms` (epoch ms) for payment `event`."""
    return {"event_id": event["event_id"], "card_id": event["card_id"],
            "merchant_id": event["merchant_id"], "amount": event["amount"], "kind": kind,
            "event_ts_ms": event["ts_ms"], "reported_ms": reported_ms}
