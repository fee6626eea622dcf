"""Several upstreams (`UPSTREAMS`): fallback on each failure class, none after the first token,
circuit breakers opening and closing, routing by model, metrics; against two fake upstreams
on loopback, through the provider and through the routes."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from pydantic import ValidationError

from config import Settings
from fakes.chatgpt_backend import FakeChatGPTBackend
from fakes.openai_upstream import Behaviour, Fail, FakeOpenAI, Hang, Reply, Reset, echo
from services import tokens
from services.errors import InvalidRequest, UpstreamError
from services.metrics import Metrics
from services.providers import build_provider
from services.providers.base import ChatMessage, CompletionRequest, ReplyChunk, ReplyRequest
from services.providers.circuit_breaker import CircuitBreaker, Pass
from services.providers.fallback import FallbackProvider
from services.providers.openai_compat import OpenAIProvider
from tests.conftest import make_settings
from tests.helpers import ask, error_of, history, sse_json

KEY = "sk-fallback"
COOL_DOWN = 0.2


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[FakeOpenAI, FakeOpenAI]]:
    with FakeOpenAI(api_key=KEY) as one, FakeOpenAI(api_key=KEY) as two:
        yield one, two


@pytest.fixture
def first(fakes: tuple[FakeOpenAI, FakeOpenAI]) -> Iterator[FakeOpenAI]:
    fakes[0].reset()
    yield fakes[0]
    fakes[0].reset()


@pytest.fixture
def second(fakes: tuple[FakeOpenAI, FakeOpenAI]) -> Iterator[FakeOpenAI]:
    fakes[1].reset()
    yield fakes[1]
    fakes[1].reset()


def upstreams(
    first: FakeOpenAI, second: FakeOpenAI, entries: tuple[dict[str, Any], dict[str, Any]] = ({}, {})
) -> list[dict[str, Any]]:
    return [
        {"name": "first", "base_url": first.url, "api_key": KEY, **entries[0]},
        {"name": "second", "base_url": second.url, "api_key": KEY, **entries[1]},
    ]


def settings_for(
    first: FakeOpenAI, second: FakeOpenAI, entries: tuple[dict[str, Any], dict[str, Any]] = ({}, {}), **overrides: Any
) -> Settings:
    values: dict[str, Any] = {
        "upstreams": upstreams(first, second, entries),
        "circuit_breaker_failures": 2,
        "circuit_breaker_cooldown_seconds": COOL_DOWN,
        **overrides,
    }
    return make_settings("sqlite://", None, **values)


def fallback(
    first: FakeOpenAI, second: FakeOpenAI, entries: tuple[dict[str, Any], dict[str, Any]] = ({}, {}), **overrides: Any
) -> tuple[FallbackProvider, Metrics]:
    metrics = Metrics()
    provider = build_provider(settings_for(first, second, entries, **overrides), metrics)
    assert isinstance(provider, FallbackProvider)
    return provider, metrics


def answer(provider: FallbackProvider, model: str = "gpt-test") -> list[ReplyChunk]:
    request = ReplyRequest([ChatMessage("user", "Hi")], model, str(uuid.uuid4()))
    return list(provider.stream_reply(request))


def text_of(chunks: list[ReplyChunk]) -> str:
    return "".join(chunk.delta for chunk in chunks)


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics._registry.get_sample_value(name, labels) or 0.0  # type: ignore[union-attr]


# -- which upstream answers --------------------------------------------------------------


def test_without_upstreams_the_one_openai_upstream_is_built_as_before(first: FakeOpenAI) -> None:
    settings = make_settings("sqlite://", first.url)
    assert isinstance(build_provider(settings, Metrics()), OpenAIProvider)


FAILURES: dict[str, Behaviour] = {
    "500": Fail(500, "exploded"),
    "503": Fail(503, "overloaded"),
    "429": Fail(429, "slow down", headers={"Retry-After": "0"}),
    "connection reset": Reset(),
    "timeout": Hang(),
}


@pytest.mark.parametrize("failure", FAILURES.values(), ids=FAILURES.keys())
def test_a_failure_before_the_first_token_is_answered_by_the_next(
    first: FakeOpenAI, second: FakeOpenAI, failure: Behaviour
) -> None:
    provider, metrics = fallback(first, second, upstream_read_timeout=0.3)
    first.script(failure)
    chunks = answer(provider)
    assert text_of(chunks) == "Echo: Hi"
    assert chunks[0].upstream == "second" and chunks[0].model == "gpt-test"
    assert len(first.requests) == 1 and len(second.requests) == 1
    assert sample(metrics, "gpt_api_upstream_requests_total", upstream="first") == 1
    assert sample(metrics, "gpt_api_upstream_requests_total", upstream="second") == 1
    assert sample(metrics, "gpt_api_upstream_fallbacks_total", upstream="first", reason="failed") == 1
    failures = metrics._registry.collect()  # type: ignore[union-attr]
    counted = [s for m in failures for s in m.samples if s.name == "gpt_api_upstream_failures_total"]
    assert [(s.labels["upstream"], s.value) for s in counted] == [("first", 1.0)]


def test_a_request_the_upstream_refuses_is_not_passed_on(first: FakeOpenAI, second: FakeOpenAI) -> None:
    provider, metrics = fallback(first, second)
    first.script(Fail(400, "bad request"))
    with pytest.raises(UpstreamError) as raised:
        answer(provider)
    assert raised.value.details["upstream_status"] == 400
    assert not second.requests
    assert not provider.upstreams[0].breaker.is_open


def test_a_failure_after_the_first_token_is_the_answer_s(first: FakeOpenAI, second: FakeOpenAI) -> None:
    provider, metrics = fallback(first, second)
    first.script(Reply(text="one two three", chunks=["one ", "two ", "three"], break_after=1))
    received: list[str] = []
    with pytest.raises(UpstreamError):
        for chunk in provider.stream_reply(ReplyRequest([ChatMessage("user", "Hi")], "gpt-test", "m")):
            received.append(chunk.delta)
    assert received == ["one "] and not second.requests
    assert sample(metrics, "gpt_api_upstream_fallbacks_total", upstream="first", reason="failed") == 0


def test_when_every_upstream_fails_the_last_failure_is_raised(first: FakeOpenAI, second: FakeOpenAI) -> None:
    provider, _ = fallback(first, second)
    first.script(Fail(500, "one down"))
    second.script(Fail(502, "two down"))
    with pytest.raises(UpstreamError, match="two down"):
        answer(provider)


# -- circuit breakers ----------------------------------------------------------------------


def test_the_circuit_opens_after_failures_in_a_row_and_a_probe_closes_it(first: FakeOpenAI, second: FakeOpenAI) -> None:
    provider, metrics = fallback(first, second)
    first.default = lambda body: Fail(500, "down")
    for _ in range(2):
        assert answer(provider)[0].upstream == "second"
    assert len(first.requests) == 2
    assert sample(metrics, "gpt_api_upstream_circuit_open", upstream="first") == 1

    assert answer(provider)[0].upstream == "second"
    assert len(first.requests) == 2  # skipped while open
    assert sample(metrics, "gpt_api_upstream_fallbacks_total", upstream="first", reason="circuit_open") == 1

    time.sleep(COOL_DOWN + 0.05)
    first.default = echo
    assert answer(provider)[0].upstream == "first"  # the probe, answered
    assert sample(metrics, "gpt_api_upstream_circuit_open", upstream="first") == 0
    assert answer(provider)[0].upstream == "first"


def test_a_failed_probe_opens_the_circuit_again_at_once(first: FakeOpenAI, second: FakeOpenAI) -> None:
    provider, _ = fallback(first, second)
    first.default = lambda body: Fail(503, "down")
    answer(provider), answer(provider)
    time.sleep(COOL_DOWN + 0.05)
    assert answer(provider)[0].upstream == "second"
    assert len(first.requests) == 3  # the probe
    assert answer(provider)[0].upstream == "second"
    assert len(first.requests) == 3  # open again after one failure, not two


def test_with_every_circuit_open_the_request_fails_fast_saying_when_to_retry(
    first: FakeOpenAI, second: FakeOpenAI
) -> None:
    provider, _ = fallback(first, second, circuit_breaker_failures=1, circuit_breaker_cooldown_seconds=30)
    first.default = second.default = lambda body: Fail(500, "down")
    with pytest.raises(UpstreamError):
        answer(provider)
    with pytest.raises(UpstreamError, match="skipped for now") as raised:
        answer(provider)
    assert raised.value.details["retry_after"] == 30
    assert len(first.requests) == len(second.requests) == 1


def test_a_breaker_lets_one_probe_through_at_a_time() -> None:
    now = [0.0]
    breaker = CircuitBreaker(threshold=2, cooldown=10, clock=lambda: now[0])
    assert breaker.admit() is Pass.CLOSED
    breaker.failed(Pass.CLOSED)
    breaker.succeeded(Pass.CLOSED)  # a success in between: the count starts again
    breaker.failed(Pass.CLOSED)
    assert not breaker.is_open
    breaker.failed(Pass.CLOSED)
    assert breaker.is_open and breaker.admit() is None and breaker.retry_in() == 10
    now[0] = 10
    assert breaker.admit() is Pass.PROBE
    assert breaker.admit() is None  # one probe at a time
    breaker.abandoned(Pass.PROBE)  # its caller went away: another may probe
    assert breaker.admit() is Pass.PROBE
    breaker.succeeded(Pass.PROBE)
    assert not breaker.is_open and breaker.admit() is Pass.CLOSED


# -- routing by model ----------------------------------------------------------------------


def test_requests_go_to_the_upstreams_serving_their_model(first: FakeOpenAI, second: FakeOpenAI) -> None:
    provider, _ = fallback(first, second, ({"models": ["gpt-test"]}, {"models": ["other-model"]}))
    assert answer(provider, "other-model")[0].upstream == "second"
    assert answer(provider, "gpt-test")[0].upstream == "first"
    assert len(first.requests) == len(second.requests) == 1
    with pytest.raises(InvalidRequest, match="No upstream serves the model 'unknown'"):
        answer(provider, "unknown")
    assert provider.default_model == "gpt-test"


def test_an_upstream_with_a_stand_in_model_answers_for_the_others(first: FakeOpenAI, second: FakeOpenAI) -> None:
    provider, _ = fallback(
        first, second, ({"models": ["gpt-test"]}, {"models": ["local-model"], "model": "local-model"})
    )
    first.script(Fail(500, "down"))
    chunks = answer(provider, "gpt-test")
    assert chunks[0].upstream == "second" and chunks[0].model == "local-model"
    assert second.requests[0].body["model"] == "local-model"


def test_models_are_listed_from_every_upstream_each_once(first: FakeOpenAI, second: FakeOpenAI) -> None:
    first.models, second.models = ["a-1", "shared", "a-2"], ["shared", "b-1"]
    provider, _ = fallback(first, second, ({"models": ["a-1", "shared"]}, {}))
    assert [model["id"] for model in provider.list_models()] == ["a-1", "shared", "b-1"]
    first.models = second.models = ["x"]
    first.script(Fail(500))
    assert [model["id"] for model in fallback(first, second)[0].list_models()] == ["x"]


def test_a_raw_completion_falls_back_too(first: FakeOpenAI, second: FakeOpenAI) -> None:
    provider, _ = fallback(first, second)
    first.script(Fail(503, "overloaded"))
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": "Hi"}]}
    completion = provider.complete(CompletionRequest(body, "m"))
    assert completion.data["choices"][0]["message"]["content"] == "Echo: Hi"
    first.script(Fail(429, "slow down", headers={"Retry-After": "0"}))
    events = list(provider.stream_completion(CompletionRequest(body, "m")))
    assert "".join(e.data["choices"][0]["delta"].get("content") or "" for e in events if e.data["choices"]) == "Echo: Hi"
    assert len(first.requests) == 2 and len(second.requests) == 2


# -- through the routes -------------------------------------------------------------------


@pytest.fixture
def settings_overrides(first: FakeOpenAI, second: FakeOpenAI) -> dict[str, object]:
    return {
        "upstreams": upstreams(first, second),
        "circuit_breaker_failures": 2,
        "circuit_breaker_cooldown_seconds": COOL_DOWN,
    }


def test_ask_records_the_upstream_and_model_that_answered(
    client: FlaskClient, first: FakeOpenAI, second: FakeOpenAI
) -> None:
    first.script(Fail(500, "down"))
    answered = ask(client, "Hello")
    assert answered["message"] == "Echo: Hello"
    metadata = history(client, answered["conversation_id"])["mapping"][answered["parent_id"]]["message"]["metadata"]
    assert metadata["upstream"] == "second" and metadata["model_slug"] == "gpt-test"
    again = ask(client, "Again", conversation_id=answered["conversation_id"])
    metadata = history(client, answered["conversation_id"])["mapping"][again["parent_id"]]["message"]["metadata"]
    assert metadata["upstream"] == "first"
    exposition = client.get("/metrics").get_data(as_text=True)
    assert 'gpt_api_upstream_requests_total{upstream="first"} 2.0' in exposition
    assert 'gpt_api_upstream_requests_total{upstream="second"} 1.0' in exposition
    assert 'gpt_api_upstream_fallbacks_total{reason="failed",upstream="first"} 1.0' in exposition
    assert 'gpt_api_upstream_failures_total{code="upstream_error",upstream="first"} 1.0' in exposition


def test_a_streamed_ask_falls_back_before_its_first_token(
    client: FlaskClient, first: FakeOpenAI, second: FakeOpenAI
) -> None:
    first.script(Reset())
    response = client.post("/api/chat/ask", json={"prompt": "Hello", "stream": True})
    events = sse_json(response)
    assert events[-1]["response"]["message"] == "Echo: Hello" and len(second.requests) == 1


def test_every_upstream_failing_is_a_502_naming_the_conversation(
    client: FlaskClient, first: FakeOpenAI, second: FakeOpenAI
) -> None:
    first.script(Fail(500, "one down"))
    second.script(Fail(500, "two down"))
    error = error_of(client.post("/api/chat/ask", json={"prompt": "Hello"}), 502)
    assert "two down" in error["message"] and error["conversation_id"]


def test_chat_completions_fall_back_json_and_streamed(client: FlaskClient, first: FakeOpenAI, second: FakeOpenAI) -> None:
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": "Hi"}]}
    first.script(Fail(502, "bad gateway"))
    completion = client.post("/v1/chat/completions", json=body)
    assert completion.status_code == 200 and completion.get_json()["choices"][0]["message"]["content"] == "Echo: Hi"
    first.script(Fail(503, "overloaded"))
    streamed = client.post("/v1/chat/completions", json={**body, "stream": True})
    chunks = [json.loads(line[6:]) for line in streamed.get_data(as_text=True).splitlines()
              if line.startswith("data: {")]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "Echo: Hi"
    assert len(second.requests) == 2


def answer_node(client: FlaskClient, completion_id: str) -> dict[str, Any]:
    """The stored answer of a chat completion, from `msg/history` of whichever conversation holds it."""
    node_id = str(uuid.UUID(hex=completion_id.removeprefix("chatcmpl-")))
    for summary in client.post("/api/chat/conversation", json={}).get_json()["response"]:
        mapping = history(client, summary["id"])["mapping"]
        if node_id in mapping:
            return dict(mapping[node_id]["message"])
    raise AssertionError(f"no stored answer {completion_id}")


def test_chat_completions_record_the_upstream_and_model_that_answered(
    client: FlaskClient, first: FakeOpenAI, second: FakeOpenAI
) -> None:
    first.script(Fail(500, "down"))
    second.script(Reply(text="From the second", model="gpt-test-0613"))
    completion = client.post("/v1/chat/completions", json={"model": "gpt-test", "messages": [{"role": "user", "content": "A"}]})
    metadata = answer_node(client, completion.get_json()["id"])["metadata"]
    assert (metadata["upstream"], metadata["model_slug"]) == ("second", "gpt-test-0613")

    first.script(Reply(text="one two", chunks=["one ", "two"]))
    streamed = client.post(
        "/v1/chat/completions", json={"model": "gpt-test", "messages": [{"role": "user", "content": "B"}], "stream": True}
    )
    (completion_id,) = {json.loads(line[6:])["id"] for line in streamed.get_data(as_text=True).splitlines()
                        if line.startswith("data: {")}
    metadata = answer_node(client, completion_id)["metadata"]
    assert (metadata["upstream"], metadata["model_slug"]) == ("first", "gpt-test")


def test_a_model_no_upstream_serves_is_refused_before_anything_is_stored(
    database_url: str, first: FakeOpenAI, second: FakeOpenAI
) -> None:
    from app import create_app

    entries = ({"models": ["gpt-test"]}, {"models": ["other-model"]})
    app: Flask = create_app(make_settings(database_url, None, upstreams=upstreams(first, second, entries)))
    try:
        client = app.test_client()
        started = ask(client, "Hello")
        refused = [
            client.post("/api/chat/ask", json={"prompt": "Hi", "model": "unknown"}),
            client.post("/api/chat/ask", json={"prompt": "Hi", "model": "unknown", "stream": True}),
            client.post("/api/chat/ask", json={"prompt": "Hi", "model": "unknown", "convo_id": started["conversation_id"]}),
            client.post("/v1/responses", json={"input": "Hi", "model": "unknown"}),
            client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}], "model": "unknown"}),
        ]
        for response in refused:
            assert response.status_code == 400, response.get_data(as_text=True)
            assert "No upstream serves the model 'unknown'" in response.get_data(as_text=True)
        assert [c["id"] for c in client.post("/api/chat/conversation", json={}).get_json()["response"]] == [
            started["conversation_id"]
        ]
        assert len(history(client, started["conversation_id"])["mapping"]) == 4  # root, system, question, answer
        assert len(first.requests) == 1 and not second.requests
    finally:
        app.services.close()


def test_the_context_fits_the_window_of_a_stand_in_model_too(
    database_url: str, first: FakeOpenAI, second: FakeOpenAI
) -> None:
    from app import create_app

    entries = ({"models": ["gpt-test"]}, {"models": ["small-model"], "model": "small-model"})
    windows = {"gpt-test": 100_000, "small-model": 80}
    app: Flask = create_app(make_settings(database_url, None, upstreams=upstreams(first, second, entries),
                                          model_context_windows=windows, context_reserve_tokens=0))
    try:
        client = app.test_client()
        started = ask(client, "Question 0 about the weather")
        for n in range(1, 6):
            ask(client, f"Question {n} about the weather", conversation_id=started["conversation_id"])
        first.script(Fail(503, "overloaded"))
        last = ask(client, "Question 6 about the weather", conversation_id=started["conversation_id"])
        sent = second.requests[-1].body
        assert sent["model"] == "small-model"
        assert tokens.count_prompt([ChatMessage(m["role"], m["content"]) for m in sent["messages"]]) <= 80
        metadata = history(client, started["conversation_id"])["mapping"][last["parent_id"]]["message"]["metadata"]
        assert metadata["upstream"] == "second" and metadata["context"]["budget_tokens"] == 80
        assert metadata["context"]["messages_left_out"] == 13 - len(sent["messages"])
    finally:
        app.services.close()


def test_stopping_the_first_upstream_mid_stream_costs_only_that_stream(
    database_url: str, second: FakeOpenAI
) -> None:
    from app import create_app

    with FakeOpenAI(api_key=KEY) as doomed:
        pieces = [f"w{n} " for n in range(20)]
        doomed.script(Reply(text="".join(pieces), chunks=pieces, chunk_delay=0.05))
        app: Flask = create_app(make_settings(database_url, None, upstreams=upstreams(doomed, second),
                                              circuit_breaker_cooldown_seconds=COOL_DOWN))
        try:
            client = app.test_client()
            response = client.post("/api/chat/ask", json={"prompt": "long", "stream": True}, buffered=False)
            body = iter(response.response)
            first_event = json.loads(next(body).decode().removeprefix("data: "))
            doomed.stop()
            rest = b"".join(body).decode()
            response.close()
            assert "event: error" in rest  # the stream that was running from it, cut and marked
            conversation = first_event["response"]["conversation_id"]
            assert ask(client, "Next", conversation_id=conversation)["message"] == "Echo: Next"
            assert ask(client, "And the next")["message"] == "Echo: And the next"
        finally:
            app.services.close()


def test_a_chatgpt_upstream_that_fails_hands_the_local_path_to_the_next(
    database_url: str, second: FakeOpenAI
) -> None:
    from app import create_app

    with FakeChatGPTBackend() as backend:
        entries = [
            {"name": "account", "kind": "chatgpt", "access_token": backend.token, "base_url": backend.url},
            {"name": "api", "base_url": second.url, "api_key": KEY},
        ]
        app: Flask = create_app(make_settings(database_url, None, upstreams=entries))
        try:
            client = app.test_client()
            first_answer = ask(client, "One")
            assert first_answer["message"] == "Hello from the fake ChatGPT."
            backend.fail_next(503, "overloaded")
            second_answer = ask(client, "Two", conversation_id=first_answer["conversation_id"])
            assert second_answer["message"] == "Echo: Two"
            assert [(m["role"], m["content"]) for m in second.requests[-1].body["messages"]] == [
                ("user", "One"), ("assistant", "Hello from the fake ChatGPT."), ("user", "Two")
            ]
            mapping = history(client, first_answer["conversation_id"])["mapping"]
            assert mapping[first_answer["parent_id"]]["message"]["metadata"]["upstream"] == "account"
            assert mapping[second_answer["parent_id"]]["message"]["metadata"]["upstream"] == "api"
        finally:
            app.services.close()


# -- configuration --------------------------------------------------------------------------


def test_upstreams_come_from_a_toml_or_json_file(tmp_path: Path) -> None:
    toml = tmp_path / "upstreams.toml"
    toml.write_text(
        '[[upstreams]]\nname = "one"\napi_key = "k"\nmodels = ["a"]\n\n'
        '[[upstreams]]\nname = "two"\nbase_url = "http://127.0.0.1:11434/v1"\napi_key = "ollama"\nmodel = "b"\n'
    )
    settings = make_settings("sqlite://", None, upstreams_file=toml)
    assert [(u.name, u.models, u.model) for u in settings.upstreams] == [("one", ["a"], None), ("two", [], "b")]
    listed = tmp_path / "upstreams.json"
    listed.write_text(json.dumps({"upstreams": [{"name": "one", "api_key": "k"}]}))
    assert make_settings("sqlite://", None, upstreams_file=listed).upstreams[0].name == "one"


@pytest.mark.parametrize(
    ("upstreams", "message"),
    [
        ([{"name": "one"}], "an openai upstream needs api_key"),
        ([{"name": "one", "kind": "chatgpt", "access_token": "t"}], "needs access_token and base_url"),
        ([{"name": "one", "api_key": "k"}, {"name": "one", "api_key": "k"}], "a name of its own"),
        ([{"name": "one", "api_key": "k", "modles": ["a"]}], "Extra inputs are not permitted"),
        ([{"name": "a b", "api_key": "k"}], "should match pattern"),
        ([{"name": "one", "api_key": "k", "base_url": "localhost:8000/v1"}], "not an http:// or https:// URL"),
    ],
)
def test_a_wrong_upstream_list_is_refused_at_start_saying_why(upstreams: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        make_settings("sqlite://", None, upstreams=upstreams)


@pytest.mark.parametrize("url", ["localhost:8000/v1", "ftp://example.com/v1", "https:///v1"])
def test_a_base_url_the_client_cannot_speak_is_refused_at_start(url: str) -> None:
    for name in ("openai_base_url", "chatgpt_base_url"):
        with pytest.raises(ValidationError, match=f"{name}\n.*not an http:// or https:// URL with a host"):
            make_settings("sqlite://", None, **{name: url})


def test_upstreams_and_an_upstreams_file_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="not both"):
        make_settings("sqlite://", None, upstreams=[{"name": "one", "api_key": "k"}], upstreams_file=tmp_path / "x.json")
    with pytest.raises(ValidationError, match="UPSTREAMS_FILE"):
        make_settings("sqlite://", None, upstreams_file=tmp_path / "missing.json")
