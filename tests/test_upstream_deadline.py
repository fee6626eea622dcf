"""One deadline per answer upstream (UPSTREAM_DEADLINE_SECONDS), across every attempt and wait;
and an upstream 429 that outlasts the retries reaches the client as a 429 with the upstream's
Retry-After, naming the conversation that holds the question."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest
from flask.testing import FlaskClient

from fakes.chatgpt_backend import FakeChatGPTBackend
from fakes.openai_upstream import Fail, FakeOpenAI, Hang, Reply
from services.errors import UpstreamRateLimited, UpstreamTimeout
from services.providers.base import ChatMessage, ReplyRequest
from services.providers.chatgpt import ChatGPTProvider
from tests.helpers import error_of, history, ok, post

PIECES = [f"w{i} " for i in range(40)]


def answers_in(client: FlaskClient, conversation_id: str) -> list[dict]:
    mapping = history(client, conversation_id)["mapping"]
    return [n["message"] for n in mapping.values() if n.get("message", {}).get("author", {}).get("role") == "assistant"]


@pytest.mark.parametrize("settings_overrides", [
    {"upstream_max_retries": 5, "upstream_read_timeout": 5.0, "upstream_deadline_seconds": 0.6}
])
@pytest.mark.parametrize("stream", [False, True])
def test_a_hung_upstream_is_given_up_at_the_deadline_whatever_the_retries(
    client: FlaskClient, fake_upstream: FakeOpenAI, stream: bool
) -> None:
    fake_upstream.script(*[Hang()] * 6)
    started = time.monotonic()
    error = error_of(post(client, "ask", {"prompt": "anyone there?", "stream": stream}), 504)
    assert time.monotonic() - started < 3.5  # one read timeout alone would be 5 s; six, 30 s and more
    assert error["code"] == "upstream_timeout" and error["conversation_id"]


@pytest.mark.parametrize("settings_overrides", [{"upstream_max_retries": 2, "upstream_deadline_seconds": 1.0}])
def test_a_wait_the_upstream_asks_for_past_the_deadline_is_not_waited(
    client: FlaskClient, fake_upstream: FakeOpenAI
) -> None:
    fake_upstream.script(Fail(429, "Slow down", headers={"Retry-After": "7"}), Reply(text="too late"))
    started = time.monotonic()
    response = post(client, "ask", {"prompt": "now?"})
    assert time.monotonic() - started < 1.0
    error = error_of(response, 429)
    assert error["code"] == "upstream_rate_limited" and error["retry_after"] == 7 and error["conversation_id"]
    assert response.headers["Retry-After"] == "7"
    assert len(fake_upstream.requests) == 1


@pytest.mark.parametrize("settings_overrides", [{"upstream_max_retries": 2, "upstream_deadline_seconds": 5.0}])
def test_failures_are_still_retried_within_the_deadline(client: FlaskClient, fake_upstream: FakeOpenAI) -> None:
    fake_upstream.script(Fail(429, "Slow down", headers={"Retry-After": "0.05"}), Fail(503, "Busy"), Reply(text="Here."))
    assert ok(post(client, "ask", {"prompt": "now?"}))["message"] == "Here."
    assert len(fake_upstream.requests) == 3


@pytest.mark.parametrize("settings_overrides", [{"upstream_max_retries": 1}])
@pytest.mark.parametrize("stream", [False, True])
def test_429s_past_the_retries_are_a_429_with_the_upstreams_retry_after(
    client: FlaskClient, fake_upstream: FakeOpenAI, stream: bool
) -> None:
    first = ok(post(client, "ask", {"prompt": "one"}))
    fake_upstream.script(*[Fail(429, "Rate limit reached", headers={"Retry-After": "0"})] * 2)
    response = post(client, "ask", {"prompt": "two", "convo_id": first["conversation_id"], "stream": stream})
    error = error_of(response, 429)
    assert error["code"] == "upstream_rate_limited" and "Rate limit reached" in error["message"]
    assert error["conversation_id"] == first["conversation_id"]
    assert response.headers["Retry-After"] == "0" and error["retry_after"] == 0
    assert len(fake_upstream.requests) == 3


@pytest.mark.parametrize("settings_overrides", [{"upstream_max_retries": 0}])
def test_a_429_without_retry_after_is_a_429_without_one(client: FlaskClient, fake_upstream: FakeOpenAI) -> None:
    fake_upstream.script(Fail(429, "Rate limit reached"))
    response = post(client, "ask", {"prompt": "x"})
    assert error_of(response, 429)["code"] == "upstream_rate_limited"
    assert "Retry-After" not in response.headers


@pytest.mark.parametrize("settings_overrides", [{"upstream_deadline_seconds": 0.5, "sse_keep_alive_seconds": 0.2}])
def test_an_answer_still_streaming_at_the_deadline_is_cut_and_kept(
    client: FlaskClient, fake_upstream: FakeOpenAI
) -> None:
    fake_upstream.script(Reply(text="".join(PIECES), chunks=PIECES, chunk_delay=0.05))  # 2 s of answer
    text = client.post("/api/chat/ask", json={"prompt": "long", "stream": True}).get_data(as_text=True)
    blocks = [block for block in text.split("\n\n") if block.startswith("event: error")]
    error = json.loads(blocks[0].split("data: ", 1)[1])["error"]
    assert error["code"] == "upstream_timeout" and "UPSTREAM_DEADLINE_SECONDS" in error["message"]
    [kept] = answers_in(client, error["conversation_id"])
    content = kept["content"]["parts"][0]
    assert kept["status"] == "finished_partial_completion" and content and "".join(PIECES).startswith(content)
    assert len(content) < len("".join(PIECES))


# -- a ChatGPT account as the upstream ----------------------------------------------------------------


@pytest.fixture
def chatgpt() -> Iterator[FakeChatGPTBackend]:
    with FakeChatGPTBackend() as backend:
        yield backend


def chatgpt_request() -> ReplyRequest:
    return ReplyRequest([ChatMessage("user", "Hi")], "text-davinci-002-render-sha", str(uuid.uuid4()))


def test_a_chatgpt_answer_still_streaming_at_the_deadline_is_cut(chatgpt: FakeChatGPTBackend) -> None:
    chatgpt.reply, chatgpt.event_delay = "x" * 60, 0.1  # 20 events: 2 s
    provider = ChatGPTProvider(access_token=chatgpt.token, base_url=chatgpt.url, timeout=5, deadline=0.5)
    text = ""
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout, match="UPSTREAM_DEADLINE_SECONDS"):
        for chunk in provider.stream_reply(chatgpt_request()):
            text += chunk.delta
    assert time.monotonic() - started < 1.5 and 0 < len(text) < 60


def test_chatgpt_refusing_with_429_is_a_rate_limit(chatgpt: FakeChatGPTBackend) -> None:
    chatgpt.fail_next(429, {"message": "Too many requests in 1 hour. Try again later."})
    provider = ChatGPTProvider(access_token=chatgpt.token, base_url=chatgpt.url, timeout=5)
    with pytest.raises(UpstreamRateLimited, match="Too many requests"):
        list(provider.stream_reply(chatgpt_request()))
