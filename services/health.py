"""Readiness: can this instance serve requests that need the database?"""

from __future__ import annotations

import logging

from sqlalchemy.exc import SQLAlchemyError

from models.db import Database
from services.errors import DatabaseUnavailable, SchemaNotCurrent

log = logging.getLogger(__name__)


def check_ready(db: Database) -> None:
    """Raise `DatabaseUnavailable` unless the database answers and its schema is current."""
    try:
        current = db.schema_is_current()
    except SQLAlchemyError as error:
        log.warning("readiness: database unreachable: %s", str(error).splitlines()[0])
        raise DatabaseUnavailable("The database is unreachable.") from error
    if not current:
        raise SchemaNotCurrent(
            "The database schema is not current; run `python app.py migrate`."
        )
