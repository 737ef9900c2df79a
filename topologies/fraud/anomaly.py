"""Post-transaction anomaly updates: agents over the decisions and the confirmed outcomes.

Both topics are keyed by card (co-partitioned with the payments), so each agent keeps per-card
rows on the partition that decides the card:

- ``card_risk`` (from ``fraud.decisions``): how the card's payments were decided, an EWMA of
  their scores and the card's anomaly flags;
- ``card_outcomes`` (from ``fraud.outcomes``, produced by ``streamwise produce fraud
  --outcomes``): confirmed frauds and chargebacks reported for the card.

A decision or outcome seen again changes nothing. Decisions come again when the stream
re-emits a stored one (for a duplicate or re-delivered payment; byte for byte the same, so with
the time it was first decided) or decides a re-delivered payment again (same decision id): a
row remembers the last `RECENT_IDS` ids it counted (their first 12 hex digits: 48 bits, so
two of one card's last 16 decisions share them about once in 10^13), and a decision first made more than
`REEMIT_MS` before the newest one counted is an old one re-emitted. Outcomes are remembered by
id, the last `RECENT_IDS` of the card.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from engine.agents import AgentBatch, AgentTable

__all__ = ["EWMA_ALPHA", "card_decisions", "card_outcomes", "outcome_doc"]

EWMA_ALPHA = 0.2  # weight of the newest score in the card's score EWMA
RECENT_IDS = 16  # ids a row remembers (a card seldom pays 16 times a minute)
ID_DIGITS = 12
REEMIT_MS = 60_000  # a decision made this long before the card's newest is a re-emitted one
SPIKE_SCORE, SPIKE_BASELINE = 0.5, 0.2  # a score this high on a card whose EWMA was this low
REPEATED_DECLINES = 2  # consecutive declines that flag a card
OUTCOME_KINDS = ("confirmed_fraud", "chargeback")


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
    """Fold each reported outcome of the batch into its card's ``card_outcomes`` row."""
    _fold(batch.table("card_outcomes"),
          ((o["card_id"], o) for o in (r.value for r in batch)
           if isinstance(o, dict) and isinstance(o.get("card_id"), str)
           and isinstance(o.get("event_id"), str) and "reported_ms" in o),
          update_card_outcomes)


def outcome_doc(event: dict[str, Any], kind: str, reported_ms: int) -> dict[str, Any]:
    """An outcome message: `kind` reported at `reported_ms` (epoch ms) for payment `event`."""
    return {"event_id": event["event_id"], "card_id": event["card_id"],
            "merchant_id": event["merchant_id"], "amount": event["amount"], "kind": kind,
            "event_ts_ms": event["ts_ms"], "reported_ms": reported_ms}
