"""Conversations in ChatGPT's own shape: `msg/history` answers with it, export writes it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from models.entities import Conversation, Message


def message_document(message: Message) -> dict[str, Any]:
    """One message as ChatGPT writes it inside a mapping node."""
    metadata: dict[str, Any] = {}
    if message.role == "assistant":
        metadata["model_slug"] = message.model
        metadata["finish_details"] = (
            {"type": message.finish_details} if message.finish_details else None
        )
    metadata["timestamp_"] = "absolute"
    return {
        "id": str(message.id),
        "author": {"role": message.role, "metadata": {}},
        "create_time": message.created_at.timestamp(),
        "content": {"content_type": "text", "parts": [message.content]},
        "status": message.status,
        "end_turn": message.end_turn,
        "weight": 1.0,
        "metadata": metadata,
        "recipient": "all",
    }


def conversation_document(
    conversation: Conversation, messages: Sequence[Message]
) -> dict[str, Any]:
    """The whole tree; `messages` in creation order, so children keep their order."""
    mapping: dict[str, dict[str, Any]] = {}
    for message in messages:
        node: dict[str, Any] = {"id": str(message.id)}
        if message.role is not None:
            node["message"] = message_document(message)
        node["parent"] = str(message.parent_id) if message.parent_id else None
        node["children"] = []
        mapping[node["id"]] = node
    for node in mapping.values():
        parent = mapping.get(node["parent"]) if node["parent"] else None
        if parent is not None:
            parent["children"].append(node["id"])
    return {
        "title": conversation.title,
        "create_time": conversation.created_at.timestamp(),
        "update_time": conversation.updated_at.timestamp(),
        "mapping": mapping,
        "moderation_results": [],
        "current_node": str(conversation.current_node_id) if conversation.current_node_id else None,
    }
