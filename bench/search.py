"""The `search` phase: full-text search at a million messages, on PostgreSQL and on SQLite.

For each database: migrate to revision 0004 (before search), seed 1,000,000 dialogue
messages in 100,000 conversations straight with SQL, time inserting single messages,
migrate to the newest revision (the batched backfill, the word and trigram indexes,
timed), time the same inserts again (written pending: migration 0012 indexes them after
their transaction), time the background work indexing a thousand pending answers, then
time searches through `SearchService.search`, the function the route calls (query, snippets and cursors; the HTTP layer adds about a millisecond, the
same for every route, and the floor rows of the `reading` phase show it).

The text: sentences of 12 words drawn from a Zipf-like vocabulary of 5,000 words; a user
message is one sentence, an answer eight. `python` is added to every 5th message (the
common word), `kubernetes` to every 301st (medium), `zanzibar` to every 50,000th (rare),
a line of code with a URL to every 1,000th, a Chinese sentence to every 500th.
"""

from __future__ import annotations

import itertools
import random
import sqlite3
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Uuid, bindparam, create_engine, delete, select, text

from bench.report import Row, Section, Target
from models import pg_wait
from services.unit_of_work import UnitOfWork
from models.db import Database
from models.entities import Conversation, Message, UTCDateTime, utcnow
from services.search import SearchRequest, SearchService
from services.search_index import SearchIndexer

MESSAGES_PER_CONVERSATION = 10
OWNER = ""
COMMON, MEDIUM, RARE = "python", "kubernetes", "zanzibar"
CODE = "call foo_bar.baz(3) at https://example.com/docs/page"
CHINESE = "我明天去东京旅游，想看看东京塔。"
WORDS = (
    "the of and to a in is you that it for on with as this be are or can your if not by use from at an will "
    "have which more one all code data file function value error example need when some each make than then "
    "there its only other into like just also new time these first two way how could would should get set "
    "list server request response model table query index user message answer question system test build "
    "run install version config update create delete change return string number object array class method "
    "type variable loop import module package library network memory cache thread process database column "
    "row key field page image text word line start stop open close read write send receive call check find "
    "search sort filter map reduce"
).split()
SYLLABLES = "ka lo mi ne ru ta vo zi be da fe gu ha jo ku le ma no pe ri sa tu ve wo".split()
VOCABULARY = WORDS + ["".join(p) for p in itertools.product(SYLLABLES, repeat=3)][: 5000 - len(WORDS)]
SENTENCES = 20_000
QUERIES = 60
"""Timed runs of each search (after two untimed ones)."""
INSERTS = 300
"""Single-message inserts timed before and after the index, each its own transaction."""
ANSWER = " ".join(["Here is a fairly ordinary sentence of an answer about configuration files."] * 25)
"""About 1,900 characters: an answer of typical length."""


def sentences() -> list[str]:
    rng = random.Random(14)
    return [" ".join(VOCABULARY[int(len(VOCABULARY) * rng.random() ** 3)] for _ in range(12)) for _ in range(SENTENCES)]


def additions(number: int) -> str:
    """What message number `number` (1-based, in seeding order) carries besides its sentences."""
    extra = []
    if number % 5 == 0:
        extra.append(COMMON)
    if number % 301 == 0:
        extra.append(MEDIUM)
    if number % 50_000 == 7:
        extra.append(RARE)
    if number % 1000 == 3:
        extra.append(CODE)
    if number % 500 == 1:
        extra.append(CHINESE)
    return " ".join(extra)


SEED_POSTGRESQL = text(
    """
    WITH numbered AS (
        SELECT i, md5('conversation-' || i)::uuid AS id, md5('root-' || i)::uuid AS root_id,
               now() - make_interval(secs => i * 60) AS at
        FROM generate_series(1, :conversations) AS i
    ), conversations AS (
        INSERT INTO conversations (id, owner, title, created_at, updated_at, current_node_id)
        SELECT id, :owner, 'Seeded conversation ' || i, at, at + interval '10 seconds',
               md5('message-' || i || '-' || :per)::uuid
        FROM numbered
    ), roots AS (
        INSERT INTO messages (id, conversation_id, parent_id, role, content, status, created_at)
        SELECT root_id, id, NULL, NULL, '', 'finished_successfully', at FROM numbered
    )
    INSERT INTO messages (id, conversation_id, parent_id, role, content, status, end_turn, created_at)
    SELECT md5('message-' || i || '-' || j)::uuid, id,
           CASE WHEN j = 1 THEN root_id ELSE md5('message-' || i || '-' || (j - 1))::uuid END,
           CASE WHEN j % 2 = 1 THEN 'user' ELSE 'assistant' END,
           (SELECT string_agg(s.body, ' ')
              FROM (SELECT floor(random() * :sentences)::int + g - g AS k
                    FROM generate_series(1, CASE WHEN j % 2 = 1 THEN 1 ELSE 8 END) AS g OFFSET 0) AS pick
              JOIN bench_sentences s USING (k))
           || CASE WHEN ((i - 1) * :per + j) % 5 = 0 THEN ' python' ELSE '' END
           || CASE WHEN ((i - 1) * :per + j) % 301 = 0 THEN ' kubernetes' ELSE '' END
           || CASE WHEN ((i - 1) * :per + j) % 50000 = 7 THEN ' zanzibar' ELSE '' END
           || CASE WHEN ((i - 1) * :per + j) % 1000 = 3 THEN ' ' || :code ELSE '' END
           || CASE WHEN ((i - 1) * :per + j) % 500 = 1 THEN ' ' || :chinese ELSE '' END,
           'finished_successfully', CASE WHEN j % 2 = 0 THEN true END,
           at + make_interval(secs => j)
    FROM numbered, generate_series(1, :per) AS j
    """
)
"""Random sentences are picked in a subquery PostgreSQL cannot fold (OFFSET 0), from a
temporary table, so each message gets its own; the additions follow `additions()`."""


def seed_postgresql(url: str, messages: int) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(text("CREATE TEMP TABLE bench_sentences (k int PRIMARY KEY, body text) ON COMMIT DROP"))
            connection.execute(
                text("INSERT INTO bench_sentences SELECT k - 1, body FROM unnest(CAST(:s AS text[])) WITH ORDINALITY AS u(body, k)"),
                {"s": sentences()},
            )
            connection.execute(text("ANALYZE bench_sentences"))
            connection.execute(
                SEED_POSTGRESQL,
                {"conversations": messages // MESSAGES_PER_CONVERSATION, "owner": OWNER, "per": MESSAGES_PER_CONVERSATION,
                 "sentences": SENTENCES, "code": CODE, "chinese": CHINESE},
            )
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("VACUUM ANALYZE messages"))
            connection.execute(text("VACUUM ANALYZE conversations"))
    finally:
        engine.dispose()


def seed_sqlite(path: Path, messages: int) -> None:
    """executemany in batches of 1,000 conversations (the rows of `seed_postgresql`)."""
    rng, pool = random.Random(15), sentences()
    base = datetime.now(UTC)

    def stamp(moment: datetime) -> str:  # as SQLAlchemy writes DateTime to SQLite
        return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")

    connection = sqlite3.connect(path)
    connection.execute("PRAGMA synchronous = OFF")  # seeding is not what is measured
    try:
        for first in range(1, messages // MESSAGES_PER_CONVERSATION + 1, 1000):
            conversations, rows = [], []
            for i in range(first, min(first + 1000, messages // MESSAGES_PER_CONVERSATION + 1)):
                conversation, parent = uuid.UUID(int=rng.getrandbits(128)), uuid.UUID(int=rng.getrandbits(128))
                at = base - timedelta(seconds=60 * i)
                conversations.append((conversation.hex, OWNER, f"Seeded conversation {i}", stamp(at), stamp(at)))
                rows.append((parent.hex, conversation.hex, None, None, "", stamp(at)))
                for j in range(1, MESSAGES_PER_CONVERSATION + 1):
                    message = uuid.UUID(int=rng.getrandbits(128))
                    body = " ".join(rng.choice(pool) for _ in range(1 if j % 2 else 8))
                    extra = additions((i - 1) * MESSAGES_PER_CONVERSATION + j)
                    role = "user" if j % 2 else "assistant"
                    rows.append((message.hex, conversation.hex, parent.hex, role, f"{body} {extra}".strip(),
                                 stamp(at + timedelta(seconds=j))))
                    parent = message
            connection.executemany(
                "INSERT INTO conversations (id, owner, title, created_at, updated_at) VALUES (?, ?, ?, ?, ?)", conversations
            )
            connection.executemany(
                "INSERT INTO messages (id, conversation_id, parent_id, role, content, status, created_at)"
                " VALUES (?, ?, ?, ?, ?, 'finished_successfully', ?)",
                rows,
            )
            connection.commit()
        connection.execute("ANALYZE")
    finally:
        connection.close()


@dataclass(frozen=True)
class Timings:
    seconds: list[float]

    def ms(self, percentile: float) -> float:
        ordered = sorted(self.seconds)
        return 1000 * ordered[min(len(ordered) - 1, int(len(ordered) * percentile / 100))]

    @property
    def mean_ms(self) -> float:
        return 1000 * statistics.fmean(self.seconds)


def timed(action: Callable[[], object], runs: int, warm: int = 2) -> Timings:
    for _ in range(warm):
        action()
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        seconds.append(time.perf_counter() - started)
    return Timings(seconds)


INSERT_MESSAGE = text(
    "INSERT INTO messages (id, conversation_id, role, content, status, created_at)"
    " VALUES (:id, :conversation_id, 'assistant', :content, 'finished_successfully', :created_at)"
).bindparams(bindparam("id", type_=Uuid()), bindparam("conversation_id", type_=Uuid()),
             bindparam("created_at", type_=UTCDateTime()))
"""The same statement before the search migrations and after (the model has columns that
later migrations add)."""


def newest_conversation(database: Database) -> uuid.UUID:
    """Where the timed messages go."""
    with UnitOfWork(database) as uow:
        return uow.session.scalar(select(Conversation.id).order_by(Conversation.created_at.desc()).limit(1))


def insert_message(database: Database, message_id: uuid.UUID, conversation_id: uuid.UUID, content: str) -> None:
    """One dialogue message in its own transaction, as `ask` stores one."""
    with UnitOfWork(database) as uow:
        uow.session.execute(INSERT_MESSAGE, {
            "id": message_id, "conversation_id": conversation_id, "content": content, "created_at": utcnow()})
        uow.commit()


def delete_messages(database: Database, ids: list[uuid.UUID]) -> None:
    """The timed messages, so that they do not crowd the newest hits."""
    with UnitOfWork(database) as uow:
        uow.session.execute(delete(Message).where(Message.id.in_(ids)))
        uow.commit()


def time_inserts(database: Database, content: str) -> Timings:
    """One dialogue message per transaction into the newest conversation; deleted afterwards."""
    added: list[uuid.UUID] = []
    conversation_id = newest_conversation(database)

    def insert() -> None:
        added.append(uuid.uuid4())
        insert_message(database, added[-1], conversation_id, content)

    timings = timed(insert, INSERTS, warm=20)
    delete_messages(database, added)
    return timings


def time_catch_up(database: Database, content: str, count: int = 1_000) -> float:
    """Milliseconds per message for the background work to index `count` pending ones
    (written as `ask` writes them, then indexed in its batches); deleted afterwards."""
    added = [uuid.uuid4() for _ in range(count)]
    conversation_id = newest_conversation(database)
    for message_id in added:
        insert_message(database, message_id, conversation_id, content)
    started = time.perf_counter()
    indexed = SearchIndexer(database).catch_up()
    elapsed = time.perf_counter() - started
    assert indexed >= count, indexed
    delete_messages(database, added)
    return elapsed * 1000 / count


SEARCHES = (
    ("rare word", RARE, Target(20), Target(100), Target(50)),
    ("common word", COMMON, Target(20), Target(100), Target(50)),
    ("medium word", MEDIUM, None, None, None),
    ("two words", f"{COMMON} {MEDIUM}", None, None, None),
    ("prefix", "kuber*", None, None, None),
    ("phrase", '"example com docs"', None, None, None),
    ("code literal", "foo_bar.baz(3)", None, None, None),
    ("Chinese, two characters", "东京", None, None, None),
    ("word excluded", f"{MEDIUM} -{COMMON}", None, None, None),
    ("common fragment", COMMON[1:5], None, None, None),
    ("medium fragment", MEDIUM[1:-1], None, None, None),
    ("rare fragment", RARE[1:-1], None, None, None),
    ("code fragment", CODE[7:15], None, None, None),
)
"""(label, query, PostgreSQL p50 target, PostgreSQL p99 target, SQLite p50 target). A fragment
(`ytho`) is no word: it is searched for by its words first, then inside words."""


def measure(database: Database, kind: str, log: Callable[[str], None]) -> list[Row]:
    """Insert timings before the search index, the migration, inserts after, then searches."""
    short = "What is the best way to configure this?"
    before_short, before_long = time_inserts(database, short), time_inserts(database, ANSWER)
    log(f"{kind}: inserts before the index p50 {before_short.ms(50):.2f} / {before_long.ms(50):.2f} ms")
    started = time.perf_counter()
    database.migrate()
    migration = time.perf_counter() - started
    log(f"{kind}: migrations 0005 to 0012 (backfill and indexes) took {migration:.0f} s")
    if kind == "postgresql":  # the backfill's dead row versions, as autovacuum would clear them
        with pg_wait.unlimited(), database.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("SET statement_timeout = 0"))
            connection.execute(text("VACUUM ANALYZE messages"))
            connection.invalidate()  # not back to the pool with the timeout off
    after_short, after_long = time_inserts(database, short), time_inserts(database, ANSWER)
    log(f"{kind}: inserts after p50 {after_short.ms(50):.2f} / {after_long.ms(50):.2f} ms")
    rows = [Row("migrations 0005 to 0012: backfill and indexes", migration, "s")]
    for name, before, after in (("short message", before_short, after_short), ("1,900-char answer", before_long, after_long)):
        rows += [
            Row(f"insert a {name}, before the index, p50", before.ms(50), "ms"),
            Row(f"insert a {name}, with the index, p50", after.ms(50), "ms", before.ms(50)),
            Row(f"insert a {name}, with the index, p99", after.ms(99), "ms", before.ms(99)),
        ]
    catch_up = time_catch_up(database, ANSWER)
    log(f"{kind}: indexing pending answers in the background: {catch_up:.3f} ms each")
    rows.append(Row("index a pending 1,900-char answer, in the background, per message", catch_up, "ms"))
    service = SearchService(database, SearchIndexer(database))
    for name, query, pg_p50, pg_p99, sqlite_p50 in SEARCHES:
        request = SearchRequest(query=query)
        hits = service.search(OWNER, request)
        timings = timed(lambda request=request: service.search(OWNER, request), QUERIES)
        p50_target, p99_target = (pg_p50, pg_p99) if kind == "postgresql" else (sqlite_p50, None)
        note = f"({len(hits)} hits)" if len(hits) < 20 else ""
        rows += [
            Row(f"search {name} `{query}`, p50", timings.ms(50), "ms", target=p50_target, note=note),
            Row(f"search {name} `{query}`, p99", timings.ms(99), "ms", target=p99_target),
        ]
        log(f"{kind}: {name} p50 {timings.ms(50):.1f} ms p99 {timings.ms(99):.1f} ms, {len(hits)} hits")
    first = service.search(OWNER, SearchRequest(query=COMMON))
    second = SearchRequest(query=COMMON, after=first[-1].cursor)
    timings = timed(lambda: service.search(OWNER, second), QUERIES)
    rows.append(Row("search common word, second page, p50", timings.ms(50), "ms"))
    return rows


def search_sections(postgres_url: str, work_dir: Path, messages: int, log: Callable[[str], None]) -> list[Section]:
    """Both databases: `postgres_url` is an empty database the caller made (and drops)."""
    sections = []
    conversations = messages // MESSAGES_PER_CONVERSATION
    for kind in ("postgresql", "sqlite"):
        url = postgres_url if kind == "postgresql" else f"sqlite:///{work_dir / 'search.sqlite3'}"
        database = Database(url)
        try:
            database.migrate("0004")
            log(f"{kind}: seeding {messages:,} messages in {conversations:,} conversations")
            started = time.perf_counter()
            if kind == "postgresql":
                seed_postgresql(url, messages)
            else:
                seed_sqlite(work_dir / "search.sqlite3", messages)
            log(f"{kind}: seeded in {time.perf_counter() - started:.0f} s")
            rows = measure(database, kind, log)
        finally:
            database.dispose()
        sections.append(Section(
            f"search, {kind} (one run, not three: seeding takes minutes; {messages:,} messages in"
            f" {conversations:,} conversations, one owner; timed through"
            " SearchService.search; an insert's floor is the same insert before migration 0005)",
            rows,
        ))
    return sections
