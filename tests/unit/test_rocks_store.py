"""RocksStore runs without RocksDB's write-ahead log: the Kafka changelog is the log (README,
"Delivery and state"). Checked on a real RocksDB directory."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.errors import StateError
from engine.state import RocksStore
from engine.state.stores import Checkpoints

ROOT = Path(__file__).resolve().parents[2]


def _wal_bytes(db: Path) -> int:
    """Bytes in the write-ahead log files (``NNNNNN.log``; ``LOG`` is the info log)."""
    return sum(p.stat().st_size for p in db.iterdir() if p.suffix == ".log")


def test_writes_bypass_the_write_ahead_log(tmp_path: Path) -> None:
    db = tmp_path / "p0"
    store = RocksStore(db)
    try:
        assert any(p.suffix == ".log" for p in db.iterdir())  # RocksDB keeps one open
        for i in range(50):
            store.apply({b"k%03d" % i: b"v" * 1_000}, changelog_offset=i)
        assert store.get(b"k049") == b"v" * 1_000 and store.changelog_offset == 49
        assert _wal_bytes(db) == 0  # 50 KB written, nothing of it logged
    finally:
        store.close()


# -- checkpoints (#13 item 6) and failures (#13 item 3) ---------------------------------------

_CRASHING_WRITER = r"""
import os, signal, sys, time
from pathlib import Path
from engine.state.stores import Checkpoints, RocksStore

path, every = Path(sys.argv[1]), sys.argv[2]
checkpoints = None if every == "none" else Checkpoints(every_records=int(every), every_s=1e9)
store = RocksStore(path, checkpoints)
for batch in range(10):  # 10 batches of 1,000 keys, changelog offsets 999, 1999, ...
    store.apply({b"k%05d" % (batch * 1000 + i): b"v" * 100 for i in range(1000)},
                changelog_offset=batch * 1000 + 999)
for _ in range(500):  # bounded: until RocksDB's background flushes are done (<= 5 s)
    if store._db.property_int_value("rocksdb.num-running-flushes") == 0 and \
            store._db.property_int_value("rocksdb.mem-table-flush-pending") == 0:
        break
    time.sleep(0.01)
print(store.flushes, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # a crash: no close, no flush of the memtable
"""


def _crash_after_writes(tmp_path: Path, every: str) -> tuple[int, RocksStore]:
    db = tmp_path / "p0"
    proc = subprocess.run([sys.executable, "-c", _CRASHING_WRITER, str(db), every],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    return int(proc.stdout.strip()), RocksStore(db)


def test_a_crash_keeps_the_state_of_the_last_checkpoint(tmp_path: Path) -> None:
    flushes, store = _crash_after_writes(tmp_path, every="2500")
    try:
        # checkpoints after the batches ending at 2,999, 5,999 and 8,999 changes
        assert flushes == 3
        assert store.changelog_offset == 8_999  # restore replays the changelog from 9,000 on
        assert store.get(b"k08999") == b"v" * 100 and store.get(b"k09000") is None
        assert sum(1 for _ in store.items()) == 9_000
    finally:
        store.close()


def test_without_checkpoints_a_crash_keeps_nothing(tmp_path: Path) -> None:
    """The landed behaviour, kept for what it shows: the whole changelog is replayed."""
    flushes, store = _crash_after_writes(tmp_path, every="none")
    try:
        assert flushes == 0 and store.changelog_offset is None
        assert store.get(b"k00000") is None
    finally:
        store.close()


def test_checkpoints_are_due_by_age_too(tmp_path: Path) -> None:
    now = [100.0]
    store = RocksStore(tmp_path / "p0", Checkpoints(every_records=10**9, every_s=5.0),
                       clock=lambda: now[0])
    try:
        assert not store.checkpoint_if_due()  # nothing written: nothing to flush
        store.apply({b"a": b"1"}, changelog_offset=0)
        now[0] += 4.9
        assert not store.checkpoint_if_due() and store.flushes == 0
        now[0] += 0.1
        assert store.checkpoint_if_due() and store.flushes == 1
        assert not store.checkpoint_if_due()  # clean again
    finally:
        store.close()


def test_a_state_path_that_is_not_a_directory_is_one_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "data"
    blocker.write_text("not a directory")
    with pytest.raises(StateError, match=r"^cannot open state at .*data/p0: "):
        RocksStore(blocker / "p0")


def test_a_deleted_directory_fails_the_flush_the_next_write_and_close(tmp_path: Path) -> None:
    db = tmp_path / "p0"
    store = RocksStore(db, Checkpoints(every_records=2, every_s=1e9))
    store.apply({b"a": b"1"}, changelog_offset=0)  # no flush under way while it is deleted
    assert store.present()
    shutil.rmtree(db)
    assert not store.present()
    with pytest.raises(StateError, match=r"^cannot write state at .*p0: .*No such file"):
        for i in range(1, 200):  # the background flush fails; a later write says so
            store.apply({b"a": b"%d" % i}, changelog_offset=i)
            time.sleep(0.01)
    with pytest.raises(StateError, match=r"^cannot flush state at .*p0 on close: "):
        store.close()
