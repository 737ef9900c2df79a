"""`streamwise worker --processes N`: N members of the topology's consumer group under one
supervisor, so one worker uses every core of a machine (a Python process has one GIL).

Each member is a `streamwise worker` child with its own state directory (``<data-dir>/m<i>``)
and the same settings (flags and environment pass through). They all listen on the one HTTP
port (SO_REUSEPORT: the kernel spreads connections among them) and each also on a private
port it advertises on the members topic, so a lookup that lands on a member that does not own
the key is forwarded to the owner's private port, as between machines.

The supervisor forwards SIGTERM and SIGINT to every child and waits for them; a child that
dies on its own is started again (after 1 s, doubling to 30 s while it keeps dying young);
a child that refuses to start (exit 2: a setting, the port, its state) stops the group. The
supervisor exits with 0 when every child stopped cleanly, else the first failure's code.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["SHARED_PORT_FLAG", "resolve_processes", "supervise"]

log = logging.getLogger("streamwise.supervisor")

SHARED_PORT_FLAG = "--shared-web-port"  # a member: listen with SO_REUSEPORT (hidden flag)
_YOUNG_S = 60.0     # a child that dies within this of its start counts as dying young
_STOP_WAIT_S = 60.0  # after SIGTERM, how long children get before SIGKILL
_BACKOFF_MAX_S = 30.0


def resolve_processes(value: str) -> int:
    """``auto`` is the machine's cores; else a count of at least 1."""
    if value == "auto":
        return max(os.cpu_count() or 1, 1)
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"--processes takes a count or auto, not {value!r}") from None
    if n < 1:
        raise ValueError(f"--processes must be at least 1, not {n}")
    return n


def free_port(host: str) -> int:
    """A port free on `host` a moment ago (for --web-port 0: every member needs the same)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class _Child:
    def __init__(self, index: int, argv: list[str]) -> None:
        self.index = index
        self.argv = argv
        self.proc: subprocess.Popen | None = None
        self.started = 0.0
        self.backoff = 1.0
        self.restart_at: float | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL)
        self.started = time.monotonic()
        self.restart_at = None
        log.info("member %d started (pid %d)", self.index, self.proc.pid)


def supervise(argv: Sequence[str], processes: int, data_dir: Path, host: str,
              port: int) -> int:
    """Run `processes` children of ``streamwise worker`` with `argv` (the worker's own
    arguments) until a signal, keeping them alive; returns the exit code."""
    if port == 0:
        port = free_port(host)
    children = []
    for i in range(processes):
        child_argv = [sys.executable, "-m", "engine", *argv, "--processes", "1",
                      SHARED_PORT_FLAG, "--web-port", str(port),
                      "--data-dir", str(data_dir / f"m{i}")]
        children.append(_Child(i, child_argv))
    stopping = False
    failure = 0

    def on_signal(signum: int, _frame) -> None:
        nonlocal stopping
        stopping = True
        for c in children:
            if c.proc is not None and c.proc.poll() is None:
                c.proc.send_signal(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("supervising %d members on %s:%d", processes, host, port)
    for c in children:
        c.start()
    while not stopping:
        time.sleep(0.2)
        now = time.monotonic()
        for c in children:
            if c.restart_at is not None:
                if now >= c.restart_at and not stopping:
                    c.start()
                continue
            code = c.proc.poll() if c.proc is not None else None
            if code is None:
                continue
            if code == 2:  # it refused to start (a setting, the port, its state): say so
                log.error("member %d exited with 2; stopping the group", c.index)
                failure = failure or 2
                stopping = True
                break
            if now - c.started >= _YOUNG_S:
                c.backoff = 1.0  # it had run a while: start again after 1 s
            c.restart_at = now + c.backoff
            log.warning("member %d exited with %s; restarting it in %.0f s", c.index, code,
                        c.backoff)
            c.backoff = min(c.backoff * 2, _BACKOFF_MAX_S)
    for c in children:  # forward the stop to any child still running, then wait
        if c.proc is not None and c.proc.poll() is None:
            c.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + _STOP_WAIT_S
    for c in children:
        if c.proc is None:
            continue
        try:
            code = c.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            c.proc.kill()
            code = c.proc.wait(timeout=10)
        if code not in (0, -signal.SIGTERM, -signal.SIGINT) and not failure:
            failure = code if code > 0 else 1
    return failure
