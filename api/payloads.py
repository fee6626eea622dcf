"""The JSON shapes the routes answer with, in the order the contract shows them."""

from __future__ import annotations

from typing import Any

from services.conversations import Answer, ConversationSummary


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
