"""PostgreSQL statements run on the DBAPI cursor of a unit's connection, past SQLAlchemy's execute.

Every ask runs two such statements (its question's and its answer's: `models/repository.py`),
each on its own connection outside a transaction (`services/unit_of_work.py`). There,
SQLAlchemy's `Connection.execute` of a ready `TextClause` cost 0.17 ms of CPU per
statement (its compiled-cache lookup, an execution context, a result object), as much as
psycopg2 and the round trip together (0.37 against 0.20 ms per answer's statement, in one
gevent process). So the statement is rendered for psycopg2 once, its parameters go through
the same bind processors SQLAlchemy would apply, and a failure comes out as SQLAlchemy's
own `DBAPIError`, the connection invalidated when it is lost, as `execute` does: the unit
of work reads failures the same way. On a Session (work that needs a transaction), and on
SQLite, the statement runs through SQLAlchemy as any other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.dialects.postgresql.psycopg2 import PGDialect_psycopg2
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import TextClause

_DIALECT = PGDialect_psycopg2()
"""Renders statements as psycopg2 takes them (`%(name)s`), with its bind processors."""


class Prepared:
    """One PostgreSQL statement, rendered once."""

    def __init__(self, clause: TextClause) -> None:
        self.clause = clause
        compiled = clause.compile(dialect=_DIALECT)
        self.sql = str(compiled)
        self._processors: dict[str, Callable[[Any], Any]] = {}
        for name, bind in compiled.binds.items():
            processor = bind.type.dialect_impl(_DIALECT).bind_processor(_DIALECT)
            if processor is not None:
                self._processors[name] = processor

    def run(self, work: Session | Connection, parameters: Mapping[str, Any]) -> int:
        """Run it; how many rows it wrote. On a Session, or on a database other than
        PostgreSQL (SQLite), the clause runs through SQLAlchemy as any other."""
        if not isinstance(work, Connection) or work.dialect.name != "postgresql":
            return work.execute(self.clause, parameters).rowcount  # type: ignore[attr-defined, no-any-return]
        values = dict(parameters)
        for name, processor in self._processors.items():
            if name in values:
                values[name] = processor(values[name])
        dialect, dbapi_connection = work.dialect, work.connection.dbapi_connection
        assert dbapi_connection is not None
        try:
            with dbapi_connection.cursor() as cursor:
                cursor.execute(self.sql, values)
                return cursor.rowcount  # type: ignore[no-any-return]
        except dialect.loaded_dbapi.Error as error:
            lost = dialect.is_disconnect(error, dbapi_connection, None)
            if lost:
                work.invalidate(error)
            raise DBAPIError.instance(
                self.sql, values, error, dialect.loaded_dbapi.Error,
                hide_parameters=True, connection_invalidated=lost, dialect=dialect,
            ) from error
