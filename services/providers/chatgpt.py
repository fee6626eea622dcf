"""A ChatGPT account as the upstream, through revChatGPT's V1 client and an access token.

ChatGPT keeps its own copy of every conversation: a new user message is sent under the
upstream id of its parent, with the local id as its own upstream id, and the answer's
upstream ids come back in the chunks.

revChatGPT 6.8.6 (archived) has traps this module steps around; each is named where handled:
its constructor writes under ~ and calls a third-party PUID endpoint, its session follows proxy
environment variables, its SSE parser drops lines with raw non-ASCII or DEL bytes and ignores
in-stream errors, only its answer request has a timeout, and a reused Chatbot carries the last
conversation over to the next "new" one.
"""

from __future__ import annotations

import functools
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from revChatGPT import typings
from revChatGPT.V1 import Chatbot
from urllib3.exceptions import ReadTimeoutError

from services.completion_chunks import CompletionBuilder
from services.errors import (
    ConversationNotFound,
    InvalidRequest,
    ServiceError,
    UpstreamError,
    UpstreamNotConfigured,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from services.message_paths import message_text
from services.providers.base import ChatMessage, CompletionEvent, CompletionRequest, ReplyChunk, ReplyRequest
from services.providers.deadline import Deadline, within

log = logging.getLogger(__name__)

T = TypeVar("T")

# Chatbot.set_access_token's headers, set here because that method logs the token at DEBUG.
_HEADERS = {
    "Accept": "text/event-stream",
    "Content-Type": "application/json",
    "User-Agent": (
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/113.0.0.0 Safari/537.36"
    ),
}
_FINISH_REASONS = {"max_tokens": "length"}
_NO_TITLE = "Error generating title"  # what Chatbot.gen_title returns when the answer has no title


class ChatGPTProvider:
    """ChatGPT web (``backend-api``) with an account's access token.

    Thread- and greenlet-safe without locks: every call builds its own Chatbot and HTTP session
    and closes them when done. A shared Chatbot would need a lock held for a whole answer, since
    it tracks "the current conversation" (a reused one even sends it for a new conversation);
    building ours (session included) measures about 20 µs, against answers that take seconds.
    What is lost is connection reuse between calls.
    """

    name = "chatgpt"

    def __init__(
        self,
        *,
        access_token: str,
        base_url: str,
        model: str = "text-davinci-002-render-sha",
        proxy: str | None = None,
        timeout: float = 60.0,
        deadline: float = 120.0,
    ) -> None:
        """``timeout`` bounds connecting and each wait for data; ``deadline`` a whole answer."""
        if not access_token:
            raise UpstreamNotConfigured("CHATGPT_ACCESS_TOKEN is not set")
        self.default_model = model
        self.base_url = _normalised_base_url(base_url)
        self.timeout = timeout
        self.deadline = deadline
        self._access_token = access_token
        self._proxy = proxy or None

    def stream_reply(self, request: ReplyRequest) -> Iterator[ReplyChunk]:
        """Send the last message of ``request`` under ``upstream_parent_id`` and yield the answer.

        Without ``upstream_conversation_id`` a new upstream conversation starts (given the
        dialogue so far, when there is one: see `_reply_prompt`); with it but without a parent,
        the message becomes a new first message of that conversation.
        """
        prompt = _reply_prompt(request)
        message = {
            "id": request.user_message_id,
            "role": "user",
            "author": {"role": "user"},
            "content": {"content_type": "text", "parts": [prompt]},
        }
        conversation_id = request.upstream_conversation_id
        model = request.model or self.default_model
        deadline = Deadline(self.deadline)
        with self._chatbot() as bot, _translated("answer", conversation_id):
            parent_id = None
            if conversation_id is not None:
                parent_id = request.upstream_parent_id or _first_message_parent(
                    bot.get_msg_history(conversation_id)
                )
            events = bot.post_messages(
                [message],
                conversation_id=conversation_id,
                parent_id=parent_id,
                model=model,
                timeout=min(self.timeout, max(deadline.left(), 0.001)),
            )
            yield from self._chunks(within(deadline, events), model)

    def complete(self, request: CompletionRequest) -> CompletionEvent:
        """The streamed answer, put together (ChatGPT only streams)."""
        builder, last = CompletionBuilder(), CompletionEvent({})
        for last in self.stream_completion(request):
            builder.add(last.data)
        return CompletionEvent(builder.completion(), last.upstream_conversation_id, last.upstream_message_id)

    def stream_completion(self, request: CompletionRequest) -> Iterator[CompletionEvent]:
        """Text in, text out: the messages ChatGPT has not seen go as one user message (as they
        are when that is one user message, else as a transcript), the answer comes back as chunks."""
        prompt = _prompt(request)
        model = request.body["model"]
        envelope = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time())}
        reply = ReplyRequest(
            messages=[ChatMessage(role="user", content=prompt)],
            model=model,
            user_message_id=request.user_message_id,
            upstream_conversation_id=request.upstream_conversation_id,
            upstream_parent_id=request.upstream_parent_id,
        )
        delta: dict[str, Any] = {"role": "assistant"}
        for piece in self.stream_reply(reply):
            finish = None if piece.finish_reason == "interrupted" else piece.finish_reason  # no finish seen
            if not piece.delta and finish is None:
                continue
            if piece.delta:
                delta["content"] = piece.delta
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            data = {**envelope, "model": piece.model or model, "choices": [choice]}
            yield CompletionEvent(data, piece.upstream_conversation_id, piece.upstream_message_id)
            delta = {}

    def list_models(self) -> list[dict[str, Any]]:
        """The account's models (`backend-api/models`), as OpenAI's model objects."""

        def models(bot: Chatbot) -> Any:
            response = bot.session.get(f"{bot.base_url}models")
            if not response.ok:
                raise typings.Error(source="models", message=response.text, code=response.status_code)
            return response.json()

        listed = self._call("list models", None, models)
        slugs = [m.get("slug") for m in listed.get("models") or () if isinstance(m, dict)] if isinstance(listed, dict) else []
        return [{"id": slug, "object": "model", "created": 0, "owned_by": "chatgpt"} for slug in slugs if isinstance(slug, str)]

    def generate_title(self, request: ReplyRequest, answer: str) -> str | None:
        """Ask ChatGPT to title the conversation from its own copy of the exchange (``answer`` unused).

        ``request.upstream_conversation_id`` must name the answer's conversation (the service
        sets it from the chunks); the answer is found upstream as the latest child of the user
        message, whose upstream id is ``request.user_message_id``. None on any failure.
        """
        conversation_id = request.upstream_conversation_id
        if conversation_id is None:
            return None

        def gen_title(bot: Chatbot) -> str:
            user_message = bot.get_msg_history(conversation_id)["mapping"][request.user_message_id]
            return bot.gen_title(conversation_id, user_message["children"][-1])

        try:
            title = self._call("generate a title", conversation_id, gen_title)
        except ServiceError as error:
            log.warning("ChatGPT title generation failed: %s", error)
            return None
        title = title.strip()
        return title if title and title != _NO_TITLE else None

    def rename(self, upstream_conversation_id: str, title: str) -> None:
        self._call(
            "rename a conversation",
            upstream_conversation_id,
            lambda bot: bot.change_title(upstream_conversation_id, title),
        )

    def delete(self, upstream_conversation_id: str) -> None:
        """Hide the conversation (``is_visible: false``), which is how ChatGPT deletes."""
        self._call(
            "delete a conversation",
            upstream_conversation_id,
            lambda bot: bot.delete_conversation(upstream_conversation_id),
        )

    def clear(self) -> None:
        self._call("clear conversations", None, lambda bot: bot.clear_conversations())

    # --- internals ------------------------------------------------------------------------------

    def _chunks(self, events: Iterator[dict[str, Any]], requested_model: str) -> Iterator[ReplyChunk]:
        """Turn revChatGPT's events (cumulative text) into deltas and a closing chunk."""
        text = ""
        conversation_id = message_id = model = finish = None
        for event in events:
            # revChatGPT names the answer's id "parent_id": the parent of the next message.
            conversation_id, message_id = event["conversation_id"], event["parent_id"]
            model, finish = event["model"] or model, event["finish_details"]
            # ChatGPT's parts only grow; an event that does not (a status update) carries no new text.
            if len(event["message"]) > len(text):
                delta, text = event["message"][len(text) :], event["message"]
                yield ReplyChunk(
                    delta=delta, upstream_conversation_id=conversation_id, upstream_message_id=message_id
                )
        if conversation_id is None or message_id is None:
            raise UpstreamError("ChatGPT ended the answer stream without sending an answer")
        yield ReplyChunk(
            finish_reason=_FINISH_REASONS.get(finish, finish) if finish else "interrupted",
            model=model or requested_model,
            upstream_conversation_id=conversation_id,
            upstream_message_id=message_id,
        )

    def _call(self, action: str, conversation_id: str | None, call: Callable[[Chatbot], T]) -> T:
        with self._chatbot() as bot, _translated(action, conversation_id):
            return call(bot)

    @contextmanager
    def _chatbot(self) -> Iterator[Chatbot]:
        """A Chatbot for one call; closing it closes its responses, so an abandoned stream stops."""
        bot = _Chatbot(
            access_token=self._access_token,
            base_url=self.base_url,
            proxy=self._proxy,
            timeout=self.timeout,
        )
        try:
            yield bot
        finally:
            bot.session.close()


class _Chatbot(Chatbot):
    """revChatGPT's V1 Chatbot without running ``Chatbot.__init__``, which:

    - creates ``~/.config/revChatGPT`` (and fails when HOME is missing or read-only);
    - builds an ``OpenAIAuth`` client and asks ``OPENAI_MODELS_URL`` (default: a third-party
      host) for a PUID through ``tls_client``, whose native Go runtime would start in-process;
    - logs its config, access token included, at DEBUG;
    - falls back to the base URL read from CHATGPT_BASE_URL at import time.

    The attributes set here are the ones its request methods read.
    """

    def __init__(self, *, access_token: str, base_url: str, proxy: str | None, timeout: float) -> None:
        # SERVER_SIDE_ARKOSE: for gpt-4* models the library would otherwise fetch an Arkose token
        # from a third-party host (printing, and prompting on stdin); the backend must handle it.
        self.config = {"access_token": access_token, "SERVER_SIDE_ARKOSE": True}
        self.session = _session(access_token, proxy, timeout)
        self.base_url = base_url
        self.conversation_id = None
        self.parent_id = None
        self.conversation_mapping: dict[str, str] = {}
        self.conversation_id_prev_queue: list[str | None] = []
        self.parent_id_prev_queue: list[str | None] = []
        self.lazy_loading = True
        self.disable_history = False


def _session(access_token: str, proxy: str | None, timeout: float) -> requests.Session:
    session = requests.Session()
    # requests would otherwise follow HTTP(S)_PROXY / ALL_PROXY, even for loopback; proxy only when asked.
    session.trust_env = False
    if proxy:
        session.proxies = {"http": proxy, "https": proxy}
    adapter = _Adapter(timeout)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers.clear()
    session.headers.update({**_HEADERS, "Authorization": f"Bearer {access_token}"})
    return session


class _Adapter(HTTPAdapter):
    """Defaults every request's timeout (the library sets one only when asking for an answer),
    normalises SSE lines for the library's parser, and closes its responses when closed."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self._timeout = timeout
        self._responses: list[requests.Response] = []

    def send(  # type: ignore[override]
        self, request: requests.PreparedRequest, **kwargs: Any
    ) -> requests.Response:
        kwargs["timeout"] = kwargs.get("timeout") or self._timeout
        response = super().send(request, **kwargs)
        self._responses.append(response)
        if response.headers.get("Content-Type", "").startswith("text/event-stream"):
            lines = functools.partial(_normalised_sse, response.iter_lines)
            response.iter_lines = lines  # type: ignore[method-assign]
        return response

    def close(self) -> None:
        for response in self._responses:
            response.close()
        # HTTPAdapter.close() only clears its pool managers, and urllib3 2.8's PoolManager.clear()
        # does not close the pools: idle keep-alive sockets would be left to the garbage collector.
        for manager in (self.poolmanager, *self.proxy_manager.values()):
            for key in manager.pools.keys():
                manager.pools[key].close()
        super().close()


def _normalised_sse(iter_lines: Callable[..., Iterator[bytes]], *args: Any, **kwargs: Any) -> Iterator[bytes]:
    """SSE lines as revChatGPT can parse them, and in-stream errors raised.

    The library parses ``str(line)[2:-1]`` (the bytes' repr) with ``json.loads``: a raw UTF-8
    (Go backends send it) or DEL byte turns into ``\\xNN``, the line fails to parse and is
    silently dropped. Re-encoding each event as ASCII-only JSON keeps the text. The library
    also skips ``{"message": null, "error": ...}`` events; they become an UpstreamError here.
    """
    for line in iter_lines(*args, **kwargs):
        if not line.startswith(b"data:"):
            yield line
            continue
        payload = line[5:].removeprefix(b" ")
        try:
            event = json.loads(payload)
        except ValueError:  # "[DONE]"
            yield b"data: " + payload
            continue
        if isinstance(event, dict) and event.get("error"):
            raise UpstreamError(f"ChatGPT stopped answering with an error: {_describe(event['error'])}")
        yield b"data: " + json.dumps(event).encode("ascii")


_SPEAKERS = {"system": "System", "developer": "Developer", "user": "User", "assistant": "Assistant"}
_TAKEN = frozenset({"model", "messages", "stream", "stream_options"})
_DEFAULTS: dict[str, float] = {"n": 1, "temperature": 1, "top_p": 1, "presence_penalty": 0, "frequency_penalty": 0}
"""Fields a chat UI sends at OpenAI's default: ChatGPT answers so anyway."""


def _prompt(request: CompletionRequest) -> str:
    """What ChatGPT is sent for a Chat Completions body; what it cannot take is an
    `InvalidRequest` naming the field (tools, images, sampling, ...)."""
    body = request.body
    for name, value in body.items():
        at_default = isinstance(value, (int, float)) and not isinstance(value, bool) and _DEFAULTS.get(name) == value
        if name not in _TAKEN and value is not None and not at_default:
            raise InvalidRequest(
                f"{name}: LLM_PROVIDER=chatgpt answers text only, with ChatGPT's own settings; "
                "it cannot take this field.",
                param=name,
            )
    for index, message in enumerate(body["messages"]):
        where = f"messages[{index}]"
        for key in message:
            if key not in ("role", "content"):
                raise InvalidRequest(f"{where}.{key}: LLM_PROVIDER=chatgpt takes text messages only.", param=f"{where}.{key}")
        if message.get("role") not in _SPEAKERS:
            raise InvalidRequest(
                f"{where}.role: LLM_PROVIDER=chatgpt takes system, developer, user and assistant messages only.",
                param=f"{where}.role",
            )
        content = message.get("content")
        if not isinstance(content, str) and not (
            isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content)
        ):
            raise InvalidRequest(f"{where}.content: LLM_PROVIDER=chatgpt takes text only.", param=f"{where}.content")
    unseen = body["messages"][request.seen :]
    if len(unseen) == 1 and unseen[0]["role"] == "user":
        return message_text(unseen[0]["content"])
    return "\n\n".join(f"{_SPEAKERS[m['role']]}: {message_text(m['content'])}" for m in unseen)


def _reply_prompt(request: ReplyRequest) -> str:
    """The new message; when a new upstream conversation takes over a dialogue kept here (an
    imported one, or one whose upstream copy was dropped), that dialogue as a transcript, as
    `_prompt` sends what ChatGPT has not seen, so the answer has its context."""
    last = request.messages[-1].content
    earlier = request.messages[:-1]
    if request.upstream_conversation_id is not None or not any(m.role in ("user", "assistant") for m in earlier):
        return last
    return "\n\n".join(f"{_SPEAKERS.get(m.role, m.role)}: {m.content}" for m in request.messages)


def _normalised_base_url(base_url: str) -> str:
    """revChatGPT appends paths to the base URL as is: it must end with "/"."""
    base_url = base_url.strip()
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UpstreamNotConfigured(
            "CHATGPT_BASE_URL must be an http(s) URL of a ChatGPT backend-api, "
            f"e.g. https://example.com/backend-api/ (got {base_url!r})"
        )
    return base_url if base_url.endswith("/") else base_url + "/"


def _first_message_parent(history: dict[str, Any]) -> str:
    """The node a conversation's first user message hangs from: the root, or the hidden system
    message ChatGPT puts under it. A new first message goes there, as a sibling."""
    mapping = history["mapping"]
    node = [n for n in mapping.values() if n.get("parent") is None][0]
    while node["children"]:
        child = mapping[node["children"][0]]
        message = child.get("message")
        if message is not None and message["author"]["role"] != "system":
            break
        node = child
    return node["id"]


@contextmanager
def _translated(action: str, conversation_id: str | None) -> Iterator[None]:
    """Raise revChatGPT's and requests' errors as the service's Upstream* errors."""
    try:
        yield
    except typings.Error as error:
        raise _library_error(error, action, conversation_id) from error
    except requests.Timeout as error:
        raise UpstreamTimeout(f"ChatGPT did not respond in time ({action})") from error
    except requests.ConnectionError as error:
        if error.args and isinstance(error.args[0], ReadTimeoutError):  # a stall mid-stream
            raise UpstreamTimeout(f"ChatGPT stopped sending data ({action})") from error
        raise UpstreamError(f"Could not reach ChatGPT to {action}: {error}") from error
    except (requests.RequestException, ValueError, LookupError, TypeError) as error:
        raise UpstreamError(f"ChatGPT sent an unexpected response ({action}): {error!r}") from error


def _library_error(error: typings.Error, action: str, conversation_id: str | None) -> ServiceError:
    """Map a ``revChatGPT.typings.Error``: ``code`` is the HTTP status for HTTP errors (``message``
    then holds the body), an ``ErrorType`` otherwise."""
    code = error.code
    if not isinstance(code, int):
        return UpstreamError(f"ChatGPT failed to {action}: {error.message}")
    detail = _describe(error.message)
    if code in (401, 403):
        return UpstreamError(
            f"ChatGPT refused the access token (HTTP {code}: {detail}). "
            "Set CHATGPT_ACCESS_TOKEN to a current ChatGPT access token.",
            upstream_status=code,
        )
    if code == 404 and conversation_id is None:
        return UpstreamError(
            f"ChatGPT answered HTTP 404 to {action} ({detail}): "
            "check that CHATGPT_BASE_URL is a backend-api base URL",
            upstream_status=code,
        )
    if code == 404:
        return ConversationNotFound(
            f"ChatGPT has no conversation {conversation_id} ({detail})",
            upstream_conversation_id=conversation_id,
        )
    if code == 429:  # revChatGPT keeps no headers: no Retry-After to pass on
        return UpstreamRateLimited(f"ChatGPT is rate limiting this account (HTTP 429: {detail})")
    return UpstreamError(f"ChatGPT refused to {action} (HTTP {code}: {detail})", upstream_status=code)


def _describe(body: Any) -> str:
    """The human part of an error body: FastAPI's ``{"detail": ...}``, ``{"message": ...}`` or text."""
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            return " ".join(body.split())[:300] or "no details"
    if isinstance(body, dict):
        inner = body.get("detail", body)
        if isinstance(inner, dict):
            inner = inner.get("message", inner)
        return str(inner)[:300]
    return str(body)[:300]
