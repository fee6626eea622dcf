"""A lean HTTP/1.1 client for an OpenAI-compatible API: JSON requests, SSE lines, retries in a deadline.

Why not the `openai` SDK, nor urllib3: per answer the SDK cost about 1 ms of CPU more than
urllib3 (it transforms every argument, builds a request model, and under gevent its httpx
pool checks the liveness of every idle connection), and urllib3 0.37 ms more than this
client (0.43 against 0.10 ms per answer of three chunks, measured in one gevent process
against the fake upstream: its pool manager, `http.client` and `email.parser` for the
headers), on a path whose whole budget is about 2 ms (`bench/README.md`). Responses are
parsed by `httptools` (llhttp, the parser of Node.js: status, headers, chunked bodies);
this module keeps the sockets. What the SDK did for us is kept here, each with a test:
- connect and read timeouts per attempt, cut to the answer's deadline;
- retries of connection failures, timeouts, 408, 409, 429 and 5xx (or as the upstream's
  `x-should-retry` says), with the SDK's backoff (0.5 s doubling to 8 s, less up to a quarter
  at random) or the upstream's `retry-after-ms` / `Retry-After`; a wait that would end past the
  deadline is not begun;
- an error's status, headers and body (the `error` object of a JSON body) for the mapping
  to our own errors (`services/providers/openai_compat.py`);
- kept-alive connections (TLS for `https`, verified against the system's certificates),
  each checked before reuse: one the upstream closed while it rested is replaced, not used.
A stream that ends without `finish_reason` is told apart by the reader of the lines.
"""

from __future__ import annotations

import json
import random
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import httptools

from config import http_url
from models.sockets import readable
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


class _Message:
    """One response as `httptools` reports it (its parser's callbacks)."""

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        """Names in lower case; a repeated header's values joined with commas."""
        self.body: list[bytes] = []
        self.head_done = False
        self.done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        key, text = name.decode("latin-1").lower(), value.decode("latin-1")
        self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text

    def on_headers_complete(self) -> None:
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.done = True

    def ends_at_close(self) -> bool:
        """A body of no stated length, which only the connection's end ends."""
        return "content-length" not in self.headers and "chunked" not in self.headers.get("transfer-encoding", "")


class _Connection:
    """A socket to the upstream, and the response being read on it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._expect_response()

    def _expect_response(self) -> None:
        self.message = _Message()
        self._parser = httptools.HttpResponseParser(self.message)
        self.keep_alive = False

    def start(self, request: bytes, read_timeout: float) -> None:
        """Send `request`; its response is read anew."""
        self._expect_response()
        self.sock.settimeout(read_timeout)
        self.sock.sendall(request)

    def read_more(self) -> None:
        """Feed the parser the next bytes; at the connection's end, finish a body that ends
        there or raise `UpstreamUnreachable` (the answer was cut)."""
        data = self.sock.recv(READ_SIZE)
        if not data:
            if self.message.head_done and self.message.ends_at_close():
                self.message.done = True
                return
            raise UpstreamUnreachable("The connection to the upstream was cut.")
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as error:
            raise UpstreamUnreachable("The upstream's answer is not HTTP.") from error

    def status(self) -> int:
        return self._parser.get_status_code()  # type: ignore[no-any-return]

    def read_head(self) -> None:
        while not self.message.head_done:
            self.read_more()
        # From the head (the parser forgets it once the body has ended, maybe in the same read).
        connection = self.message.headers.get("connection", "").lower()
        if self._parser.get_http_version() == "1.0":
            self.keep_alive = "keep-alive" in connection
        else:
            self.keep_alive = "close" not in connection

    def reusable(self) -> bool:
        return self.message.done and self.keep_alive and not self.message.ends_at_close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


READING = ("The upstream stopped sending.", "The connection to the upstream was cut.")
CONNECTING = ("The upstream did not answer in time.", "Could not reach the upstream.")
"""What a timeout and any other failure of the transport say while reading or sending, and
while connecting (TCP, then TLS)."""


@contextmanager
def _as_upstream_errors(said: tuple[str, str]) -> Iterator[None]:
    """The transport's failures as the client's own: a timeout, anything else (refused,
    unresolvable, reset; `ssl.SSLError`: a certificate that does not verify)."""
    timed_out, unreachable = said
    try:
        yield
    except TimeoutError as error:
        raise UpstreamTimedOut(timed_out) from error
    except OSError as error:
        raise UpstreamUnreachable(unreachable) from error


class Response:
    """An upstream's successful answer, read as JSON or as lines; release it when done."""

    def __init__(self, connection: _Connection, release: Callable[[_Connection], None]) -> None:
        self._connection = connection
        self._release = release
        self.headers: Mapping[str, str] = connection.message.headers

    def _chunks(self) -> Iterator[bytes]:
        """The body's bytes as they arrive, to its very end."""
        message = self._connection.message
        while True:
            arrived, message.body = message.body, []
            yield from arrived
            if message.done:
                return
            with _as_upstream_errors(READING):
                self._connection.read_more()

    def json(self) -> Any:
        return json.loads(b"".join(self._chunks()))

    def text(self) -> str:
        return b"".join(self._chunks()).decode("utf-8", "replace")

    def lines(self) -> Iterator[str]:
        """The body's lines as they arrive (without their line ends), to its very end."""
        rest = b""
        for data in self._chunks():
            *complete, rest = (rest + data).split(b"\n")
            for line in complete:
                yield line.rstrip(b"\r").decode("utf-8", "replace")
        if rest:
            yield rest.rstrip(b"\r").decode("utf-8", "replace")

    def release(self) -> None:
        """Keep the connection for the next request if the body was read to its end, else close it."""
        self._release(self._connection)


class Sent:
    """A request whose first attempt is on its way: the upstream works on it while the caller
    does something else (stores the question), then reads the answer or lets it go."""

    def __init__(
        self, http: UpstreamHttp, request: bytes, deadline: Deadline, first: _Connection | UpstreamHttpError
    ) -> None:
        self._http = http
        self._request = request
        self._deadline = deadline
        self._first: _Connection | UpstreamHttpError | None = first

    @contextmanager
    def response(self) -> Iterator[Response]:
        """The answer, retried within the deadline; raises an `UpstreamHttpError` when no
        attempt succeeded. Once only."""
        first, self._first = self._first, None
        assert first is not None, "the answer of a request is read once"
        response = Response(self._http._answered(self._request, self._deadline, first), self._http._give_back)
        try:
            yield response
        finally:
            response.release()

    def close(self) -> None:
        """Let the answer go unread: the first attempt's connection is closed (the upstream
        sees the request cancelled). Nothing once `response()` has begun."""
        first, self._first = self._first, None
        if isinstance(first, _Connection):
            first.close()


class UpstreamHttp:
    """One upstream's base URL and key, its kept-alive connections, its timeouts and retries."""

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
        url = urlsplit(http_url(base_url.rstrip("/")))
        assert url.hostname is not None  # (http_url checked it)
        self._host = url.hostname
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._tls = ssl.create_default_context() if url.scheme == "https" else None
        self._base_path = url.path
        host = url.netloc.rpartition("@")[2]
        if "\r" in api_key or "\n" in api_key:  # (urlsplit drops them from the URL)
            raise ValueError("the upstream's key holds a line break")
        self._head = (
            f"Host: {host}\r\nAuthorization: Bearer {api_key}\r\nContent-Type: application/json\r\n"
            "Accept: application/json, text/event-stream\r\nAccept-Encoding: identity\r\n"
            "User-Agent: gpt-api\r\n"
        ).encode("latin-1")
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_retries = max_retries
        # Connections beyond `keep_alive` are made when needed and closed after use: an
        # answer never waits for a connection.
        self._keep_alive = keep_alive
        self._idle: list[_Connection] = []

    @contextmanager
    def request(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, deadline: Deadline
    ) -> Iterator[Response]:
        """The upstream's answer to the request, retried within `deadline`; raises an
        `UpstreamHttpError` when no attempt succeeded."""
        sent = self.send(method, path, body, deadline=deadline)
        try:
            with sent.response() as response:
                yield response
        finally:
            sent.close()

    def send(self, method: str, path: str, body: dict[str, Any] | None = None, *, deadline: Deadline) -> Sent:
        """The request's first attempt sent now; `Sent.response()` reads its answer (and makes
        any other attempt). Never raises: a failed first attempt is met when the answer is read."""
        request = f"{method} {self._base_path}{path} HTTP/1.1\r\n".encode() + self._head
        if body is None:
            request += b"\r\n"
        else:
            payload = json.dumps(body, ensure_ascii=False).encode()
            request += b"Content-Length: %d\r\n\r\n" % len(payload) + payload
        return Sent(self, request, deadline, self._attempt(request, deadline))

    def _answered(self, request: bytes, deadline: Deadline, first: _Connection | UpstreamHttpError) -> _Connection:
        """A connection whose response to `request` is a success, its head read: the first
        attempt's, else the first of the retries that succeeds."""
        attempt, sent = 0, first
        while True:
            try:
                if isinstance(sent, UpstreamHttpError):
                    raise sent
                return self._successful(sent)
            except UpstreamHttpError as error:
                wait = self._retry_wait(error, attempt, deadline)
                if wait is None:
                    raise
            time.sleep(wait)
            attempt += 1
            sent = self._attempt(request, deadline)

    def _attempt(self, request: bytes, deadline: Deadline) -> _Connection | UpstreamHttpError:
        """A connection with `request` sent on it, or why there is none."""
        try:
            return self._start(request, deadline)
        except UpstreamHttpError as error:
            return error

    def _start(self, request: bytes, deadline: Deadline) -> _Connection:
        """A connection with `request` sent on it."""
        left = max(deadline.left(), 0.001)
        connection = self._connection(min(self.connect_timeout, left))
        try:
            with _as_upstream_errors(READING):
                connection.start(request, min(self.read_timeout, left))
        except BaseException:
            connection.close()
            raise
        return connection

    def _successful(self, connection: _Connection) -> _Connection:
        """`connection` once the head of a successful response is read on it; closed, and
        `UpstreamStatus` raised, for an error status."""
        try:
            with _as_upstream_errors(READING):
                connection.read_head()
        except BaseException:
            connection.close()
            raise
        status = connection.status()
        if status < 400:
            return connection
        response = Response(connection, self._give_back)
        try:
            text = response.text()
        except UpstreamUnreachable:
            text = ""
        finally:
            response.release()
        raise UpstreamStatus(status, connection.message.headers, _error_body(text))

    def _connection(self, connect_timeout: float) -> _Connection:
        """A kept-alive connection that the upstream has not closed, or a new one."""
        while self._idle:
            connection = self._idle.pop()
            if readable(connection.sock.fileno()):  # closed or reset while it rested
                connection.close()
                continue
            return connection
        with _as_upstream_errors(CONNECTING):
            sock = socket.create_connection((self._host, self._port), timeout=connect_timeout)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self._tls is not None:
                    sock = self._tls.wrap_socket(sock, server_hostname=self._host)
            except BaseException:
                sock.close()
                raise
        return _Connection(sock)

    def _give_back(self, connection: _Connection) -> None:
        if connection.reusable() and len(self._idle) < self._keep_alive:
            self._idle.append(connection)
        else:
            connection.close()

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
