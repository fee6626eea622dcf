"""A fake ChatGPT web ``backend-api``: a real aiohttp server speaking the protocol revChatGPT V1 expects.

It keeps its own conversations (a tree of messages, like ChatGPT's ``mapping``), checks the Bearer
token, streams answers as SSE events whose ``parts`` hold the cumulative text, and records every
request. Tests start it on 127.0.0.1 (port 0); one event loop in one daemon thread serves every
connection (keep-alive on; aiohttp sets TCP_NODELAY on each accepted socket).

    with FakeChatGPTBackend() as backend:
        provider = ChatGPTProvider(access_token=backend.token, base_url=backend.url)
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from fakes.loop_thread import LoopThreadServer

PREFIX = "/backend-api/"
DEFAULT_TOKEN = "fake-chatgpt-access-token"
PUID = "fake-puid"


@dataclass
class RecordedRequest:
    method: str
    path: str
    """Relative to ``/backend-api/``, e.g. ``conversation/gen_title/<id>`` (the full path outside it)."""
    query: dict[str, str]
    body: Any
    """The parsed JSON body (None without one; the raw text if it is not JSON)."""
    headers: dict[str, str]
    """Names lower-cased."""
    proxied: bool
    """The request line carried an absolute URL: it came through an HTTP proxy."""


@dataclass
class Node:
    id: str
    message: dict[str, Any] | None
    parent: str | None
    children: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return self.message["content"]["parts"][0] if self.message else ""

    @property
    def role(self) -> str | None:
        return self.message["author"]["role"] if self.message else None


@dataclass
class Conversation:
    id: str
    mapping: dict[str, Node]
    current_node: str
    title: str | None = None
    is_visible: bool = True
    create_time: float = field(default_factory=time.time)
    update_time: float = field(default_factory=time.time)

    def add(self, node: Node) -> None:
        self.mapping[node.id] = node
        if node.parent is not None:
            self.mapping[node.parent].children.append(node.id)
        self.current_node = node.id
        self.update_time = time.time()

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title or "New chat",
            "create_time": _iso(self.create_time),
            "update_time": _iso(self.update_time),
            "mapping": None,
            "current_node": None,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title or "New chat",
            "create_time": self.create_time,
            "update_time": self.update_time,
            "mapping": {
                n.id: {"id": n.id, "message": n.message, "parent": n.parent, "children": n.children}
                for n in self.mapping.values()
            },
            "moderation_results": [],
            "current_node": self.current_node,
            "conversation_id": self.id,
        }


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(timestamp)) + ".000000+00:00"


def _message(role: str, text: str, *, message_id: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": message_id or str(uuid.uuid4()),
        "author": {"role": role, "name": None, "metadata": {}},
        "create_time": time.time(),
        "update_time": None,
        "content": {"content_type": "text", "parts": [text]},
        "status": "finished_successfully",
        "end_turn": None,
        "weight": 1.0,
        "metadata": {},
        "recipient": "all",
        **extra,
    }


async def _body(request: web.Request) -> dict[str, Any]:
    """The JSON object the middleware already read and checked (aiohttp keeps the bytes)."""
    body = json.loads(await request.read() or b"null")
    return body if isinstance(body, dict) else {}


def _detail(status: int, detail: Any) -> web.Response:
    """ChatGPT's backend (FastAPI) error shape."""
    return web.json_response({"detail": detail}, status=status)


class FakeChatGPTBackend(LoopThreadServer):
    """The fake backend-api. Set the knobs below from the test's thread before a request."""

    thread_name = "fake-chatgpt"

    def __init__(self, token: str = DEFAULT_TOKEN, host: str = "127.0.0.1") -> None:
        self.token = token
        self.host = host
        self.reply: str | Callable[[str], str] = "Hello from the fake ChatGPT."
        """The answer, or a function of the prompt that returns it."""
        self.title = "A fake title"
        self.chunk_chars = 3
        """Characters added to the cumulative text per SSE event."""
        self.finish_type: str | None = "stop"
        """``finish_details.type`` of the last event; None: the last event has no finish_details."""
        self.delay = 0.0
        """Seconds before any response (before its headers)."""
        self.event_delay = 0.0
        """Seconds between SSE events."""
        self.break_after: int | None = None
        """End the stream cleanly after this many text events: no finish_details, no ``[DONE]``."""
        self.abort_after: int | None = None
        """Drop the connection after this many text events."""
        self.stream_error: str | None = None
        """Send an in-stream ``{"message": null, "error": ...}`` event after the text, then ``[DONE]``."""
        self.raw_utf8 = False
        """Send non-ASCII as raw UTF-8 in SSE lines (as Go backends do) instead of ``\\uXXXX`` escapes."""
        self.requests: list[RecordedRequest] = []
        self.conversations: dict[str, Conversation] = {}
        self.aborted_streams = 0
        """Answer streams the client went away from before the end."""
        self._failures: deque[tuple[int, Any]] = deque()
        self._cond = threading.Condition()
        self._origin = ""
        super().__init__()

    # --- control, from the test's thread -------------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL to give revChatGPT (``http://127.0.0.1:PORT/backend-api/``)."""
        return self._origin + PREFIX

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:PORT``: also usable as an HTTP proxy URL."""
        return self._origin

    def fail_next(self, status: int, detail: Any = "Something went wrong") -> None:
        """Answer the next authorised request (any endpoint) with ``{"detail": detail}`` and this status."""
        self._failures.append((status, detail))

    def wait(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Block until predicate() holds; it is re-checked whenever a request or an abort is recorded."""
        with self._cond:
            if not self._cond.wait_for(predicate, timeout):
                raise TimeoutError("the fake backend never reached the expected state")

    def paths(self) -> list[str]:
        """The recorded requests' paths, in order."""
        return [r.path for r in self.requests]

    # --- server, on the loop's thread ----------------------------------------------------------

    async def _serve(self) -> None:
        app = web.Application(middlewares=[self._middleware])
        routes = [
            ("POST", "conversation", self._post_conversation),
            ("GET", "conversations", self._list),
            ("PATCH", "conversations", self._patch_all),
            ("GET", "conversation/{id}", self._get),
            ("PATCH", "conversation/{id}", self._patch),
            ("POST", "conversation/gen_title/{id}", self._gen_title),
            ("GET", "models", self._models),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, PREFIX + path, handler)
        # handler_cancellation: a client that goes away cancels its handler, so aborts are seen at once.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self._origin = f"http://{host}:{port}"

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        raw = await request.read() if request.can_read_body else b"null"
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode(errors="replace")
        path = request.path.removeprefix(PREFIX)
        with self._cond:
            self.requests.append(
                RecordedRequest(
                    method=request.method,
                    path=path,
                    query=dict(request.query),
                    body=body,
                    headers={k.lower(): v for k, v in request.headers.items()},
                    proxied=not request.raw_path.startswith("/"),
                )
            )
            self._cond.notify_all()
        await asyncio.sleep(self.delay)
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return _detail(
                401,
                {
                    "message": "Could not parse your authentication token. Please try signing in again.",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "invalid_jwt",
                },
            )
        if self._failures:
            status, detail = self._failures.popleft()
            return _detail(status, detail)
        if isinstance(body, str):
            return _detail(400, "The request body is not JSON")
        try:
            return await handler(request)
        except web.HTTPNotFound:
            return _detail(404, "Not Found")

    def _visible(self, conversation_id: str) -> Conversation | None:
        conversation = self.conversations.get(conversation_id)
        return conversation if conversation is not None and conversation.is_visible else None

    async def _post_conversation(self, request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        messages = body.get("messages") or []
        if body.get("action") != "next" or len(messages) != 1:
            return _detail(400, "Expected action 'next' with exactly one message")
        message = messages[0]
        if message.get("author", {}).get("role") != "user" or not message.get("id"):
            return _detail(400, "The message must have an id and the user role")
        parent_id = body.get("parent_message_id")
        if not parent_id:
            return _detail(400, "parent_message_id is required")
        conversation_id = body.get("conversation_id")
        if conversation_id is None:
            conversation = self._new_conversation(root_id=parent_id)
            parent_id = conversation.current_node
        else:
            found = self._visible(conversation_id)
            if found is None:
                return _detail(404, f"Can't load conversation {conversation_id}")
            conversation = found
            if parent_id not in conversation.mapping:
                return _detail(400, f"Parent message {parent_id} not found")
        if message["id"] in conversation.mapping:
            return _detail(409, f"Message {message['id']} already exists")

        prompt = message["content"]["parts"][0]
        conversation.add(Node(message["id"], _message("user", prompt, message_id=message["id"]), parent_id))
        answer = _message(
            "assistant",
            "",
            status="in_progress",
            metadata={"message_type": "next", "model_slug": body.get("model") or ""},
        )
        conversation.add(Node(answer["id"], answer, message["id"]))
        text = self.reply(prompt) if callable(self.reply) else self.reply
        return await self._stream(request, conversation.id, answer, text)

    def _new_conversation(self, root_id: str) -> Conversation:
        """Like ChatGPT: the client's parent id names the root, and a hidden system message hangs off it."""
        root = Node(root_id, None, None)
        conversation = Conversation(id=str(uuid.uuid4()), mapping={root_id: root}, current_node=root_id)
        system = _message("system", "", metadata={"is_visually_hidden_from_conversation": True})
        conversation.add(Node(system["id"], system, root_id))
        self.conversations[conversation.id] = conversation
        return conversation

    async def _stream(
        self, request: web.Request, conversation_id: str, answer: dict[str, Any], text: str
    ) -> web.StreamResponse:
        """Cumulative text, a closing event with finish_details, then ``[DONE]``; ``answer`` (stored in
        the tree) grows as events go out, so an abandoned stream leaves a partial answer."""
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        ends = list(range(self.chunk_chars, len(text), self.chunk_chars)) + [len(text)]
        cut = self.abort_after if self.abort_after is not None else self.break_after
        try:
            for sent, end in enumerate(ends[:cut]):
                if sent:
                    await asyncio.sleep(self.event_delay)
                answer["content"]["parts"] = [text[:end]]
                await response.write(self._event(answer, conversation_id))
            if self.abort_after is not None and request.transport is not None:
                request.transport.abort()
                return response
            if cut is not None:
                await response.write_eof()
                return response
            if self.stream_error is not None:
                await response.write(self._event(None, conversation_id, self.stream_error))
            else:
                answer.update(status="finished_successfully", end_turn=True)
                if self.finish_type is not None:
                    answer["metadata"]["finish_details"] = {"type": self.finish_type, "stop": "<|im_end|>"}
                await response.write(self._event(answer, conversation_id))
            await response.write_eof(b"data: [DONE]\n\n")
            return response
        except (asyncio.CancelledError, ConnectionResetError):
            with self._cond:
                self.aborted_streams += 1
                self._cond.notify_all()
            raise

    def _event(self, message: dict[str, Any] | None, conversation_id: str, error: str | None = None) -> bytes:
        data = json.dumps(
            {"message": message, "conversation_id": conversation_id, "error": error},
            ensure_ascii=not self.raw_utf8,
        )
        return f"data: {data}\n\n".encode()

    async def _list(self, request: web.Request) -> web.Response:
        offset = int(request.query.get("offset", 0))
        limit = int(request.query.get("limit", 20))
        visible = [c for c in self.conversations.values() if c.is_visible]
        visible.sort(key=lambda c: c.update_time, reverse=True)
        return web.json_response(
            {
                "items": [c.summary() for c in visible[offset : offset + limit]],
                "total": len(visible),
                "limit": limit,
                "offset": offset,
                "has_missing_conversations": False,
            }
        )

    async def _patch_all(self, request: web.Request) -> web.Response:
        if (await _body(request)).get("is_visible") is False:
            for conversation in self.conversations.values():
                conversation.is_visible = False
        return web.json_response({"success": True})

    async def _get(self, request: web.Request) -> web.Response:
        conversation = self._visible(request.match_info["id"])
        if conversation is None:
            return _detail(404, f"Can't load conversation {request.match_info['id']}")
        return web.json_response(conversation.to_json())

    async def _patch(self, request: web.Request) -> web.Response:
        conversation = self._visible(request.match_info["id"])
        if conversation is None:
            return _detail(404, f"Can't load conversation {request.match_info['id']}")
        body = await _body(request)
        if "title" in body:
            conversation.title = body["title"]
        if body.get("is_visible") is False:
            conversation.is_visible = False
        return web.json_response({"success": True})

    async def _gen_title(self, request: web.Request) -> web.Response:
        conversation = self._visible(request.match_info["id"])
        if conversation is None:
            return _detail(404, f"Can't load conversation {request.match_info['id']}")
        if (await _body(request)).get("message_id") not in conversation.mapping:
            return _detail(404, "Message not found")
        conversation.title = self.title
        return web.json_response({"title": self.title})

    async def _models(self, request: web.Request) -> web.Response:
        """What OpenAIAuth's PUID lookup expects; tests assert the provider never calls it."""
        response = web.json_response({"models": [{"slug": "text-davinci-002-render-sha"}], "categories": []})
        response.set_cookie("_puid", PUID)
        return response
