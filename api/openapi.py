"""What the OpenAPI document says beyond the routes' own declarations: the API's
description, its security scheme, and the error answers each status comes with.

The paths, bodies and answers come from the routes (flask-openapi3 reads them from
each view's parameters and `responses`); the error codes of each status from
`api/errors.py`.
"""

from __future__ import annotations

import tomllib
from typing import Any

from flask_openapi3 import Info, OpenAPI, Tag

from api.errors import HTTP_CODES, STATUS_BY_ERROR
from api.schemas import AnswerEvent, ErrorResponse
from api.v1.schemas import OpenAIError
from config import PROJECT_ROOT
from services.errors import ServiceError

ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}
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
JSON_ROUTE_ERRORS = (400, 401, 413, 415, 429, 500, 503)
"""What any /api route can answer: a bad or oversized body, keys, limits, faults, the database."""

API_KEY = {"apiKey": {"type": "http", "scheme": "bearer", "description": (
    "`Authorization: Bearer <key>` once any key exists (`python app.py keys create NAME`)."
)}}
KEY_OR_NONE: list[dict[str, list[str]]] = [{"apiKey": []}, {}]
CHAT = Tag(name="chat", description="Conversations (POST, JSON body).")
OPERATIONS = Tag(name="operations", description="Probes, metrics and documentation.")


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


def errors(*statuses: int) -> dict[int, dict[str, Any]]:
    """The error answers of `statuses`, each naming the codes it comes with."""
    codes = error_codes()
    return {
        status: {
            "description": f"{STATUS_TEXT[status]} Codes: " + ", ".join(f"`{c}`" for c in codes.get(status, [])),
            "content": {"application/json": {"schema": ERROR_REF}},
        }
        for status in statuses
    }


def api_info() -> Info:
    with open(PROJECT_ROOT / "pyproject.toml", "rb") as file:
        version = str(tomllib.load(file)["project"]["version"])
    return Info(
        title="gpt-api",
        version=version,
        description=(
            "A self-hosted chat API with persistent, branching conversations. Every success is "
            'wrapped as `{"response": ...}`; every error is `{"error": {"code", "message"}}`. '
            "Every answer carries `X-Request-ID` (yours when you send a safe one, otherwise one made here)."
        ),
    )


def openapi_options() -> dict[str, Any]:
    """Keyword arguments for the `flask_openapi3.OpenAPI` app."""
    return {
        "info": api_info(),
        "security_schemes": API_KEY,
        "doc_ui": False,  # /docs serves Swagger UI from this app's own files
        "validation_error_status": 400,
        "validation_error_model": ErrorResponse,
    }


def document(app: OpenAPI) -> dict[str, Any]:
    """The app's OpenAPI document, with the schemas of what routes refer to but flask-openapi3
    does not collect: a streamed answer's events (no route returns them as JSON) and the /v1
    error (referenced by each route's error answers)."""
    spec = app.api_doc
    schemas = spec["components"]["schemas"]
    for model in (AnswerEvent, OpenAIError):
        if model.__name__ not in schemas:
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}", mode="serialization")
            schemas.update(schema.pop("$defs", {}))
            schemas[model.__name__] = schema
    return spec
