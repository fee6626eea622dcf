"""Conversations in ChatGPT's own shape, as `msg/history` answers with them.

`msg/history` names every node by the service's own id (a UUID a client can pass back
as `parent_id`). Export (`services/transfer.py`) writes the same messages under the
node ids of the imported file, node by node.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Annotated, Any

from pydantic import ConfigDict, Field, with_config
from typing_extensions import NotRequired, TypedDict

from models.entities import Message


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
    return _made_here(
        node_id or str(message.id), message.role, message.content, message.status, message.end_turn,  # type: ignore[arg-type]
        message.model, message.finish_details, message.created_at.timestamp(), message.prompt_tokens,
        message.completion_tokens, message.answer_details,
    )


def _made_here(
    node_id: str,
    role: str,
    content: str,
    status: str,
    end_turn: bool | None,
    model: str | None,
    finish_details: str | None,
    create_time: float,
    prompt_tokens: int | None,
    completion_tokens: int | None,
    answer_details: dict[str, Any] | None,
) -> MessageDocument:
    """A message made here, from its columns: the one place its shape is written."""
    metadata: MessageMetadata = {}
    if role == "assistant":
        metadata["model_slug"] = model
        metadata["finish_details"] = {"type": finish_details} if finish_details else None
    if prompt_tokens is not None or completion_tokens is not None:
        metadata["usage"] = usage_document(prompt_tokens, completion_tokens)
    if answer_details:
        metadata.update(answer_details)  # type: ignore[typeddict-item]  # `upstream`, `context`
    metadata["timestamp_"] = "absolute"
    return {  # the order ChatGPT writes them in
        "id": node_id,
        "author": {"role": role, "metadata": {}},
        "create_time": create_time,
        "content": {"content_type": "text", "parts": [content]},
        "status": status,
        "end_turn": end_turn,
        "weight": 1.0,
        "metadata": metadata,
        "recipient": "all",
    }


def usage_document(prompt: int | None, completion: int | None) -> TokenUsage:
    """Token usage in the OpenAI API's `usage` shape."""
    total = prompt + completion if prompt is not None and completion is not None else None
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}


def conversation_document(
    header: tuple[str, float, float, str | None], messages: Iterable[tuple[Any, ...]]
) -> tuple[ConversationDocument, list[float] | None]:
    """The whole tree for `msg/history`, from `ConversationRepository.tree_header` and `tree`
    (ids as text, times as epoch seconds; messages in creation order, so children keep it).

    With it, every float it holds, or None when some message is kept as given (an import's, a
    client's), with numbers of its own: knowing them, the answer's writer need not search its
    output for a float it would write unlike the standard library (`api.bodies`)."""
    title, create_time, update_time, current_node = header
    mapping, numbers = _mapping(messages, [create_time, update_time, 1.0])  # 1.0: a message's weight
    document: ConversationDocument = {
        "title": title,
        "create_time": create_time,
        "update_time": update_time,
        "mapping": mapping,
        "moderation_results": [],
        "current_node": current_node,
    }
    return document, numbers


def _mapping(
    messages: Iterable[tuple[Any, ...]], numbers: list[float] | None
) -> tuple[dict[str, Node], list[float] | None]:
    """Nodes by id, each listing its parent and its children (in creation order); and `numbers`
    with the floats of the messages made here added (None once a message is kept as given).

    Tuples unpacked by position: a thousand messages are a thousand times a dozen fields, and
    reading a field of a SQLAlchemy row by name costs as much as building its part of the node."""
    mapping: dict[str, Node] = {}
    for (key, parent, role, content, status, end_turn, model, finish_details, create_time, prompt_tokens,
         completion_tokens, original, answer_details) in messages:
        node: Node = {"id": key}  # type: ignore[typeddict-item]  # the other keys follow, in order
        if role is not None and original is not None:  # (the root has no role, and no message)
            node["message"] = {**original, "id": key}
            numbers = None
        elif role is not None:
            node["message"] = _made_here(
                key, role, content, status, end_turn, model, finish_details, create_time, prompt_tokens,
                completion_tokens, answer_details,
            )
            if numbers is not None:
                numbers.append(create_time)
                if answer_details:
                    numbers.extend(_floats_in(answer_details))
        node["parent"] = parent
        node["children"] = []
        mapping[key] = node
    for node in mapping.values():
        parent = mapping.get(node["parent"]) if node["parent"] is not None else None  # type: ignore[arg-type]
        if parent is None:
            node["parent"] = None
        else:
            parent["children"].append(node["id"])
    return mapping, numbers


def _floats_in(value: Any) -> Iterator[float]:
    """The floats anywhere in a value made of JSON's types."""
    if isinstance(value, float):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _floats_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from _floats_in(item)
