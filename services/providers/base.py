"""The one interface every upstream implements.

The conversation service hands a provider the path from the root to the new user
message and reads back text as it arrives. Providers that keep their own copy of the
conversation upstream (ChatGPT) also receive the upstream ids the service stored, and
report the ids the upstream assigned in the chunks they yield.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class ChatMessage:
    """One message of the context sent upstream."""

    role: Role
    content: str
    upstream_id: str | None = None
    node_id: uuid.UUID | None = field(default=None, compare=False)
    """The stored message this one is (None for text that is no node of the tree): what its
    token count is cached under (`services/context_budget.py`)."""


@dataclass(frozen=True)
class Sampling:
    """How the upstream should write this answer, where the caller said (None: its default)."""

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    """At most this many tokens of answer."""
    user: str | None = None
    """The caller's end user, passed on for the upstream's abuse monitoring."""

    def given(self) -> dict[str, float | int | str]:
        """The fields the caller set, by their Chat Completions names."""
        return {name: value for name, value in vars(self).items() if value is not None}


@dataclass(frozen=True)
class ReplyRequest:
    """What the service asks a provider to answer."""

    messages: list[ChatMessage]
    """Path from the root to the new user message (the last item), oldest first."""
    model: str
    user_message_id: str
    """Local id of the new user message (ChatGPT reuses it as the upstream id)."""
    upstream_conversation_id: str | None = None
    upstream_parent_id: str | None = None
    """Upstream id of the new user message's parent, when the upstream keeps one."""
    sampling: Sampling = Sampling()


@dataclass(frozen=True)
class ReplyChunk:
    """A piece of the answer: new text, and on the last chunk how it ended."""

    delta: str = ""
    finish_reason: str | None = None
    model: str | None = None
    upstream_conversation_id: str | None = None
    upstream_message_id: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    upstream: str | None = None
    """Which of several configured upstreams answered (`UPSTREAMS`); None with a single one."""


@dataclass(frozen=True)
class CompletionRequest:
    """A Chat Completions body to pass upstream as the client sent it (`/v1/chat/completions`).

    An upstream that keeps its own conversations (ChatGPT) continues one: the service says
    which of the body's messages that upstream has already seen there.
    """

    body: dict[str, Any]
    """The client's body, `model` filled in, without what the service keeps (`store`, `metadata`)."""
    user_message_id: str
    """Local id of the request's last message (ChatGPT reuses it as the upstream id)."""
    seen: int = 0
    """How many of the first messages the upstream conversation already holds."""
    upstream_conversation_id: str | None = None
    upstream_parent_id: str | None = None
    """Upstream id of the last message the upstream has seen."""


@dataclass(frozen=True)
class CompletionEvent:
    """A `chat.completion` (or one `chat.completion.chunk` of a stream), as the upstream sent it,
    and the ids an upstream that keeps conversations gave the answer."""

    data: dict[str, Any]
    upstream_conversation_id: str | None = None
    upstream_message_id: str | None = None
    upstream: str | None = None
    """Which of several configured upstreams answered (`UPSTREAMS`; on a stream's first
    event); None with a single one."""


class Provider(Protocol):
    """An upstream LLM. Errors are raised as `services.errors.Upstream*` exceptions."""

    name: str
    default_model: str

    def stream_reply(self, request: ReplyRequest) -> Iterator[ReplyChunk]:
        """Yield the answer as it arrives; closing the iterator cancels the call."""
        ...

    def complete(self, request: CompletionRequest) -> CompletionEvent:
        """The upstream's `chat.completion` for a Chat Completions body (JSON, not streamed).

        A field this upstream cannot honour is an `InvalidRequest` naming it; the upstream's
        own refusals keep its status (`InvalidRequest`, `NotFound`, `RateLimited`).
        """
        ...

    def stream_completion(self, request: CompletionRequest) -> Iterator[CompletionEvent]:
        """The upstream's `chat.completion.chunk` objects as they arrive; closing cancels the call."""
        ...

    def list_models(self) -> list[dict[str, Any]]:
        """The models the upstream offers, as OpenAI's `model` objects."""
        ...

    def generate_title(self, request: ReplyRequest, answer: str) -> str | None:
        """A short title for a conversation from its first exchange, or None."""
        ...

    def rename(self, upstream_conversation_id: str, title: str) -> None:
        """Mirror a title change upstream (no-op where the upstream keeps nothing)."""
        ...

    def delete(self, upstream_conversation_id: str) -> None:
        """Mirror a deletion upstream (no-op where the upstream keeps nothing)."""
        ...

    def clear(self) -> None:
        """Mirror clearing every conversation upstream (no-op where it keeps nothing)."""
        ...
