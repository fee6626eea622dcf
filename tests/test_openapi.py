"""`/openapi.json` is a valid OpenAPI 3.1 document of every route, made from the validating
models, that real answers conform to; `/docs` renders it from assets the app serves itself."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from jsonschema import Draft202012Validator, FormatChecker
from openapi_spec_validator import validate
from werkzeug.test import TestResponse

from api.schemas import AskBody, EmptyBody, ListBody, RequiredConversationRef, SearchBody, TitleBody
from fakes.openai_upstream import Fail, FakeOpenAI
from services.transfer import ConversationTransfer, read_export
from tests.helpers import ok, post, sse_json

EXPORT = Path(__file__).parent / "data" / "chatgpt_export.json"
REF = "#/components/schemas/{model}"


@pytest.fixture
def spec(client: FlaskClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.get_json()


def operation(spec: dict[str, Any], path: str, method: str = "post") -> dict[str, Any]:
    return spec["paths"][path][method]


def conforms(spec: dict[str, Any], path: str, response: TestResponse, method: str = "post") -> None:
    """`response` has a status the operation documents, and its JSON body fits that status's schema."""
    documented = operation(spec, path, method)["responses"]
    status = str(response.status_code)
    assert status in documented, f"{path} answered {status}, which the spec does not list"
    answer = documented[status]
    schema = answer["content"]["application/json"]["schema"]
    fits(spec, schema, response.get_json())


def fits(spec: dict[str, Any], schema: dict[str, Any], instance: Any) -> None:
    validator = Draft202012Validator(
        {**schema, "components": spec["components"]}, format_checker=FormatChecker()
    )
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(instance)]
    assert not errors, errors


def test_the_spec_is_valid_openapi_3_1(spec: dict[str, Any]) -> None:
    validate(spec)  # raises on any violation of the OpenAPI 3.1 schema and its rules
    assert spec["openapi"] == "3.1.0"


def test_every_route_of_the_app_is_in_the_spec(app: Flask, spec: dict[str, Any]) -> None:
    served = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            served.add((path, method.lower()))
    documented = {(path, method) for path, item in spec["paths"].items() for method in item}
    assert served == documented
    assert {"/api/chat/ask", "/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"} <= set(spec["paths"])


@pytest.mark.parametrize(
    ("path", "model"),
    [
        ("/api/chat/ask", AskBody),
        ("/api/chat/conversation", ListBody),
        ("/api/chat/msg/history", RequiredConversationRef),
        ("/api/chat/change/title", TitleBody),
        ("/api/chat/delete/conversation", RequiredConversationRef),
        ("/api/chat/clear/conversations", EmptyBody),
        ("/api/chat/search", SearchBody),
    ],
)
def test_request_bodies_are_the_validating_models(spec: dict[str, Any], path: str, model: type) -> None:
    ref = operation(spec, path)["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    name = ref.rsplit("/", 1)[1]
    assert name == model.__name__
    assert spec["components"]["schemas"][name] == model.model_json_schema(ref_template=REF)


def test_every_chat_route_documents_the_error_envelope(spec: dict[str, Any]) -> None:
    for path, item in spec["paths"].items():
        if not path.startswith("/api/"):
            continue
        responses = item["post"]["responses"]
        assert {"400", "401", "413", "415", "500", "503"} <= set(responses), path
        assert item["post"]["security"] == [{"apiKey": []}, {}]
        for status in ("400", "404", "504"):
            if status in responses:
                schema = responses[status]["content"]["application/json"]["schema"]
                assert schema == {"$ref": REF.format(model="ErrorResponse")}, (path, status)
    ask = operation(spec, "/api/chat/ask")["responses"]
    assert "conversation_not_found" in ask["404"]["description"]
    assert "upstream_timeout" in ask["504"]["description"]
    error = spec["components"]["schemas"]["ErrorResponse"]
    assert error["required"] == ["error"]


def test_real_answers_conform_to_the_spec(
    client: FlaskClient, spec: dict[str, Any], fake_upstream: FakeOpenAI, app: Flask
) -> None:
    answer_response = post(client, "ask", {"prompt": "Hello"})
    conforms(spec, "/api/chat/ask", answer_response)
    answer = ok(answer_response)
    conversation_id = answer["conversation_id"]
    branch = post(client, "ask", {"prompt": "Again", "convo_id": conversation_id, "parent_id": answer["parent_id"]})
    conforms(spec, "/api/chat/ask", branch)
    stream = post(client, "ask", {"prompt": "Stream", "convo_id": conversation_id, "stream": True})
    event_schema = {"$ref": REF.format(model="AnswerEvent")}
    for event in sse_json(stream):
        fits(spec, event_schema, event)
    conforms(spec, "/api/chat/conversation", post(client, "conversation", {}))
    conforms(spec, "/api/chat/msg/history", post(client, "msg/history", {"convo_id": conversation_id}))
    ConversationTransfer(app.services.database).import_conversations(read_export(EXPORT.open("rb")))
    for imported in json.loads(EXPORT.read_text()):  # tool messages, images, code, empty nodes
        conforms(spec, "/api/chat/msg/history", post(client, "msg/history", {"convo_id": imported["id"]}))
    conforms(spec, "/api/chat/search", post(client, "search", {"query": "Hello"}))
    conforms(spec, "/api/chat/search", post(client, "search", {"query": "capital", "limit": 1}))
    conforms(spec, "/api/chat/change/title", post(client, "change/title", {"convo_id": conversation_id, "title": "T"}))
    conforms(spec, "/api/chat/delete/conversation", post(client, "delete/conversation", {"convo_id": conversation_id}))
    conforms(spec, "/api/chat/clear/conversations", post(client, "clear/conversations", {}))
    conforms(spec, "/healthz", client.get("/healthz"), "get")
    conforms(spec, "/readyz", client.get("/readyz"), "get")


def test_real_errors_conform_to_the_spec(client: FlaskClient, spec: dict[str, Any], fake_upstream: FakeOpenAI) -> None:
    fake_upstream.script(Fail(status=500))
    conforms(spec, "/api/chat/ask", post(client, "ask", {"prompt": "x"}))  # 502
    conforms(spec, "/api/chat/ask", post(client, "ask", {"prompt": ""}))  # 400
    conforms(spec, "/api/chat/ask", client.post("/api/chat/ask", data="x", content_type="text/plain"))  # 415
    conforms(spec, "/api/chat/ask", post(client, "ask", {"prompt": "x" * 2_000_000}))  # 413
    missing = {"convo_id": "00000000-0000-4000-8000-000000000000"}
    conforms(spec, "/api/chat/msg/history", post(client, "msg/history", missing))  # 404
    conforms(spec, "/api/chat/ask", post(client, "ask", {"prompt": "x", **missing}))  # 404


class Assets(HTMLParser):
    """The URLs a page loads (stylesheets, icons, scripts), and how many scripts are inline."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        url = found.get("src") or (found.get("href") if tag == "link" else None)
        if url:
            self.urls.append(url)
        elif tag == "script":
            self.inline_scripts += 1


def test_docs_page_loads_everything_from_the_app(client: FlaskClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    assets = Assets()
    assets.feed(page.get_data(as_text=True))
    assert assets.inline_scripts == 0
    assert len(assets.urls) == 6
    for url in assets.urls:
        assert url.startswith("/"), f"{url} is not served by the app"
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert asset.data, url
        asset.close()
    bundle = client.get("/docs/assets/swagger-ui-bundle.js")
    assert bundle.mimetype in ("text/javascript", "application/javascript")
    assert len(bundle.data) > 500_000  # the real Swagger UI, not a loader for a CDN copy
    bundle.close()
    start = client.get("/docs/init.js").get_data(as_text=True)
    assert 'url: "/openapi.json"' in start
    assert "validatorUrl: null" in start  # no badge fetched from validator.swagger.io


def test_docs_page_policy_allows_only_its_own_origin(client: FlaskClient) -> None:
    policy = client.get("/docs").headers["Content-Security-Policy"]
    assert "script-src 'self';" in policy and "connect-src 'self'" in policy
    assert "http" not in policy
    assert "default-src 'none'" in client.get("/healthz").headers["Content-Security-Policy"]


def test_docs_and_spec_need_no_api_key(client: FlaskClient, spec: dict[str, Any]) -> None:
    assert "security" not in operation(spec, "/openapi.json", "get")
    assert "security" not in operation(spec, "/healthz", "get")
