"""Behavioural risk on clickstreams: per-user tumbling and hopping windows in event-time order.

The second reference topology, shaped unlike fraud on purpose: events are released in event
time (``ordering="event_time"``), features come from tumbling and hopping windows (fraud
reads sliding ones) over two tables with different tiles, the key is the user, there are no
profiles, and the model scores account takeovers and scraping bots.
"""

from pathlib import Path

from engine import (
    BreakerSettings,
    EventFeature,
    FeatureSet,
    Hopping,
    RolloutSettings,
    Rules,
    ScoringSettings,
    SinceLastFeature,
    Thresholds,
    TileTable,
    TimeSettings,
    Topology,
    Tumbling,
    WindowFeature,
)

from .rules import evaluate_rules
from .schema import ClickEvent
from .workload import generate

__all__ = ["TOPOLOGY"]

SECOND_MS = 1_000
MINUTE_MS = 60_000
HOUR_MS = 3_600_000

# Per user: 10 s tiles of dwell times (their count is the click rate) and the devices used;
# minute tiles of basket values and the countries the user came from.
ACTIVITY = TileTable(name="activity", tile_ms=10 * SECOND_MS, value_field="dwell_ms",
                     distinct_field="device_id", retain_ms=HOUR_MS)
GEO = TileTable(name="geo", tile_ms=MINUTE_MS, value_field="value",
                distinct_field="ip_country", retain_ms=HOUR_MS)

_1M = Tumbling(MINUTE_MS)                     # [ts - ts % 1 min, +1 min)
_1H = Tumbling(HOUR_MS)                       # the hour so far (and any earlier arrivals)
_10M_BY_2M = Hopping(10 * MINUTE_MS, 2 * MINUTE_MS)   # newest: [ts - ts % 2 min, +10 min)
_15M_BY_5M = Hopping(15 * MINUTE_MS, 5 * MINUTE_MS)   # newest: [ts - ts % 5 min, +15 min)

FEATURES = FeatureSet(
    name="clickrisk",
    version=1,
    features=(
        WindowFeature("clicks_1m", "activity", "count", _1M),
        WindowFeature("min_dwell_1m", "activity", "min", _1M),
        WindowFeature("clicks_10m", "activity", "count", _10M_BY_2M),
        WindowFeature("mean_dwell_10m", "activity", "mean", _10M_BY_2M),
        WindowFeature("devices_10m", "activity", "distinct_count", _10M_BY_2M),
        WindowFeature("countries_1h", "geo", "distinct_count", _1H),
        WindowFeature("spend_1h", "geo", "sum", _1H),
        WindowFeature("max_value_15m", "geo", "max", _15M_BY_5M),
        SinceLastFeature("secs_since_last", "activity"),
        EventFeature("is_login_failed", lambda e: int(e.action == "login_failed")),
        EventFeature("is_password_reset", lambda e: int(e.action == "password_reset")),
        EventFeature("is_checkout", lambda e: int(e.action == "checkout")),
        EventFeature("value", lambda e: e.value),
        EventFeature("dwell_ms", lambda e: e.dwell_ms),
    ),
    # A late event reads windows without itself: its own minute can be empty (min is None).
    critical=("clicks_1m", "clicks_10m", "countries_1h"),
)


def _holdout() -> tuple[list[dict], dict[str, dict], dict[str, int]]:
    """The held-out labelled set `streamwise rollout clickrisk validate` replays: 20,000 events
    of the reference generator with a seed neither training (11) nor evaluation (7) uses."""
    w = generate(20_000, seed=13)
    return w.events, w.profiles, w.labels


TOPOLOGY = Topology(
    name="clickrisk",
    description="User actions scored for account takeover and bot behaviour, in event-time "
                "order.",
    workload=generate,
    schema=ClickEvent,
    key_field="user_id",
    event_id_field="event_id",
    time_field="ts_ms",
    dedup_ttl_ms=6 * HOUR_MS,
    # Held up to 5 s for order; up to 10 s more behind that still counts (folded on arrival).
    time=TimeSettings(max_out_of_orderness_ms=5_000, allowed_lateness_ms=10_000,
                      ordering="event_time", reorder_capacity=10_000),
    tables=(ACTIVITY, GEO),
    features=FEATURES,
    rules=Rules(version="v1", evaluate=evaluate_rules,
                thresholds=Thresholds(review_at=0.5, decline_at=0.85)),
    scoring=ScoringSettings(
        primary="primary", backup="backup", timeout_ms=50, retries=1,
        last_score_max_age_ms=10 * MINUTE_MS,
        breaker=BreakerSettings(consecutive_failures=5, failure_rate=0.5, window_ms=10_000,
                                min_calls=20, cool_down_ms=5_000),
    ),
    models_dir=Path(__file__).parent / "models",
    score_late=True,
    rollout=RolloutSettings(holdout=_holdout),
)
