"""trigram indexes for fragments: what search finds inside words when words find nothing

Revision ID: 0011
Revises: 0010

PostgreSQL: the pg_trgm extension and GIN trigram indexes on the dialogue messages' text
and on conversation titles, which `ILIKE '%fragment%'` reads (models/search.py). Built
concurrently, so the service keeps writing while they build (about two minutes at a
million messages). Where pg_trgm cannot be had (not installed, or the migrating user may
not create it), the indexes are left out with a warning and fragments are found by
reading the texts.

SQLite: nothing; fragments are found by reading the texts there.
"""

from __future__ import annotations

import logging

from alembic import op
from sqlalchemy import Connection, text

from models.online_ddl import create_index_concurrently

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")

INDEXES = (
    ("ix_messages_trigrams", "messages USING gin (content gin_trgm_ops) WHERE role IN ('user', 'assistant')"),
    ("ix_conversations_trigrams", "conversations USING gin (title gin_trgm_ops)"),
)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    with op.get_context().autocommit_block():
        connection = op.get_bind()
        if not _has_trigrams(connection):
            return
        for name, definition in INDEXES:
            create_index_concurrently(connection, name, definition)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, _definition in INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {name}")


def _has_trigrams(connection: Connection) -> bool:
    """pg_trgm is there, or could be created here."""
    if connection.execute(text("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'")).first():
        return True
    if not connection.execute(text("SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm'")).first():
        log.warning("pg_trgm is not installed on this PostgreSQL server: search finds fragments by reading texts")
        return False
    try:
        connection.execute(text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
    except Exception as error:  # noqa: BLE001 - any refusal leaves search working without it
        log.warning("could not create the pg_trgm extension (%s): search finds fragments by reading texts",
                    str(error).splitlines()[0])
        return False
    return True
