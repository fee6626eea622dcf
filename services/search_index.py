"""Keeping the search index up with what is written, off the ask path.

A message is stored unindexed (migration 0012) so that no ask waits for its tsvector,
trigrams or FTS entries. Each process indexes what is pending every `every` seconds in
batches, on a daemon thread; before a search, the caller's own pending messages are
indexed, so a search finds every message committed before it. Several processes and
instances share the work: PostgreSQL's batches skip the rows another one holds.
"""

from __future__ import annotations

import logging
import os
import threading

from models.db import Database
from models.search_indexing import index_pending
from services.errors import DatabaseUnavailable
from services.unit_of_work import UnitOfWork

log = logging.getLogger(__name__)

BATCH = {"postgresql": 500, "sqlite": 100}
"""Messages per transaction: PostgreSQL indexes about 3 a millisecond; SQLite's batch holds
its one write lock, which asks wait for, so it is kept to a few tens of ms."""
SEARCH_BATCHES = 10
"""At most this many batches before a search (PostgreSQL about 1.5 s, SQLite about 0.5 s at
worst: long answers, a backlog)."""


class SearchIndexer:
    def __init__(self, db: Database, every: float = 1.0) -> None:
        self._db = db
        self.every = every
        self._batch = BATCH.get(db.engine.dialect.name, 100)
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def catch_up(self, owner: str | None = None, batches: int | None = None) -> int:
        """Index the pending messages (`owner`'s, else everyone's; SQLite: everyone's) until
        none is left or after `batches` batches, each its own transaction; how many were
        indexed. An owner's catch-up that cannot have the rows in time stops there
        (`index_pending`)."""
        total, done = 0, 0
        while batches is None or done < batches:
            with UnitOfWork(self._db, one_statement=True) as uow:  # one on PostgreSQL
                indexed = index_pending(uow.connection, self._batch, owner)
                uow.commit()
            total, done = total + (indexed or 0), done + 1
            if indexed is None or indexed < self._batch:
                break
        return total

    def before_search(self, owner: str) -> None:
        """The owner's messages written since the last round, so that the search finds them.
        Bounded: after a bulk import or a reindex, the background work catches up on the
        rest (about 3,000 messages a second) and searches meanwhile see what is indexed."""
        self.catch_up(owner, SEARCH_BATCHES)

    def start(self) -> None:
        """Index what is pending every `every` seconds on a daemon thread of this process.
        Safe to call often: once per process (a forked worker starts its own)."""
        with self._lock:
            if self._pid == os.getpid() and self._thread is not None and self._thread.is_alive():
                return
            self._pid = os.getpid()
            self._stopped.clear()
            self._thread = threading.Thread(target=self._run, name="search-index", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                self.catch_up()
            except DatabaseUnavailable:
                pass  # logged by the unit of work; the next round tries again
            except Exception:  # noqa: BLE001 - the loop must outlive any one failure
                log.exception("indexing new messages for search failed")
            self._stopped.wait(self.every)
