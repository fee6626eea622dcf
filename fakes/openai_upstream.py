"""A fake OpenAI-compatible upstream: a real aiohttp server speaking the Chat Completions wire protocol.

Tests drive the real ``openai`` SDK (or the project's own client) against it over real HTTP on
127.0.0.1 and script what each request gets back: a reply, an HTTP error, a hang or a reset.

Standalone, for benchmarks::

    python -m fakes.openai_upstream --port 0 --latency-ms 60 [--chunks 5] [--chunk-delay-ms 0] [--text "..."]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import socket
import ssl
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from fakes.loop_thread import LoopThreadServer
from fakes.net import raise_fd_limit, reset

LISTEN_BACKLOG = 4096
SYSTEM_FINGERPRINT = "fp_fake"
MODELS = ("gpt-test", "gpt-4o-mini", "org/model-with-a-slash")


@dataclass
class Reply:
    """A successful answer."""

    text: str = "Hello!"
    chunks: list[str] | None = None  # stream pieces; None: split_words(text)
    finish_reason: str = "stop"
    model: str | None = None  # None: echo the request's "model"
    usage: tuple[int, int] | None = (7, 5)  # (prompt_tokens, completion_tokens); None: omit usage
    delay: float = 0.0  # seconds before response headers
    chunk_delay: float = 0.0  # seconds between stream chunks
    break_after: int | None = None  # stream mode: abort the connection after this many content chunks
    tool_calls: list[dict] | None = None  # [{"id", "type": "function", "function": {"name", "arguments"}}]

    def pieces(self) -> list[str]:
        return split_words(self.text) if self.chunks is None else self.chunks


@dataclass
class Fail:
    """An HTTP error in OpenAI's error shape."""

    status: int = 500
    message: str = "upstream exploded"
    headers: dict[str, str] = field(default_factory=dict)  # e.g. {"Retry-After": "0"}
    delay: float = 0.0


@dataclass
class Hang:
    """Accept the request and never answer (until the client goes away or the server stops)."""


@dataclass
class Reset:
    """Read the request, then abort the connection with no response."""


Behaviour = Reply | Fail | Hang | Reset


@dataclass
class RecordedRequest:
    body: dict
    headers: dict[str, str]  # names lower-cased
    path: str
    client: tuple[str, int] | None = None
    """The client's address and port: requests on one kept-alive connection share it."""


def _recorded(request: web.Request, body: dict) -> RecordedRequest:
    """What the fake keeps of a request it was sent."""
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return RecordedRequest(
        body=body, headers={k.lower(): v for k, v in request.headers.items()}, path=request.path,
        client=(peer[0], peer[1]) if peer else None,
    )


def split_words(text: str, n: int = 3) -> list[str]:
    """Split text into at most n pieces at word boundaries; the pieces join back to text exactly."""
    if not text:
        return []
    words = re.split(r"(?<=\s)(?=\S)", text)  # each word keeps its trailing whitespace
    size = -(-len(words) // max(n, 1))
    return ["".join(words[i : i + size]) for i in range(0, len(words), size)]


def echo(body: dict) -> Behaviour:
    """The default behaviour: echo the content of the last message."""
    messages = body.get("messages") or [{}]
    content = messages[-1].get("content") or ""
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
        content = "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    if not isinstance(content, str):
        content = json.dumps(content)
    return Reply(text=f"Echo: {content}")


def error_body(status: int, message: str, code: str | None = None, param: str | None = None) -> dict:
    if status == 429:
        type_, code = "requests", code or "rate_limit_exceeded"
    elif status >= 500:
        type_ = "server_error"
    else:
        type_ = "invalid_request_error"
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _json_response(status: int, payload: dict, headers: dict[str, str] | None = None) -> web.Response:
    # web.Response writes headers and body in one send; x-request-id is what the SDK exposes as _request_id.
    return web.Response(
        status=status,
        body=json.dumps(payload).encode(),
        content_type="application/json",
        headers={"x-request-id": f"req_{uuid.uuid4().hex}", **(headers or {})},
    )


def _error_response(status: int, message: str, **kwargs: Any) -> web.Response:
    headers = kwargs.pop("headers", None)
    return _json_response(status, error_body(status, message, **kwargs), headers)


class _SSEResponse(web.StreamResponse):
    """A StreamResponse that holds its headers back and sends them with the first event.

    Same opt-in that web.Response uses; if aiohttp dropped it, headers would merely go in their own send.
    """

    _send_headers_immediately = False


def _abort(request: web.BaseRequest, rst: bool = False) -> None:
    """Drop the connection now, without finishing the HTTP message.

    rst: send a TCP RST (SO_LINGER 0) like a crashed peer; otherwise what already reached the kernel
    is still delivered before the FIN, so a broken stream keeps its first chunks.
    """
    transport = request.transport
    if transport is None:
        return
    if rst:
        reset(transport)
    else:
        transport.abort()


class FakeOpenAI(LoopThreadServer):
    """The fake upstream; runs an aiohttp app on its own event loop in a daemon thread."""

    thread_name = "fake-openai"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        record: bool = True,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        """Serve HTTPS with it (the URL then starts with `https://`)."""
        self.api_key = api_key
        self.record = record
        self.url = ""
        self.requests: list[RecordedRequest] = []
        self.default: Callable[[dict], Behaviour] = echo
        self.models: list[str] = list(MODELS)
        """What `GET /v1/models` lists."""
        self.active_requests = 0
        self._script: deque[Behaviour] = deque()
        self._cond = threading.Condition()
        self._handlers: set[asyncio.Task[Any]] = set()
        super().__init__()

    # --- control, from the test's thread -------------------------------------------------------

    def script(self, *behaviours: Behaviour) -> None:
        """Queue behaviours, consumed one per accepted request, in order; then ``default`` applies."""
        with self._cond:
            self._script.extend(behaviours)

    def reset(self) -> None:
        with self._cond:
            self._script.clear()
            self.requests.clear()
            self.default = echo
            self.models = list(MODELS)

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> list[RecordedRequest]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.requests) >= n, timeout):
                raise TimeoutError(f"expected {n} requests, got {len(self.requests)}")
            return list(self.requests)

    def nodelay_flags(self) -> list[bool]:
        """TCP_NODELAY of each open connection's socket: True means no delayed-ACK stalls."""

        def flags(server: web.Server) -> list[bool]:
            sockets = [c.transport.get_extra_info("socket") for c in server.connections if c.transport]
            return [bool(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)) for s in sockets if s]

        return self._on_loop(flags, [])

    # --- server, on the loop's thread ----------------------------------------------------------

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_get("/v1/models", self._models)
        # handler_cancellation: a client that goes away cancels its handler (ends Hang, delays).
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=LISTEN_BACKLOG, ssl_context=self.ssl_context)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"{'https' if self.ssl_context else 'http'}://{host}:{port}/v1"

    async def _shutdown(self) -> None:
        for task in list(self._handlers):
            task.cancel()
        await super()._shutdown()

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.active_requests += 1
        try:
            return await self._handle(request)
        finally:
            self.active_requests -= 1
            self._handlers.discard(task)

    async def _models(self, request: web.Request) -> web.Response:
        """`GET /v1/models`: `models` as OpenAI lists them (recorded with an empty body)."""
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _error_response(401, "Incorrect API key provided.", code="invalid_api_key")
        with self._cond:
            if self.record:
                self.requests.append(_recorded(request, {}))
                self._cond.notify_all()
        data = [{"id": name, "object": "model", "created": 1700000000, "owned_by": "fake"} for name in self.models]
        return _json_response(200, {"object": "list", "data": data})

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _error_response(401, "Incorrect API key provided.", code="invalid_api_key")
        try:
            body = await request.json()
        except ValueError:
            return _error_response(400, "We could not parse the JSON body of your request.")
        if not isinstance(body, dict):
            return _error_response(400, "The request body must be a JSON object.")

        with self._cond:
            if self.record:
                self.requests.append(_recorded(request, body))
                self._cond.notify_all()
            scripted = self._script.popleft() if self._script else None
        behaviour = scripted or self.default(body)

        match behaviour:
            case Reply():
                await asyncio.sleep(behaviour.delay)
                if body.get("stream"):
                    return await self._stream(request, body, behaviour)
                return _json_response(200, _completion(body, behaviour))
            case Fail():
                await asyncio.sleep(behaviour.delay)
                return _error_response(behaviour.status, behaviour.message, headers=behaviour.headers)
            case Hang():
                return await asyncio.Future()  # never resolves; cancelled by client disconnect or stop()
            case Reset():
                _abort(request, rst=True)
                return web.Response()  # nothing is sent: the transport is gone
        raise TypeError(f"not a Behaviour: {behaviour!r}")

    async def _stream(self, request: web.Request, body: dict, reply: Reply) -> web.StreamResponse:
        """Send the SSE stream; events due at the same moment go out in one write, flushed at once."""
        response = _SSEResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        chunk = _chunk_maker(body, reply)
        pieces = reply.pieces()
        broken = reply.break_after is not None and reply.break_after <= len(pieces)
        if broken:
            pieces = pieces[: reply.break_after]

        events = [chunk({"role": "assistant", "content": ""})]
        for n, piece in enumerate(pieces):
            if n and reply.chunk_delay:
                await response.write(b"".join(events))
                events.clear()
                await asyncio.sleep(reply.chunk_delay)
            events.append(chunk({"content": piece}))
        if broken:
            await response.write(b"".join(events))
            _abort(request)
            return response
        for index, call in enumerate(reply.tool_calls or ()):  # a call's head, then its arguments
            head = {**call, "index": index, "function": {**call["function"], "arguments": ""}}
            events.append(chunk({"tool_calls": [head]}))
            events.append(chunk({"tool_calls": [{"index": index, "function": {"arguments": call["function"]["arguments"]}}]}))
        events.append(chunk({}, reply.finish_reason))
        if (usage := _usage(reply)) is not None and _include_usage(body):
            events.append(chunk(None, usage=usage))
        events.append(b"data: [DONE]\n\n")
        await response.write_eof(b"".join(events))  # one send, with the chunked-encoding terminator
        return response


def _envelope(body: dict, reply: Reply, object_: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": object_,
        "created": int(time.time()),
        "model": reply.model or body.get("model") or "fake-model",
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }


def _usage(reply: Reply) -> dict[str, int] | None:
    if reply.usage is None:
        return None
    prompt, completion = reply.usage
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _completion(body: dict, reply: Reply) -> dict[str, Any]:
    completion = {
        **_envelope(body, reply, "chat.completion"),
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": reply.text or None if reply.tool_calls else reply.text,
                    "refusal": None,
                    **({"tool_calls": reply.tool_calls} if reply.tool_calls else {}),
                },
                "logprobs": None,
                "finish_reason": reply.finish_reason,
            }
        ],
    }
    if (usage := _usage(reply)) is not None:
        completion["usage"] = usage
    return completion


def _include_usage(body: dict) -> bool:
    return bool((body.get("stream_options") or {}).get("include_usage"))


def _chunk_maker(body: dict, reply: Reply) -> Callable[..., bytes]:
    """Return chunk(delta, finish_reason=None, usage=None) -> one SSE event; delta None: the usage chunk."""
    envelope = _envelope(body, reply, "chat.completion.chunk")
    include_usage = _include_usage(body)

    def chunk(delta: dict | None, finish_reason: str | None = None, usage: dict | None = None) -> bytes:
        choices = [] if delta is None else [
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        ]
        data: dict[str, Any] = {**envelope, "choices": choices}
        if include_usage:  # OpenAI then sends "usage": null on every chunk but the last
            data["usage"] = usage
        return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"

    return chunk


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a fake OpenAI upstream until SIGTERM/SIGINT.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay before response headers")
    parser.add_argument("--chunks", type=int, default=3, help="stream pieces per reply")
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0)
    parser.add_argument("--text", default="The quick brown fox jumps over the lazy dog.")
    args = parser.parse_args(argv)

    reply = Reply(
        text=args.text,
        chunks=split_words(args.text, args.chunks),
        delay=args.latency_ms / 1000,
        chunk_delay=args.chunk_delay_ms / 1000,
    )
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    raise_fd_limit()
    with FakeOpenAI(port=args.port, record=False) as fake:
        fake.default = lambda body: reply
        print(f"READY {fake.url}", flush=True)
        stopping.wait()


if __name__ == "__main__":
    main()
