"""Proves fakes/openai_upstream.py against the real openai SDK, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import http.client
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import openai
import pytest

from fakes.openai_upstream import FakeOpenAI, Fail, Hang, Reply, Reset, split_words
from tests.openai_sdk import sdk_client

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-test"
USER = [{"role": "user", "content": "ping"}]


def eventually(predicate: Callable[[], bool], timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    assert eventually(lambda: set(threading.enumerate()) <= before), threading.enumerate()


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=KEY) as server:
        yield server


@pytest.fixture
def client(fake: FakeOpenAI) -> Iterator[openai.OpenAI]:
    with sdk_client(fake.url, KEY, max_retries=0, timeout=5) as sdk:
        yield sdk


def stream_pieces(stream: openai.Stream) -> list[str]:
    return [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]


def test_split_words_joins_back() -> None:
    text = "  The quick brown\tfox jumps  over the lazy dog. "
    pieces = split_words(text)
    assert "".join(pieces) == text
    assert len(pieces) == 3
    assert split_words("one two", 5) == ["one ", "two"]
    assert split_words("") == []


def test_non_stream_reply_and_usage(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.script(Reply(text="Hi there", usage=(3, 4), finish_reason="length"), Reply(usage=None, model="other"))

    first = client.chat.completions.create(model="gpt-test", messages=USER)
    assert first.id.startswith("chatcmpl-")
    assert first.object == "chat.completion"
    assert first.model == "gpt-test"
    assert first.choices[0].message.role == "assistant"
    assert first.choices[0].message.content == "Hi there"
    assert first.choices[0].finish_reason == "length"
    assert first.usage is not None
    assert (first.usage.prompt_tokens, first.usage.completion_tokens, first.usage.total_tokens) == (3, 4, 7)

    second = client.chat.completions.create(model="gpt-test", messages=USER)
    assert second.usage is None
    assert second.model == "other"


def test_stream_pieces_finish_reason_and_usage(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    text = "one two three four five six"
    fake.script(Reply(text=text, usage=(2, 6)))

    chunks = list(
        client.chat.completions.create(
            model="gpt-test", messages=USER, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    pieces = [c.choices[0].delta.content for c in chunks[1:-2]]
    assert len(pieces) == 3 and "".join(pieces) == text
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 8
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1


def test_stream_without_include_usage_ends_with_finish_chunk(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.script(Reply(chunks=["Hel", "lo", "!"], finish_reason="length"))

    chunks = list(client.chat.completions.create(model="gpt-test", messages=USER, stream=True))
    assert [c.choices[0].delta.content for c in chunks[1:-1]] == ["Hel", "lo", "!"]
    assert chunks[-1].choices[0].finish_reason == "length"
    assert chunks[-1].usage is None


def test_script_order_then_default_echo(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.script(Reply(text="first"), Reply(text="second"))

    def ask(content: str) -> str | None:
        messages = [{"role": "system", "content": "sys"}, {"role": "user", "content": content}]
        return client.chat.completions.create(model="m", messages=messages).choices[0].message.content

    assert [ask("a"), ask("b"), ask("c")] == ["first", "second", "Echo: c"]
    fake.default = lambda body: Reply(text=f"{len(body['messages'])} messages")
    assert ask("d") == "2 messages"
    fake.reset()
    assert ask("e") == "Echo: e"


@pytest.mark.parametrize(
    ("status", "error"), [(500, openai.InternalServerError), (429, openai.RateLimitError)]
)
def test_fail_raises_sdk_error(
    fake: FakeOpenAI, client: openai.OpenAI, status: int, error: type[openai.APIStatusError]
) -> None:
    fake.script(Fail(status=status, message="boom here", headers={"Retry-After": "7"}))

    with pytest.raises(error, match="boom here") as caught:
        client.chat.completions.create(model="m", messages=USER)
    assert caught.value.status_code == status
    assert caught.value.response.headers["retry-after"] == "7"
    assert isinstance(caught.value.body, dict) and caught.value.body["message"] == "boom here"


def test_sdk_retries_on_429_then_succeeds(fake: FakeOpenAI) -> None:
    fake.script(Fail(status=429, headers={"retry-after-ms": "10"}), Reply(text="after retry"))

    with sdk_client(fake.url, KEY, max_retries=1, timeout=5) as sdk:
        answer = sdk.chat.completions.create(model="m", messages=USER)
    assert answer.choices[0].message.content == "after retry"
    assert len(fake.requests) == 2


def test_wrong_key_is_authentication_error(fake: FakeOpenAI) -> None:
    with sdk_client(fake.url, "sk-wrong", max_retries=0, timeout=5) as sdk:
        with pytest.raises(openai.AuthenticationError) as caught:
            sdk.chat.completions.create(model="m", messages=USER)
    assert caught.value.code == "invalid_api_key"
    assert caught.value.type == "invalid_request_error"
    assert fake.requests == []


def test_invalid_json_is_openai_style_400(fake: FakeOpenAI) -> None:
    host, port = fake.url.removeprefix("http://").removesuffix("/v1").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("POST", "/v1/chat/completions", body=b"{not json", headers={"Authorization": f"Bearer {KEY}"})
        response = conn.getresponse()
        payload = json.loads(response.read())
    finally:
        conn.close()
    assert response.status == 400
    assert set(payload["error"]) == {"message", "type", "param", "code"}
    assert payload["error"]["type"] == "invalid_request_error"


def test_break_after_breaks_the_stream(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.script(Reply(chunks=["a", "b", "c", "d"], break_after=2))
    received: list[str] = []

    with pytest.raises(openai.APIConnectionError):
        for chunk in client.chat.completions.create(model="m", messages=USER, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)
    assert received == ["a", "b"]


def test_hang_times_out_and_handler_ends(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.script(Hang())

    with pytest.raises(openai.APITimeoutError):
        client.with_options(timeout=0.3).chat.completions.create(model="m", messages=USER)
    assert len(fake.requests) == 1
    assert eventually(lambda: fake.active_requests == 0)
    assert client.chat.completions.create(model="m", messages=USER).choices[0].message.content == "Echo: ping"


def test_stop_ends_hanging_requests_promptly(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.script(Hang())
    errors: list[Exception] = []

    def call() -> None:
        try:
            client.chat.completions.create(model="m", messages=USER)
        except Exception as exc:  # noqa: BLE001 - collected for the assertion below
            errors.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    assert eventually(lambda: fake.active_requests == 1)
    started = time.monotonic()
    fake.stop()
    caller.join(timeout=5)
    assert time.monotonic() - started < 2
    assert not caller.is_alive()
    assert [type(e) for e in errors] == [openai.APIConnectionError]
    fake.stop()  # idempotent


def test_reset_is_connection_error(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.script(Reset())

    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="m", messages=USER)
    assert len(fake.requests) == 1


def test_delays_are_respected(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.script(Reply(delay=0.2), Fail(delay=0.2), Reply(chunks=["a", "b", "c"], chunk_delay=0.1))

    started = time.monotonic()
    client.chat.completions.create(model="m", messages=USER)
    assert time.monotonic() - started >= 0.2

    started = time.monotonic()
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="m", messages=USER)
    assert time.monotonic() - started >= 0.2

    stream = client.chat.completions.create(model="m", messages=USER, stream=True)
    arrivals = [time.monotonic() for c in stream if c.choices and c.choices[0].delta.content]
    assert len(arrivals) == 3
    # Two 0.1 s gaps, seen from the client: its read of the first piece may itself come late
    # (buffered with the headers), so only most of the sum is certain.
    assert arrivals[2] - arrivals[0] >= 0.15


def test_recorded_requests(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    client.chat.completions.create(model="gpt-test", messages=USER, temperature=0.5)
    list(client.chat.completions.create(model="gpt-test", messages=USER, stream=True))

    first, second = fake.wait_for_requests(2, timeout=1)
    assert first.body == {"model": "gpt-test", "messages": USER, "temperature": 0.5}
    assert first.path == "/v1/chat/completions"
    assert first.headers["authorization"] == f"Bearer {KEY}"
    assert second.body["stream"] is True
    with pytest.raises(TimeoutError):
        fake.wait_for_requests(3, timeout=0.1)
    fake.reset()
    assert fake.requests == []


def test_wait_for_requests_wakes_on_arrival(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    caller = threading.Timer(0.1, lambda: client.chat.completions.create(model="m", messages=USER))
    caller.start()
    started = time.monotonic()
    try:
        assert len(fake.wait_for_requests(1, timeout=3)) == 1
        assert time.monotonic() - started < 1
    finally:
        caller.join()


def test_keep_alive_on_one_connection_without_nagle(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    """Requests reuse one connection, whose socket has TCP_NODELAY (no delayed-ACK stalls;
    the benchmark measures the latency itself). The SDK drops the connection after a stream."""
    for _ in range(20):
        client.chat.completions.create(model="m", messages=USER)
    assert fake.open_connections == 1
    assert fake.nodelay_flags() == [True]


def test_many_concurrent_streams(fake: FakeOpenAI) -> None:
    count = 500
    fake.default = lambda body: Reply(text="a b c", delay=0.3)

    async def run() -> list[str]:
        connector = aiohttp.TCPConnector(limit=0)
        headers = {"Authorization": f"Bearer {KEY}"}
        body = {"model": "m", "messages": USER, "stream": True}
        async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

            async def one() -> str:
                async with session.post(f"{fake.url}/chat/completions", json=body) as response:
                    return await response.text()

            return await asyncio.gather(*(one() for _ in range(count)))

    bodies = asyncio.run(run())
    assert all(b.endswith("data: [DONE]\n\n") for b in bodies)
    assert len(fake.requests) == count


def test_standalone_mode() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "fakes.openai_upstream", "--port", "0", "--latency-ms", "50",
         "--chunks", "2", "--text", "alpha beta gamma"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout is not None
        ready = process.stdout.readline().split()
        assert ready[0] == "READY" and ready[1].startswith("http://127.0.0.1:")
        with sdk_client(ready[1], "any", max_retries=0, timeout=5) as sdk:
            started = time.monotonic()
            answer = sdk.chat.completions.create(model="m", messages=USER)
            assert time.monotonic() - started >= 0.05
            assert answer.choices[0].message.content == "alpha beta gamma"
            stream = sdk.chat.completions.create(model="m", messages=USER, stream=True)
            assert stream_pieces(stream) == ["alpha beta ", "gamma"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
        assert process.stdout.read() == ""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
