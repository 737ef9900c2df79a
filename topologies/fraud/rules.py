"""Deterministic fraud rules: the path of last resort before abstaining (review)."""

from engine import FeatureVector

__all__ = ["evaluate_rules"]


def evaluate_rules(f: FeatureVector) -> tuple[float, tuple[str, ...]]:
    """Risk score in [0, 1] and the rules that fired. Missing features simply don't fire."""
    score = 0.05
    fired: list[str] = []
    count_10m = f.get("count_10m") or 0
    amount = f.get("amount") or 0.0
    over_avg = f.get("amount_over_avg")
    if count_10m >= 8:
        score, fired = max(score, 0.95), [*fired, "velocity_10m>=8"]
    elif count_10m >= 5:
        score, fired = max(score, 0.6), [*fired, "velocity_10m>=5"]
    if amount >= 5_000:
        score, fired = max(score, 0.92), [*fired, "amount>=5000"]
    if f.get("is_foreign") == 1 and over_avg is not None and over_avg > 5:
        score, fired = max(score, 0.7), [*fired, "foreign_and_amount>5x_avg"]
    if over_avg is None:
        fired.append("no_profile")
    return score, tuple(fired)
