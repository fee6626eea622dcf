"""Titles: generated from the first exchange, off the request path, never over a rename."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from fakes.openai_upstream import Fail, FakeOpenAI, Reply
from tests.helpers import ask, ok, post, wait_until

titles_on = pytest.mark.parametrize("settings_overrides", [{"generate_titles": True}])


def title_of(client: FlaskClient, conversation_id: str) -> str:
    return ok(post(client, "msg/history", {"convo_id": conversation_id}))["title"]


@titles_on
def test_title_comes_from_the_first_exchange_after_the_answer(client: FlaskClient, fake_upstream: FakeOpenAI) -> None:
    fake_upstream.script(Reply(text="Use git."), Reply(text='"Creating Pull Requests"\nmore', delay=0.5))
    answer = ask(client, "How do I make a pull request?")
    assert title_of(client, answer["conversation_id"]) == "New chat"  # the title call is still running
    wait_until(lambda: title_of(client, answer["conversation_id"]) == "Creating Pull Requests")
    title_request = fake_upstream.requests[1].body
    exchange = title_request["messages"][-1]["content"]
    assert "How do I make a pull request?" in exchange and "Use git." in exchange


@titles_on
def test_only_the_first_exchange_asks_for_a_title(client: FlaskClient, fake_upstream: FakeOpenAI) -> None:
    fake_upstream.script(Reply(text="a"), Reply(text="Title"))
    conversation = ask(client, "one")["conversation_id"]
    wait_until(lambda: title_of(client, conversation) == "Title")
    ask(client, "two", convo_id=conversation)
    ask(client, "three", convo_id=conversation)
    assert len(fake_upstream.requests) == 4
    assert title_of(client, conversation) == "Title"


@titles_on
def test_a_rename_is_never_overwritten(client: FlaskClient, fake_upstream: FakeOpenAI) -> None:
    fake_upstream.script(Reply(text="a"), Reply(text="Generated", delay=0.4))
    conversation = ask(client, "one")["conversation_id"]
    ok(post(client, "change/title", {"convo_id": conversation, "title": "Mine"}))
    fake_upstream.wait_for_requests(2)
    client.application.services.titles.close()  # the generated title has been offered by now
    assert title_of(client, conversation) == "Mine"


@titles_on
def test_failed_title_call_leaves_new_chat(client: FlaskClient, fake_upstream: FakeOpenAI) -> None:
    fake_upstream.script(Reply(text="a"), Fail(500))
    conversation = ask(client, "one")["conversation_id"]
    fake_upstream.wait_for_requests(2)
    wait_until(lambda: fake_upstream.active_requests == 0)
    assert title_of(client, conversation) == "New chat"


def test_titles_can_be_switched_off(client: FlaskClient, fake_upstream: FakeOpenAI) -> None:
    conversation = ask(client, "one")["conversation_id"]
    client.application.services.titles.close()  # let any background work finish
    assert len(fake_upstream.requests) == 1
    assert title_of(client, conversation) == "New chat"
