"""`/v1/models`: the models the upstream offers, as OpenAI lists them."""

from __future__ import annotations

from flask import Response, jsonify
from flask_openapi3 import APIBlueprint, Tag

from api.context import services
from api.openapi import KEY_OR_NONE
from api.v1.schemas import ModelListObject, ModelObject, ModelPath, NoQuery, errors, model_list

MODELS = Tag(name="models", description="The upstream's models (its list, kept for MODELS_CACHE_SECONDS).")

bp = APIBlueprint(
    "v1_models",
    __name__,
    url_prefix="/v1",
    abp_tags=[MODELS],
    abp_security=KEY_OR_NONE,
    abp_responses=errors(400, 401, 429, 500, 502, 503, 504),
)


@bp.get("/models", responses={200: ModelListObject})
def list_models(query: NoQuery) -> Response:
    """List the upstream's models (with LLM_PROVIDER=chatgpt, the account's)"""
    return jsonify(model_list(services().models.models()))


@bp.get("/models/<path:model_id>", responses={200: ModelObject, **errors(404)})
def get_model(path: ModelPath, query: NoQuery) -> Response:
    """Retrieve one of the upstream's models"""
    return jsonify(services().models.model(path.model_id))
