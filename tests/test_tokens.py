"""Token usage of each answer: the upstream's count, or a tokenizer's estimate, in `msg/history`."""

from __future__ import annotations

import os
import uuid
import subprocess
import sys
from pathlib import Path

from services.unit_of_work import UnitOfWork
from fakes.openai_upstream import FakeOpenAI, Reply
from flask import Flask
from flask.testing import FlaskClient
from models.entities import Message
from services import tokens
from services.providers.base import ChatMessage
from tests.helpers import ask, history, post, sse_json
from tests.server_process import PROJECT_ROOT


def stored_usage(app: Flask, message_id: str) -> tuple[int | None, int | None]:
    with UnitOfWork(app.services.database) as uow:
        message = uow.session.get_one(Message, uuid.UUID(message_id))
        return message.prompt_tokens, message.completion_tokens


def test_the_upstreams_usage_is_stored_and_shown(client: FlaskClient, app: Flask, fake_upstream: FakeOpenAI) -> None:
    fake_upstream.script(Reply(text="Hi!", usage=(7, 5)))
    answer = ask(client, "Hello")
    assert stored_usage(app, answer["parent_id"]) == (7, 5)
    mapping = history(client, answer["conversation_id"])["mapping"]
    metadata = mapping[answer["parent_id"]]["message"]["metadata"]
    assert metadata["usage"] == {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
    user = mapping[mapping[answer["parent_id"]]["parent"]]["message"]
    assert user["author"]["role"] == "user" and "usage" not in user["metadata"]


def test_usage_is_estimated_when_the_upstream_gives_none(
    client: FlaskClient, app: Flask, fake_upstream: FakeOpenAI
) -> None:
    fake_upstream.script(Reply(text="Echo: Hello", usage=None))
    answer = ask(client, "Hello")
    # cl100k_base: "user" and "Hello" are one token each, plus 3 framing per message and
    # 3 priming the reply; "Echo: Hello" is three tokens.
    assert stored_usage(app, answer["parent_id"]) == (8, 3)
    metadata = history(client, answer["conversation_id"])["mapping"][answer["parent_id"]]["message"]["metadata"]
    assert metadata["usage"] == {"prompt_tokens": 8, "completion_tokens": 3, "total_tokens": 11}


def test_a_streamed_answer_cut_short_is_estimated_too(
    client: FlaskClient, app: Flask, fake_upstream: FakeOpenAI
) -> None:
    fake_upstream.script(Reply(text="one two three", chunks=["one ", "two ", "three"], usage=None, break_after=2))
    events = sse_json(post(client, "ask", {"prompt": "Hello", "stream": True}))
    answer_id = events[0]["response"]["parent_id"]
    prompt, completion = stored_usage(app, answer_id)
    assert prompt == 8
    assert completion == tokens.count_text("one two ") == 3  # "one", " two", " "


def test_the_tokenizer_is_cl100k_base() -> None:
    assert tokens._encoding().encode("hello world") == [15339, 1917]  # OpenAI's published ids
    assert tokens.count_text("你好，世界") == 6
    assert tokens.count_text("<|endoftext|>") == 7  # user text, not the special token
    assert tokens.count_prompt([ChatMessage("system", "Be brief."), ChatMessage("user", "Hi")]) == (
        3 + (3 + 1 + 3) + (3 + 1 + 1)  # "Be brief." is three tokens
    )


def test_the_tokenizer_needs_no_network(tmp_path: Path) -> None:
    script = (
        "import socket\n"
        "def refuse(*args, **kwargs): raise OSError('no network in this test')\n"
        "socket.socket.connect = refuse\n"
        "socket.create_connection = refuse\n"
        "from services import tokens\n"
        "print(tokens.count_text('hello world'))\n"
    )
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(tmp_path / "empty-cache")}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "2"
