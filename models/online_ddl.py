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


def update_in_batches(connection: Connection, table: str, assignment: str, scope: str, batch: int = 5_000) -> None:
    """`UPDATE table SET assignment` on its rows in `scope`, in primary-key order, `batch` rows
    a statement. On a connection in autocommit (an Alembic `autocommit_block`) each statement
    commits alone, so no row stays locked for longer than its batch."""
    last = None
    while True:
        after = "" if last is None else "WHERE id > :last"
        bound = connection.execute(
            text(f"SELECT id FROM (SELECT id FROM {table} {after} ORDER BY id LIMIT :batch) AS b ORDER BY id DESC LIMIT 1"),
            {"last": last, "batch": batch},
        ).scalar_one_or_none()
        if bound is None:
            return
        lower = "" if last is None else "AND id > :last"
        connection.execute(
            text(f"UPDATE {table} SET {assignment} WHERE {scope} AND id <= :bound {lower}"),
            {"bound": bound, "last": last},
        )
        last = bound
