"""The key generation: how every process knows, on every request, whether its copy of the
API keys is still current.

`api_key_generation` holds one counter; `announce` adds one to it in the same transaction
as any key made or revoked. A process whose copy was loaded at the generation the
database still has may trust its copy; any other reloads it. Reading the counter is one
single-row read on a connection that each process keeps for it alone:

- SQLite: a read of the local file, about 4 µs per request.
- PostgreSQL: one round trip; on loopback 60 µs in a plain process and 150 µs in a gevent
  worker (3-7 % of the cheapest route, a conversation list of about 2 ms). Requests of
  one process that arrive while a read is under way share the next one: a read serves
  every request that arrived before it began, so a burst costs a read or two, not one
  each (1,000 requests at once: 2 reads), and a request waits on at most two.

Why not LISTEN/NOTIFY on PostgreSQL, which needs no round trip: a notification reaches
the other sessions some time after the commit has returned (measured here: 13 % of them
later than a read made at once, by up to 12 ms), so "revoked" would mean "soon", not
"now"; it is lost without a trace behind a transaction-pooling proxy (PgBouncer); and a
listening connection that a firewall drops unseen keeps a revoked key working until TCP
notices. A read per request has none of these failure modes.

The connection belongs to one process: it is closed before the process forks (a gunicorn
master forking its workers) and when the database is disposed of; each process opens its
own on first use.
"""

from __future__ import annotations

import functools
import os
import threading
import time
import weakref
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.exc import DisconnectionError, SQLAlchemyError
from sqlalchemy.orm import Session

from models.db import Database

READ_GENERATION = "SELECT value FROM api_key_generation WHERE id = 1"
QUICK_FAILURE_SECONDS = 1.0


def announce(session: Session) -> None:
    """Make every process reload its keys once `session` commits."""
    session.execute(text("UPDATE api_key_generation SET value = value + 1 WHERE id = 1"))


class KeyWatch:
    """Reads the key generation for the requests of this process."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._connection: Any = None  # the driver's own connection, outside the pool
        self._lock = threading.Lock()
        self._reads_begun = 0
        self._last: tuple[int, int | str] = (0, "")
        """The number of the last read that ended, and the generation it found (or why not)."""
        _close_when_done(self, db)

    def generation(self) -> int:
        """The generation as it was at some moment after this call began.

        Raises `DisconnectionError` (a 503) when the database cannot be read, as soon as a
        read that ends after this call began has failed: waiting requests fail together."""
        begun_before, ended_before = self._reads_begun, self._last[0]
        with self._lock:
            number, found = self._last
            began_since = number > begun_before
            failed_since = number > ended_before and isinstance(found, str)
            if not (began_since or failed_since):
                self._reads_begun += 1
                number, found = self._reads_begun, self._read()
                self._last = (number, found)
        if isinstance(found, str):
            raise DisconnectionError(f"cannot read the API key generation: {found}")
        return found

    def close(self) -> None:
        with self._lock:
            self._close()

    def _read(self) -> int | str:
        """The generation, or why it could not be read.

        A connection the server closed (a restart) fails at once and is replaced on the
        spot; one that failed slowly (the server stopped answering) is not tried again by
        this read, which would only wait as long again."""
        errors = (SQLAlchemyError, self._db.engine.dialect.loaded_dbapi.Error)
        was_open, started = self._connection is not None, time.monotonic()
        try:
            return self._select()
        except errors as error:
            self._close()
            if not was_open or time.monotonic() - started > QUICK_FAILURE_SECONDS:
                return str(error)
        try:
            return self._select()
        except errors as error:
            self._close()
            return str(error)

    def _select(self) -> int:
        if self._connection is None:
            pooled = self._db.engine.raw_connection()  # made like the pool's, then let go of
            pooled.detach()
            self._db.engine.dialect.set_isolation_level(pooled.dbapi_connection, "AUTOCOMMIT")
            self._connection = pooled.dbapi_connection
        cursor = self._connection.cursor()
        try:
            cursor.execute(READ_GENERATION)
            (value,) = cursor.fetchone()
        finally:
            cursor.close()
        return int(value)

    def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            except self._db.engine.dialect.loaded_dbapi.Error:
                pass  # already broken: nothing to give back


_watches: weakref.WeakSet[KeyWatch] = weakref.WeakSet()


def _close_when_done(watch: KeyWatch, db: Database) -> None:
    if hasattr(os, "register_at_fork"):
        _close_watches_before_fork()
    _watches.add(watch)
    event.listen(db.engine, "engine_disposed", lambda _engine: watch.close())


@functools.cache
def _close_watches_before_fork() -> None:
    os.register_at_fork(before=_close_watches)


def _close_watches() -> None:
    for watch in list(_watches):
        watch.close()
