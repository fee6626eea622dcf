"""Search queries on the indexes of migrations 0005 and 0011.

PostgreSQL: `messages.search_vector` and `conversations.search_vector`, tsvectors
(`search_document()`, configuration `search_language()`), with GIN indexes; and pg_trgm
GIN indexes on the texts themselves, which find fragments (`Term.fragment`). SQLite: FTS5
external-content tables: `*_words` (unicode61: words and prefixes), `*_grams` (trigram:
texts with characters of `UNSEGMENTED` scripts only) and `*_fragments` (trigram: every
text, for fragments; without the trigram tokenizer fragments are found by reading the
texts, newest first). Titles are indexed by triggers; messages after they are written
(migration 0012, `models/search_indexing.py`), and the caller's before each search.

Everything the user typed reaches the database as bound parameters: PostgreSQL reads it
with phraseto_tsquery (plain text, no operators), FTS5 gets it as quoted strings.

Hits come newest first, keyed by `(created_at, id)`, which never change: a page ends at
a key and the next one starts below it, so pages neither repeat nor skip a hit. Only
dialogue messages (user and assistant) are searched, never system prompts.
"""

from __future__ import annotations

import re
import uuid
import weakref
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, Uuid, bindparam, text
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import TextClause

from models.db import bound_engine
from models.entities import UTCDateTime
from models.search_text import LETTER, UNSEGMENTED, Query, Term, edge_pattern, is_unsegmented, word_pattern

DIALOGUE = "('user', 'assistant')"
RECENT = {"postgresql": 1_000, "sqlite": 200}
"""Rows tested one by one, newest first, before the older ones are searched through the
index (on SQLite only for words with MANY_MATCHES): a common word fills its page among
them; a rare one then costs little more than the index."""
FEW_MATCHES, MANY_MATCHES = 500, 40_000
"""SQLite's ways to a page, by how many rows the FTS index matches (counted up to
MANY_MATCHES): fewer than FEW_MATCHES are fetched and sorted by time; more, and the time
index is walked keeping the rows in the set of matches (built once); from MANY_MATCHES
on, the RECENT newest rows are first tested one by one. At a million messages each way
costs a few ms where it is used, and 100 ms or more elsewhere (bench/README.md)."""
SHORT_TERM_GRAMS = 200
"""SQLite: a one- or two-character term is looked up as the trigrams it starts (at most this
many different ones); beyond that it is matched by reading the texts."""
UNSEGMENTED_GLOB = "*[" + "".join(f"{chr(low)}-{chr(high)}" for low, high in UNSEGMENTED) + "]*"
"""A text with a character of an unsegmented script (the texts in the trigram indexes)."""
ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
"""SQLite's lower() changes only ASCII letters; literals are lowered the same way."""


TITLES, MESSAGES = 0, 1
"""The two tiers of the order: conversations whose title matches come first."""


@dataclass(frozen=True)
class Key:
    """Where a page ended: hits strictly below it (in its tier) come next."""

    at: datetime
    id: uuid.UUID


@dataclass(frozen=True)
class Hit:
    """A conversation whose title matches (no message, no role), or a message."""

    tier: int
    message_id: uuid.UUID | None
    conversation_id: uuid.UUID
    title: str
    role: str | None
    content: str | None
    created_at: datetime

    @property
    def key(self) -> Key:
        return Key(self.created_at, self.message_id or self.conversation_id)


@dataclass(frozen=True)
class Filters:
    owner: str
    after: tuple[int, Key] | None = None
    """The tier and key of the hit the page starts after."""
    conversation_id: uuid.UUID | None = None
    role: str | None = None
    excluded_conversations: frozenset[uuid.UUID] = frozenset()
    """Conversations whose hits are left out (listing conversations: those already met)."""


def find(session: Session, query: Query, filters: Filters, limit: int) -> list[Hit]:
    """The owner's matching titles (unless a role is asked for: a title is nobody's words),
    then the matching messages, newest first in each tier."""
    tier, key = filters.after or (TITLES, None)
    shared = _Parameters(filters.owner)
    searches = [_Search(session, MESSAGES_SOURCE, query, filters, key if tier == MESSAGES else None, shared)]
    if tier == TITLES and filters.role is None:
        searches.insert(0, _Search(session, TITLES_SOURCE, query, filters, key, shared))
    if session.get_bind().dialect.name == "postgresql":
        rows = _postgresql(session, searches, shared, limit)
    else:
        rows = []
        for search in searches:
            if len(rows) < limit:
                rows += search.sqlite(limit - len(rows), sqlite_capabilities(session))
    return [Hit(*row) for row in rows]


# -- what is searched ----------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    """A searched table. Column lists are templates over `{row}`, the row's alias."""

    table: str
    alias: str
    column: str
    words: str
    grams: str
    fragments: str
    """SQLite's trigram table over every text (migration 0012), for fragments."""
    order_index: str
    scope: str
    """Conditions every hit meets, for walking the time index (dialogue messages; the
    owner's conversations)."""
    kind: str
    """What of `scope` an index of matches may be combined with (PostgreSQL's GIN reads
    leave the rest to be checked on the few rows they find)."""
    walked: str
    """What testing a row needs (PostgreSQL, newest rows)."""
    keys: str
    """What the ordering needs; the rest (`columns`, the fields of `Hit`) is fetched
    only for the page."""
    columns: str
    owner_check: str
    """How a hit is tied to the caller, checked as late as possible: a message reaches
    its owner through its conversation."""

    @property
    def grams_terms(self) -> str:
        return f"{self.grams}_terms"


MESSAGES_SOURCE = _Source(
    table="messages",
    alias="m",
    column="content",
    words="message_words",
    grams="message_grams",
    fragments="message_fragments",
    order_index="ix_messages_search_order",
    scope=f"m.role IN {DIALOGUE}",
    kind=f"m.role IN {DIALOGUE} AND m.search_vector IS NOT NULL",  # the trigram index's rows (0012)
    walked="{row}.id, {row}.conversation_id, {row}.role, {row}.created_at, {row}.search_vector, {row}.content",
    keys="{row}.id, {row}.conversation_id, {row}.role, {row}.created_at",
    columns=(
        "1 AS tier, {row}.id AS message_id, {row}.conversation_id,"
        " (SELECT c.title FROM conversations c WHERE c.id = {row}.conversation_id) AS title, {row}.role,"
        " (SELECT body.content FROM messages body WHERE body.id = {row}.id) AS content, {row}.created_at"
    ),
    owner_check="(SELECT c.owner FROM conversations c WHERE c.id = {row}.conversation_id) = :owner",
)
TITLES_SOURCE = _Source(
    table="conversations",
    alias="c",
    column="title",
    words="conversation_words",
    grams="conversation_grams",
    fragments="conversation_fragments",
    order_index="ix_conversations_search_order",
    scope="c.owner = :owner",
    kind="true",
    walked="{row}.id, {row}.owner, {row}.title, {row}.created_at, {row}.search_vector",
    keys="{row}.id, {row}.owner, {row}.title, {row}.created_at",
    columns=(
        "0 AS tier, CAST(NULL AS uuid) AS message_id, {row}.id AS conversation_id, {row}.title,"
        " CAST(NULL AS text) AS role, CAST(NULL AS text) AS content, {row}.created_at"
    ),
    owner_check="{row}.owner = :owner",
)


def _escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


HIT_TYPES = {"message_id": Uuid(), "conversation_id": Uuid(), "created_at": UTCDateTime()}


class _Parameters:
    """The bound parameters of a statement, typed where the driver needs it (UTC times
    and UUIDs), shared by the parts of one statement."""

    def __init__(self, owner: str) -> None:
        self.values: dict[str, Any] = {"owner": owner}
        self.types: dict[str, Any] = {}

    def bind(self, value: Any, type_: Any = None) -> str:
        name = f"p{len(self.values)}"
        self.values[name] = value
        if type_ is not None:
            self.types[name] = type_
        return f":{name}"

    def statement(self, sql: str) -> TextClause:
        """`sql` with the types of the parameters it uses."""
        used = [name for name in self.types if re.search(rf":{name}\b", sql)]
        return text(sql).bindparams(*(bindparam(name, type_=self.types[name]) for name in used))


class _Search:
    """One query against one source, with its conditions and bound parameters."""

    def __init__(
        self, session: Session, source: _Source, query: Query, filters: Filters, before: Key | None,
        parameters: _Parameters,
    ) -> None:
        self.session = session
        self.source = source
        self.query = query
        self.filters = filters
        self.before = before
        self.parameters = parameters

    def bind(self, value: Any, type_: Any = None) -> str:
        return self.parameters.bind(value, type_)

    def rows(self, sql: str) -> list[Any]:
        statement = self.parameters.statement(sql).columns(**HIT_TYPES)
        return list(self.session.execute(statement, self.parameters.values))

    def key_conditions(self) -> list[str]:
        """The page's start and the caller's filters."""
        return self.start() + self.narrowing()

    def start(self) -> list[str]:
        """Below the key the page starts after."""
        a, before = self.source.alias, self.before
        if before is None:
            return []
        at, id_ = self.bind(before.at, UTCDateTime()), self.bind(before.id, Uuid())
        return [f"({a}.created_at, {a}.id) < ({at}, {id_})"]

    def narrowing(self) -> list[str]:
        """The caller's filters: one conversation, one role, conversations left out."""
        a, filters = self.source.alias, self.filters
        column = "id" if self.source is TITLES_SOURCE else "conversation_id"
        conditions = []
        if filters.conversation_id is not None:
            conditions.append(f"{a}.{column} = {self.bind(filters.conversation_id, Uuid())}")
        if filters.excluded_conversations:
            excluded = ", ".join(self.bind(id_, Uuid()) for id_ in sorted(filters.excluded_conversations))
            conditions.append(f"{a}.{column} NOT IN ({excluded})")
        if filters.role is not None:
            conditions.append(f"{a}.role = {self.bind(filters.role)}")
        return conditions

    # -- PostgreSQL ----------------------------------------------------------

    def postgresql_parts(self, limit: int) -> list[str]:
        """Two queries: the newest `RECENT` rows tested one by one, where a common word
        fills its page; then the older ones read through the GIN index, which PostgreSQL
        starts only when the first falls short. The plans are chosen here, not by the
        planner, which guesses how common a word is: a rare word taken for a common one
        has it walk the whole time index, a common one taken for rare has it read
        hundreds of thousands of GIN entries."""
        s, a = self.source, self.source.alias
        scope = " AND ".join([s.scope, *self.key_conditions()])
        tsquery = self.tsquery()
        matching = [f"{a}.search_vector @@ {tsquery}"] if tsquery else []
        for term in self.query.terms:
            if term.literal or term.fragment:  # fragments through the pg_trgm index (migration 0011)
                pattern = self.bind(f"%{_escape_like(' '.join(term.text.split()))}%")
                negation = "NOT " if term.exclude else ""
                matching.append(f"{a}.{s.column} {negation}ILIKE {pattern} ESCAPE '\\'")
        newest = f"""
            SELECT {s.walked.format(row=a)} FROM {s.table} {a} WHERE {scope}
            ORDER BY {a}.created_at DESC, {a}.id DESC LIMIT {self.bind(RECENT["postgresql"])}
        """
        oldest_recent = f"""
            SELECT {a}.created_at, {a}.id FROM {s.table} {a} WHERE {scope}
            ORDER BY {a}.created_at DESC, {a}.id DESC OFFSET {self.bind(RECENT["postgresql"] - 1)} LIMIT 1
        """
        # Only the GIN index (and a conversation's) finds the older ones; the time and the
        # owner are checked on what it found: combined with the GIN index, the time index
        # would add a bitmap of every older row. Sorting on an expression keeps the
        # planner from walking the time index instead.
        found = " AND ".join([s.kind, *self.narrowing(), *matching])
        return [
            self.postgresql_part(f"({newest}) AS {a} WHERE {' AND '.join(matching)}", "", "true", limit),
            self.postgresql_part(
                f"{s.table} {a} WHERE {found}", " + interval '0 seconds'",
                f"(page.created_at, page.id) < ({oldest_recent})", limit,
            ),
        ]

    def postgresql_part(self, rows: str, sort: str, below: str, limit: int) -> str:
        """The first `limit` of `rows` (a FROM and WHERE) that are `below` (a condition on
        `page`), newest first. That and the caller's ownership are checked above the
        ordering (OFFSET 0 keeps them there), so only for the hits the page needs."""
        s, a = self.source, self.source.alias
        return f"""
            SELECT {s.columns.format(row='page')} FROM (
                SELECT {s.keys.format(row=a)} FROM {rows}
                ORDER BY {a}.created_at{sort} DESC, {a}.id DESC OFFSET 0
            ) AS page
            WHERE {below} AND {s.owner_check.format(row='page')}
            LIMIT {self.bind(limit)}
        """

    def boundary(self, scope: list[str], recent: int) -> tuple[str, str] | None:
        """Conditions for the `recent` newest rows in `scope` and for the older ones, if
        there are more."""
        s, a = self.source, self.source.alias
        index = f" INDEXED BY {s.order_index}" if self.filters.conversation_id is None else ""
        sql = f"""
            SELECT {a}.created_at, {a}.id FROM {s.table} {a}{index} WHERE {' AND '.join(scope)}
            ORDER BY {a}.created_at DESC, {a}.id DESC LIMIT 1 OFFSET {recent - 1}
        """
        found = self.session.execute(
            self.parameters.statement(sql).columns(created_at=UTCDateTime(), id=Uuid()), self.parameters.values
        ).first()
        if found is None:
            return None
        at, id_ = self.bind(found.created_at, UTCDateTime()), self.bind(found.id, Uuid())
        return f"({a}.created_at, {a}.id) >= ({at}, {id_})", f"({a}.created_at, {a}.id) < ({at}, {id_})"

    def tsquery(self) -> str | None:
        """Every included term and no excluded word or phrase (excluded literals and
        fragments are left to ILIKE; None when nothing is left). Each term is cut into words by PostgreSQL itself, as documents are
        (`search_text`), and reaches it only as a bound parameter of phraseto_tsquery,
        which reads no operators; a prefix adds a `to_tsquery` of one quoted word of
        letters and digits."""
        parts = []
        for term in self.query.terms:
            if (term.exclude and term.literal) or term.fragment:
                continue
            if term.prefix and not is_unsegmented(term.words[-1][0]):  # the last word may go on
                head = " ".join(term.words[:-1])
                last = "'" + term.words[-1].replace("\\", "\\\\").replace("'", "''") + "':*"
                part = f"to_tsquery(search_language(), {self.bind(last)})"
                if head:
                    part = f"tsquery_phrase(phraseto_tsquery(search_language(), search_text({self.bind(head)})), {part})"
            else:
                part = f"phraseto_tsquery(search_language(), search_text({self.bind(term.text)}))"
            parts.append(f"!!{part}" if term.exclude else part)
        return "(" + " && ".join(parts) + ")" if parts else None

    # -- SQLite --------------------------------------------------------------

    def sqlite(self, limit: int, capabilities: frozenset[str]) -> list[Any]:
        """The hits of the word index and, where it cannot see a word (`sqlite_embedded`),
        those of the trigram index, merged."""
        rows = self.sqlite_words(limit, capabilities)
        if self.source.words in capabilities and any(_latin_words(term) for term in self.query.included):
            rows = _merged(rows, self.sqlite_embedded(limit, capabilities), limit)
        return rows

    def sqlite_words(self, limit: int, capabilities: frozenset[str]) -> list[Any]:
        """Through the word index (Latin and other spaced scripts) and, for unsegmented terms,
        the trigram index."""
        s = self.source
        conditions = [s.scope, *self.key_conditions(), *self.plain_conditions(capabilities)]
        conditions += self.embedded_exclusions(capabilities)
        indexes = []  # (FTS table, expression) that every hit must match
        words_match = self.words_match() if s.words in capabilities else None
        excluded = self.excluded_words() if s.words in capabilities else None
        if words_match is not None:
            indexes.append((s.words, f"({words_match}) NOT ({excluded})" if excluded else words_match))
        elif excluded is not None:
            conditions.append(f"NOT {self.probe(s.words, excluded)}")
        grams_match = self.grams_match(latin=False) if s.grams in capabilities else None
        if grams_match is not None:
            indexes.append((s.grams, grams_match))
        if s.fragments in capabilities:  # each fragment as a substring (they have 3 characters or more)
            indexes += [
                (s.fragments, _fts_string(" ".join(term.text.split()))) for term in self.query.included if term.fragment
            ]
        return self.sqlite_indexed(conditions, indexes, limit)

    def sqlite_embedded(self, limit: int, capabilities: frozenset[str]) -> list[Any]:
        """Texts with characters of unsegmented scripts. FTS5's word tokenizer takes such a
        character for a letter, so a Latin word written against one (`用Python写`) is part of
        a longer token there, which the word index does not find by the word. Those texts
        are in the trigram index, which finds the word's letters anywhere; a regular
        expression then keeps the texts where they make whole words, as PostgreSQL (which
        cuts text at each such character) finds them."""
        s, a = self.source, self.source.alias
        conditions = [s.scope, *self.key_conditions(), *self.plain_conditions(capabilities)]
        conditions += self.embedded_exclusions(capabilities)
        conditions += [
            f"{a}.{s.column} REGEXP {self.bind(word_pattern(term))}"
            for term in self.query.included
            if _latin_words(term)
        ]
        grams_match = self.grams_match(latin=True) if s.grams in capabilities else None
        if grams_match is None:  # nothing to narrow the texts down by: read them
            return self.sqlite_walk([f"{a}.{s.column} GLOB {self.bind(UNSEGMENTED_GLOB)}", *conditions], limit)
        return self.sqlite_indexed(conditions, [(s.grams, grams_match)], limit)

    def sqlite_indexed(self, conditions: list[str], indexes: list[tuple[str, str]], limit: int) -> list[Any]:
        """The page, by the way that suits how many rows the FTS indexes match."""
        s = self.source
        if not indexes:
            return self.sqlite_walk(conditions, limit)
        if self.filters.conversation_id is not None:  # a conversation's rows are few: test each
            return self.sqlite_walk(conditions + [self.probe(*index) for index in indexes], limit)
        counted = sorted((self.count(*index), index) for index in indexes)
        found, driver = counted[0]
        if found == 0:
            return []
        if found < FEW_MATCHES:
            others = [self.probe(*index) for _, index in counted[1:]]
            return self.sqlite_matches_first(driver, conditions + others, limit)
        # The index with fewest matches first: SQLite tests the conditions in this order.
        among = [self.among(*index) for _, index in counted]
        boundary = self.boundary([s.scope, *self.key_conditions()], RECENT["sqlite"]) if found >= MANY_MATCHES else None
        if boundary is None:
            return self.sqlite_walk(among + conditions, limit)
        newer, older = boundary
        rows = self.sqlite_walk([self.probe(*index) for _, index in counted] + conditions + [newer], limit)
        if len(rows) < limit:
            rows += self.sqlite_walk(among + conditions + [older], limit - len(rows))
        return rows

    def words_match(self) -> str | None:
        """The FTS5 expression for the word index: its terms, as quoted strings only."""
        included = [_fts_phrase(t) for t in self.query.included if _latin_words(t)]
        return " AND ".join(included) if included else None

    def excluded_words(self) -> str | None:
        excluded = [_fts_phrase(t) for t in self.query.excluded if not (t.unsegmented or t.literal)]
        return " OR ".join(excluded) if excluded else None

    def embedded_exclusions(self, capabilities: frozenset[str]) -> list[str]:
        """Excluded words the word index cannot see in texts of unsegmented scripts
        (`sqlite_embedded`), looked for there by a regular expression."""
        s, a = self.source, self.source.alias
        if s.words not in capabilities:
            return []  # the texts are read (`plain_conditions`)
        return [
            f"({a}.{s.column} NOT GLOB {self.bind(UNSEGMENTED_GLOB)}"
            f" OR NOT {a}.{s.column} REGEXP {self.bind(word_pattern(term))})"
            for term in self.query.excluded
            if not (term.unsegmented or term.literal)
        ]

    def grams_match(self, *, latin: bool) -> str | None:
        """The FTS5 expression for the trigram index: each included unsegmented term as a
        substring and, with `latin`, the words of the other terms; None if nothing narrows
        the texts down."""
        parts = []
        for term in self.query.included:
            if term.unsegmented:
                part = self.grams_substring(" ".join(term.text.split()).lower())
            elif latin and not term.fragment:
                part = self.grams_words(term)
            else:
                continue
            if part is not None:
                parts.append(part)
        return " AND ".join(parts) if parts else None

    def grams_words(self, term: Term) -> str | None:
        """The trigram expression for the texts holding a term's words: its words of three
        letters or more, else its short words, each followed by something other than a
        letter or digit (unless it is a prefix)."""
        long = [_fts_string(word) for word in term.words if len(word) >= 3]
        if long:
            return " AND ".join(long)
        last = len(term.words) - 1
        parts = [self.grams_substring(word, whole=not (term.prefix and n == last)) for n, word in enumerate(term.words)]
        found = [part for part in parts if part is not None]
        return " AND ".join(found) if found else None

    def grams_substring(self, folded: str, *, whole: bool = False) -> str | None:
        """The trigram expression for texts holding `folded`: the string itself, or for one
        or two characters the trigrams that start with it (with `whole`, those where a
        character other than a letter or digit follows); None when there are more than
        SHORT_TERM_GRAMS of those, and the texts are read instead (`plain_conditions`,
        or the regular expressions of `sqlite_embedded`)."""
        if len(folded) >= 3:
            return _fts_string(folded)
        ending = f" AND NOT substr(term, {len(folded) + 1}, 1) REGEXP :letter" if whole else ""
        starts = self.session.execute(
            text(
                f"SELECT term FROM {self.source.grams_terms} WHERE term >= :low AND term < :high{ending} LIMIT :most"
            ),
            {"low": folded, "high": folded + "\U0010ffff", "letter": LETTER, "most": SHORT_TERM_GRAMS + 1},
        ).scalars().all()
        if len(starts) > SHORT_TERM_GRAMS:
            return None
        return "(" + " OR ".join(map(_fts_string, starts)) + ")" if starts else '""'

    def plain_conditions(self, capabilities: frozenset[str]) -> list[str]:
        """What the FTS indexes cannot decide: literal strings exactly, exclusions of
        literals and unsegmented text, whole Latin words at the ends of unsegmented text
        (`edge_pattern`), and whatever has no index in this database."""
        s, a = self.source, self.source.alias
        conditions = []
        for term in self.query.terms:
            literal = " ".join(term.text.split())
            indexed = (s.grams if term.unsegmented else s.words) in capabilities
            short_unsegmented = term.unsegmented and len(literal) < 3
            edges = edge_pattern(term)
            edged = f"{a}.{s.column} REGEXP {self.bind(edges)}" if edges else None
            if term.exclude:
                if term.literal or term.unsegmented or not indexed:
                    found = f"instr(lower({a}.{s.column}), {self.bind(literal.translate(ASCII_LOWER))}) > 0"
                    conditions.append(f"NOT ({found} AND {edged})" if edged else f"NOT {found}")
                continue
            if (term.literal and not term.unsegmented) or not indexed or short_unsegmented or term.fragment:
                # For an indexed short term this only rechecks what the trigram lookup
                # found, or reads the texts when the term starts too many trigrams; a
                # fragment is found by reading the texts.
                conditions.append(f"instr(lower({a}.{s.column}), {self.bind(literal.translate(ASCII_LOWER))}) > 0")
            if edged:
                conditions.append(edged)
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
        return self.rows(sql)

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
        return self.rows(sql)


def _postgresql(session: Session, searches: list[_Search], parameters: _Parameters, limit: int) -> list[Any]:
    """Every part in one statement: PostgreSQL runs the parts of a UNION ALL in order and,
    under the LIMIT, stops as soon as the page is full."""
    # No sequential scans (the GIN index is always the way to old rows); no JIT and no
    # parallel workers: plans that read an index to a LIMIT carry huge cost estimates,
    # which switch on a compilation of 10 to 50 ms, or start workers (20 ms on a busy
    # machine), for a query that then runs in one.
    session.execute(
        text(
            "SELECT set_config('enable_seqscan', 'off', true), set_config('jit', 'off', true),"
            " set_config('max_parallel_workers_per_gather', '0', true)"
        )
    )
    parts = [part for search in searches for part in search.postgresql_parts(limit)]
    union = " UNION ALL ".join(f"({part})" for part in parts)
    sql = f"SELECT * FROM ({union}) AS hits LIMIT {parameters.bind(limit)}"
    return list(session.execute(parameters.statement(sql).columns(**HIT_TYPES), parameters.values))


def _merged(first: list[Any], second: list[Any], limit: int) -> list[Any]:
    """Two pages of hits, newest first, as one: each hit once, the first `limit`."""
    unique = {row.message_id or row.conversation_id: row for row in [*first, *second]}
    newest = sorted(unique.values(), key=lambda row: (row.created_at, row.message_id or row.conversation_id), reverse=True)
    return newest[:limit]


def _latin_words(term: Term) -> bool:
    """A term the SQLite word index finds (by its words)."""
    return not (term.unsegmented or term.fragment)


def _fts_string(value: str) -> str:
    """An FTS5 string: whatever it holds is text to match, never query syntax."""
    return '"' + value.replace('"', '""') + '"'


def _fts_phrase(term: Term) -> str:
    return _fts_string(" ".join(term.words)) + ("*" if term.prefix else "")


_CAPABILITIES: weakref.WeakKeyDictionary[Engine, frozenset[str]] = weakref.WeakKeyDictionary()


def sqlite_capabilities(session: Session | Connection) -> frozenset[str]:
    """The FTS tables this SQLite database has (none without FTS5, no trigram ones before
    SQLite 3.34); what has no index is matched by reading the texts."""
    engine = bound_engine(session)
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


def forget_capabilities(engine: Engine) -> None:
    """After the FTS tables changed (a reindex), look again."""
    _CAPABILITIES.pop(engine, None)
