"""The OpenAPI 3.1 document, generated from the pydantic models that validate requests
(`api/schemas.py`) and describe answers (`api/responses.py`), and from the error mapping.

Paths come from the app's URL map, so a route missing from `OPERATIONS` shows up in the
tests; the error codes of each status come from `api/errors.py`.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from typing import Any

from flask import Flask
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from api import responses
from api.errors import HTTP_CODES, STATUS_BY_ERROR
from api.request_log import REQUEST_ID_HEADER, VALID_REQUEST_ID
from api.schemas import AskBody, EmptyBody, ListBody, RequiredConversationRef, SearchBody, TitleBody
from config import PROJECT_ROOT
from services.errors import ServiceError

REF = "#/components/schemas/{model}"
JSON = "application/json"
STATUS_TEXT = {
    400: "The body or a field is wrong (the message names the field).",
    401: "An API key is needed, or the one sent is not valid.",
    404: "No such conversation or message (or route).",
    405: "The route does not take this method.",
    413: "The body is larger than MAX_BODY_BYTES.",
    415: "The body is not JSON (send Content-Type: application/json).",
    429: "Too many requests (RATE_LIMIT) or answers at once (MAX_STREAMS_PER_KEY); see Retry-After.",
    500: "A fault on the service's side (never a stack trace).",
    502: "The upstream failed or broke off.",
    503: "No upstream is configured, or the database is unreachable or not migrated.",
    504: "The upstream did not answer in time.",
}
JSON_ROUTE_ERRORS = (400, 413, 415, 429, 500, 503)
"""What any /api route can answer: a bad or oversized body, limits, faults, the database."""


@dataclass(frozen=True)
class Operation:
    summary: str
    description: str = ""
    body: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()
    tag: str = "chat"
    content: dict[str, Any] = field(default_factory=dict)
    """Media types other than JSON (a stream, a page, the metrics text)."""


def _api(summary: str, body: type[BaseModel], response: type[BaseModel], *more: int, **kw: Any) -> Operation:
    errors = tuple(sorted({*JSON_ROUTE_ERRORS, 401, *more}))
    return Operation(summary, body=body, response=response, errors=errors, **kw)


OPERATIONS: dict[str, Operation] = {
    "chat.ask": _api(
        "Ask: start a conversation, continue one, or branch from a message",
        AskBody,
        responses.AnswerResponse,
        404, 502, 504,
        description=(
            "Without `convo_id` a new conversation; with it, the answer continues from the "
            "conversation's current node, or from `parent_id` (a branch: regenerate, or "
            "edit and resend). `parent_id` needs `convo_id`; `convo_id` and "
            "`conversation_id` are aliases and must agree when both are given. With "
            '`"stream": true` the answer comes as server-sent events: `data: <AnswerEvent>` '
            "lines, then `data: [DONE]`; a failure mid-answer is an `event: error` with the "
            "error envelope."
        ),
        content={
            "text/event-stream": {
                "schema": {
                    "type": "string",
                    "description": "`data: {AnswerEvent as JSON}` per event, then `data: [DONE]`.",
                },
            }
        },
    ),
    "chat.conversations": _api(
        "List conversations, most recently updated first",
        ListBody,
        responses.ConversationListResponse,
        404,
        description="Page with `offset`/`limit`, or by keyset with `after` (the previous page's last id).",
    ),
    "chat.history": _api(
        "A conversation's whole tree, in ChatGPT's export shape",
        RequiredConversationRef,
        responses.ConversationTreeResponse,
        404,
        description=(
            "Every branch. Answers carry `metadata.usage` (prompt, completion and total "
            "tokens). Imported messages are shown as the export had them."
        ),
    ),
    "chat.change_title": _api("Rename a conversation", TitleBody, responses.EmptyResponse, 404),
    "chat.delete_conversation": _api(
        "Delete a conversation and its messages", RequiredConversationRef, responses.EmptyResponse, 404
    ),
    "chat.clear_conversations": _api(
        "Delete every conversation of the caller", EmptyBody, responses.EmptyResponse
    ),
    "search.search": _api(
        "Search the caller's conversations: titles and messages",
        SearchBody,
        responses.SearchResponse,
        404,
        description=(
            "Words must all match; `\"a quoted phrase\"`, `-excluded`, `prefix*`; anything else "
            "(`foo_bar.baz()`, `example.com/docs`) is found as typed, ignoring case. Chinese, "
            "Japanese, Korean and Thai text match as substrings. Hits come best first: "
            "conversations whose title matches (`message_id` null), then messages, newest "
            "first; pass the last hit's `cursor` as `after` for the next page. `role` and "
            "`convo_id` narrow the search (a `role` leaves titles out)."
        ),
    ),
    "ops.healthz": Operation(
        "Liveness: the process answers (no database, no upstream)", response=responses.Health, tag="operations"
    ),
    "ops.readyz": Operation(
        "Readiness: the database is reachable and its schema current",
        response=responses.Ready,
        errors=(503,),
        tag="operations",
    ),
    "ops.prometheus_metrics": Operation(
        "Prometheus metrics (text exposition format), summed over all workers",
        tag="operations",
        content={"text/plain": {"schema": {"type": "string"}}},
    ),
    "docs.openapi_json": Operation("This document", tag="operations", content={JSON: {"schema": {"type": "object"}}}),
    "docs.page": Operation(
        "The API docs page (Swagger UI, served by this app)",
        tag="operations",
        content={"text/html": {"schema": {"type": "string"}}},
    ),
    "docs.init_script": Operation(
        "The docs page's start-up script",
        tag="operations",
        content={"text/javascript": {"schema": {"type": "string"}}},
    ),
    "docs.static": Operation(
        "Swagger UI's files (from the flask-swagger-ui package)",
        tag="operations",
        content={"application/octet-stream": {"schema": {"type": "string"}}},
    ),
}


def error_codes() -> dict[int, list[str]]:
    """Each status and the `error.code` values it comes with."""
    codes: dict[int, set[str]] = {status: {code} for status, code in HTTP_CODES.items()}
    codes.setdefault(500, set()).add("internal_error")
    pending: list[type[ServiceError]] = [ServiceError]
    while pending:
        kind = pending.pop()
        pending.extend(kind.__subclasses__())
        status = next((s for base, s in STATUS_BY_ERROR if issubclass(kind, base)), None)
        if status is not None:
            codes.setdefault(status, set()).add(kind.code)
    return {status: sorted(found) for status, found in sorted(codes.items())}


def _schemas() -> dict[str, Any]:
    requests = [AskBody, ListBody, RequiredConversationRef, TitleBody, EmptyBody, SearchBody]
    answers = [
        responses.AnswerResponse,
        responses.AnswerEvent,
        responses.ConversationListResponse,
        responses.ConversationTreeResponse,
        responses.EmptyResponse,
        responses.SearchResponse,
        responses.ErrorResponse,
        responses.Health,
        responses.Ready,
    ]
    _, top = models_json_schema(
        [(model, "validation") for model in requests] + [(model, "serialization") for model in answers],
        ref_template=REF,
    )
    return top["$defs"]


def _path(rule: str) -> str:
    """`/docs/<path:path>` → `/docs/{path}`."""
    parts = []
    for piece in rule.split("/"):
        if piece.startswith("<") and piece.endswith(">"):
            piece = "{" + piece[1:-1].split(":")[-1] + "}"
        parts.append(piece)
    return "/".join(parts)


def _operation(endpoint: str, method: str, path: str, operation: Operation) -> dict[str, Any]:
    ok: dict[str, Any] = {"description": "OK", "headers": {REQUEST_ID_HEADER: {"$ref": "#/components/headers/RequestId"}}}
    content = dict(operation.content)
    if operation.response is not None:
        content = {JSON: {"schema": {"$ref": REF.format(model=operation.response.__name__)}}, **content}
    if content:
        ok["content"] = content
    document: dict[str, Any] = {
        "operationId": "_".join([endpoint.replace(".", "_"), *(p[1:-1] for p in path.split("/") if p.startswith("{"))]),
        "summary": operation.summary,
        "tags": [operation.tag],
        "parameters": [{"$ref": "#/components/parameters/RequestId"}]
        + [
            {"name": name[1:-1], "in": "path", "required": True, "schema": {"type": "string"}}
            for name in path.split("/")
            if name.startswith("{")
        ],
        "responses": {"200": ok, **{str(s): {"$ref": f"#/components/responses/E{s}"} for s in operation.errors}},
    }
    if operation.description:
        document["description"] = operation.description
    if operation.body is not None:
        document["requestBody"] = {
            "required": True,
            "content": {JSON: {"schema": {"$ref": REF.format(model=operation.body.__name__)}}},
        }
    if path.startswith("/api/"):
        document["security"] = [{"apiKey": []}, {}]
    return document


def _version() -> str:
    with open(PROJECT_ROOT / "pyproject.toml", "rb") as file:
        return str(tomllib.load(file)["project"]["version"])


def build_spec(app: Flask) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route `app` serves."""
    paths: dict[str, dict[str, Any]] = {}
    for rule in app.url_map.iter_rules():
        operation = OPERATIONS.get(rule.endpoint)
        if operation is None:
            continue
        path = _path(rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = _operation(rule.endpoint, method, path, operation)
    codes = error_codes()
    used = sorted({status for operation in OPERATIONS.values() for status in operation.errors})
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "gpt-api",
            "version": _version(),
            "description": (
                "A self-hosted chat API with persistent, branching conversations. Every "
                'success is wrapped as `{"response": ...}`; every error is '
                '`{"error": {"code", "message"}}`.'
            ),
        },
        "tags": [
            {"name": "chat", "description": "Conversations (POST, JSON body)."},
            {"name": "operations", "description": "Probes, metrics and documentation."},
        ],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": _schemas(),
            "responses": {
                f"E{status}": {
                    "description": f"{STATUS_TEXT.get(status, 'Error.')} Codes: "
                    + ", ".join(f"`{code}`" for code in codes.get(status, [])),
                    "headers": {REQUEST_ID_HEADER: {"$ref": "#/components/headers/RequestId"}},
                    "content": {JSON: {"schema": {"$ref": REF.format(model="ErrorResponse")}}},
                }
                for status in used
            },
            "parameters": {
                "RequestId": {
                    "name": REQUEST_ID_HEADER,
                    "in": "header",
                    "required": False,
                    "description": "Your id for the request (1-128 of A-Z a-z 0-9 . _ : @ + = / -); one is made otherwise.",
                    "schema": {"type": "string", "pattern": f"^{VALID_REQUEST_ID.pattern}$"},
                }
            },
            "headers": {
                "RequestId": {
                    "description": "The request's id (yours, or one made): it is in the service's log line.",
                    "schema": {"type": "string"},
                }
            },
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "`Authorization: Bearer <key>` once any key exists (`python app.py keys create NAME`).",
                }
            },
        },
    }
