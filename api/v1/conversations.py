"""`/v1/conversations`: OpenAI's Conversations API over the same conversations as `/api/chat`."""

from __future__ import annotations

from flask import Response, jsonify
from flask_openapi3 import APIBlueprint, Tag

from api.bodies import require_json_object
from api.context import current_caller, services
from api.openapi import KEY_OR_NONE
from api.v1.schemas import (
    ConversationCreateBody,
    ConversationDeletedObject,
    ConversationItemsObject,
    ConversationListObject,
    ConversationListQuery,
    ConversationObject,
    ConversationPath,
    ConversationUpdateBody,
    IncludeQuery,
    ItemObject,
    ItemPath,
    ItemsCreateBody,
    ItemsQuery,
    NoQuery,
    conversation_match_page,
    conversation_page,
    conversation_payload,
    errors,
    item_list,
    item_page,
    message_payload,
)
from services import ids

CONVERSATIONS = Tag(
    name="conversations",
    description="OpenAI's Conversations API, and a list of the caller's conversations, searchable (beyond OpenAI).",
)

bp = APIBlueprint(
    "v1_conversations",
    __name__,
    url_prefix="/v1",
    abp_tags=[CONVERSATIONS],
    abp_security=KEY_OR_NONE,
    abp_responses=errors(400, 401, 404, 413, 415, 429, 500, 503),
)
bp.before_request(require_json_object)


@bp.post("/conversations", responses={200: ConversationObject})
def create_conversation(query: NoQuery, body: ConversationCreateBody) -> Response:
    """Create a conversation, with up to 20 items and metadata"""
    items = [item.said() for item in body.items or ()]
    view = services().items.create(current_caller().owner, items, body.metadata or {})
    return jsonify(conversation_payload(view))


@bp.get("/conversations", responses={200: ConversationListObject})
def list_conversations(query: ConversationListQuery) -> Response:
    """List the caller's conversations, newest activity first, or those a search finds (beyond OpenAI)

    With `query`, the conversations that match, best first (a matching title, else the
    newest matching message), each once with its best hit as `match`. Page with `after`
    (the previous page's `last_id`) while `has_more`.
    """
    owner = current_caller().owner
    if query.query is not None:
        found = services().search.conversations(owner, query.query, after=query.after, limit=query.limit)
        return jsonify(conversation_match_page(found))
    return jsonify(conversation_page(services().items.page(owner, after=query.after, limit=query.limit)))


@bp.get("/conversations/<conversation_id>", responses={200: ConversationObject})
def get_conversation(path: ConversationPath, query: NoQuery) -> Response:
    """Retrieve a conversation"""
    return jsonify(conversation_payload(services().items.get(current_caller().owner, path.conversation_id)))


@bp.post("/conversations/<conversation_id>", responses={200: ConversationObject})
def update_conversation(path: ConversationPath, query: NoQuery, body: ConversationUpdateBody) -> Response:
    """Replace a conversation's metadata"""
    view = services().items.set_metadata(current_caller().owner, path.conversation_id, body.metadata or {})
    return jsonify(conversation_payload(view))


@bp.delete("/conversations/<conversation_id>", responses={200: ConversationDeletedObject})
def delete_conversation(path: ConversationPath, query: NoQuery) -> Response:
    """Delete a conversation and all its messages"""
    services().items.delete(current_caller().owner, path.conversation_id)
    conversation_id = ids.encode(ids.CONVERSATION, path.conversation_id)
    return jsonify({"id": conversation_id, "object": "conversation.deleted", "deleted": True})


@bp.get("/conversations/<conversation_id>/items", responses={200: ConversationItemsObject})
def list_items(path: ConversationPath, query: ItemsQuery) -> Response:
    """The messages of the current branch, newest first by default

    Neither the root nor the service's own system message is an item.
    """
    page = services().items.items(
        current_caller().owner, path.conversation_id, after=query.after, limit=query.limit, order=query.order
    )
    return jsonify(item_page(page))


@bp.post("/conversations/<conversation_id>/items", responses={200: ConversationItemsObject})
def create_items(path: ConversationPath, query: IncludeQuery, body: ItemsCreateBody) -> Response:
    """Add up to 20 messages at the current node (which moves to the last of them)"""
    added = services().items.add(current_caller().owner, path.conversation_id, [item.said() for item in body.items])
    return jsonify(item_list(added))


@bp.get("/conversations/<conversation_id>/items/<item_id>", responses={200: ItemObject})
def get_item(path: ItemPath, query: IncludeQuery) -> Response:
    """Retrieve an item (a message of any branch)"""
    item = services().items.item(current_caller().owner, path.conversation_id, path.item_id)
    return jsonify(message_payload(item))


@bp.delete("/conversations/<conversation_id>/items/<item_id>", responses={200: ConversationObject})
def delete_item(path: ItemPath, query: NoQuery) -> Response:
    """Remove an item: its children move up to its parent; answers the conversation"""
    view = services().items.remove(current_caller().owner, path.conversation_id, path.item_id)
    return jsonify(conversation_payload(view))
