"""Streamwise: a streaming-first, stateful ML inference engine."""

from .features import (
    EventFeature,
    FeatureSet,
    FeatureVector,
    ProfileFeature,
    SinceLastFeature,
    WindowFeature,
)
from .policy import Rules, Thresholds, Verdict
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
    "Hopping",
    "ProfileFeature",
    "Profiles",
    "Rules",
    "ScoringSettings",
    "SinceLastFeature",
    "Sliding",
    "StageBudget",
    "Thresholds",
    "TileTable",
    "TimeSettings",
    "Topology",
    "Tumbling",
    "Verdict",
    "WindowFeature",
]

__version__ = "0.1.0"
