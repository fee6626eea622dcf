"""A Chat Completions request's messages fitted into the context budget, as `ask`'s path is.

The client sends its whole dialogue; what goes upstream is the same messages, fewer when
they are over the budget (`services/context_budget.py`): the leading system (or developer)
messages and the newest turns that fit, the oldest whole turns left out. The budget counts
units, not messages: an assistant message and the tool results after it are one unit, so a
result never goes without the call it answers. A unit alone over the budget is cut in its
middle only when it is one message whose content is a string; parts (images, files) are
never cut. Text is counted, with tool calls' names and arguments; image parts are not.

Always by truncation, whatever `CONTEXT_STRATEGY`: the request's messages are the client's,
not nodes of a stored path a summary could be kept on. The stored exchange keeps them all.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from services.context_budget import Fitted, head_length
from services.context_window import ContextFitter
from services.message_paths import message_text
from services.providers.base import ChatMessage, Role

ROLES: dict[str, Role] = {"system": "system", "developer": "system", "user": "user"}
"""The role a message is counted with; anything else (assistant, tool, function) as the assistant."""
FOLLOWERS = ("tool", "function")
"""Messages that answer the assistant message before them: sent with it or not at all."""


@dataclass(frozen=True)
class FittedMessages:
    """What a request sends upstream, and how it was fitted."""

    messages: list[dict[str, Any]]
    seen: int
    """How many of `messages` come from the request's first `seen` (what an upstream that keeps
    conversations has already seen)."""
    fitted: Fitted


def fit_messages(
    fitter: ContextFitter,
    messages: Sequence[dict[str, Any]],
    *,
    model: str,
    max_tokens: int | None,
    seen: int,
    keys: Sequence[str],
    what: str,
) -> FittedMessages:
    """`messages` fitted to the budget of `model`. `keys`: a stable key per message (its path
    hash), under which its token count is cached; empty: counted each time."""
    spans = _units(messages)
    proxies = [_proxy(messages, start, end, keys) for start, end in spans]
    fitted = fitter.truncate(proxies, model, max_tokens)
    if not fitted.changed:
        return FittedMessages(list(messages), seen, fitted)
    unit_of = {id(proxy): index for index, proxy in enumerate(proxies)}
    pinned = head_length(proxies)
    sent: list[dict[str, Any]] = []
    sources: list[int] = []
    cut = False
    for position, proxy in enumerate(fitted.messages):
        index = unit_of.get(id(proxy))
        if index is None:  # cut in its middle: one of the pinned system messages, or the last unit
            index = position if position < pinned else len(spans) - 1
            start, end = spans[index]
            if end - start == 1 and isinstance(messages[start].get("content"), str):
                sent.append({**messages[start], "content": proxy.content})
                sources.append(start)
                cut = True
                continue
        start, end = spans[index]
        sent.extend(messages[start:end])
        sources.extend(range(start, end))
    fitted = replace(fitted, cut=cut)
    if fitted.changed:  # else a unit alone over the budget that cannot be cut: it goes whole
        fitter.observe(what, model, fitted)
    return FittedMessages(sent, sum(1 for source in sources if source < seen), fitted)


def _units(messages: Sequence[dict[str, Any]]) -> list[tuple[int, int]]:
    """Each unit's span of messages: a message, with the tool results that follow it."""
    spans: list[tuple[int, int]] = []
    for index, message in enumerate(messages):
        if spans and message.get("role") in FOLLOWERS:
            spans[-1] = (spans[-1][0], index + 1)
        else:
            spans.append((index, index + 1))
    return spans


def _proxy(messages: Sequence[dict[str, Any]], start: int, end: int, keys: Sequence[str]) -> ChatMessage:
    """A unit as the budget counts it; keyed (for the count cache) by its last message's key."""
    text = "\n".join(_text(message) for message in messages[start:end])
    key = uuid.UUID(hex=keys[end - 1][:32]) if keys else None
    return ChatMessage(role=ROLES.get(str(messages[start].get("role")), "assistant"), content=text, node_id=key)


def _text(message: dict[str, Any]) -> str:
    """A message's text, and its tool calls' names and arguments."""
    parts = [message_text(message.get("content"))]
    calls = message.get("tool_calls")
    for call in [*(calls if isinstance(calls, list) else ()), message.get("function_call")]:
        function = call.get("function", call) if isinstance(call, dict) else None
        if isinstance(function, dict):
            parts += [str(function.get("name") or ""), str(function.get("arguments") or "")]
    return "\n".join(part for part in parts if part)
