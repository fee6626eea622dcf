"""`"stream": true`: server-sent events, and nothing lost when either side breaks off."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator

import pytest
from flask.testing import FlaskClient

from api.sse import EventPump
from api.v1.chunk_stream import ChunkPump
from fakes.openai_upstream import Fail, FakeOpenAI, Hang, Reply
from services.asking import Answer, AnswerEvent
from tests.helpers import ask, error_of, history, sse_events, sse_json, wait_until


def stream(client: FlaskClient, prompt: str = "Hi", **fields: object):  # type: ignore[no-untyped-def]
    return client.post("/api/chat/ask", json={"prompt": prompt, "stream": True, **fields})


def answers_of(client: FlaskClient, conversation_id: str) -> list[dict]:
    mapping = history(client, conversation_id)["mapping"]
    return [n["message"] for n in mapping.values()
            if n.get("message", {}).get("author", {}).get("role") == "assistant"]


@pytest.mark.parametrize("settings_overrides", [{}, {"store_while_asking": True}], ids=["stored-first", "store-while-asking"])
def test_stream_sends_text_so_far_and_deltas_then_done(client: FlaskClient, fake_upstream: FakeOpenAI) -> None:
    fake_upstream.script(Reply(text="Hello there, friend", chunks=["Hello", " there,", " friend"]))
    response = stream(client)
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    assert "upstream;dur=" in response.headers["Server-Timing"]
    raw = sse_events(response)
    assert raw[-1] == "[DONE]"
    events = sse_json(response)
    assert [e["delta"] for e in events] == ["Hello", " there,", " friend", ""]
    assert [e["response"]["message"] for e in events] == [
        "Hello", "Hello there,", "Hello there, friend", "Hello there, friend"]
    for event in events:
        assert list(event) == ["response", "delta"]
        assert list(event["response"]) == [
            "author", "citations", "conversation_id", "end_turn", "finish_details",
            "message", "model", "parent_id", "recipient"]
    assert events[0]["response"]["finish_details"] is None
    assert events[-1]["response"]["finish_details"] == "stop"
    assert events[-1]["response"]["end_turn"] is True
    assert len({e["response"]["parent_id"] for e in events}) == 1
    final = events[-1]["response"]
    [stored] = answers_of(client, final["conversation_id"])
    assert stored["id"] == final["parent_id"]
    assert stored["content"]["parts"] == ["Hello there, friend"]
    assert stored["status"] == "finished_successfully"


def test_streamed_answer_can_be_continued(client: FlaskClient, fake_upstream: FakeOpenAI) -> None:
    final = sse_json(stream(client, "One"))[-1]["response"]
    answer = ask(client, "Two", convo_id=final["conversation_id"])
    assert fake_upstream.requests[-1].body["messages"][1] == {"role": "assistant", "content": "Echo: One"}
    assert history(client, final["conversation_id"])["current_node"] == answer["parent_id"]


def test_stream_asks_the_upstream_to_stream(client: FlaskClient, fake_upstream: FakeOpenAI) -> None:
    sse_json(stream(client))
    assert fake_upstream.requests[0].body["stream"] is True


def test_upstream_failure_before_any_text_keeps_its_http_status(client: FlaskClient, fake_upstream: FakeOpenAI) -> None:
    fake_upstream.script(Fail(500, "down"))
    error = error_of(stream(client), 502)
    assert error["conversation_id"]


@pytest.mark.parametrize("settings_overrides", [{}, {"store_while_asking": True}], ids=["stored-first", "store-while-asking"])
def test_upstream_breaking_off_mid_answer_is_kept_and_reported(client: FlaskClient, fake_upstream: FakeOpenAI) -> None:
    fake_upstream.script(Reply(text="a b c d", chunks=["a ", "b ", "c ", "d"], break_after=2, chunk_delay=0.05))
    response = stream(client)
    assert response.status_code == 200
    text = response.get_data(as_text=True)
    assert "event: error\n" in text
    blocks = [b for b in text.split("\n\n") if b.startswith("event: error")]
    error = json.loads(blocks[0].split("data: ", 1)[1])["error"]
    assert error["code"] == "upstream_error"
    assert sse_events(response)[-1] == "[DONE]"
    [stored] = answers_of(client, error["conversation_id"])
    assert stored["content"]["parts"] == ["a b "]
    assert stored["status"] == "finished_partial_completion"
    assert stored["metadata"]["finish_details"] == {"type": "interrupted"}


def test_client_going_away_cancels_the_upstream_and_keeps_the_text(client: FlaskClient, fake_upstream: FakeOpenAI) -> None:
    pieces = [f"w{i} " for i in range(40)]
    fake_upstream.script(Reply(text="".join(pieces), chunks=pieces, chunk_delay=0.05))
    response = client.post("/api/chat/ask", json={"prompt": "long", "stream": True}, buffered=False)
    body = iter(response.response)
    first = json.loads(next(body).decode().removeprefix("data: "))
    conversation = first["response"]["conversation_id"]
    response.close()
    wait_until(lambda: fake_upstream.active_requests == 0, timeout=3)
    stored = wait_until(lambda: [a for a in answers_of(client, conversation)
                                 if a["status"] == "finished_partial_completion"])
    text = stored[0]["content"]["parts"][0]
    assert text.startswith("w0 ") and len(text) < len("".join(pieces))


def test_row_is_written_while_the_answer_streams(client: FlaskClient, fake_upstream: FakeOpenAI) -> None:
    fake_upstream.script(Reply(text="a b", chunks=["a ", "b"], chunk_delay=0.5))
    response = client.post("/api/chat/ask", json={"prompt": "x", "stream": True}, buffered=False)
    body = iter(response.response)
    first = json.loads(next(body).decode().removeprefix("data: "))
    [in_progress] = answers_of(client, first["response"]["conversation_id"])
    assert in_progress["status"] == "in_progress"
    assert in_progress["id"] == first["response"]["parent_id"]
    list(body)
    response.close()
    [done] = answers_of(client, first["response"]["conversation_id"])
    assert done["status"] == "finished_successfully" and done["content"]["parts"] == ["a b"]


@pytest.mark.parametrize("settings_overrides", [{"sse_keep_alive_seconds": 0.1}])
def test_keep_alive_comments_fill_long_silences(client: FlaskClient, fake_upstream: FakeOpenAI) -> None:
    fake_upstream.script(Reply(text="late", delay=0.35))
    response = stream(client)
    text = response.get_data(as_text=True)
    assert text.startswith(": keep-alive\n\n")
    assert text.count(": keep-alive") >= 2
    assert sse_json(response)[-1]["response"]["message"] == "late"


@pytest.mark.parametrize("settings_overrides", [{"upstream_read_timeout": 0.3, "sse_keep_alive_seconds": 0.1}])
def test_upstream_timeout_after_headers_is_an_error_event(client: FlaskClient, fake_upstream: FakeOpenAI) -> None:
    fake_upstream.script(Hang())
    text = stream(client).get_data(as_text=True)
    assert "event: error" in text and "upstream_timeout" in text
    assert text.endswith("data: [DONE]\n\n")


AN_EVENT = AnswerEvent(Answer(uuid.uuid4(), uuid.uuid4(), "gpt-test", "after"), "after")


@pytest.mark.parametrize(("pump_class", "item"), [(EventPump, AN_EVENT), (ChunkPump, {"choices": []})])
def test_a_pump_closed_on_its_own_reader_thread_does_not_wait_for_itself(pump_class: type, item: object) -> None:
    """A response body nobody closed is closed by the garbage collector, on whichever thread
    collects: once that was the pump's own reader, whose `join` of itself raised."""
    made = threading.Event()
    pumps: list = []

    def items() -> Iterator[object]:
        made.wait(5)
        pumps[0].close()  # on the reader thread, as the collector did
        yield item

    pumps.append(pump_class(items()))
    made.set()
    assert pumps[0].get(5) == item
