"""Readiness: can this instance serve requests that need the database?"""

from __future__ import annotations

from models.db import Database
from services.errors import SchemaNotCurrent
from services.unit_of_work import UnitOfWork


def check_ready(db: Database) -> None:
    """Raise `DatabaseUnavailable` unless the database answers and its schema is current.

    The check runs in a unit of work, so an unreachable database is told apart from other
    failures by the same rule as on every other route.
    """
    with UnitOfWork(db) as uow:
        current = db.schema_is_current(uow.session.connection())
    if not current:
        raise SchemaNotCurrent("The database schema is not current; run `python app.py migrate`.")
