"""engine.policy: thresholds, the rules path, abstain, and the rules-only decider."""

from __future__ import annotations

import numpy as np
import pytest

from engine.policy import Rules, RulesOnly, ScoringRows, Thresholds, Verdict, abstain


@pytest.mark.parametrize(("score", "outcome"), [
    (0.0, "approve"), (0.4999, "approve"), (0.5, "review"), (0.8999, "review"),
    (0.9, "decline"), (1.0, "decline")])
def test_thresholds_are_inclusive_lower_bounds(score: float, outcome: str) -> None:
    assert Thresholds(review_at=0.5, decline_at=0.9).outcome(score) == outcome


def test_equal_thresholds_skip_review() -> None:
    t = Thresholds(0.7, 0.7)
    assert (t.outcome(0.69), t.outcome(0.7)) == ("approve", "decline")


@pytest.mark.parametrize(("review", "decline"), [(0.0, 0.0), (1.0, 1.0), (0.0, 1.0)])
def test_thresholds_on_the_edges_of_zero_and_one_are_valid(review: float,
                                                           decline: float) -> None:
    assert Thresholds(review, decline).decline_at == decline


@pytest.mark.parametrize(("review", "decline"), [(-0.1, 0.5), (0.6, 0.5), (0.5, 1.1)])
def test_thresholds_out_of_order_or_range_are_refused(review: float, decline: float) -> None:
    with pytest.raises(ValueError, match=r"^thresholds need 0 <= review_at <= decline_at <= 1$"):
        Thresholds(review, decline)


def _rules() -> Rules:
    def evaluate(v):
        return (0.95, ("big",)) if (v.get("amount") or 0) > 100 else (0.1, ())

    return Rules(version="v7", evaluate=evaluate, thresholds=Thresholds(0.5, 0.9))


def test_rules_decide_with_their_own_thresholds_and_name() -> None:
    rules = _rules()
    assert rules.model_name == "rules:v7"
    assert rules.decide({"amount": 500}, ("timeout",)) == Verdict(
        0.95, "decline", "rules:v7", "fallback:rules", ("timeout", "big"))
    assert rules.decide({"amount": 5}) == Verdict(0.1, "approve", "rules:v7", "fallback:rules",
                                                  ())


def test_abstain_is_review_without_a_score() -> None:
    assert abstain(("a", "b")) == Verdict(None, "review", "none", "abstain", ("a", "b"))


def test_rules_only_decides_every_vector_by_the_rules_and_says_why() -> None:
    decider = RulesOnly(_rules(), "fraud:v1")
    assert decider.feature_set == "fraud:v1"
    out = decider.decide(ScoringRows.of_vectors(["k1", "k2"], [{"amount": 500}, {"amount": 1}],
                                                [1, 2], [False, True]))
    assert out == [Verdict(0.95, "decline", "rules:v7", "fallback:rules", ("no_model", "big")),
                   Verdict(0.1, "approve", "rules:v7", "fallback:rules", ("no_model",))]


def test_scoring_rows_from_feature_dicts() -> None:
    vectors = [{"a": 1, "b": None}, {"a": 2, "b": 3}]
    rows = ScoringRows.of_vectors(["k1", "k2"], vectors, [10, 20])
    assert (rows.names, list(rows.keys), list(rows.ts_ms), len(rows)) == (
        ("a", "b"), ["k1", "k2"], [10, 20], 2)
    assert rows.matrix.dtype == np.float64 and rows.matrix.shape == (2, 2)
    assert np.isnan(rows.matrix[0, 1]) and rows.matrix[1].tolist() == [2.0, 3.0]
    assert list(rows.late) == [False, False] and rows.vector(1) is vectors[1]
    assert rows.last_decision("k1") is None
    late = ScoringRows.of_vectors(["k"], [{"a": 1}], [5], late=[True])
    assert list(late.late) == [True]
    assert late.matrix.dtype == np.float64  # integers only: still a float matrix
    empty = ScoringRows.of_vectors([], [], [])
    assert empty.names == () and empty.matrix.shape == (0, 0)
