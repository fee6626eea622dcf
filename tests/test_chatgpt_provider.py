"""ChatGPTProvider against the fake ChatGPT backend-api, over real HTTP on 127.0.0.1.

Nothing is mocked: revChatGPT's V1 Chatbot does the talking. Several tests pin a trap of
revChatGPT 6.8.6 (see services/providers/chatgpt.py); each says which.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[1]
# pytest does not put the project root on sys.path (no pythonpath setting, no tests/__init__.py).
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fakes.chatgpt_backend import FakeChatGPTBackend  # noqa: E402
from services.errors import (  # noqa: E402
    ConversationNotFound,
    UpstreamError,
    UpstreamNotConfigured,
    UpstreamTimeout,
)
from services.providers.base import ChatMessage, ReplyChunk, ReplyRequest  # noqa: E402
from services.providers.chatgpt import ChatGPTProvider  # noqa: E402

MODEL = "text-davinci-002-render-sha"
LONG_REPLY = "The quick brown fox jumps over the lazy dog. " * 6
AWKWARD_TEXT = '你好，世界 👋 «ok» "quoted" \'single\' back\\slash \\" line\nbreak\ttab \x7f end'
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


@pytest.fixture(autouse=True)
def no_threads_left_behind() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 2
    while (left := set(threading.enumerate()) - before) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not left, f"threads left behind: {left}"


@pytest.fixture
def backend() -> Iterator[FakeChatGPTBackend]:
    with FakeChatGPTBackend() as fake:
        yield fake


@pytest.fixture
def provider(backend: FakeChatGPTBackend) -> ChatGPTProvider:
    return ChatGPTProvider(access_token=backend.token, base_url=backend.url, timeout=5)


def request_for(
    prompt: str,
    conversation_id: str | None = None,
    parent_id: str | None = None,
    model: str = MODEL,
) -> ReplyRequest:
    return ReplyRequest(
        messages=[ChatMessage("user", prompt)],
        model=model,
        user_message_id=str(uuid.uuid4()),
        upstream_conversation_id=conversation_id,
        upstream_parent_id=parent_id,
    )


def ask(
    provider: ChatGPTProvider,
    prompt: str = "Hi",
    conversation_id: str | None = None,
    parent_id: str | None = None,
    model: str = MODEL,
) -> list[ReplyChunk]:
    return list(provider.stream_reply(request_for(prompt, conversation_id, parent_id, model)))


def text_of(chunks: list[ReplyChunk]) -> str:
    return "".join(chunk.delta for chunk in chunks)


def wait_until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.01)


def answered(provider: ChatGPTProvider, prompt: str = "Hello") -> tuple[ReplyRequest, ReplyChunk]:
    """The request as the service passes it to generate_title: with the answer's conversation id."""
    request = request_for(prompt)
    last = list(provider.stream_reply(request))[-1]
    return replace(request, upstream_conversation_id=last.upstream_conversation_id), last


def exercise(provider: ChatGPTProvider) -> None:
    """Every operation once, as the service would use them: new, continue, branch at the root, title..."""
    first_request, first = answered(provider)
    conversation_id = first.upstream_conversation_id
    assert conversation_id is not None
    assert provider.generate_title(first_request, "") is not None
    ask(provider, "More", conversation_id=conversation_id, parent_id=first.upstream_message_id)
    ask(provider, "Instead", conversation_id=conversation_id)
    provider.rename(conversation_id, "Renamed")
    provider.delete(conversation_id)
    provider.clear()


# --- replies ---------------------------------------------------------------------------------------


def test_new_conversation_sends_the_local_id_and_reports_the_upstream_ids(
    backend: FakeChatGPTBackend, provider: ChatGPTProvider
) -> None:
    backend.reply = LONG_REPLY
    request = request_for("Tell me about foxes")

    chunks = list(provider.stream_reply(request))

    *deltas, last = chunks
    assert text_of(chunks) == LONG_REPLY
    assert len(deltas) > 10 and all(chunk.delta and chunk.finish_reason is None for chunk in deltas)
    assert (last.delta, last.finish_reason, last.model) == ("", "stop", MODEL)
    [sent] = backend.requests
    assert (sent.method, sent.path) == ("POST", "conversation")
    assert sent.body["conversation_id"] is None
    assert sent.body["messages"][0]["id"] == request.user_message_id
    assert sent.body["messages"][0]["content"]["parts"] == ["Tell me about foxes"]
    conversation = backend.conversations[last.upstream_conversation_id]
    answer = conversation.mapping[last.upstream_message_id]
    assert answer.parent == request.user_message_id and answer.text == LONG_REPLY
    assert conversation.mapping[request.user_message_id].text == "Tell me about foxes"
    assert {(c.upstream_conversation_id, c.upstream_message_id) for c in chunks} == {
        (conversation.id, answer.id)
    }


def test_continue_sends_the_stored_upstream_ids(
    backend: FakeChatGPTBackend, provider: ChatGPTProvider
) -> None:
    first = ask(provider, "One")[-1]
    request = request_for("Two", first.upstream_conversation_id, first.upstream_message_id)

    second = list(provider.stream_reply(request))[-1]

    sent = backend.requests[-1].body
    assert sent["conversation_id"] == first.upstream_conversation_id
    assert sent["parent_message_id"] == first.upstream_message_id
    assert sent["messages"][0]["id"] == request.user_message_id
    assert second.upstream_conversation_id == first.upstream_conversation_id
    mapping = backend.conversations[first.upstream_conversation_id].mapping
    assert mapping[request.user_message_id].parent == first.upstream_message_id
    assert mapping[second.upstream_message_id].parent == request.user_message_id


def test_branch_makes_two_children_of_one_parent_upstream(
    backend: FakeChatGPTBackend, provider: ChatGPTProvider
) -> None:
    first = ask(provider, "One")[-1]
    a = request_for("Two", first.upstream_conversation_id, first.upstream_message_id)
    b = request_for("Two, differently", first.upstream_conversation_id, first.upstream_message_id)

    list(provider.stream_reply(a))
    list(provider.stream_reply(b))

    mapping = backend.conversations[first.upstream_conversation_id].mapping
    assert mapping[first.upstream_message_id].children == [a.user_message_id, b.user_message_id]


def test_branch_at_the_first_message_goes_under_its_upstream_parent(
    backend: FakeChatGPTBackend, provider: ChatGPTProvider
) -> None:
    first_request = request_for("One")
    first = list(provider.stream_reply(first_request))[-1]
    again = request_for("One, differently", first.upstream_conversation_id)

    list(provider.stream_reply(again))

    assert [(r.method, r.path) for r in backend.requests[1:]] == [
        ("GET", f"conversation/{first.upstream_conversation_id}"),
        ("POST", "conversation"),
    ]
    mapping = backend.conversations[first.upstream_conversation_id].mapping
    hidden_system = mapping[first_request.user_message_id].parent
    assert mapping[hidden_system].role == "system"
    assert mapping[hidden_system].children == [first_request.user_message_id, again.user_message_id]


def test_new_conversations_stay_separate(backend: FakeChatGPTBackend, provider: ChatGPTProvider) -> None:
    """Trap: a reused Chatbot sends its last conversation id when asked for a new conversation."""
    one = ask(provider, "One")[-1]
    two = ask(provider, "Two")[-1]

    assert one.upstream_conversation_id != two.upstream_conversation_id
    assert [r.body["conversation_id"] for r in backend.requests] == [None, None]


@pytest.mark.parametrize("raw_utf8", [False, True], ids=["ascii-escaped", "raw-utf8"])
def test_non_ascii_and_awkward_text_round_trips(
    backend: FakeChatGPTBackend, provider: ChatGPTProvider, raw_utf8: bool
) -> None:
    """Trap: revChatGPT parses repr(line); raw UTF-8 lines (Go backends) were silently dropped."""
    backend.reply = AWKWARD_TEXT
    backend.chunk_chars = 2
    backend.raw_utf8 = raw_utf8

    chunks = ask(provider, "你好 «prompt»")

    assert text_of(chunks) == AWKWARD_TEXT
    assert chunks[-1].finish_reason == "stop"
    assert backend.requests[0].body["messages"][0]["content"]["parts"] == ["你好 «prompt»"]


@pytest.mark.parametrize(
    ("finish_type", "expected"), [("stop", "stop"), ("max_tokens", "length"), (None, "interrupted")]
)
def test_finish_reason_is_mapped(
    backend: FakeChatGPTBackend, provider: ChatGPTProvider, finish_type: str | None, expected: str
) -> None:
    backend.finish_type = finish_type

    assert ask(provider)[-1].finish_reason == expected


def test_a_stream_cut_short_ends_interrupted_with_the_text_so_far(
    backend: FakeChatGPTBackend, provider: ChatGPTProvider
) -> None:
    backend.reply = LONG_REPLY
    backend.break_after = 2

    chunks = ask(provider)

    assert text_of(chunks) == LONG_REPLY[: 2 * backend.chunk_chars]
    assert chunks[-1].finish_reason == "interrupted"
    assert chunks[-1].upstream_message_id is not None


def test_a_stream_without_any_answer_is_an_error(
    backend: FakeChatGPTBackend, provider: ChatGPTProvider
) -> None:
    backend.break_after = 0

    with pytest.raises(UpstreamError, match="without sending an answer"):
        ask(provider)


def test_a_dropped_connection_mid_answer_is_an_error(
    backend: FakeChatGPTBackend, provider: ChatGPTProvider
) -> None:
    backend.reply = LONG_REPLY
    backend.abort_after = 2
    received: list[ReplyChunk] = []

    with pytest.raises(UpstreamError):
        for chunk in provider.stream_reply(request_for("Hi")):
            received.append(chunk)

    assert text_of(received) == LONG_REPLY[: 2 * backend.chunk_chars]


def test_an_error_event_in_the_stream_is_an_error(
    backend: FakeChatGPTBackend, provider: ChatGPTProvider
) -> None:
    """Trap: revChatGPT skips {"message": null, "error": ...} events, so the answer just looked cut."""
    backend.stream_error = "Something went wrong while generating the response."

    with pytest.raises(UpstreamError, match="Something went wrong while generating"):
        ask(provider)


def test_model_is_sent_and_reported_and_gpt4_needs_no_arkose_lookup(
    backend: FakeChatGPTBackend, provider: ChatGPTProvider, capfd: pytest.CaptureFixture[str]
) -> None:
    """Trap: for gpt-4* the library fetches an Arkose token from a third-party host (and prints)."""
    chunks = ask(provider, model="gpt-4")

    assert chunks[-1].model == "gpt-4"
    sent = backend.requests[0].body
    assert sent["model"] == "gpt-4" and "arkose_token" not in sent
    assert capfd.readouterr().out == ""


def test_closing_the_stream_early_stops_reading_upstream(
    backend: FakeChatGPTBackend, provider: ChatGPTProvider
) -> None:
    backend.reply = LONG_REPLY
    backend.event_delay = 0.05
    stream = provider.stream_reply(request_for("Hi"))

    first = next(stream)
    stream.close()

    backend.wait(lambda: backend.aborted_streams == 1, timeout=2)
    answer = backend.conversations[first.upstream_conversation_id].mapping[first.upstream_message_id]
    assert len(answer.text) < len(LONG_REPLY)
    wait_until(lambda: backend.open_connections == 0)


def test_no_connection_is_left_open(backend: FakeChatGPTBackend, provider: ChatGPTProvider) -> None:
    exercise(provider)

    wait_until(lambda: backend.open_connections == 0)


def test_concurrent_calls_from_threads_do_not_mix(
    backend: FakeChatGPTBackend, provider: ChatGPTProvider
) -> None:
    backend.reply = lambda prompt: f"Echo: {prompt} " * 3
    backend.event_delay = 0.005
    prompts = [f"prompt {i}" for i in range(16)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda prompt: ask(provider, prompt), prompts))

    assert [text_of(chunks) for chunks in results] == [f"Echo: {p} " * 3 for p in prompts]
    assert len({chunks[-1].upstream_conversation_id for chunks in results}) == len(prompts)


def test_concurrent_calls_under_gevent(backend: FakeChatGPTBackend) -> None:
    """The service runs under gevent with monkey patching: greenlets must stream side by side."""
    backend.reply = lambda prompt: f"Echo: {prompt}"
    backend.chunk_chars = 2
    backend.event_delay = 0.05  # Echo: greenlet N -> 9 events, ~0.4 s each reply
    script = f"""
import json, sys, time, uuid
from gevent import monkey
monkey.patch_all()
import gevent
sys.path.insert(0, {str(ROOT)!r})
from services.providers.base import ChatMessage, ReplyRequest
from services.providers.chatgpt import ChatGPTProvider

provider = ChatGPTProvider(access_token={backend.token!r}, base_url={backend.url!r}, timeout=5)

def ask(i):
    request = ReplyRequest([ChatMessage("user", f"greenlet {{i}}")], "", str(uuid.uuid4()))
    return "".join(chunk.delta for chunk in provider.stream_reply(request))

start = time.perf_counter()
jobs = [gevent.spawn(ask, i) for i in range(6)]
gevent.joinall(jobs, raise_error=True)
print(json.dumps({{"answers": [job.value for job in jobs], "elapsed": time.perf_counter() - start}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT, check=False
    )

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["answers"] == [f"Echo: greenlet {i}" for i in range(6)]
    assert result["elapsed"] < 1.5  # one after the other: 6 x ~0.4 s


# --- titles and mirrored changes -------------------------------------------------------------------


def test_generate_title_asks_for_the_answer_to_the_user_message(
    backend: FakeChatGPTBackend, provider: ChatGPTProvider
) -> None:
    request, last = answered(provider)

    title = provider.generate_title(request, "ignored")

    assert title == "A fake title"
    sent = backend.requests[-1]
    assert (sent.method, sent.path) == ("POST", f"conversation/gen_title/{last.upstream_conversation_id}")
    assert sent.body["message_id"] == last.upstream_message_id
    assert backend.conversations[last.upstream_conversation_id].title == "A fake title"


def test_generate_title_is_best_effort(backend: FakeChatGPTBackend, provider: ChatGPTProvider) -> None:
    request, last = answered(provider)

    assert provider.generate_title(replace(request, upstream_conversation_id=None), "") is None
    assert provider.generate_title(replace(request, user_message_id=str(uuid.uuid4())), "") is None
    backend.fail_next(500, "title service down")
    assert provider.generate_title(request, "") is None
    backend.title = "  "
    assert provider.generate_title(request, "") is None
    assert sum(path.startswith("conversation/gen_title/") for path in backend.paths()) == 1


def test_rename_delete_and_clear_reach_the_backend(
    backend: FakeChatGPTBackend, provider: ChatGPTProvider
) -> None:
    one = ask(provider, "One")[-1].upstream_conversation_id
    two = ask(provider, "Two")[-1].upstream_conversation_id
    assert one is not None and two is not None

    provider.rename(one, "Über «foxes»")
    assert backend.conversations[one].title == "Über «foxes»"
    provider.delete(one)
    assert not backend.conversations[one].is_visible and backend.conversations[two].is_visible
    provider.clear()
    assert not backend.conversations[two].is_visible

    assert [(r.method, r.path, r.body) for r in backend.requests[2:]] == [
        ("PATCH", f"conversation/{one}", {"title": "Über «foxes»"}),
        ("PATCH", f"conversation/{one}", {"is_visible": False}),
        ("PATCH", "conversations", {"is_visible": False}),
    ]


Operation = Callable[[ChatGPTProvider, str], object]
OPERATIONS: dict[str, Operation] = {
    "new": lambda p, cid: ask(p),
    "continue": lambda p, cid: ask(p, conversation_id=cid, parent_id=str(uuid.uuid4())),
    "branch-at-root": lambda p, cid: ask(p, conversation_id=cid),
    "rename": lambda p, cid: p.rename(cid, "Title"),
    "delete": lambda p, cid: p.delete(cid),
    "clear": lambda p, cid: p.clear(),
}
NAMING_A_CONVERSATION = [name for name in OPERATIONS if name not in ("new", "clear")]


@pytest.fixture
def conversation_id(provider: ChatGPTProvider) -> str:
    cid = ask(provider)[-1].upstream_conversation_id
    assert cid is not None
    return cid


@pytest.mark.parametrize("operation", OPERATIONS)
def test_refusals_raise_upstream_error(
    backend: FakeChatGPTBackend, provider: ChatGPTProvider, conversation_id: str, operation: str
) -> None:
    backend.fail_next(500, "The server had an error while processing your request.")
    with pytest.raises(UpstreamError, match=r"HTTP 500: The server had an error") as refused:
        OPERATIONS[operation](provider, conversation_id)
    assert refused.value.details["upstream_status"] == 500

    backend.fail_next(429, {"message": "Too many requests in 1 hour. Try again later.", "code": "rate"})
    with pytest.raises(UpstreamError, match=r"rate limiting.*Too many requests in 1 hour"):
        OPERATIONS[operation](provider, conversation_id)


@pytest.mark.parametrize("operation", OPERATIONS)
def test_a_refused_token_says_to_set_chatgpt_access_token(
    backend: FakeChatGPTBackend, conversation_id: str, operation: str
) -> None:
    wrong = ChatGPTProvider(access_token="expired-token-value", base_url=backend.url, timeout=5)

    with pytest.raises(UpstreamError) as refused:
        OPERATIONS[operation](wrong, conversation_id)

    message = str(refused.value)
    assert "refused the access token" in message and "CHATGPT_ACCESS_TOKEN" in message
    assert "Could not parse your authentication token" in message
    assert "expired-token-value" not in message
    assert backend.requests[-1].headers["authorization"] == "Bearer expired-token-value"


def test_a_forbidden_answer_is_a_refused_token(
    backend: FakeChatGPTBackend, provider: ChatGPTProvider
) -> None:
    backend.fail_next(403, "Forbidden")

    with pytest.raises(UpstreamError, match=r"refused the access token \(HTTP 403: Forbidden\)"):
        ask(provider)


@pytest.mark.parametrize("operation", NAMING_A_CONVERSATION)
def test_an_unknown_conversation_is_not_found(provider: ChatGPTProvider, operation: str) -> None:
    missing = str(uuid.uuid4())

    with pytest.raises(ConversationNotFound, match=missing) as not_found:
        OPERATIONS[operation](provider, missing)

    assert not_found.value.details["upstream_conversation_id"] == missing


def test_a_404_for_a_new_conversation_points_at_the_base_url(backend: FakeChatGPTBackend) -> None:
    misplaced = ChatGPTProvider(access_token=backend.token, base_url=backend.origin + "/api/", timeout=5)

    with pytest.raises(UpstreamError, match="CHATGPT_BASE_URL") as refused:
        ask(misplaced)

    assert not isinstance(refused.value, ConversationNotFound)
    assert backend.requests[0].path == "/api/conversation"


# --- timeouts and connections ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "operation",
    [
        pytest.param(lambda p: ask(p), id="reply"),
        # revChatGPT gives no timeout to anything but the answer request
        pytest.param(lambda p: p.rename(str(uuid.uuid4()), "Title"), id="rename"),
    ],
)
def test_a_slow_backend_times_out(
    backend: FakeChatGPTBackend, operation: Callable[[ChatGPTProvider], object]
) -> None:
    backend.delay = 2
    impatient = ChatGPTProvider(access_token=backend.token, base_url=backend.url, timeout=0.3)

    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        operation(impatient)

    assert time.monotonic() - started < 1.5


def test_a_stall_mid_answer_times_out(backend: FakeChatGPTBackend) -> None:
    backend.event_delay = 2
    impatient = ChatGPTProvider(access_token=backend.token, base_url=backend.url, timeout=0.3)
    received: list[ReplyChunk] = []

    with pytest.raises(UpstreamTimeout):
        for chunk in impatient.stream_reply(request_for("Hi")):
            received.append(chunk)

    assert text_of(received) == "Hel"


def test_an_unreachable_backend_is_an_upstream_error(backend: FakeChatGPTBackend) -> None:
    url = backend.url
    backend.stop()
    gone = ChatGPTProvider(access_token="token", base_url=url, timeout=2)

    with pytest.raises(UpstreamError, match="Could not reach ChatGPT") as failed:
        ask(gone)

    assert not isinstance(failed.value, UpstreamTimeout)


# --- configuration and the library's traps ---------------------------------------------------------


def test_the_base_url_is_per_provider_and_normalised(monkeypatch: pytest.MonkeyPatch) -> None:
    """Trap: revChatGPT reads CHATGPT_BASE_URL once, at import, and appends paths without a "/"."""
    monkeypatch.setenv("CHATGPT_BASE_URL", "http://127.0.0.1:9/backend-api/")
    with FakeChatGPTBackend(token="one") as first, FakeChatGPTBackend(token="two") as second:
        one = ChatGPTProvider(access_token="one", base_url=first.url.rstrip("/"), timeout=5)
        two = ChatGPTProvider(access_token="two", base_url=f"  {second.url}  ", timeout=5)

        assert text_of(ask(one)) and text_of(ask(two)) and text_of(ask(one))

        assert one.base_url == first.url and two.base_url == second.url
        assert (first.paths(), second.paths()) == (["conversation", "conversation"], ["conversation"])


@pytest.mark.parametrize(
    ("settings", "complaint"),
    [
        ({"access_token": "", "base_url": "http://127.0.0.1/backend-api/"}, "CHATGPT_ACCESS_TOKEN"),
        ({"access_token": "token", "base_url": ""}, "CHATGPT_BASE_URL"),
        ({"access_token": "token", "base_url": "127.0.0.1:8080/backend-api/"}, "CHATGPT_BASE_URL"),
    ],
)
def test_missing_configuration_is_reported(settings: dict[str, str], complaint: str) -> None:
    with pytest.raises(UpstreamNotConfigured, match=complaint):
        ChatGPTProvider(**settings)


def test_no_puid_lookup_and_no_native_tls_library(
    backend: FakeChatGPTBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trap: Chatbot.__init__ asks OPENAI_MODELS_URL (default: a third-party host) for a PUID
    through tls_client, whose Go runtime would start in-process (and does not survive fork)."""
    import tls_client.cffi

    monkeypatch.setenv("OPENAI_MODELS_URL", backend.url + "models")
    provider = ChatGPTProvider(access_token=backend.token, base_url=backend.url, timeout=5)

    exercise(provider)

    assert "models" not in backend.paths()
    assert all("puid" not in name for r in backend.requests for name in r.headers)
    assert tls_client.cffi.load_library.cache_info().currsize == 0


def test_proxy_variables_do_not_catch_loopback(
    backend: FakeChatGPTBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trap: requests follows HTTP(S)_PROXY / ALL_PROXY, for 127.0.0.1 too unless NO_PROXY says otherwise."""
    for name in PROXY_VARIABLES:
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    provider = ChatGPTProvider(access_token=backend.token, base_url=backend.url, timeout=5)

    exercise(provider)

    assert not any(r.proxied for r in backend.requests)


def test_an_explicit_proxy_is_used(backend: FakeChatGPTBackend) -> None:
    proxied = ChatGPTProvider(
        access_token=backend.token,
        base_url="http://127.0.0.1:9/backend-api/",  # nothing listens there: only the proxy can answer
        proxy=backend.origin,
        timeout=5,
    )

    assert text_of(ask(proxied)) == backend.reply
    assert [r.proxied for r in backend.requests] == [True]


def test_nothing_is_written_under_home_or_the_working_directory(
    backend: FakeChatGPTBackend, provider: ChatGPTProvider, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Trap: Chatbot.__init__ creates ~/.config/revChatGPT (and fails if HOME does not exist)."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("USERPROFILE", str(home))
    monkeypatch.chdir(cwd)

    exercise(provider)
    monkeypatch.setenv("HOME", str(tmp_path / "missing"))
    exercise(provider)

    assert list(home.iterdir()) == [] and list(cwd.iterdir()) == []
    assert not (tmp_path / "missing").exists()


def test_stdout_stays_clean(
    backend: FakeChatGPTBackend, provider: ChatGPTProvider, capfd: pytest.CaptureFixture[str]
) -> None:
    """Trap: revChatGPT prints (PUID, "Conversation unavailable", captcha and Arkose messages)."""
    exercise(provider)
    with pytest.raises(ConversationNotFound):
        ask(provider, conversation_id=str(uuid.uuid4()))
    ask(provider, model="gpt-4")

    assert capfd.readouterr().out == ""


def test_the_access_token_is_never_logged(
    backend: FakeChatGPTBackend, provider: ChatGPTProvider, caplog: pytest.LogCaptureFixture
) -> None:
    """Trap: Chatbot.__init__ and set_access_token log their arguments, token included, at DEBUG."""
    caplog.set_level(logging.DEBUG)

    exercise(provider)

    assert "Entering post_messages" in caplog.text  # revChatGPT's DEBUG logging was captured
    assert backend.token not in caplog.text


# --- the fake itself -------------------------------------------------------------------------------


@pytest.mark.parametrize("raw_utf8", [False, True])
def test_the_fake_escapes_non_ascii_like_chatgpt_unless_told_otherwise(
    backend: FakeChatGPTBackend, raw_utf8: bool
) -> None:
    backend.reply = "你好"
    backend.raw_utf8 = raw_utf8
    session = requests.Session()
    session.trust_env = False
    with session:
        body = {
            "action": "next",
            "messages": [{"id": "m1", "author": {"role": "user"}, "content": {"parts": ["Hi"]}}],
            "conversation_id": None,
            "parent_message_id": "root",
            "model": MODEL,
        }
        raw = session.post(
            backend.url + "conversation", json=body, headers={"Authorization": f"Bearer {backend.token}"}
        ).content

    assert raw.endswith(b"data: [DONE]\n\n")
    assert ("你好".encode() in raw) is raw_utf8
    assert (b"\\u4f60\\u597d" in raw) is not raw_utf8


def test_the_fake_lists_and_loads_conversations(
    backend: FakeChatGPTBackend, provider: ChatGPTProvider
) -> None:
    ids = [ask(provider, f"Question {i}")[-1].upstream_conversation_id for i in range(3)]
    session = requests.Session()
    session.trust_env = False
    session.headers["Authorization"] = f"Bearer {backend.token}"
    with session:
        page = session.get(backend.url + "conversations", params={"offset": 1, "limit": 1}).json()
        loaded = session.get(backend.url + f"conversation/{ids[0]}").json()
        missing = session.get(backend.url + f"conversation/{uuid.uuid4()}")

    assert (page["total"], [item["id"] for item in page["items"]]) == (3, [ids[1]])
    assert loaded["conversation_id"] == ids[0] and loaded["current_node"] in loaded["mapping"]
    assert missing.status_code == 404 and "detail" in missing.json()
