"""OpenAI-style names for the rows of the tree: a prefix and the 32 hex digits of the UUID.

`/v1` answers with the prefixed form and accepts it or the bare UUID; the six routes keep
bare UUIDs. A stored answer is both a response (`resp_`) and that response's output
message (`msg_`): the same row.
"""

from __future__ import annotations

import re
import uuid

CONVERSATION = "conv_"
MESSAGE = "msg_"
RESPONSE = "resp_"
CHAT_COMPLETION = "chatcmpl-"

HEX_PATTERN = "[0-9a-f]{32}"
UUID_PATTERN = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_HEX = re.compile(HEX_PATTERN)
_UUID = re.compile(UUID_PATTERN)


def encode(prefix: str, value: uuid.UUID) -> str:
    return prefix + value.hex


def decode(text: str, prefix: str) -> uuid.UUID | None:
    """The UUID that `text` names (`<prefix><32 hex>` or a bare UUID), None when it names none."""
    if text.startswith(prefix) and _HEX.fullmatch(text[len(prefix) :]):
        return uuid.UUID(hex=text[len(prefix) :])
    return uuid.UUID(text) if _UUID.fullmatch(text) else None


def pattern(prefix: str) -> str:
    """A JSON Schema pattern of what `decode` reads."""
    return f"^({re.escape(prefix)}{HEX_PATTERN}|{UUID_PATTERN})$"
