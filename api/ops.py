"""Operations routes: liveness and readiness probes, Prometheus metrics, request counting."""

from __future__ import annotations

from flask import Response, jsonify, request
from flask_openapi3 import APIBlueprint
from prometheus_client import CONTENT_TYPE_LATEST

from api.context import services
from api.openapi import OPERATIONS, errors
from api.request_log import elapsed_seconds, route_label
from api.schemas import Health, Ready
from services.health import check_ready

bp = APIBlueprint("ops", __name__, abp_tags=[OPERATIONS])


@bp.get("/healthz", responses={200: Health})
def healthz() -> Response:
    """Liveness: the process answers (no database, no upstream)"""
    return jsonify({"status": "ok"})


@bp.get("/readyz", responses={200: Ready, **errors(503)})
def readyz() -> Response:
    """Readiness: the database is reachable and its schema current"""
    check_ready(services().database)
    return jsonify({"status": "ready"})


@bp.get(
    "/metrics",
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
def prometheus_metrics() -> Response:
    """Prometheus metrics (text exposition format), summed over all workers"""
    return Response(services().metrics.exposition(), content_type=CONTENT_TYPE_LATEST)


@bp.after_app_request
def count_request(response: Response) -> Response:
    services().metrics.observe_request(route_label(), request.method, response.status_code, elapsed_seconds())
    return response
