"""Faults: PostgreSQL vanishing or hanging, the upstream failing, concurrent asks, SIGTERM mid-answer.

PostgreSQL is never stopped: the app reaches it through a TCP proxy that the tests cut.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Connection, create_engine, select, text
from sqlalchemy.engine import make_url

from app import create_app
from fakes.openai_upstream import Behaviour, Fail, FakeOpenAI, Hang, Reply, Reset
from fakes.tcp_proxy import TcpProxy
from models.entities import Message
from tests.conftest import UPSTREAM_KEY, make_settings
from tests.helpers import check_tree, error_of, history, ok, post, sse_json, wait_until
from tests.openai_sdk import stored_rows
from tests.server_process import HTTP, ServerProcess

DB_TIMEOUT = 1.0
"""The apps' DB_TIMEOUT here: a database that stops answering costs a request about
2 x (DB_TIMEOUT + 2) s (the pool's ping, then one reconnection)."""


@pytest.fixture
def proxy(empty_postgresql_url: str) -> Iterator[TcpProxy]:
    target = make_url(empty_postgresql_url)
    with TcpProxy(target.host or "127.0.0.1", target.port or 5432) as proxy:
        yield proxy


@pytest.fixture
def proxied_url(empty_postgresql_url: str, proxy: TcpProxy) -> str:
    return make_url(empty_postgresql_url).set(port=proxy.port).render_as_string(hide_password=False)


@pytest.fixture
def proxied_app(proxied_url: str, fake_upstream: FakeOpenAI) -> Iterator[Flask]:
    app = create_app(make_settings(proxied_url, fake_upstream.url, db_timeout=DB_TIMEOUT))
    yield app
    app.services.close()  # its background work too (answer leases, titles)


def timed(request: Any) -> tuple[Any, float]:
    started = time.monotonic()
    response = request()
    return response, time.monotonic() - started


def assert_database_unavailable(response: Any) -> None:
    error = error_of(response, 503)
    assert error["code"] == "database_unavailable"
    assert "psycopg2" not in error["message"] and "127.0.0.1" not in error["message"]


# -- PostgreSQL goes away ------------------------------------------------------------------------


def test_database_gone_gives_503s_at_once_and_the_service_recovers_by_itself(
    proxied_app: Flask, proxy: TcpProxy
) -> None:
    client = proxied_app.test_client()
    before = ok(post(client, "ask", {"prompt": "before"}))
    proxy.cut()
    for route, body in [("conversation", {}), ("ask", {"prompt": "during"}),
                        ("msg/history", {"convo_id": before["conversation_id"]})]:
        response, seconds = timed(lambda: post(client, route, body))
        assert_database_unavailable(response)
        assert seconds < 5
    proxy.restore()
    after = ok(post(client, "ask", {"prompt": "after", "convo_id": before["conversation_id"]}))
    tree = history(client, before["conversation_id"])
    check_tree(tree["mapping"])
    assert tree["current_node"] == after["parent_id"]
    prompts = [n["message"]["content"]["parts"][0] for n in tree["mapping"].values()
               if n.get("message", {}).get("author", {}).get("role") == "user"]
    assert sorted(prompts) == ["after", "before"]


def test_database_that_stops_answering_gives_503s_within_seconds(proxied_app: Flask, proxy: TcpProxy) -> None:
    client = proxied_app.test_client()
    ok(post(client, "conversation", {}))
    proxy.silence()
    for route, body in [("conversation", {}), ("ask", {"prompt": "during"})]:
        response, seconds = timed(lambda: post(client, route, body))
        assert_database_unavailable(response)
        assert seconds < 3 * (DB_TIMEOUT + 2)
    proxy.restore()
    assert ok(post(client, "ask", {"prompt": "after"}))["message"] == "Echo: after"


def test_database_lost_while_an_answer_streams_ends_it_with_an_error_event(
    proxied_app: Flask, proxy: TcpProxy, fake_upstream: FakeOpenAI
) -> None:
    client = proxied_app.test_client()
    fake_upstream.script(Reply(text="a b c d", chunks=["a ", "b ", "c ", "d"], chunk_delay=0.3))
    response = client.post("/api/chat/ask", json={"prompt": "x", "stream": True}, buffered=False)
    body = iter(response.response)
    assert next(body).decode().startswith("data: ")  # the first words: the answer's row exists
    proxy.cut()
    rest = b"".join(body).decode()
    response.close()
    assert "event: error" in rest and '"database_unavailable"' in rest
    assert "internal_error" not in rest and "Traceback" not in rest
    assert rest.endswith("data: [DONE]\n\n")
    proxy.restore()
    conversations = ok(post(client, "conversation", {}))
    assert f'"conversation_id":"{conversations[0]["id"]}"' in rest
    tree = history(client, conversations[0]["id"])
    check_tree(tree["mapping"])
    messages = [n["message"] for n in tree["mapping"].values() if "message" in n]
    [question] = [m for m in messages if m["author"]["role"] == "user"]
    assert question["content"]["parts"] == ["x"]
    [answer] = [m for m in messages if m["author"]["role"] == "assistant"]
    assert "a b c d".startswith(answer["content"]["parts"][0]) and answer["content"]["parts"][0]
    assert answer["status"] == "in_progress"  # its final save was lost with the database...
    leases = proxied_app.services.asking.leases
    assert leases.sweep(now=leases.expiry()) == 1  # ...and once its lease has run out, it is marked
    swept = history(client, conversations[0]["id"])["mapping"][answer["id"]]["message"]
    assert swept["status"] == "finished_partial_completion" and swept["content"] == answer["content"]


def test_database_lost_while_the_upstream_answers_is_a_503_naming_the_conversation(
    proxied_app: Flask, proxy: TcpProxy, fake_upstream: FakeOpenAI
) -> None:
    client = proxied_app.test_client()
    fake_upstream.script(Reply(text="too late to keep", delay=0.5))
    cutting = threading.Thread(target=lambda: (fake_upstream.wait_for_requests(1), proxy.cut()))
    cutting.start()
    error = error_of(post(client, "ask", {"prompt": "kept"}), 503)
    cutting.join()
    assert error["code"] == "database_unavailable"
    proxy.restore()
    tree = history(client, error["conversation_id"])
    assert [n["message"]["content"]["parts"] for n in tree["mapping"].values()
            if n.get("message", {}).get("author", {}).get("role") == "user"] == [["kept"]]


WAITING_WRITES = (
    "FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%INSERT%'"
)
"""This test database's statements held by the lock (other workers' databases are left alone)."""


@dataclass
class LockedConversations:
    """Writes to conversations wait while it holds its lock; reads of other tables go on."""

    watcher: Connection

    def write_waiting(self) -> bool:
        return self.watcher.execute(text(f"SELECT count(*) {WAITING_WRITES}")).scalar_one() > 0

    def end_waiting_writes(self) -> None:
        """Their connections end as if the server had gone (their statements roll back)."""
        self.watcher.execute(text(f"SELECT pg_terminate_backend(pid) {WAITING_WRITES}"))


@contextmanager
def conversations_locked(database_url: str) -> Iterator[LockedConversations]:
    engine = create_engine(database_url)
    try:
        watching = engine.execution_options(isolation_level="AUTOCOMMIT")  # pg_stat_activity anew each time
        with engine.connect() as locker, watching.connect() as watcher:
            locker.execute(text("LOCK TABLE conversations IN EXCLUSIVE MODE"))
            yield LockedConversations(watcher)
            locker.rollback()
    finally:
        engine.dispose()


def test_connection_lost_in_the_middle_of_an_asks_statement_is_a_503_and_is_replaced(
    proxied_app: Flask, fake_upstream: FakeOpenAI, empty_postgresql_url: str
) -> None:
    """Each of an ask's two statements runs on its connection's own cursor
    (`models/prepared.py`): a connection lost while one runs is a 503, never a 500, and the
    pool replaces it."""
    client = proxied_app.test_client()
    answers: list[Any] = []

    def ask(body: dict[str, Any]) -> threading.Thread:
        asking = threading.Thread(target=lambda: answers.append(post(client, "ask", body)))
        asking.start()
        return asking

    with conversations_locked(empty_postgresql_url) as locked:  # the question's statement
        asking = ask({"prompt": "lost"})
        wait_until(locked.write_waiting)
        locked.end_waiting_writes()
    asking.join()
    error = error_of(answers.pop(), 503)
    assert error["code"] == "database_unavailable" and "conversation_id" not in error
    assert not fake_upstream.requests and ok(post(client, "conversation", {})) == []

    fake_upstream.script(Reply(text="not kept", delay=0.3))
    asking = ask({"prompt": "kept"})
    fake_upstream.wait_for_requests(1)  # the question is stored: now the answer's statement
    with conversations_locked(empty_postgresql_url) as locked:
        wait_until(locked.write_waiting)
        locked.end_waiting_writes()
    asking.join()
    error = error_of(answers.pop(), 503)
    assert error["code"] == "database_unavailable"
    tree = history(client, error["conversation_id"])
    assert [n["message"]["content"]["parts"] for n in tree["mapping"].values()
            if n.get("message", {}).get("author", {}).get("role") in ("user", "assistant")] == [["kept"]]

    for n in range(3):  # every pooled connection works
        assert ok(post(client, "ask", {"prompt": f"after {n}"}))["message"] == f"Echo: after {n}"


def test_storing_while_asking_lets_the_upstream_go_when_the_question_cannot_be_stored(
    proxied_url: str, fake_upstream: FakeOpenAI, empty_postgresql_url: str
) -> None:
    """`STORE_WHILE_ASKING`: a new conversation's upstream is asked as its question is written;
    when that write fails, the ask is a 503 with nothing kept and the upstream's request is
    let go. Once the question is stored, it is kept whatever the upstream does."""
    app = create_app(make_settings(proxied_url, fake_upstream.url, db_timeout=DB_TIMEOUT, store_while_asking=True))
    client = app.test_client()
    answers: list[Any] = []
    fake_upstream.script(Hang())
    try:
        with conversations_locked(empty_postgresql_url) as locked:  # the question's statement
            asking = threading.Thread(target=lambda: answers.append(post(client, "ask", {"prompt": "lost"})))
            asking.start()
            wait_until(locked.write_waiting)
            fake_upstream.wait_for_requests(1)  # asked already: it works while the question is written...
            locked.end_waiting_writes()
        asking.join()
        error = error_of(answers.pop(), 503)
        assert error["code"] == "database_unavailable" and "conversation_id" not in error
        assert ok(post(client, "conversation", {})) == [] and stored_rows(app) == (0, 0)
        wait_until(lambda: fake_upstream.active_requests == 0)  # ...and is let go when that fails

        fake_upstream.script(Fail(500, "model overloaded"))
        error = error_of(post(client, "ask", {"prompt": "kept"}), 502)
        tree = history(client, error["conversation_id"])
        assert [n["message"]["content"]["parts"] for n in tree["mapping"].values()
                if n.get("message", {}).get("author", {}).get("role") == "user"] == [["kept"]]
    finally:
        app.services.close()


@pytest.mark.e2e
def test_real_server_under_gevent_gives_503s_and_recovers(
    proxied_url: str, proxy: TcpProxy, fake_upstream: FakeOpenAI
) -> None:
    env = {"DATABASE_URL": proxied_url, "OPENAI_API_KEY": UPSTREAM_KEY, "OPENAI_BASE_URL": fake_upstream.url,
           "GENERATE_TITLES": "false", "DB_TIMEOUT": str(DB_TIMEOUT)}
    with ServerProcess(env) as server:
        assert server.post("ask", {"prompt": "hi"}).status_code == 200
        for fault in (proxy.cut, proxy.silence):
            fault()
            response, seconds = timed(lambda: server.post("conversation", {}))
            assert response.status_code == 503 and response.json()["error"]["code"] == "database_unavailable"
            assert seconds < 3 * (DB_TIMEOUT + 2)
            proxy.restore()
            assert server.post("conversation", {}).status_code == 200
    assert "Traceback" not in server.output


# -- the upstream fails ----------------------------------------------------------------------------


@pytest.mark.parametrize("settings_overrides", [{"upstream_max_retries": 1, "upstream_read_timeout": 0.5}])
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("failures", "status", "code"),
    [
        ([Fail(429, "Rate limit reached", headers={"Retry-After": "0"})] * 2, 429, "upstream_rate_limited"),
        ([Fail(503, "overloaded")] * 2, 502, "upstream_error"),
        ([Reset(), Reset()], 502, "upstream_error"),
        ([Hang(), Hang()], 504, "upstream_timeout"),
    ],
    ids=["429-after-retries", "503-after-retries", "connection-reset", "timeout"],
)
def test_upstream_failure_has_its_status_and_keeps_the_question(
    client: FlaskClient, fake_upstream: FakeOpenAI, failures: list[Behaviour], status: int, code: str, stream: bool
) -> None:
    first = ok(post(client, "ask", {"prompt": "one"}))
    fake_upstream.script(*failures)
    response = post(client, "ask", {"prompt": "two", "convo_id": first["conversation_id"], "stream": stream})
    error = error_of(response, status)
    assert error["code"] == code
    assert error["conversation_id"] == first["conversation_id"]
    if failures[0] == failures[-1] and isinstance(failures[0], Fail):
        assert str(failures[0].status) in error["message"]
    tree = history(client, first["conversation_id"])
    check_tree(tree["mapping"])
    user = [n for n in tree["mapping"].values() if n.get("message", {}).get("author", {}).get("role") == "user"]
    assert sorted(n["message"]["content"]["parts"][0] for n in user) == ["one", "two"]
    kept = next(n for n in user if n["message"]["content"]["parts"] == ["two"])
    assert kept["parent"] == first["parent_id"] and kept["children"] == []
    retried = ok(post(client, "ask", {"prompt": "two", "convo_id": first["conversation_id"]}))
    assert retried["message"] == "Echo: two"


def test_upstream_text_with_nul_is_stored_with_a_replacement_character(
    client: FlaskClient, fake_upstream: FakeOpenAI
) -> None:
    fake_upstream.script(Reply(text="a\x00b"))
    answer = ok(post(client, "ask", {"prompt": "x"}))
    assert answer["message"] == "a\ufffdb"
    stored = history(client, answer["conversation_id"])["mapping"][answer["parent_id"]]["message"]
    assert stored["content"]["parts"] == ["a\ufffdb"] and stored["status"] == "finished_successfully"


# -- two asks at once --------------------------------------------------------------------------------


def test_two_asks_at_once_on_one_conversation_are_stored_as_siblings(
    app: Flask, client: FlaskClient, fake_upstream: FakeOpenAI
) -> None:
    first = ok(post(client, "ask", {"prompt": "start"}))
    fake_upstream.default = lambda body: Reply(text=f"late: {body['messages'][-1]['content']}", delay=0.8)
    results: dict[str, Any] = {}

    def ask(prompt: str, stream: bool) -> None:
        response = app.test_client().post("/api/chat/ask", json={
            "prompt": prompt, "convo_id": first["conversation_id"], "stream": stream})
        results[prompt] = sse_json(response)[-1]["response"] if stream else ok(response)

    threads = [threading.Thread(target=ask, args=("left", False)), threading.Thread(target=ask, args=("right", True))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results["left"]["message"] == "late: left" and results["right"]["message"] == "late: right"
    tree = history(client, first["conversation_id"])
    check_tree(tree["mapping"])
    mapping = tree["mapping"]
    questions = mapping[first["parent_id"]]["children"]
    assert len(questions) == 2
    for answer in (results["left"], results["right"]):
        assert mapping[answer["parent_id"]]["parent"] in questions
        assert mapping[answer["parent_id"]]["message"]["status"] == "finished_successfully"
    assert tree["current_node"] in (results["left"]["parent_id"], results["right"]["parent_id"])


# -- SIGTERM while answers are in flight -------------------------------------------------------------


@pytest.mark.e2e
def test_sigterm_lets_in_flight_answers_finish_and_leaves_no_broken_rows(
    database_url: str, fake_upstream: FakeOpenAI
) -> None:
    text = "slow but complete answer"
    fake_upstream.default = lambda body: Reply(text=text, chunks=["slow ", "but ", "complete ", "answer"],
                                               chunk_delay=0.4)
    env = {"DATABASE_URL": database_url, "OPENAI_API_KEY": UPSTREAM_KEY, "OPENAI_BASE_URL": fake_upstream.url,
           "GENERATE_TITLES": "false", "WORKERS": "2",
           "RATE_LIMIT": "1000/minute", "MAX_STREAMS_PER_KEY": "10"}  # limits in memory, per worker
    server = ServerProcess(env).start()
    results: list[Any] = []

    def plain(prompt: str) -> None:
        results.append(server.post("ask", {"prompt": prompt}).json())

    def streamed(prompt: str) -> None:
        with HTTP.stream("POST", f"{server.url}/api/chat/ask", json={"prompt": prompt, "stream": True},
                         timeout=30) as response:
            lines = [line for line in response.iter_lines() if line.startswith("data: ")]
        results.append(lines)

    threads = [threading.Thread(target=plain, args=(f"plain {n}",)) for n in range(2)]
    threads += [threading.Thread(target=streamed, args=(f"streamed {n}",)) for n in range(2)]
    try:
        for thread in threads:
            thread.start()
        fake_upstream.wait_for_requests(4, timeout=10)
    finally:
        code = server.stop()
        for thread in threads:
            thread.join(timeout=30)
    assert code == 0, server.output
    assert "Traceback" not in server.output
    assert len(results) == 4
    for result in results:
        if isinstance(result, dict):
            assert result["response"]["message"] == text
        else:
            assert result[-1] == "data: [DONE]" and f'"message":"{text}"' in result[-2]
    engine = create_engine(database_url)
    with engine.connect() as connection:
        rows = connection.execute(select(Message.role, Message.status, Message.content)).all()
    engine.dispose()
    answers = [row for row in rows if row.role == "assistant"]
    assert len(answers) == 4
    assert all(row.status == "finished_successfully" and row.content == text for row in answers)
    assert not [row for row in rows if row.status == "in_progress"]
