"""A private local Kafka broker for one bench run, via scripts/kafka-local.sh."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from engine.errors import ConfigError

__all__ = ["LocalBroker", "free_ports"]

_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "kafka-local.sh"


def free_ports(n: int) -> list[int]:
    """`n` distinct free TCP ports on 127.0.0.1 (free when asked; bind soon after)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class LocalBroker:
    """Start on free 127.0.0.1 ports in a temp dir; `stop()` stops that broker by its PID
    (the script's stop). The script also stops it if this process dies first."""

    def __init__(self) -> None:
        if not _SCRIPT.exists():
            raise ConfigError("no --broker given and no scripts/kafka-local.sh (a source "
                              "checkout) to start one")
        port, cport = free_ports(2)
        self.dir = tempfile.mkdtemp(prefix="streamwise-kafka-")
        self._env = {**os.environ, "KAFKA_PORT": str(port), "KAFKA_CONTROLLER_PORT": str(cport),
                     "KAFKA_LOCAL_DIR": self.dir,
                     "KAFKA_OWNER_PID": str(os.getpid())}
        self.bootstrap = f"127.0.0.1:{port}"

    def _script(self, verb: str, timeout_s: float) -> str:
        proc = subprocess.run(["bash", str(_SCRIPT), verb], env=self._env, capture_output=True,
                              text=True, timeout=timeout_s, check=False)
        if proc.returncode != 0:
            raise ConfigError(f"kafka-local.sh {verb} failed: {proc.stderr.strip()[-800:]}")
        return proc.stdout

    def start(self) -> str:
        out = self._script("start", 1200)
        self.bootstrap = out.strip().splitlines()[-1].strip()
        return self.bootstrap

    def stop(self) -> None:
        """Stop this broker (by the PID the script recorded) and delete its data."""
        try:
            self._script("stop", 90)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
