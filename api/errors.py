"""Every error leaves as `{"error": {"code", "message"}}` with the fitting status."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, has_request_context, jsonify, request
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from services.errors import (
    DatabaseUnavailable,
    InvalidRequest,
    NotFound,
    RateLimited,
    ServiceError,
    ServiceStopping,
    Unauthenticated,
    UpstreamError,
    UpstreamNotConfigured,
    UpstreamRateLimited,
    UpstreamTimeout,
)

log = logging.getLogger(__name__)

# Most specific first: the first class an error is an instance of decides.
STATUS_BY_ERROR: list[tuple[type[ServiceError], int]] = [
    (InvalidRequest, 400),
    (Unauthenticated, 401),
    (NotFound, 404),
    (RateLimited, 429),
    (UpstreamRateLimited, 429),
    (UpstreamTimeout, 504),
    (UpstreamError, 502),
    (UpstreamNotConfigured, 503),
    (ServiceStopping, 503),
    (DatabaseUnavailable, 503),
]

HTTP_CODES = {
    400: "invalid_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}


OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}


def is_openai_surface() -> bool:
    """Requests under /v1 get OpenAI's error shape, so its SDKs raise their matching exception."""
    return has_request_context() and (request.path == "/v1" or request.path.startswith("/v1/"))


def error_body(code: str, message: str, **details: Any) -> dict[str, Any]:
    """The /api envelope; `param` is for OpenAI's shape only (the message names the field)."""
    details.pop("param", None)
    return {"error": {"code": code, "message": message, **details}}


def openai_error_body(status: int, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    """`{"error": {"message", "type", "param", "code"}}`, as OpenAI's API answers."""
    kind = OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(status: int, code: str, message: str, **details: Any) -> Response:
    if is_openai_surface():
        body = openai_error_body(status, code, message, details.get("param"))
    else:
        body = error_body(code, message, **details)
    response = jsonify(body)
    response.status_code = status
    return response


def status_of(error: ServiceError) -> int:
    return next((status for kind, status in STATUS_BY_ERROR if isinstance(error, kind)), 500)


def service_error_response(error: ServiceError) -> Response:
    """The envelope of a domain error, with the headers its status calls for."""
    response = error_response(status_of(error), error.code, error.message, **error.details)
    if isinstance(error, Unauthenticated):
        response.headers["WWW-Authenticate"] = 'Bearer realm="gpt-api"'
    if isinstance(error, (RateLimited, UpstreamRateLimited)) and "retry_after" in error.details:
        response.headers["Retry-After"] = str(error.details["retry_after"])
    return response


def field_name(loc: tuple[int | str, ...]) -> str:
    """A field's location as OpenAI names a parameter: `input[0].content`."""
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else f".{part}" if name else part
    return name


def first_field(error: ValidationError) -> str | None:
    """The name of the first field a validation error is about (None for the whole body)."""
    for item in error.errors(include_url=False):
        if item["loc"]:
            return field_name(item["loc"])
    return None


def validation_message(error: ValidationError) -> str:
    """Name the offending field(s): `limit: Input should be less than or equal to 100`."""
    parts = []
    for item in error.errors(include_url=False):
        field = field_name(item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "not supported by this service (leave it out)"
        elif item["type"] == "json_invalid":
            message = f"The body is not valid JSON ({message.removeprefix('Invalid JSON: ')})."
        elif item["type"] == "model_type":
            message = "The body must be a JSON object."
        parts.append(f"{field}: {message}" if field else message)
    return "; ".join(parts)


def as_service_error(error: Exception) -> ServiceError | None:
    """The domain meaning of an exception, when it has one (database failures got theirs in
    the unit of work)."""
    if isinstance(error, ServiceError):
        return error
    if isinstance(error, ValidationError):
        return InvalidRequest(validation_message(error), param=first_field(error))
    return None


def invalid_body(error: ValidationError) -> Response:
    """flask-openapi3's hook for a body or query that fails its model: the 400 naming the field."""
    raise InvalidRequest(validation_message(error), param=first_field(error))


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        code = HTTP_CODES.get(status, "http_error")
        message = {
            404: "No such route; see the README for the API.",
            405: "Method not allowed; every route takes POST with a JSON body.",
            413: "The body is too large (see MAX_BODY_BYTES).",
            415: "Send a JSON body with Content-Type: application/json.",
        }.get(status, error.description or error.name)
        response = error_response(status, code, message)
        if status == 405 and error.valid_methods:  # type: ignore[attr-defined]
            response.headers["Allow"] = ", ".join(error.valid_methods)  # type: ignore[attr-defined]
        return response

    @app.errorhandler(Exception)
    def any_error(error: Exception) -> Response:
        service_error = as_service_error(error)
        if service_error is None:
            log.exception("unhandled error")
            return error_response(500, "internal_error", "Something went wrong on our side.")
        return service_error_response(service_error)
