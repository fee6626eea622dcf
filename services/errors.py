"""Domain exceptions. `api/errors.py` maps each one to an HTTP status in one place."""

from __future__ import annotations


class ServiceError(Exception):
    """Base of every error the service layer raises on purpose."""

    code = "error"

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class NotFound(ServiceError):
    code = "not_found"


class ConversationNotFound(NotFound):
    code = "conversation_not_found"


class ParentNotFound(NotFound):
    code = "parent_not_found"


class ChatCompletionNotFound(NotFound):
    code = "chat_completion_not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class InvalidRequest(ServiceError):
    code = "invalid_request"


class UpstreamNotConfigured(ServiceError):
    code = "upstream_not_configured"


class UpstreamError(ServiceError):
    """The upstream answered with an error, refused us, or the connection failed."""

    code = "upstream_error"


class UpstreamTimeout(UpstreamError):
    code = "upstream_timeout"


class DatabaseUnavailable(ServiceError):
    code = "database_unavailable"


class Unauthenticated(ServiceError):
    """No valid API key came with a request that needs one."""

    code = "unauthorized"


class RateLimited(ServiceError):
    """Too many requests, or too many answers at once; `retry_after` says when to retry."""

    code = "rate_limited"


class SchemaNotCurrent(DatabaseUnavailable):
    """The database answers but its schema is behind the code (run `python app.py migrate`)."""

    code = "schema_not_current"


class ServiceStopping(ServiceError):
    """The process is shutting down; what was answered so far is kept, marked interrupted."""

    code = "service_stopping"


class UpstreamRateLimited(UpstreamError):
    """The upstream kept refusing with 429 past our retries; `retry_after` is its own wait, when it gave one."""

    code = "upstream_rate_limited"
