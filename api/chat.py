"""The `chat` blueprint: the six routes of the contract under /api/chat."""

from __future__ import annotations

import time

from flask import Response, g
from flask_openapi3 import APIBlueprint

from api.bodies import json_response, require_json_object
from api.context import current_caller, services
from api.limits import answer_slot
from api.openapi import CHAT, JSON_ROUTE_ERRORS, KEY_OR_NONE, errors
from api.schemas import (
    AnswerResponse,
    AskBody,
    ConversationListResponse,
    ConversationTreeResponse,
    EmptyBody,
    EmptyResponse,
    ListBody,
    RequiredConversationRef,
    TitleBody,
    answer_payload,
    summary_payload,
)
from api.sse import stream_response
from services.asking import Question

bp = APIBlueprint(
    "chat",
    __name__,
    url_prefix="/api/chat",
    abp_tags=[CHAT],
    abp_security=KEY_OR_NONE,
    abp_responses=errors(*JSON_ROUTE_ERRORS),
)
bp.before_request(require_json_object)


def server_timing(upstream_seconds: float) -> str:
    """What this answer cost: time waiting on the upstream, and in all so far."""
    total = time.perf_counter() - g.started
    return f"upstream;dur={upstream_seconds * 1000:.1f}, total;dur={total * 1000:.1f}"


def ok(payload: object, numbers: list[float] | None = None) -> Response:
    """The envelope of every success; payloads are TypedDicts of JSON's own types. `numbers`:
    every float in `payload`, when the caller knows them (see `JSONProvider.plain_response`)."""
    return json_response({"response": payload}, numbers)


@bp.post("/ask", responses={200: AnswerResponse, **errors(404, 502, 504)})
def ask(body: AskBody) -> Response:
    """Ask: start a conversation, continue one, or branch from a message

    Without `convo_id` a new conversation; with it, the answer continues from the
    conversation's current node, or from `parent_id` (a branch: regenerate, or edit and
    resend). `parent_id` needs `convo_id`; `convo_id` and `conversation_id` are aliases and
    must agree when both are given. With `"stream": true` the answer comes as server-sent
    events: `data: <AnswerEvent>` lines, then `data: [DONE]`; a failure mid-answer is an
    `event: error` with the error envelope.
    """
    question = Question(
        prompt=body.prompt, conversation_id=body.conversation, parent_id=body.parent_id, model=body.model
    )
    owner = current_caller().owner
    with answer_slot() as slot:
        if body.stream:
            events = services().asking.ask_stream(owner, question)
            return slot.hand_over(stream_response(events, services().settings.sse_keep_alive_seconds, server_timing))
        answer = services().asking.ask(owner, question)
    response = ok(answer_payload(answer))
    response.headers["Server-Timing"] = server_timing(answer.upstream_seconds)
    return response


@bp.post("/conversation", responses={200: ConversationListResponse, **errors(404)})
def conversations(body: ListBody) -> Response:
    """List conversations, most recently updated first

    Page with `offset`/`limit`, or by keyset with `after` (the previous page's last id).
    """
    page = services().conversations.list_conversations(
        current_caller().owner, offset=body.offset, limit=body.limit, after=body.after
    )
    return ok([summary_payload(summary) for summary in page])


@bp.post("/msg/history", responses={200: ConversationTreeResponse, **errors(404)})
def history(body: RequiredConversationRef) -> Response:
    """A conversation's whole tree, in ChatGPT's export shape

    Every branch. Answers carry `metadata.usage` (prompt, completion and total tokens).
    Imported messages are shown as the export had them.
    """
    tree = services().conversations.history(current_caller().owner, body.required_conversation)
    return ok(tree.document, tree.numbers)


@bp.post("/change/title", responses={200: EmptyResponse, **errors(404)})
def change_title(body: TitleBody) -> Response:
    """Rename a conversation"""
    services().conversations.rename(current_caller().owner, body.required_conversation, body.title)
    return ok(None)


@bp.post("/delete/conversation", responses={200: EmptyResponse, **errors(404)})
def delete_conversation(body: RequiredConversationRef) -> Response:
    """Delete a conversation and its messages"""
    services().conversations.delete(current_caller().owner, body.required_conversation)
    return ok(None)


@bp.post("/clear/conversations", responses={200: EmptyResponse})
def clear_conversations(body: EmptyBody) -> Response:
    """Delete every conversation of the caller"""
    services().conversations.clear(current_caller().owner)
    return ok(None)
