"""JSON bodies: parsed once, by pydantic's parser, with errors in the service's own words.

Every POST route takes a JSON object. Parsing with `pydantic_core.from_json` rather than
the standard library bounds nesting (a deeply nested body is a 400, not a recursion
error) and is faster; flask-openapi3 then validates the parsed object against the
route's model.
"""

from __future__ import annotations

from typing import Any

import pydantic_core
from flask import Request, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import UnsupportedMediaType

from services.errors import InvalidRequest


class JSONProvider(DefaultJSONProvider):
    """Flask's JSON, answering in the contract's order and as UTF-8, reading with pydantic's parser."""

    sort_keys = False
    ensure_ascii = False

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return pydantic_core.from_json(s)


class JSONRequest(Request):
    def on_json_loading_failed(self, e: ValueError | None) -> Any:
        if e is None:
            raise UnsupportedMediaType()
        raise InvalidRequest(f"The body is not valid JSON ({e}).")


def require_json_object() -> None:
    """Before a JSON route: 415 unless the body says it is JSON, 400 unless it is an object."""
    if request.method != "POST":
        return
    if not request.is_json:
        raise UnsupportedMediaType()
    if not request.get_data(cache=True).strip():
        raise InvalidRequest("The body is empty; send a JSON object (at least {}).")
    if not isinstance(request.get_json(), dict):
        raise InvalidRequest("The body must be a JSON object.")
