"""Safe rollout of model versions on stream consumers: the state on `T.control`, its
transitions, guardrails, offline validation. See README "Rollout"."""

from .settings import Guardrails, RolloutSettings, ValidationMinima
from .state import ControlLog, RolloutState, Stage, in_canary

__all__ = ["ControlLog", "Guardrails", "RolloutSettings", "RolloutState", "Stage",
           "ValidationMinima", "in_canary"]
