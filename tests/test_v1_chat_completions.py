"""`/v1/chat/completions` through the official `openai` SDK, against the app served over real
loopback HTTP and the fake upstream, on both databases: the proxy (JSON and SSE, fields
passed through as sent), the stored-completion routes, threading into conversations,
`store: false`, errors, isolation between keys, and streams broken off by either side."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import openai
import pytest
from flask import Flask
from werkzeug.serving import make_server

from fakes.chatgpt_backend import FakeChatGPTBackend
from fakes.openai_upstream import Fail, FakeOpenAI, Reply
from services.api_keys import ApiKeys
from services.completion_chunks import CompletionBuilder
from serving import drain
from services.message_paths import canonical, path_hashes
from tests.conftest import make_settings
from tests.helpers import wait_until
from tests.openai_sdk import sdk_client
from tests.server_process import HTTP

TOOLS = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {}}}}]
CALL = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 40, "b": 2}'}}
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {"sse_keep_alive_seconds": 0.05}


def serve(app: Flask) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()
    thread.join()


@pytest.fixture
def base_url(app: Flask) -> Iterator[str]:
    yield from serve(app)


@contextmanager
def client_of(app: Flask, base_url: str, name: str) -> Iterator[openai.OpenAI]:
    """An SDK client with a key of its own, revoked afterwards (tests on the same database
    that make no key expect none)."""
    keys = ApiKeys(app.services.database)
    key = keys.create(name).key
    yield sdk_client(base_url, key, max_retries=0, timeout=10)
    keys.revoke(name)


@pytest.fixture
def alice(app: Flask, base_url: str) -> Iterator[openai.OpenAI]:
    with client_of(app, base_url, "alice") as client:
        yield client


@pytest.fixture
def bob(app: Flask, base_url: str) -> Iterator[openai.OpenAI]:
    with client_of(app, base_url, "bob") as client:
        yield client


def history(app: Flask, client: openai.OpenAI, conversation_id: str) -> dict[str, Any]:
    """The conversation through the six routes (`msg/history`), as the key's owner."""
    response = app.test_client().post(
        "/api/chat/msg/history",
        json={"convo_id": conversation_id},
        headers={"Authorization": f"Bearer {client.api_key}"},
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()["response"]


def conversations(app: Flask, client: openai.OpenAI) -> list[str]:
    response = app.test_client().post(
        "/api/chat/conversation", json={}, headers={"Authorization": f"Bearer {client.api_key}"}
    )
    return [summary["id"] for summary in response.get_json()["response"]]


def node(tree: dict[str, Any], completion_id: str) -> dict[str, Any]:
    return tree["mapping"][str(uuid.UUID(hex=completion_id.removeprefix("chatcmpl-")))]


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def said(completion: Any) -> dict[str, Any]:
    """The answer as a chat UI sends it back."""
    return {"role": "assistant", "content": completion.choices[0].message.content}


# -- the proxy ------------------------------------------------------------------------------


def test_a_completion_passes_through_and_is_stored(
    alice: openai.OpenAI, base_url: str, fake_upstream: FakeOpenAI
) -> None:
    completion = alice.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "system", "content": "Be brief."}, user("Hello")],
        tools=TOOLS,
        tool_choice="auto",
        response_format={"type": "text"},
        temperature=0.2,
        top_p=0.9,
        n=1,
        stop=["END"],
        seed=7,
        user="end-user-1",
        metadata={"app": "test"},
        extra_body={"logit_bias": {"50256": -100}, "vendor_field": {"x": 1}},
    )
    sent = fake_upstream.requests[-1].body
    assert sent == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "Be brief."}, user("Hello")],
        "tools": TOOLS,
        "tool_choice": "auto",
        "response_format": {"type": "text"},
        "temperature": 0.2,
        "top_p": 0.9,
        "n": 1,
        "stop": ["END"],
        "seed": 7,
        "user": "end-user-1",
        "logit_bias": {"50256": -100},
        "vendor_field": {"x": 1},
    }  # store and metadata are kept here
    assert completion.id.startswith("chatcmpl-") and len(completion.id) == len("chatcmpl-") + 32
    assert completion.choices[0].message.content == "Echo: Hello"
    assert completion.system_fingerprint == "fp_fake"
    assert completion.usage is not None and completion.usage.total_tokens == 12

    stored = alice.chat.completions.retrieve(completion.id)
    assert stored.id == completion.id and stored.model == "gpt-4o-mini"
    assert stored.choices[0].message.content == "Echo: Hello" and stored.choices[0].finish_reason == "stop"
    assert stored.usage == completion.usage
    assert stored.metadata == {"app": "test"}
    messages = alice.chat.completions.messages.list(completion.id)
    assert [(m.role, m.content) for m in messages.data] == [("system", "Be brief."), ("user", "Hello")]
    assert all(m.id.startswith("msg_") for m in messages.data)

    unnamed = HTTP.post(  # the SDK always names one
        f"{base_url}/chat/completions",
        json={"messages": [user("Hi")]},
        headers={"Authorization": f"Bearer {alice.api_key}"},
    )
    assert unnamed.status_code == 200, unnamed.text
    assert fake_upstream.requests[-1].body["model"] == "gpt-test"  # the configured default
    assert alice.chat.completions.retrieve(unnamed.json()["id"]).model == "gpt-test"


def test_a_stream_passes_through_with_usage_and_is_stored(alice: openai.OpenAI, fake_upstream: FakeOpenAI) -> None:
    fake_upstream.script(Reply(text="one two three", chunks=["one ", "two ", "three"]))
    chunks = list(
        alice.chat.completions.create(
            model="gpt-test", messages=[user("Count")], stream=True, stream_options={"include_usage": True}
        )
    )
    assert fake_upstream.requests[-1].body["stream_options"] == {"include_usage": True}
    ids = {chunk.id for chunk in chunks}
    assert len(ids) == 1 and ids.pop().startswith("chatcmpl-")
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "one two three"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 7

    stored = alice.chat.completions.retrieve(chunks[0].id)
    assert stored.choices[0].message.content == "one two three"
    assert stored.choices[0].finish_reason == "stop"
    assert stored.usage is not None and stored.usage.completion_tokens == 5


# -- stored completions ---------------------------------------------------------------------

REQUEST_FIELDS = (
    "tools", "tool_choice", "response_format", "seed", "temperature", "top_p",
    "presence_penalty", "frequency_penalty", "input_user",
)
"""What OpenAI's stored completion says of the request beside its messages."""


def test_a_stored_completion_shows_the_request_s_tools_and_settings_as_openai_does(
    alice: openai.OpenAI, fake_upstream: FakeOpenAI
) -> None:
    schema = {"type": "json_schema", "json_schema": {"name": "sum", "schema": {"type": "object"}}}
    completion = alice.chat.completions.create(
        model="gpt-test",
        messages=[user("Add")],
        tools=TOOLS,
        tool_choice="auto",
        response_format=schema,  # type: ignore[arg-type]
        seed=7,
        temperature=0.2,
        top_p=0.9,
        presence_penalty=0.1,
        frequency_penalty=0.3,
        user="end-user-1",
    )
    assert not set(REQUEST_FIELDS) & set(completion.model_extra or {})  # the answer is the upstream's
    stored = alice.chat.completions.retrieve(completion.id).model_extra or {}
    assert {name: stored.get(name, "missing") for name in REQUEST_FIELDS} == {
        "tools": TOOLS,
        "tool_choice": "auto",
        "response_format": schema,
        "seed": 7,
        "temperature": 0.2,
        "top_p": 0.9,
        "presence_penalty": 0.1,
        "frequency_penalty": 0.3,
        "input_user": "end-user-1",
    }
    (listed,) = alice.chat.completions.list().data
    assert (listed.model_extra or {})["tools"] == TOOLS

    streamed = list(alice.chat.completions.create(model="gpt-test", messages=[user("Plain")], stream=True))
    plain = alice.chat.completions.retrieve(streamed[0].id).model_extra or {}
    assert {name: plain.get(name, "missing") for name in REQUEST_FIELDS} == dict.fromkeys(REQUEST_FIELDS)



def test_stored_completions_are_listed_filtered_updated_and_deleted(
    app: Flask, alice: openai.OpenAI, fake_upstream: FakeOpenAI
) -> None:
    made = [
        alice.chat.completions.create(model=model, messages=[user(f"Q{n}")], metadata={"n": str(n)})
        for n, model in enumerate(["gpt-test", "gpt-4o-mini", "gpt-test"])
    ]
    ids = [c.id for c in made]
    assert [c.id for c in alice.chat.completions.list(limit=2)] == ids  # pages followed, oldest first
    page = alice.chat.completions.list(limit=2, order="desc")
    assert [c.id for c in page.data] == ids[::-1][:2] and page.has_more
    assert [c.id for c in alice.chat.completions.list(model="gpt-test")] == [ids[0], ids[2]]
    assert [c.id for c in alice.chat.completions.list(metadata={"n": "1"})] == [ids[1]]

    updated = alice.chat.completions.update(ids[1], metadata={"n": "one", "tag": "x"})
    assert updated.metadata == {"n": "one", "tag": "x"}
    assert [c.id for c in alice.chat.completions.list(metadata={"tag": "x"})] == [ids[1]]

    deleted = alice.chat.completions.delete(ids[1])
    assert (deleted.id, deleted.deleted, deleted.object) == (ids[1], True, "chat.completion.deleted")
    with pytest.raises(openai.NotFoundError):
        alice.chat.completions.retrieve(ids[1])
    assert [c.id for c in alice.chat.completions.list()] == [ids[0], ids[2]]
    conversation = [c for c in conversations(app, alice) if "Q1" in json.dumps(history(app, alice, c))][0]
    texts = [n["message"]["content"]["parts"][0] for n in history(app, alice, conversation)["mapping"].values() if "message" in n]
    assert "Q1" in texts and "Echo: Q1" not in texts  # the question stays, the answer is gone


def test_store_false_keeps_nothing(app: Flask, alice: openai.OpenAI, fake_upstream: FakeOpenAI) -> None:
    completion = alice.chat.completions.create(model="gpt-test", messages=[user("Secret")], store=False)
    assert completion.choices[0].message.content == "Echo: Secret"
    assert "store" not in fake_upstream.requests[-1].body
    streamed = list(alice.chat.completions.create(model="gpt-test", messages=[user("Also")], store=False, stream=True))
    assert streamed
    assert alice.chat.completions.list().data == []
    assert conversations(app, alice) == []
    with pytest.raises(openai.NotFoundError):
        alice.chat.completions.retrieve(completion.id)


@pytest.mark.parametrize("settings_overrides", [{"store_chat_completions": False}])
def test_a_server_configured_not_to_store_proxies_only(app: Flask, alice: openai.OpenAI) -> None:
    completion = alice.chat.completions.create(model="gpt-test", messages=[user("Kept?")], store=True)
    assert completion.choices[0].message.content == "Echo: Kept?"
    assert list(alice.chat.completions.create(model="gpt-test", messages=[user("Streamed")], stream=True))
    assert alice.chat.completions.list().data == [] and conversations(app, alice) == []
    with pytest.raises(openai.NotFoundError):
        alice.chat.completions.retrieve(completion.id)


@pytest.mark.parametrize("settings_overrides", [{"sse_keep_alive_seconds": 0.05, "max_streams_per_key": 1}])
def test_an_open_stream_holds_the_key_s_answer_slot_until_it_ends(alice: openai.OpenAI, fake_upstream: FakeOpenAI) -> None:
    fake_upstream.script(Reply(text="a b c", chunks=list("abc"), chunk_delay=0.2))
    stream = alice.chat.completions.create(model="gpt-test", messages=[user("Slowly")], stream=True)
    chunks = iter(stream)
    next(chunks)
    with pytest.raises(openai.RateLimitError):
        alice.chat.completions.create(model="gpt-test", messages=[user("Meanwhile")])
    assert list(chunks)

    def after() -> Any:
        try:
            return alice.chat.completions.create(model="gpt-test", messages=[user("After")])
        except openai.RateLimitError:  # the slot is given back just after the last line is sent
            return None

    assert wait_until(after).choices


# -- threading ----------------------------------------------------------------------------------


def test_continuing_is_one_conversation_and_edits_and_regenerations_are_branches(
    app: Flask, alice: openai.OpenAI, fake_upstream: FakeOpenAI
) -> None:
    system = {"role": "system", "content": "You are terse."}
    first = alice.chat.completions.create(model="gpt-test", messages=[system, user("Hi")])
    fake_upstream.script(Reply(text="Hello again"))  # the same answer would be the same exchange
    again = alice.chat.completions.create(model="gpt-test", messages=[system, user("Hi")])  # a new chat
    history_so_far = [system, user("Hi"), said(first)]
    second = alice.chat.completions.create(model="gpt-test", messages=[*history_so_far, user("More")])
    edited = alice.chat.completions.create(model="gpt-test", messages=[*history_so_far, user("Other")])
    fake_upstream.script(Reply(text="Echo: More, differently"))
    regenerated = alice.chat.completions.create(model="gpt-test", messages=[*history_so_far, user("More")])
    third = alice.chat.completions.create(
        model="gpt-test", messages=[*history_so_far, user("More"), said(second), user("Last")]
    )
    assert fake_upstream.requests[-1].body["messages"][-1] == user("Last")  # the whole dialogue goes upstream

    listed = conversations(app, alice)
    assert len(listed) == 2
    tree = next(history(app, alice, c) for c in listed if node_or_none(history(app, alice, c), first.id))
    answer_of = {c.id: node(tree, c.id) for c in (first, second, edited, regenerated, third)}
    assert node_or_none(tree, again.id) is None  # the same first message, but a chat of its own

    def parent(of: dict[str, Any]) -> dict[str, Any]:
        return tree["mapping"][of["parent"]]

    more, other, more_again = (parent(answer_of[c.id]) for c in (second, edited, regenerated))
    assert more["message"]["content"]["parts"] == ["More"] and other["message"]["content"]["parts"] == ["Other"]
    assert more["parent"] == other["parent"] == more_again["parent"] == answer_of[first.id]["id"]  # siblings
    assert parent(parent(answer_of[third.id]))["id"] == answer_of[second.id]["id"]  # continued where it parted
    assert tree["current_node"] == answer_of[third.id]["id"]
    path = alice.chat.completions.messages.list(third.id)
    assert [m.content for m in path.data] == ["You are terse.", "Hi", "Echo: Hi", "More", "Echo: More", "Last"]
    conversation = next(c for c in listed if node_or_none(history(app, alice, c), first.id))
    items = alice.conversations.items.list(conversation, order="asc")  # the current branch, through /v1 too
    assert [item.content[0].text for item in items] == [m.content for m in path.data] + ["Echo: Last"]


def node_or_none(tree: dict[str, Any], completion_id: str) -> dict[str, Any] | None:
    return tree["mapping"].get(str(uuid.UUID(hex=completion_id.removeprefix("chatcmpl-"))))


def test_tool_calls_and_images_are_stored_losslessly_and_thread(
    app: Flask, alice: openai.OpenAI, fake_upstream: FakeOpenAI
) -> None:
    question = {"role": "user", "content": [{"type": "text", "text": "What is 40+2? See:"}, IMAGE]}
    fake_upstream.script(Reply(text="", tool_calls=[CALL], finish_reason="tool_calls"))
    calling = list(alice.chat.completions.create(model="gpt-test", messages=[question], tools=TOOLS, stream=True))
    assert "".join(c.choices[0].delta.tool_calls[0].function.arguments or "" for c in calling if c.choices and c.choices[0].delta.tool_calls) == CALL["function"]["arguments"]
    stored_call = alice.chat.completions.retrieve(calling[0].id).choices[0].message
    assert stored_call.tool_calls is not None and stored_call.tool_calls[0].model_dump() == CALL

    sent_back = {"role": "assistant", "content": None, "tool_calls": [CALL]}
    tool = {"role": "tool", "tool_call_id": "call_1", "content": "42"}
    answer = alice.chat.completions.create(model="gpt-test", messages=[question, sent_back, tool], tools=TOOLS)
    assert fake_upstream.requests[-1].body["messages"] == [question, sent_back, tool]

    messages = alice.chat.completions.messages.list(answer.id).data
    assert messages[0].content == "What is 40+2? See:"
    assert [p.model_dump(exclude_none=True) for p in messages[0].content_parts or ()] == question["content"]
    assert messages[1].tool_calls is not None and messages[1].tool_calls[0].model_dump() == CALL
    assert (messages[2].role, messages[2].model_extra["tool_call_id"], messages[2].content) == ("tool", "call_1", "42")

    (conversation,) = conversations(app, alice)  # the tool result continued the calling exchange
    tree = history(app, alice, conversation)
    assert node(tree, answer.id)["parent"] is not None
    image_node = next(n for n in tree["mapping"].values() if "message" in n and n["message"]["author"]["role"] == "user")
    assert image_node["message"]["metadata"]["chat_completion_message"] == question  # export writes it back


# -- errors -------------------------------------------------------------------------------------


# A stream's status is sent with its first byte: a keep-alive due before the upstream's refusal
# arrives would turn the refusal into an error event (as it must), so none is due here.
@pytest.mark.parametrize("settings_overrides", [{"sse_keep_alive_seconds": 30.0}])
def test_upstream_refusals_keep_their_status_and_bad_requests_name_the_field(
    alice: openai.OpenAI, base_url: str, fake_upstream: FakeOpenAI
) -> None:
    fake_upstream.script(Fail(status=429, message="Slow down.", headers={"Retry-After": "7"}))
    with pytest.raises(openai.RateLimitError) as limited:
        alice.chat.completions.create(model="gpt-test", messages=[user("x")])
    assert limited.value.response.headers["retry-after"] == "7"
    assert limited.value.body == {"message": "Slow down.", "type": "rate_limit_error", "param": None, "code": "rate_limit_exceeded"}

    fake_upstream.script(Fail(status=400, message="Bad tool schema."))
    with pytest.raises(openai.BadRequestError, match="Bad tool schema"):
        alice.chat.completions.create(model="gpt-test", messages=[user("x")], stream=True)

    fake_upstream.script(Fail(status=500))
    with pytest.raises(openai.InternalServerError) as failed:
        alice.chat.completions.create(model="gpt-test", messages=[user("x")])
    assert failed.value.status_code == 502 and failed.value.body["type"] == "server_error"
    assert alice.chat.completions.list().data == []  # a refused request leaves nothing behind

    with pytest.raises(openai.BadRequestError) as no_messages:
        alice.chat.completions.create(model="gpt-test", messages=[])
    assert no_messages.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as bad_role:
        alice.chat.completions.create(model="gpt-test", messages=[{"role": "robot", "content": "x"}])  # type: ignore[misc,list-item]
    assert bad_role.value.param == "messages[0].role"
    with pytest.raises(openai.BadRequestError) as bad_metadata:
        alice.chat.completions.create(model="gpt-test", messages=[user("x")], metadata={"k": "v" * 513})
    assert bad_metadata.value.param == "metadata"
    with pytest.raises(openai.BadRequestError):
        alice.chat.completions.list(extra_query={"colour": "blue"})
    with pytest.raises(openai.BadRequestError) as malformed:
        alice.chat.completions.retrieve("chatcmpl-nothex")
    assert malformed.value.param == "completion_id"
    with pytest.raises(openai.NotFoundError):
        alice.chat.completions.retrieve(f"chatcmpl-{uuid.uuid4().hex}")
    response = HTTP.post(f"{base_url}/chat/completions", content=b"x", headers={"Authorization": f"Bearer {alice.api_key}"})
    assert response.status_code == 415 and response.json()["error"]["type"] == "invalid_request_error"


def test_upstream_refusals_passed_on_are_counted_as_upstream_errors(
    app: Flask, alice: openai.OpenAI, fake_upstream: FakeOpenAI
) -> None:
    fake_upstream.script(
        Fail(status=400, message="Bad tool schema."),
        Fail(status=400, message="Bad tool schema."),
        Fail(status=429, message="Slow down.", headers={"Retry-After": "1"}),
    )
    with pytest.raises(openai.BadRequestError):
        alice.chat.completions.create(model="gpt-test", messages=[user("x")])
    with pytest.raises(openai.BadRequestError):
        alice.chat.completions.create(model="gpt-test", messages=[user("x")], stream=True)
    with pytest.raises(openai.RateLimitError):
        alice.chat.completions.create(model="gpt-test", messages=[user("x")])
    registry = app.services.metrics._registry
    assert registry is not None

    def counted(code: str) -> float | None:
        return registry.get_sample_value("gpt_api_upstream_errors_total", {"provider": "openai", "code": code})

    assert (counted("invalid_request"), counted("rate_limited")) == (2.0, 1.0)


@pytest.mark.parametrize("settings_overrides", [{"sse_keep_alive_seconds": 0.05, "max_prompt_chars": 20}])
def test_a_message_over_max_prompt_chars_is_refused_naming_it_before_anything_happens(
    alice: openai.OpenAI, fake_upstream: FakeOpenAI
) -> None:
    at_limit = [user("x" * 20), {"role": "assistant", "content": "y" * 20}]
    over = {"role": "user", "content": [{"type": "text", "text": "z" * 15}, {"type": "text", "text": "z" * 6}]}
    with pytest.raises(openai.BadRequestError) as refused:
        alice.chat.completions.create(model="gpt-test", messages=[*at_limit, over])  # type: ignore[list-item]
    assert refused.value.param == "messages[2].content"
    assert "at most 20 characters (MAX_PROMPT_CHARS)" in str(refused.value.message)
    with pytest.raises(openai.BadRequestError):
        alice.chat.completions.create(model="gpt-test", messages=[user("z" * 21)], stream=True)
    assert not fake_upstream.requests and alice.chat.completions.list().data == []
    assert alice.chat.completions.create(model="gpt-test", messages=[*at_limit, user("z" * 20)]).choices


def test_another_keys_completions_are_invisible_and_never_joined(
    app: Flask, alice: openai.OpenAI, bob: openai.OpenAI, fake_upstream: FakeOpenAI
) -> None:
    mine = alice.chat.completions.create(model="gpt-test", messages=[user("Hi")])
    for reach in (
        lambda: bob.chat.completions.retrieve(mine.id),
        lambda: bob.chat.completions.messages.list(mine.id),
        lambda: bob.chat.completions.update(mine.id, metadata={"a": "b"}),
        lambda: bob.chat.completions.delete(mine.id),
    ):
        with pytest.raises(openai.NotFoundError):
            reach()
    assert bob.chat.completions.list().data == []
    bob.chat.completions.create(model="gpt-test", messages=[user("Hi"), said(mine), user("Go on")])
    assert len(conversations(app, alice)) == 1 and len(conversations(app, bob)) == 1  # not threaded into alice's
    assert alice.chat.completions.retrieve(mine.id).id == mine.id


# -- broken streams ---------------------------------------------------------------------------


def test_a_stream_the_upstream_breaks_off_is_stored_as_far_as_it_got(
    app: Flask, alice: openai.OpenAI, fake_upstream: FakeOpenAI
) -> None:
    fake_upstream.script(Reply(text="one two three", chunks=["one ", "two ", "three"], break_after=2))
    received = []
    with pytest.raises(openai.APIError):
        for chunk in alice.chat.completions.create(model="gpt-test", messages=[user("Count")], stream=True):
            received.append(chunk)
    (stored,) = alice.chat.completions.list().data
    assert stored.id == received[0].id
    assert stored.choices[0].message.content == "one two " and stored.choices[0].finish_reason is None
    answer = node(history(app, alice, conversations(app, alice)[0]), stored.id)["message"]
    assert answer["status"] == "finished_partial_completion"


def test_a_stream_the_client_leaves_is_stored_as_far_as_it_got(
    app: Flask, alice: openai.OpenAI, fake_upstream: FakeOpenAI
) -> None:
    fake_upstream.script(Reply(text="a b c d e f", chunks=list("abcdef"), chunk_delay=0.1))
    stream = alice.chat.completions.create(model="gpt-test", messages=[user("Slowly")], stream=True)
    first = next(iter(stream))
    stream.close()
    stored = wait_until(lambda: alice.chat.completions.list().data)[0]
    assert stored.id == first.id and stored.choices[0].finish_reason is None
    assert 0 < len(stored.choices[0].message.content) < len("abcdef")
    tree = history(app, alice, conversations(app, alice)[0])
    assert node(tree, stored.id)["message"]["status"] == "finished_partial_completion"


def test_a_stream_open_when_the_service_stops_ends_with_an_error_and_is_stored_interrupted(
    app: Flask, alice: openai.OpenAI, fake_upstream: FakeOpenAI
) -> None:
    pieces = [f"w{n} " for n in range(60)]
    fake_upstream.script(Reply(text="".join(pieces), chunks=pieces, chunk_delay=0.05))
    stream = alice.chat.completions.create(model="gpt-test", messages=[user("Long")], stream=True)
    chunks = iter(stream)
    first = next(chunks)
    drain(app, settle=2.0)  # what SIGTERM does near the end of the graceful timeout
    received = []
    with pytest.raises(openai.APIError, match="The service is stopping"):
        for chunk in chunks:
            received.append(chunk)
    assert len(received) < len(pieces)
    stored = wait_until(lambda: alice.chat.completions.list().data)[0]
    assert stored.id == first.id and stored.choices[0].finish_reason is None
    content = stored.choices[0].message.content or ""
    assert content and "".join(pieces).startswith(content) and len(content) < len("".join(pieces))
    tree = history(app, alice, conversations(app, alice)[0])
    message = node(tree, stored.id)["message"]
    assert (message["status"], message["metadata"]["finish_details"]) == (
        "finished_partial_completion", {"type": "interrupted"}
    )


# -- the ChatGPT provider ---------------------------------------------------------------------


@pytest.fixture
def chatgpt_client(database_url: str) -> Iterator[tuple[Flask, FakeChatGPTBackend, openai.OpenAI]]:
    with FakeChatGPTBackend() as backend:
        settings = make_settings(
            database_url,
            None,
            llm_provider="chatgpt",
            chatgpt_access_token=backend.token,
            chatgpt_base_url=backend.url,
            upstream_read_timeout=3.0,
            sse_keep_alive_seconds=0.05,
        )
        from app import create_app

        app = create_app(settings)
        for url in serve(app):
            with client_of(app, url, "carol") as client:
                yield app, backend, client
        app.services.close()


def test_chatgpt_answers_text_threads_upstream_and_refuses_what_it_cannot_do(
    chatgpt_client: tuple[Flask, FakeChatGPTBackend, openai.OpenAI],
) -> None:
    app, backend, client = chatgpt_client
    backend.reply = lambda prompt: f"You said: {prompt}"
    first = client.chat.completions.create(model="text-davinci-002-render-sha", messages=[user("Hello")])
    assert first.choices[0].message.content == "You said: Hello" and first.usage is not None
    chunks = list(
        client.chat.completions.create(
            model="text-davinci-002-render-sha",
            messages=[user("Hello"), said(first), user("Again")],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "You said: Again"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0  # estimated
    posts = [r.body for r in backend.requests if r.method == "POST" and r.path == "conversation"]
    (upstream,) = backend.conversations.values()  # continued upstream, under the first answer
    assert posts[1]["conversation_id"] == upstream.id
    assert upstream.mapping[posts[1]["parent_message_id"]].text == "You said: Hello"
    assert [m["content"]["parts"] for m in posts[1]["messages"]] == [["Again"]]  # only what ChatGPT has not seen
    (conversation,) = conversations(app, client)
    assert node(history(app, client, conversation), chunks[0].id)

    with pytest.raises(openai.BadRequestError) as tools:
        client.chat.completions.create(model="m", messages=[user("x")], tools=TOOLS)
    assert tools.value.param == "tools"
    with pytest.raises(openai.BadRequestError) as image:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": [IMAGE]}], stream=True)
    assert image.value.param == "messages[0].content"
    client.chat.completions.create(model="m", messages=[user("x")], temperature=1, n=1)  # OpenAI's defaults are fine


def test_with_chatgpt_deleting_a_stored_completion_hides_the_upstream_copy(
    chatgpt_client: tuple[Flask, FakeChatGPTBackend, openai.OpenAI],
) -> None:
    """As deleting a response does: ChatGPT cannot delete one message."""
    app, backend, client = chatgpt_client
    first = client.chat.completions.create(model="text-davinci-002-render-sha", messages=[user("Hello")])
    (upstream,) = backend.conversations.values()
    backend.fail_next(500, "busy")
    with pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.delete(first.id)
    assert refused.value.status_code == 502 and upstream.is_visible
    assert client.chat.completions.retrieve(first.id).id == first.id
    assert client.chat.completions.delete(first.id).deleted
    assert upstream.is_visible is False


# -- the parts, without HTTP -------------------------------------------------------------------


def test_chunks_add_up_to_the_completion_the_upstream_would_have_sent() -> None:
    builder = CompletionBuilder()
    envelope = {"id": "up-1", "object": "chat.completion.chunk", "created": 5, "model": "m"}
    deltas = [
        (0, {"role": "assistant", "content": "", "refusal": None}),
        (1, {"role": "assistant", "content": "B"}),
        (0, {"role": "assistant", "content": "A1"}),  # servers that repeat the role
        (0, {"reasoning_content": "think"}),
        (1, {"tool_calls": [{"index": 0, "id": "call_9", "type": "function", "function": {"name": "f", "arguments": ""}}]}),
        (1, {"tool_calls": [{"index": 0, "function": {"arguments": '{"x":'}}]}),
        (1, {"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
        (0, {"content": " A2"}),
    ]
    for index, delta in deltas:
        builder.add({**envelope, "choices": [{"index": index, "delta": delta, "finish_reason": None}]})
    assert not builder.finished
    builder.add({**envelope, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}, {"index": 1, "delta": {}, "finish_reason": "tool_calls"}]})
    builder.add({**envelope, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}})
    completion = builder.completion()
    assert builder.finished
    assert completion["choices"][0]["message"] == {"role": "assistant", "content": "A1 A2", "refusal": None, "reasoning_content": "think"}
    assert completion["choices"][1]["message"] == {
        "role": "assistant",
        "content": "B",
        "tool_calls": [{"id": "call_9", "type": "function", "function": {"name": "f", "arguments": '{"x":1}'}}],
    }
    assert (completion["id"], completion["object"], completion["usage"]["total_tokens"]) == ("up-1", "chat.completion", 7)


def test_a_message_sent_back_has_the_hash_it_was_stored_with() -> None:
    answered = {"role": "assistant", "content": "Hi", "refusal": None, "annotations": []}
    assert canonical(answered) == canonical({"role": "assistant", "content": "Hi"})
    assert canonical({"role": "user", "content": [{"type": "text", "text": "Hi"}]}) == canonical(user("Hi"))
    assert canonical({"role": "user", "content": ["x", IMAGE]}) != canonical(user("x"))
    assert canonical({"role": "assistant", "content": None, "tool_calls": [CALL]}) == canonical(
        {"role": "assistant", "content": "", "tool_calls": [{**CALL, "index": 0}], "refusal": None}
    )
    assert path_hashes("alice", [user("Hi")]) != path_hashes("bob", [user("Hi")])  # two keys never meet
    assert path_hashes("alice", [user("a"), user("b")])[0] == path_hashes("alice", [user("a")])[0]


def test_query_parameters_a_route_does_not_take_are_refused_naming_them(
    alice: openai.OpenAI, fake_upstream: FakeOpenAI
) -> None:
    completion = alice.chat.completions.create(model="gpt-test", messages=[user("Hi")])
    cases = [
        (lambda: alice.chat.completions.create(model="gpt-test", messages=[user("x")], extra_query={"x": "1"}), "x"),
        (lambda: alice.chat.completions.retrieve(completion.id, extra_query={"include": "all"}), "include"),
        (lambda: alice.chat.completions.update(completion.id, metadata={}, extra_query={"x": "1"}), "x"),
        (lambda: alice.chat.completions.delete(completion.id, extra_query={"x": "1"}), "x"),
        (lambda: alice.models.list(extra_query={"limit": "5"}), "limit"),
        (lambda: alice.models.retrieve("gpt-test", extra_query={"x": "1"}), "x"),
    ]
    for call, param in cases:
        with pytest.raises(openai.BadRequestError) as raised:
            call()
        assert raised.value.body["param"] == param, raised.value.body  # type: ignore[index]
    assert len(fake_upstream.requests) == 1  # refused before the upstream was asked
    assert alice.chat.completions.retrieve(completion.id).id == completion.id
