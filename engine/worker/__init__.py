"""The stream worker: the poll loop (`loop`), changelog and restore (`changelog`), and what
every worker holds whole, profiles and partition owners (`shared`)."""

from .loop import Worker, topic_specs

__all__ = ["Worker", "topic_specs"]
