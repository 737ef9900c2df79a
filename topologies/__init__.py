"""Topologies shipped with Streamwise. Each is registered under the ``streamwise.topologies``
entry points (pyproject.toml), which is how the engine finds it; `get` is a shorthand for
tests and scripts."""

from __future__ import annotations

from engine.topology import Topology
from engine.topology_loader import available_topologies, load_topology

__all__ = ["available", "get"]


def available() -> tuple[str, ...]:
    """The registered topology names (the shipped ones and any an installed package adds)."""
    return available_topologies()


def get(spec: str) -> Topology:
    """The topology `spec` names: see `engine.topology_loader.load_topology`."""
    return load_topology(spec)
