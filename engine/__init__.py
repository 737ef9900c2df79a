"""Streamwise: a streaming-first, stateful ML inference engine."""

from .features import (
    EventFeature,
    FeatureSet,
    FeatureVector,
    ProfileFeature,
    SinceLastFeature,
    TableFeature,
    WindowFeature,
)
from .policy import Rules, Thresholds, Verdict
from .rollout.settings import Guardrails, RolloutSettings, ValidationMinima
from .scoring.breaker import BreakerSettings
from .scoring.chain import CheapFirst, ScoringSettings
from .topology import Profiles, StageBudget, TimeSettings, Topology
from .windows import Hopping, Sliding, TileTable, Tumbling

__all__ = [
    "BreakerSettings",
    "CheapFirst",
    "EventFeature",
    "FeatureSet",
    "FeatureVector",
    "Guardrails",
    "Hopping",
    "ProfileFeature",
    "Profiles",
    "RolloutSettings",
    "Rules",
    "ScoringSettings",
    "SinceLastFeature",
    "Sliding",
    "StageBudget",
    "TableFeature",
    "Thresholds",
    "TileTable",
    "TimeSettings",
    "Topology",
    "Tumbling",
    "ValidationMinima",
    "Verdict",
    "WindowFeature",
]

__version__ = "0.1.0"
