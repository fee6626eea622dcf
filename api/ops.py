"""Operations routes: liveness and readiness probes, Prometheus metrics, request counting."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST

from api.request_log import elapsed_seconds, route_label
from services.health import check_ready
from services.metrics import Metrics

bp = Blueprint("ops", __name__)


def metrics() -> Metrics:
    return current_app.extensions["metrics"]


@bp.get("/healthz")
def healthz() -> Response:
    """The process answers; touches nothing else."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    """The database is reachable and migrated (503 in the error envelope otherwise)."""
    check_ready(current_app.extensions["database"])
    return jsonify({"status": "ready"})


@bp.get("/metrics")
def prometheus_metrics() -> Response:
    return Response(metrics().exposition(), content_type=CONTENT_TYPE_LATEST)


@bp.after_app_request
def count_request(response: Response) -> Response:
    metrics().observe_request(route_label(), request.method, response.status_code, elapsed_seconds())
    return response
