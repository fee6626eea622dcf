"""Search queries on the indexes of migration 0005.

PostgreSQL: `messages.search_vector` and `conversations.search_vector`, tsvectors kept by
triggers (`search_document()`, configuration `search_language()`), with GIN indexes.
SQLite: FTS5 external-content tables kept by triggers: `*_words` (unicode61: words and
prefixes) and `*_grams` (trigram: texts with characters of `UNSEGMENTED` scripts only).

Everything the user typed reaches the database as bound parameters: PostgreSQL reads it
with phraseto_tsquery (plain text, no operators), FTS5 gets it as quoted strings.

Hits come newest first, keyed by `(created_at, id)`, which never change: a page ends at
a key and the next one starts below it, so pages neither repeat nor skip a hit. Only
dialogue messages (user and assistant) are searched, never system prompts.
"""

from __future__ import annotations

import uuid
import weakref
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Uuid, bindparam, text
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import TextClause

from models.entities import UTCDateTime
from models.search_text import Query, Term

DIALOGUE = "('user', 'assistant')"
FEW_MATCHES, MANY_MATCHES = 500, 40_000
"""SQLite's three ways to a page, by how many rows the FTS index matches (counted up to
MANY_MATCHES): fewer than FEW_MATCHES are fetched and sorted by time; up to MANY_MATCHES,
the time index is walked, keeping the rows in the set of matches; beyond, the time index
is walked and each row is tested against the FTS index (at a million messages each way
costs 2 to 15 ms where it is used; each would cost 100 ms or more elsewhere)."""
SHORT_TERM_GRAMS = 200
"""SQLite: a one- or two-character term is looked up as the trigrams it starts (at most this
many different ones); beyond that it is matched by reading the texts."""
BATCH = 5_000
"""Rows per transaction when (re)indexing existing rows."""
ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
"""SQLite's lower() changes only ASCII letters; literals are lowered the same way."""


@dataclass(frozen=True)
class Key:
    """Where a page ended: hits strictly below it come next."""

    at: datetime
    id: uuid.UUID


@dataclass(frozen=True)
class TitleHit:
    conversation_id: uuid.UUID
    title: str
    created_at: datetime


@dataclass(frozen=True)
class MessageHit:
    message_id: uuid.UUID
    conversation_id: uuid.UUID
    title: str
    role: str
    content: str
    created_at: datetime


@dataclass(frozen=True)
class Filters:
    owner: str
    before: Key | None = None
    conversation_id: uuid.UUID | None = None
    role: str | None = None


def find_titles(session: Session, query: Query, filters: Filters, limit: int) -> list[TitleHit]:
    """The owner's conversations whose title matches, newest first."""
    search = _Search(session, TITLES, query, filters)
    rows = search.run(limit)
    return [TitleHit(row.id, row.title, row.created_at) for row in rows]


def find_messages(session: Session, query: Query, filters: Filters, limit: int) -> list[MessageHit]:
    """The owner's dialogue messages that match, newest first."""
    search = _Search(session, MESSAGES, query, filters)
    rows = search.run(limit)
    return [MessageHit(row.id, row.conversation_id, row.title, row.role, row.content, row.created_at) for row in rows]


# -- what is searched ----------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    """A searched table. Column lists are templates over `{row}`, the row's alias."""

    table: str
    alias: str
    column: str
    words: str
    grams: str
    order_index: str
    scope: str
    """Conditions every hit meets (dialogue messages; the owner's conversations)."""
    keys: str
    """What the ordering needs; the rest (`columns`) is fetched only for the page."""
    columns: str
    owner_check: str
    """How a hit is tied to the caller, checked as late as possible: a message reaches
    its owner through its conversation."""
    types: dict[str, Any]

    @property
    def grams_terms(self) -> str:
        return f"{self.grams}_terms"


MESSAGES = _Source(
    table="messages",
    alias="m",
    column="content",
    words="message_words",
    grams="message_grams",
    order_index="ix_messages_search_order",
    scope=f"m.role IN {DIALOGUE}",
    keys="{row}.id, {row}.conversation_id, {row}.role, {row}.created_at",
    columns=(
        "{row}.id, {row}.conversation_id, {row}.role, {row}.created_at,"
        " (SELECT body.content FROM messages body WHERE body.id = {row}.id) AS content,"
        " (SELECT c.title FROM conversations c WHERE c.id = {row}.conversation_id) AS title"
    ),
    owner_check="(SELECT c.owner FROM conversations c WHERE c.id = {row}.conversation_id) = :owner",
    types={"id": Uuid(), "conversation_id": Uuid(), "created_at": UTCDateTime()},
)
TITLES = _Source(
    table="conversations",
    alias="c",
    column="title",
    words="conversation_words",
    grams="conversation_grams",
    order_index="ix_conversations_search_order",
    scope="c.owner = :owner",
    keys="{row}.id, {row}.title, {row}.created_at",
    columns="{row}.id, {row}.title, {row}.created_at",
    owner_check="1 = 1",
    types={"id": Uuid(), "created_at": UTCDateTime()},
)


def _escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class _Search:
    """One query against one source, with its conditions and bound parameters."""

    def __init__(self, session: Session, source: _Source, query: Query, filters: Filters) -> None:
        self.session = session
        self.source = source
        self.query = query
        self.filters = filters
        self.params: dict[str, Any] = {"owner": filters.owner}
        self.types: dict[str, Any] = {}

    def bind(self, value: Any, type_: Any = None) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = value
        if type_ is not None:
            self.types[name] = type_
        return f":{name}"

    def statement(self, sql: str) -> TextClause:
        clause = text(sql)
        if self.types:
            clause = clause.bindparams(*(bindparam(name, type_=type_) for name, type_ in self.types.items()))
        return clause

    def key_conditions(self) -> list[str]:
        """The page's start and the caller's filters."""
        a, filters = self.source.alias, self.filters
        conditions = []
        if filters.before is not None:
            at = self.bind(filters.before.at, UTCDateTime())
            id_ = self.bind(filters.before.id, Uuid())
            conditions.append(f"({a}.created_at, {a}.id) < ({at}, {id_})")
        if filters.conversation_id is not None:
            column = "id" if self.source is TITLES else "conversation_id"
            conditions.append(f"{a}.{column} = {self.bind(filters.conversation_id, Uuid())}")
        if filters.role is not None:
            conditions.append(f"{a}.role = {self.bind(filters.role)}")
        return conditions

    def run(self, limit: int) -> list[Any]:
        if self.session.get_bind().dialect.name == "postgresql":
            return self.postgresql(limit)
        return self.sqlite(limit, _sqlite_capabilities(self.session))

    # -- PostgreSQL ----------------------------------------------------------

    def postgresql(self, limit: int) -> list[Any]:
        s, a = self.source, self.source.alias
        conditions = [s.scope, f"{a}.search_vector @@ {self.tsquery()}"]
        for term in self.query.terms:
            if term.literal:
                pattern = self.bind(f"%{_escape_like(' '.join(term.text.split()))}%")
                negation = "NOT " if term.exclude else ""
                conditions.append(f"{a}.{s.column} {negation}ILIKE {pattern} ESCAPE '\\'")
        conditions += self.key_conditions()
        # The planner walks the time index for common words and collects the few
        # matches of rare ones from the GIN index; the caller's ownership is checked
        # above the ordering (OFFSET 0 keeps it there), so only for the hits it needs.
        sql = f"""
            SELECT {s.columns.format(row='page')} FROM (
                SELECT {s.keys.format(row=a)} FROM {s.table} {a}
                WHERE {' AND '.join(conditions)}
                ORDER BY {a}.created_at DESC, {a}.id DESC OFFSET 0
            ) AS page
            WHERE {s.owner_check.format(row='page')}
            LIMIT {self.bind(limit)}
        """
        # Plans that walk an index to a LIMIT carry huge cost estimates, which switch on
        # JIT compilation: 10 to 50 ms for a query that then runs in one.
        self.session.execute(text("SET LOCAL jit = off"))
        return list(self.session.execute(self.statement(sql).columns(**s.types), self.params))

    def tsquery(self) -> str:
        """Every included term and no excluded word or phrase (excluded literals are left to
        NOT ILIKE). Each term is cut into words by PostgreSQL itself, as documents are
        (`search_text`), and reaches it only as a bound parameter of phraseto_tsquery,
        which reads no operators; a prefix adds a `to_tsquery` of one quoted word of
        letters and digits."""
        parts = []
        for term in self.query.terms:
            if term.exclude and term.literal:
                continue
            if term.prefix and not term.unsegmented:
                head = " ".join(term.words[:-1])
                last = "'" + term.words[-1].replace("\\", "\\\\").replace("'", "''") + "':*"
                part = f"to_tsquery(search_language(), {self.bind(last)})"
                if head:
                    part = f"tsquery_phrase(phraseto_tsquery(search_language(), search_text({self.bind(head)})), {part})"
            else:
                part = f"phraseto_tsquery(search_language(), search_text({self.bind(term.text)}))"
            parts.append(f"!!{part}" if term.exclude else part)
        return "(" + " && ".join(parts) + ")"

    # -- SQLite --------------------------------------------------------------

    def sqlite(self, limit: int, capabilities: frozenset[str]) -> list[Any]:
        s = self.source
        conditions = [s.scope, *self.key_conditions(), *self.plain_conditions(capabilities)]
        indexes = []  # (FTS table, expression) that every hit must match
        words_match = self.words_match() if s.words in capabilities else None
        excluded = self.excluded_words() if s.words in capabilities else None
        if words_match is not None:
            indexes.append((s.words, f"({words_match}) NOT ({excluded})" if excluded else words_match))
        elif excluded is not None:
            conditions.append(f"NOT {self.probe(s.words, excluded)}")
        grams_match = self.grams_match() if s.grams in capabilities else None
        if grams_match is not None:
            indexes.append((s.grams, grams_match))
        if not indexes:
            return self.sqlite_walk(conditions, limit)
        if self.filters.conversation_id is not None:  # a conversation's rows are few: test each
            return self.sqlite_walk(conditions + [self.probe(*index) for index in indexes], limit)
        counted = sorted((self.count(*index), index) for index in indexes)
        found, driver = counted[0]
        if found < FEW_MATCHES:
            others = [self.probe(*index) for _, index in counted[1:]]
            return self.sqlite_matches_first(driver, conditions + others, limit)
        # The index with fewest matches first: SQLite tests the conditions in this order.
        tests = [self.among(*index) if n < MANY_MATCHES else self.probe(*index) for n, index in counted]
        return self.sqlite_walk(tests + conditions, limit)

    def words_match(self) -> str | None:
        """The FTS5 expression for the word index: its terms, as quoted strings only."""
        included = [_fts_phrase(t) for t in self.query.included if not t.unsegmented]
        return " AND ".join(included) if included else None

    def excluded_words(self) -> str | None:
        excluded = [_fts_phrase(t) for t in self.query.excluded if not (t.unsegmented or t.literal)]
        return " OR ".join(excluded) if excluded else None

    def grams_match(self) -> str | None:
        """The FTS5 expression for the trigram index: each included unsegmented term as
        a substring; a term of one or two characters as the trigrams that start with it."""
        parts = []
        for term in self.query.included:
            if not term.unsegmented:
                continue
            folded = " ".join(term.text.split()).lower()
            if len(folded) >= 3:
                parts.append(_fts_string(folded))
                continue
            starts = self.session.execute(
                text(f"SELECT term FROM {self.source.grams_terms} WHERE term >= :low AND term < :high LIMIT :most"),
                {"low": folded, "high": folded + "\U0010ffff", "most": SHORT_TERM_GRAMS + 1},
            ).scalars().all()
            if len(starts) > SHORT_TERM_GRAMS:
                continue  # matched by reading the texts (`plain_conditions`)
            parts.append("(" + " OR ".join(map(_fts_string, starts)) + ")" if starts else '""')
        return " AND ".join(parts) if parts else None

    def plain_conditions(self, capabilities: frozenset[str]) -> list[str]:
        """What the FTS indexes cannot decide: literal strings exactly, exclusions of
        literals and unsegmented text, and whatever has no index in this database."""
        s, a = self.source, self.source.alias
        conditions = []
        for term in self.query.terms:
            literal = " ".join(term.text.split())
            indexed = (s.grams if term.unsegmented else s.words) in capabilities
            short_unsegmented = term.unsegmented and len(literal) < 3
            if term.exclude:
                if term.literal or term.unsegmented or not indexed:
                    conditions.append(f"instr(lower({a}.{s.column}), {self.bind(literal.translate(ASCII_LOWER))}) = 0")
            elif (term.literal and not term.unsegmented) or not indexed or short_unsegmented:
                # For an indexed short term this only rechecks what the trigram lookup
                # found, or reads the texts when the term starts too many trigrams.
                conditions.append(f"instr(lower({a}.{s.column}), {self.bind(literal.translate(ASCII_LOWER))}) > 0")
        return conditions

    def probe(self, table: str, expression: str) -> str:
        """One row tested against an FTS index."""
        return (
            f"EXISTS (SELECT 1 FROM {table} f WHERE f.{table} MATCH {self.bind(expression)}"
            f" AND f.rowid = {self.source.alias}.rowid)"
        )

    def among(self, table: str, expression: str) -> str:
        """The row is in the set of an FTS index's matches (built once per query)."""
        return f"{self.source.alias}.rowid IN (SELECT rowid FROM {table} WHERE {table} MATCH {self.bind(expression)})"

    def count(self, table: str, expression: str) -> int:
        """The FTS index's matches, counted up to MANY_MATCHES (all owners')."""
        return int(
            self.session.execute(
                text(f"SELECT count(*) FROM (SELECT 1 FROM {table} WHERE {table} MATCH :match LIMIT :most)"),
                {"match": expression, "most": MANY_MATCHES},
            ).scalar_one()
        )

    def sqlite_matches_first(self, driver: tuple[str, str], conditions: list[str], limit: int) -> list[Any]:
        """Every FTS match, sorted by time, then the caller's first `limit`. (CROSS JOIN
        keeps the FTS table outermost: SQLite would otherwise read the owner's index and
        ask the FTS table about every conversation.)"""
        s, a = self.source, self.source.alias
        table, expression = driver
        sql = f"""
            WITH hits AS MATERIALIZED (
                SELECT {a}.rowid AS hit, {a}.created_at AS at, {a}.id AS hit_id
                FROM {table} f CROSS JOIN {s.table} {a} ON {a}.rowid = f.rowid
                WHERE f.{table} MATCH {self.bind(expression)} AND {' AND '.join(conditions)}
            )
            SELECT {s.columns.format(row=a)} FROM hits JOIN {s.table} {a} ON {a}.rowid = hits.hit
            WHERE {s.owner_check.format(row=a)}
            ORDER BY hits.at DESC, hits.hit_id DESC
            LIMIT {self.bind(limit)}
        """
        return list(self.session.execute(self.statement(sql).columns(**s.types), self.params))

    def sqlite_walk(self, conditions: list[str], limit: int) -> list[Any]:
        """Newest first through the time index, until the page is full."""
        s, a = self.source, self.source.alias
        index = f" INDEXED BY {s.order_index}" if self.filters.conversation_id is None else ""
        sql = f"""
            SELECT {s.columns.format(row=a)} FROM {s.table} {a}{index}
            WHERE {' AND '.join(conditions)} AND {s.owner_check.format(row=a)}
            ORDER BY {a}.created_at DESC, {a}.id DESC
            LIMIT {self.bind(limit)}
        """
        return list(self.session.execute(self.statement(sql).columns(**s.types), self.params))


def _fts_string(value: str) -> str:
    """An FTS5 string: whatever it holds is text to match, never query syntax."""
    return '"' + value.replace('"', '""') + '"'


def _fts_phrase(term: Term) -> str:
    return _fts_string(" ".join(term.words)) + ("*" if term.prefix else "")


_CAPABILITIES: weakref.WeakKeyDictionary[Engine, frozenset[str]] = weakref.WeakKeyDictionary()


def _sqlite_capabilities(session: Session) -> frozenset[str]:
    """The FTS tables this SQLite database has (none without FTS5, no trigram ones before
    SQLite 3.34); what has no index is matched by reading the texts."""
    engine = session.get_bind().engine
    if engine not in _CAPABILITIES:
        names = session.execute(text("SELECT name FROM sqlite_master WHERE type = 'table'")).scalars()
        _CAPABILITIES[engine] = frozenset(names)
    return _CAPABILITIES[engine]


# -- the index's language -------------------------------------------------------


def indexed_language(session: Session) -> str:
    """The text search configuration the index was built with."""
    if session.get_bind().dialect.name == "postgresql":
        return str(session.execute(text("SELECT search_language()::text")).scalar_one())
    definition = session.execute(
        text("SELECT sql FROM sqlite_master WHERE name = 'message_words'")
    ).scalar_one_or_none()
    return "english" if definition and "porter" in definition else "simple"


def sqlite_tokenizer(language: str) -> str:
    """FTS5's tokenizer for a language: it stems only English (porter)."""
    return "porter unicode61 remove_diacritics 0" if language == "english" else "unicode61 remove_diacritics 0"


def reindex(engine: Engine, language: str) -> None:
    """Index every message and title again with `language`, a batch per transaction, while
    the service keeps running (the triggers index new and changed rows meanwhile)."""
    if engine.dialect.name == "postgresql":
        _reindex_postgresql(engine, language)
    else:
        _reindex_sqlite(engine, language)
    _CAPABILITIES.pop(engine, None)


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
    for table, column, scope in (("messages", "content", f"role IN {DIALOGUE}"), ("conversations", "title", "true")):
        last = None
        while True:
            with engine.begin() as connection:
                after = "" if last is None else "WHERE id > :last"
                bound = connection.execute(
                    text(f"SELECT id FROM (SELECT id FROM {table} {after} ORDER BY id LIMIT :batch) AS b ORDER BY id DESC LIMIT 1"),
                    {"last": last, "batch": BATCH},
                ).scalar_one_or_none()
                if bound is None:
                    break
                connection.execute(
                    text(
                        f"UPDATE {table} SET search_vector = search_document({column})"
                        f" WHERE {scope} AND id <= :bound {'' if last is None else 'AND id > :last'}"
                    ),
                    {"bound": bound, "last": last},
                )
            last = bound
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("ANALYZE messages"))
        connection.execute(text("ANALYZE conversations"))


def _reindex_sqlite(engine: Engine, language: str) -> None:
    for table, column, words, scope in (
        ("messages", "content", "message_words", f"role IN {DIALOGUE}"),
        ("conversations", "title", "conversation_words", "1 = 1"),
    ):
        with engine.begin() as connection:  # the triggers find a table at every moment
            connection.execute(text(f"DROP TABLE IF EXISTS {words}"))
            connection.execute(
                text(
                    f"CREATE VIRTUAL TABLE {words} USING fts5({column}, content='{table}',"
                    f" content_rowid='rowid', tokenize='{sqlite_tokenizer(language)}')"
                )
            )
            last = connection.execute(text(f"SELECT coalesce(max(rowid), 0) FROM {table}")).scalar_one()
        for low in range(0, last, BATCH):
            with engine.begin() as connection:
                connection.execute(
                    text(
                        f"INSERT INTO {words}(rowid, {column}) SELECT rowid, {column} FROM {table}"
                        f" WHERE rowid > :low AND rowid <= :high AND {scope}"
                    ),
                    {"low": low, "high": low + BATCH},
                )
