"""Alembic environment: runs on the connection the service hands over, or on DATABASE_URL."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from models.entities import Base


def run_on(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


given = context.config.attributes.get("connection")
if given is not None:
    run_on(given)
else:  # the `alembic` command line, for developers writing migrations
    from config import Settings
    from models.db import make_engine

    with make_engine(Settings().database_url).begin() as connection:
        run_on(connection)
