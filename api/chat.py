"""The `chat` blueprint: the six routes of the contract under /api/chat."""

from __future__ import annotations

import time
from typing import Any, TypeVar

from flask import Blueprint, Response, current_app, g, jsonify, request
from pydantic import BaseModel
from werkzeug.exceptions import UnsupportedMediaType

from api.limits import answer_slot
from api.payloads import answer_payload, summary_payload
from api.schemas import AskBody, EmptyBody, ListBody, RequiredConversationRef, TitleBody
from api.sse import stream_response
from services.conversations import ConversationService, Question
from services.errors import InvalidRequest

bp = Blueprint("chat", __name__, url_prefix="/api/chat")

BodyT = TypeVar("BodyT", bound=BaseModel)


def parse(model: type[BodyT]) -> BodyT:
    """The request's JSON body as `model`; 415 if it is not JSON, 400 naming the bad field."""
    if not request.is_json:
        raise UnsupportedMediaType()
    raw = request.get_data(cache=False)
    if not raw.strip():
        raise InvalidRequest("The body is empty; send a JSON object (at least {}).")
    return model.model_validate_json(raw)


def server_timing(upstream_seconds: float) -> str:
    """What this answer cost: time waiting on the upstream, and in all so far."""
    total = time.perf_counter() - g.started
    return f"upstream;dur={upstream_seconds * 1000:.1f}, total;dur={total * 1000:.1f}"


def ok(payload: Any) -> Response:
    return jsonify({"response": payload})


def service() -> ConversationService:
    return current_app.extensions["conversations"]


def caller() -> str:
    """Who is asking: the owner of the conversations this request may see."""
    return g.get("owner", "")


@bp.post("/ask")
def ask() -> Response:
    body = parse(AskBody)
    question = Question(
        prompt=body.prompt,
        conversation_id=body.conversation,
        parent_id=body.parent_id,
        model=body.model,
    )
    with answer_slot() as slot:
        if body.stream:
            events = service().ask_stream(caller(), question)
            return slot.hand_over(
                stream_response(events, current_app.config["SSE_KEEP_ALIVE"], server_timing)
            )
        answer = service().ask(caller(), question)
    response = ok(answer_payload(answer))
    response.headers["Server-Timing"] = server_timing(answer.upstream_seconds)
    return response


@bp.post("/conversation")
def conversations() -> Response:
    body = parse(ListBody)
    page = service().list_conversations(
        caller(), offset=body.offset, limit=body.limit, after=body.after
    )
    return ok([summary_payload(summary) for summary in page])


@bp.post("/msg/history")
def history() -> Response:
    body = parse(RequiredConversationRef)
    return ok(service().history(caller(), body.conversation))  # type: ignore[arg-type]


@bp.post("/change/title")
def change_title() -> Response:
    body = parse(TitleBody)
    service().rename(caller(), body.conversation, body.title)  # type: ignore[arg-type]
    return ok(None)


@bp.post("/delete/conversation")
def delete_conversation() -> Response:
    body = parse(RequiredConversationRef)
    service().delete(caller(), body.conversation)  # type: ignore[arg-type]
    return ok(None)


@bp.post("/clear/conversations")
def clear_conversations() -> Response:
    parse(EmptyBody)
    service().clear(caller())
    return ok(None)
