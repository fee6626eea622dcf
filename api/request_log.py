"""One structured log line per request, and the request id that ties a request's lines together.

The id comes from the client's `X-Request-ID` when it is a short token of safe
characters (so a proxy's id carries through), otherwise it is made here; either way it
goes back in the response's `X-Request-ID`, errors and streams included. The line holds
no bodies and no headers: no prompt or answer text, never `Authorization`.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from flask import Flask, Response, g, has_request_context, request

REQUEST_ID_HEADER = "X-Request-ID"
VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@+=/-]{1,128}")

log = logging.getLogger("gpt_api.access")


def request_id_from(header: str | None) -> str:
    """The client's id if it is safe to log and echo, else a new one (uuid4 hex)."""
    if header and VALID_REQUEST_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex


def elapsed_seconds() -> float:
    """Time since the request came in."""
    return time.perf_counter() - g.get("started", time.perf_counter())


def route_label() -> str:
    """The URL rule that matched (bounded, unlike paths), or `unmatched`."""
    return request.url_rule.rule if request.url_rule is not None else "unmatched"


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every record: the current request's, or `missing` outside one."""

    def __init__(self, missing: str | None = None) -> None:
        super().__init__()
        self._missing = missing

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            in_request = has_request_context() and "request_id" in g
            record.request_id = g.request_id if in_request else self._missing
        return True


def register_request_log(app: Flask) -> None:
    @app.before_request
    def start_request() -> None:
        g.started = time.perf_counter()
        g.request_id = request_id_from(request.headers.get(REQUEST_ID_HEADER))

    @app.after_request
    def log_request(response: Response) -> Response:
        request_id = g.get("request_id") or request_id_from(request.headers.get(REQUEST_ID_HEADER))
        response.headers[REQUEST_ID_HEADER] = request_id
        duration_ms = round(elapsed_seconds() * 1000, 1)
        log.info(
            "%s %s %s %.1fms",
            request.method,
            request.path,
            response.status_code,
            duration_ms,
            extra={
                "request_id": request_id,
                "method": request.method,
                "path": request.path,
                "route": route_label(),
                "status": response.status_code,
                "duration_ms": duration_ms,
                "response_bytes": response.content_length,
                "remote_addr": request.remote_addr,
            },
        )
        return response
