"""The error envelope for everything a client can get wrong at the HTTP level."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from tests.helpers import error_of

ROUTES = [
    "ask",
    "conversation",
    "msg/history",
    "change/title",
    "delete/conversation",
    "clear/conversations",
]


def test_unknown_route_is_a_json_404(client: FlaskClient) -> None:
    assert error_of(client.post("/api/chat/nope", json={}), 404)["code"] == "not_found"
    assert error_of(client.get("/nope"), 404)["code"] == "not_found"


@pytest.mark.parametrize("route", ROUTES)
def test_wrong_method_is_a_json_405(client: FlaskClient, route: str) -> None:
    response = client.get(f"/api/chat/{route}")
    assert error_of(response, 405)["code"] == "method_not_allowed"
    assert "POST" in response.headers["Allow"]


@pytest.mark.parametrize("route", ROUTES)
def test_non_json_is_a_415(client: FlaskClient, route: str) -> None:
    error = error_of(client.post(f"/api/chat/{route}", data="prompt=hi"), 415)
    assert error["code"] == "unsupported_media_type"
    error_of(client.post(f"/api/chat/{route}", data="{}", content_type="text/plain"), 415)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(
    "raw", [b"{", b"nul", b"[]", b'"text"', b"42", b"\xff\xfe{}", b'{"prompt": "a"} trailing', b"  "]
)
def test_malformed_json_is_a_400(client: FlaskClient, route: str, raw: bytes) -> None:
    error = error_of(client.post(f"/api/chat/{route}", data=raw, content_type="application/json"), 400)
    assert error["code"] == "invalid_request"


def test_json_content_type_with_charset_is_accepted(client: FlaskClient) -> None:
    response = client.post("/api/chat/conversation", data="{}", content_type="application/json; charset=utf-8")
    assert response.status_code == 200


@pytest.mark.parametrize("settings_overrides", [{"max_body_bytes": 2048}])
def test_body_over_the_limit_is_a_413(client: FlaskClient) -> None:
    error = error_of(client.post("/api/chat/ask", json={"prompt": "x" * 4096}), 413)
    assert error["code"] == "body_too_large"
    assert client.post("/api/chat/conversation", json={"pad": "x" * 1000}).status_code == 200


def test_default_body_limit_is_one_mebibyte(client: FlaskClient) -> None:
    big = {"prompt": "x" * (1024 * 1024)}
    error_of(client.post("/api/chat/conversation", json=big), 413)
