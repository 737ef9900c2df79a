"""Logging set-up: text lines for people, or one JSON object per line for log pipelines."""

from __future__ import annotations

import logging
import logging.handlers
import sys
import time

import orjson

from .config import LogConfig

__all__ = ["JsonFormatter", "discard_held_logs", "release_held_logs", "setup_logging"]

_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message"}`` (plus ``"exception"`` with the trace), one
    object per line; `ts` is UTC ISO-8601 with milliseconds."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        doc = {"ts": f"{ts}.{int(record.msecs):03d}Z", "level": record.levelname,
               "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(doc, default=str).decode()


def setup_logging(cfg: LogConfig, hold: bool = False) -> None:
    """The root logger at `cfg.level`, to stderr, as text or JSON. aiokafka logs its warnings
    and errors only (its info lines are per connection).

    `hold`: keep the records of the start-up checks until `release_held_logs()`; a command
    that fails a check before then ends with its one line alone (the held records go)."""
    handler: logging.Handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if cfg.format == "json" else logging.Formatter(_TEXT))
    if hold:
        handler = _Held(handler)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(cfg.level)
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))


class _Held(logging.handlers.MemoryHandler):
    def __init__(self, target: logging.Handler) -> None:
        super().__init__(capacity=100_000, flushLevel=logging.CRITICAL + 1, target=target)

    def shouldFlush(self, record: logging.LogRecord) -> bool:  # noqa: N802 (logging's name)
        return False  # until released


def release_held_logs() -> None:
    """The start-up checks passed: write what was held, and log directly from now on."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _Held):
            target = handler.target
            handler.flush()
            root.removeHandler(handler)
            if target is not None:
                root.addHandler(target)


def discard_held_logs() -> None:
    """A start-up check failed: its one-line error says it all; the held records go."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _Held):
            handler.buffer.clear()
    release_held_logs()
