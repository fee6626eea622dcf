"""The real server (gunicorn, gevent workers) stopping or crashing mid-answer: a stream never
ends silently, and no answer stays `in_progress`."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, select

from fakes.openai_upstream import FakeOpenAI, Reply
from models.entities import Message
from models.statuses import IN_PROGRESS, INTERRUPTED
from tests.conftest import UPSTREAM_KEY
from tests.server_process import HTTP, ServerProcess

pytestmark = pytest.mark.e2e

PIECES = [f"word{i} " for i in range(80)]
FULL = "".join(PIECES)


def server_env(database_url: str, fake_upstream: FakeOpenAI, **extra: str) -> dict[str, str]:
    return {"DATABASE_URL": database_url, "OPENAI_API_KEY": UPSTREAM_KEY, "OPENAI_BASE_URL": fake_upstream.url,
            "GENERATE_TITLES": "false", **extra}


def answers(database_url: str) -> list[Any]:
    engine = create_engine(database_url)
    with engine.connect() as connection:
        rows = connection.execute(
            select(Message.status, Message.content, Message.finish_details).where(Message.role == "assistant")
        ).all()
    engine.dispose()
    return list(rows)


def answer_events(lines: list[str]) -> list[dict[str, Any]]:
    events = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    return [event for event in events if "response" in event]


def test_sigterm_ends_a_stream_outlasting_the_graceful_timeout_with_an_error_and_keeps_it(
    database_url: str, fake_upstream: FakeOpenAI
) -> None:
    fake_upstream.script(Reply(text=FULL, chunks=PIECES, chunk_delay=0.1))  # 8 s of answer
    server = ServerProcess(server_env(database_url, fake_upstream, GRACEFUL_TIMEOUT="2")).start()
    lines: list[str] = []
    exit_code: list[int] = []
    stopping = threading.Thread(target=lambda: exit_code.append(server.stop()))
    try:
        with HTTP.stream("POST", f"{server.url}/api/chat/ask", json={"prompt": "long", "stream": True},
                         timeout=30) as response:
            received = response.iter_lines()
            lines.append(next(line for line in received if line.startswith("data: ")))
            stopping.start()  # SIGTERM, 8 s before the answer would end
            lines += [line for line in received if line]
    finally:
        if stopping.ident is None:
            server.stop()
        stopping.join(timeout=30)
    assert exit_code == [0], server.output
    error = json.loads(lines[lines.index("event: error") + 1].removeprefix("data: "))["error"]
    assert error["code"] == "service_stopping" and error["conversation_id"]
    assert lines[-1] == "data: [DONE]"
    seen = answer_events(lines)[-1]["response"]["message"]
    [(status, content, finish)] = answers(database_url)
    assert (status, finish) == (INTERRUPTED, "interrupted")
    assert content.startswith(seen) and FULL.startswith(content) and content != FULL
    assert "Traceback" not in server.output


def test_sigterm_ends_a_chat_completion_stream_too_and_keeps_it(database_url: str, fake_upstream: FakeOpenAI) -> None:
    fake_upstream.script(Reply(text=FULL, chunks=PIECES, chunk_delay=0.1))
    server = ServerProcess(server_env(database_url, fake_upstream, GRACEFUL_TIMEOUT="2")).start()
    lines: list[str] = []
    exit_code: list[int] = []
    stopping = threading.Thread(target=lambda: exit_code.append(server.stop()))
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": "long"}], "stream": True}
    try:
        with HTTP.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=30) as response:
            received = response.iter_lines()
            lines.append(next(line for line in received if line.startswith("data: ")))
            stopping.start()
            lines += [line for line in received if line]
    finally:
        if stopping.ident is None:
            server.stop()
        stopping.join(timeout=30)
    assert exit_code == [0], server.output
    events = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    assert events[-1]["error"]["code"] == "service_stopping"
    seen = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1] if e.get("choices"))
    [(status, content, finish)] = answers(database_url)
    assert (status, finish) == (INTERRUPTED, "interrupted")
    assert content.startswith(seen) and FULL.startswith(content) and content != FULL
    assert "Traceback" not in server.output


def test_an_answer_cut_by_a_killed_worker_keeps_its_streamed_text_and_is_marked_interrupted(
    own_database_url: str, fake_upstream: FakeOpenAI
) -> None:
    database_url = own_database_url  # the new worker's sweep must be the only one
    fake_upstream.script(Reply(text=FULL, chunks=PIECES, chunk_delay=0.1))
    server = ServerProcess(server_env(database_url, fake_upstream, ANSWER_LEASE_SECONDS="1")).start()
    try:
        assert server.process is not None
        [worker] = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children").read_text().split()
        seen: list[str] = []
        with pytest.raises(httpx.HTTPError):  # the worker dies under the stream
            with HTTP.stream("POST", f"{server.url}/api/chat/ask", json={"prompt": "long", "stream": True},
                             timeout=30) as response:
                for line in response.iter_lines():
                    if line.startswith("data: {"):
                        seen.append(json.loads(line[6:])["response"]["message"])
                    if len(seen) == 12:  # 1.2 s of answer
                        os.kill(int(worker), signal.SIGKILL)
        deadline = time.monotonic() + 15
        while answers(database_url)[0].status == IN_PROGRESS and time.monotonic() < deadline:
            time.sleep(0.1)  # the new worker sweeps once the dead one's lease has run out
        [(status, content, finish)] = answers(database_url)
    finally:
        server.stop()
    assert (status, finish) == (INTERRUPTED, "interrupted")
    assert FULL.startswith(content) and content.startswith("".join(PIECES[:5]))  # not a stub: saved as it came
    assert "marked interrupted" in server.output
