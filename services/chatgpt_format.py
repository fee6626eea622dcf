"""Conversations in ChatGPT's own shape: `msg/history` answers with it, export writes it.

`msg/history` names every node by the service's own id (a UUID a client can pass back
as `parent_id`). Export names nodes as the imported file did (`client-created-root`),
writes imported messages exactly as they were imported, and adds the keys of ChatGPT's
data export (`conversation_id`, `id`, ...), so an imported export comes back unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import ConfigDict, Field, with_config
from typing_extensions import NotRequired, TypedDict

from models.entities import DEFAULT_TITLE, Conversation, Message


class Usage(TypedDict):
    """Tokens of an answer: the upstream's count, or estimated with a tokenizer when it gave none."""

    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None


@with_config(ConfigDict(extra="allow"))
class MessageMetadata(TypedDict):
    model_slug: NotRequired[str | None]
    finish_details: NotRequired[dict[str, Any] | None]
    usage: NotRequired[Usage]
    timestamp_: NotRequired[str]


@with_config(ConfigDict(extra="allow"))
class MessageAuthor(TypedDict):
    role: str
    metadata: dict[str, Any]


@with_config(ConfigDict(extra="allow"))
class MessageContent(TypedDict):
    content_type: Annotated[str, Field(description="`text` here; imported messages keep theirs (`code`, ...).")]
    parts: NotRequired[list[Any]]


@with_config(ConfigDict(extra="allow"))
class MessageDocument(TypedDict):
    """A message in ChatGPT's shape. Messages made here have every key; imported ones keep what
    the export had."""

    id: str
    author: MessageAuthor
    create_time: NotRequired[float | None]
    content: MessageContent
    status: NotRequired[str | None]
    end_turn: NotRequired[bool | None]
    weight: NotRequired[float]
    metadata: NotRequired[MessageMetadata]
    recipient: NotRequired[str]


class Node(TypedDict):
    id: str
    message: NotRequired[Annotated[MessageDocument | None, Field(description="Absent on the root node.")]]
    parent: str | None
    children: list[str]


class ConversationDocument(TypedDict):
    """A conversation in ChatGPT's export shape; times are epoch seconds."""

    title: str
    create_time: float
    update_time: float
    mapping: dict[str, Node]
    moderation_results: list[Any]
    current_node: str | None


def message_document(message: Message, node_id: str | None = None) -> MessageDocument:
    """One message as ChatGPT writes it inside a mapping node.

    An imported message is given as imported; `node_id`, when given, replaces its id.
    """
    if message.original is not None:
        original: MessageDocument = message.original  # type: ignore[assignment]  # kept as imported
        return original if node_id is None else {**original, "id": node_id}
    metadata: MessageMetadata = {}
    if message.role == "assistant":
        metadata["model_slug"] = message.model
        metadata["finish_details"] = (
            {"type": message.finish_details} if message.finish_details else None
        )
    if message.prompt_tokens is not None or message.completion_tokens is not None:
        metadata["usage"] = usage_document(message.prompt_tokens, message.completion_tokens)
    metadata["timestamp_"] = "absolute"
    return {  # the order ChatGPT writes them in
        "id": node_id or str(message.id),
        "author": {"role": message.role, "metadata": {}},
        "create_time": message.created_at.timestamp(),
        "content": {"content_type": "text", "parts": [message.content]},
        "status": message.status,
        "end_turn": message.end_turn,
        "weight": 1.0,
        "metadata": metadata,
        "recipient": "all",
    }


def usage_document(prompt: int | None, completion: int | None) -> Usage:
    """Token usage in the OpenAI API's `usage` shape."""
    total = prompt + completion if prompt is not None and completion is not None else None
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}


def conversation_document(conversation: Conversation, messages: Sequence[Message]) -> ConversationDocument:
    """The whole tree for `msg/history`; `messages` in creation order, so children keep their order."""
    return {
        "title": conversation.title,
        "create_time": conversation.created_at.timestamp(),
        "update_time": conversation.updated_at.timestamp(),
        "mapping": _mapping(messages, export=False),
        "moderation_results": [],
        "current_node": str(conversation.current_node_id) if conversation.current_node_id else None,
    }


def export_document(conversation: Conversation, messages: Sequence[Message]) -> dict[str, Any]:
    """One entry of ChatGPT's `conversations.json`; imported keys come back as they were."""
    original = conversation.original or {}
    keys = {str(m.id): m.original_id or str(m.id) for m in messages}
    title: str | None = conversation.title
    if original.get("title") is None and "title" in original and title == DEFAULT_TITLE:
        title = None
    current = str(conversation.current_node_id) if conversation.current_node_id else None
    own = str(conversation.id)
    document: dict[str, Any] = {
        "title": title,
        "create_time": _epoch(conversation.created_at, original.get("create_time")),
        "update_time": _epoch(conversation.updated_at, original.get("update_time")),
        "mapping": _mapping(messages, export=True),
        "moderation_results": original.get("moderation_results", []),
        "current_node": keys.get(current, current) if current else None,
        "plugin_ids": None,
        "conversation_id": own,
        "conversation_template_id": None,
        "gizmo_id": None,
        "is_archived": False,
        "safe_urls": [],
        "id": own,
    }
    if not original:
        return document
    mine = ("title", "create_time", "update_time", "mapping", "moderation_results", "current_node")
    merged = {key: document[key] if key in mine else value for key, value in original.items()}
    return {**merged, **{key: value for key, value in document.items() if key not in merged}}


def _mapping(messages: Sequence[Message], *, export: bool) -> dict[str, Node]:
    """Nodes by id, each listing its parent and its children (in creation order)."""
    keys = {m.id: (m.original_id or str(m.id)) if export else str(m.id) for m in messages}
    mapping: dict[str, Node] = {}
    for message in messages:
        key = keys[message.id]
        node: Node = {"id": key}  # type: ignore[typeddict-item]  # the other keys follow, in order
        if message.role is not None:
            node["message"] = message_document(message, None if export else key)
        elif export:
            node["message"] = None  # ChatGPT writes the root (and empty nodes) this way
        node["parent"] = keys.get(message.parent_id) if message.parent_id else None
        node["children"] = []
        mapping[key] = node
    for node in mapping.values():
        parent = mapping.get(node["parent"]) if node["parent"] else None
        if parent is not None:
            parent["children"].append(node["id"])
    return mapping


def _epoch(moment: datetime, original: Any) -> float:
    """`moment` as epoch seconds; the imported value itself while it still says the same."""
    if isinstance(original, (int, float)) and not isinstance(original, bool):
        try:
            if datetime.fromtimestamp(original, UTC) == moment:
                return original
        except (OverflowError, OSError, ValueError):
            pass
    return moment.timestamp()
