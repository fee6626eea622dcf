"""The `search` blueprint: POST /api/chat/search, over the caller's conversations."""

from __future__ import annotations

from flask import Blueprint, Response, current_app
from flask.blueprints import BlueprintSetupState

from api.chat import caller, ok, parse
from api.payloads import search_hit_payload
from api.schemas import SearchBody
from services.search import SearchRequest, SearchService

bp = Blueprint("search", __name__, url_prefix="/api/chat")


@bp.record_once
def _make_service(state: BlueprintSetupState) -> None:
    app = state.app
    app.extensions["search"] = SearchService(
        app.extensions["database"], app.config["SETTINGS"].search_language
    )


@bp.post("/search")
def search() -> Response:
    body = parse(SearchBody)
    request = SearchRequest(
        query=body.query,
        limit=body.limit,
        after=body.after,
        role=body.role,
        conversation_id=body.conversation,
    )
    hits = current_app.extensions["search"].search(caller(), request)
    return ok([search_hit_payload(hit) for hit in hits])
