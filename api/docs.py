"""`/openapi.json`, and the docs page `/docs`: Swagger UI whose files come inside the
flask-swagger-ui wheel and are served by this app, so the page works with no internet.

The page has no inline script, so its Content-Security-Policy can allow scripts from
this origin only.
"""

from __future__ import annotations

from pathlib import Path

import flask_swagger_ui
from flask import Response, current_app, jsonify, send_from_directory
from flask_openapi3 import APIBlueprint
from pydantic import BaseModel

from api.context import GptApi
from api.openapi import OPERATIONS, document, errors

SWAGGER_UI = Path(flask_swagger_ui.__file__).resolve().parent / "dist"
ASSETS = "/docs/assets"
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'"
)
PAGE = f"""<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>gpt-api: API docs</title>
  <link rel="stylesheet" href="{ASSETS}/swagger-ui.css">
  <link rel="stylesheet" href="{ASSETS}/index.css">
  <link rel="icon" type="image/png" href="{ASSETS}/favicon-32x32.png" sizes="32x32">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{ASSETS}/swagger-ui-bundle.js"></script>
  <script src="{ASSETS}/swagger-ui-standalone-preset.js"></script>
  <script src="/docs/init.js"></script>
</body>
</html>
"""
INIT = """window.onload = function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    plugins: [SwaggerUIBundle.plugins.DownloadUrl],
    layout: "StandaloneLayout"
  });
};
"""

bp = APIBlueprint("docs", __name__, abp_tags=[OPERATIONS])


def _text(media_type: str) -> dict[int, dict[str, object]]:
    return {200: {"content": {media_type: {"schema": {"type": "string"}}}}}


@bp.get("/openapi.json", responses={200: {"content": {"application/json": {"schema": {"type": "object"}}}}})
def openapi_json() -> Response:
    """This document"""
    app: GptApi = current_app  # type: ignore[assignment]
    return jsonify(document(app))


@bp.get("/docs", responses=_text("text/html"))
def page() -> Response:
    """The API docs page (Swagger UI, served by this app)"""
    return Response(PAGE, mimetype="text/html")


@bp.get("/docs/init.js", responses=_text("text/javascript"))
def init_script() -> Response:
    """The docs page's start-up script"""
    return Response(INIT, mimetype="text/javascript")


class AssetPath(BaseModel):
    name: str


@bp.get(f"{ASSETS}/<path:name>", responses={**_text("application/octet-stream"), **errors(404)})
def asset(path: AssetPath) -> Response:
    """Swagger UI's files (from the flask-swagger-ui package)"""
    return send_from_directory(SWAGGER_UI, path.name)


@bp.after_request
def page_policy(response: Response) -> Response:
    """The page may load its own scripts, styles, images and the spec (others get `'none'`)."""
    response.headers["Content-Security-Policy"] = PAGE_POLICY
    return response
