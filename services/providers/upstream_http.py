"""A lean HTTP client for an OpenAI-compatible API: JSON requests, SSE lines, retries in a deadline.

Why not the `openai` SDK: per answer it cost about 1 ms of CPU more than this client (it
transforms every argument, builds a request model, and under gevent its httpx pool checks
the liveness of every idle connection), on a path whose whole budget is about 2 ms
(`bench/README.md`). What the SDK did for us is kept here, each with a test:
- connect and read timeouts per attempt, cut to the answer's deadline;
- retries of connection failures, timeouts, 408, 409, 429 and 5xx (or as the upstream's
  `x-should-retry` says), with the SDK's backoff (0.5 s doubling to 8 s, less up to a quarter
  at random) or the upstream's `retry-after-ms` / `Retry-After`; a wait that would end past the
  deadline is not begun;
- an error's status, headers and body (the `error` object of a JSON body) for the mapping
  to our own errors (`services/providers/openai_compat.py`).
A stream that ends without `finish_reason` is told apart by the reader of the lines.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import urllib3
from urllib3.exceptions import HTTPError, NewConnectionError, TimeoutError as Urllib3Timeout

from services.providers.deadline import Deadline, retry_after_seconds

INITIAL_RETRY_WAIT = 0.5
MAX_RETRY_WAIT = 8.0
RETRIED_STATUSES = (408, 409, 429)
"""Retried besides 5xx and connection failures (as the SDK retries them)."""
READ_SIZE = 65536


class UpstreamHttpError(Exception):
    """The upstream could not be used: see the subclasses."""


class UpstreamUnreachable(UpstreamHttpError):
    """The connection failed, or was cut before the answer's end."""


class UpstreamTimedOut(UpstreamUnreachable):
    """Connecting, or waiting for the next bytes, took longer than allowed."""


class UpstreamStatus(UpstreamHttpError):
    """The upstream answered with an error status."""

    def __init__(self, status: int, headers: Mapping[str, str], body: Any) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        """The `error` object of a JSON body, the JSON itself without one, or the text."""
        detail = body.get("message") if isinstance(body, dict) else body
        self.message = str(detail).strip() if detail else f"Error code: {status}"
        super().__init__(self.message)


@contextmanager
def _reading() -> Iterator[None]:
    """Reading an answer's body: the transport's failures as the client's own."""
    try:
        yield
    except Urllib3Timeout as error:
        raise UpstreamTimedOut("The upstream stopped sending.") from error
    except (HTTPError, OSError) as error:
        raise UpstreamUnreachable("The connection to the upstream was cut.") from error


class Response:
    """An upstream's successful answer, read as JSON or as lines; release it when done."""

    def __init__(self, raw: urllib3.BaseHTTPResponse) -> None:
        self._raw = raw
        self._read_whole = False
        self.headers = raw.headers

    def json(self) -> Any:
        with _reading():
            data = self._raw.data
        self._read_whole = True
        return json.loads(data)

    def lines(self) -> Iterator[str]:
        """The body's lines as they arrive (without their line ends), to its very end."""
        rest = b""
        while True:
            with _reading():
                data = self._raw.read1(READ_SIZE)
            if not data:
                self._read_whole = True
                break
            *complete, rest = (rest + data).split(b"\n")
            for line in complete:
                yield line.rstrip(b"\r").decode("utf-8", "replace")
        if rest:
            yield rest.rstrip(b"\r").decode("utf-8", "replace")

    def release(self) -> None:
        """Give the connection back to the pool if the body was read to its end, else close it."""
        if not self._read_whole:
            self._raw.close()
        self._raw.release_conn()


class UpstreamHttp:
    """One upstream's base URL and key, its pool of connections, its timeouts and retries."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        connect_timeout: float,
        read_timeout: float,
        max_retries: int,
        keep_alive: int = 100,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._headers = {
            "authorization": f"Bearer {api_key}",
            "content-type": "application/json",
            "accept": "application/json, text/event-stream",
        }
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_retries = max_retries
        # Connections beyond `keep_alive` are made when needed and closed after use: an
        # answer never waits for a connection.
        self._pool = urllib3.PoolManager(num_pools=4, maxsize=keep_alive, block=False, retries=False)

    @contextmanager
    def request(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, deadline: Deadline
    ) -> Iterator[Response]:
        """The upstream's answer to the request, retried within `deadline`; raises an
        `UpstreamHttpError` when no attempt succeeded."""
        attempt = 0
        payload = None if body is None else json.dumps(body, ensure_ascii=False).encode()
        while True:
            try:
                raw = self._send(method, path, payload, deadline)
                break
            except UpstreamHttpError as error:
                wait = self._retry_wait(error, attempt, deadline)
                if wait is None:
                    raise
                time.sleep(wait)
                attempt += 1
        response = Response(raw)
        try:
            yield response
        finally:
            response.release()

    def _send(self, method: str, path: str, payload: bytes | None, deadline: Deadline) -> urllib3.BaseHTTPResponse:
        left = max(deadline.left(), 0.001)
        timeout = urllib3.Timeout(connect=min(self.connect_timeout, left), read=min(self.read_timeout, left))
        try:
            raw = self._pool.request(
                method, self._base + path, body=payload, headers=self._headers,
                timeout=timeout, preload_content=False, redirect=False,
            )
        except NewConnectionError as error:  # refused, unresolvable (urllib3 files it under timeouts)
            raise UpstreamUnreachable("Could not reach the upstream.") from error
        except Urllib3Timeout as error:
            raise UpstreamTimedOut("The upstream did not answer in time.") from error
        except (HTTPError, OSError) as error:
            raise UpstreamUnreachable("Could not reach the upstream.") from error
        if raw.status < 400:
            return raw
        try:
            text = raw.data.decode("utf-8", "replace")
        except (HTTPError, OSError):
            text = ""
        finally:
            raw.release_conn()
        raise UpstreamStatus(raw.status, raw.headers, _error_body(text))

    def _retry_wait(self, error: UpstreamHttpError, attempt: int, deadline: Deadline) -> float | None:
        """How long to wait before the next attempt, or None to give up: no retries left,
        not worth retrying, or the wait would outlast the deadline."""
        if attempt >= self.max_retries or not _retryable(error):
            return None
        wait = retry_after_seconds(error.headers) if isinstance(error, UpstreamStatus) else None
        if wait is None:
            wait = min(INITIAL_RETRY_WAIT * 2**attempt, MAX_RETRY_WAIT) * (1 - 0.25 * random.random())
        return wait if wait < deadline.left() else None


def _retryable(error: UpstreamHttpError) -> bool:
    if not isinstance(error, UpstreamStatus):
        return True
    told = error.headers.get("x-should-retry")
    if told in ("true", "false"):
        return told == "true"
    return error.status in RETRIED_STATUSES or error.status >= 500


def _error_body(text: str) -> Any:
    try:
        body = json.loads(text)
    except ValueError:
        return text
    return body.get("error", body) if isinstance(body, dict) else body
