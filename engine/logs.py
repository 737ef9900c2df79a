"""Logging set-up: text lines for people, or one JSON object per line for log pipelines."""

from __future__ import annotations

import logging
import logging.handlers
import sys
import time
from collections.abc import Callable

import orjson

from .config import LogConfig

__all__ = ["JsonFormatter", "RepeatFilter", "discard_held_logs", "release_held_logs",
           "setup_logging"]

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


class RepeatFilter(logging.Filter):
    """Warnings and errors that repeat are logged at most once per `every_s` for each logger
    and message template; the next one that gets through says how many were left out.

    With the broker down, aiokafka logs each failed connection, metadata refresh and fetch:
    ~150 ERROR lines a second. Through this filter that is a few lines per `every_s`, each
    saying how often it happened."""

    def __init__(self, every_s: float = 10.0, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 1_000) -> None:
        super().__init__()
        self.every_s = every_s
        self._clock = clock
        self._max_keys = max_keys
        self._seen: dict[tuple[str, int, str], list] = {}  # key -> [last logged at, left out]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = self._clock()
        seen = self._seen.get(key)
        if seen is None:
            if len(self._seen) >= self._max_keys:  # bounded: forget the oldest templates
                for old in sorted(self._seen, key=lambda k: self._seen[k][0])[:len(self._seen) // 2]:
                    del self._seen[old]
            self._seen[key] = [now, 0]
            return True
        if now - seen[0] < self.every_s:
            seen[1] += 1
            return False
        if seen[1]:
            record.msg = (f"{record.getMessage()} ({seen[1]} more like this in the last "
                          f"{now - seen[0]:.0f} s)")
            record.args = None
        seen[0], seen[1] = now, 0
        return True


def setup_logging(cfg: LogConfig, hold: bool = False) -> None:
    """The root logger at `cfg.level`, to stderr, as text or JSON. aiokafka logs its warnings
    and errors only (its info lines are per connection); a warning or error that repeats is
    written at most once per 10 s (`RepeatFilter`).

    `hold`: keep the records of the start-up checks until `release_held_logs()`; a command
    that fails a check before then ends with its one line alone (the held records go)."""
    handler: logging.Handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if cfg.format == "json" else logging.Formatter(_TEXT))
    handler.addFilter(RepeatFilter())  # an outage must not flood the log
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
