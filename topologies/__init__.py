"""Topologies shipped with Streamwise, found by name."""

from __future__ import annotations

import importlib

from engine.errors import ConfigError
from engine.topology import Topology

__all__ = ["available", "get"]

_KNOWN = ("fraud",)


def available() -> tuple[str, ...]:
    return _KNOWN


def get(name: str) -> Topology:
    """The topology called `name` (its module's ``TOPOLOGY``)."""
    if name not in _KNOWN:
        raise ConfigError(f"unknown topology {name!r}; available: {', '.join(_KNOWN)}")
    return importlib.import_module(f"topologies.{name}").TOPOLOGY
