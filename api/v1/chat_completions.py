"""`/v1/chat/completions`: OpenAI's Chat Completions, proxied, and its stored-completions routes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from flask import Response, jsonify, request
from flask_openapi3 import APIBlueprint, Tag
from prometheus_client import Gauge

from api.bodies import require_json_object
from api.context import current_caller, services
from api.errors import as_service_error, openai_error_body, status_of
from api.limits import answer_slot
from api.openapi import KEY_OR_NONE
from api.sse import DONE, HEADERS, KEEP_ALIVE, EventPump
from api.v1.schemas import (
    ChatCompletionBody,
    ChatCompletionDeletedObject,
    ChatCompletionListObject,
    ChatCompletionListQuery,
    ChatCompletionObject,
    ChatCompletionPath,
    ChatCompletionUpdateBody,
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
def create_chat_completion(body: ChatCompletionBody) -> Response:
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
def get_chat_completion(path: ChatCompletionPath) -> Response:
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
def update_chat_completion(path: ChatCompletionPath, body: ChatCompletionUpdateBody) -> Response:
    """Replace a stored chat completion's metadata"""
    owner = current_caller().owner
    return jsonify(services().chat_completions.update(owner, path.completion_id, body.metadata or {}))


@bp.delete("/chat/completions/<completion_id>", responses={200: ChatCompletionDeletedObject})
def delete_chat_completion(path: ChatCompletionPath) -> Response:
    """Delete a stored chat completion: its answer and whatever continues below it"""
    services().chat_completions.delete(current_caller().owner, path.completion_id)
    completion_id = ids.encode(ids.CHAT_COMPLETION, path.completion_id)
    return jsonify({"id": completion_id, "object": "chat.completion.deleted", "deleted": True})


# -- the stream ---------------------------------------------------------------------------


def _data(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


def _error(error: BaseException) -> str:
    """A failure after the stream began, as OpenAI's SDKs read one: `data: {"error": ...}`."""
    known = as_service_error(error) if isinstance(error, Exception) else None
    if known is None:
        return _data(openai_error_body(500, "internal_error", "Something went wrong on our side."))
    return _data(openai_error_body(status_of(known), known.code, known.message, known.details.get("param")))


def chunk_stream(chunks: Iterator[dict[str, Any]], keep_alive: float) -> Response:
    """The upstream's chunks as server-sent events, with keep-alive comments while it is silent.
    The first chunk is awaited, so a refusal still gets its HTTP status."""
    pump = EventPump(chunks)  # type: ignore[arg-type]  # the pump passes any item through
    first = pump.get(keep_alive)
    if isinstance(first, BaseException):
        raise first
    return Response(
        _lines(pump, first, keep_alive, services().metrics.open_streams),
        mimetype="text/event-stream",
        headers=HEADERS,
    )


def _lines(pump: EventPump, first: Any, keep_alive: float, open_streams: Gauge) -> Iterator[str]:
    """Chunks as they come, then `[DONE]`; an error event instead if the answer breaks off."""
    open_streams.inc()
    try:
        item = first
        while True:
            if item is None:
                yield KEEP_ALIVE
            elif isinstance(item, dict):
                yield _data(item)
            elif isinstance(item, BaseException):
                yield _error(item)
                return
            else:  # the end
                break
            item = pump.get(keep_alive)
        yield DONE
    finally:
        open_streams.dec()
        pump.close()
