"""From scores and rules to decisions: thresholds and the verdict every path returns."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np

from .features import FeatureVector

__all__ = ["Outcome", "Rules", "RulesOnly", "ScoringRows", "Thresholds", "Verdict", "abstain"]

Outcome = Literal["approve", "review", "decline"]


class Verdict(NamedTuple):
    """What one scoring path concluded for one event."""

    score: float | None
    decision: Outcome
    model: str
    path: str
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Thresholds:
    """Score → outcome: ``score >= decline_at`` declines, ``score >= review_at`` reviews."""

    review_at: float
    decline_at: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.review_at <= self.decline_at <= 1.0:
            raise ValueError("thresholds need 0 <= review_at <= decline_at <= 1")

    def outcome(self, score: float) -> Outcome:
        if score >= self.decline_at:
            return "decline"
        return "review" if score >= self.review_at else "approve"


@dataclass(frozen=True)
class Rules:
    """Deterministic rules: the last scoring path before abstaining.

    `evaluate` returns a score in [0, 1] and the names of the rules that fired; missing features
    must be handled by the function itself (it sees None).
    """

    version: str
    evaluate: Callable[[FeatureVector], tuple[float, tuple[str, ...]]]
    thresholds: Thresholds

    @property
    def model_name(self) -> str:
        return f"rules:{self.version}"

    def decide(self, vector: FeatureVector, why: tuple[str, ...] = ()) -> Verdict:
        score, fired = self.evaluate(vector)
        return Verdict(score, self.thresholds.outcome(score), self.model_name,
                       "fallback:rules", (*why, *fired))


@dataclass(frozen=True)
class ScoringRows:
    """One batch to score: a row per event, in processing order.

    `matrix` is float64 ``(n, features)`` in model order, NaN for a missing value; `vector(i)`
    is row i as a decision (and the rules) see it; `last_decision(key)` is the entity's last
    decision stored before this batch (encoded), or None.
    """

    names: tuple[str, ...]
    matrix: np.ndarray
    keys: Sequence[str]
    ts_ms: Sequence[int]
    late: Sequence[bool]
    vector: Callable[[int], FeatureVector]
    last_decision: Callable[[str], bytes | None]

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def of_vectors(cls, keys: Sequence[str], vectors: Sequence[FeatureVector],
                   ts_ms: Sequence[int], late: Sequence[bool] | None = None,
                   last_decision: Callable[[str], bytes | None] = lambda key: None,
                   ) -> ScoringRows:
        """Rows from feature dicts (tests, tools); all dicts share the first one's names."""
        names = tuple(vectors[0]) if vectors else ()
        matrix = np.array([[np.nan if v is None else v for v in vec.values()]
                           for vec in vectors], dtype=np.float64).reshape(len(vectors),
                                                                          len(names))
        return cls(names, matrix, keys, ts_ms, late or [False] * len(keys),
                   vectors.__getitem__, last_decision)


def abstain(why: tuple[str, ...]) -> Verdict:
    """No path could decide: send the event to human review."""
    return Verdict(None, "review", "none", "abstain", why)


class RulesOnly:
    """A decider that always takes the rules path (no model loaded yet)."""

    def __init__(self, rules: Rules, feature_set: str) -> None:
        self._rules = rules
        self.feature_set = feature_set

    def decide(self, rows: ScoringRows) -> list[Verdict]:
        decide = self._rules.decide
        return [decide(rows.vector(i), ("no_model",)) for i in range(len(rows))]
