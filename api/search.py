"""`POST /api/chat/search`: full-text search over the caller's conversations."""

from __future__ import annotations

from flask import Response
from flask_openapi3 import APIBlueprint

from api.chat import ok
from api.context import current_caller, services
from api.bodies import require_json_object
from api.openapi import CHAT, JSON_ROUTE_ERRORS, KEY_OR_NONE, errors
from api.schemas import SearchBody, SearchResponse, search_hit_payload
from services.search import SearchRequest

bp = APIBlueprint(
    "search",
    __name__,
    url_prefix="/api/chat",
    abp_tags=[CHAT],
    abp_security=KEY_OR_NONE,
    abp_responses=errors(*JSON_ROUTE_ERRORS),
)
bp.before_request(require_json_object)


@bp.post("/search", responses={200: SearchResponse, **errors(404)})
def search(body: SearchBody) -> Response:
    """Search every conversation of the caller, best match first

    Titles match too. The last hit's `cursor`, passed as `after`, gives the next page.
    """
    request = SearchRequest(
        query=body.query,
        limit=body.limit,
        after=body.after,
        role=body.role,
        conversation_id=body.conversation,
    )
    return ok([search_hit_payload(hit) for hit in services().search.search(current_caller().owner, request)])
