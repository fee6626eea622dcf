"""full-text search over messages and conversation titles

Revision ID: 0005
Revises: 0004

PostgreSQL: a `search_vector` tsvector on messages (dialogue messages only) and on
conversations, kept by a trigger, with GIN indexes. It is a trigger-kept column rather than
a generated one because adding a stored generated column rewrites the whole table under
an exclusive lock; this way the column is added empty at once and existing rows are filled
in batches of 5,000, each its own transaction, while the service keeps serving. Text is
indexed as `search_document()` cuts it (see models/search_text.py): punctuation separates
words, each character of CJK and other unsegmented scripts is a word; the text search
configuration is `search_language()`, set from SEARCH_LANGUAGE when this migration runs
(`python app.py search reindex` changes it later).

SQLite: FTS5 external-content tables kept by triggers: `*_words` (unicode61; porter when
SEARCH_LANGUAGE is english) and `*_grams` (trigram, only for texts with unsegmented
characters, each padded with two U+0001 so that one- and two-character terms are the start
of some trigram). Without FTS5 (or without its trigram tokenizer, before SQLite 3.34) the
missing tables are left out and search reads the texts instead.

A later migration that rebuilds `messages` or `conversations` on SQLite (batch mode) drops
their triggers and renumbers their rowids: it must create the triggers again and run
`python app.py search reindex`.
"""

from __future__ import annotations

import logging

from alembic import op
from sqlalchemy import text

from models.online_ddl import create_index_concurrently, update_in_batches

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")

BATCH = 5_000
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
"""As models/search_text.py has it when this migration was written (a test compares)."""
DIALOGUE = "role IN ('user', 'assistant')"
SOURCES = (
    ("messages", "message", "content", "{row}.role IN ('user', 'assistant')"),
    ("conversations", "conversation", "title", "1 = 1"),
)
"""Each searched table, the prefix of its FTS tables, its text, and which rows are searched."""
INDEXED_CHARACTERS = 100_000
"""PostgreSQL indexes the start of a message, up to this many characters: a tsvector holds
at most 1 MB, and a longer message would make its insert fail."""


def upgrade() -> None:
    language = op.get_context().config.attributes.get("search_language", "simple")
    if op.get_bind().dialect.name == "postgresql":
        _postgresql(language)
    else:
        _sqlite(language)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS messages_search ON messages")
        op.execute("DROP TRIGGER IF EXISTS conversations_search ON conversations")
        op.execute("DROP INDEX IF EXISTS ix_messages_search_order")
        op.execute("DROP INDEX IF EXISTS ix_conversations_search_order")
        op.execute("ALTER TABLE messages DROP COLUMN IF EXISTS search_vector")
        op.execute("ALTER TABLE conversations DROP COLUMN IF EXISTS search_vector")
        op.execute("DROP FUNCTION IF EXISTS messages_search()")
        op.execute("DROP FUNCTION IF EXISTS conversations_search()")
        op.execute("DROP FUNCTION IF EXISTS search_document(text)")
        op.execute("DROP FUNCTION IF EXISTS search_text(text)")
        op.execute("DROP FUNCTION IF EXISTS search_language()")
        return
    for table, prefix, _column, _scope in SOURCES:
        for event in ("insert", "update", "delete"):
            op.execute(f"DROP TRIGGER IF EXISTS {table}_search_{event}")
        for suffix in ("grams_terms", "grams", "words"):
            op.execute(f"DROP TABLE IF EXISTS {prefix}_{suffix}")
    op.execute("DROP INDEX IF EXISTS ix_messages_search_order")
    op.execute("DROP INDEX IF EXISTS ix_conversations_search_order")


# -- PostgreSQL -----------------------------------------------------------------


def _character_class() -> str:
    def escape(code: int) -> str:
        return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"

    return "[" + "".join(f"{escape(low)}-{escape(high)}" for low, high in UNSEGMENTED) + "]"


def _postgresql(language: str) -> None:
    bind = op.get_bind()
    if bind.execute(text("SELECT 1 FROM pg_ts_config WHERE cfgname = :name"), {"name": language}).first() is None:
        raise RuntimeError(f"SEARCH_LANGUAGE={language!r} is not a PostgreSQL text search configuration")
    unsegmented = _character_class()
    # Every statement here can run again after an interrupted upgrade.
    op.execute(
        "CREATE OR REPLACE FUNCTION search_language() RETURNS regconfig"
        f" LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT '{language}'::regconfig $$"
    )
    capped = f"left(body, {INDEXED_CHARACTERS})"
    op.execute(
        f"""
        CREATE OR REPLACE FUNCTION search_text(body text) RETURNS text
        LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
            SELECT regexp_replace(
                CASE WHEN {capped} ~ '{unsegmented}'
                     THEN regexp_replace({capped}, '({unsegmented})', ' \\1 ', 'g')
                     ELSE {capped} END,
                '[[:punct:]]', ' ', 'g')
        $$
        """
    )
    op.execute(
        "CREATE OR REPLACE FUNCTION search_document(body text) RETURNS tsvector"
        " LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT to_tsvector(search_language(), search_text(body)) $$"
    )
    op.execute("ALTER TABLE messages ADD COLUMN IF NOT EXISTS search_vector tsvector")
    op.execute("ALTER TABLE conversations ADD COLUMN IF NOT EXISTS search_vector tsvector")
    op.execute(
        f"""
        CREATE OR REPLACE FUNCTION messages_search() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            NEW.search_vector := CASE WHEN NEW.{DIALOGUE} THEN search_document(NEW.content) END;
            RETURN NEW;
        END $$
        """
    )
    op.execute(
        """
        CREATE OR REPLACE FUNCTION conversations_search() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            NEW.search_vector := search_document(NEW.title);
            RETURN NEW;
        END $$
        """
    )
    op.execute("DROP TRIGGER IF EXISTS messages_search ON messages")
    op.execute(
        "CREATE TRIGGER messages_search BEFORE INSERT OR UPDATE OF content, role ON messages"
        " FOR EACH ROW EXECUTE FUNCTION messages_search()"
    )
    op.execute("DROP TRIGGER IF EXISTS conversations_search ON conversations")
    op.execute(
        "CREATE TRIGGER conversations_search BEFORE INSERT OR UPDATE OF title ON conversations"
        " FOR EACH ROW EXECUTE FUNCTION conversations_search()"
    )
    with op.get_context().autocommit_block():
        connection = op.get_bind()
        update_in_batches(connection, "messages", "search_vector = search_document(content)", DIALOGUE, BATCH)
        update_in_batches(connection, "conversations", "search_vector = search_document(title)", "true", BATCH)
        for name, definition in (
            ("ix_messages_search", "messages USING gin (search_vector)"),
            ("ix_conversations_search", "conversations USING gin (search_vector)"),
            ("ix_messages_search_order", f"messages (created_at DESC, id DESC) WHERE {DIALOGUE}"),
            ("ix_conversations_search_order", "conversations (owner, created_at DESC, id DESC)"),
        ):
            create_index_concurrently(connection, name, definition)
        connection.execute(text("ANALYZE messages"))
        connection.execute(text("ANALYZE conversations"))


# -- SQLite ---------------------------------------------------------------------


def _glob_class() -> str:
    return "[" + "".join(f"{chr(low)}-{chr(high)}" for low, high in UNSEGMENTED) + "]"


def _can_create(tokenizer: str) -> bool:
    try:
        op.execute(f"CREATE VIRTUAL TABLE temp.search_probe USING fts5(x, tokenize='{tokenizer}')")
    except Exception:  # noqa: BLE001 - "no such module: fts5", "no such tokenizer: trigram"
        return False
    op.execute("DROP TABLE temp.search_probe")
    return True


def _sqlite(language: str) -> None:
    words_tokenizer = "porter unicode61 remove_diacritics 0" if language == "english" else "unicode61 remove_diacritics 0"
    has_words, has_grams = _can_create("unicode61"), _can_create("trigram")
    if not has_words:
        log.warning("This SQLite has no FTS5: search reads every message instead of using an index.")
    elif not has_grams:
        log.warning("This SQLite (before 3.34) has no trigram tokenizer: CJK search reads the texts.")
    unsegmented = f"GLOB '*{_glob_class()}*'"
    limits: dict[str, int] = {}
    for table, prefix, column, scope in SOURCES:
        words, grams = f"{prefix}_words", f"{prefix}_grams"
        new, old = scope.format(row="new"), scope.format(row="old")
        inserts, deletes = [], []
        if has_words:
            op.execute(
                f"CREATE VIRTUAL TABLE IF NOT EXISTS {words} USING fts5({column}, content='{table}',"
                f" content_rowid='rowid', tokenize='{words_tokenizer}')"
            )
            inserts.append(f"INSERT INTO {words}(rowid, {column}) SELECT new.rowid, new.{column} WHERE {new};")
            deletes.append(
                f"INSERT INTO {words}({words}, rowid, {column}) SELECT 'delete', old.rowid, old.{column} WHERE {old};"
            )
        if has_grams:
            op.execute(
                f"CREATE VIRTUAL TABLE IF NOT EXISTS {grams} USING fts5({column}, content='{table}',"
                f" content_rowid='rowid', tokenize='trigram')"
            )
            op.execute(f"CREATE VIRTUAL TABLE IF NOT EXISTS {grams}_terms USING fts5vocab({grams}, 'row')")
            inserts.append(
                f"INSERT INTO {grams}(rowid, {column}) SELECT new.rowid, new.{column} || char(1, 1)"
                f" WHERE {new} AND new.{column} {unsegmented};"
            )
            deletes.append(
                f"INSERT INTO {grams}({grams}, rowid, {column}) SELECT 'delete', old.rowid, old.{column} || char(1, 1)"
                f" WHERE {old} AND old.{column} {unsegmented};"
            )
        if not inserts:
            continue
        watched = f"{column}, role" if table == "messages" else column
        op.execute(f"CREATE TRIGGER IF NOT EXISTS {table}_search_insert AFTER INSERT ON {table} BEGIN {' '.join(inserts)} END")
        op.execute(f"CREATE TRIGGER IF NOT EXISTS {table}_search_delete AFTER DELETE ON {table} BEGIN {' '.join(deletes)} END")
        op.execute(
            f"CREATE TRIGGER IF NOT EXISTS {table}_search_update AFTER UPDATE OF {watched} ON {table}"
            f" BEGIN {' '.join(deletes)} {' '.join(inserts)} END"
        )
        # After an interrupted upgrade the tables hold some of the rows: start over.
        for fts in (words, grams) if has_grams else (words,):
            op.execute(f"INSERT INTO {fts}({fts}) VALUES ('delete-all')")
        limits[table] = op.get_bind().execute(text(f"SELECT coalesce(max(rowid), 0) FROM {table}")).scalar_one()
    op.execute(f"CREATE INDEX IF NOT EXISTS ix_messages_search_order ON messages (created_at DESC, id DESC) WHERE {DIALOGUE}")
    op.execute("CREATE INDEX IF NOT EXISTS ix_conversations_search_order ON conversations (owner, created_at DESC, id DESC)")
    # Rows written from here on are indexed by the triggers; the rows before, in batches.
    with op.get_context().autocommit_block():
        connection = op.get_bind()
        for table, prefix, column, scope in SOURCES:
            for low in range(0, limits.get(table, 0), BATCH):
                window = f"rowid > {low} AND rowid <= {low + BATCH} AND {scope.format(row=table)}"
                if has_words:
                    connection.execute(
                        text(f"INSERT INTO {prefix}_words(rowid, {column}) SELECT rowid, {column} FROM {table} WHERE {window}")
                    )
                if has_grams:
                    connection.execute(
                        text(
                            f"INSERT INTO {prefix}_grams(rowid, {column}) SELECT rowid, {column} || char(1, 1)"
                            f" FROM {table} WHERE {window} AND {column} {unsegmented}"
                        )
                    )
