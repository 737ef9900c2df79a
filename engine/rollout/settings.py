"""A topology's rollout settings: guardrail thresholds and offline validation minima."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Guardrails", "Holdout", "RolloutSettings", "ValidationMinima"]

# Score bins for the drift guardrail (PSI): fraud scores crowd near 0, so the edges are dense
# there; fixed edges keep every worker's histogram comparable.
PSI_EDGES = (0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


@dataclass(frozen=True)
class Guardrails:
    """Canary against serving over a sliding window of `window_s` (wall clock), judged once
    both sides have `min_rows` rows in it. A breach of any threshold rolls back.

    * `max_error_rate_delta`: model calls that failed (timeout, error, breaker, bad
      output, model missing: a batch whose complete rows the side's model did not score),
      canary share minus serving share;
    * `max_p99_ratio`, `p99_slack_ms`: the candidate's p99 batched-call time above the
      serving model's p99 × ratio + slack (with `p99_min_calls` calls a side);
    * `max_decline_rate_delta`: |decline share of canary − of serving|;
      (both rates also need a difference of `min_z` standard errors);
    * `max_psi`: population stability index of the two score histograms (`psi_edges`),
      with `psi_min_rows` scores a side.
    """

    window_s: float = 30.0
    min_rows: int = 200
    max_error_rate_delta: float = 0.02
    max_p99_ratio: float = 3.0
    p99_slack_ms: float = 10.0
    p99_min_calls: int = 100  # a p99 of fewer calls is one stall, not the model
    max_decline_rate_delta: float = 0.05
    max_psi: float = 0.25
    psi_min_rows: int = 1000  # PSI of 10 bins is noisy below this (~0.1 at 100 rows a side)
    psi_edges: tuple[float, ...] = PSI_EDGES
    # the error-rate and decline-rate differences must also be this many standard errors
    # apart (a two-proportion z test): a 5-point difference at 200 rows and a 17% decline
    # share is 2 standard errors, noise that would roll back a good candidate
    min_z: float = 4.0


@dataclass(frozen=True)
class ValidationMinima:
    """What `streamwise rollout T validate` requires of a candidate on the held-out set."""

    max_auc_drop: float = 0.01  # below the serving version's AUC
    max_ece: float = 0.05
    ece_bins: int = 10


# () -> (events as dicts, profiles {key: profile}, labels {event_id: 0|1}); the default
# held-out set `validate` replays when no --holdout file is given.
Holdout = Callable[[], tuple[list[dict[str, Any]], dict[str, dict[str, Any]], dict[str, Any]]]


@dataclass(frozen=True)
class RolloutSettings:
    guardrails: Guardrails = Guardrails()
    minima: ValidationMinima = ValidationMinima()
    holdout: Holdout | None = field(default=None, compare=False)
