"""Schema changes that let the service keep writing while they run (used by migrations)."""

from __future__ import annotations

from sqlalchemy import Connection, text


def create_index_concurrently(connection: Connection, name: str, definition: str) -> None:
    """PostgreSQL: build without blocking writes (outside a transaction: in an Alembic
    `autocommit_block`). An earlier interrupted build leaves an invalid index, which is
    dropped first."""
    invalid = connection.execute(
        text("SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = :name AND NOT i.indisvalid"),
        {"name": name},
    ).first()
    if invalid is not None:
        connection.execute(text(f"DROP INDEX CONCURRENTLY {name}"))
    connection.execute(text(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {definition}"))
