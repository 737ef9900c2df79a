"""Card fraud: velocity windows per card, card profiles, rules when features are missing."""

from dataclasses import replace
from pathlib import Path

from engine import (
    BreakerSettings,
    EventFeature,
    FeatureSet,
    Guardrails,
    ProfileFeature,
    Profiles,
    RolloutSettings,
    Rules,
    ScoringSettings,
    SinceLastFeature,
    Sliding,
    StageBudget,
    TableFeature,
    Thresholds,
    TileTable,
    TimeSettings,
    Topology,
    ValidationMinima,
    WindowFeature,
)
from engine.agents import Agent

from .anomaly import (
    card_decisions,
    card_outcomes,
    merchant_amount_z,
    merchant_decisions,
    merchant_risk,
)
from .rules import evaluate_rules
from .schema import CardPayment
from .workload import generate

__all__ = ["TOPOLOGY", "WITH_CARD_RISK", "WITH_MERCHANT_RISK"]

MINUTE_MS = 60_000
HOUR_MS = 3_600_000

VELOCITY = TileTable(name="velocity", tile_ms=MINUTE_MS, value_field="amount",
                     distinct_field="merchant_id", retain_ms=HOUR_MS)

_10M, _1H = Sliding(10 * MINUTE_MS), Sliding(HOUR_MS)

FEATURES = FeatureSet(
    name="fraud",
    version=1,
    features=(
        WindowFeature("count_10m", "velocity", "count", _10M),
        WindowFeature("sum_10m", "velocity", "sum", _10M),
        WindowFeature("max_10m", "velocity", "max", _10M),
        WindowFeature("count_1h", "velocity", "count", _1H),
        WindowFeature("sum_1h", "velocity", "sum", _1H),
        WindowFeature("mean_1h", "velocity", "mean", _1H),
        WindowFeature("distinct_merchants_1h", "velocity", "distinct_count", _1H),
        SinceLastFeature("secs_since_last", "velocity"),
        ProfileFeature("amount_over_avg", lambda e, p: e.amount / p["avg_amount_90d"]
                       if p.get("avg_amount_90d") else None),
        ProfileFeature("is_foreign", lambda e, p: int(e.country != p["home_country"])
                       if p.get("home_country") else None),
        EventFeature("amount", lambda e: e.amount),
        EventFeature("hour_of_day", lambda e: (e.ts_ms // HOUR_MS) % 24),
    ),
    critical=("count_10m", "count_1h", "amount_over_avg", "is_foreign"),
    profile_max_age_ms=8 * 24 * HOUR_MS,  # profiles are recomputed nightly; a week late is stale
)

def _holdout() -> tuple[list[dict], dict[str, dict], dict[str, int]]:
    """The held-out labelled set `streamwise rollout fraud validate` replays: 20,000 events
    of the reference generator with a seed neither training (11) nor evaluation (7) uses."""
    w = generate(20_000, seed=13)
    return w.events, w.profiles, w.labels


TOPOLOGY = Topology(
    name="fraud",
    description="Card payments scored for fraud in well under 100 ms.",
    workload=generate,
    schema=CardPayment,
    key_field="card_id",
    event_id_field="event_id",
    time_field="ts_ms",
    dedup_ttl_ms=24 * HOUR_MS,
    time=TimeSettings(max_out_of_orderness_ms=2_000, allowed_lateness_ms=58_000,
                      ordering="arrival"),
    tables=(VELOCITY,),
    features=FEATURES,
    rules=Rules(version="v1", evaluate=evaluate_rules,
                thresholds=Thresholds(review_at=0.5, decline_at=0.9)),
    profiles=Profiles(fields=("avg_amount_90d", "home_country")),
    scoring=ScoringSettings(
        primary="primary", backup="backup", timeout_ms=30, retries=1,
        last_score_max_age_ms=10 * MINUTE_MS,
        breaker=BreakerSettings(consecutive_failures=5, failure_rate=0.5, window_ms=10_000,
                                min_calls=20, cool_down_ms=5_000),
    ),
    models_dir=Path(__file__).parent / "models",
    # Per-batch stage budgets (every event waits for its batch); a decision in well under 100 ms.
    budgets={"validate": StageBudget(5, 10), "dedup": StageBudget(5, 10),
             "features": StageBudget(15, 30), "inference": StageBudget(10, 30),
             "policy": StageBudget(5, 10), "total": StageBudget(40, 80)},
    score_late=True,
    # Canary against serving over 30 s: 5 points of decline-share difference that is also 4
    # standard errors apart is a different policy, not noise.
    rollout=RolloutSettings(
        guardrails=Guardrails(window_s=30.0, min_rows=200, max_error_rate_delta=0.02,
                              max_p99_ratio=3.0, p99_slack_ms=10.0, p99_min_calls=100,
                              max_decline_rate_delta=0.05, max_psi=0.25, psi_min_rows=1000,
                              min_z=4.0),
        minima=ValidationMinima(max_auc_drop=0.01, max_ece=0.05),
        holdout=_holdout,
    ),
)

# Post-transaction anomaly updates (topologies/fraud/anomaly.py): per-card rows readable at
# GET /v1/tables/card_outcomes/{card}, and where frauds were reported per merchant.
TOPOLOGY.agent("outcomes", tables=("card_outcomes",), local_tables=("merchant_reports",))(
    card_outcomes)

WITH_MERCHANT_RISK = replace(
    TOPOLOGY,
    features=replace(FEATURES, version=2, features=(
        *FEATURES.features,
        # post-transaction anomaly updates (anomaly.py): a day-old merchant row is stale
        TableFeature("merchant_amount_z", ("merchant_stats",), "merchant_id",
                     merchant_amount_z, max_age_ms=24 * HOUR_MS),
        TableFeature("merchant_risk", ("merchant_stats", "merchant_reports"), "merchant_id",
                     merchant_risk),
    )),
    agents=(*TOPOLOGY.agents,
            Agent("merchant_decisions", "decisions", merchant_decisions, (),
                  ("merchant_stats",))),
    decision_context=("merchant_id",),  # what the merchant agent folds a decision under
    models_dir=Path(__file__).parent / "models_merchant_risk",
)
"""The fraud topology with per-merchant statistics as features (feature set ``fraud:v2``):
``merchant_amount_z`` and ``merchant_risk``, read from the tables of the `merchant_decisions`
agent (fed every decision in process) and of `card_outcomes` (the reports), with models
trained on them (`models_merchant_risk/`; primary AUC 0.9942 -> 0.9965, recall at decline
0.82 -> 0.90). Opt-in: in this Python worker folding every decision into a merchant row and
reading it back costs about 45% of the backlog throughput (README, "Agents").
``streamwise worker topologies.fraud:WITH_MERCHANT_RISK``, the same on every worker of the
group; same name, topics and group as `TOPOLOGY`, its decisions carry ``context``."""

WITH_CARD_RISK = replace(WITH_MERCHANT_RISK, agents=(
    *WITH_MERCHANT_RISK.agents,
    Agent("card_decisions", "decisions", card_decisions, ("card_risk",))))
"""`WITH_MERCHANT_RISK` with the `card_risk` agent too (per card: its decisions by outcome,
a score EWMA, anomaly flags): every anomaly agent of the topology. Opt-in like it."""
