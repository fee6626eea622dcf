"""JSON bodies: parsed once, by pydantic's parser, with errors in the service's own words.

Every POST route takes a JSON object. Parsing with `pydantic_core.from_json` rather than
the standard library bounds nesting (a deeply nested body is a 400, not a recursion
error) and is faster; flask-openapi3 then validates the parsed object against the
route's model.
"""

from __future__ import annotations

from io import BytesIO
from typing import IO, Any

import pydantic_core
from flask import Request, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import RequestEntityTooLarge, UnsupportedMediaType
from werkzeug.utils import cached_property

from services.errors import InvalidRequest


class JSONProvider(DefaultJSONProvider):
    """Flask's JSON, answering in the contract's order and as UTF-8, reading with pydantic's parser."""

    sort_keys = False
    ensure_ascii = False

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return pydantic_core.from_json(s)


class JSONRequest(Request):
    @cached_property
    def stream(self) -> IO[bytes]:
        """The body. One without a length (`Transfer-Encoding: chunked`) is read here up to one
        byte past MAX_BODY_BYTES, and that byte is a 413: Werkzeug's own stream would stop at
        the limit and hand on the cut body as if it were whole."""
        limit = self.max_content_length
        if self.content_length is not None or limit is None or "wsgi.input_terminated" not in self.environ:
            return super().stream
        body = read_at_most(self.environ["wsgi.input"], limit + 1)
        if len(body) > limit:
            raise RequestEntityTooLarge()
        return BytesIO(body)

    def on_json_loading_failed(self, e: ValueError | None) -> Any:
        if e is None:
            raise UnsupportedMediaType()
        raise InvalidRequest(f"The body is not valid JSON ({e}).")


def read_at_most(stream: IO[bytes], size: int) -> bytes:
    """Up to `size` bytes of `stream`, however small the pieces it gives at a time."""
    parts: list[bytes] = []
    left = size
    while left > 0:
        part = stream.read(min(left, 64 * 1024))
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


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
