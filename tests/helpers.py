"""Small helpers shared by the route tests."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import Engine, text
from werkzeug.test import TestResponse


def post(client: FlaskClient, route: str, body: Any = None) -> TestResponse:
    """POST a JSON body to /api/chat/<route>."""
    return client.post(f"/api/chat/{route}", json={} if body is None else body)


def ok(response: TestResponse) -> Any:
    """The `response` payload of a 200 answer (fails with the body otherwise)."""
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert list(body) == ["response"]
    return body["response"]


def error_of(response: TestResponse, status: int) -> dict[str, Any]:
    """The error object of an error answer with this status, checked for shape."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    text = response.get_data(as_text=True)
    assert "Traceback" not in text and 'File "' not in text
    body = response.get_json()
    assert list(body) == ["error"]
    error = body["error"]
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and error["message"]
    return error


def ask(client: FlaskClient, prompt: str = "Hello", **fields: Any) -> dict[str, Any]:
    return ok(post(client, "ask", {"prompt": prompt, **fields}))


def history(client: FlaskClient, conversation_id: str) -> dict[str, Any]:
    return ok(post(client, "msg/history", {"convo_id": conversation_id}))


def sse_events(response: TestResponse) -> list[str]:
    """The `data:` payloads of an event stream, in order (comments dropped)."""
    events = []
    for block in response.get_data(as_text=True).split("\n\n"):
        data = [line[6:] for line in block.splitlines() if line.startswith("data: ")]
        if data:
            events.append("\n".join(data))
    return events


def sse_json(response: TestResponse) -> list[Any]:
    return [json.loads(event) for event in sse_events(response) if event != "[DONE]"]


def wait_until(condition: Callable[[], Any], timeout: float = 5.0) -> Any:
    """Poll until `condition()` is truthy; return its value or fail."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def check_tree(mapping: dict[str, Any]) -> None:
    """Every child lists its parent, every parent its children, one root without a message."""
    roots = [node for node in mapping.values() if node["parent"] is None]
    assert len(roots) == 1 and "message" not in roots[0]
    for node_id, node in mapping.items():
        assert node["id"] == node_id
        if node["parent"] is not None:
            assert node_id in mapping[node["parent"]]["children"]
        for child in node["children"]:
            assert mapping[child]["parent"] == node_id


def pending_for_search(engine: Engine) -> int:
    """Dialogue messages not in the search index yet (migration 0012)."""
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            return connection.execute(text("SELECT count(*) FROM message_words_pending")).scalar_one()
        unindexed = "SELECT count(*) FROM messages WHERE role IN ('user', 'assistant') AND search_vector IS NULL"
        return connection.execute(text(unindexed)).scalar_one()


def messages_scans_and_inserts(engine: Engine) -> tuple[int, int]:
    """(sequential scans of `messages`, rows inserted into it), as PostgreSQL's connections
    have reported them so far (one reports its counts as it ends, or at the end of a
    transaction a second after its last report, else after idling ten)."""
    with engine.connect() as connection:
        connection.execute(text("SELECT pg_stat_clear_snapshot()"))
        row = connection.execute(
            text("SELECT seq_scan, n_tup_ins FROM pg_stat_user_tables WHERE relname = 'messages'")
        ).one()
        return int(row[0]), int(row[1])


def messages_scans_once_reported(engine: Engine, inserted: int, timeout: float = 15.0) -> int:
    """Sequential scans of `messages` so far, once PostgreSQL reports `inserted` rows
    inserted into it (fails if it does not within `timeout`, or reports more)."""

    def reported() -> tuple[int, int] | None:
        counted = messages_scans_and_inserts(engine)
        return counted if counted[1] >= inserted else None

    scans, rows = wait_until(reported, timeout)
    assert rows == inserted
    return scans
