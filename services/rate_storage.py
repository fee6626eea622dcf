"""A storage for the `limits` library (what flask-limiter counts in) in the instance's
shared counts file, so every worker of an instance counts against one limit without Redis.

`limits` has storages for memory (one per process), Redis, Memcached and MongoDB, and
takes others by subclassing `Storage`: this one registers the `gpt-api-file` scheme
(`gpt-api-file:///path/to/counts.sqlite3`). It serves the moving window that the service
uses (one row per request still in its window) and, to be a whole storage, the fixed
window's counters.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from urllib.parse import urlparse

from limits.storage import MovingWindowSupport, Storage

from services.shared_counts import SharedCounts

SCHEME = "gpt-api-file"

SCHEMA = """
CREATE TABLE IF NOT EXISTS hits (key TEXT NOT NULL, at REAL NOT NULL, expires_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS hits_by_key ON hits (key, at);
CREATE INDEX IF NOT EXISTS hits_by_expiry ON hits (expires_at);
CREATE TABLE IF NOT EXISTS counters (key TEXT PRIMARY KEY, value INTEGER NOT NULL, expires_at REAL NOT NULL);
"""


def storage_uri(path: Path) -> str:
    return f"{SCHEME}://{path}"


class SharedFileStorage(Storage, MovingWindowSupport):
    STORAGE_SCHEME = [SCHEME]

    def __init__(self, uri: str, wrap_exceptions: bool = False, **options: float | str | bool) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        self._counts = SharedCounts(Path(urlparse(uri).path), SCHEMA)

    @property
    def base_exceptions(self) -> type[Exception]:
        return sqlite3.Error

    # -- the moving window ------------------------------------------------------------------

    def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        if amount > limit:
            return False
        now = time.time()
        with self._counts.transaction() as db:
            db.execute("DELETE FROM hits WHERE expires_at <= ?", (now,))  # anyone's, once each
            (taken,) = db.execute(
                "SELECT count(*) FROM hits WHERE key = ? AND at > ?", (key, now - expiry)
            ).fetchone()
            if taken + amount > limit:
                return False
            db.executemany("INSERT INTO hits VALUES (?, ?, ?)", [(key, now, now + expiry)] * amount)
        return True

    def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        """When the oldest request still in the window came, and how many are in it."""
        now = time.time()
        with self._counts.transaction() as db:
            oldest, count = db.execute(
                "SELECT min(at), count(*) FROM hits WHERE key = ? AND at > ?", (key, now - expiry)
            ).fetchone()
        return (oldest if count else now), count

    # -- the fixed window -------------------------------------------------------------------

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        now = time.time()
        with self._counts.transaction() as db:
            db.execute("DELETE FROM counters WHERE key = ? AND expires_at <= ?", (key, now))
            db.execute(
                "INSERT INTO counters VALUES (?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = value + excluded.value",
                (key, amount, now + expiry),
            )
            (value,) = db.execute("SELECT value FROM counters WHERE key = ?", (key,)).fetchone()
        return int(value)

    def get(self, key: str) -> int:
        with self._counts.transaction() as db:
            row = db.execute(
                "SELECT value FROM counters WHERE key = ? AND expires_at > ?", (key, time.time())
            ).fetchone()
        return int(row[0]) if row else 0

    def get_expiry(self, key: str) -> float:
        now = time.time()
        with self._counts.transaction() as db:
            row = db.execute(
                "SELECT expires_at FROM counters WHERE key = ? AND expires_at > ?", (key, now)
            ).fetchone()
        return float(row[0]) if row else now

    # -- the whole storage ------------------------------------------------------------------

    def check(self) -> bool:
        try:
            with self._counts.transaction() as db:
                db.execute("SELECT 1")
        except self.base_exceptions:
            return False
        return True

    def reset(self) -> int | None:
        with self._counts.transaction() as db:
            (keys,) = db.execute(
                "SELECT count(*) FROM (SELECT key FROM hits UNION SELECT key FROM counters)"
            ).fetchone()
            db.execute("DELETE FROM hits")
            db.execute("DELETE FROM counters")
        return int(keys)

    def clear(self, key: str) -> None:
        with self._counts.transaction() as db:
            db.execute("DELETE FROM hits WHERE key = ?", (key,))
            db.execute("DELETE FROM counters WHERE key = ?", (key,))
