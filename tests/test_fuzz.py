"""Property-based fuzzing of every /api route: arbitrary JSON, bytes, content types and keys.

Whatever a client sends, the answer is never a 5xx and never carries a stack trace; every
error is the JSON envelope. The number of cases run is counted and reported at the end.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.test import TestResponse

from services.api_keys import ApiKeys
from tests.helpers import error_of, ok, post

JSON_CASES = 200
RAW_CASES = 100
AUTH_CASES = 100
RUNS = settings(
    max_examples=JSON_CASES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
CASES: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def report_cases(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    total = sum(CASES.values())
    line = f"fuzzing: {total} cases run (" + ", ".join(f"{k}: {v}" for k, v in sorted(CASES.items())) + ")"
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(f"\n{line}")


def api_routes(app: Flask) -> list[str]:
    return sorted(rule.rule for rule in app.url_map.iter_rules() if rule.rule.startswith("/api/"))


NASTY = ["", " ", "\x00", "a\x00b", "\n\t", "\u2028", "\ufeff", "🚀" * 3, "x" * 5000, "NaN", "null",
         "00000000-0000-0000-0000-000000000000", "{}", "'; DROP TABLE messages; --"]


def scalars(ids: list[str]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(), st.booleans(), st.integers(), st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(), st.text(), st.text(alphabet=st.characters(codec="utf-8"), max_size=50),
        st.sampled_from(ids), st.uuids().map(str), st.sampled_from(NASTY),
        st.text(max_size=10).map(lambda t: t + "\x00"),
    )


def json_values(ids: list[str]) -> st.SearchStrategy[Any]:
    return st.recursive(
        scalars(ids),
        lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
        max_leaves=12,
    )


def route_bodies(route: str, ids: list[str]) -> st.SearchStrategy[Any]:
    """Objects shaped like the route's own body: each field absent, plausible or hostile."""
    texts = st.one_of(st.text(), st.sampled_from(NASTY), st.text(max_size=10).map(lambda t: t + "\x00"), scalars(ids))
    refs = st.one_of(st.sampled_from(ids), st.uuids().map(str), scalars(ids))
    numbers = st.one_of(st.integers(min_value=-5, max_value=200), scalars(ids))
    fields = {
        "/api/chat/ask": {"prompt": texts, "convo_id": refs, "conversation_id": refs, "parent_id": refs,
                          "model": texts, "stream": st.booleans() | scalars(ids)},
        "/api/chat/conversation": {"offset": numbers, "limit": numbers, "after": refs},
        "/api/chat/msg/history": {"convo_id": refs, "conversation_id": refs},
        "/api/chat/change/title": {"convo_id": refs, "conversation_id": refs, "title": texts},
        "/api/chat/delete/conversation": {"convo_id": refs, "conversation_id": refs},
        "/api/chat/search": {"query": texts, "limit": numbers, "after": texts, "role": texts, "convo_id": refs},
    }.get(route, {})
    shaped = st.fixed_dictionaries({}, optional=fields)
    extra = st.dictionaries(st.text(max_size=6), json_values(ids), max_size=2)
    return st.one_of(json_values(ids), shaped, st.tuples(shaped, extra).map(lambda p: {**p[1], **p[0]}))


def encode(body: Any) -> bytes:
    return json.dumps(body, allow_nan=True).encode("utf-8", errors="surrogatepass")


def check(response: TestResponse) -> None:
    """The properties: no 5xx, no stack trace, errors in the envelope."""
    text = response.get_data(as_text=True)  # reads a whole event stream too
    response.close()
    assert response.status_code < 500, text
    assert "Traceback" not in text and 'File "' not in text, text
    assert "internal_error" not in text, text
    if response.status_code >= 400:
        error = response.get_json()["error"]
        assert error["code"] and error["message"]


@pytest.fixture
def seeded(client: FlaskClient) -> list[str]:
    """Ids the fuzzer may pick: a real conversation and message, so the routes get past lookups."""
    answer = ok(post(client, "ask", {"prompt": "seed"}))
    return [answer["conversation_id"], answer["parent_id"], str(uuid.uuid4())]


def test_json_bodies_never_cause_a_server_error(app: Flask, client: FlaskClient, seeded: list[str]) -> None:
    for route in api_routes(app):
        @RUNS
        @given(body=route_bodies(route, seeded))
        def run(body: Any) -> None:
            CASES[f"json {route}"] += 1
            check(client.post(route, data=encode(body), content_type="application/json"))

        run()
    assert min(CASES[f"json {route}"] for route in api_routes(app)) >= JSON_CASES // 2


CONTENT_TYPES = st.one_of(
    st.sampled_from([
        "application/json", "application/json; charset=utf-8", "application/json; charset=latin-1",
        "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "",
        "application/problem+json", "application/json; charset=nonsense",
    ]),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=30),
)


def test_arbitrary_bytes_methods_and_content_types_never_cause_a_server_error(
    app: Flask, client: FlaskClient, seeded: list[str]
) -> None:
    for route in api_routes(app):
        @settings(RUNS, max_examples=RAW_CASES)
        @given(
            data=st.binary(max_size=300) | route_bodies(route, seeded).map(encode),
            content_type=CONTENT_TYPES,
            method=st.sampled_from(["POST", "POST", "POST", "GET", "PUT", "DELETE", "PATCH", "OPTIONS"]),
        )
        def run(data: bytes, content_type: str, method: str) -> None:
            CASES[f"raw {route}"] += 1
            check(client.open(route, method=method, data=data, headers={"Content-Type": content_type}))

        run()
    assert min(CASES[f"raw {route}"] for route in api_routes(app)) >= RAW_CASES // 2


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {}


@pytest.mark.parametrize("field", ["prompt", "model", "title"])
def test_nul_characters_are_a_400_naming_the_field(client: FlaskClient, seeded: list[str], field: str) -> None:
    """Found by this fuzzing: PostgreSQL refused NUL in text, a 500."""
    route = "change/title" if field == "title" else "ask"
    body = {"prompt": "x", "convo_id": seeded[0], "title": "t", field: "a\x00b"}
    error = error_of(post(client, route, body), 400)
    assert error["message"].startswith(f"{field}:") and "NUL" in error["message"]


def test_arbitrary_credentials_never_cause_a_server_error_or_get_in(app: Flask, client: FlaskClient) -> None:
    key = ApiKeys(app.services.database).create("alice").key
    credentials = st.one_of(
        st.text(alphabet=st.characters(min_codepoint=1, max_codepoint=255, exclude_characters="\r\n"), max_size=80),
        st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=60).map(lambda t: f"Bearer {t}"),
        st.sampled_from([f"Bearer {key} ", f"bearer {key}", f"Bearer {key[:-1]}", f"Bearer {key}x", f"Basic {key}"]),
    )

    @settings(RUNS, max_examples=AUTH_CASES)
    @given(authorization=credentials)
    def run(authorization: str) -> None:
        CASES["auth /api/chat/conversation"] += 1
        response = client.post("/api/chat/conversation", json={}, headers={"Authorization": authorization})
        check(response)
        scheme, _, rest = authorization.partition(" ")
        valid = scheme.lower() == "bearer" and rest.strip(" \t") == key
        assert response.status_code == (200 if valid else 401), authorization

    run()
    assert CASES["auth /api/chat/conversation"] >= AUTH_CASES // 2
