"""Two real instances (`python app.py`) sharing one PostgreSQL and one Redis."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import create_engine, text

from fakes.openai_upstream import FakeOpenAI, Reply
from tests import launcher
from tests.conftest import UPSTREAM_KEY
from tests.helpers import check_tree
from tests.server_process import HTTP, ServerProcess

pytestmark = pytest.mark.e2e  # the real server process

RATE_LIMIT = 6


@pytest.fixture(scope="module")
def env(postgresql_url: str, redis_url: str, fake_upstream_server: FakeOpenAI) -> Iterator[dict[str, str]]:
    prefix = f"gpt-api-test-{uuid.uuid4().hex[:10]}"
    yield {
        "DATABASE_URL": postgresql_url,
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": prefix,
        "OPENAI_API_KEY": UPSTREAM_KEY,
        "OPENAI_BASE_URL": fake_upstream_server.url,
        "GENERATE_TITLES": "false",
        "RATE_LIMIT": f"{RATE_LIMIT}/minute",
        "MAX_STREAMS_PER_KEY": "1",
    }
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(f"*{prefix}*"):
        client.delete(key)
    client.close()


@pytest.fixture(scope="module")
def instances(env: dict[str, str], postgresql_url: str) -> Iterator[list[ServerProcess]]:
    """Started once for the module; each test uses keys of its own."""
    engine = create_engine(postgresql_url)
    with engine.begin() as connection:
        if engine.dialect.has_table(connection, "api_keys"):
            connection.execute(text("DELETE FROM api_keys"))
    engine.dispose()
    with ExitStack() as stack:  # stops whichever started, however the module ends
        servers = [stack.enter_context(ServerProcess(env)) for _ in range(2)]
        yield servers
    for server in servers:
        assert "Traceback" not in server.output, server.output


def keys_command(env: dict[str, str], *args: str) -> str:
    """`python app.py keys ...`, as an operator runs it next to the instances."""
    done = launcher.run(["keys", *args], ServerProcess(env).env, timeout=60)
    done.check_returncode()
    return done.stdout.strip()


def ask(server: ServerProcess, key: str, **body: Any) -> httpx.Response:
    return server.post("ask", body, headers={"Authorization": f"Bearer {key}"})


def answer(server: ServerProcess, key: str, **body: Any) -> dict[str, Any]:
    response = ask(server, key, **body)
    assert response.status_code == 200, response.text
    return response.json()["response"]


def test_interleaved_asks_on_one_conversation_through_both_instances(
    instances: list[ServerProcess], env: dict[str, str]
) -> None:
    key = keys_command(env, "create", "alice")
    first = answer(instances[0], key, prompt="one")
    conversation, parent = first["conversation_id"], first["parent_id"]
    for n, server in zip(range(2, 5), [instances[1], instances[0], instances[1]]):
        step = answer(server, key, prompt=f"turn {n}", convo_id=conversation)
        assert step["conversation_id"] == conversation
        parent = step["parent_id"]
    tree = instances[0].post("msg/history", {"convo_id": conversation},
                             headers={"Authorization": f"Bearer {key}"}).json()["response"]
    check_tree(tree["mapping"])
    assert tree["current_node"] == parent
    chain, node = [], parent
    while tree["mapping"][node]["parent"] is not None:
        message = tree["mapping"][node]["message"]
        if message["author"]["role"] == "user":
            chain.append(message["content"]["parts"][0])
        node = tree["mapping"][node]["parent"]
    assert chain[::-1] == ["one", "turn 2", "turn 3", "turn 4"]


def test_the_rate_limit_holds_across_instances(instances: list[ServerProcess], env: dict[str, str]) -> None:
    key = keys_command(env, "create", "bob")
    headers = {"Authorization": f"Bearer {key}"}
    for n in range(RATE_LIMIT):
        assert instances[n % 2].post("conversation", {}, headers=headers).status_code == 200
    for server in instances:
        refused = server.post("conversation", {}, headers=headers)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
    other = keys_command(env, "create", "carol")
    assert instances[0].post("conversation", {}, headers={"Authorization": f"Bearer {other}"}).status_code == 200


def test_answers_in_flight_are_capped_across_instances(
    fake_upstream: FakeOpenAI, instances: list[ServerProcess], env: dict[str, str]
) -> None:
    key = keys_command(env, "create", "dave")
    fake_upstream.script(Reply(text="slow answer here", chunks=["slow ", "answer ", "here"], chunk_delay=0.5))
    done = threading.Event()

    def long_stream() -> None:
        with HTTP.stream("POST", f"{instances[0].url}/api/chat/ask", json={"prompt": "long", "stream": True},
                         headers={"Authorization": f"Bearer {key}"}, timeout=30) as response:
            for _ in response.iter_lines():
                pass
        done.set()

    streaming = threading.Thread(target=long_stream)
    streaming.start()
    fake_upstream.wait_for_requests(1)
    refused = ask(instances[1], key, prompt="meanwhile")
    assert refused.status_code == 429 and "Retry-After" in refused.headers
    streaming.join(timeout=30)
    assert done.is_set()
    assert answer(instances[1], key, prompt="now")["message"] == "Echo: now"


def test_a_key_made_or_revoked_counts_at_once_on_every_instance(
    instances: list[ServerProcess], env: dict[str, str]
) -> None:
    key = keys_command(env, "create", "erin")
    headers = {"Authorization": f"Bearer {key}"}
    assert [server.post("conversation", {}, headers=headers).status_code for server in instances] == [200, 200]
    keys_command(env, "revoke", "erin")
    assert [server.post("conversation", {}, headers=headers).status_code for server in instances] == [401, 401]
