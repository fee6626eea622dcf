"""What `/v1` keeps beyond ChatGPT's format, carried through export and import.

Export writes it under one key of the conversation, only when there is any:

    "gpt_api": {
      "metadata": {"<key>": "<value>", ...},          the conversation's /v1 metadata
      "responses": {"<node>": {...}, ...},            what /v1/responses keeps with an answer
      "chat_completions": [{"id": "<node>", "model", "created_at", "metadata", "response"}, ...],
      "chat_path": ["<node>", ...]                     the nodes /v1/chat/completions threads by
    }

Nodes are named by their keys in the file's `mapping`, so what names a node follows it when
an import gives it another id. An answer's model, status, finish, times and token usage
travel in its message, as ChatGPT's format has them (`metadata.usage` for the tokens).
An import takes what it can use of `gpt_api` and leaves out the rest (a key that is not
a node of the conversation, metadata over OpenAI's limits), never the conversation.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from services.chat_completions import ORIGINAL_KEY
from services.message_paths import first_hash, next_hash
from services.responses import ResponseFields

KEY = "gpt_api"
MAX_METADATA = 16
"""OpenAI's limits on metadata: pairs, key and value lengths."""
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512


# -- export -------------------------------------------------------------------


def exported(
    metadata: Mapping[str, str] | None,
    messages: Sequence[Any],
    completions: Sequence[Any],
    key_of: Callable[[uuid.UUID], str],
) -> dict[str, Any] | None:
    """The `gpt_api` of a conversation: its metadata, its messages' rows, its stored chat
    completions' rows; None when /v1 kept nothing about it."""
    extension: dict[str, Any] = {}
    if metadata:
        extension["metadata"] = dict(metadata)
    responses = {key_of(row.id): _keyed(row.response_fields, key_of) for row in messages if row.response_fields}
    if responses:
        extension["responses"] = responses
    if completions:
        extension["chat_completions"] = [_completion(row, key_of) for row in completions]
    chat_path = [key_of(row.id) for row in messages if row.path_hash is not None]
    if chat_path:
        extension["chat_path"] = chat_path
    return extension or None


def _keyed(fields: dict[str, Any], key_of: Callable[[uuid.UUID], str]) -> dict[str, Any]:
    """Response fields with the messages they name written as node keys."""
    keyed = dict(fields)
    if keyed.get("input_ids") is not None:
        keyed["input_ids"] = [key_of(uuid.UUID(node)) for node in keyed["input_ids"]]
    if keyed.get("previous_response_id"):
        keyed["previous_response_id"] = key_of(uuid.UUID(keyed["previous_response_id"]))
    return keyed


def _completion(row: Any, key_of: Callable[[uuid.UUID], str]) -> dict[str, Any]:
    response = dict(row.response)
    response["choices"] = [
        {**choice, "message_id": key_of(uuid.UUID(choice["message_id"]))} for choice in response.get("choices") or ()
    ]
    return {
        "id": key_of(row.id),
        "model": row.model,
        "created_at": row.created_at.isoformat(),
        "metadata": row.metadata or {},
        "response": response,
    }


# -- import -------------------------------------------------------------------


@dataclass
class Extension:
    """A conversation's `gpt_api` as an import reads it (node keys not yet ids)."""

    metadata: dict[str, str] | None = None
    responses: dict[str, dict[str, Any]] = field(default_factory=dict)
    completions: list[dict[str, Any]] = field(default_factory=list)
    chat_path: frozenset[str] = frozenset()


def read(value: Any) -> Extension:
    """What of a conversation's `gpt_api` has the shape export writes."""
    if not isinstance(value, dict):
        return Extension()
    responses = value.get("responses")
    completions = value.get("chat_completions")
    chat_path = value.get("chat_path")
    return Extension(
        metadata=_metadata(value.get("metadata")),
        responses={k: v for k, v in responses.items() if isinstance(v, dict)} if isinstance(responses, dict) else {},
        completions=[c for c in completions if isinstance(c, dict)] if isinstance(completions, list) else [],
        chat_path=frozenset(k for k in chat_path if isinstance(k, str)) if isinstance(chat_path, list) else frozenset(),
    )


def _metadata(value: Any) -> dict[str, str] | None:
    if not isinstance(value, dict) or len(value) > MAX_METADATA:
        return None
    fits = all(
        isinstance(v, str) and len(k) <= MAX_METADATA_KEY and len(v) <= MAX_METADATA_VALUE for k, v in value.items()
    )
    return dict(value) if fits else None


class Placement:
    """The ids an import gave a conversation's nodes, by their keys in the file."""

    def __init__(self, ids: Mapping[str, uuid.UUID]) -> None:
        self._ids = ids

    def id_of(self, key: Any) -> uuid.UUID | None:
        """The node `key` names: a node of this conversation, else a UUID written out (a
        message that was already gone when the file was written)."""
        if not isinstance(key, str):
            return None
        if key in self._ids:
            return self._ids[key]
        try:
            return uuid.UUID(key)
        except ValueError:
            return None

    def response_fields(self, extension: Extension, key: str) -> dict[str, Any] | None:
        """What /v1/responses kept with the answer `key`, with its node keys as ids; None when
        the file has nothing usable for it."""
        fields = extension.responses.get(key)
        if fields is None:
            return None
        named = dict(fields)
        named["metadata"] = _metadata(named.get("metadata")) or {}
        if not isinstance(named.get("instructions"), (str, type(None))):
            return None
        try:
            if named.get("input_ids") is not None:
                named["input_ids"] = [str(self._required(node)) for node in named["input_ids"]]
            if named.get("previous_response_id") is not None:
                named["previous_response_id"] = str(self._required(named["previous_response_id"]))
            return ResponseFields.from_json(named).to_json()
        except (TypeError, ValueError, AttributeError):
            return None

    def completions(
        self, extension: Extension, owner: str, moment: Callable[[Any], datetime | None]
    ) -> list[dict[str, Any]]:
        """The stored chat completions' rows, for answers that are nodes of this conversation
        (`created_at` None when the file's time is unreadable)."""
        rows = []
        for completion in extension.completions:
            node = completion.get("id")
            response = completion.get("response")
            model = completion.get("model")
            if not isinstance(node, str) or node not in self._ids:
                continue
            if not isinstance(response, dict) or not isinstance(model, str):
                continue
            choices = response.get("choices")
            if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
                continue
            named = [self.id_of(choice.get("message_id")) for choice in choices]
            if any(node_id is None for node_id in named):
                continue
            rows.append({
                "id": self._ids[node],
                "owner": owner,
                "model": model[:128],
                "created_at": moment(completion.get("created_at")),
                "metadata_": _metadata(completion.get("metadata")) or {},
                "response": {
                    **response,
                    "choices": [{**c, "message_id": str(n)} for c, n in zip(choices, named, strict=True)],
                },
            })
        return rows

    def _required(self, key: Any) -> uuid.UUID:
        node_id = self.id_of(key)
        if node_id is None:
            raise ValueError(f"not a node: {key!r}")
        return node_id


def chat_path_hashes(
    extension: Extension,
    owner: str,
    nodes: Iterable[tuple[str, str | None, dict[str, Any]]],
) -> dict[str, str]:
    """The path hash of each node of `chat_path`, for `owner`: `nodes` are (key, parent key,
    the message as /v1/chat/completions took it), parents first. A chat node's parent is a
    chat node or where the dialogue starts (the root, or the service's system message)."""
    hashes: dict[str, str] = {}
    for key, parent, message in nodes:
        if key in extension.chat_path:
            above = hashes.get(parent) if parent is not None else None
            hashes[key] = next_hash(above or first_hash(owner), message)
    return hashes


def chat_message(message: Mapping[str, Any], role: str | None, content: str) -> dict[str, Any]:
    """A stored message as /v1/chat/completions took it: kept whole in its metadata, or a
    plain `{role, content}`."""
    metadata = message.get("metadata")
    kept = metadata.get(ORIGINAL_KEY) if isinstance(metadata, dict) else None
    return dict(kept) if isinstance(kept, dict) else {"role": role, "content": content}
