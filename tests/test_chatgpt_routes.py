"""The six routes with LLM_PROVIDER=chatgpt, through the fake backend-api, on both databases.

The local database stays the source of truth; each conversation remembers its upstream id
and each message its upstream message id, so continuing and branching land in the same
place upstream. Title changes, delete and clear go upstream first.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from services.unit_of_work import UnitOfWork
from fakes.chatgpt_backend import FakeChatGPTBackend
from models.entities import Conversation
from tests.conftest import make_settings
from tests.helpers import ask, check_tree, error_of, history, ok, post, sse_events, sse_json, wait_until


@pytest.fixture
def backend() -> Iterator[FakeChatGPTBackend]:
    with FakeChatGPTBackend() as fake:
        yield fake


def chatgpt_app(database_url: str, backend: FakeChatGPTBackend, **overrides: object) -> Flask:
    values = {"llm_provider": "chatgpt", "chatgpt_access_token": backend.token,
              "chatgpt_base_url": backend.url, "upstream_read_timeout": 3.0, **overrides}
    return create_app(make_settings(database_url, None, **values))


@pytest.fixture
def app(database_url: str, backend: FakeChatGPTBackend) -> Iterator[Flask]:
    app = chatgpt_app(database_url, backend)
    yield app
    app.services.close()  # its background work too (answer leases, titles)


def upstream_id(app: Flask, conversation_id: str) -> str | None:
    with UnitOfWork(app.services.database) as uow:
        return uow.session.get(Conversation, uuid.UUID(conversation_id)).upstream_id


def posts_to_conversation(backend: FakeChatGPTBackend) -> list[dict]:
    return [r.body for r in backend.requests if r.method == "POST" and r.path == "conversation"]


def test_ask_starts_a_conversation_upstream_under_our_ids(client: FlaskClient, app: Flask, backend: FakeChatGPTBackend) -> None:
    backend.reply = "Hello! How can I assist you today?"
    answer = ask(client, "Hello")
    assert answer["message"] == "Hello! How can I assist you today?"
    assert answer["model"] == "text-davinci-002-render-sha"
    assert answer["finish_details"] == "stop" and answer["end_turn"] is True
    [sent] = posts_to_conversation(backend)
    assert sent["conversation_id"] is None
    tree = history(client, answer["conversation_id"])
    user_id = tree["mapping"][answer["parent_id"]]["parent"]
    assert sent["messages"][0]["id"] == user_id
    [upstream] = backend.conversations.values()
    assert upstream_id(app, answer["conversation_id"]) == upstream.id
    assert user_id in upstream.mapping


def test_continuing_and_branching_reach_the_same_place_upstream(client: FlaskClient, app: Flask, backend: FakeChatGPTBackend) -> None:
    first = ask(client, "One")
    [upstream] = backend.conversations.values()
    upstream_first_answer = upstream.current_node
    ask(client, "Two", convo_id=first["conversation_id"])
    ask(client, "Two, again", convo_id=first["conversation_id"], parent_id=first["parent_id"])
    sent = posts_to_conversation(backend)
    assert [s["conversation_id"] for s in sent[1:]] == [upstream.id, upstream.id]
    assert [s["parent_message_id"] for s in sent[1:]] == [upstream_first_answer, upstream_first_answer]
    assert len(backend.conversations) == 1
    assert len(upstream.mapping[upstream_first_answer].children) == 2
    tree = history(client, first["conversation_id"])
    check_tree(tree["mapping"])
    assert len(tree["mapping"][first["parent_id"]]["children"]) == 2


def test_list_and_history_are_served_locally(client: FlaskClient, backend: FakeChatGPTBackend) -> None:
    answer = ask(client, "你好")
    before = len(backend.requests)
    [item] = ok(post(client, "conversation", {}))
    assert item["id"] == answer["conversation_id"]
    tree = history(client, answer["conversation_id"])
    assert tree["current_node"] == answer["parent_id"]
    assert len(backend.requests) == before


def test_streamed_answer_through_chatgpt(client: FlaskClient, backend: FakeChatGPTBackend) -> None:
    backend.reply = "流式回答 works"
    backend.raw_utf8 = True
    response = client.post("/api/chat/ask", json={"prompt": "x", "stream": True})
    events = sse_json(response)
    assert sse_events(response)[-1] == "[DONE]"
    assert "".join(e["delta"] for e in events) == "流式回答 works"
    assert events[-1]["response"]["message"] == "流式回答 works"
    assert events[-1]["response"]["finish_details"] == "stop"


def test_answer_cut_short_upstream_is_kept_and_marked(client: FlaskClient, backend: FakeChatGPTBackend) -> None:
    backend.reply = "abcdefghijkl"
    backend.chunk_chars = 3
    backend.abort_after = 2
    error = error_of(post(client, "ask", {"prompt": "x"}), 502)
    tree = history(client, error["conversation_id"])
    [answer] = [n["message"] for n in tree["mapping"].values()
                if n.get("message", {}).get("author", {}).get("role") == "assistant"]
    assert answer["content"]["parts"] == ["abcdef"]
    assert answer["status"] == "finished_partial_completion"


def test_rename_goes_upstream_first(client: FlaskClient, backend: FakeChatGPTBackend) -> None:
    conversation = ask(client, "x")["conversation_id"]
    [upstream] = backend.conversations.values()
    assert ok(post(client, "change/title", {"convo_id": conversation, "title": "测试"})) is None
    assert upstream.title == "测试"
    assert history(client, conversation)["title"] == "测试"


def test_refused_rename_is_a_502_and_changes_nothing(client: FlaskClient, backend: FakeChatGPTBackend) -> None:
    conversation = ask(client, "x")["conversation_id"]
    backend.fail_next(500, "nope")
    error = error_of(post(client, "change/title", {"convo_id": conversation, "title": "T"}), 502)
    assert "nope" in error["message"]
    assert history(client, conversation)["title"] == "New chat"


def test_delete_goes_upstream_first(client: FlaskClient, backend: FakeChatGPTBackend) -> None:
    conversation = ask(client, "x")["conversation_id"]
    [upstream] = backend.conversations.values()
    assert ok(post(client, "delete/conversation", {"convo_id": conversation})) is None
    assert upstream.is_visible is False
    error_of(post(client, "msg/history", {"convo_id": conversation}), 404)


def test_refused_delete_is_a_502_and_keeps_the_conversation(client: FlaskClient, backend: FakeChatGPTBackend) -> None:
    conversation = ask(client, "x")["conversation_id"]
    backend.fail_next(403, "forbidden")
    error = error_of(post(client, "delete/conversation", {"convo_id": conversation}), 502)
    assert "CHATGPT_ACCESS_TOKEN" in error["message"]
    assert history(client, conversation)["current_node"]


def test_clear_goes_upstream_first(client: FlaskClient, backend: FakeChatGPTBackend) -> None:
    ask(client, "a")
    ask(client, "b")
    assert ok(post(client, "clear/conversations", {})) is None
    assert all(not c.is_visible for c in backend.conversations.values())
    assert ok(post(client, "conversation", {})) == []


def test_refused_clear_is_a_502_and_keeps_everything(client: FlaskClient, backend: FakeChatGPTBackend) -> None:
    ask(client, "a")
    backend.fail_next(500, "busy")
    error_of(post(client, "clear/conversations", {}), 502)
    assert len(ok(post(client, "conversation", {}))) == 1


def test_refused_token_is_a_clear_502(client: FlaskClient, backend: FakeChatGPTBackend) -> None:
    backend.fail_next(401, "Your authentication token has expired.")
    error = error_of(post(client, "ask", {"prompt": "x"}), 502)
    assert "access token" in error["message"] and "CHATGPT_ACCESS_TOKEN" in error["message"]
    assert backend.token not in error["message"]


def test_conversation_gone_upstream_is_a_404(client: FlaskClient, backend: FakeChatGPTBackend) -> None:
    conversation = ask(client, "x")["conversation_id"]
    for upstream in backend.conversations.values():
        upstream.is_visible = False
    error = error_of(post(client, "ask", {"prompt": "y", "convo_id": conversation}), 404)
    assert error["code"] == "conversation_not_found"


def test_title_is_generated_upstream(database_url: str, backend: FakeChatGPTBackend) -> None:
    app = chatgpt_app(database_url, backend, generate_titles=True)
    client = app.test_client()
    backend.title = "Greeting"
    conversation = ask(client, "Hello")["conversation_id"]
    wait_until(lambda: history(client, conversation)["title"] == "Greeting")
    assert any("gen_title" in path for path in backend.paths())
    app.services.close()  # its background work too (answer leases, titles)


def test_missing_token_is_a_503_naming_it(database_url: str, backend: FakeChatGPTBackend) -> None:
    app = chatgpt_app(database_url, backend, chatgpt_access_token=None)
    error = error_of(post(app.test_client(), "ask", {"prompt": "x"}), 503)
    assert "CHATGPT_ACCESS_TOKEN" in error["message"]
    app.services.database.dispose()


def test_missing_extra_is_a_503_naming_it(database_url: str, backend: FakeChatGPTBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    """As when revChatGPT is not installed: importing it fails."""
    monkeypatch.setitem(sys.modules, "revChatGPT", None)
    monkeypatch.delitem(sys.modules, "services.providers.chatgpt", raising=False)
    app = chatgpt_app(database_url, backend)
    error = error_of(post(app.test_client(), "ask", {"prompt": "x"}), 503)
    assert "chatgpt" in error["message"] and "extra" in error["message"]
    assert ok(post(app.test_client(), "conversation", {})) == []
    app.services.database.dispose()
