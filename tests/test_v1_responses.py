"""`/v1/responses` through the official `openai` SDK, against the app over real HTTP and the
fake upstream, on both databases: every response is a node of the one tree."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import pytest
from flask import Flask
from flask.testing import FlaskClient

from fakes.chatgpt_backend import FakeChatGPTBackend
from fakes.openai_upstream import Fail, FakeOpenAI, Reply
from tests.helpers import ok, post, wait_until
from tests.openai_sdk import bare, base_url, chatgpt_sdk, sdk, sdk_client, sdk_for, stored_rows, tree_of  # noqa: F401

MODEL = "gpt-test"


def upstream_messages(fake_upstream: FakeOpenAI, index: int = -1) -> list[dict[str, Any]]:
    return fake_upstream.requests[index].body["messages"]


def conversation_of(client: FlaskClient, sdk: openai.OpenAI) -> str:
    """The newest conversation of the SDK's key, as `conv_<hex>`."""
    return sdk.get("/conversations", cast_to=object)["data"][0]["id"]  # type: ignore[index]


@pytest.mark.parametrize("settings_overrides", [{}, {"store_while_asking": True}], ids=["stored-first", "store-while-asking"])
def test_create_answers_as_openai_does_and_the_answer_is_a_node(
    sdk: openai.OpenAI, client: FlaskClient, fake_upstream: FakeOpenAI
) -> None:
    response = sdk.responses.create(model=MODEL, input="Hello")
    assert response.object == "response" and response.status == "completed"
    assert response.id.startswith("resp_") and len(response.id) == 37
    [message] = response.output
    assert message.type == "message" and message.role == "assistant" and message.status == "completed"
    assert message.id == "msg_" + response.id.removeprefix("resp_")
    assert response.output_text == "Echo: Hello"
    assert (response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens) == (7, 5, 12)
    assert response.model == MODEL and response.conversation is None and response.previous_response_id is None
    assert upstream_messages(fake_upstream) == [{"role": "user", "content": "Hello"}]
    tree = tree_of(client, sdk, conversation_of(client, sdk))
    answer = tree["mapping"][bare(response.id)]
    assert answer["message"]["content"]["parts"] == ["Echo: Hello"]
    assert tree["mapping"][answer["parent"]]["message"]["content"]["parts"] == ["Hello"]
    assert tree["current_node"] == bare(response.id)
    assert sdk.responses.retrieve(response.id).model_dump() == response.model_dump()


def test_previous_response_continues_and_a_second_one_from_it_branches(
    sdk: openai.OpenAI, client: FlaskClient, fake_upstream: FakeOpenAI
) -> None:
    first = sdk.responses.create(model=MODEL, input="One")
    second = sdk.responses.create(model=MODEL, input="Two", previous_response_id=first.id)
    assert second.previous_response_id == first.id
    assert upstream_messages(fake_upstream) == [
        {"role": "user", "content": "One"},
        {"role": "assistant", "content": "Echo: One"},
        {"role": "user", "content": "Two"},
    ]
    branch = sdk.responses.create(model=MODEL, input="Two again", previous_response_id=first.id)
    assert upstream_messages(fake_upstream)[-1] == {"role": "user", "content": "Two again"}
    assert len(upstream_messages(fake_upstream)) == 3
    mapping = tree_of(client, sdk, conversation_of(client, sdk))["mapping"]
    questions = mapping[bare(first.id)]["children"]
    assert len(questions) == 2
    assert {mapping[q]["children"][0] for q in questions} == {bare(second.id), bare(branch.id)}


def test_instructions_go_first_for_this_response_only(sdk: openai.OpenAI, fake_upstream: FakeOpenAI) -> None:
    first = sdk.responses.create(model=MODEL, input="Hi", instructions="Be brief.")
    assert upstream_messages(fake_upstream)[0] == {"role": "system", "content": "Be brief."}
    assert first.instructions == "Be brief."
    second = sdk.responses.create(model=MODEL, input="More", previous_response_id=first.id)
    assert [m["role"] for m in upstream_messages(fake_upstream)] == ["user", "assistant", "user"]
    assert second.instructions is None
    assert sdk.responses.retrieve(first.id).instructions == "Be brief."


@pytest.mark.parametrize("settings_overrides", [{}, {"store_while_asking": True}], ids=["stored-first", "store-while-asking"])
def test_message_items_are_stored_in_order_and_are_the_input_items(
    sdk: openai.OpenAI, fake_upstream: FakeOpenAI
) -> None:
    response = sdk.responses.create(
        model=MODEL,
        input=[
            {"role": "developer", "content": "Answer in French."},
            {"role": "user", "content": [{"type": "input_text", "text": t} for t in ("Hello", "there")]},
        ],
    )
    assert upstream_messages(fake_upstream) == [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Hello\nthere"},
    ]
    items = list(sdk.responses.input_items.list(response.id))
    assert [(i.role, i.content[0].text) for i in items] == [
        ("user", "Hello\nthere"),
        ("developer", "Answer in French."),
    ]
    assert all(i.id.startswith("msg_") and i.content[0].type == "input_text" for i in items)
    first_page = sdk.responses.input_items.list(response.id, order="asc", limit=1)
    assert [i.role for i in first_page.data] == ["developer"] and first_page.has_more
    assert [i.role for i in first_page.get_next_page().data] == ["user"]


def test_store_false_answers_and_keeps_nothing(
    app: Flask, sdk: openai.OpenAI, fake_upstream: FakeOpenAI
) -> None:
    kept = sdk.responses.create(model=MODEL, input="Kept")
    before = stored_rows(app)
    unkept = sdk.responses.create(model=MODEL, input="Not kept", store=False, previous_response_id=kept.id)
    assert unkept.output_text == "Echo: Not kept" and unkept.store is False
    assert [m["content"] for m in upstream_messages(fake_upstream)] == ["Kept", "Echo: Kept", "Not kept"]
    fresh = sdk.responses.create(model=MODEL, input="Nor this", store=False)
    streamed = list(sdk.responses.create(model=MODEL, input="Streamed", store=False, stream=True))[-1].response
    assert streamed.output_text == "Echo: Streamed" and streamed.store is False
    assert stored_rows(app) == before
    for gone in (unkept, fresh, streamed):
        with pytest.raises(openai.NotFoundError):
            sdk.responses.retrieve(gone.id)


def test_conversation_appends_at_its_current_node_across_both_surfaces(
    sdk: openai.OpenAI, client: FlaskClient, fake_upstream: FakeOpenAI
) -> None:
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {sdk.api_key}"
    asked = ok(client.post("/api/chat/ask", json={"prompt": "From ask"}))
    conversation = "conv_" + asked["conversation_id"].replace("-", "")
    response = sdk.responses.create(model=MODEL, input="From v1", conversation=conversation)
    assert response.conversation.id == conversation
    assert [m["content"] for m in upstream_messages(fake_upstream)] == ["From ask", "Echo: From ask", "From v1"]
    again = ok(client.post("/api/chat/ask", json={"prompt": "Back", "convo_id": asked["conversation_id"]}))
    assert [m["content"] for m in upstream_messages(fake_upstream)][-3:] == ["From v1", "Echo: From v1", "Back"]
    by_object = sdk.responses.create(model=MODEL, input="Object form", conversation={"id": asked["conversation_id"]})
    assert upstream_messages(fake_upstream)[-2]["content"] == "Echo: Back"
    assert tree_of(client, sdk, conversation)["current_node"] == bare(by_object.id)
    asked_answer = sdk.responses.retrieve("resp_" + again["parent_id"].replace("-", ""))
    assert asked_answer.output_text == "Echo: Back"
    assert [i.content[0].text for i in sdk.responses.input_items.list(asked_answer.id)] == ["Back"]


def test_sampling_fields_go_upstream_and_metadata_stays_with_the_response(
    sdk: openai.OpenAI, fake_upstream: FakeOpenAI
) -> None:
    response = sdk.responses.create(
        model=MODEL, input="Hi", temperature=0.2, top_p=0.9, max_output_tokens=64, user="u-42",
        metadata={"topic": "greetings"},
    )
    sent = fake_upstream.requests[-1].body
    assert (sent["temperature"], sent["top_p"], sent["max_tokens"], sent["user"]) == (0.2, 0.9, 64, "u-42")
    stored = sdk.responses.retrieve(response.id)
    assert (stored.temperature, stored.top_p, stored.max_output_tokens, stored.user) == (0.2, 0.9, 64, "u-42")
    assert stored.metadata == {"topic": "greetings"}
    sdk.responses.create(model=MODEL, input="Plain", previous_response_id=response.id)
    assert not {"temperature", "top_p", "max_tokens", "user"} & set(fake_upstream.requests[-1].body)


def test_an_answer_cut_at_its_length_is_incomplete(sdk: openai.OpenAI, fake_upstream: FakeOpenAI) -> None:
    fake_upstream.script(Reply(text="Partial", finish_reason="length"))
    response = sdk.responses.create(model=MODEL, input="Long", max_output_tokens=2)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.output[0].status == "incomplete"
    assert sdk.responses.retrieve(response.id).status == "incomplete"


def test_deleting_a_response_takes_what_is_below_and_moves_the_current_node_up(
    sdk: openai.OpenAI, client: FlaskClient
) -> None:
    first = sdk.responses.create(model=MODEL, input="One")
    second = sdk.responses.create(model=MODEL, input="Two", previous_response_id=first.id)
    third = sdk.responses.create(model=MODEL, input="Three", previous_response_id=second.id)
    assert sdk.responses.delete(second.id) is None
    for gone in (second, third):
        with pytest.raises(openai.NotFoundError):
            sdk.responses.retrieve(gone.id)
    tree = tree_of(client, sdk, conversation_of(client, sdk))
    two = tree["current_node"]
    assert tree["mapping"][two]["message"]["content"]["parts"] == ["Two"]
    assert tree["mapping"][two]["parent"] == bare(first.id) and tree["mapping"][two]["children"] == []


# -- streaming ------------------------------------------------------------------

SEQUENCE = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


def test_stream_sends_openai_events_in_order(sdk: openai.OpenAI, fake_upstream: FakeOpenAI) -> None:
    fake_upstream.script(Reply(text="Hello there", chunks=["Hello", " there"]))
    events = list(sdk.responses.create(model=MODEL, input="Hi", stream=True))
    assert [event.type for event in events] == SEQUENCE
    assert [event.sequence_number for event in events] == list(range(len(SEQUENCE)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "Hello there"
    created, completed = events[0].response, events[-1].response
    assert created.status == "in_progress" and created.output == []
    assert completed.id == created.id and completed.output_text == "Hello there"
    assert events[6].text == "Hello there" and events[8].item.id == "msg_" + created.id.removeprefix("resp_")
    assert sdk.responses.retrieve(completed.id).model_dump() == completed.model_dump()


def test_the_sdk_stream_helper_runs_to_its_final_response(sdk: openai.OpenAI) -> None:
    first = sdk.responses.create(model=MODEL, input="One")
    with sdk.responses.stream(model=MODEL, input="Two", previous_response_id=first.id) as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == "Echo: Two"
    assert final.previous_response_id == first.id and final.status == "completed"


def test_upstream_breaking_off_mid_stream_fails_the_response_and_keeps_the_text(
    sdk: openai.OpenAI, fake_upstream: FakeOpenAI
) -> None:
    fake_upstream.script(Reply(text="a b c", chunks=["a ", "b ", "c"], break_after=2, chunk_delay=0.02))
    events = list(sdk.responses.create(model=MODEL, input="Hi", stream=True))
    failed = events[-1]
    assert failed.type == "response.failed" and failed.response.status == "failed"
    assert failed.response.error.code == "server_error" and failed.response.error.message
    assert [e.sequence_number for e in events] == list(range(len(events)))
    stored = sdk.responses.retrieve(failed.response.id)
    assert stored.status == "incomplete" and stored.output_text == "a b "


def test_upstream_failing_before_any_text_keeps_its_http_status(sdk: openai.OpenAI, fake_upstream: FakeOpenAI) -> None:
    fake_upstream.script(Fail(500, "down"), Fail(500, "down"))
    with pytest.raises(openai.InternalServerError) as raised:
        sdk.responses.create(model=MODEL, input="Hi", stream=True)
    assert raised.value.status_code == 502 and raised.value.body["type"] == "server_error"  # type: ignore[index]
    with pytest.raises(openai.InternalServerError):
        sdk.responses.create(model=MODEL, input="Hi")


def test_client_leaving_mid_stream_keeps_the_text_marked_incomplete(
    sdk: openai.OpenAI, fake_upstream: FakeOpenAI
) -> None:
    pieces = [f"w{i} " for i in range(40)]
    fake_upstream.script(Reply(text="".join(pieces), chunks=pieces, chunk_delay=0.05))
    stream = sdk.responses.create(model=MODEL, input="Long", stream=True)
    response_id = next(iter(stream)).response.id
    stream.close()
    wait_until(lambda: fake_upstream.active_requests == 0, timeout=3)

    def stored_incomplete() -> Any:
        try:
            found = sdk.responses.retrieve(response_id)
        except openai.NotFoundError:
            return None
        return found if found.status == "incomplete" else None

    text = wait_until(stored_incomplete).output_text
    assert text.startswith("w0 ") and len(text) < len("".join(pieces))


@pytest.mark.parametrize("settings_overrides", [{"sse_keep_alive_seconds": 0.1}])
def test_keep_alive_comments_fill_the_silence_before_the_first_event(
    sdk: openai.OpenAI, fake_upstream: FakeOpenAI
) -> None:
    fake_upstream.script(Reply(text="late", delay=0.35))
    raw = sdk.responses.with_raw_response.create(model=MODEL, input="Hi", stream=True)
    text = raw.http_response.read().decode()
    assert text.startswith(": keep-alive\n\n") and "event: response.completed\n" in text


# -- errors ---------------------------------------------------------------------


UNSUPPORTED: list[tuple[dict[str, Any], str]] = [
    ({"tools": [{"type": "function", "name": "f", "parameters": {}}]}, "tools"),
    ({"text": {"format": {"type": "json_object"}}}, "text.format"),
    ({"reasoning": {"effort": "high"}}, "reasoning"),
    ({"background": True}, "background"),
    ({"extra_body": {"frequency_penalty": 1}}, "frequency_penalty"),
    (
        {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x/y.png"}]}]},
        "input[0].content[0].type",
    ),
    ({"input": [{"type": "function_call_output", "call_id": "c", "output": "x"}]}, "input[0].type"),
    ({"previous_response_id": "resp_nothex"}, "previous_response_id"),
    ({"previous_response_id": "resp_" + "a" * 32, "conversation": "conv_" + "b" * 32}, "previous_response_id"),
    ({"conversation": {"id": "nope"}}, "conversation.id"),
    ({"temperature": 3}, "temperature"),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ({"input": "   "}, "input"),
]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # refused before any storage
def test_what_the_service_does_not_do_is_a_400_naming_the_field(sdk: openai.OpenAI, app: Flask) -> None:
    before = stored_rows(app)
    for fields, param in UNSUPPORTED:
        with pytest.raises(openai.BadRequestError) as raised:
            sdk.responses.create(model=MODEL, **{"input": "Hi", **fields})
        error = raised.value.body
        assert error["param"] == param and error["type"] == "invalid_request_error", error  # type: ignore[index]
        assert error["message"].startswith(param), error  # type: ignore[index]
    assert stored_rows(app) == before


def test_neutral_values_of_unimplemented_fields_are_accepted(sdk: openai.OpenAI) -> None:
    response = sdk.responses.create(
        model=MODEL, input="Hi", tools=[], tool_choice="auto", background=False, include=[],
        text={"format": {"type": "text"}}, truncation="disabled", parallel_tool_calls=True,
    )
    assert response.status == "completed"


def test_unknown_ids_and_other_keys_ids_are_404(
    sdk: openai.OpenAI, sdk_for: Callable[[str], openai.OpenAI]
) -> None:
    mine = sdk.responses.create(model=MODEL, input="Mine")
    bob = sdk_for("bob")
    with pytest.raises(openai.NotFoundError) as raised:
        bob.responses.retrieve(mine.id)
    assert raised.value.body["type"] == "not_found_error"  # type: ignore[index]
    for call in (
        lambda: bob.responses.create(model=MODEL, input="x", previous_response_id=mine.id),
        lambda: bob.responses.delete(mine.id),
        lambda: bob.responses.input_items.list(mine.id),
        lambda: sdk.responses.retrieve("resp_" + "0" * 32),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    with pytest.raises(openai.BadRequestError) as malformed:
        sdk.responses.retrieve("resp_123")
    assert malformed.value.body["param"] == "response_id"  # type: ignore[index]
    assert sdk.responses.retrieve(mine.id).output_text == "Echo: Mine"


def test_without_keys_the_sdks_placeholder_key_is_the_anonymous_caller(base_url: str, client: FlaskClient) -> None:
    """The SDK cannot leave its key out; a server that needs no key takes any non-key as none."""
    anonymous = sdk_client(base_url, "none", max_retries=0)
    assert anonymous.responses.create(model=MODEL, input="Hi").status == "completed"
    assert len(ok(post(client, "conversation", {}))) == 1  # the six routes' anonymous caller owns it


def test_a_wrong_key_is_401(base_url: str, sdk: openai.OpenAI) -> None:
    stranger = sdk_client(base_url, "sk-not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as raised:
        stranger.responses.create(model=MODEL, input="Hi")
    assert raised.value.body["type"] == "authentication_error"  # type: ignore[index]


@pytest.mark.parametrize("settings_overrides", [{"rate_limit": "2/minute"}])
def test_rate_limit_is_a_429(sdk: openai.OpenAI) -> None:
    sdk.responses.create(model=MODEL, input="One")
    sdk.responses.create(model=MODEL, input="Two")
    with pytest.raises(openai.RateLimitError) as raised:
        sdk.responses.create(model=MODEL, input="Three")
    assert raised.value.body["type"] == "rate_limit_error"  # type: ignore[index]


CHATGPT = {"llm_provider": "chatgpt", "chatgpt_access_token": "t", "chatgpt_base_url": "http://127.0.0.1:9/api/"}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # refused before any storage
@pytest.mark.parametrize("settings_overrides", [{**CHATGPT}])
def test_a_chatgpt_account_refuses_what_it_cannot_honour(sdk: openai.OpenAI, app: Flask) -> None:
    for fields, param in [
        ({"instructions": "Be brief."}, "instructions"),
        ({"store": False}, "store"),
        ({"temperature": 0.5}, "temperature"),
        ({"max_output_tokens": 10}, "max_output_tokens"),
        ({"input": [{"role": "system", "content": "x"}, {"role": "user", "content": "y"}]}, "input"),
    ]:
        with pytest.raises(openai.BadRequestError) as raised:
            sdk.responses.create(model=MODEL, **{"input": "Hi", **fields})
        assert raised.value.body["param"] == param  # type: ignore[index]
    assert stored_rows(app) == (0, 0)


CHATGPT_MODEL = "text-davinci-002-render-sha"


def last_post(backend: FakeChatGPTBackend) -> dict[str, Any]:
    """The last message the backend was sent: its conversation, parent and text."""
    body = [r.body for r in backend.requests if r.method == "POST" and r.path == "conversation"][-1]
    return {"conversation_id": body.get("conversation_id"), "text": body["messages"][0]["content"]["parts"][0]}


def test_deleting_a_response_hides_the_chatgpt_copy_and_the_next_answer_carries_the_dialogue(
    chatgpt_sdk: tuple[FakeChatGPTBackend, openai.OpenAI],
) -> None:
    """ChatGPT cannot delete one message: its copy of the conversation is hidden, as the six
    routes' delete hides it, and a new one carries the dialogue that is left."""
    backend, sdk = chatgpt_sdk
    first = sdk.responses.create(model=CHATGPT_MODEL, input="Hello")
    second = sdk.responses.create(model=CHATGPT_MODEL, input="Again", previous_response_id=first.id)
    (upstream,) = backend.conversations.values()
    backend.fail_next(500, "busy")
    with pytest.raises(openai.APIStatusError) as refused:
        sdk.responses.delete(second.id)
    assert refused.value.status_code == 502 and upstream.is_visible
    assert sdk.responses.retrieve(second.id).output_text == "You said: Again"  # nothing changed here

    sdk.responses.delete(second.id)
    assert upstream.is_visible is False
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(second.id)
    third = sdk.responses.create(model=CHATGPT_MODEL, input="Once more", previous_response_id=first.id)
    sent = last_post(backend)
    assert sent["conversation_id"] is None  # a new upstream conversation, told what came before
    assert sent["text"] == "User: Hello\n\nAssistant: You said: Hello\n\nUser: Once more"
    (copy,) = [c for c in backend.conversations.values() if c.is_visible]
    sdk.responses.create(model=CHATGPT_MODEL, input="And?", previous_response_id=third.id)
    assert last_post(backend) == {"conversation_id": copy.id, "text": "And?"}  # continued there
