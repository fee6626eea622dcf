"""The JSON shapes the routes answer with, in the order the contract shows them."""

from __future__ import annotations

from typing import Any

from services.conversations import Answer, ConversationSummary
from services.search import SearchHit


def answer_payload(answer: Answer) -> dict[str, Any]:
    return {
        "author": {"metadata": {}, "name": None, "role": "assistant"},
        "citations": [],
        "conversation_id": str(answer.conversation_id),
        "end_turn": answer.end_turn,
        "finish_details": answer.finish_details,
        "message": answer.text,
        "model": answer.model,
        "parent_id": str(answer.message_id),
        "recipient": "all",
    }


def summary_payload(summary: ConversationSummary) -> dict[str, Any]:
    return {
        "id": str(summary.id),
        "title": summary.title,
        "create_time": summary.created_at.isoformat(),
        "update_time": summary.updated_at.isoformat(),
        "mapping": None,
        "current_node": None,
    }


def search_hit_payload(hit: SearchHit) -> dict[str, Any]:
    return {
        "conversation_id": str(hit.conversation_id),
        "title": hit.title,
        "message_id": str(hit.message_id) if hit.message_id else None,
        "role": hit.role,
        "snippet": hit.snippet,
        "create_time": hit.created_at.timestamp(),
        "cursor": hit.cursor,
    }
