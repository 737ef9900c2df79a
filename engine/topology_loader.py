"""Find a topology from what a user types after `streamwise worker` (or replay, produce,
rollout): the engine imports no topology by name.

A spec is one of
* ``package.module:ATTR``: that attribute of that module (``mypkg.topology:TOPOLOGY``);
* a name registered under the entry-point group ``streamwise.topologies`` (the shipped
  ``fraud`` is one, in pyproject.toml; a package of yours registers its own the same way);
* ``package.module``: that module's ``TOPOLOGY``.

Modules are imported with the current directory first on ``sys.path`` (as ``python -m``
and uvicorn do), so a package next to where the command runs needs no install. Every
failure is a `ConfigError` naming what was tried.
"""

from __future__ import annotations

import importlib
import os
import sys
from importlib.metadata import entry_points

from .errors import ConfigError
from .topology import Topology

__all__ = ["ENTRY_POINT_GROUP", "available_topologies", "load_topology"]

ENTRY_POINT_GROUP = "streamwise.topologies"
_DEFAULT_ATTR = "TOPOLOGY"


def available_topologies() -> tuple[str, ...]:
    """The names registered under ``streamwise.topologies``, sorted."""
    return tuple(sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}))


def load_topology(spec: str) -> Topology:
    """The `Topology` that `spec` names (see the module docstring)."""
    spec = spec.strip()
    try:
        return _checked(_find(spec))
    except _NotFound as exc:
        raise ConfigError(f"unknown topology {spec!r}: {exc}") from exc.__cause__


class _NotFound(Exception):
    """Why a spec names no topology (the caller adds the spec)."""


def _find(spec: str) -> object:
    if not spec:
        raise _NotFound("give a registered name, package.module:ATTR or package.module")
    if ":" in spec:
        module, _, attr = spec.partition(":")
        return _attribute(module, attr)
    registered = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    if spec in registered:
        ep = registered[spec]
        try:
            return ep.load()
        except Exception as exc:
            raise _NotFound(f"its entry point {ep.value} failed to load: "
                            f"{type(exc).__name__}: {exc}") from exc
    names = ", ".join(sorted(registered)) or "none"
    if not _is_module_path(spec):
        raise _NotFound(f"not a registered name ({ENTRY_POINT_GROUP}: {names}) nor "
                        f"package.module:ATTR")
    try:
        return _attribute(spec, _DEFAULT_ATTR)
    except _NotFound as exc:
        raise _NotFound(f"not a registered name ({ENTRY_POINT_GROUP}: {names}), and {exc}"
                        ) from exc.__cause__


def _is_module_path(spec: str) -> bool:
    return all(part.isidentifier() for part in spec.split("."))


def _attribute(module: str, attr: str) -> object:
    if not _is_module_path(module) or not _is_module_path(attr):
        raise _NotFound("expected package.module:ATTR")
    obj: object = _import(module)
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise _NotFound(f"module {module} has no attribute {attr!r}") from None
    return obj


def _import(module: str) -> object:
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)  # a package beside the command, as `python -m` finds it
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module == exc.name or module.startswith(exc.name + ".")):
            raise _NotFound(f"no module named {exc.name!r} (looked in the current directory "
                            f"and the installed packages)") from None
        raise _NotFound(f"importing {module} failed: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:  # the user's module raised while it was imported: say which
        raise _NotFound(f"importing {module} failed: {type(exc).__name__}: {exc}") from exc


def _checked(obj: object) -> Topology:
    if not isinstance(obj, Topology):
        raise _NotFound(f"names an object of type {type(obj).__name__}, not an engine.Topology")
    obj.check_table_features()  # their agents are declared after the topology, at import
    return obj
