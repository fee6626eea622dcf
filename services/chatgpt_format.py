"""Conversations in ChatGPT's own shape, as `msg/history` answers with them.

`msg/history` names every node by the service's own id (a UUID a client can pass back
as `parent_id`). Export (`services/transfer.py`) writes the same messages under the
node ids of the imported file, node by node.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import ConfigDict, Field, with_config
from typing_extensions import NotRequired, TypedDict

from models.entities import Conversation, Message


class TokenUsage(TypedDict):
    """Tokens of an answer: the upstream's count, or estimated with a tokenizer when it gave none."""

    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None


class ContextFit(TypedDict):
    """How an answer's context was fitted into the model's window, when the path did not fit whole."""

    messages_left_out: int
    summarized: Annotated[bool, Field(description="The left-out messages were sent as a summary.")]
    cut: Annotated[bool, Field(description="A message alone over the budget was cut in its middle.")]
    budget_tokens: Annotated[int, Field(description="The tokens the context could take: the window less the answer's room.")]


@with_config(ConfigDict(extra="allow"))
class MessageMetadata(TypedDict):
    model_slug: NotRequired[str | None]
    finish_details: NotRequired[dict[str, Any] | None]
    usage: NotRequired[TokenUsage]
    upstream: NotRequired[Annotated[str, Field(description="Which of the configured UPSTREAMS answered.")]]
    context: NotRequired[ContextFit]
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
    if message.answer_details:
        metadata.update(message.answer_details)  # type: ignore[typeddict-item]  # `upstream`, `context`
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


def usage_document(prompt: int | None, completion: int | None) -> TokenUsage:
    """Token usage in the OpenAI API's `usage` shape."""
    total = prompt + completion if prompt is not None and completion is not None else None
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}


def conversation_document(conversation: Conversation, messages: Sequence[Message]) -> ConversationDocument:
    """The whole tree for `msg/history`; `messages` in creation order, so children keep their order."""
    return {
        "title": conversation.title,
        "create_time": conversation.created_at.timestamp(),
        "update_time": conversation.updated_at.timestamp(),
        "mapping": _mapping(messages),
        "moderation_results": [],
        "current_node": str(conversation.current_node_id) if conversation.current_node_id else None,
    }


def _mapping(messages: Sequence[Message]) -> dict[str, Node]:
    """Nodes by id, each listing its parent and its children (in creation order)."""
    keys = {m.id: str(m.id) for m in messages}
    mapping: dict[str, Node] = {}
    for message in messages:
        key = keys[message.id]
        node: Node = {"id": key}  # type: ignore[typeddict-item]  # the other keys follow, in order
        if message.role is not None:
            node["message"] = message_document(message, key)
        node["parent"] = keys.get(message.parent_id) if message.parent_id else None
        node["children"] = []
        mapping[key] = node
    for node in mapping.values():
        parent = mapping.get(node["parent"]) if node["parent"] else None
        if parent is not None:
            parent["children"].append(node["id"])
    return mapping
