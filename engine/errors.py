"""Engine errors: one root, a few subclasses named after what the caller does.

Lateness, duplicates and invalid input are *return values* of the core, never exceptions.
"""

__all__ = ["ConfigError", "EngineError", "ModelError", "StateError", "TopologyError"]


class EngineError(Exception):
    """Root of every error the engine raises on purpose."""

    retriable = False


class ConfigError(EngineError):
    """A flag, environment variable or file value is invalid: fix the configuration."""


class TopologyError(ConfigError):
    """A topology definition is inconsistent: fix the topology module."""


class StateError(EngineError):
    """Local state is unreadable or does not match its changelog."""


class ModelError(EngineError):
    """A model could not be loaded or failed to score: the fallback chain takes over."""

    retriable = True
