"""One structured log line per request, tied to a request id that goes back in `X-Request-ID`."""

from __future__ import annotations

import json
import logging
import re

import pytest
from flask import Flask
from flask.testing import FlaskClient

from fakes.openai_upstream import FakeOpenAI, Reply
from services.api_keys import ApiKeys
from tests.conftest import UPSTREAM_KEY
from tests.helpers import error_of, ok, post
from tests.server_process import ServerProcess

MADE_ID = re.compile(r"[0-9a-f]{32}")


def access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "gpt_api.access"]


def test_a_request_id_is_made_when_none_is_given(client: FlaskClient) -> None:
    first = post(client, "conversation").headers["X-Request-ID"]
    second = post(client, "conversation").headers["X-Request-ID"]
    assert MADE_ID.fullmatch(first) and MADE_ID.fullmatch(second)
    assert first != second


@pytest.mark.parametrize("given", ["abc-123", "req_01HZX.5:frontend@edge/7+=", "x" * 128])
def test_a_safe_request_id_is_kept(client: FlaskClient, given: str) -> None:
    response = client.post("/api/chat/conversation", json={}, headers={"X-Request-ID": given})
    assert response.headers["X-Request-ID"] == given


@pytest.mark.parametrize("given", ["x" * 129, "two words", "<script>", "naïve", "a;b", "a\tb"])
def test_an_unsafe_request_id_is_replaced(client: FlaskClient, given: str) -> None:
    response = client.post("/api/chat/conversation", json={}, headers={"X-Request-ID": given})
    assert MADE_ID.fullmatch(response.headers["X-Request-ID"])


def test_errors_and_streams_carry_the_request_id(client: FlaskClient) -> None:
    headers = {"X-Request-ID": "trace-1"}
    not_found = client.post("/api/chat/msg/history", json={"convo_id": "00000000-0000-4000-8000-000000000000"}, headers=headers)
    error_of(not_found, 404)
    assert not_found.headers["X-Request-ID"] == "trace-1"
    bad = client.post("/api/chat/ask", json={"prompt": 5}, headers=headers)
    error_of(bad, 400)
    assert bad.headers["X-Request-ID"] == "trace-1"
    assert client.get("/no/such/route", headers=headers).headers["X-Request-ID"] == "trace-1"
    stream = client.post("/api/chat/ask", json={"prompt": "hi", "stream": True}, headers=headers)
    assert stream.mimetype == "text/event-stream"
    assert stream.headers["X-Request-ID"] == "trace-1"


def test_one_line_per_request_with_its_fields(client: FlaskClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    client.post("/api/chat/conversation", json={}, headers={"X-Request-ID": "line-1"})
    [record] = access_records(caplog)
    assert record.getMessage().startswith("POST /api/chat/conversation 200 ")
    assert record.request_id == "line-1"  # type: ignore[attr-defined]
    assert record.method == "POST" and record.path == "/api/chat/conversation"  # type: ignore[attr-defined]
    assert record.route == "/api/chat/conversation" and record.status == 200  # type: ignore[attr-defined]
    assert isinstance(record.duration_ms, float)  # type: ignore[attr-defined]


def test_no_prompt_answer_or_credentials_in_the_logs(
    app: Flask, client: FlaskClient, fake_upstream: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    key = ApiKeys(app.services.database).create("log-reader").key
    caplog.set_level(logging.INFO)
    fake_upstream.script(Reply(text="SECRET-ANSWER-17"), Reply(text="SECRET-ANSWER-18"))
    auth = {"Authorization": f"Bearer {key}"}
    answer = ok(client.post("/api/chat/ask", json={"prompt": "SECRET-PROMPT-42"}, headers=auth))
    client.post(
        "/api/chat/ask",
        json={"prompt": "SECRET-PROMPT-43", "convo_id": answer["conversation_id"], "stream": True},
        headers=auth,
    ).get_data()
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert len(access_records(caplog)) == 2
    for secret in ("SECRET-PROMPT", "SECRET-ANSWER", key, "Bearer"):
        assert secret not in logged


@pytest.mark.e2e
def test_json_log_lines_from_the_real_server(database_url: str, fake_upstream: FakeOpenAI) -> None:
    env = {
        "DATABASE_URL": database_url,
        "OPENAI_API_KEY": UPSTREAM_KEY,
        "OPENAI_BASE_URL": fake_upstream.url,
        "GENERATE_TITLES": "false",
        "LOG_FORMAT": "json",
    }
    # A fresh interpreter: what it prints while importing the app must be JSON too.
    with ServerProcess(env, fresh=True) as server:
        answer = server.post("ask", {"prompt": "SECRET-PROMPT-44"}, headers={"X-Request-ID": "json-1"})
        assert answer.headers["X-Request-ID"] == "json-1"
    lines = [json.loads(line) for line in server.output.splitlines() if line]  # each line JSON
    [access] = [line for line in lines if line.get("request_id") == "json-1" and line["logger"] == "gpt_api.access"]
    assert access["level"] == "INFO"
    assert access["method"] == "POST" and access["route"] == "/api/chat/ask" and access["status"] == 200
    assert access["duration_ms"] > 0 and access["time"]
    assert access["message"].startswith("POST /api/chat/ask 200 ")
    assert any(line["logger"].startswith("gunicorn") for line in lines)  # every logger, not only ours
    assert "SECRET-PROMPT" not in server.output
