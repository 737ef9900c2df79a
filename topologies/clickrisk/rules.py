"""Deterministic behavioural rules: the path of last resort before abstaining (review)."""

from engine import FeatureVector

__all__ = ["evaluate_rules"]


def evaluate_rules(f: FeatureVector) -> tuple[float, tuple[str, ...]]:
    """Risk score in [0, 1] and the rules that fired. Missing features simply don't fire."""
    score = 0.05
    fired: list[str] = []
    clicks_1m = f.get("clicks_1m") or 0
    min_dwell = f.get("min_dwell_1m")
    countries = f.get("countries_1h") or 0
    devices = f.get("devices_10m") or 0
    if clicks_1m >= 40:
        score, fired = max(score, 0.9), [*fired, "clicks_1m>=40"]
    if min_dwell is not None and min_dwell < 400 and clicks_1m >= 10:
        score, fired = max(score, 0.7), [*fired, "bot_dwell<400ms"]
    if countries >= 3:
        score, fired = max(score, 0.8), [*fired, "countries_1h>=3"]
    if f.get("is_password_reset") == 1 and devices >= 2:
        score, fired = max(score, 0.85), [*fired, "reset_from_new_device"]
    if f.get("is_login_failed") == 1 and clicks_1m >= 5:
        score, fired = max(score, 0.6), [*fired, "login_failures_burst"]
    return score, tuple(fired)
