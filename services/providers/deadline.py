"""One deadline for a whole answer upstream: every attempt, every retry and every wait in it.

The openai SDK's own retries cannot be bounded in time: each attempt may wait
UPSTREAM_READ_TIMEOUT and a 429's Retry-After is honoured up to two minutes, so a hung
upstream held a client for (1 + UPSTREAM_MAX_RETRIES) x UPSTREAM_READ_TIMEOUT plus the
waits. Here the same failures are retried as the SDK would retry them, but every attempt
gets only the time that is left, a wait that would end past the deadline is not begun, and
a stream still running at the deadline is cut.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from email.utils import parsedate_to_datetime
from typing import TypeVar

import httpx2
import openai

from services.errors import UpstreamTimeout

T = TypeVar("T")

INITIAL_RETRY_WAIT = 0.5
MAX_RETRY_WAIT = 8.0
"""The SDK's backoff: 0.5 s, 1 s, 2 s, ... at most 8 s, less up to a quarter at random."""
RETRIED_STATUSES = (408, 409, 429)
"""Retried as the SDK retries them, besides 5xx and connection failures."""


class Deadline:
    """The time an answer has left upstream."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._ends = time.monotonic() + seconds

    def left(self) -> float:
        return self._ends - time.monotonic()

    def timeout(self, read: float, connect: float) -> httpx2.Timeout:
        """The timeouts of one attempt: the configured ones, cut to the time left."""
        left = max(self.left(), 0.001)
        return httpx2.Timeout(min(read, left), connect=min(connect, left))

    def expired(self) -> UpstreamTimeout:
        return UpstreamTimeout(
            f"The upstream did not finish the answer within {self.seconds:g} s (UPSTREAM_DEADLINE_SECONDS); "
            "what came so far is kept."
        )


def retry_after_seconds(headers: httpx2.Headers) -> float | None:
    """Seconds the upstream asks us to wait (`retry-after-ms`, `retry-after` in seconds or as a
    date), or None when it says nothing usable."""
    for name, unit in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        try:
            seconds = float(headers.get(name, "")) / unit
        except ValueError:
            continue
        if math.isfinite(seconds):
            return max(seconds, 0.0)
    try:
        return max(parsedate_to_datetime(headers.get("retry-after", "")).timestamp() - time.time(), 0.0)
    except (TypeError, ValueError):
        return None


def retryable(error: openai.APIError) -> bool:
    if isinstance(error, openai.APIConnectionError):  # timeouts included
        return True
    if isinstance(error, openai.APIStatusError):
        told = error.response.headers.get("x-should-retry")
        if told in ("true", "false"):
            return told == "true"
        return error.status_code in RETRIED_STATUSES or error.status_code >= 500
    return False


def retry_wait(error: openai.APIError, attempt: int, max_retries: int, deadline: Deadline) -> float | None:
    """How long to wait before retrying after `error` (the `attempt`-th retry, from 0), or None
    to give up: no retries left, not worth retrying, or the wait would outlast the deadline."""
    if attempt >= max_retries or not retryable(error):
        return None
    wait = retry_after_seconds(error.response.headers) if isinstance(error, openai.APIStatusError) else None
    if wait is None:
        wait = min(INITIAL_RETRY_WAIT * 2**attempt, MAX_RETRY_WAIT) * (1 - 0.25 * random.random())
    return wait if wait < deadline.left() else None


@contextmanager
def opened(
    send: Callable[[httpx2.Timeout], AbstractContextManager[T]],
    deadline: Deadline,
    *,
    max_retries: int,
    read_timeout: float,
    connect_timeout: float,
) -> Iterator[T]:
    """The response of `send(timeout)` (a streaming response, opened), retried within `deadline`."""
    stack = ExitStack()
    attempt = 0
    while True:
        try:
            response = stack.enter_context(send(deadline.timeout(read_timeout, connect_timeout)))
            break
        except openai.APIError as error:
            wait = retry_wait(error, attempt, max_retries, deadline)
            if wait is None:
                raise
            time.sleep(wait)
            attempt += 1
    with stack:
        yield response


def within(deadline: Deadline, items: Iterable[T]) -> Iterator[T]:
    """`items` (lines, events) until the deadline passes, then an `UpstreamTimeout`."""
    for item in items:
        if deadline.left() <= 0:
            raise deadline.expired()
        yield item
