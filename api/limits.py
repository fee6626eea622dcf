"""Per-caller limits: a request rate (flask-limiter) and a cap on answers in flight.

Both count per API key name, or per client address while no keys are in use, and live in
Redis when REDIS_URL is set (shared by every instance), otherwise in a file that the
workers of this instance share (`services.shared_counts`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from flask import Response, request
from flask_limiter import Limiter, RateLimitExceeded

from api.auth import is_api_request
from api.context import GptApi, current_caller, services
from api.errors import service_error_response
from config import Settings
from services.errors import RateLimited
from services.rate_storage import storage_uri
from services.stream_slots import Slot

STREAM_RETRY_AFTER = 2
"""Seconds a caller at its cap of answers is told to wait: answers end at no known time."""


def caller_identity() -> str:
    """Whom the limits count: the key's name, or the client's address without keys."""
    name = current_caller().key_name
    return f"key:{name}" if name else f"addr:{request.remote_addr or 'unknown'}"


def register_limits(app: GptApi, settings: Settings) -> None:
    """Register after `register_auth`: the rate limit needs to know the caller."""
    redis_url, counts_file = settings.redis_url, app.services.limit_counts
    if not settings.rate_limit:
        return
    limiter = Limiter(
        caller_identity,
        application_limits=[settings.rate_limit],
        strategy="moving-window",
        storage_uri=storage_uri(counts_file) if counts_file else redis_url,
        storage_options={"socket_connect_timeout": 2, "socket_timeout": 2} if redis_url else {},
        in_memory_fallback_enabled=bool(redis_url),
        key_prefix=settings.redis_key_prefix,
    )
    limiter.request_filter(lambda: request.method == "OPTIONS" or not is_api_request())
    limiter.init_app(app)
    _settle(limiter.storage, getattr(limiter, "_fallback_storage", None))

    @app.errorhandler(RateLimitExceeded)
    def rate_limited(error: RateLimitExceeded) -> Response:
        current = limiter.current_limit
        reset = current.window[0] if current is not None else time.time()
        wait = max(math.ceil(reset - time.time()), 1)
        return service_error_response(
            RateLimited(
                f"Too many requests: each caller may make {error.description}; retry in {wait} s.",
                retry_after=wait,
            )
        )


def _settle(*storages: object) -> None:
    """Wait out the short timer thread each in-memory storage of `limits` starts, so none is
    pending when gunicorn forks its workers: under gevent each worker would run it, and fail."""
    for storage in storages:
        timer = getattr(storage, "timer", None)
        if timer is not None:
            timer.join()


class AnswerSlot:
    """The caller's place among its answers in flight, given back when the answer ends."""

    def __init__(self, slot: Slot) -> None:
        self._slot = slot
        self.handed_over = False

    def hand_over(self, response: Response) -> Response:
        """For a streamed answer: give the slot back when the stream ends or is closed (the
        client left), or when the response is closed before the stream began."""
        response.response = _then(response.response, self._slot.release)
        response.call_on_close(self._slot.release)
        self.handed_over = True
        return response


def _then(body: Iterable[Any], release: Callable[[], None]) -> Iterator[Any]:
    try:
        yield from body
    finally:
        release()


@contextmanager
def answer_slot() -> Iterator[AnswerSlot]:
    """Take a slot for one answer (429 at the cap); given back on leaving the block unless
    `hand_over` passed it to a streamed response."""
    slot = services().slots.acquire(caller_identity())
    if slot is None:
        raise RateLimited(
            "Too many answers in flight for this key (MAX_STREAMS_PER_KEY); "
            "wait for one to finish.",
            retry_after=STREAM_RETRY_AFTER,
        )
    held = AnswerSlot(slot)
    try:
        yield held
    finally:
        if not held.handed_over:
            slot.release()
