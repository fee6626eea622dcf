"""POST /api/chat/search on both databases: the query language, scripts without spaces, code,
titles, isolation between keys, deletion, paging, hostile queries, and the migration."""

from __future__ import annotations

import importlib
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, event, func, select, text
from sqlalchemy.engine import make_url

import models.search
from models.db import Database
from models.entities import Conversation, Message
from models.search import indexed_language
from models.search_indexing import BATCH, reindex
from models.search_text import UNSEGMENTED, Term
from services.api_keys import ApiKeys
from services.unit_of_work import UnitOfWork
from services.search import SearchRequest, SearchService
from services.search_index import SearchIndexer
from services.search_query import parse
from services.snippets import snippet
from services.transfer import ConversationTransfer, read_export
from tests.conftest import POSTGRES_URL
from fakes.openai_upstream import FakeOpenAI, Reply
from tests.helpers import ask, error_of, ok, pending_for_search, post

EXPORT = Path(__file__).parent / "data" / "chatgpt_export.json"


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {"auth_cache_seconds": 0}  # a key made in a test counts at once


def search(client: FlaskClient, query: str, headers: dict[str, str] | None = None, **fields: Any) -> list[dict]:
    response = client.post("/api/chat/search", json={"query": query, **fields}, headers=headers or {})
    return ok(response)


def snippets(client: FlaskClient, query: str, **fields: Any) -> list[str]:
    return [hit["snippet"] for hit in search(client, query, **fields)]


def store(app: Flask, *texts: str, owner: str = "", title: str = "New chat", at: datetime | None = None) -> uuid.UUID:
    """A conversation of user messages with `texts`, written directly (all at time `at` if given)."""
    moment = at or datetime.now(UTC)
    conversation_id, parent = uuid.uuid4(), uuid.uuid4()
    with UnitOfWork(app.services.database) as uow:
        uow.session.add(Conversation(id=conversation_id, owner=owner, title=title, created_at=moment, updated_at=moment))
        uow.session.add(Message(id=parent, conversation_id=conversation_id, created_at=moment))
        for index, body in enumerate(texts):
            message = Message(
                id=uuid.uuid4(), conversation_id=conversation_id, parent_id=parent, role="user",
                content=body, created_at=at or moment + timedelta(milliseconds=index),
            )
            uow.session.add(message)
            parent = message.id
        uow.commit()
    return conversation_id


# -- the query language ------------------------------------------------------------


def test_every_word_must_match(app: Flask, client: FlaskClient) -> None:
    store(app, "the quick brown fox", "a quick reply", "brown bread")
    assert snippets(client, "quick brown") == ["the **quick** **brown** fox"]
    assert snippets(client, "QUICK") == ["a **quick** reply", "the **quick** brown fox"]
    assert snippets(client, "quick purple") == []


def test_a_quoted_phrase_needs_its_words_in_order(app: Flask, client: FlaskClient) -> None:
    store(app, "the quick brown fox", "brown, quick and fast", "quick - brown!")
    assert snippets(client, '"quick brown"') == ["**quick - brown**!", "the **quick brown** fox"]
    assert snippets(client, '"fox brown"') == []
    assert snippets(client, '"brown quick"') == ["**brown, quick** and fast"]  # punctuation between is fine
    assert snippets(client, '"quick brown') == ["**quick - brown**!", "the **quick brown** fox"]  # unclosed


def test_excluded_words_leave_messages_out(app: Flask, client: FlaskClient) -> None:
    store(app, "python and rust", "python and go", "rust alone")
    assert snippets(client, "python -rust") == ["**python** and go"]
    assert snippets(client, 'python -"and go"') == ["**python** and rust"]
    assert snippets(client, "-python") == []  # exclusions alone narrow nothing down
    assert snippets(client, "python -") == ["**python** and go", "**python** and rust"]


def test_a_star_matches_the_start_of_a_word(app: Flask, client: FlaskClient) -> None:
    store(app, "configuration files", "configure it", "reconfigure")
    assert snippets(client, "config*") == ["**configure** it", "**configuration** files"]
    assert snippets(client, '"configure it"*') == ["**configure it**"]
    # No word `config`: found as a fragment instead, anywhere (`Query.fragments`) ...
    assert snippets(client, "config") == ["re**config**ure", "**config**ure it", "**config**uration files"]
    store(app, "a config file")
    # ... but where `config` is a word, only whole words count.
    assert snippets(client, "config") == ["a **config** file"]


def test_chinese_japanese_korean_and_thai_match_inside_text(app: Flask, client: FlaskClient) -> None:
    store(app, "我明天去东京旅游，想看看东京塔。", "東京タワーに行きました", "서울에서 만나요", "ผมชอบกินข้าว")
    assert snippets(client, "东京") == ["我明天去**东京**旅游，想看看**东京**塔。"]
    assert snippets(client, "东京塔") == ["我明天去东京旅游，想看看**东京塔**。"]
    assert snippets(client, "塔") == ["我明天去东京旅游，想看看东京**塔**。"]
    assert snippets(client, "タワー") == ["東京**タワー**に行きました"]
    assert snippets(client, "東京") == ["**東京**タワーに行きました"]
    assert snippets(client, "서울") == ["**서울**에서 만나요"]
    assert snippets(client, "กินข้าว") == ["ผมชอบ**กินข้าว**"]
    assert snippets(client, "东京 -塔") == []
    assert snippets(client, "京都") == []


def test_a_latin_word_written_against_cjk_characters_is_a_word(app: Flask, client: FlaskClient) -> None:
    """Chinese and Japanese put no space around a Latin word: it is still a word of its own,
    found whole (not inside a longer word), by prefix and in phrases, and excluded by `-`."""
    moment = datetime(2025, 3, 1, tzinfo=UTC)
    texts = ["我们用Python写代码", "東京でRustを書く", "用AI和C写程序", "Pythonic 代码", "pythonista", "先装foo_bar.baz()再说",
             "用Go写的Web服务"]
    for age, said in enumerate(texts):  # newest first
        store(app, said, at=moment - timedelta(seconds=age))
    title = store(app, "nothing here", title="用Kubernetes部署", at=moment - timedelta(seconds=10))
    assert snippets(client, "python") == ["我们用**Python**写代码"]
    assert snippets(client, "RUST") == ["東京で**Rust**を書く"]
    assert snippets(client, "ai") == ["用**AI**和C写程序"]
    assert snippets(client, "c") == ["用AI和**C**写程序"]
    assert snippets(client, "go") == ["用**Go**写的Web服务"]
    assert snippets(client, "pyth*") == ["我们用**Python**写代码", "**Pythonic** 代码", "**pythonista**"]
    assert snippets(client, "python 代码") == ["我们用**Python**写**代码**"]
    assert snippets(client, "代码 -python") == ["Pythonic **代码**"]
    assert snippets(client, "写 -go") == ["我们用Python**写**代码", "用AI和C**写**程序"]
    assert snippets(client, "foo_bar.baz()") == ["先装**foo_bar.baz()**再说"]
    assert snippets(client, "bar.baz") == ["先装foo_**bar.baz**()再说"]
    assert snippets(client, "web") == ["用Go写的**Web**服务"]
    assert snippets(client, "pythonic") == ["**Pythonic** 代码"]
    # No word starts `yth`: as a fragment it is found anywhere, across the CJK boundary too.
    assert snippets(client, "yth*") == ["我们用P**yth**on写代码", "P**yth**onic 代码", "p**yth**onista"]
    assert snippets(client, "Python写") == ["我们用**Python写**代码"]  # typed against the characters too
    assert snippets(client, "n写") == [] and snippets(client, "用Py") == []  # ... still whole words
    assert snippets(client, "用Py*") == ["我们**用Python**写代码"]
    assert snippets(client, "写 -n写") == ["我们用Python**写**代码", "用AI和C**写**程序", "用Go**写**的Web服务"]
    assert [hit["conversation_id"] for hit in search(client, "kubernetes")] == [str(title)]
    assert search(client, "python", role="assistant") == []
    assert len(search(client, "python", convo_id=str(title))) == 0


def test_a_letter_whose_lower_case_is_two_characters_still_finds_itself(app: Flask, client: FlaskClient) -> None:
    store(app, "İstanbul trip", "İstanbul旅行")  # "İ".lower() is "i" and a combining dot
    assert snippets(client, "İstanbul") == ["**İstanbul**旅行", "**İstanbul** trip"]
    assert snippets(client, "İstan*") == ["**İstanbul**旅行", "**İstanbul** trip"]


def test_code_and_urls_are_found_as_typed(app: Flask, client: FlaskClient) -> None:
    store(app, "call foo_bar.baz() at https://example.com/docs?x=1", "foo bar baz, spaced out", "C++ and C#")
    assert snippets(client, "foo_bar.baz()") == ["call **foo_bar.baz()** at https://example.com/docs?x=1"]
    assert snippets(client, "bar.baz") == ["call foo_**bar.baz**() at https://example.com/docs?x=1"]
    assert snippets(client, "example.com/docs") == ["call foo_bar.baz() at https://**example.com/docs**?x=1"]
    assert len(search(client, "https://example.com/docs?x=1")) == 1
    assert snippets(client, "foo.bar") == []  # exact: the dot must be there
    assert len(search(client, "baz")) == 2  # a word inside code is a word
    assert snippets(client, "C#") == ["C++ and **C#**"]
    assert snippets(client, "-foo_bar.baz() foo") == ["**foo** bar baz, spaced out"]


def test_a_matching_title_is_a_hit_before_the_messages(app: Flask, client: FlaskClient) -> None:
    conversation_id = store(app, "how do I write a helm chart for kubernetes?", title="Kubernetes notes")
    store(app, "kubernetes again, later", at=datetime.now(UTC) + timedelta(seconds=5))
    hits = search(client, "kubernetes")
    assert [hit["message_id"] is None for hit in hits] == [True, False, False]
    title = hits[0]
    assert title["conversation_id"] == str(conversation_id) and title["role"] is None
    assert title["snippet"] == "**Kubernetes** notes" and title["title"] == "Kubernetes notes"
    assert [hit["snippet"] for hit in hits[1:]] == [
        "**kubernetes** again, later", "how do I write a helm chart for **kubernetes**?"
    ]
    assert search(client, "kubernetes", role="user")[0]["message_id"] is not None  # a title has no role
    ok(post(client, "change/title", {"convo_id": str(conversation_id), "title": "Containers"}))
    assert [hit["message_id"] is None for hit in search(client, "kubernetes")] == [False, False]


def test_hits_have_the_contract_shape(app: Flask, client: FlaskClient, fake_upstream: FakeOpenAI) -> None:
    fake_upstream.script(Reply(text="Paris is the capital."))
    answer = ask(client, "What is the capital of France?")
    user, assistant = search(client, "capital")[::-1]
    assert list(assistant) == ["conversation_id", "title", "message_id", "role", "snippet", "create_time", "cursor"]
    assert assistant["message_id"] == answer["parent_id"] and assistant["role"] == "assistant"
    assert user["role"] == "user" and user["conversation_id"] == answer["conversation_id"]
    assert assistant["title"] == "New chat"
    assert abs(assistant["create_time"] - datetime.now(UTC).timestamp()) < 60
    assert isinstance(assistant["cursor"], str) and assistant["cursor"]


def test_a_streamed_answer_is_found_by_its_final_text(client: FlaskClient, fake_upstream: FakeOpenAI) -> None:
    fake_upstream.script(Reply(text="first part, then zanzibar at the end", chunks=["first part, ", "then zanzibar at the end"]))
    response = post(client, "ask", {"prompt": "stream please", "stream": True})
    response.get_data()  # the whole stream
    assert snippets(client, "zanzibar") == ["first part, then **zanzibar** at the end"]


def test_imported_conversations_are_searched(app: Flask, client: FlaskClient) -> None:
    ConversationTransfer(app.services.database).import_conversations(read_export(EXPORT.open("rb")))
    assert "capital of **France**" in " ".join(snippets(client, "france"))
    assert any("**长城**" in found for found in snippets(client, "长城"))
    assert search(client, "parabola")[0]["message_id"] is None  # its title


# -- whose, and what is gone -----------------------------------------------------


def test_each_key_finds_only_its_own_conversations(app: Flask, client: FlaskClient) -> None:
    keys = ApiKeys(app.services.database)
    alice = {"Authorization": f"Bearer {keys.create('alice').key}"}
    bob = {"Authorization": f"Bearer {keys.create('bob').key}"}
    mine = store(app, "the secret recipe", owner="alice", title="secret")
    store(app, "bob's own secret", owner="bob")
    assert [hit["conversation_id"] for hit in search(client, "secret", alice)] == [str(mine)] * 2
    assert [hit["snippet"] for hit in search(client, "secret", bob)] == ["bob's own **secret**"]
    refused = client.post("/api/chat/search", json={"query": "secret", "convo_id": str(mine)}, headers=bob)
    assert error_of(refused, 404)["code"] == "conversation_not_found"


def test_deleted_and_cleared_conversations_never_show_up(app: Flask, client: FlaskClient) -> None:
    first = store(app, "ephemeral words", title="ephemeral")
    store(app, "ephemeral too")
    assert len(search(client, "ephemeral")) == 3
    ok(post(client, "delete/conversation", {"convo_id": str(first)}))
    assert snippets(client, "ephemeral") == ["**ephemeral** too"]
    ok(post(client, "clear/conversations", {}))
    assert search(client, "ephemeral") == []
    store(app, "ephemeral again")  # the indexes took the deletions: new rows are found alone
    assert snippets(client, "ephemeral") == ["**ephemeral** again"]


def test_deleted_messages_leave_the_index_itself(app: Flask, client: FlaskClient, fake_upstream: FakeOpenAI) -> None:
    """Deleted rows leave the index, not only the results: on SQLite new rows take the
    freed rowids, which stale index entries would match."""
    fake_upstream.script(Reply(text="a zebra answer 斑马zebra"), Reply(text="a zebra again"))
    first = ask(client, "zebra question")
    ok(post(client, "delete/conversation", {"convo_id": first["conversation_id"]}))
    second = ask(client, "another zebra")
    ok(post(client, "clear/conversations", {}))
    assert second["conversation_id"] != first["conversation_id"]
    store(app, *[f"lion {n} 狮子" for n in range(8)], title="lion")
    assert search(client, "zebra") == [] and search(client, "斑马") == []
    with UnitOfWork(app.services.database) as uow:
        if uow.session.get_bind().dialect.name == "sqlite":
            for table, word in [("message_words", "zebra"), ("message_grams", "zebra"), ("conversation_words", "zebra")]:
                count = f"SELECT count(*) FROM {table} WHERE {table} MATCH :word"
                assert uow.session.execute(text(count), {"word": word}).scalar_one() == 0, table
        else:
            stale = "SELECT count(*) FROM messages WHERE search_vector @@ to_tsquery('simple', 'zebra')"
            assert uow.session.execute(text(stale)).scalar_one() == 0


# -- indexed after the write ---------------------------------------------------------


def pending(app: Flask) -> int:
    return pending_for_search(app.services.database.engine)


def sqlite_index_is_sound(app: Flask) -> None:
    """SQLite's FTS tables hold exactly the dialogue messages that are not pending (their
    `_docsize` shadow tables have a row per document), and check sound themselves."""
    with UnitOfWork(app.services.database) as uow:
        if uow.session.get_bind().dialect.name != "sqlite":
            return
        rows = lambda sql: set(uow.session.execute(text(sql)).scalars())  # noqa: E731
        indexed = rows(
            "SELECT rowid FROM messages WHERE role IN ('user', 'assistant')"
            " AND rowid NOT IN (SELECT id FROM message_words_pending)"
        )
        assert rows("SELECT id FROM message_words_docsize") == indexed
        unsegmented = rows(f"SELECT rowid FROM messages WHERE content GLOB '{models.search.UNSEGMENTED_GLOB}'")
        assert rows("SELECT id FROM message_grams_docsize") == indexed & unsegmented
        assert rows("SELECT id FROM message_fragments_docsize") == indexed
        assert rows("SELECT id FROM conversation_fragments_docsize") == rows("SELECT rowid FROM conversations")
        for table in ("message_words", "message_grams", "message_fragments", "conversation_fragments"):
            uow.session.execute(text(f"INSERT INTO {table}({table}) VALUES ('integrity-check')"))


def test_an_ask_writes_unindexed_and_the_next_search_finds_it(client: FlaskClient, fake_upstream: FakeOpenAI) -> None:
    """No ask waits for the index: its messages are pending until the next search (or the
    background work) indexes them."""
    fake_upstream.script(Reply(text="the walrus answers"))
    ask(client, "a walrus question")
    assert pending(client.application) == 2
    assert [hit["role"] for hit in search(client, "walrus")] == ["assistant", "user"]
    assert pending(client.application) == 0


def test_the_background_work_indexes_what_is_pending(app: Flask, client: FlaskClient) -> None:
    store(app, *[f"heron {n}" for n in range(250)])  # more than a SQLite batch
    assert pending(app) == 250
    indexer = SearchIndexer(app.services.database, every=0.05)
    indexer.start()
    try:
        deadline = time.monotonic() + 10
        while pending(app) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        indexer.stop()
    assert pending(app) == 0
    sqlite_index_is_sound(app)
    assert len(search(client, "heron", limit=100)) == 100


def test_a_changed_or_deleted_message_leaves_the_index_right(app: Flask, client: FlaskClient) -> None:
    """A changed text is indexed again; one deleted before or after it was indexed leaves
    no entry behind (SQLite: an external-content FTS table must only be told to delete
    what it holds)."""
    conversation_id = store(app, "an albatross flies", "尖锐的 albatross 信天翁")
    assert len(search(client, "albatross")) == 2
    with UnitOfWork(app.services.database) as uow:
        first = uow.session.execute(
            text("SELECT id FROM messages WHERE content = 'an albatross flies'")
        ).scalar_one()
        uow.conversations.update_message(uuid.UUID(str(first)), content="a pelican swims")
        uow.commit()
    assert pending(app) == 1
    assert snippets(client, "pelican") == ["a **pelican** swims"]
    assert snippets(client, "albatross") == ["尖锐的 **albatross** 信天翁"]
    store(app, "an unseen puffin")  # deleted while pending
    ok(post(client, "clear/conversations", {}))
    assert pending(app) == 0
    sqlite_index_is_sound(app)
    store(app, "a puffin again", "pelican 信天翁")
    assert snippets(client, "puffin") == ["a **puffin** again"]
    assert snippets(client, "信天翁") == ["pelican **信天翁**"]
    assert conversation_id not in {hit["conversation_id"] for hit in search(client, "pelican")}
    sqlite_index_is_sound(app)


def test_a_search_indexes_its_callers_messages_first(app: Flask) -> None:
    """PostgreSQL indexes the caller's pending messages before the search (others' wait for
    the background work); SQLite, which writes one transaction at a time, everyone's."""
    store(app, "a gannet of a", owner="a")
    store(app, "a gannet of b", owner="b")
    SearchIndexer(app.services.database).before_search("a")
    sqlite = app.services.database.engine.dialect.name == "sqlite"
    assert pending(app) == (0 if sqlite else 1)


def test_a_catch_up_waits_a_little_for_rows_another_transaction_holds(empty_postgresql_url: str) -> None:
    """Rows the background work is indexing are waited for, so the search sees them indexed;
    rows held for longer (a writer's long transaction) are left to later, and the search
    answers (PostgreSQL; SQLite's writers take turns)."""
    database = Database(empty_postgresql_url)
    indexer = SearchIndexer(database)
    service = SearchService(database, indexer)
    try:
        with UnitOfWork(database) as uow:
            conversation = Conversation(id=uuid.uuid4(), owner="", title="t")
            uow.session.add(conversation)
            uow.session.flush()
            for body in ("a held ibis", "a free ibis"):
                uow.session.add(Message(id=uuid.uuid4(), conversation_id=conversation.id, role="user", content=body))
            uow.commit()
        with database.engine.connect() as holder:
            holder.execute(text("SELECT id FROM messages WHERE content = 'a held ibis' FOR UPDATE"))
            started = time.monotonic()
            service.search("", SearchRequest(query="ibis"))
            assert 0.9 < time.monotonic() - started < 5
            assert pending_for_search(database.engine) == 2  # its batch gave up whole
            holder.rollback()
            # Held briefly, as by the background work's batch: waited for, then seen.
            holder.execute(text("UPDATE messages SET search_vector = search_document(content) WHERE content = 'a held ibis'"))
            release = threading.Timer(0.3, holder.commit)
            release.start()
            try:
                assert indexer.before_search("") is None and pending_for_search(database.engine) == 0
            finally:
                release.join()
    finally:
        database.dispose()


# -- narrowing and paging ----------------------------------------------------------


def test_convo_id_and_role_narrow_the_search(client: FlaskClient, fake_upstream: FakeOpenAI) -> None:
    fake_upstream.script(Reply(text="an answer about tomatoes"), Reply(text="tomatoes again"))
    first = ask(client, "tell me about tomatoes")
    second = ask(client, "tomatoes?")
    assert len(search(client, "tomatoes")) == 4
    assert [hit["role"] for hit in search(client, "tomatoes", role="assistant")] == ["assistant"] * 2
    in_first = search(client, "tomatoes", convo_id=first["conversation_id"])
    assert {hit["conversation_id"] for hit in in_first} == {first["conversation_id"]} and len(in_first) == 2
    assert len(search(client, "tomatoes", conversation_id=second["conversation_id"], role="user")) == 1


def test_pages_follow_each_other_without_repeats_or_gaps(app: Flask, client: FlaskClient) -> None:
    same_moment = datetime(2025, 1, 1, tzinfo=UTC)  # ties are broken by id
    for index in range(4):
        store(app, *[f"paging note {index}.{n}" for n in range(5)], title=f"paging {index}", at=same_moment)
    store(app, *[f"paging later {n}" for n in range(3)])
    everything = search(client, "paging", limit=100)
    assert len(everything) == 4 + 4 * 5 + 3
    assert [hit["message_id"] is None for hit in everything] == [True] * 4 + [False] * 23
    pages, after = [], None
    while True:
        page = search(client, "paging", limit=6, **({"after": after} if after else {}))
        if not page:
            break
        pages.append(page)
        after = page[-1]["cursor"]
    assert [len(page) for page in pages] == [6, 6, 6, 6, 3]
    assert [hit["cursor"] for page in pages for hit in page] == [hit["cursor"] for hit in everything]


STRATEGIES = [  # (rows tested one by one first, few matches, many matches)
    ({"postgresql": 3, "sqlite": 3}, 0, 4),  # newest rows one by one, then the index (SQLite: the set of matches)
    ({"postgresql": 3, "sqlite": 3}, 0, 1_000),  # SQLite: the set of matches only
    ({"postgresql": 1_000, "sqlite": 200}, 1_000, 40_000),  # one pass; SQLite: matches sorted by time
]


@pytest.mark.parametrize(("recent", "few", "many"), STRATEGIES)
def test_every_way_to_a_page_gives_the_same_pages(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch, recent: dict, few: int, many: int
) -> None:
    """Each plan the queries choose between by size, forced at a small size: the same hits,
    in the same order, page after page."""
    moment = datetime(2025, 6, 1, tzinfo=UTC)
    for index in range(12):
        words = ["often"] + (["sometimes"] if index % 3 == 0 else []) + (["东京"] if index % 2 else [])
        store(app, *[" ".join(words + [f"n{index}x{n}"]) for n in range(3)], title=f"often {index}",
              at=moment + timedelta(seconds=index // 4))  # ties in time as well
    queries = ["often", "often -sometimes", "often 东京", "oft*"]
    expected = {query: search(client, query, limit=100) for query in queries}
    monkeypatch.setattr(models.search, "RECENT", recent)
    monkeypatch.setattr(models.search, "FEW_MATCHES", few)
    monkeypatch.setattr(models.search, "MANY_MATCHES", many)
    for query in queries:
        hits, after = [], None
        while True:
            page = search(client, query, limit=7, **({"after": after} if after else {}))
            if not page:
                break
            hits += page
            after = page[-1]["cursor"]
        assert hits == expected[query], query
    assert len(expected["often"]) == 12 + 36 and len(expected["often 东京"]) == 18


@pytest.mark.parametrize("short_grams", [200, 0])
@pytest.mark.parametrize(("recent", "few", "many"), STRATEGIES)
def test_words_found_by_either_index_page_as_one_list(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch, recent: dict, few: int, many: int,
    short_grams: int,
) -> None:
    """A Latin word between spaces and one against CJK characters (on SQLite the word index
    finds the first, the trigram index the second): one order, page after page, under each
    plan, and with short words looked up in the trigram index or read from the texts."""
    moment = datetime(2025, 6, 1, tzinfo=UTC)
    for index in range(8):
        store(app, f"用Python写第{index}个", f"plain python {index}", "AI助手python", title=f"聊Python {index}",
              at=moment + timedelta(seconds=index // 3))  # ties in time as well
    queries = {"python": 8 + 24, "ai": 8, "python -ai": 8 + 16, "pyth*": 8 + 24, "第 python": 8}
    expected = {query: search(client, query, limit=100) for query in queries}
    assert {query: len(hits) for query, hits in expected.items()} == queries
    monkeypatch.setattr(models.search, "RECENT", recent)
    monkeypatch.setattr(models.search, "FEW_MATCHES", few)
    monkeypatch.setattr(models.search, "MANY_MATCHES", many)
    monkeypatch.setattr(models.search, "SHORT_TERM_GRAMS", short_grams)
    for query in queries:
        hits, after = [], None
        while True:
            page = search(client, query, limit=5, **({"after": after} if after else {}))
            if not page:
                break
            hits += page
            after = page[-1]["cursor"]
        assert hits == expected[query], query


def test_a_page_may_start_after_any_hit(app: Flask, client: FlaskClient) -> None:
    store(app, *[f"cursor word {n}" for n in range(6)], title="cursor title")
    everything = search(client, "cursor")
    for index, hit in enumerate(everything):
        assert search(client, "cursor", after=hit["cursor"]) == everything[index + 1 :]


# -- fragments: where words find nothing -------------------------------------------


def test_fragments_are_found_inside_words_when_words_find_nothing(app: Flask, client: FlaskClient) -> None:
    store(app, "ask the username later", "nothing here")
    store(app, "def getUserName(id): pass", title="Kubernetes deployment notes")
    assert snippets(client, "UserNam") == ["def get**UserNam**e(id): pass", "ask the **usernam**e later"]
    assert snippets(client, "username") == ["ask the **username** later"]  # a word found: no fragments
    assert snippets(client, "UserNam -ask") == ["def get**UserNam**e(id): pass"]
    assert snippets(client, "UserNam pass") == ["def get**UserNam**e(id): **pass**"]  # both as fragments
    assert snippets(client, "UserNam (id") == ["def get**UserNam**e**(id**): pass"]
    assert snippets(client, "se") == []  # too short to be a fragment
    hits = search(client, "ubernete")
    assert [hit["message_id"] for hit in hits] == [None] and hits[0]["snippet"] == "K**ubernete**s deployment notes"
    assert hits[0]["cursor"].startswith("2.")  # a fragment hit's cursor: the next pages find fragments too
    assert search(client, "ubernete", role="user") == []  # a title is nobody's words


def test_a_fragment_is_taken_literally(app: Flask, client: FlaskClient) -> None:
    store(app, "100%_done and 100x-done", "back\\slash")
    assert snippets(client, "0%_d") == ["10**0%_d**one and 100x-done"]
    assert snippets(client, "ck\\sl") == ["ba**ck\\sl**ash"]
    assert snippets(client, "0%%d") == [] and snippets(client, "k%s") == []


def test_fragment_pages_follow_each_other_without_repeats_or_gaps(app: Flask, client: FlaskClient) -> None:
    same_moment = datetime(2025, 1, 1, tzinfo=UTC)
    for index in range(3):
        store(app, *[f"xyzmarkerabc{index}.{n}" for n in range(4)], title=f"amarkers {index}", at=same_moment)
    everything = search(client, "marker", limit=100)
    assert len(everything) == 3 + 12 and all(hit["cursor"][0] in "23" for hit in everything)
    pages, after = [], None
    while page := search(client, "marker", limit=4, **({"after": after} if after else {})):
        pages.append(page)
        after = page[-1]["cursor"]
    assert [len(page) for page in pages] == [4, 4, 4, 3]
    assert [hit["cursor"] for page in pages for hit in page] == [hit["cursor"] for hit in everything]
    listed = app.services.search.conversations("", "marker", after=None, limit=2)
    assert len(listed.data) == 2 and listed.has_more
    rest = app.services.search.conversations("", "marker", after=listed.data[-1].conversation.id, limit=2)
    assert len(rest.data) == 1 and not rest.has_more
    assert {str(match.conversation.id) for match in [*listed.data, *rest.data]} == {
        hit["conversation_id"] for hit in everything}


def test_fragments_leave_other_keys_and_deleted_conversations_out(app: Flask, client: FlaskClient) -> None:
    keys = ApiKeys(app.services.database)
    alice = {"Authorization": f"Bearer {keys.create('alice').key}"}
    bob = {"Authorization": f"Bearer {keys.create('bob').key}"}
    store(app, "my getUserName helper", owner="bob")
    gone = store(app, "old getUserName helper", owner="alice")
    assert [hit["snippet"] for hit in search(client, "UserNam", alice)] == ["old get**UserNam**e helper"]
    ok(client.post("/api/chat/delete/conversation", json={"convo_id": str(gone)}, headers=alice))
    assert search(client, "UserNam", alice) == []
    assert [hit["snippet"] for hit in search(client, "UserNam", bob)] == ["my get**UserNam**e helper"]


def test_sqlite_reads_fragments_through_its_trigram_tables(empty_sqlite_url: str) -> None:
    """Fragments are looked up in `message_fragments` and `conversation_fragments` (migration
    0012), not found by reading every text (1.5 s for a rare one at a million messages)."""
    database = Database(empty_sqlite_url)
    service = SearchService(database, SearchIndexer(database))
    try:
        with UnitOfWork(database) as uow:
            conversation = Conversation(id=uuid.uuid4(), owner="", title="about Zanzibar")
            uow.session.add(conversation)
            uow.session.flush()
            for body in ("a trip to Zanzibar", "nothing here", "ZANZIBAR again"):
                uow.session.add(Message(id=uuid.uuid4(), conversation_id=conversation.id, role="user", content=body))
            uow.commit()
        statements: list[str] = []
        listener = lambda *args: statements.append(args[2])  # noqa: E731 - (conn, cursor, statement, ...)
        event.listen(database.engine, "before_cursor_execute", listener)
        hits = service.search("", SearchRequest(query="anziba"))
        event.remove(database.engine, "before_cursor_execute", listener)
        assert [hit.snippet for hit in hits] == ["about Z**anziba**r", "Z**ANZIBA**R again", "a trip to Z**anziba**r"]
        searched = " ".join(statements)
        assert "conversation_fragments MATCH" in searched and "message_fragments MATCH" in searched
    finally:
        database.dispose()


def test_postgresql_reads_fragments_through_the_trigram_index(empty_postgresql_url: str) -> None:
    """The older messages' part of a fragment search is planned on `ix_messages_indexed_trigrams`
    (migration 0012), the titles' on `ix_conversations_trigrams` (0011)."""
    database = Database(empty_postgresql_url)
    try:
        with UnitOfWork(database) as uow:
            indexes = set(uow.session.execute(text("SELECT indexname FROM pg_indexes WHERE indexname LIKE '%trigrams'")).scalars())
            uow.session.execute(text(  # enough rows for the planner to prefer the trigram index
                "INSERT INTO conversations (id, owner, title, created_at, updated_at)"
                " SELECT md5('c' || i)::uuid, '', 'chat ' || i, now(), now() FROM generate_series(1, 500) AS i"
            ))
            uow.session.execute(text(
                "INSERT INTO messages (id, conversation_id, role, content, status, created_at)"
                " SELECT md5('m' || i)::uuid, md5('c' || (i % 500 + 1))::uuid, 'user', 'note ' || i || ' ' || md5('t' || i),"
                " 'finished_successfully', now() - i * interval '1 second' FROM generate_series(1, 30000) AS i"
            ))
            uow.commit()
        with database.engine.connect() as connection:
            connection.exec_driver_sql("ANALYZE messages")
            connection.exec_driver_sql("ANALYZE conversations")
            connection.commit()
        assert indexes == {"ix_messages_indexed_trigrams", "ix_conversations_trigrams"}
        statements: list[tuple[str, Any]] = []

        def seen(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
            if "ILIKE" in statement:
                statements.append((statement, parameters))

        event.listen(database.engine, "before_cursor_execute", seen)
        SearchService(database, SearchIndexer(database)).search("", SearchRequest(query="UserNam"))
        event.remove(database.engine, "before_cursor_execute", seen)
        assert len(statements) == 1
        with database.engine.begin() as connection:
            connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
            plan = "\n".join(row[0] for row in connection.exec_driver_sql("EXPLAIN " + statements[0][0], statements[0][1]))
        assert "ix_messages_indexed_trigrams" in plan and "ix_conversations_trigrams" in plan, plan
    finally:
        database.dispose()


# -- bad input and hostile queries -----------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "query"),
        ({"query": ""}, "query"),
        ({"query": "   "}, "query"),
        ({"query": 42}, "query"),
        ({"query": "x" * 1001}, "query"),
        ({"query": "x\x00"}, "query"),
        ({"query": "x", "limit": 0}, "limit"),
        ({"query": "x", "limit": 101}, "limit"),
        ({"query": "x", "limit": "20"}, "limit"),
        ({"query": "x", "limit": 2.5}, "limit"),
        ({"query": "x", "role": "system"}, "role"),
        ({"query": "x", "after": ""}, "after"),
        ({"query": "x", "after": "not-a-cursor"}, "after"),
        ({"query": "x", "after": "WzksMSwieCJd"}, "after"),  # [9,1,"x"]
        ({"query": "x", "convo_id": "nope"}, "convo_id"),
    ],
)
def test_bad_fields_are_a_400_naming_them(client: FlaskClient, body: dict, field: str) -> None:
    error = error_of(post(client, "search", body), 400)
    assert error["message"].startswith(f"{field}:"), error


def test_limits_at_the_bounds_are_accepted(app: Flask, client: FlaskClient) -> None:
    store(app, *["bounded"] * 3)
    assert len(search(client, "bounded", limit=1)) == 1
    assert len(search(client, "bounded", limit=100)) == 3
    unknown = post(client, "search", {"query": "x", "convo_id": str(uuid.uuid4())})
    assert error_of(unknown, 404)["code"] == "conversation_not_found"


HOSTILE = [
    "'; DROP TABLE messages; --", '"; DELETE FROM conversations; --', "a' OR '1'='1", "%", "_", "\\", "\\'",
    "' & ! | ( ) : * <-> ", "!!!", "(((", "a:*", "NEAR(a b)", "a AND OR NOT b", "^a", "{col}: x", "*", "**",
    '"', '""', '"""', "-", "--", "- -", "-\"\"", "a*b*c", "x:y", "\u200b", "🚀🚀", "ǅ", "İstanbul", "ß",
    "a" * 1000, "東" * 300, " ".join(["w"] * 40),
]
TEXT = st.lists(
    st.sampled_from(list("ab -\"*'\\%_:&|!()<>^@.東京タ서ยé😀\t") + ["NOT", "OR", "AND", "NEAR", "beta", "foo_bar"]),
    max_size=20,
).map("".join) | st.text(max_size=40).filter(lambda value: "\x00" not in value)


def test_hostile_queries_are_taken_literally(app: Flask, client: FlaskClient) -> None:
    store(app, "a' OR '1'='1 is an old trick", "plain text 東京")
    for query in HOSTILE:
        response = post(client, "search", {"query": query})
        if query.strip():
            ok(response)
    assert snippets(client, "a' OR '1'='1") == ["**a'** **OR** **'1'='1** is an old trick"]
    assert snippets(client, "\"a' OR '1'='1\"") == ["**a' OR '1'='1** is an old trick"]
    with UnitOfWork(app.services.database) as uow:
        assert uow.session.scalar(select(func.count()).select_from(Message)) == 3  # the root and two


def test_any_query_is_answered_and_finds_only_what_it_says(app: Flask) -> None:
    """Fuzzing the parser and both query builders: no error, only the caller's messages,
    in order, the same through the conversation list (`/v1`), and a message holding a
    query's words in order is found by them."""
    service = app.services.search
    mine = store(app, "alpha beta gamma 東京タワー foo_bar.baz() x'y", owner="me", title="alpha 東京")
    store(app, "alpha beta gamma 東京タワー foo_bar.baz() x'y", owner="someone else", title="alpha 東京")

    @settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(query=TEXT)
    def run(query: str) -> None:
        hits = service.search("me", SearchRequest(query=query, limit=100))
        assert {hit.conversation_id for hit in hits} <= {mine}
        titles = [hit for hit in hits if hit.message_id is None]
        assert hits[: len(titles)] == titles  # titles first
        messages = [(hit.created_at, hit.message_id) for hit in hits[len(titles) :]]
        assert messages == sorted(messages, reverse=True)
        listed = service.conversations("me", query, after=None, limit=100)
        assert [found.conversation.id for found in listed.data] == ([mine] if hits else []) and not listed.has_more
        if hits:
            assert listed.data[0].hit == hits[0]  # its best hit
            assert service.conversations("me", query, after=mine, limit=1).data == []

    run()
    for query in ["alpha", "beta gamma", '"alpha beta"', "gam*", "東京", "タワー", "foo_bar.baz()", "x'y", "-zeta beta"]:
        assert [hit.message_id is None for hit in service.search("me", SearchRequest(query=query))] in (
            [False], [True, False]
        ), query


AGREED_CORPUS = [
    "我们用Python写代码", "Pythonic 代码", "python and rust", "call foo_bar.baz() now", "foo bar baz", "東京でRustを書く",
    "用AI和C写程序", "C++ and C#", "the quick brown fox", "quick-brown fox", "用Go写的Web服务", "example.com/docs?x=1",
    "configure it", "configuration 配置", "a' OR '1'='1", "50% off", "x_y z", "東京タワー", "서울에서 Go를", "AI助手python",
    "Café au lait", "naïve café", "日本語のテキストとEnglish混在", "abc123 def", "123abc", "Go语言和golang", "C语言",
    "🚀python火箭", "x86_64架构", "v1.2.3版本", "straße 街", "ＡＩ助手",
]
AGREED_WORDS = [
    "python", "Python", "rust", "代码", "写", "ai", "c", "go", "foo_bar", "bar.baz", "quick", "brown", "fox", "conf*",
    "config*", "東京", "タワー", "web", "-python", "-c", '"quick brown"', "c#", "C++", "café", "cafe", "english", "テキスト",
    "abc*", "123", "-代码", "x_y", "50%", "'1'='1", "服务", "를", "docs", "pyth*", "-rust", "c*", "go*", '"写代码"', "-go",
    "ａｉ", "AI*", "a*", "p*", "Python写", "n写", "用Py*", "写代", "用AI和C", "和c", "-n写", "-Python写", "Rustを", "stを",
    "golang", "go语", "x86_64", "v1.2.3", "1.2", "straße", "火箭", "-go*",
]


def test_both_databases_find_the_same(empty_sqlite_url: str, empty_postgresql_url: str) -> None:
    """The same texts on SQLite and PostgreSQL, any query: the same hits in the same order.
    (Where they still differ, README.md says so: a term mixing Latin and CJK with
    punctuation between them, and the case of a few non-ASCII letters.)"""
    moment = datetime(2025, 1, 1, tzinfo=UTC)
    databases = [Database(url) for url in (empty_sqlite_url, empty_postgresql_url)]
    for database in databases:
        with UnitOfWork(database) as uow:
            for index, said in enumerate(AGREED_CORPUS):
                at = moment + timedelta(seconds=index)
                conversation_id = uuid.UUID(int=index + 1)
                title = said if index % 5 == 0 else "New chat"
                uow.session.add(Conversation(id=conversation_id, owner="", title=title, created_at=at, updated_at=at))
                uow.session.add(Message(id=uuid.UUID(int=1000 + index), conversation_id=conversation_id, role="user",
                                        content=said, created_at=at))
            uow.commit()
    services = [SearchService(database, SearchIndexer(database)) for database in databases]

    @settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(query=st.lists(st.sampled_from(AGREED_WORDS), min_size=1, max_size=3).map(" ".join)
           | st.text(alphabet="pythoncgaiweGAP1写代码東京语言 -*\"_.#+'%", min_size=1, max_size=8))
    def run(query: str) -> None:
        on_sqlite, on_postgresql = ([(hit.conversation_id, hit.message_id, hit.snippet) for hit in service.search(
            "", SearchRequest(query=query, limit=100))] for service in services)
        assert on_sqlite == on_postgresql

    try:
        run()
    finally:
        for database in databases:
            database.dispose()


def test_the_parser_reads_the_language() -> None:
    query = parse('deploy "blue green" -staging foo_bar.baz() conf* -"old way" 东京 => ""')
    assert [(t.text, t.exclude, t.prefix, t.literal, t.unsegmented) for t in query.terms] == [
        ("deploy", False, False, False, False),
        ("blue green", False, False, False, False),
        ("staging", True, False, False, False),
        ("foo_bar.baz()", False, False, True, False),
        ("conf", False, True, False, False),
        ("old way", True, False, False, False),
        ("东京", False, False, False, True),
    ]
    assert query.terms[3].words == ("foo", "bar", "baz") and query.terms[6].words == ("东", "京")
    assert len(parse(" ".join(["w"] * 40)).terms) == 32


def test_snippets_mark_matches_and_cut_long_text() -> None:
    long = " ".join(f"word{n}" for n in range(100)) + " needle " + " ".join(f"tail{n}" for n in range(100))
    cut = snippet(long, parse("needle").terms)
    assert cut.startswith("…") and cut.endswith("…") and "**needle**" in cut
    assert len(cut) <= 200 + 2 + 4
    assert snippet("a  b\n\nneedle", [Term("needle", ("needle",))]) == "a b **needle**"
    assert snippet("nothing here", parse("absent").terms) == "nothing here"


# -- the index: language, migration ----------------------------------------------


def test_search_language_english_finds_other_forms_of_a_word(app: Flask, client: FlaskClient) -> None:
    store(app, "she runs every morning")
    database: Database = app.services.database
    assert snippets(client, "running") == []
    try:
        reindex(database.engine, "english")
        with UnitOfWork(database) as uow:
            assert indexed_language(uow.session) == "english"
        assert len(search(client, "running")) == 1
    finally:
        reindex(database.engine, "simple")
    assert snippets(client, "running") == []


def test_the_migration_indexes_messages_written_before_it(database_url: str, tmp_path: Path) -> None:
    """Rows written at revision 0004 are found once 0005 (and 0012) have run, over several batches."""
    if database_url.startswith("sqlite"):
        url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    else:
        name = f"gpt_api_test_{uuid.uuid4().hex[:10]}"
        url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
        admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        Database(url).migrate("0004")
        old = create_engine(url)
        conversation_id, at = uuid.uuid4(), datetime(2024, 1, 1)
        rows = [
            {"id": uuid.uuid4().hex, "role": ["user", "assistant", "system"][n % 3], "content": f"backfilled {n} 東京",
             "at": at + timedelta(seconds=n)}
            for n in range(BATCH + 2)  # more than one batch
        ]
        with old.begin() as connection:
            connection.execute(
                text("INSERT INTO conversations (id, owner, title, created_at, updated_at) VALUES (:id, '', 'Backfilled', :at, :at)"),
                {"id": conversation_id.hex, "at": at},
            )
            connection.execute(
                text(
                    "INSERT INTO messages (id, conversation_id, role, content, status, created_at)"
                    f" VALUES (:id, '{conversation_id.hex}', :role, :content, 'finished_successfully', :at)"
                ),
                rows,
            )
        old.dispose()
        database = Database(url)
        database.migrate()
        service = SearchService(database, SearchIndexer(database))
        found = service.search("", SearchRequest(query="backfilled", limit=100))
        assert found[0].message_id is None and found[0].title == "Backfilled"
        assert found[1].snippet == f"**backfilled** {BATCH + 1} 東京"  # the newest, from the last batch
        assert {hit.role for hit in found[1:]} == {"user", "assistant"}  # never a system prompt
        first = service.search("", SearchRequest(query='"backfilled 1"'))
        assert [hit.snippet for hit in first] == ["**backfilled 1** 東京"]  # from the first batch
        assert len(service.search("", SearchRequest(query="東京", limit=100))) == 100
        # Fragments: through migration 0012's trigram tables on SQLite, from the first batch too.
        assert [hit.snippet for hit in service.search("", SearchRequest(query="ackfilled 1 東"))] == [
            "b**ackfilled** **1** **東**京"]
        assert service.search("", SearchRequest(query="ackfille"))[0].title == "Backfilled"
        database.dispose()
    finally:
        if not database_url.startswith("sqlite"):
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


def test_the_migrations_know_the_same_unsegmented_scripts() -> None:
    for name in ("0005_search", "0012_search_off_the_ask_path"):
        assert importlib.import_module(f"migrations.versions.{name}").UNSEGMENTED == UNSEGMENTED, name
    assert importlib.import_module("migrations.versions.0012_search_off_the_ask_path").GLOB == models.search.UNSEGMENTED_GLOB
