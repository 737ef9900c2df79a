"""RepeatFilter (#13 item 5): with the broker down aiokafka logged ~150 ERROR lines a second;
a repeated warning or error now passes once per interval per logger and message template, and
the next one that passes says how many were left out."""

from __future__ import annotations

import io
import logging

from engine.logs import RepeatFilter


def _logger(name: str, now: list[float]) -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RepeatFilter(every_s=10.0, clock=lambda: now[0]))
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, out


def test_a_repeated_error_passes_once_per_interval_and_counts_the_rest() -> None:
    now = [1000.0]
    log, out = _logger("test.repeats.aiokafka", now)
    for i in range(150):  # one second of an outage
        log.error("Unable connect to node with id %s: %s", 1, f"refused #{i}")
        log.error("Unable to update metadata from [%s]", 1)
        now[0] += 1 / 150
    now[0] += 9.5
    log.error("Unable connect to node with id %s: %s", 1, "refused again")
    lines = out.getvalue().splitlines()
    assert lines == [
        "ERROR test.repeats.aiokafka: Unable connect to node with id 1: refused #0",
        "ERROR test.repeats.aiokafka: Unable to update metadata from [1]",
        "ERROR test.repeats.aiokafka: Unable connect to node with id 1: refused again "
        "(149 more like this in the last 10 s)",
    ]


def test_info_and_distinct_messages_are_never_held_back() -> None:
    now = [0.0]
    log, out = _logger("test.repeats.info", now)
    for p in range(8):
        log.info("partition %d ready", p)
        log.warning("partition %d: cannot flush", p)  # one template: the first passes
    log.warning("another warning")
    lines = out.getvalue().splitlines()
    assert sum(line.startswith("INFO") for line in lines) == 8
    assert [line for line in lines if line.startswith("WARNING")] == [
        "WARNING test.repeats.info: partition 0: cannot flush",
        "WARNING test.repeats.info: another warning"]
