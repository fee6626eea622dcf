"""Filling the search index: the messages written since the last batch, and reindexing.

Messages are written unindexed (migration 0012): PostgreSQL leaves `search_vector` NULL,
SQLite lists the rowid in `message_words_pending`. `index_pending` indexes a batch of them:
everyone's (the background work) or one owner's (before that owner's search). Titles are
indexed by their triggers.
"""

from __future__ import annotations

from sqlalchemy import Connection, Engine, text

from models.online_ddl import update_in_batches
from models.search import DIALOGUE, UNSEGMENTED_GLOB, forget_capabilities, sqlite_capabilities

BATCH = 5_000
"""Rows per transaction when reindexing."""
_BACKGROUND = f"""
    WITH chosen AS (
        SELECT m.id FROM messages m WHERE m.role IN {DIALOGUE} AND m.search_vector IS NULL
        ORDER BY m.id LIMIT :batch FOR UPDATE OF m SKIP LOCKED
    )
    UPDATE messages m SET search_vector = search_document(m.content) FROM chosen WHERE m.id = chosen.id
"""


def index_pending(connection: Connection, batch: int, owner: str | None = None) -> int | None:
    """Index up to `batch` pending messages in key order (of `owner`, else anyone's; SQLite:
    anyone's, oldest first); how many were indexed, or None when PostgreSQL could not have
    them. On PostgreSQL one statement.

    The background work (no owner) skips rows that another transaction holds. An owner's
    catch-up (`search_catch_up()`, migration 0012) waits for them a little: they may be
    rows the background work is indexing, which the search that follows must see.
    """
    if connection.dialect.name != "postgresql":
        return _index_pending_sqlite(connection, batch)
    if owner is None:
        return connection.execute(text(_BACKGROUND), {"batch": batch}).rowcount
    return connection.execute(text("SELECT search_catch_up(:owner, :batch)"), {"owner": owner, "batch": batch}).scalar()


def _index_pending_sqlite(connection: Connection, batch: int) -> int:
    """SQLite writes one transaction at a time: the oldest `batch` of everyone's."""
    names = sqlite_capabilities(connection)
    if "message_words_pending" not in names:
        return 0  # no FTS5: nothing is indexed, search reads the texts
    bound = connection.execute(
        text("SELECT max(id) FROM (SELECT id FROM message_words_pending ORDER BY id LIMIT :batch)"), {"batch": batch}
    ).scalar_one()
    if bound is None:
        return 0
    chosen = "rowid IN (SELECT id FROM message_words_pending WHERE id <= :bound)"
    connection.execute(
        text(f"INSERT INTO message_words(rowid, content) SELECT rowid, content FROM messages WHERE {chosen}"),
        {"bound": bound},
    )
    if "message_grams" in names:
        connection.execute(
            text(
                "INSERT INTO message_grams(rowid, content) SELECT rowid, content || char(1, 1) FROM messages"
                f" WHERE {chosen} AND content GLOB :unsegmented"
            ),
            {"bound": bound, "unsegmented": UNSEGMENTED_GLOB},
        )
    if "message_fragments" in names:
        connection.execute(
            text(f"INSERT INTO message_fragments(rowid, content) SELECT rowid, content FROM messages WHERE {chosen}"),
            {"bound": bound},
        )
    return connection.execute(text("DELETE FROM message_words_pending WHERE id <= :bound"), {"bound": bound}).rowcount


def sqlite_tokenizer(language: str) -> str:
    """FTS5's tokenizer for a language: it stems only English (porter)."""
    return "porter unicode61 remove_diacritics 0" if language == "english" else "unicode61 remove_diacritics 0"


def reindex(engine: Engine, language: str) -> None:
    """Index every message and title again with `language`, a batch per transaction, while
    the service keeps running (what it writes meanwhile is pending, or indexed by the
    titles' triggers)."""
    if engine.dialect.name == "postgresql":
        _reindex_postgresql(engine, language)
    else:
        _reindex_sqlite(engine, language)
    forget_capabilities(engine)


def _reindex_postgresql(engine: Engine, language: str) -> None:
    with engine.begin() as connection:
        known = connection.execute(text("SELECT 1 FROM pg_ts_config WHERE cfgname = :name"), {"name": language})
        if known.first() is None:
            names = connection.execute(text("SELECT cfgname FROM pg_ts_config ORDER BY 1")).scalars().all()
            raise ValueError(f"PostgreSQL has no text search configuration {language!r}; it has: {', '.join(names)}")
        connection.execute(
            text(
                "CREATE OR REPLACE FUNCTION search_language() RETURNS regconfig"
                f" LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT '{language}'::regconfig $$"
            )
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        for table, column, scope in (("messages", "content", f"role IN {DIALOGUE}"), ("conversations", "title", "true")):
            update_in_batches(connection, table, f"search_vector = search_document({column})", scope, BATCH)
        connection.execute(text("ANALYZE messages"))
        connection.execute(text("ANALYZE conversations"))


def _reindex_sqlite(engine: Engine, language: str) -> None:
    """Titles: the word table anew, filled in batches (its triggers index what is written
    meanwhile). Messages: the word table anew and the trigram tables emptied in one
    transaction that marks every message pending, then indexed a batch per transaction, as
    the service's own catch-up does (it may take part)."""
    forget_capabilities(engine)
    with engine.connect() as connection:
        tables = sqlite_capabilities(connection)
    if "message_words" not in tables:
        return  # no FTS5: search reads the texts
    with engine.begin() as connection:  # the triggers find a table at every moment
        _create_words_table(connection, "conversations", "title", "conversation_words", language)
        last = connection.execute(text("SELECT coalesce(max(rowid), 0) FROM conversations")).scalar_one()
    for low in range(0, last, BATCH):
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO conversation_words(rowid, title) SELECT rowid, title FROM conversations"
                    " WHERE rowid > :low AND rowid <= :high"
                ),
                {"low": low, "high": low + BATCH},
            )
    with engine.begin() as connection:
        _create_words_table(connection, "messages", "content", "message_words", language)
        for fts in ("message_grams", "message_fragments"):
            if fts in tables:
                connection.execute(text(f"INSERT INTO {fts}({fts}) VALUES ('delete-all')"))
        connection.execute(
            text(f"INSERT OR IGNORE INTO message_words_pending(id) SELECT rowid FROM messages WHERE role IN {DIALOGUE}")
        )
    forget_capabilities(engine)
    while True:
        with engine.begin() as connection:
            indexed = index_pending(connection, BATCH)
        if not indexed:
            return


def _create_words_table(connection: Connection, table: str, column: str, words: str, language: str) -> None:
    connection.execute(text(f"DROP TABLE IF EXISTS {words}"))
    connection.execute(
        text(
            f"CREATE VIRTUAL TABLE {words} USING fts5({column}, content='{table}',"
            f" content_rowid='rowid', tokenize='{sqlite_tokenizer(language)}')"
        )
    )
