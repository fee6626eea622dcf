"""Units of work: one session (or, for a single statement or reads, one connection), one
transaction, and the one place where database failures become the domain's
`DatabaseUnavailable`."""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError, DisconnectionError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session

from models.db import Database
from models.repository import ConversationRepository, Statements
from services.errors import DatabaseUnavailable

log = logging.getLogger(__name__)

UNREACHABLE = "The database is unreachable; try again shortly."


def unavailable(error: BaseException) -> DatabaseUnavailable | None:
    """The domain meaning of a database failure that is no fault of the request, or None.

    A lost or refused connection, an exhausted pool, a server that stopped answering:
    the request may succeed later. Anything else (a constraint, a bug) is not this.
    """
    if isinstance(error, (DisconnectionError, PoolTimeout)):
        return DatabaseUnavailable(UNREACHABLE)
    if isinstance(error, DBAPIError) and (
        error.connection_invalidated or type(error).__name__ in ("OperationalError", "InterfaceError")
    ):
        return DatabaseUnavailable(UNREACHABLE)
    return None


class UnitOfWork:
    """One session and its transaction: rolled back on exit unless `commit()` was called.

    `one_statement`: the work is a single statement (two on SQLite), which PostgreSQL runs
    outside a transaction (atomic alone, committed when it returns), sparing the BEGIN and
    COMMIT round trips. It runs on a Core connection (`connection`, and `statements` on it)
    rather than a Session (`session` and `conversations`): these are the statements of every
    ask, and a Session's set-up, transaction bookkeeping and close cost about as much CPU
    again as the connection itself. (psycopg2's `autocommit` switch costs nothing;
    SQLAlchemy's AUTOCOMMIT isolation level would cost a call into libpq on every checkout.)

    `reads_only`: the work only reads, on a Core connection too, and PostgreSQL runs it
    outside a transaction. Each statement sees the data committed when it began, as it
    would in a READ COMMITTED transaction; only the BEGIN and ROLLBACK round trips go.
    """

    session: Session
    conversations: ConversationRepository
    connection: Connection
    statements: Statements

    def __init__(self, db: Database, *, one_statement: bool = False, reads_only: bool = False) -> None:
        self._db = db
        self._on_connection = one_statement or reads_only
        self._autocommit = self._on_connection and db.engine.dialect.name == "postgresql"
        self._autocommitted: Any = None
        self._work: Session | Connection | None = None

    def __enter__(self) -> UnitOfWork:
        try:
            if self._on_connection:
                self._work = self.connection = self._db.engine.connect()
                self.statements = Statements(self.connection)
                pooled = self.connection.connection
            else:
                self._work = self.session = self._db.sessions()
                self.conversations = ConversationRepository(self.session)
                pooled = self.session.connection().connection if self._autocommit else None
        except SQLAlchemyError as error:
            if self._work is not None:
                self._work.close()
            raise unavailable(error) or error from error
        if self._autocommit:
            self._autocommitted = pooled.dbapi_connection
            self._autocommitted.autocommit = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._work is not None
        try:
            if self._autocommitted is not None and not self._autocommitted.closed:
                self._autocommitted.autocommit = False  # as the pool hands connections out
            self._work.rollback()
            self._work.close()
        except SQLAlchemyError as error:  # the connection died with the transaction
            if exc is None:
                raise unavailable(error) or error from error
        if exc is not None:
            domain = unavailable(exc)
            if domain is not None:
                log.warning("database unavailable: %s", str(exc).splitlines()[0])
                raise domain from exc

    def commit(self) -> None:
        assert self._work is not None
        self._work.commit()
