"""`/v1/responses`: OpenAI's Responses API over the conversations of the one store."""

from __future__ import annotations

from flask import Response, jsonify
from flask_openapi3 import APIBlueprint, Tag

from api.bodies import require_json_object
from api.chat import server_timing
from api.context import current_caller, services
from api.limits import answer_slot
from api.openapi import KEY_OR_NONE
from api.sse import stream_response
from api.v1.response_events import ResponseEvents
from api.v1.schemas import (
    ItemListObject,
    ItemsQuery,
    NoQuery,
    ResponseCreateBody,
    ResponseDeletedObject,
    ResponseObject,
    ResponsePath,
    RetrieveQuery,
    StoredResponseObject,
    errors,
    item_page,
    response_payload,
)
from services import ids

RESPONSES = Tag(name="responses", description="OpenAI's Responses API: answers that are nodes of the tree.")

bp = APIBlueprint(
    "v1_responses",
    __name__,
    url_prefix="/v1",
    abp_tags=[RESPONSES],
    abp_security=KEY_OR_NONE,
    abp_responses=errors(400, 401, 404, 413, 415, 429, 500, 503),
)
bp.before_request(require_json_object)


@bp.post("/responses", responses={200: ResponseObject, **errors(502, 504)})
def create_response(query: NoQuery, body: ResponseCreateBody) -> Response:
    """Create a response

    Without `previous_response_id` or `conversation`, a new conversation (listed by the six
    routes too). `previous_response_id` continues from that response (a second response from
    the same one is a branch); `conversation` appends at its current node. `instructions`
    are for this response only; `store: false` keeps nothing.
    """
    new = body.new_response()
    owner = current_caller().owner
    with answer_slot() as slot:
        if body.stream:
            fields, events = services().responses.stream(owner, new)
            writer = ResponseEvents(fields, store=new.store)
            keep_alive = services().settings.sse_keep_alive_seconds
            return slot.hand_over(stream_response(events, keep_alive, server_timing, writer))
        view = services().responses.create(owner, new)
    return jsonify(response_payload(view, store=new.store))


@bp.get("/responses/<response_id>", responses={200: StoredResponseObject})
def get_response(path: ResponsePath, query: RetrieveQuery) -> Response:
    """Retrieve a response (any answer of the caller's conversations, `ask`'s too)"""
    return jsonify(response_payload(services().responses.get(current_caller().owner, path.response_id)))


@bp.delete("/responses/<response_id>", responses={200: ResponseDeletedObject})
def delete_response(path: ResponsePath, query: NoQuery) -> Response:
    """Delete a response: the answer and every message below it"""
    services().responses.delete(current_caller().owner, path.response_id)
    return jsonify({"id": ids.encode(ids.RESPONSE, path.response_id), "object": "response", "deleted": True})


@bp.get("/responses/<response_id>/input_items", responses={200: ItemListObject})
def input_items(path: ResponsePath, query: ItemsQuery) -> Response:
    """The messages a response was asked with (not the earlier context), newest first by default"""
    page = services().responses.input_items(
        current_caller().owner, path.response_id, after=query.after, limit=query.limit, order=query.order
    )
    return jsonify(item_page(page))
