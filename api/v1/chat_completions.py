"""`/v1/chat/completions`: OpenAI's Chat Completions, proxied, and its stored-completions routes."""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify, request
from flask_openapi3 import APIBlueprint, Tag

from api.bodies import require_json_object
from api.context import current_caller, services
from api.limits import answer_slot
from api.openapi import KEY_OR_NONE
from api.v1.chunk_stream import chunk_stream
from api.v1.schemas import (
    ChatCompletionBody,
    ChatCompletionDeletedObject,
    ChatCompletionListObject,
    ChatCompletionListQuery,
    ChatCompletionObject,
    ChatCompletionPath,
    ChatCompletionUpdateBody,
    NoQuery,
    StoreMessageListObject,
    StoreMessagesQuery,
    chat_completion_page,
    errors,
    store_message_page,
)
from services import ids

CHAT_COMPLETIONS = Tag(
    name="chat completions",
    description="OpenAI's Chat Completions, proxied to the upstream; each exchange is kept as a "
    "conversation, threaded into the one it continues.",
)

bp = APIBlueprint(
    "v1_chat_completions",
    __name__,
    url_prefix="/v1",
    abp_tags=[CHAT_COMPLETIONS],
    abp_security=KEY_OR_NONE,
    abp_responses=errors(400, 401, 404, 413, 415, 429, 500, 503),
)
bp.before_request(require_json_object)


@bp.post("/chat/completions", responses={200: ChatCompletionObject, **errors(502, 504)})
def create_chat_completion(query: NoQuery, body: ChatCompletionBody) -> Response:
    """Create a chat completion

    The body goes to the upstream as sent (tools, `response_format`, sampling, `n`, `stop`,
    `stream_options`, ...) and its answer comes back as the upstream gave it, under the id
    of the stored completion. Unless `store: false`, the exchange is kept: a request whose
    messages continue a stored exchange of the caller's (its messages and answer, then more)
    is stored in that exchange's conversation, below the message where they part.
    """
    sent: dict[str, Any] = request.get_json()
    owner = current_caller().owner
    with answer_slot() as slot:
        if body.stream:
            chunks = services().chat_completions.stream(owner, sent)
            return slot.hand_over(chunk_stream(chunks, services().settings.sse_keep_alive_seconds))
        completion = services().chat_completions.create(owner, sent)
    return jsonify(completion)


@bp.get("/chat/completions", responses={200: ChatCompletionListObject})
def list_chat_completions(query: ChatCompletionListQuery) -> Response:
    """List stored chat completions (oldest first unless `order=desc`)"""
    page = services().chat_completions.list_stored(
        current_caller().owner,
        after=query.after,
        limit=query.limit,
        order=query.order,
        model=query.model,
        metadata=query.metadata,
    )
    return jsonify(chat_completion_page(page))


@bp.get("/chat/completions/<completion_id>", responses={200: ChatCompletionObject})
def get_chat_completion(path: ChatCompletionPath, query: NoQuery) -> Response:
    """Retrieve a stored chat completion"""
    return jsonify(services().chat_completions.retrieve(current_caller().owner, path.completion_id))


@bp.get("/chat/completions/<completion_id>/messages", responses={200: StoreMessageListObject})
def chat_completion_messages(path: ChatCompletionPath, query: StoreMessagesQuery) -> Response:
    """The messages of a stored chat completion's request (the whole dialogue it was sent)"""
    page = services().chat_completions.messages(
        current_caller().owner, path.completion_id, after=query.after, limit=query.limit, order=query.order
    )
    return jsonify(store_message_page(page))


@bp.post("/chat/completions/<completion_id>", responses={200: ChatCompletionObject})
def update_chat_completion(path: ChatCompletionPath, query: NoQuery, body: ChatCompletionUpdateBody) -> Response:
    """Replace a stored chat completion's metadata"""
    owner = current_caller().owner
    return jsonify(services().chat_completions.update(owner, path.completion_id, body.metadata or {}))


@bp.delete("/chat/completions/<completion_id>", responses={200: ChatCompletionDeletedObject})
def delete_chat_completion(path: ChatCompletionPath, query: NoQuery) -> Response:
    """Delete a stored chat completion: its answer and whatever continues below it"""
    services().chat_completions.delete(current_caller().owner, path.completion_id)
    completion_id = ids.encode(ids.CHAT_COMPLETION, path.completion_id)
    return jsonify({"id": completion_id, "object": "chat.completion.deleted", "deleted": True})
