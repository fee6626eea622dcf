"""Per-key rate limit, per-key cap on answers in flight (an instance's shared file, and Redis),
maximum prompt length. tests/test_workers.py checks that the workers of one instance share them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from limits import parse
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter
from sqlalchemy import func, select
from werkzeug.test import TestResponse

from app import create_app
from services.unit_of_work import UnitOfWork
from fakes.net import free_port
from fakes.openai_upstream import Fail, FakeOpenAI, Reply
from models.entities import Message
from services.api_keys import ApiKeys
from services.rate_storage import storage_uri
from tests.conftest import make_settings
from tests.helpers import error_of, ok


def new_key(app: Flask, name: str) -> str:
    return ApiKeys(app.services.database).create(name).key


def call(client: FlaskClient, route: str, body: Any, key: str | None = None, **kwargs: Any) -> TestResponse:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return client.post(f"/api/chat/{route}", json=body, headers=headers, **kwargs)


def assert_rate_limited(response: TestResponse, *, most: int) -> int:
    error = error_of(response, 429)
    assert error["code"] == "rate_limited"
    wait = int(response.headers["Retry-After"])
    assert 1 <= wait <= most and error["retry_after"] == wait
    return wait


def count_messages(app: Flask) -> int:
    with UnitOfWork(app.services.database) as uow:
        return uow.session.scalar(select(func.count()).select_from(Message))


# -- the rate limit ---------------------------------------------------------------------------


@pytest.mark.parametrize("settings_overrides", [{"rate_limit": "3/minute"}])
def test_rate_limit_counts_every_route_per_key(app: Flask, client: FlaskClient) -> None:
    alice, bob = new_key(app, "alice"), new_key(app, "bob")
    ok(call(client, "ask", {"prompt": "one"}, alice))
    ok(call(client, "conversation", {}, alice))
    ok(call(client, "conversation", {}, alice))
    assert_rate_limited(call(client, "ask", {"prompt": "four"}, alice), most=60)
    assert_rate_limited(call(client, "conversation", {}, alice), most=60)
    assert "Too many requests" in error_of(call(client, "conversation", {}, alice), 429)["message"]
    assert ok(call(client, "conversation", {}, bob)) == []  # bob has his own budget
    assert count_messages(app) == 4  # root, system, "one" and its answer: "four" never stored


@pytest.mark.parametrize("settings_overrides", [{"rate_limit": "2/minute"}])
def test_without_keys_the_rate_limit_counts_per_client_address(client: FlaskClient) -> None:
    ok(call(client, "conversation", {}))
    ok(call(client, "conversation", {}))
    assert_rate_limited(call(client, "conversation", {}), most=60)
    other = client.post("/api/chat/conversation", json={}, environ_base={"REMOTE_ADDR": "127.0.0.2"})
    assert other.status_code == 200


def test_no_rate_limit_by_default(client: FlaskClient) -> None:
    for _ in range(30):
        ok(call(client, "conversation", {}))


def test_the_shared_file_is_a_whole_storage_for_limits(tmp_path: Path) -> None:
    storage = storage_from_string(storage_uri(tmp_path / "counts.sqlite3"))
    two_a_minute = parse("2/minute")
    for strategy in (MovingWindowRateLimiter(storage), FixedWindowRateLimiter(storage)):
        assert strategy.hit(two_a_minute, "alice") and strategy.hit(two_a_minute, "alice")
        assert not strategy.hit(two_a_minute, "alice") and not strategy.test(two_a_minute, "alice")
        reset_at, remaining = strategy.get_window_stats(two_a_minute, "alice")
        assert remaining == 0 and time.time() < reset_at <= time.time() + 60
        assert strategy.hit(two_a_minute, "bob")  # each caller has its own window
        strategy.clear(two_a_minute, "alice")
        assert strategy.hit(two_a_minute, "alice")
    assert storage.check()
    assert storage.reset() == 2  # alice and bob, counted in either window
    assert MovingWindowRateLimiter(storage).get_window_stats(two_a_minute, "alice").remaining == 2


def two_instances(database_url: str, fake_upstream: FakeOpenAI, **overrides: Any) -> list[Flask]:
    return [create_app(make_settings(database_url, fake_upstream.url, **overrides)) for _ in range(2)]


def close_all(apps: list[Flask]) -> None:
    for app in apps:
        app.services.database.dispose()


def test_rate_limit_in_redis_is_shared_by_instances(
    database_url: str, fake_upstream: FakeOpenAI, redis_url: str, redis_prefix: str
) -> None:
    apps = two_instances(database_url, fake_upstream, rate_limit="4/minute", redis_url=redis_url,
                         redis_key_prefix=redis_prefix)
    try:
        key = new_key(apps[0], "alice")
        first, second = (app.test_client() for app in apps)
        for client in (first, second, first, second):
            ok(call(client, "conversation", {}, key))
        assert_rate_limited(call(first, "conversation", {}, key), most=60)
        assert_rate_limited(call(second, "conversation", {}, key), most=60)
    finally:
        close_all(apps)


def test_unreachable_redis_falls_back_to_limits_per_process(
    database_url: str, fake_upstream: FakeOpenAI, redis_prefix: str
) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    app = create_app(make_settings(database_url, fake_upstream.url, rate_limit="2/minute",
                                   max_streams_per_key=1, redis_url=dead, redis_key_prefix=redis_prefix))
    client = app.test_client()
    try:
        ok(call(client, "ask", {"prompt": "one"}))
        ok(call(client, "conversation", {}))
        assert_rate_limited(call(client, "conversation", {}), most=60)
    finally:
        app.services.database.dispose()


# -- answers in flight --------------------------------------------------------------------------


def open_stream(client: FlaskClient, key: str | None = None, prompt: str = "long") -> TestResponse:
    """A streamed answer that has started and is not finished: its slot is taken."""
    response = call(client, "ask", {"prompt": prompt, "stream": True}, key, buffered=False)
    assert response.status_code == 200
    return response


def slow_reply() -> Reply:
    return Reply(text="a b c d e f", chunks=["a ", "b ", "c ", "d ", "e ", "f"], chunk_delay=0.2)


@pytest.mark.parametrize("settings_overrides", [{"max_streams_per_key": 1}])
def test_one_key_may_have_only_so_many_answers_in_flight(
    app: Flask, client: FlaskClient, fake_upstream: FakeOpenAI
) -> None:
    alice, bob = new_key(app, "alice"), new_key(app, "bob")
    fake_upstream.script(slow_reply(), slow_reply())
    streaming = open_stream(client, alice)
    before = count_messages(app)
    for body in ({"prompt": "more", "stream": True}, {"prompt": "more"}):
        assert_rate_limited(call(client, "ask", body, alice), most=5)
    assert count_messages(app) == before  # refused before anything was stored
    ok(call(client, "conversation", {}, alice))  # other routes are not capped
    other = open_stream(client, bob)  # bob has his own slot
    b"".join(streaming.response)  # alice's answer ends: her slot is free again
    streaming.close()
    other.close()
    assert ok(call(client, "ask", {"prompt": "again"}, alice))["message"] == "Echo: again"


@pytest.mark.parametrize("settings_overrides", [{"max_streams_per_key": 1}])
@pytest.mark.parametrize("ending", ["client leaves", "upstream fails first", "upstream breaks mid-way", "plain ask fails"])
def test_the_slot_comes_back_however_the_answer_ends(
    client: FlaskClient, fake_upstream: FakeOpenAI, ending: str
) -> None:
    if ending == "client leaves":
        fake_upstream.script(slow_reply())
        response = open_stream(client)
        next(iter(response.response))
        response.close()
    elif ending == "upstream fails first":
        fake_upstream.script(Fail(500))
        error_of(call(client, "ask", {"prompt": "x", "stream": True}), 502)
    elif ending == "upstream breaks mid-way":
        fake_upstream.script(Reply(text="one two three", chunks=["one ", "two ", "three"], break_after=2))
        body = call(client, "ask", {"prompt": "x", "stream": True}).get_data(as_text=True)
        assert "event: error" in body
    else:
        fake_upstream.script(Fail(500))
        error_of(call(client, "ask", {"prompt": "x"}), 502)
    assert ok(call(client, "ask", {"prompt": "next"}))["message"] == "Echo: next"


def test_answers_in_flight_are_counted_across_instances_in_redis(
    database_url: str, fake_upstream: FakeOpenAI, redis_url: str, redis_prefix: str
) -> None:
    apps = two_instances(database_url, fake_upstream, max_streams_per_key=1, redis_url=redis_url,
                         redis_key_prefix=redis_prefix)
    try:
        key = new_key(apps[0], "alice")
        first, second = (app.test_client() for app in apps)
        fake_upstream.script(slow_reply())
        streaming = open_stream(first, key)
        assert_rate_limited(call(second, "ask", {"prompt": "elsewhere"}, key), most=5)
        b"".join(streaming.response)
        streaming.close()
        assert ok(call(second, "ask", {"prompt": "now"}, key))["message"] == "Echo: now"
    finally:
        close_all(apps)


# -- prompt length --------------------------------------------------------------------------------


@pytest.mark.parametrize("settings_overrides", [{"max_prompt_chars": 10}])
@pytest.mark.parametrize("stream", [False, True])
def test_a_prompt_over_the_maximum_is_a_400_naming_prompt(app: Flask, client: FlaskClient, stream: bool) -> None:
    error = error_of(call(client, "ask", {"prompt": "x" * 11, "stream": stream}), 400)
    assert error["code"] == "invalid_request"
    assert error["message"].startswith("prompt:") and "10" in error["message"]
    assert "MAX_PROMPT_CHARS" in error["message"]
    assert count_messages(app) == 0
    assert ok(call(client, "ask", {"prompt": "é" * 10}))["message"] == "Echo: " + "é" * 10
