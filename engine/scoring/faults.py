"""Fault injection around a real model, for chaos tests of timeouts, breaker and fallbacks.

Spec (flag ``--inject-faults`` / env ``STREAMWISE_INJECT_FAULTS``), comma-separated:
``slow=P:MS`` adds MS ms to a share P of calls; ``fail=P`` makes a share P of calls raise;
``fail_for_s=S`` makes every call fail for the first S seconds after start. Off by default;
the real model still runs for every call that is not failed.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, ModelError

__all__ = ["FaultInjector", "FaultSpec", "FaultyModel"]


@dataclass(frozen=True)
class FaultSpec:
    slow_share: float = 0.0
    slow_ms: int = 0
    fail_share: float = 0.0
    fail_for_s: float = 0.0

    @classmethod
    def parse(cls, text: str) -> FaultSpec:
        values: dict = {}
        try:
            for part in filter(None, (p.strip() for p in text.split(","))):
                name, _, arg = part.partition("=")
                if name == "slow":
                    share, _, ms = arg.partition(":")
                    values["slow_share"], values["slow_ms"] = float(share), int(ms)
                elif name == "fail":
                    values["fail_share"] = float(arg)
                elif name == "fail_for_s":
                    values["fail_for_s"] = float(arg)
                else:
                    raise ValueError(name)
        except ValueError:
            raise ConfigError(f"bad --inject-faults {text!r}; e.g. 'slow=0.2:300,fail=0.1'") \
                from None
        return cls(**values)


class FaultyModel:
    """Wraps a model; same interface. Randomness is seeded, so runs are repeatable."""

    def __init__(self, model, spec: FaultSpec, started_at: float, seed: int = 1) -> None:
        self._model = model
        self._spec = spec
        self._started_at = started_at
        self._rng = random.Random(seed)
        self.ref = model.ref
        self.manifest = model.manifest

    def run_options(self):
        return self._model.run_options()

    def score_many(self, rows: np.ndarray, run_options=None) -> np.ndarray:
        s = self._spec
        if time.monotonic() - self._started_at < s.fail_for_s or self._rng.random() < s.fail_share:
            raise ModelError(f"{self.ref}: injected failure")
        if s.slow_share and self._rng.random() < s.slow_share:
            time.sleep(s.slow_ms / 1000)
        return self._model.score_many(rows, run_options)


class FaultInjector:
    """`wrap` callable for `FallbackChain`: one persistent `FaultyModel` per loaded model."""

    def __init__(self, spec: FaultSpec) -> None:
        self._spec = spec
        self._started_at = time.monotonic()
        self._wrapped: dict[int, FaultyModel] = {}

    def __call__(self, model):
        wrapped = self._wrapped.get(id(model))
        if wrapped is None or wrapped._model is not model:  # noqa: SLF001 (own class)
            wrapped = FaultyModel(model, self._spec, self._started_at, seed=len(self._wrapped))
            self._wrapped[id(model)] = wrapped
        return wrapped
