"""A body sent without Content-Length (`Transfer-Encoding: chunked`) counts against
MAX_BODY_BYTES like any other: over it is a 413, never a body cut at the limit and parsed."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from flask.testing import FlaskClient

from fakes.openai_upstream import FakeOpenAI
from tests.conftest import UPSTREAM_KEY
from tests.helpers import error_of, ok
from tests.server_process import HTTP, ServerProcess

LIMIT = 1024
PADDED = b'{"limit": 5}' + b" " * (3 * LIMIT)
"""Valid JSON whatever its length: cut at the limit, it would still parse (and be answered 200)."""


def chunks(body: bytes, size: int = 100) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def post_chunked(client: FlaskClient, body: bytes):  # type: ignore[no-untyped-def]
    """As a server that decodes chunked bodies hands them on: `Transfer-Encoding: chunked` (so no
    length counts), the stream ending where the body does (`wsgi.input_terminated`)."""
    return client.post("/api/chat/conversation", input_stream=io.BytesIO(body), content_type="application/json",
                       headers={"Transfer-Encoding": "chunked"}, environ_overrides={"wsgi.input_terminated": True})


@pytest.mark.parametrize("settings_overrides", [{"max_body_bytes": LIMIT}])
def test_a_chunked_body_over_the_limit_is_a_413(client: FlaskClient) -> None:
    assert error_of(post_chunked(client, PADDED), 413)["code"] == "body_too_large"
    assert error_of(post_chunked(client, PADDED[: LIMIT + 1]), 413)["code"] == "body_too_large"


@pytest.mark.parametrize("settings_overrides", [{"max_body_bytes": LIMIT}])
def test_a_chunked_body_up_to_the_limit_is_read_whole(client: FlaskClient) -> None:
    assert ok(post_chunked(client, PADDED[:LIMIT])) == []


@pytest.mark.e2e
def test_the_real_server_answers_a_chunked_body_over_the_limit_with_a_413(
    database_url: str, fake_upstream: FakeOpenAI
) -> None:
    env = {"DATABASE_URL": database_url, "OPENAI_API_KEY": UPSTREAM_KEY, "OPENAI_BASE_URL": fake_upstream.url,
           "GENERATE_TITLES": "false", "MAX_BODY_BYTES": str(LIMIT)}
    with ServerProcess(env) as server:
        url = f"{server.url}/api/chat/conversation"
        headers = {"Content-Type": "application/json"}
        over = HTTP.post(url, content=chunks(PADDED), headers=headers, timeout=10)
        assert over.request.headers["transfer-encoding"] == "chunked"
        assert "content-length" not in over.request.headers
        assert over.status_code == 413 and over.json()["error"]["code"] == "body_too_large"
        within = HTTP.post(url, content=chunks(PADDED[:LIMIT]), headers=headers, timeout=10)
        assert within.status_code == 200 and within.json() == {"response": []}
