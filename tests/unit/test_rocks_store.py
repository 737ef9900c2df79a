"""RocksStore runs without RocksDB's write-ahead log: the Kafka changelog is the log (README,
"Delivery and state"). Checked on a real RocksDB directory."""

from __future__ import annotations

from pathlib import Path

from engine.state import RocksStore


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
