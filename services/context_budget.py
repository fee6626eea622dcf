"""How many tokens of context a model takes, and fitting a conversation's path into them.

A request's context is the path from the root to the new message. Its budget is the
model's context window (a table of known models, overridden by `MODEL_CONTEXT_WINDOWS`,
`DEFAULT_CONTEXT_WINDOW` for the rest) less the room kept for the answer. Messages are
counted with tiktoken's `cl100k_base` (`services/tokens.py`); a stored message's count is
kept in memory under its node id, since its text does not change, so budgeting a long
path again costs a lookup per message rather than tokenizing it.

A path over the budget keeps its leading system messages and its newest turns: the oldest
whole turns go first (a turn starts at a user message), then older messages of the last
turn; the final message always stays. Only when the system messages and the final message
alone are over the budget is a message cut: its middle is replaced by a note that says so.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

from services import tokens
from services.providers.base import ChatMessage

KNOWN_WINDOWS: dict[str, int] = {
    # OpenAI
    "gpt-5": 400_000,
    "gpt-4.1": 1_047_576,
    "gpt-4o": 128_000,
    "chatgpt-4o": 128_000,
    "gpt-4-turbo": 128_000,
    "gpt-4-1106": 128_000,
    "gpt-4-0125": 128_000,
    "gpt-4-32k": 32_768,
    "gpt-4": 8_192,
    "gpt-3.5-turbo": 16_385,
    "gpt-3.5-turbo-instruct": 4_096,
    "o1": 200_000,
    "o1-mini": 128_000,
    "o1-preview": 128_000,
    "o3": 200_000,
    "o4-mini": 200_000,
    # open models, by the names Ollama, vLLM and hosted APIs give them
    "llama3": 8_192,
    "llama3.1": 131_072,
    "llama3.2": 131_072,
    "llama3.3": 131_072,
    "llama-3": 8_192,
    "llama-3.1": 131_072,
    "llama-3.2": 131_072,
    "llama-3.3": 131_072,
    "mistral": 32_768,
    "mixtral": 32_768,
    "mistral-large": 131_072,
    "qwen2.5": 32_768,
    "qwen3": 32_768,
    "deepseek-chat": 65_536,
    "deepseek-reasoner": 65_536,
    "deepseek-r1": 131_072,
    "deepseek-v3": 131_072,
    "gemma2": 8_192,
    "gemma3": 131_072,
    "phi4": 16_384,
    "moonshot-v1-8k": 8_192,
    "moonshot-v1-32k": 32_768,
    "moonshot-v1-128k": 131_072,
    "kimi-k2": 131_072,
    "glm-4": 128_000,
}
"""Context windows in tokens, by model name or name prefix (the longest prefix wins, so
`gpt-4o-2024-08-06` is `gpt-4o`'s and `llama3.1:8b` is `llama3.1`'s)."""

CUT_NOTE = "\n\n[… {count} tokens of this message were cut here to fit the model's context window …]\n\n"
COUNT_CACHE_SIZE = 200_000
"""Messages whose token count is kept (about 100 bytes each)."""


@dataclass(frozen=True)
class Fitted:
    """A context as it is sent, and what fitting it did."""

    messages: list[ChatMessage]
    tokens: int
    """The prompt's tokens, as counted here."""
    budget: int
    left_out: int = 0
    """Messages of the path not sent (left out, or summarised)."""
    summarized: bool = False
    cut: bool = False
    """A message was cut in its middle (it alone was over the budget)."""

    @property
    def changed(self) -> bool:
        return bool(self.left_out or self.cut)

    def details(self) -> dict[str, Any] | None:
        """What an answer's metadata says about its context (None: the whole path was sent)."""
        if not self.changed:
            return None
        return {
            "messages_left_out": self.left_out,
            "summarized": self.summarized,
            "cut": self.cut,
            "budget_tokens": self.budget,
        }


class _Counts:
    """Least recently used token counts, by (node id, text length): a stored message's text
    does not change, except an answer still being written, whose length grows."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._counts: OrderedDict[tuple[uuid.UUID, int], int] = OrderedDict()
        self._lock = threading.Lock()

    def of(self, messages: Sequence[ChatMessage]) -> list[int]:
        counts, found = self._counts, []
        with self._lock:
            for message in messages:
                if message.node_id is None:
                    found.append(tokens.count_text(message.content))
                    continue
                key = (message.node_id, len(message.content))
                count = counts.get(key)
                if count is None:
                    count = counts[key] = tokens.count_text(message.content)
                    if len(counts) > self._size:
                        counts.popitem(last=False)
                else:
                    counts.move_to_end(key)
                found.append(count)
        return found

    def __len__(self) -> int:
        return len(self._counts)


def head_length(messages: Sequence[ChatMessage]) -> int:
    """How many leading system messages (the system prompt, instructions) are pinned; never
    the final message."""
    count = 0
    while count < len(messages) - 1 and messages[count].role == "system":
        count += 1
    return count


class ContextBudget:
    """Windows per model, token counts per message, and truncation to a budget."""

    def __init__(
        self,
        *,
        windows: Mapping[str, int] | None = None,
        default_window: int = 8192,
        reserve: int = 2048,
        cache_size: int = COUNT_CACHE_SIZE,
    ) -> None:
        table = {**KNOWN_WINDOWS, **{name.lower(): size for name, size in (windows or {}).items()}}
        self._prefixes = sorted(table.items(), key=lambda item: len(item[0]), reverse=True)
        self._windows: dict[str, int] = {}
        self.default_window = default_window
        self.reserve = reserve
        self._counts = _Counts(cache_size)

    @cached_property
    def _framing(self) -> dict[str, int]:
        """Tokens around each message's content, by role (the tokenizer loads on first use)."""
        return {role: tokens.TOKENS_PER_MESSAGE + tokens.count_text(role) for role in ("system", "user", "assistant")}

    # -- the budget ------------------------------------------------------------

    def window(self, model: str) -> int:
        """The model's context window: its entry (or its longest prefix's) in the table, its
        name without an `org/` prefix tried too; the default for unknown models."""
        window = self._windows.get(model)
        if window is None:
            name = model.lower()
            window = self._lookup(name) or self._lookup(name.rsplit("/", 1)[-1]) or self.default_window
            self._windows[model] = window
        return window

    def _lookup(self, name: str) -> int | None:
        return next((size for prefix, size in self._prefixes if name.startswith(prefix)), None)

    def limit(self, model: str, max_tokens: int | None = None) -> int:
        """Tokens the prompt may take: the window less the answer's room (the request's
        `max_tokens`, else the reserve), of which at most half the window is kept."""
        window = self.window(model)
        reserve = self.reserve if max_tokens is None else max_tokens
        return window - min(reserve, window // 2)

    # -- counting ----------------------------------------------------------------

    def counts(self, messages: Sequence[ChatMessage]) -> list[int]:
        """Each message's tokens with its chat framing (stored messages' from the cache)."""
        framing = self._framing
        return [framing[m.role] + count for m, count in zip(messages, self._counts.of(messages))]

    @staticmethod
    def total(counts: Sequence[int]) -> int:
        return tokens.REPLY_PRIMING + sum(counts)

    # -- fitting -----------------------------------------------------------------

    def truncate(self, messages: Sequence[ChatMessage], limit: int, counts: Sequence[int] | None = None) -> Fitted:
        """The messages fitted into `limit` tokens: unchanged when they fit; else the oldest
        whole turns left out, then older messages of the last turn; a message cut only when
        the pinned system messages and the final message alone are over."""
        counts = list(self.counts(messages) if counts is None else counts)
        total = self.total(counts)
        if total <= limit:
            return Fitted(list(messages), total, limit)
        pinned = head_length(messages)
        head, body = list(messages[:pinned]), list(messages[pinned:])
        room = limit - tokens.REPLY_PRIMING - sum(counts[:pinned])
        last_turn = max((i for i, m in enumerate(body) if m.role == "user"), default=0)
        kept = sum(counts[pinned:])
        for left_out in range(1, len(body)):
            kept -= counts[pinned + left_out - 1]
            turn_start = body[left_out].role == "user" or left_out > last_turn
            if turn_start and kept <= room:
                return Fitted(head + body[left_out:], limit - room + kept, limit, left_out=left_out)
        return self._cut(head, counts[:pinned], body[-1], counts[-1], limit, left_out=len(body) - 1)

    def _cut(
        self, head: list[ChatMessage], head_counts: list[int], final: ChatMessage, final_count: int, limit: int,
        *, left_out: int,
    ) -> Fitted:
        """The final message gets the room the system messages leave, but at least half; the
        system messages share the rest in proportion to their size. What is over loses its middle."""
        room = limit - tokens.REPLY_PRIMING
        head_tokens = sum(head_counts)
        head_room = max(room // 2, room - final_count)
        if head_tokens > head_room:
            head = [self.cut_middle(m, head_room * count // head_tokens) for m, count in zip(head, head_counts)]
            head_tokens = sum(self.counts(head))
        if final_count > room - head_tokens:
            final = self.cut_middle(final, room - head_tokens)
        messages = [*head, final]
        return Fitted(messages, self.total(self.counts(messages)), limit, left_out=left_out, cut=True)

    def cut_middle(self, message: ChatMessage, room: int) -> ChatMessage:
        """`message` in at most `room` tokens (framing included): its start and its end, with a
        note in place of the middle saying how much was cut."""
        ids = tokens.encode(message.content)
        framing = self._framing[message.role]
        keep = room - framing - tokens.count_text(CUT_NOTE.format(count=len(ids)))
        while True:
            keep = max(keep, 0)
            front = (keep + 1) // 2
            back = keep - front
            content = (
                tokens.decode(ids[:front])
                + CUT_NOTE.format(count=len(ids) - keep)
                + (tokens.decode(ids[len(ids) - back :]) if back else "")
            )
            over = framing + tokens.count_text(content) - room
            if over <= 0 or keep == 0:
                return replace(message, content=content, node_id=None)
            keep -= over
