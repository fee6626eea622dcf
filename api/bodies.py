"""JSON bodies: parsed once, by pydantic's parser, with errors in the service's own words;
answers of JSON's own types written by pydantic's writer, byte for byte as Flask writes them.

Every POST route takes a JSON object. Parsing with `pydantic_core.from_json` rather than
the standard library bounds nesting (a deeply nested body is a 400, not a recursion
error) and is faster; flask-openapi3 then validates the parsed object against the
route's model.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from io import BytesIO
from typing import IO, Any, cast

import pydantic_core
from flask import Request, Response, current_app, request
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

    def plain_response(self, value: Any, numbers: Iterable[float] | None = None) -> Response:
        """`response(value)`, the same bytes, for a value made only of JSON's own types (dicts
        with text keys, lists, text, numbers, booleans, None), as the payloads' TypedDicts are.

        `pydantic_core.to_json` writes such a value five times faster than the standard
        library (a 1,000-message history: 9 to 1.6 ms) and byte for byte as it does, except a
        float between 1e-9 and 1e-4 (`1e-5` for `1e-05`, `0.000012` for `1.2e-05`). Its output
        is searched for anything that could be one (0.9 ms of a 1,000-message history's 9 in a
        worker; text that looks like one only costs the slow way), and then written the
        standard library's way. `numbers`, every float in `value` when the caller knows them,
        are checked instead of the search. Any other type (a `datetime`, which Flask writes as
        an HTTP date) must not reach here."""
        if self._app.debug and self.compact is None or self.compact is False:
            return self.response(value)
        body = pydantic_core.to_json(value, inf_nan_mode="constants")
        if numbers is None:
            if _SHORT_EXPONENT.search(body) is not None or _SMALL_DECIMAL.search(body) is not None:
                return self.response(value)
        elif any(1e-9 <= abs(number) < 1e-4 for number in numbers):
            return self.response(value)
        return self._app.response_class(body + b"\n", mimetype=self.mimetype)


_SHORT_EXPONENT = re.compile(rb"e-[0-9](?:[,\]}]|\Z)")
_SMALL_DECIMAL = re.compile(rb"0\.0000[1-9]")
"""Where `pydantic_core.to_json` may have written a number unlike the standard library: a
one-digit negative exponent (Python writes two, `1e-05`), or a decimal where Python writes
an exponent (from 1e-5 to 1e-4). Two searches of a literal each: one pattern for both, or one
that also checks what precedes, costs ten times as much."""


def json_response(value: Any, numbers: Iterable[float] | None = None) -> Response:
    """The app's `JSONProvider.plain_response`: `jsonify(value)` for a value of JSON's own types."""
    return cast(JSONProvider, current_app.json).plain_response(value, numbers)


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
