"""From scores and rules to decisions: thresholds and the verdict every path returns."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import numpy as np

from .features import FeatureVector

__all__ = ["DeciderHealth", "DeciderStats", "Outcome", "Rules", "RulesOnly", "ScoringRows",
           "Thresholds", "Verdict", "abstain"]

Outcome = Literal["approve", "review", "decline"]


class Verdict(NamedTuple):
    """What one scoring path concluded for one event."""

    score: float | None
    decision: Outcome
    model: str
    path: str
    reasons: tuple[str, ...]
    # a rollout's shadow candidate on this event, {model, score, decision}: never acts
    shadow: dict | None = None


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


@dataclass
class DeciderStats:
    """What a decider counted since its last `drain_stats`, for the metrics adapter."""

    fallbacks: Counter = field(default_factory=Counter)  # reason
    rows_scored: Counter = field(default_factory=Counter)  # model ref
    primary_skipped: int = 0  # cheap-first saving
    inference_s: list[tuple[str, float]] = field(default_factory=list)  # (model ref, seconds)
    # (model name, seconds the call was given to finish) for every model call started
    call_timeouts_s: list[tuple[str, float]] = field(default_factory=list)


class DeciderHealth(NamedTuple):
    """A decider's models now: which are usable, and each one's circuit breaker state
    (``closed``, ``half_open``, ``open``; its value 0, 1, 2 for metrics)."""

    usable: tuple[str, ...]
    breakers: Mapping[str, tuple[str, int]]
    has_models: bool  # False for rules alone (nothing can be unusable)


def abstain(why: tuple[str, ...]) -> Verdict:
    """No path could decide: send the event to human review."""
    return Verdict(None, "review", "none", "abstain", why)


class RulesOnly:
    """A decider that always takes the rules path (no model loaded yet)."""

    def __init__(self, rules: Rules, feature_set: str) -> None:
        self._rules = rules
        self.feature_set = feature_set

    def twin(self) -> RulesOnly:
        return self

    def drain_stats(self) -> DeciderStats:
        return DeciderStats()

    def health(self) -> DeciderHealth:
        return DeciderHealth((), {}, has_models=False)

    def decide(self, rows: ScoringRows) -> list[Verdict]:
        decide = self._rules.decide
        return [decide(rows.vector(i), ("no_model",)) for i in range(len(rows))]
