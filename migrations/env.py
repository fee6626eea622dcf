"""Alembic environment: runs on the connection the service hands over, or on DATABASE_URL."""

from __future__ import annotations

import re

from alembic import context
from sqlalchemy import Connection

from models.entities import Base

UNMODELLED = re.compile(
    r"api_key_generation|search_vector|ix_\w+_(search|trigrams)$|\w+_(words|grams|fragments)(_\w+)?$"
)
"""What migrations keep outside the models (0006's key generation counter, read with plain
SQL; the search objects of 0005, 0011 and 0012); autogenerate must not drop it."""


def modelled(_object: object, name: str | None, _type: str, reflected: bool, compare_to: object) -> bool:
    return not (reflected and compare_to is None and UNMODELLED.fullmatch(name or ""))


def run_on(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=True,
        include_object=modelled,
        transaction_per_migration=True,  # a migration may commit batches of its own
    )
    with context.begin_transaction():
        context.run_migrations()


given = context.config.attributes.get("connection")
if given is not None:
    run_on(given)
else:  # the `alembic` command line, for developers writing migrations
    from config import Settings
    from models.db import make_engine

    settings = Settings()
    context.config.attributes.setdefault("search_language", settings.search_language)
    with make_engine(settings.database_url).connect() as connection:
        run_on(connection)
