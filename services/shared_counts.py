"""Counts that the worker processes of one instance share when there is no Redis.

gunicorn's workers are separate processes, so a count kept in memory is one per worker,
and a limit of 5 becomes 5 per worker. These counts live instead in a small SQLite file
in a directory made when the app is built (before the workers fork, so they all get its
path) and removed when the process that made it exits. SQLite's file locks make each
change atomic across the workers; each worker opens its own connection on first use (the
process that forks never opens one).

The counts need not outlive the server, so the file is written without waiting for the
disk (`synchronous=OFF`): a change is a few tens of µs, and one worker waits for another
only while that one's change is being written.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BUSY_TIMEOUT_SECONDS = 10


def new_counts_file() -> Path:
    """A path for this instance's shared counts, in a new directory removed at exit."""
    directory = Path(tempfile.mkdtemp(prefix="gpt-api-counts-"))
    atexit.register(_remove_in_process, directory, os.getpid())
    return directory / "counts.sqlite3"


def _remove_in_process(directory: Path, pid: int) -> None:
    if os.getpid() == pid:  # workers inherit exit handlers; only the maker removes it
        shutil.rmtree(directory, ignore_errors=True)


class SharedCounts:
    """One process's way into the shared file; `schema` creates the tables it needs."""

    def __init__(self, path: Path, schema: str) -> None:
        self.path = path
        self._schema = schema
        self._connection: sqlite3.Connection | None = None
        self._pid = 0
        self._lock = threading.Lock()  # one change at a time per process: the others wait here, not on the file

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: taken at once, so what is read in it stays true until it ends."""
        with self._lock:
            connection = self._connect()
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None or self._pid != os.getpid():
            connection = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False
            )
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=OFF")
            connection.executescript(self._schema)
            self._connection, self._pid = connection, os.getpid()
        return self._connection
