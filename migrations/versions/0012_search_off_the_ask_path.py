"""messages are indexed for search after their transaction, not inside it

Revision ID: 0012
Revises: 0011

Indexing a 1,900-character answer costs about 0.3 ms of the database's time (its tsvector,
its trigrams, the GIN entries), paid by every ask while it waited. From here on a message
is written unindexed and marked pending; `services/search_index.py` indexes pending rows in
batches, in the background of every process and, for the caller's own rows, before each
search, so a search still finds everything committed before it.

PostgreSQL: a dialogue message whose `search_vector` is NULL is pending (the partial index
`ix_messages_pending_search` finds them). `search_catch_up(owner, batch)` indexes an
owner's, in one statement whose plan the session keeps (planning the UPDATE took about
2 ms, more than running it when little is pending). The trigger no longer computes the vector; it
clears it when a message's text or role changes, so the message is indexed again. The
trigram index of migration 0011 is rebuilt over indexed messages only
(`ix_messages_indexed_trigrams`), so an insert computes no trigrams either. Both indexes
are built concurrently. Titles stay indexed by their trigger: they are short, and written
off the answer path.

SQLite: `message_words_pending` holds the rowids of dialogue messages not yet in the FTS
tables. The message triggers now only add to it, and on an update or a delete take a row
out of the FTS tables only if it was in them (an external-content FTS5 table must never be
told to delete what it does not hold). With the trigram tokenizer (SQLite 3.34 and later),
`message_fragments` and `conversation_fragments` hold every dialogue text and every title
as trigrams, for fragments inside words (read from the texts before: 1.5 s for a rare one
at a million messages); the existing texts go in here, in batches. Indexing them costs
about 0.2 ms per 1,900-character answer, which is why it waited for indexing to leave the
ask path, and they take about 2.4 times the size of the texts.
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import text

from models.online_ddl import create_index_concurrently

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

DIALOGUE = "role IN ('user', 'assistant')"
BATCH = 5_000
LOCK_WAIT = "1s"
"""How long an owner's catch-up waits for pending rows another transaction holds (they may
be the background work's batch, which the search that follows must see); past that, or on
a deadlock with a writer, it indexes nothing and the search runs on what is indexed."""
UNSEGMENTED = (
    (0x0E00, 0x0EFF),
    (0x1000, 0x109F),
    (0x1100, 0x11FF),
    (0x1780, 0x17FF),
    (0x2E80, 0x9FFF),
    (0xA960, 0xA97F),
    (0xAC00, 0xD7FF),
    (0xF900, 0xFAFF),
    (0xFF66, 0xFFDC),
    (0x20000, 0x3134F),
)
GLOB = "*[" + "".join(f"{chr(low)}-{chr(high)}" for low, high in UNSEGMENTED) + "]*"
"""Migration 0005's unsegmented scripts: texts with one of their characters go to `message_grams`."""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _postgresql_upgrade()
    else:
        _sqlite_triggers(pending=True)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _postgresql_downgrade()
    else:
        _sqlite_triggers(pending=False)


# -- PostgreSQL -----------------------------------------------------------------


def _postgresql_upgrade() -> None:
    op.execute(
        """
        CREATE OR REPLACE FUNCTION messages_search() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            NEW.search_vector := NULL;
            RETURN NEW;
        END $$
        """
    )
    op.execute("DROP TRIGGER IF EXISTS messages_search ON messages")
    op.execute(
        "CREATE TRIGGER messages_search BEFORE UPDATE OF content, role ON messages FOR EACH ROW"
        " WHEN (OLD.search_vector IS NOT NULL) EXECUTE FUNCTION messages_search()"
    )
    op.execute(
        f"""
        CREATE OR REPLACE FUNCTION search_catch_up(caller text, batch integer) RETURNS integer
        LANGUAGE plpgsql AS $$
        DECLARE
            indexed integer;
        BEGIN
            PERFORM set_config('lock_timeout', '{LOCK_WAIT}', true);
            WITH chosen AS (
                SELECT m.id FROM messages m
                WHERE m.{DIALOGUE} AND m.search_vector IS NULL
                  AND m.conversation_id IN (SELECT c.id FROM conversations c WHERE c.owner = caller)
                ORDER BY m.id LIMIT batch FOR UPDATE OF m
            )
            UPDATE messages m SET search_vector = search_document(m.content) FROM chosen WHERE m.id = chosen.id;
            GET DIAGNOSTICS indexed = ROW_COUNT;
            RETURN indexed;
        EXCEPTION WHEN lock_not_available OR deadlock_detected THEN
            RETURN NULL;
        END $$
        """
    )
    with op.get_context().autocommit_block():
        connection = op.get_bind()
        create_index_concurrently(
            connection, "ix_messages_pending_search", f"messages (id) WHERE {DIALOGUE} AND search_vector IS NULL"
        )
        if connection.execute(text("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'")).first():
            create_index_concurrently(
                connection,
                "ix_messages_indexed_trigrams",
                f"messages USING gin (content gin_trgm_ops) WHERE {DIALOGUE} AND search_vector IS NOT NULL",
            )
            connection.execute(text("DROP INDEX CONCURRENTLY IF EXISTS ix_messages_trigrams"))


def _postgresql_downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS search_catch_up(text, integer)")
    op.execute(f"UPDATE messages SET search_vector = search_document(content) WHERE {DIALOGUE} AND search_vector IS NULL")
    op.execute(
        f"""
        CREATE OR REPLACE FUNCTION messages_search() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            NEW.search_vector := CASE WHEN NEW.{DIALOGUE} THEN search_document(NEW.content) END;
            RETURN NEW;
        END $$
        """
    )
    op.execute("DROP TRIGGER IF EXISTS messages_search ON messages")
    op.execute(
        "CREATE TRIGGER messages_search BEFORE INSERT OR UPDATE OF content, role ON messages"
        " FOR EACH ROW EXECUTE FUNCTION messages_search()"
    )
    op.execute("DROP INDEX IF EXISTS ix_messages_pending_search")
    if op.get_bind().execute(text("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'")).first():
        op.execute(f"CREATE INDEX IF NOT EXISTS ix_messages_trigrams ON messages USING gin (content gin_trgm_ops) WHERE {DIALOGUE}")
        op.execute("DROP INDEX IF EXISTS ix_messages_indexed_trigrams")


# -- SQLite ---------------------------------------------------------------------


def _sqlite_triggers(*, pending: bool) -> None:
    """The message triggers of this revision (`pending`) or of 0005."""
    bind = op.get_bind()
    tables = set(bind.execute(text("SELECT name FROM sqlite_master WHERE type = 'table'")).scalars())
    if "message_words" not in tables:
        return  # no FTS5: search reads the texts, nothing to keep in step
    grams = "message_grams" in tables
    if not pending and "message_words_pending" in tables:
        _index_pending_sqlite(grams)
    for event in ("insert", "update", "delete"):
        op.execute(f"DROP TRIGGER IF EXISTS messages_search_{event}")
    held = "old.rowid NOT IN (SELECT id FROM message_words_pending)" if pending else "1 = 1"
    deletes = [
        "INSERT INTO message_words(message_words, rowid, content) SELECT 'delete', old.rowid, old.content"
        f" WHERE old.{DIALOGUE} AND {held};"
    ]
    inserts = [f"INSERT INTO message_words(rowid, content) SELECT new.rowid, new.content WHERE new.{DIALOGUE};"]
    if grams:
        deletes.append(
            "INSERT INTO message_grams(message_grams, rowid, content) SELECT 'delete', old.rowid, old.content || char(1, 1)"
            f" WHERE old.{DIALOGUE} AND old.content GLOB '{GLOB}' AND {held};"
        )
        inserts.append(
            "INSERT INTO message_grams(rowid, content) SELECT new.rowid, new.content || char(1, 1)"
            f" WHERE new.{DIALOGUE} AND new.content GLOB '{GLOB}';"
        )
    if pending and grams:
        op.execute(
            "CREATE VIRTUAL TABLE IF NOT EXISTS message_fragments USING fts5(content, content='messages',"
            " content_rowid='rowid', tokenize='trigram')"
        )
        deletes.append(
            "INSERT INTO message_fragments(message_fragments, rowid, content) SELECT 'delete', old.rowid, old.content"
            f" WHERE old.{DIALOGUE} AND {held};"
        )
    if pending:
        op.execute("CREATE TABLE IF NOT EXISTS message_words_pending (id INTEGER PRIMARY KEY)")
        forget = "DELETE FROM message_words_pending WHERE id = old.rowid;"
        inserts = [f"INSERT OR IGNORE INTO message_words_pending(id) SELECT new.rowid WHERE new.{DIALOGUE};"]
        deletes.append(forget)
    op.execute(f"CREATE TRIGGER messages_search_insert AFTER INSERT ON messages BEGIN {' '.join(inserts)} END")
    op.execute(f"CREATE TRIGGER messages_search_delete AFTER DELETE ON messages BEGIN {' '.join(deletes)} END")
    op.execute(
        "CREATE TRIGGER messages_search_update AFTER UPDATE OF content, role ON messages"
        f" BEGIN {' '.join(deletes)} {' '.join(inserts)} END"
    )
    if not pending:
        op.execute("DROP TABLE IF EXISTS message_words_pending")
        op.execute("DROP TABLE IF EXISTS message_fragments")
    if grams:
        _conversation_triggers(fragments=pending)
    if pending and grams:
        _fill_fragments()


def _conversation_triggers(*, fragments: bool) -> None:
    """The titles' triggers of 0005 and, with `fragments`, `conversation_fragments` kept too
    (titles are short and written off the answer path: indexed as they are written)."""
    if fragments:
        op.execute(
            "CREATE VIRTUAL TABLE IF NOT EXISTS conversation_fragments USING fts5(title, content='conversations',"
            " content_rowid='rowid', tokenize='trigram')"
        )
    tables = ["conversation_words", "conversation_grams"] + (["conversation_fragments"] if fragments else [])
    inserts, deletes = [], []
    for table in tables:
        padded, only = (" || char(1, 1)", f" WHERE {{row}}.title GLOB '{GLOB}'") if table == "conversation_grams" else ("", "")
        inserts.append(f"INSERT INTO {table}(rowid, title) SELECT new.rowid, new.title{padded}{only.format(row='new')};")
        deletes.append(
            f"INSERT INTO {table}({table}, rowid, title) SELECT 'delete', old.rowid, old.title{padded}{only.format(row='old')};"
        )
    for event in ("insert", "update", "delete"):
        op.execute(f"DROP TRIGGER IF EXISTS conversations_search_{event}")
    op.execute(f"CREATE TRIGGER conversations_search_insert AFTER INSERT ON conversations BEGIN {' '.join(inserts)} END")
    op.execute(f"CREATE TRIGGER conversations_search_delete AFTER DELETE ON conversations BEGIN {' '.join(deletes)} END")
    op.execute(
        "CREATE TRIGGER conversations_search_update AFTER UPDATE OF title ON conversations"
        f" BEGIN {' '.join(deletes)} {' '.join(inserts)} END"
    )
    if not fragments:
        op.execute("DROP TABLE IF EXISTS conversation_fragments")


def _fill_fragments() -> None:
    """The texts written before this revision into the fragment tables, a batch per
    transaction (later ones: messages as they are indexed, titles by their triggers)."""
    bind = op.get_bind()
    limits = {
        table: bind.execute(text(f"SELECT coalesce(max(rowid), 0) FROM {table}")).scalar_one()
        for table in ("messages", "conversations")
    }
    for fts in ("message_fragments", "conversation_fragments"):  # after an interrupted upgrade
        op.execute(f"INSERT INTO {fts}({fts}) VALUES ('delete-all')")
    with op.get_context().autocommit_block():
        connection = op.get_bind()
        for table, fts, column, scope in (
            ("messages", "message_fragments", "content",
             f"{DIALOGUE} AND rowid NOT IN (SELECT id FROM message_words_pending)"),
            ("conversations", "conversation_fragments", "title", "1 = 1"),
        ):
            for low in range(0, limits[table], BATCH):
                connection.execute(
                    text(
                        f"INSERT INTO {fts}(rowid, {column}) SELECT rowid, {column} FROM {table}"
                        f" WHERE rowid > {low} AND rowid <= {low + BATCH} AND {scope}"
                    )
                )


def _index_pending_sqlite(grams: bool) -> None:
    """Downgrading: the pending rows into the FTS tables, as the old triggers would have put them."""
    chosen = "rowid IN (SELECT id FROM message_words_pending)"
    op.execute(f"INSERT INTO message_words(rowid, content) SELECT rowid, content FROM messages WHERE {chosen}")
    if grams:
        op.execute(
            "INSERT INTO message_grams(rowid, content) SELECT rowid, content || char(1, 1) FROM messages"
            f" WHERE {chosen} AND content GLOB '{GLOB}'"
        )
    op.execute("DELETE FROM message_words_pending")
